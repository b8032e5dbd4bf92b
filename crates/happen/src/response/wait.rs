//! Waiting for a request's outcome without boxing: [`Response`], the future
//! that awaiting a [`Sent`] gives, and the private [`Replying`] under it.
//!
//! The wait claims the request on its first poll (a request queued at a
//! node of this process runs in the requester's task when it is next in
//! line), then polls the reply channel. An answer that is not there within
//! one turn of the scheduler arms a timer at the request's deadline; only
//! that slow path allocates (the timer).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use serde_json::Value;
use tokio::sync::oneshot;

use super::{Claim, Reply, Route, Sent, Waiting};
use crate::error::Result;
use crate::node::Blocked;
use crate::stream::{Outcome, StreamMsg, StreamRx};

/// The response value of a sent request: what `.await` on a [`Sent`] and
/// [`Sent::response`] give.
///
/// ```
/// use happen::prelude::*;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> happen::Result<()> {
/// let happen = Happen::embedded();
/// let client = happen.node("client")?;
/// let echo = happen.node("echo")?;
/// echo.on("ping", |e: Event, _cx: Context| async move { e.payload().clone() })?;
///
/// // A named future: it can be stored, or passed where a `Future` is wanted.
/// let pending: happen::response::Response = client.send(&echo, Event::new("ping", json!(1))).response();
/// assert_eq!(pending.await?, json!(1));
/// assert_eq!(client.send(&echo, Event::new("ping", json!(2))).await?, json!(2));
/// # Ok(()) }
/// ```
#[must_use = "a response does nothing unless awaited"]
pub struct Response(Replying);

impl Response {
    pub(super) fn new(sent: Sent) -> Response {
        Response(Replying::new(sent))
    }
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Response").finish_non_exhaustive()
    }
}

impl Future for Response {
    type Output = Result<Value>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Value>> {
        self.0.poll_reply(cx).map(|(reply, _waiting)| {
            reply.map(|reply| match reply {
                Reply::Value(value) => value,
                Reply::Event(event) => event.into_payload(),
            })
        })
    }
}

/// Waits for a request's final outcome (streamed items skipped), keeping
/// what names its failures.
pub(super) struct Replying {
    state: State,
}

enum State {
    /// Not polled yet: the claim is still to be made.
    Start(Sent),
    Waiting(Wait),
    /// The outcome was returned.
    Done,
}

struct Wait {
    waiting: Waiting,
    rx: Rx,
    /// Whether a turn of the scheduler passed without an answer.
    turned: bool,
    /// Armed after that turn, at the request's deadline.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The requesting flow, counted as waiting for an answer while this
    /// lives (a request sent from a flow).
    _blocked: Option<Blocked>,
}

enum Rx {
    /// The first (and usually only) message of the reply channel.
    First(oneshot::Receiver<Outcome>),
    /// A streaming flow's items, until its end: the end is the response.
    Stream(StreamRx),
}

impl Replying {
    pub(super) fn new(sent: Sent) -> Replying {
        Replying {
            state: State::Start(sent),
        }
    }

    /// The outcome, with what names the request's failures (the request,
    /// its target).
    pub(super) fn poll_reply(&mut self, cx: &mut Context<'_>) -> Poll<(Result<Reply>, Waiting)> {
        let mut wait = match std::mem::replace(&mut self.state, State::Done) {
            State::Start(sent) => Wait::start(sent),
            State::Waiting(wait) => wait,
            State::Done => panic!("a response polled after it was returned"),
        };
        match wait.poll(cx) {
            Poll::Ready(reply) => Poll::Ready((reply, wait.waiting)),
            Poll::Pending => {
                self.state = State::Waiting(wait);
                Poll::Pending
            }
        }
    }
}

impl Future for Replying {
    type Output = (Result<Reply>, Waiting);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.poll_reply(cx)
    }
}

impl Wait {
    fn start(sent: Sent) -> Wait {
        // Counted before a claim runs the target's flow here, which may
        // send a request back.
        let blocked = Blocked::on(&sent.request);
        match &sent.route {
            Route::Claim(Claim { node, inline: true }) => node.claim(&sent.request),
            Route::Claim(Claim { node, .. }) => {
                node.refuse_if_deadlocked(&sent.request);
            }
            Route::Carried(_) | Route::Nowhere => {}
        }
        let (waiting, rx) = sent.split();
        Wait {
            waiting,
            rx: Rx::First(rx),
            turned: false,
            timer: None,
            _blocked: blocked,
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<Reply>> {
        if let Poll::Ready(reply) = self.poll_rx(cx) {
            return Poll::Ready(reply);
        }
        if let Some(blocked) = &mut self._blocked {
            blocked.waits();
        }
        // Most answers from this process arrive within one turn of the
        // scheduler: wait that long before arming a timer.
        if !self.turned {
            self.turned = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let deadline = self.waiting.deadline();
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(self.waiting.timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_rx(&mut self, cx: &mut Context<'_>) -> Poll<Result<Reply>> {
        loop {
            match &mut self.rx {
                Rx::First(rx) => match std::task::ready!(Pin::new(rx).poll(cx)) {
                    Ok(Outcome::Value(outcome)) => return Poll::Ready(outcome.map(Reply::Value)),
                    Ok(Outcome::Done(outcome)) => return Poll::Ready(outcome.map(Reply::Event)),
                    Ok(Outcome::Stream(stream)) => self.rx = Rx::Stream(stream),
                    Err(_dropped) => return Poll::Ready(Err(self.waiting.no_response())),
                },
                Rx::Stream(stream) => match std::task::ready!(stream.poll_recv(cx)) {
                    Some(StreamMsg::Item(_)) => {}
                    Some(StreamMsg::End(outcome)) => {
                        return Poll::Ready(outcome.map(Reply::Event));
                    }
                    None => return Poll::Ready(Err(self.waiting.no_response())),
                },
            }
        }
    }
}

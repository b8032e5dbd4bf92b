//! Streamed responses: a flow can emit values before it finishes, and the
//! requester consumes them as a [`Stream`](futures::Stream).
//!
//! A step calls [`Context::emit`](crate::Context::emit) for each value; what
//! the flow finally returns ends the stream. The requester calls
//! [`Sent::stream`](crate::Sent::stream) and receives
//! [`StreamItem::Item`]s, then one [`StreamItem::Done`] (or an error), in
//! order. Back-pressure: at most [`STREAM_WINDOW`] items wait unconsumed;
//! beyond that `emit` waits for the consumer. Dropping the stream cancels the
//! producer: its next `emit` fails with [`HappenError::Cancelled`], which ends
//! the flow. A request whose handle is dropped unread (fire-and-forget), or
//! whose requester waited only for the final value and stopped waiting (its
//! timeout passed), cancels nothing: the items have nowhere to go and are
//! dropped, `emit` succeeds, and the flow runs to its end. Over NATS the
//! requester's process tells the producer so when the first item arrives. Over NATS, items are numbered and the end is explicit, so a lost
//! or reordered chunk is reported as [`HappenError::StreamBroken`]. A
//! producer that waits for credit asks the requester's process every two
//! seconds whether the stream is still read: if that process is gone (or
//! no longer waits), `emit` fails with [`HappenError::Cancelled`] as if the
//! stream had been dropped, so a dead consumer never holds the flow. (So
//! does a stream nobody takes whose "unwanted" word was lost on the way.)
//! A requester still reading answers with how many items it took, so that
//! its reports of progress lost on the way do not stall the stream.
//!
//! A flow that emits while nobody waits for it (it was started by a
//! broadcast) broadcasts each item instead, as an event of type
//! `<handled type>.item` caused by the handled event, with
//! `context.stream = {"of": <handled event id>, "seq": n}` (see
//! [`Event::stream`](crate::Event::stream)).
//!
//! ```
//! use futures::StreamExt;
//! use happen::prelude::*;
//! use happen::StreamItem;
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> happen::Result<()> {
//! let happen = Happen::embedded();
//! let client = happen.node("client")?;
//! let importer = happen.node("importer")?;
//! importer.on("import-file", |_e: Event, cx: Context| async move {
//!     for chunk in 1..=3 {
//!         cx.emit(json!({ "progress": chunk * 33 })).await?;
//!     }
//!     Ok::<_, HappenError>(json!({ "status": "complete" }))
//! })?;
//!
//! let mut stream = client.send(&importer, Event::new("import-file", json!({}))).stream();
//! let mut seen = Vec::new();
//! while let Some(item) = stream.next().await {
//!     seen.push(item?);
//! }
//! assert_eq!(seen.len(), 4);
//! assert_eq!(seen[0], StreamItem::Item(json!({ "progress": 33 })));
//! assert_eq!(seen[3], StreamItem::Done(json!({ "status": "complete" })));
//! # Ok(()) }
//! ```

use serde_json::Value;
use tokio::sync::mpsc;

use crate::error::{HappenError, Result};
use crate::event::Event;

/// How many emitted items may wait unconsumed before `emit` waits.
pub const STREAM_WINDOW: usize = 16;

/// One element of a streamed response.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamItem {
    /// A value the flow emitted.
    Item(Value),
    /// The flow's final value; nothing follows.
    Done(Value),
}

/// What travels from a streaming flow to its requester.
#[derive(Debug)]
pub(crate) enum StreamMsg {
    Item(Value),
    End(Result<Event>),
}

/// What the requester's reply channel receives first.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The flow's result (no stream).
    Done(Result<Event>),
    /// The flow's result value, from a flow in this process that nobody
    /// observes: the requester builds the response event only if asked.
    Value(Result<Value>),
    /// The flow started a stream; items and the end follow on it.
    Stream(StreamRx),
}

/// Lets a remote producer know how far the consumer got (flow control).
pub(crate) trait CreditSink: Send + 'static {
    /// `count` more items were consumed.
    fn consumed(&mut self, count: u64);
    /// The consumer stopped before the end.
    fn cancel(&mut self);
    /// The requester let go of the stream before it looked at any item
    /// (its handle was dropped unread): the producer's items are not
    /// wanted, but its flow is not cancelled.
    fn unwanted(&mut self);
}

/// The producer's side of [`CreditSink::unwanted`] in this process: set
/// when the requester dropped the stream without looking at it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Unwanted(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Unwanted {
    /// Whether the requester let go of the stream unread.
    pub(crate) fn is_set(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl CreditSink for Unwanted {
    fn consumed(&mut self, _count: u64) {}

    fn cancel(&mut self) {}

    fn unwanted(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }
}

impl std::fmt::Debug for StreamRx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamRx")
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

/// The consuming end of a stream.
pub(crate) struct StreamRx {
    rx: mpsc::Receiver<StreamMsg>,
    credit: Option<Box<dyn CreditSink>>,
    /// Whether the producer ended the stream: nothing to tell it on drop.
    ended: bool,
    /// Whether the requester consumes the stream as a stream (`Sent::stream`):
    /// one dropped otherwise (a requester waiting only for the final value
    /// that stopped waiting, or one that dropped its handle unread) was
    /// never taken (see [`CreditSink::unwanted`]).
    taken: bool,
}

impl StreamRx {
    pub(crate) fn new(rx: mpsc::Receiver<StreamMsg>, credit: Option<Box<dyn CreditSink>>) -> Self {
        StreamRx {
            rx,
            credit,
            ended: false,
            taken: false,
        }
    }

    /// The next message; `None` if the producer vanished without an end.
    pub(crate) async fn recv(&mut self) -> Option<StreamMsg> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// [`recv`](Self::recv) as a poll.
    pub(crate) fn poll_recv(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<StreamMsg>> {
        let message = std::task::ready!(self.rx.poll_recv(cx));
        match &message {
            Some(StreamMsg::Item(_)) => {
                if let Some(credit) = &mut self.credit {
                    credit.consumed(1);
                }
            }
            // Only a successful end is surely the producer's own: an error
            // may be this side's (a gap in the numbering, the timeout) while
            // the producer runs on, waiting for credit, so dropping the
            // stream then tells it to stop (a producer that did end ignores
            // that).
            Some(StreamMsg::End(Ok(_))) => self.ended = true,
            Some(StreamMsg::End(Err(_))) | None => {}
        }
        std::task::Poll::Ready(message)
    }
}

impl Drop for StreamRx {
    fn drop(&mut self) {
        if !self.ended
            && let Some(credit) = &mut self.credit
        {
            if self.taken {
                credit.cancel();
            } else {
                credit.unwanted();
            }
        }
    }
}

/// Turns a requester's outcome into the stream of [`StreamItem`]s.
pub(crate) fn items(
    first: Result<Outcome>,
) -> futures::stream::BoxStream<'static, Result<StreamItem>> {
    use futures::StreamExt;
    enum State {
        First(Result<Outcome>),
        Streaming(StreamRx),
        Finished,
    }
    futures::stream::unfold(State::First(first), |state| async move {
        match state {
            State::Finished => None,
            State::First(Err(e))
            | State::First(Ok(Outcome::Done(Err(e))))
            | State::First(Ok(Outcome::Value(Err(e)))) => Some((Err(e), State::Finished)),
            State::First(Ok(Outcome::Value(Ok(value)))) => {
                Some((Ok(StreamItem::Done(value)), State::Finished))
            }
            State::First(Ok(Outcome::Done(Ok(event)))) => {
                Some((Ok(StreamItem::Done(event.into_payload())), State::Finished))
            }
            State::First(Ok(Outcome::Stream(rx))) | State::Streaming(rx) => {
                let mut rx = rx;
                rx.taken = true;
                match rx.recv().await {
                    Some(StreamMsg::Item(value)) => {
                        Some((Ok(StreamItem::Item(value)), State::Streaming(rx)))
                    }
                    Some(StreamMsg::End(Ok(event))) => {
                        Some((Ok(StreamItem::Done(event.into_payload())), State::Finished))
                    }
                    Some(StreamMsg::End(Err(e))) => Some((Err(e), State::Finished)),
                    None => Some((
                        Err(HappenError::StreamBroken {
                            reason: "the producer went away before the end of the stream".into(),
                        }),
                        State::Finished,
                    )),
                }
            }
        }
    })
    .boxed()
}

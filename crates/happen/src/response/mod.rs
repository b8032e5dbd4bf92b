//! Waiting for the result of a sent event: [`Sent`], the handle `send` returns.
//!
//! The event is dispatched when `send` is called. The handle decides only what
//! happens to the flow's result: await it ([`Sent::response`], or `.await` on
//! the handle), hand it to a callback ([`Sent::on_response`]), or drop the
//! handle and forget it (fire-and-forget).

use std::future::IntoFuture;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::oneshot;

use crate::delivery::ReplyTx;
use crate::error::{HappenError, Result};
use crate::event::Event;
use crate::flow::RESPONSE_EVENT_TYPE;
use crate::id::Id;
use crate::receipt::Receipt;
use crate::stream::{self, Outcome, StreamItem};

mod wait;

use wait::Replying;

/// A request's deadline, shared by its handle and the transport that
/// carries it (over NATS: how long it is offered again after "no
/// responders", and how long a closing runtime waits for its answer), so
/// that [`Sent::timeout`] set after the send reaches both. The transport
/// may also note why no answer came yet (a reply it refused), which the
/// handle reports in place of a bare timeout.
#[derive(Debug, Clone)]
pub(crate) struct Deadline(std::sync::Arc<std::sync::Mutex<DeadlineState>>);

#[derive(Debug)]
struct DeadlineState {
    at: tokio::time::Instant,
    why: Option<HappenError>,
}

impl Deadline {
    pub(crate) fn new(at: tokio::time::Instant) -> Deadline {
        Deadline(std::sync::Arc::new(std::sync::Mutex::new(DeadlineState {
            at,
            why: None,
        })))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, DeadlineState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The deadline now.
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    pub(crate) fn get(&self) -> tokio::time::Instant {
        self.state().at
    }

    fn set(&self, at: tokio::time::Instant) {
        self.state().at = at;
    }

    /// Moves the deadline to `at` if that is later (over NATS, a request
    /// nobody waits for, offered while its receiver may be resubscribing).
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    pub(crate) fn extend_to(&self, at: tokio::time::Instant) {
        let mut state = self.state();
        state.at = state.at.max(at);
    }

    /// Notes why the request has no answer yet (the first reason noted
    /// stays): what its handle reports if the deadline passes.
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    pub(crate) fn note(&self, why: HappenError) {
        self.state().why.get_or_insert(why);
    }
}
pub use wait::Response;

/// The handle of a sent event; see the [module docs](self).
///
/// Await it inside a tokio runtime: the wait for an answer that is not
/// there at once uses tokio's timer (outside one, only a request its
/// requester ran itself is answered; any other panics, as tokio's timers
/// do; [`Node::send_sync`](crate::Node::send_sync) is the way from a plain
/// thread).
///
/// ```
/// use std::time::Duration;
/// use happen::prelude::*;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> happen::Result<()> {
/// let happen = Happen::embedded();
/// let client = happen.node("client")?;
/// let slow = happen.node("slow")?;
/// slow.on("work", |_e: Event, _cx: Context| async {
///     tokio::time::sleep(Duration::from_secs(60)).await;
/// })?;
///
/// let err = client
///     .send(&slow, Event::new("work", json!(null)))
///     .timeout(Duration::from_millis(20))
///     .response()
///     .await
///     .unwrap_err();
/// assert!(matches!(err, HappenError::Timeout { .. }));
///
/// // Sending to a node with no matching handler fails at once, not after a timeout.
/// let err = client.send(&slow, Event::new("other", json!(null))).await.unwrap_err();
/// assert!(matches!(err, HappenError::NoHandler { .. }));
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Sent {
    /// The sent event (a shared handle), for its id and type.
    request: Event,
    target: Id,
    /// When the event was sent: the timeout counts from here. `None` for
    /// an event handed over in this process: its stamp's clock reading says
    /// when it was sent, read only when a timer is needed.
    sent_at: Option<tokio::time::Instant>,
    timeout: Duration,
    rx: oneshot::Receiver<Outcome>,
    /// Whether the event is kept for its receiver (see [`Sent::stored`]).
    receipt: Receipt,
    /// Where the request went, for what awaiting it may do.
    route: Route,
}

/// Where a request went (one field, so that a handle stays as small as it
/// was before the transport's deadline was shared: it is moved by value).
#[derive(Debug)]
enum Route {
    /// To a node in this process: awaiting the answer runs the request's
    /// flow right here if it is next in the node's queue.
    Claim(Claim),
    /// Through the transport, which keeps the deadline shared here.
    Carried(Deadline),
    /// Nowhere to look (refused before dispatch, or claims are off).
    Nowhere,
}

/// The node a request was handed to in this process. Held strongly (one
/// reference count, where a weak one costs four atomic operations per
/// request): like a [`Node`](crate::Node) handle, an unawaited `Sent` keeps
/// a removed node's memory until it is dropped; a node's shutdown clears
/// its handlers, so no cycle through them outlives the runtime.
struct Claim {
    node: std::sync::Arc<crate::node::NodeCore>,
    /// Whether the requester may run the flow in its own task; `false`: it
    /// only checks for a deadlock when it starts to wait.
    inline: bool,
}

impl std::fmt::Debug for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Claim(..)")
    }
}

impl Sent {
    pub(crate) fn new(target: Id, request: Event, timeout: Duration) -> (Sent, ReplyTx) {
        let (tx, rx) = oneshot::channel();
        let sent = Sent {
            request,
            target,
            sent_at: None,
            timeout,
            rx,
            receipt: Receipt::kept(),
            route: Route::Nowhere,
        };
        (sent, tx)
    }

    /// Lets awaiting the answer run the request's flow in the requester's
    /// task (see [`NodeCore::claim`](crate::node::NodeCore::claim)).
    pub(crate) fn claimable(mut self, node: &std::sync::Arc<crate::node::NodeCore>) -> Sent {
        self.route = Route::Claim(Claim {
            node: node.clone(),
            inline: true,
        });
        self
    }

    /// Leaves the request to the target's worker: for a caller that blocks
    /// a plain thread on the answer (the flow stays on the runtime's threads).
    pub(crate) fn unclaimed(mut self) -> Sent {
        if let Route::Claim(claim) = &mut self.route {
            claim.inline = false;
        }
        self
    }

    /// Sets what [`Sent::stored`] waits for.
    pub(crate) fn with_receipt(mut self, receipt: Receipt) -> Sent {
        self.receipt = receipt;
        self
    }

    /// Waits until the event is kept where its receiver will find it, as
    /// [`Receipt`] describes (at once for a receiver that keeps no copy),
    /// without waiting for the response; [`Sent::response`] can still be
    /// awaited afterwards. An event refused before it left gives the
    /// refusal.
    ///
    /// ```
    /// use happen::prelude::*;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> happen::Result<()> {
    /// let happen = Happen::embedded();
    /// let client = happen.node("client")?;
    /// let worker = happen.node("worker")?;
    /// worker.on("job", |e: Event, _cx: Context| async move { e.payload().clone() })?;
    /// let mut sent = client.send(&worker, Event::new("job", json!(7)));
    /// sent.stored().await?;
    /// assert_eq!(sent.response().await?, json!(7));
    ///
    /// let mut refused = client.send(&worker, Event::new("not a type!", json!(null)));
    /// assert!(refused.stored().await.is_err());
    /// # Ok(()) }
    /// ```
    pub async fn stored(&mut self) -> Result<()> {
        (&mut self.receipt).await
    }

    /// Fixes the send time now, for a transport that needs the deadline as
    /// the event leaves.
    pub(crate) fn sent_now(mut self) -> Sent {
        self.sent_at = Some(tokio::time::Instant::now());
        self
    }

    /// The id of the sent event (empty if it was refused before dispatch).
    pub fn id(&self) -> &str {
        self.request.id()
    }

    /// The sent event, with the causal context it was stamped with (as
    /// given, if it was refused before dispatch).
    pub fn event(&self) -> &Event {
        &self.request
    }

    /// A handle whose outcome is already `error` (refused before dispatch).
    pub(crate) fn refused(
        target: Id,
        request: Event,
        timeout: Duration,
        error: HappenError,
    ) -> Sent {
        let (sent, reply) = Sent::new(target, request, timeout);
        let sent = sent.with_receipt(Receipt::failed(error.clone()));
        let _ = reply.send(Outcome::Done(Err(error)));
        sent
    }

    fn split(self) -> (Waiting, oneshot::Receiver<Outcome>) {
        let carried = match self.route {
            Route::Carried(deadline) => Some(deadline),
            Route::Claim(_) | Route::Nowhere => None,
        };
        let waiting = Waiting {
            request: self.request,
            target: self.target,
            timeout: self.timeout,
            sent_at: self.sent_at,
            carried,
        };
        (waiting, self.rx)
    }

    pub(crate) fn deadline(&self) -> tokio::time::Instant {
        deadline(self.sent_at, &self.request, self.timeout)
    }

    /// Sets how long to wait for the response, counted from when the event
    /// was sent (default: the sending node's timeout, 5 s unless configured).
    pub fn timeout(mut self, timeout: Duration) -> Sent {
        self.timeout = timeout;
        if let Route::Carried(shared) = &self.route {
            shared.set(self.deadline());
        }
        self
    }

    /// The deadline, shared with the transport that carries the request.
    pub(crate) fn shared_deadline(&mut self) -> Deadline {
        let deadline = Deadline::new(self.deadline());
        self.route = Route::Carried(deadline.clone());
        deadline
    }

    /// Waits for the flow's result value (the same as awaiting the handle).
    pub fn response(self) -> Response {
        Response::new(self)
    }

    /// Waits for the flow's result value, deserialized as `T`.
    ///
    /// A result that does not have the shape of `T` is a
    /// [`HappenError::Codec`] naming the type.
    ///
    /// ```
    /// use happen::prelude::*;
    ///
    /// #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    /// struct Quote { sku: String, cents: u64 }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> happen::Result<()> {
    /// let happen = Happen::embedded();
    /// let pricing = happen.node("pricing")?;
    /// pricing.on("quote", |e: Event, _cx: Context| async move {
    ///     Flow::done_with(&Quote { sku: e.payload()["sku"].as_str().unwrap_or("").into(), cents: 1250 })
    /// })?;
    /// let quote: Quote = pricing.send(&pricing, Event::new("quote", json!({ "sku": "A-1" }))).response_as().await?;
    /// assert_eq!(quote, Quote { sku: "A-1".into(), cents: 1250 });
    /// # Ok(()) }
    /// ```
    pub async fn response_as<T: serde::de::DeserializeOwned>(self) -> Result<T> {
        let value = self.response().await?;
        T::deserialize(value).map_err(|e| {
            HappenError::codec(
                format!(
                    "the response does not have the shape of {}",
                    std::any::type_name::<T>()
                ),
                e,
            )
        })
    }

    /// Waits for the response as an event, with its own causal context
    /// (its `causationId` is the sent event's id).
    pub async fn response_event(self) -> Result<Event> {
        let (reply, waiting) = Replying::new(self).await;
        match reply? {
            Reply::Event(event) => Ok(event),
            Reply::Value(value) => {
                // Built here, as the responder would have: sent by the
                // target, caused by the request.
                let mut response = Event::new(RESPONSE_EVENT_TYPE, value);
                crate::event::stamp(&mut response, &waiting.target, Some(&waiting.request));
                Ok(response)
            }
        }
    }

    /// The flow's emitted values, then its final value, as a stream (see
    /// [`crate::stream`]). The timeout applies until the first item (or the
    /// result) arrives; after that the stream runs as long as the producer
    /// does, and ends with [`HappenError::StreamBroken`] if the producer
    /// goes away without ending it (over NATS: found within seconds by
    /// asking the producer once the stream has been quiet). Dropping the stream once it has started cancels the producer;
    /// dropped before its first item, it lets the producer run on with its
    /// items dropped (see [`crate::stream`]).
    pub fn stream(self) -> futures::stream::BoxStream<'static, Result<StreamItem>> {
        // A flow reading the stream waits for an answer from the first
        // poll to the stream's end (not in a task it was handed to).
        let request = self.request.clone();
        let blocked = std::sync::Arc::new(std::sync::Mutex::new(None));
        let ended = blocked.clone();
        if let Route::Claim(Claim { node, .. }) = &self.route {
            node.refuse_if_deadlocked(&self.request);
        }
        let (waiting, rx) = self.split();
        let first = async move {
            let mut counted = crate::node::Blocked::on(&request);
            let answer = tokio::time::timeout_at(waiting.deadline(), rx);
            let mut answer = std::pin::pin!(answer);
            let answer = match futures::poll!(answer.as_mut()) {
                std::task::Poll::Ready(answer) => {
                    // A stream begun at once: its items are still awaited.
                    if let (Some(counted), Ok(Ok(Outcome::Stream(_)))) = (&mut counted, &answer) {
                        counted.waits();
                    }
                    answer
                }
                std::task::Poll::Pending => {
                    if let Some(counted) = &mut counted {
                        counted.waits();
                    }
                    answer.await
                }
            };
            *blocked.lock().unwrap_or_else(|p| p.into_inner()) = counted;
            match answer {
                Ok(Ok(outcome)) => Ok(outcome),
                Ok(Err(_dropped)) => Err(waiting.no_response()),
                Err(_elapsed) => Err(waiting.timed_out()),
            }
        };
        use futures::StreamExt;
        futures::stream::once(first)
            .flat_map(stream::items)
            .inspect(move |item| {
                if matches!(item, Ok(StreamItem::Done(_)) | Err(_)) {
                    ended.lock().unwrap_or_else(|p| p.into_inner()).take();
                }
            })
            .boxed()
    }

    /// Calls `callback` with the result when it arrives (or fails), without
    /// blocking the caller. Events the callback emits keep the causal context
    /// of the flow that sent the request.
    ///
    /// ```
    /// use happen::prelude::*;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> happen::Result<()> {
    /// let happen = Happen::embedded();
    /// let shop = happen.node("shop")?;
    /// let stock = happen.node("stock")?;
    /// stock.on("check-inventory", |_e: Event, _cx: Context| async { json!({ "available": true }) })?;
    ///
    /// let (tx, rx) = tokio::sync::oneshot::channel();
    /// shop.send(&stock, Event::new("check-inventory", json!({ "itemId": "123" })))
    ///     .on_response(move |reply| { tx.send(reply).unwrap(); });
    /// assert_eq!(rx.await.unwrap()?["available"], true);
    /// # Ok(()) }
    /// ```
    pub fn on_response<F>(self, callback: F)
    where
        F: FnOnce(Result<Value>) + Send + 'static,
    {
        // The caller does not wait, so nothing can deadlock on it: the
        // request runs when a slot frees, and the callback hears its answer.
        let mut sent = self;
        if let Route::Claim(_) = sent.route {
            sent.route = Route::Nowhere;
        }
        crate::causality::spawn(async move { callback(sent.response().await) });
    }
}

/// A flow's final outcome as the requester receives it.
enum Reply {
    /// The value alone; the response event is built on demand.
    Value(Value),
    /// The response event as the responder built it.
    Event(Event),
}

/// What a waiting requester needs to name its failures.
struct Waiting {
    request: Event,
    target: Id,
    timeout: Duration,
    sent_at: Option<tokio::time::Instant>,
    /// The deadline shared with the transport (which may note why no
    /// answer came).
    carried: Option<Deadline>,
}

/// When a request times out: `timeout` after it was sent.
/// `wait` after `at`, or a time far beyond any request's life when that
/// is past what an `Instant` holds (a timeout of `Duration::MAX` waits,
/// in effect, for ever; tokio's own timers do the same).
pub(crate) fn later(at: tokio::time::Instant, wait: Duration) -> tokio::time::Instant {
    const FAR: Duration = Duration::from_secs(86_400 * 365 * 30);
    at.checked_add(wait).unwrap_or_else(|| at + FAR)
}

fn deadline(
    sent_at: Option<tokio::time::Instant>,
    request: &Event,
    timeout: Duration,
) -> tokio::time::Instant {
    match sent_at {
        Some(sent_at) => later(sent_at, timeout),
        None => {
            // The stamp's wall-clock reading, in milliseconds (a clock that
            // jumped back counts as no time passed).
            let elapsed = crate::event::now_millis().saturating_sub(request.causal().timestamp);
            let left = timeout.saturating_sub(Duration::from_millis(elapsed));
            later(tokio::time::Instant::now(), left)
        }
    }
}

impl Waiting {
    fn deadline(&self) -> tokio::time::Instant {
        deadline(self.sent_at, &self.request, self.timeout)
    }

    fn no_response(&self) -> HappenError {
        HappenError::NoResponse {
            node: self.target.to_string(),
            event_type: self.request.event_type().to_owned(),
        }
    }

    fn timed_out(&self) -> HappenError {
        if let Some(deadline) = &self.carried
            && let Some(why) = deadline.state().why.clone()
        {
            return why;
        }
        HappenError::timeout(&self.target, self.request.event_type(), self.timeout)
    }
}

impl IntoFuture for Sent {
    type Output = Result<Value>;
    type IntoFuture = Response;

    /// Awaiting the handle is the same as [`Sent::response`].
    fn into_future(self) -> Response {
        Response::new(self)
    }
}

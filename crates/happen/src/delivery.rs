//! Handing an event to a node: the reply half a requester waits on
//! ([`Responder`]), what travels with the event into the node's scheduler
//! ([`Delivery`]), and the one entry point every transport uses
//! ([`deliver`]).
//!
//! Transports depend on this module, not on the node's internals: they find
//! the target node and call [`deliver`], which checks that a handler matches,
//! tells the observers, and lets the node's scheduler run, queue or refuse
//! the event. A refusal goes to the responder at once (and is returned).

use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::error::{HappenError, Result};
use crate::event::Event;
use crate::node::{Matched, NodeCore};
use crate::receipt::Receipt;
use crate::stream::{Outcome, STREAM_WINDOW, StreamMsg, StreamRx, Unwanted};

/// The requester's end of a reply: the sending side of the channel its
/// [`Sent`](crate::Sent) waits on.
pub(crate) type ReplyTx = oneshot::Sender<Outcome>;

/// Where a flow's outcome goes when it leaves the process (a NATS inbox).
pub(crate) trait ReplySink: Send + 'static {
    /// Sends one streamed item (waiting for the consumer if it is behind).
    fn emit(&mut self, value: Value) -> BoxFuture<'_, Result<()>>;
    /// Sends the final outcome (ending the stream if one was started).
    fn reply(self: Box<Self>, outcome: Result<Event>);
}

/// The reply half of a request, handed with the event to the target node.
pub(crate) enum Responder {
    /// The requester is in this process and has not been streamed to.
    Local(ReplyTx),
    /// The requester is in this process and consumes a stream (or let go
    /// of it unread: then the flag is set).
    LocalStream(mpsc::Sender<StreamMsg>, Unwanted),
    /// The requester is elsewhere.
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    Remote(Box<dyn ReplySink>),
    /// The event may be handed to the node again (durable delivery): a
    /// failure does not answer the requester but goes back, with it, to the
    /// acknowledgement, which retries or gives the final answer.
    Retrying(Box<Responder>),
    /// The requester waits for another flow of the same event (that of
    /// the first matching handler): this flow's items and result go
    /// nowhere.
    Elsewhere,
    /// An exactly-once node's request: its final answer is also kept for
    /// the copies of the request ([`crate::kept`]).
    Kept(Box<(Responder, crate::kept::Keeper)>),
}

/// A flow, or a delivery, that failed: the error and, when the event may be
/// retried, the requester still waiting for a final answer.
pub(crate) struct Failure {
    pub(crate) error: HappenError,
    pub(crate) responder: Option<Responder>,
}

impl Failure {
    pub(crate) fn new(error: HappenError) -> Self {
        Failure {
            error,
            responder: None,
        }
    }

    /// Gives the requester (if it still waits) the failure as the final
    /// answer, and returns the error.
    pub(crate) fn answer(self) -> HappenError {
        if let Some(responder) = self.responder {
            responder.reply(Err(self.error.clone()));
        }
        self.error
    }
}

impl Responder {
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    pub(crate) fn remote(sink: impl ReplySink) -> Self {
        Responder::Remote(Box::new(sink))
    }

    /// Whether nobody waits for the outcome any more (a local requester that
    /// dropped its handle). A remote requester is always assumed to wait.
    pub(crate) fn is_abandoned(&self) -> bool {
        match self {
            Responder::Local(tx) => tx.is_closed(),
            Responder::LocalStream(tx, _) => tx.is_closed(),
            Responder::Remote(_) => false,
            Responder::Retrying(inner) => inner.is_abandoned(),
            Responder::Kept(kept) => kept.0.is_abandoned(),
            Responder::Elsewhere => true,
        }
    }

    /// Whether the final answer is kept for copies of the request
    /// ([`Responder::Kept`]): it is wanted even when the requester let go.
    pub(crate) fn keeps_answer(&self) -> bool {
        match self {
            Responder::Kept(..) => true,
            Responder::Retrying(inner) => inner.keeps_answer(),
            _ => false,
        }
    }

    /// Undoes [`Responder::Retrying`]: the responder that answers.
    pub(crate) fn unwrapped(self) -> Responder {
        match self {
            Responder::Retrying(inner) => inner.unwrapped(),
            other => other,
        }
    }

    /// Answers with `outcome`, unless it is a failure and the event will be
    /// retried: then the responder comes back with the error.
    pub(crate) fn conclude(
        self,
        outcome: Result<Event>,
    ) -> std::result::Result<Option<BoxFuture<'static, ()>>, Failure> {
        match (self, outcome) {
            (Responder::Retrying(inner), Err(error)) => Err(Failure {
                error,
                responder: Some(*inner),
            }),
            (responder, outcome) => Ok(responder.unwrapped().finish(outcome)),
        }
    }

    /// Streams one value to the requester; `Cancelled` once it stopped
    /// consuming. When the requester let go of its request before looking
    /// at any item (dropped unread: fire-and-forget, or its timeout passed)
    /// the value is dropped and the flow is not cancelled.
    pub(crate) async fn emit(&mut self, value: Value) -> Result<()> {
        // Once items have gone out, a later failure is the requester's final
        // answer: a retry could not take them back.
        if let Responder::Retrying(_) = self {
            let Responder::Retrying(inner) =
                std::mem::replace(self, Responder::Local(oneshot::channel().0))
            else {
                unreachable!("checked above");
            };
            *self = inner.unwrapped();
        }
        if let Responder::Local(reply) = self {
            if reply.is_closed() {
                return Ok(()); // nobody will look
            }
            let (tx, rx) = mpsc::channel(STREAM_WINDOW);
            let unwanted = Unwanted::default();
            let Responder::Local(reply) =
                std::mem::replace(self, Responder::LocalStream(tx, unwanted.clone()))
            else {
                unreachable!("checked above");
            };
            // Refused: the stream, unread, sets `unwanted` as it drops.
            let _ = reply.send(Outcome::Stream(StreamRx::new(rx, Some(Box::new(unwanted)))));
        }
        match self {
            Responder::LocalStream(tx, unwanted) => match tx.send(StreamMsg::Item(value)).await {
                Ok(()) => Ok(()),
                Err(_) if unwanted.is_set() => Ok(()),
                Err(_) => Err(HappenError::Cancelled),
            },
            Responder::Remote(sink) => sink.emit(value).await,
            Responder::Kept(kept) => Box::pin(kept.0.emit(value)).await,
            Responder::Elsewhere => Ok(()),
            Responder::Local(_) | Responder::Retrying(_) => Err(HappenError::Cancelled),
        }
    }

    /// Sends the final outcome; if a stream's consumer is behind, the
    /// future that waits for room to send it is returned.
    pub(crate) fn finish(self, outcome: Result<Event>) -> Option<BoxFuture<'static, ()>> {
        match self {
            Responder::Kept(kept) => {
                let (inner, keeper) = *kept;
                keeper.give(&outcome);
                inner.finish(outcome)
            }
            Responder::LocalStream(tx, _) => match tx.try_send(StreamMsg::End(outcome)) {
                Err(mpsc::error::TrySendError::Full(end)) => Some(Box::pin(async move {
                    let _ = tx.send(end).await;
                })),
                // Sent, or the consumer is gone.
                _ => None,
            },
            other => {
                other.reply(outcome);
                None
            }
        }
    }

    /// Sends the final outcome at once (refusals, before any stream).
    pub(crate) fn reply(self, outcome: Result<Event>) {
        match self {
            // The requester may have stopped waiting (fire-and-forget,
            // timeout): then the outcome has nowhere to go, which is fine.
            Responder::Local(tx) => {
                let _ = tx.send(Outcome::Done(outcome));
            }
            Responder::LocalStream(tx, _) => {
                let _ = tx.try_send(StreamMsg::End(outcome));
            }
            Responder::Remote(sink) => sink.reply(outcome),
            Responder::Retrying(inner) => inner.reply(outcome),
            Responder::Kept(kept) => {
                let (inner, keeper) = *kept;
                keeper.give(&outcome);
                inner.reply(outcome);
            }
            Responder::Elsewhere => {}
        }
    }
}

/// What the transport learns when the node is done with a delivered event:
/// the acknowledgement seam of durable delivery. A durable transport hands
/// one in with the event and settles its message (ack, or nak for a later
/// redelivery) when the event's flows have ended; direct delivery has none.
pub(crate) trait Acknowledge: Send + 'static {
    /// Every flow of the event completed.
    fn ack(self: Box<Self>);
    /// The event was refused, or one of its flows failed. The requester, if
    /// one still waits, has not been answered: the acknowledgement retries
    /// (keeping it for the next attempt) or answers it with the failure.
    fn nak(self: Box<Self>, failure: Failure);
}

/// Where a delivered event comes from, which says when it was received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// Stamped in this process just now and handed over at once: the
    /// stamp's clock reading is the time of receipt (no second reading).
    Local,
    /// From another process: received now.
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    Remote,
}

impl Arrival {
    fn received_at(self, event: &Event) -> u64 {
        match self {
            Arrival::Local => event.causal().timestamp,
            Arrival::Remote => crate::event::now_millis(),
        }
    }
}

/// An event on its way into a node, with whoever waits for its outcome.
pub(crate) struct Delivery {
    pub(crate) event: Event,
    /// When the node received it (ms since the Unix epoch).
    pub(crate) received_at: u64,
    pub(crate) responder: Option<Responder>,
    pub(crate) ack: Option<Box<dyn Acknowledge>>,
    /// The node's handlers that matched on arrival (set by [`deliver`]).
    pub(crate) matched: Option<Matched>,
    /// Whether the flow may start inline in the caller's task when the node
    /// is idle: true for events a transport's reader hands over (no user
    /// code is on its stack), false for a user's own send.
    pub(crate) inline: bool,
    /// Whether the requester, in this process, checks for a deadlock when
    /// it starts to wait (see [`crate::node::NodeCore::refuse_if_deadlocked`]):
    /// then the node queues the request even when it would deadlock a
    /// waiting requester, since one that dropped its handle (fire-and-forget)
    /// does not wait. Set back to `false` once the requester waits (or for
    /// a request whose requester is elsewhere): the node may then refuse it
    /// while it is queued, should its flows all come to wait (see
    /// `node::blocked`).
    pub(crate) deadlock_at_await: bool,
}

impl Delivery {
    /// A delivery without acknowledgement (direct mode).
    pub(crate) fn new(event: Event, responder: Option<Responder>, arrival: Arrival) -> Self {
        Delivery {
            inline: arrival == Arrival::Remote,
            received_at: arrival.received_at(&event),
            event,
            responder,
            ack: None,
            matched: None,
            deadlock_at_await: false,
        }
    }

    /// A request from a handle in this process, which checks for a
    /// deadlock when it is awaited ([`Delivery::deadlock_at_await`]).
    pub(crate) fn awaitable(event: Event, reply: ReplyTx) -> Self {
        Delivery {
            inline: false,
            received_at: Arrival::Local.received_at(&event),
            event,
            responder: Some(Responder::Local(reply)),
            ack: None,
            matched: None,
            deadlock_at_await: true,
        }
    }

    /// Whether the event was made in this process and handed over directly
    /// (a transport's reader, or a durable retry, hands over the rest: the
    /// same events [`Delivery::inline`] lets start in the reader's task).
    fn made_here(&self) -> bool {
        !self.inline
    }

    /// Refuses the delivery: the responder hears `error` at once, the
    /// message is negatively acknowledged, and the error is returned.
    pub(crate) fn refuse(self, error: HappenError) -> Result<()> {
        let responder = self.responder.map(Responder::unwrapped);
        match self.ack {
            // Durable: the acknowledgement retries what may end otherwise
            // (the event is accepted) and reports the rest.
            Some(ack) => {
                let retried = crate::durable::worth_retrying(&error);
                ack.nak(Failure {
                    error: error.clone(),
                    responder,
                });
                if retried {
                    return Ok(());
                }
            }
            None => {
                if let Some(responder) = responder {
                    responder.reply(Err(error.clone()));
                }
            }
        }
        Err(error)
    }
}

/// Hands `delivery` to `node`: it starts a flow at once, waits in the node's
/// queue, or is refused (no matching handler, queue full, node shut down).
///
/// A delivery whose `matched` is already set (a broadcast found its
/// receivers by matching) is not matched again.
pub(crate) fn deliver(node: &Arc<NodeCore>, mut delivery: Delivery) -> Result<()> {
    if let Err(error) = node.accepts(&delivery.event, delivery.made_here()) {
        return delivery.refuse(error);
    }
    if delivery.ack.is_none() && node.retried_here() {
        // What could not be read back after a restart is not spooled (and
        // refused before the node records the event as seen).
        #[cfg(feature = "redb")]
        if node.spool().is_some()
            && let Err(error) = crate::depth::check_event(&delivery.event)
        {
            return delivery.refuse(error);
        }
        if !node.first_sight(&delivery.event) {
            // Exactly-once: a copy of an event this node already took. Its
            // requester, if any (a flow that asked, failed and runs again),
            // gets the first one's answer.
            if let Some(responder) = delivery.responder.take() {
                node.seen
                    .answers()
                    .copy(node.id(), &delivery.event, responder);
            }
            return Ok(());
        }
        let exactly_once = node.limits().delivery.mode == crate::DeliveryMode::ExactlyOnce;
        if let Some(responder) = delivery.responder.take_if(|_| exactly_once) {
            let window = node.limits().delivery.dedup_window;
            let kept = node.seen.answers().keep(&delivery.event, responder, window);
            delivery.responder = Some(kept);
        }
        delivery.ack = Some(crate::durable::LocalRetry::first(node, &delivery.event));
        #[cfg(feature = "redb")]
        if let Some(spool) = node.spool() {
            // Matched now, so that a refusal reaches the sender at once;
            // handed over once it is on disk.
            if delivery.matched.is_none() {
                match node.admits(delivery.event.event_type()) {
                    Ok(matched) => delivery.matched = Some(matched),
                    Err(error) => return delivery.refuse(error),
                }
            }
            // Scheduled only once on disk, after its requester may have
            // started to wait: the node checks for a deadlock itself.
            delivery.deadlock_at_await = false;
            return spool.store(node, delivery);
        }
    }
    if delivery.matched.is_none() {
        match node.admits(delivery.event.event_type()) {
            Ok(matched) => delivery.matched = Some(matched),
            Err(HappenError::NoHandler { .. })
                if node.zero_matches(delivery.event.event_type()) =>
            {
                return to_zero(node, delivery);
            }
            Err(error) => return delivery.refuse(error),
        }
    }
    node.observers().delivered(node.id(), &delivery.event);
    node.schedule(delivery)
}

/// An ordinary event for a node whose only matching handler is a zero
/// handler: converted at the boundary (see [`crate::zero`]).
fn to_zero(node: &Arc<NodeCore>, delivery: Delivery) -> Result<()> {
    if delivery.event.is_batch() {
        // A zero event has one set of fields: the members would be lost.
        let error = HappenError::InvalidBatch {
            reason: format!(
                "node {} takes {:?} only with a zero handler, which reads one event: send the members one by one",
                node.id(),
                delivery.event.event_type()
            ),
        };
        return delivery.refuse(error);
    }
    let zero = match crate::zero::ZeroEvent::from_event(&delivery.event) {
        Ok(zero) => zero,
        Err(error) => return delivery.refuse(error.into()),
    };
    let reply = match delivery.responder {
        Some(responder) => crate::zero::ReplyTo::Ordinary(responder, delivery.event),
        None => crate::zero::ReplyTo::Nobody,
    };
    let arrival = if delivery.inline {
        Arrival::Remote
    } else {
        Arrival::Local
    };
    // Checked above in its ordinary form.
    crate::zero::deliver_accepted(node, zero, reply, arrival)
}

/// What a sender awaits for an event [`deliver`] accepted for `node`: the
/// spool's commit for a durable node on disk, else nothing.
pub(crate) fn receipt(_node: &NodeCore) -> Receipt {
    #[cfg(feature = "redb")]
    if _node.retried_here()
        && let Some(spool) = _node.spool()
    {
        return spool.receipt();
    }
    Receipt::kept()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prelude::*;
    use std::sync::Mutex;

    /// Records how each delivery was settled.
    struct Recorded(Arc<Mutex<Vec<String>>>);

    impl Acknowledge for Recorded {
        fn ack(self: Box<Self>) {
            self.0.lock().unwrap().push("ack".into());
        }
        fn nak(self: Box<Self>, failure: Failure) {
            self.0
                .lock()
                .unwrap()
                .push(format!("nak: {}", failure.answer()));
        }
    }

    /// The acknowledgement reaches the end of the event's flows: ack after a
    /// completed flow, nak after a failed one or a refusal. On the paused
    /// clock (the test kit's way): the waits below are exact and instant.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn acknowledgement_follows_the_flow() {
        let happen = Happen::embedded();
        let node = happen
            .node_with("acked", NodeConfig::new().max_concurrent(1).queue_limit(0))
            .unwrap();
        node.on("ok", |_e: Event, _cx: Context| async {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        })
        .unwrap();
        node.on("bad", |_e: Event, _cx: Context| async {
            Err::<Value, _>(HappenError::Cancelled)
        })
        .unwrap();
        let settled = Arc::new(Mutex::new(Vec::new()));
        let send = |event_type: &str| {
            let mut event = Event::new(event_type, json!(null));
            crate::event::stamp(&mut event, node.shared_id(), None);
            deliver(
                node.core(),
                Delivery {
                    received_at: event.causal().timestamp,
                    event,
                    responder: None,
                    ack: Some(Box::new(Recorded(settled.clone()))),
                    matched: None,
                    inline: false,
                    deadlock_at_await: false,
                },
            )
        };
        send("ok").unwrap();
        // The acknowledgement took the refusal (a durable transport would
        // deliver it again): the sender is not refused.
        send("ok").unwrap();
        assert!(matches!(
            send("nothing"),
            Err(HappenError::NoHandler { .. })
        ));
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        send("bad").unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let settled = settled.lock().unwrap().clone();
        assert_eq!(settled.len(), 4, "{settled:?}");
        assert!(settled[0].starts_with("nak") && settled[0].contains("overloaded"));
        assert!(settled[1].starts_with("nak") && settled[1].contains("no handler"));
        assert_eq!(settled[2], "ack");
        assert!(settled[3].starts_with("nak") && settled[3].contains("failed"));
    }
}

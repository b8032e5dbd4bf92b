//! Durable delivery: what [`DeliveryMode::AtLeastOnce`] and
//! [`DeliveryMode::ExactlyOnce`] promise, and the retry policy both
//! runtimes share.
//!
//! A node opts in with [`NodeConfig::delivery`](crate::NodeConfig::delivery)
//! (or the whole system with
//! [`HappenConfig::delivery`](crate::HappenConfig::delivery)). Direct
//! delivery stays the default: it is the fastest, and loses what is in
//! flight when a process dies.
//!
//! # What each mode guarantees
//!
//! | | direct | at-least-once | exactly-once |
//! |---|---|---|---|
//! | event stored before delivery (NATS: JetStream) | no | yes | yes |
//! | flow failed or node saturated: tried again with backoff | no | yes | yes |
//! | process died mid-flow: event handed out again | no | yes | yes |
//! | event settled only once the events its flow emitted to durable nodes are stored | no | yes | yes |
//! | last attempt failed: [`system::DEAD_LETTER`] event | no | yes | yes |
//! | a flow may run twice for one event | no | yes | no, once it completed |
//! | events a re-run flow emits are new events | — | yes | no: same ids; durable receivers drop the copies, and a request among them gets the first answer again |
//! | state changes a re-run flow makes apply again | — | yes | no: recognised, not applied |
//!
//! **What a flow emitted is kept before its event is let go.** A durable
//! node's event is acknowledged (removed from the stream, or from the spool
//! on disk) only once the events its flow told or broadcast to durable
//! nodes are stored, so a process that dies at any point loses neither:
//! either the event comes back and the flow runs again, or what it emitted
//! is already stored. Over NATS, while an acknowledgement waits it tells
//! the server every half [`DeliveryConfig::ack_wait`] that the event is
//! still being worked on, so the event is not handed out again meanwhile;
//! a shutting-down runtime stores what its flows emitted and sends the
//! waiting acknowledgements before it disconnects (within its close
//! limit). What is waited for is the events stamped with the event as
//! their cause: events sent from a task the flow spawned with
//! [`happen::spawn`](crate::spawn) while the flow runs are; events sent
//! from a plain `tokio::spawn` (they have no cause), from a task left
//! running after the flow ended, or further down a chain (by a node the
//! flow asked) are not. If one of the waited-for events cannot be stored
//! (a request given up at its deadline), the event is left unsettled and
//! comes back. A stream that refuses new events (full) therefore holds
//! back the acknowledgements of flows that emit into it, and with them
//! the room they would free: give durable streams room, or watch their
//! flow balance.
//!
//! **Attempts and the requester.** A request to a durable node is answered
//! by the attempt that ends the event: the first that succeeds, or the last
//! one. A failed attempt that will be retried does not answer, so the
//! requester sees transient failures only as latency, or as
//! [`HappenError::Timeout`] when its own deadline passes first; the event
//! is still processed after that. Sending it again after a timeout sends
//! a new event (a new id, stamped anew), which an exactly-once node runs
//! too: to retry without doing the work twice, key the work on something
//! of your own in the payload (an order id), as for effects outside
//! Happen below. Once a flow has streamed items to its
//! requester, its failure is final for the requester (the items cannot be
//! taken back), though the event is still retried.
//!
//! Over NATS the answer (when not streamed) is also kept in JetStream
//! (ten minutes; 256 MiB of answers at most) for its requester: an answer made while the
//! server was unreachable goes out when the answering process reconnects,
//! possibly before the requester's process has subscribed again, and the
//! requester finds it kept. Without that a server restart while flows ran
//! left every requester waiting out its timeout.
//!
//! **Exactly-once, precisely.** Inside Happen, an event to an exactly-once
//! node has the effects of one completed flow:
//! - a redelivered event whose flow completed is not run again;
//! - the events a flow emits carry ids derived from the event being
//!   handled, the node and their position in the flow (in the order the
//!   flow emits them), so when a flow is run again after a failure or a
//!   crash, the events it emits again are the same events, and durable
//!   receivers drop the copies (de-duplication by event id within
//!   [`DeliveryConfig::dedup_window`]);
//! - the state updates a flow makes ([`State::set`](crate::State::set) and
//!   its variants, on any node's state) are numbered the same way, and each
//!   saves, in the same atomic write as the new value, a mark of how far
//!   the flow got. A re-run's update that the state already holds is not
//!   applied again: `set` returns the state as it is now. The marks of an
//!   event go at the next write once the event is settled (its completion
//!   recorded, or dead-lettered); a state keeps at most 4096 marks of
//!   unfinished flows (far above the events a node is handed at once);
//! - when several handlers of the node take the event, each flow's events
//!   and updates are numbered apart (by the handlers' registration order);
//! - over NATS, a copy of a completed event stored in the stream again (by
//!   a client that captured it on the wire) is not run again, also after
//!   the node's process restarted: one stored under another message id is
//!   refused as `system.rejected`, and completions are remembered for
//!   twice the runtime's duplicate window, the horizon of this guarantee.
//!
//! This holds for flows that do the same things in the same order when
//! they run again (the ids and numbers follow that order): branch on the
//! event and on state, not on the clock or on the order concurrent work
//! happens to finish in.
//!
//! Effects outside Happen (a payment provider, an email) are at-least-once:
//! make them idempotent with the event id as the key, which is the same on
//! every attempt:
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use std::collections::HashSet;
//! use happen::prelude::*;
//! use happen::DeliveryConfig;
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> happen::Result<()> {
//! let happen = Happen::embedded();
//! let payments = happen.node_with("payments", NodeConfig::new().delivery(
//!     DeliveryConfig::exactly_once().backoff(std::time::Duration::from_millis(1), std::time::Duration::from_millis(5)),
//! ))?;
//! let charged: Arc<Mutex<HashSet<String>>> = Arc::default();
//! let attempts = Arc::new(Mutex::new(0));
//! let (c, a) = (charged.clone(), attempts.clone());
//! payments.on("charge", move |event: Event, _cx: Context| {
//!     let (charged, attempts) = (c.clone(), a.clone());
//!     async move {
//!         // The provider call, keyed by the event id: a retry does not charge twice.
//!         charged.lock().unwrap().insert(event.id().to_owned());
//!         *attempts.lock().unwrap() += 1;
//!         if *attempts.lock().unwrap() < 3 {
//!             // A transient failure after the charge (any error of yours).
//!             return Err(happen::BoxError::from("the provider timed out"));
//!         }
//!         Ok(json!("charged"))
//!     }
//! })?;
//! let shop = happen.node("shop")?;
//! assert_eq!(shop.send(&payments, Event::new("charge", json!({ "cents": 500 }))).await?, "charged");
//! assert_eq!((*attempts.lock().unwrap(), charged.lock().unwrap().len()), (3, 1));
//! # Ok(()) }
//! ```
//!
//! **Knowing an event is stored.** `tell` and `broadcast` return as soon as
//! the event is on its way, with a [`Receipt`](crate::Receipt) to await
//! when the sender must know that the event is stored (JetStream's
//! acknowledgement; embedded on disk, the database commit):
//! `node.tell("payments", event)?.await?`. For a request,
//! [`Sent::stored`](crate::Sent::stored) does the same before the response.
//!
//! # In one process
//!
//! The embedded runtime retries failed and refused events with backoff and
//! dead-letters them after the last attempt. In memory
//! ([`Happen::embedded`](crate::Happen::embedded)) what is queued is lost
//! with the process; on disk
//! ([`Happen::embedded_on_disk`](crate::Happen::embedded_on_disk)) each
//! event for a durable node is written to the database before the node
//! gets it and removed when it is done, so after a restart the node gets
//! again what it had not finished, once a handler that takes it is
//! registered.
//!
//! # Over NATS
//!
//! See `docs/ARCHITECTURE.md` ("Durable delivery"): one JetStream stream for
//! events to durable nodes, `Nats-Msg-Id` = event id and node, one durable consumer
//! per node id (shared by its instances), explicit acknowledgement at the
//! end of the flow, negative acknowledgement with the backoff delay.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::config::{DeliveryConfig, DeliveryMode};
use crate::delivery::{self, Acknowledge, Arrival, Delivery, Failure};
use crate::error::HappenError;
use crate::event::Event;
use crate::id::Id;
use crate::node::NodeCore;

#[cfg(doc)]
use crate::system;

/// Whether trying `error`'s event again could end differently. Routing
/// errors (no handler, unknown node, invalid input) will not change.
pub(crate) fn worth_retrying(error: &HappenError) -> bool {
    matches!(
        error,
        HappenError::QueueFull { .. }
            | HappenError::HandlerFailed { .. }
            | HappenError::HandlerPanicked { .. }
            | HappenError::Timeout { .. }
            | HappenError::NoResponse { .. }
            | HappenError::Cancelled
            | HappenError::StreamBroken { .. }
            | HappenError::Transport { .. }
            | HappenError::Backpressure { .. }
            | HappenError::Unreachable { .. }
            | HappenError::Store { .. }
            | HappenError::Conflict { .. }
    )
}

/// The delay before the attempt after `failed` failed ones, with up to 20%
/// jitter so that the retries of many events spread out.
pub(crate) fn jittered_delay(config: &DeliveryConfig, failed: u32) -> Duration {
    let delay = config.retry_delay(failed);
    let spread = delay / 5;
    if spread.is_zero() {
        return delay;
    }
    let nanos = u64::try_from(spread.as_nanos()).unwrap_or(u64::MAX);
    delay + Duration::from_nanos(crate::uuid7::random() % nanos)
}

/// In-process durable delivery: the acknowledgement of one attempt. A
/// failure schedules the next attempt after the backoff delay, with the
/// requester still waiting; the last failure dead-letters the event.
pub(crate) struct LocalRetry {
    node: Weak<NodeCore>,
    event: Event,
    /// This attempt, from 1.
    attempt: u32,
}

impl LocalRetry {
    /// The acknowledgement of an event's first attempt at `node`.
    pub(crate) fn first(node: &Arc<NodeCore>, event: &Event) -> Box<dyn Acknowledge> {
        Box::new(LocalRetry {
            node: Arc::downgrade(node),
            event: event.clone(),
            attempt: 1,
        })
    }
}

impl LocalRetry {
    /// The event is done with (completed, or dead-lettered): the spool, if
    /// any, forgets it, and then the marks of its state updates may go.
    fn settled(&self, node: &NodeCore) {
        let settled = node.settled().clone();
        let event = self.event.causal().id.clone();
        #[cfg(feature = "redb")]
        if let Some(spool) = node.spool() {
            // Once the removal is on disk: until then a restart runs the
            // event again, and its marks must still be there.
            spool.remove(node.id(), self.event.id(), move || settled.settle(&event));
            return;
        }
        settled.settle(&event);
    }
}

impl Acknowledge for LocalRetry {
    fn ack(self: Box<Self>) {
        if let Some(node) = self.node.upgrade() {
            self.settled(&node);
        }
    }

    fn nak(self: Box<Self>, failure: Failure) {
        let Some(node) = self.node.upgrade() else {
            failure.answer();
            return;
        };
        // Stopping (the node, or the whole runtime): a spooled event stays
        // on disk for the next run.
        #[cfg(feature = "redb")]
        if node.spool().is_some()
            && (node.is_closed() || matches!(failure.error, HappenError::Shutdown))
        {
            failure.answer();
            return;
        }
        let config = node.limits().delivery;
        // Once shutdown began, the retry waiting then ran at once (below):
        // a failure after that is final, not tried again back to back.
        let stopping = node
            .runtime_inner()
            .is_none_or(|r| r.stopping.is_cancelled());
        let retry = self.attempt < config.max_attempts
            && worth_retrying(&failure.error)
            && !node.is_closed()
            && !stopping
            && config.mode != DeliveryMode::Direct;
        if !retry {
            return self.give_up(&node, failure);
        }
        let Some(runtime) = node.runtime_inner() else {
            // The runtime is gone: nothing settles or dead-letters here (a
            // spooled event stays on disk for the next run).
            failure.answer();
            return;
        };
        let delay = jittered_delay(&config, self.attempt);
        let weak = Arc::downgrade(&node);
        // Counted by the node (its shutdown runs it at once and waits for
        // it, as for the events in its queue) and by the runtime (whose
        // shutdown does the same). Holding the node only weakly while it
        // waits: a spooled node's database closes with the runtime. A
        // cancellation audit found the retry running after `shutdown` had
        // returned, and the database locked for the backoff.
        let failure = std::cell::Cell::new(Some(failure));
        let waiting = node.retries.wait(&runtime.stopping, |now| {
            let failure = failure.take();
            let (event, attempt) = (self.event.clone(), self.attempt);
            async move {
                let Some(failure) = failure else { return };
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = now.cancelled() => {}
                }
                try_again(weak, event, attempt, failure, now.is_cancelled());
            }
        });
        match waiting {
            Some(waiting) => runtime.spawn(waiting),
            // The node's shutdown began meanwhile: final (on disk, kept
            // for the next run, as above).
            None => {
                let Some(failure) = failure.take() else {
                    return;
                };
                #[cfg(feature = "redb")]
                if node.spool().is_some() {
                    failure.answer();
                    return;
                }
                self.give_up(&node, failure);
            }
        }
    }
}

impl LocalRetry {
    /// A failure that is final: the event goes to the dead letters and its
    /// requester gets the failure.
    fn give_up(&self, node: &NodeCore, failure: Failure) {
        self.settled(node);
        if let Some(runtime) = node.runtime_inner() {
            runtime.transport().local().dead_letter(
                node.id(),
                &self.event,
                self.attempt,
                &failure.error,
            );
        }
        failure.answer();
    }
}

/// Hands `event` to its node again after its backoff (or, `early`, when
/// the node or the runtime began to shut down: shutdown drains what was
/// accepted, and a failure after that is final).
fn try_again(weak: Weak<NodeCore>, event: Event, attempt: u32, failure: Failure, early: bool) {
    let Some(node) = weak.upgrade() else {
        failure.answer();
        return;
    };
    // Stopping: a spooled event stays on disk for the next run.
    #[cfg(feature = "redb")]
    if node.spool().is_some() && early {
        let stopped = Failure {
            error: HappenError::Shutdown,
            responder: failure.responder,
        };
        stopped.answer();
        return;
    }
    #[cfg(not(feature = "redb"))]
    let _ = early;
    let mut next = Delivery::new(event.clone(), failure.responder, Arrival::Remote);
    next.inline = false;
    if node.is_closed() {
        // Its shutdown drains it: the handlers are still there, though
        // the node takes no new event.
        next.matched = node.handlers_for(event.event_type());
    }
    next.ack = Some(Box::new(LocalRetry {
        node: weak,
        event,
        attempt: attempt + 1,
    }));
    // A refusal comes back through the acknowledgement.
    let _ = delivery::deliver(&node, next);
}

/// The events an exactly-once node took in this process within the
/// de-duplication window (by event id, or any key naming one), so that a
/// copy, or a redelivery while the flow still runs, is not run again.
#[derive(Default)]
pub(crate) struct Seen {
    ids: Mutex<HashMap<Id, Instant>>,
    /// The answers of the requests among them, for their copies; made on
    /// first use (a node that is not exactly-once never needs it, and a
    /// million idle nodes would pay for it).
    answers: std::sync::OnceLock<Arc<crate::kept::Kept>>,
}

impl Seen {
    /// The answers of the requests among the events taken.
    pub(crate) fn answers(&self) -> &Arc<crate::kept::Kept> {
        self.answers.get_or_init(Arc::default)
    }

    /// Whether `id` is new within `window` (and remembers it).
    pub(crate) fn first(&self, id: &str, window: Duration) -> bool {
        let now = Instant::now();
        let mut ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(at) = ids.get(id)
            && now.duration_since(*at) < window
        {
            return false;
        }
        // Forget what left the window, at most once per doubling of the
        // table, so that remembering stays cheap.
        if ids.len() >= 1024 && ids.len().is_power_of_two() {
            ids.retain(|_, at| now.duration_since(*at) < window);
        }
        ids.insert(Id::from(id), now);
        true
    }

    /// Forgets `id`: its event failed and may be taken again (its retry).
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    pub(crate) fn forget(&self, id: &str) {
        self.ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }
}

impl crate::Happen {
    /// Forgets, system-wide, that the node `id` is durable, and drops the
    /// events stored for it that it has not taken: what you do before
    /// giving a node that was durable direct delivery. Until then, a node
    /// of that id with direct delivery is refused
    /// ([`HappenError::Config`]): every process would go on storing its
    /// events where it never takes them.
    ///
    /// Over NATS this deletes the node's registration (other processes send
    /// to it directly once they learn it, within moments), then, half a
    /// second later, its JetStream consumer with what was stored for it (an
    /// event sent in between may still be stored, and goes too). It is
    /// refused while the node is durable in this process; a durable
    /// instance in another process registers it again. Embedded, there is
    /// nothing to forget.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> happen::Result<()> {
    /// let happen = happen::Happen::embedded();
    /// happen.forget_durable("payments").await?;
    /// # Ok(()) }
    /// ```
    pub async fn forget_durable(&self, id: &str) -> crate::Result<()> {
        self.0.transport().forget_durable(id).await
    }
}

//! Sending: to one node by handle or id, with or without an answer, and
//! the stamping every outgoing event goes through.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use super::{Node, NodeCore, NodeRef, Target};
use crate::causality;
use crate::delivery::{self, Arrival, Delivery};
use crate::error::{HappenError, Result};
use crate::event::{self, Event};
use crate::id::Id;
use crate::name::{validate_event_type, validate_node_id};
use crate::receipt::Receipt;
use crate::response::Sent;
use crate::runtime::RuntimeInner;

/// Whom an outgoing event's signature is made for (see
/// [`crate::identity::sign`]).
pub(crate) enum Addressee<'a> {
    /// The one node it is sent to.
    Node(&'a str),
    /// Every node that takes its type (a broadcast).
    Everyone,
    /// Each node of a group: signed later, once per node, on its copy.
    EachOfGroup,
}

impl<S> Node<S> {
    /// Sends `event` to `target` and returns at once; the event is already on
    /// its way.
    ///
    /// Await the returned [`Sent`] (or call [`Sent::response`]) for the flow's
    /// result, use [`Sent::on_response`] for a callback, or drop it for
    /// fire-and-forget. Errors (no such node, no matching handler, full queue,
    /// invalid event type) arrive through the handle without waiting for a
    /// timeout. Waiting for a request that can never start (its target
    /// waits, up the causal chain, for this very answer, and each of its
    /// slots is held by a flow waiting for an answer too)
    /// fails at once with [`HappenError::Deadlock`]; a dropped handle waits
    /// for nothing, so its request is queued and runs once a slot frees.
    pub fn send(&self, target: impl Target, event: Event) -> Sent {
        let timeout = self.core.limits.timeout;
        if let Some(node) = self.in_process(&target) {
            return self.send_in_process(node, event);
        }
        let runtime = match self.runtime() {
            Ok(runtime) => runtime,
            Err(e) => return Sent::refused(target.target_shared_id(), event, timeout, e),
        };
        let target = target.target_shared_id();
        if let Err(e) = validate_node_id(&target) {
            return Sent::refused(target, event, timeout, e.into());
        }
        match self.prepare(event, true, Addressee::Node(&target)) {
            Ok(event) => self.send_stamped(&runtime, target, event),
            Err((e, event)) => Sent::refused(target, event, timeout, e),
        }
    }

    /// [`Node::send`] to a node of this process, handed over directly.
    fn send_in_process(&self, node: &Arc<NodeCore>, event: Event) -> Sent {
        match self.prepare(event, true, Addressee::Node(&node.id)) {
            Ok(event) => self.hand_over(node, event),
            Err((e, event)) => Sent::refused(node.id.clone(), event, self.core.limits.timeout, e),
        }
    }

    /// Sends a stamped event to `target`: handed over directly when it is a
    /// node of this process (named by id, it is sent to as if by handle),
    /// else through the transport.
    pub(crate) fn send_stamped(&self, runtime: &RuntimeInner, target: Id, event: Event) -> Sent {
        if self.core.in_process
            && let Some(node) = runtime.transport().node(&target)
            && let Some(node) = self.in_process(&node)
        {
            return self.hand_over(node, event);
        }
        self.dispatch(runtime, target, event)
    }

    /// Hands a stamped event to a node of this process. The handle checks
    /// for a deadlock when it is awaited: a dropped one (fire-and-forget)
    /// waits for nothing.
    fn hand_over(&self, node: &Arc<NodeCore>, event: Event) -> Sent {
        let (sent, reply) = Sent::new(node.id.clone(), event.clone(), self.core.limits.timeout);
        match delivery::deliver(node, Delivery::awaitable(event, reply)) {
            Ok(()) => sent.with_receipt(delivery::receipt(node)).claimable(node),
            Err(error) => sent.with_receipt(Receipt::failed(error)),
        }
    }

    /// [`Node::send`] for code that is not async (a plain thread, a
    /// callback of a synchronous library): sends `event` to `target` and
    /// blocks this thread until the flow's result arrives (or the request
    /// times out). The runtime's tasks carry the work meanwhile, so a
    /// current-thread runtime must be driven by another thread while a
    /// plain thread waits here (a multi-thread runtime drives itself).
    ///
    /// Where it may be called:
    /// - on a thread of your own, or a `tokio::task::spawn_blocking` one;
    /// - on a multi-thread runtime, anywhere, its tasks included: it waits
    ///   in `tokio::task::block_in_place`, which hands the thread's other
    ///   tasks to another thread (an `.await` is still the better choice in
    ///   async code);
    /// - not on the thread that drives a current-thread runtime, whose
    ///   tasks would stop while it waits: there it sends nothing and
    ///   returns [`HappenError::BlockingInRuntime`] at once. (A
    ///   current-thread runtime's `spawn_blocking` threads are told apart
    ///   from it by tokio's default thread name; under a runtime that names
    ///   its threads otherwise they are refused the same way.)
    ///
    /// ```
    /// use happen::prelude::*;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> happen::Result<()> {
    /// let happen = Happen::embedded();
    /// let pricing = happen.node("pricing")?;
    /// pricing.on("quote", |e: Event, _cx: Context| async move { json!(e.payload()["qty"].as_u64().unwrap_or(0) * 3) })?;
    /// // A synchronous caller on a blocking thread:
    /// let node = pricing.clone();
    /// let price = tokio::task::spawn_blocking(move || node.send_sync("pricing", Event::new("quote", json!({ "qty": 4 }))))
    ///     .await
    ///     .unwrap()?;
    /// assert_eq!(price, json!(12));
    /// // On the thread that drives this current-thread runtime it refuses
    /// // rather than stopping it.
    /// let err = pricing.send_sync("pricing", Event::new("quote", json!({}))).unwrap_err();
    /// assert!(matches!(err, HappenError::BlockingInRuntime { .. }));
    /// # Ok(()) }
    /// ```
    pub fn send_sync(&self, target: impl Target, event: Event) -> Result<serde_json::Value> {
        let (handle, wait) = self.blocking_handle("Node::send_sync")?;
        let sent = self.send(target, event).unclaimed();
        wait.block_on(&handle, sent.response())
    }

    /// The documentation's `processSync`: hands `event` to this node's own
    /// handlers and blocks until the flow's response event (with its causal
    /// context) arrives; see [`Node::send_sync`] for where it may be called.
    pub fn process_sync(&self, event: Event) -> Result<Event> {
        let (handle, wait) = self.blocking_handle("Node::process_sync")?;
        let sent = self.send(self.id(), event).unclaimed();
        wait.block_on(&handle, sent.response_event())
    }

    /// The runtime's handle, and how this thread may wait for its work
    /// (see [`Node::send_sync`]).
    fn blocking_handle(&self, call: &str) -> Result<(tokio::runtime::Handle, Wait)> {
        let refused = || HappenError::BlockingInRuntime {
            call: call.to_owned(),
        };
        let guessed = match tokio::runtime::Handle::try_current() {
            Err(_) => None,
            Ok(current) => match current.runtime_flavor() {
                tokio::runtime::RuntimeFlavor::MultiThread => Some(Wait::InPlace),
                // A current-thread runtime has no worker threads: a task of
                // tokio's blocking pool (a `spawn_blocking` closure) runs on
                // a thread with tokio's name; any other thread drives it.
                _ if tokio::task::try_id().is_some()
                    && std::thread::current()
                        .name()
                        .is_some_and(|name| TOKIO_THREAD_NAMES.contains(&name)) =>
                {
                    Some(Wait::Plain)
                }
                _ => return Err(refused()),
            },
        };
        let handle = self.runtime()?.handle().cloned().ok_or_else(|| {
            HappenError::Config(format!(
                "{call}: the runtime was made outside a tokio runtime, so nothing drives its work"
            ))
        })?;
        let Some(wait) = guessed else {
            return Ok((handle, Wait::Plain)); // no async runtime here at all
        };
        // The guess can be wrong (a runtime of the caller's own, nested in a
        // blocking thread). Where waiting is not allowed, tokio panics before
        // running anything: asked first with nothing to wait for, so that
        // a wrong guess is the typed error and nothing is sent. (Its panic
        // message still reaches the panic hook.)
        let probe = std::panic::AssertUnwindSafe(|| wait.block_on(&handle, async {}));
        std::panic::catch_unwind(probe).map_err(|_| refused())?;
        Ok((handle, wait))
    }

    /// The target node when it can be handed the event directly: a live
    /// node of this runtime, in a runtime whose nodes all live in this
    /// process. Anything else goes through the transport by id.
    fn in_process<'t>(&self, target: &'t impl Target) -> Option<&'t Arc<NodeCore>> {
        self.core.in_process_target(target)
    }

    /// Hands a stamped event to the transport for `target`.
    pub(crate) fn dispatch(&self, runtime: &RuntimeInner, target: Id, event: Event) -> Sent {
        let timeout = self.core.limits.timeout;
        if let Err(e) = validate_node_id(&target) {
            return Sent::refused(target, event, timeout, e.into());
        }
        let (sent, reply) = Sent::new(target.clone(), event.clone(), timeout);
        let mut sent = sent.sent_now();
        let deadline = sent.shared_deadline();
        let receipt = runtime.transport().send(&target, event, reply, deadline);
        sent.with_receipt(receipt)
    }

    /// Sends `event` to `target` without asking for an answer: the flow runs
    /// with [`Context::expects_response`](crate::Context::expects_response)
    /// `false` and no result is built or sent back, in any runtime.
    ///
    /// Returns once the event is on its way, with a [`Receipt`]: drop it, or
    /// await it to know that the event is kept for its receiver (stored,
    /// for a durable node).
    ///
    /// Errors known when sending are returned: an invalid event type or
    /// target, shutdown, and over NATS a message too large or a full outgoing
    /// queue; in one process also an unknown target, no matching handler, or
    /// a full queue. Over NATS a tell that reaches no node is reported as a
    /// [`system::UNDELIVERED`](crate::system::UNDELIVERED) event and counted
    /// (the sender has returned by then), never dropped silently; it is not
    /// retried. Use [`Node::send`] when the sender must know.
    ///
    /// ```
    /// use happen::prelude::*;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> happen::Result<()> {
    /// let happen = Happen::embedded();
    /// let sensor = happen.node("sensor")?;
    /// let log = happen.node("log")?;
    /// let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    /// log.on("reading", move |e: Event, cx: Context| {
    ///     let tx = tx.clone();
    ///     async move { tx.send((e.payload().clone(), cx.expects_response())).unwrap(); }
    /// })?;
    /// sensor.tell(&log, Event::new("reading", json!(21.5)))?;
    /// assert_eq!(rx.recv().await.unwrap(), (json!(21.5), false));
    /// assert!(matches!(sensor.tell("nobody", Event::new("reading", json!(0))), Err(HappenError::UnknownNode { .. })));
    /// # Ok(()) }
    /// ```
    pub fn tell(&self, target: impl Target, event: Event) -> Result<Receipt> {
        if let Some(node) = self.in_process(&target) {
            let to = Addressee::Node(&node.id);
            let event = self.prepare(event, false, to).map_err(|(e, _)| e)?;
            delivery::deliver(node, Delivery::new(event, None, Arrival::Local))?;
            return Ok(delivery::receipt(node));
        }
        let runtime = self.runtime()?;
        let target = target.target_shared_id();
        validate_node_id(&target)?;
        let to = Addressee::Node(&target);
        let event = self.prepare(event, false, to).map_err(|(e, _)| e)?;
        runtime.transport().tell(&target, event)
    }

    /// Validates and stamps an outgoing event with its causal context; a
    /// refused event comes back with the reason.
    ///
    /// A `request` (its sender waits for the answer) sent from a flow
    /// carries the chain of nodes waiting for it (see
    /// [`Causal::waiting`](crate::Causal::waiting)).
    pub(crate) fn prepare(
        &self,
        mut event: Event,
        request: bool,
        to: Addressee<'_>,
    ) -> Result<Event, (HappenError, Event)> {
        if let Err(e) = validate_event_type(event.event_type()) {
            return Err((e.into(), event));
        }
        let cause = causality::current_cause();
        let spawned = cause.as_ref().is_some_and(|c| c.spawned);
        let (parent, seq) = cause.map(|c| (c.event, c.numbered)).unzip();
        // A new root event from a runtime or a node shutting down (or shut
        // down) is refused; what their running flows cause is still taken.
        if parent.is_none()
            && (self.core.runtime_closed.load(Ordering::Acquire)
                || self.core.closed.load(Ordering::Acquire))
        {
            return Err((HappenError::Shutdown, event));
        }
        event::stamp(&mut event, &self.core.id, parent.as_ref());
        if let Some(parent) = &parent {
            let depth = event.causal().path.len();
            if depth > self.core.limits.max_causal_depth {
                let error = HappenError::CausalDepth {
                    node: self.core.id.to_string(),
                    event_type: event.event_type().to_owned(),
                    depth,
                    limit: self.core.limits.max_causal_depth,
                    repeating: repeating(&event.causal().path),
                };
                return Err((error, event));
            }
            // A spawned task may outlive its flow and the flow's answer:
            // neither the nodes waiting for that answer nor the sender's own
            // slot are known to wait for this request (believing them
            // could refuse a request that would run; missing them only
            // turns a deadlock into a timeout), so it carries no chain.
            if request && !spawned {
                event.context_mut().causal.waiting =
                    parent.causal().waiting.then(self.core.id.clone());
            }
        }
        if let (Some(parent), Some(Some((flow, seq)))) = (&parent, seq) {
            // Exactly-once: the same event from a re-run flow has the same id.
            event::derive_id(&mut event, parent, &self.core.id, flow, seq);
        }
        let to = match to {
            Addressee::Node(node) => Some(Some(node)),
            Addressee::Everyone => Some(None),
            Addressee::EachOfGroup => None,
        };
        if let Some(to) = to
            && self.core.limits.sign
            && let Err(e) = crate::identity::sign(&mut event, &**self.core.signer(), to)
        {
            return Err((e, event));
        }
        self.core.observers.stamped(&event);
        Ok(event)
    }

    /// A copy of `event`, prepared for a group ([`Addressee::EachOfGroup`]),
    /// signed for `target` when the node signs.
    pub(crate) fn signed_for(&self, target: &str, event: &Event) -> Result<Event> {
        let mut event = event.clone();
        if self.core.limits.sign {
            crate::identity::sign(&mut event, &**self.core.signer(), Some(target))?;
        }
        Ok(event)
    }
}

impl NodeCore {
    /// The response event carrying `value`, the answer to `cause`: stamped
    /// as this node's, and signed when the node signs what it sends (a
    /// requester that requires signatures checks it).
    pub(crate) fn answer(&self, value: serde_json::Value, cause: &Event) -> Result<Event> {
        let mut response = Event::new(crate::flow::RESPONSE_EVENT_TYPE, value);
        event::stamp(&mut response, &self.id, Some(cause));
        if self.limits.sign {
            // For its requester: replayed to another node, it fails.
            let to = Some(cause.causal().sender.as_str());
            crate::identity::sign(&mut response, &**self.signer(), to)?;
        }
        self.observers.stamped(&response);
        Ok(response)
    }
}

/// The nodes that repeat at the end of `path` (the shortest run that occurs
/// at least twice in a row there), or its last eight nodes if none does.
fn repeating(path: &[Id]) -> Vec<String> {
    let n = path.len();
    let run = (1..=n / 2)
        .find(|&k| path[n - k..] == path[n - 2 * k..n - k])
        .unwrap_or(n.min(8));
    path[n - run..].iter().map(|id| id.to_string()).collect()
}

impl NodeCore {
    /// Whether the runtime is shutting down: new root events are refused,
    /// what running flows cause is still taken.
    pub(crate) fn draining(&self) -> bool {
        self.runtime_closed.load(Ordering::Acquire)
    }

    /// The target node when this node may hand it an event directly: a
    /// live node of this runtime, in a runtime whose nodes all live in this
    /// process. Anything else goes through the transport by id.
    pub(crate) fn in_process_target<'t>(
        &self,
        target: &'t impl Target,
    ) -> Option<&'t Arc<NodeCore>> {
        let NodeRef(node) = target.target_node()?;
        // A plain load tells whether the runtime is still there (it stops
        // at once when dropped); no upgrade needed.
        // Events to a node whose transport stores them go through it.
        (self.in_process
            && !node.stored_by_transport()
            && Weak::ptr_eq(&node.runtime, &self.runtime)
            && self.runtime.strong_count() > 0
            && !node.closed.load(Ordering::Acquire))
        .then_some(node)
    }
}

/// The names tokio gives the threads it starts, unless told otherwise
/// (`tokio-rt-worker` since tokio 1.50, `tokio-runtime-worker` before).
const TOKIO_THREAD_NAMES: [&str; 2] = ["tokio-rt-worker", "tokio-runtime-worker"];

/// How a blocking call waits on its thread.
enum Wait {
    /// Outside any runtime's async context: block the thread.
    Plain,
    /// Maybe on a multi-thread runtime's worker: its other tasks move to
    /// another thread first (on a thread outside it, this blocks plainly).
    InPlace,
}

impl Wait {
    fn block_on<F: std::future::Future>(
        &self,
        handle: &tokio::runtime::Handle,
        work: F,
    ) -> F::Output {
        match self {
            Wait::Plain => handle.block_on(work),
            Wait::InPlace => tokio::task::block_in_place(|| handle.block_on(work)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::repeating;
    use crate::id::Id;

    fn ids(names: &[&str]) -> Vec<Id> {
        names.iter().map(|n| Id::from(*n)).collect()
    }

    #[test]
    fn the_repeating_end_of_a_chain_is_named() {
        assert_eq!(repeating(&ids(&["x", "a", "b", "a", "b"])), ["a", "b"]);
        assert_eq!(repeating(&ids(&["a", "a", "a"])), ["a"]);
        assert_eq!(
            repeating(&ids(&["r", "a", "b", "c", "a", "b", "c"])),
            ["a", "b", "c"]
        );
        // Nothing repeats: the last eight.
        let long: Vec<String> = (0..12).map(|i| format!("n{i}")).collect();
        let long: Vec<&str> = long.iter().map(String::as_str).collect();
        assert_eq!(repeating(&ids(&long)), &long[4..]);
        assert_eq!(repeating(&ids(&["a", "b"])), ["a", "b"]);
    }
}

//! A node's handlers: which patterns it takes, in registration order.
//!
//! The table is copied on write (registration is rare, matching happens for
//! every event), so a delivery reads a consistent snapshot without holding a
//! lock while flows start.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};

use crate::entry::Entry;
use crate::id::Id;
use crate::pattern::Pattern;
use crate::transport::Interest;

/// Handler ids are unique in the process, so an id from one node never
/// removes another node's handler.
static NEXT_HANDLER: AtomicU64 = AtomicU64::new(1);

/// Identifies one handler registration on a node, for [`Node::off`](crate::Node::off).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HandlerId(u64);

impl HandlerId {
    pub(crate) fn next() -> HandlerId {
        HandlerId(NEXT_HANDLER.fetch_add(1, Ordering::Relaxed))
    }
}

#[derive(Clone)]
pub(crate) struct Registration {
    pub(crate) id: HandlerId,
    pub(crate) pattern: Pattern,
    pub(crate) entry: Entry,
    /// What the transport subscribed for this handler.
    pub(crate) interest: Interest,
}

impl Registration {
    /// Whether this handler takes `event_type`. A function matcher that
    /// panics counts as "no" (and is logged): user code must not take the
    /// node down.
    pub(crate) fn accepts(&self, event_type: &str, node: &Id) -> bool {
        match std::panic::catch_unwind(AssertUnwindSafe(|| self.pattern.matches(event_type))) {
            Ok(accepted) => accepted,
            Err(panic) => {
                tracing::error!(
                    node = %node,
                    event_type,
                    message = %crate::error::panic_message(panic.as_ref()),
                    "a pattern matcher panicked; treated as no match"
                );
                false
            }
        }
    }
}

#[derive(Default)]
pub(crate) struct Registry {
    handlers: RwLock<Arc<Vec<Registration>>>,
    /// Bumped by every change, so that a match made when an event arrived
    /// can be reused when it starts unless the handlers changed meanwhile.
    generation: AtomicU64,
}

/// The handlers that matched an event when it was delivered: the snapshot
/// they come from and the first of them.
pub(crate) struct Matched {
    pub(crate) handlers: Arc<Vec<Registration>>,
    pub(crate) first: usize,
    generation: u64,
}

/// A match kept without keeping its handlers alive (broadcast routes keep
/// these: a removed handler, and what it captured, must not live on in the
/// route of a type seldom broadcast).
pub(crate) struct KeptMatch {
    handlers: Weak<Vec<Registration>>,
    first: usize,
    generation: u64,
}

impl Matched {
    /// This match, without keeping its handlers alive.
    pub(crate) fn keep(&self) -> KeptMatch {
        KeptMatch {
            handlers: Arc::downgrade(&self.handlers),
            first: self.first,
            generation: self.generation,
        }
    }
}

impl KeptMatch {
    /// The match, if its handlers are still the node's (else `None`).
    pub(crate) fn get(&self) -> Option<Matched> {
        Some(Matched {
            handlers: self.handlers.upgrade()?,
            first: self.first,
            generation: self.generation,
        })
    }
}

impl Registry {
    /// The handlers as they are now.
    pub(crate) fn snapshot(&self) -> Arc<Vec<Registration>> {
        self.handlers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Finds the first handler that takes `event_type`, if any.
    pub(crate) fn matching(&self, event_type: &str, node: &Id) -> Option<Matched> {
        let generation = self.generation.load(Ordering::Acquire);
        let handlers = self.snapshot();
        let first = handlers.iter().position(|r| r.accepts(event_type, node))?;
        Some(Matched {
            handlers,
            first,
            generation,
        })
    }

    /// `matched` if the handlers have not changed since it was made; a new
    /// match otherwise.
    pub(crate) fn still_matching(
        &self,
        matched: Option<Matched>,
        event_type: &str,
        node: &Id,
    ) -> Option<Matched> {
        match matched {
            Some(m) if m.generation == self.generation.load(Ordering::Acquire) => Some(m),
            _ => self.matching(event_type, node),
        }
    }

    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        crate::transport::routes::changed();
    }

    /// Whether every handler's pattern answers by the event type alone.
    fn is_pure(&self) -> bool {
        self.snapshot().iter().all(|r| r.pattern.is_pure())
    }

    pub(crate) fn add(&self, registration: Registration) {
        let mut handlers = self.handlers.write().unwrap_or_else(|p| p.into_inner());
        let mut next = Vec::with_capacity(handlers.len() + 1);
        next.extend(handlers.iter().cloned());
        next.push(registration);
        *handlers = Arc::new(next);
        self.changed();
    }

    /// Removes one handler; its registration comes back so that its
    /// subscription can be released.
    pub(crate) fn remove(&self, id: HandlerId) -> Option<Registration> {
        let mut handlers = self.handlers.write().unwrap_or_else(|p| p.into_inner());
        let removed = handlers.iter().find(|r| r.id == id).cloned()?;
        *handlers = Arc::new(handlers.iter().filter(|r| r.id != id).cloned().collect());
        self.changed();
        Some(removed)
    }

    /// Removes every handler (the node shuts down).
    pub(crate) fn clear(&self) -> Vec<Registration> {
        let mut handlers = self.handlers.write().unwrap_or_else(|p| p.into_inner());
        let all = handlers.iter().cloned().collect();
        *handlers = Arc::new(Vec::new());
        self.changed();
        all
    }
}

impl super::NodeCore {
    /// Whether every handler of the node, ordinary or zero, answers by the
    /// event type alone, so that broadcast routes may be kept for it (see
    /// [`crate::transport::routes`]).
    pub(crate) fn routes_by_type(&self) -> bool {
        self.registry.is_pure() && self.zero_lane().is_none_or(|lane| lane.is_pure())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::HandlerId;
    use crate::prelude::*;

    /// Waits until the node's queue is empty and nothing runs.
    async fn idle(node: &Node) {
        tokio::time::timeout(std::time::Duration::from_secs(10), node.core().quiet())
            .await
            .expect("the node's worker never went idle");
    }

    /// Counts runs of a handler.
    fn counting(node: &Node, event_type: &str, runs: &Arc<AtomicUsize>) -> HandlerId {
        let runs = runs.clone();
        node.on(event_type, move |_e: Event, _cx: Context| {
            runs.fetch_add(1, Ordering::SeqCst);
            async {}
        })
        .unwrap()
    }

    /// Events matched and queued before earlier handlers are removed still
    /// reach their handler (now at another place in the table), and the
    /// removed ones run no more.
    #[tokio::test(flavor = "current_thread")]
    async fn queued_events_find_their_handler_after_earlier_ones_are_removed() {
        let happen = Happen::embedded();
        let sender = happen.node("sender").unwrap();
        let node = happen.node("node").unwrap();
        let (x_runs, a_runs, b_runs) = (Arc::default(), Arc::default(), Arc::default());
        let x = counting(&node, "x", &x_runs);
        let a = counting(&node, "t.*", &a_runs);
        counting(&node, "t.b", &b_runs);
        // Queued: nothing yields between the sends and the removals. Each
        // matched `t.*` first, the second handler of three.
        for _ in 0..10 {
            sender.tell(&node, Event::new("t.b", json!(null))).unwrap();
        }
        assert!(node.off(x));
        assert!(node.off(a));
        idle(&node).await;
        assert_eq!(a_runs.load(Ordering::SeqCst), 0, "a removed handler ran");
        assert_eq!(b_runs.load(Ordering::SeqCst), 10);
        assert_eq!(x_runs.load(Ordering::SeqCst), 0);
        happen.shutdown().await;
    }

    /// A handler removed while the node's worker runs takes none of the
    /// events after, though they matched it when queued, and is dropped,
    /// with what it captured, once the worker has nothing left to do.
    #[tokio::test(flavor = "current_thread")]
    async fn a_handler_removed_while_the_worker_runs_is_gone_at_once() {
        let happen = Happen::embedded();
        let sender = happen.node("sender").unwrap();
        let node = happen.node("node").unwrap();
        let captured = Arc::new(());
        let held = captured.clone();
        let removed_runs = Arc::new(AtomicUsize::new(0));
        let count = removed_runs.clone();
        let removed = node
            .on("tick", move |_e: Event, _cx: Context| {
                let _held = held.clone();
                count.fetch_add(1, Ordering::SeqCst);
                async {}
            })
            .unwrap();
        let runs = Arc::new(AtomicUsize::new(0));
        let (count, handle) = (runs.clone(), node.clone());
        node.on("tick", move |_e: Event, _cx: Context| {
            // The fifth removes the other handler, mid-way through the
            // worker's queue (whose events all matched both).
            if count.fetch_add(1, Ordering::SeqCst) == 4 {
                assert!(handle.off(removed));
            }
            async {}
        })
        .unwrap();
        for _ in 0..10 {
            sender.tell(&node, Event::new("tick", json!(null))).unwrap();
        }
        idle(&node).await;
        assert_eq!(runs.load(Ordering::SeqCst), 10);
        assert_eq!(
            removed_runs.load(Ordering::SeqCst),
            5,
            "the removed handler took events after its removal"
        );
        assert_eq!(
            Arc::strong_count(&captured),
            1,
            "the removed handler is still alive after the worker went idle"
        );
        happen.shutdown().await;
    }
}

//! A node's handlers: which patterns it takes, in registration order.
//!
//! The table is copied on write (registration is rare, matching happens for
//! every event), so a delivery reads a consistent snapshot without holding a
//! lock while flows start.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::flow::Entry;
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
                    message = %crate::flow::panic_message(panic.as_ref()),
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
}

impl Registry {
    /// The handlers as they are now.
    pub(crate) fn snapshot(&self) -> Arc<Vec<Registration>> {
        self.handlers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn add(&self, registration: Registration) {
        let mut handlers = self.handlers.write().unwrap_or_else(|p| p.into_inner());
        let mut next = Vec::with_capacity(handlers.len() + 1);
        next.extend(handlers.iter().cloned());
        next.push(registration);
        *handlers = Arc::new(next);
    }

    /// Removes one handler; its registration comes back so that its
    /// subscription can be released.
    pub(crate) fn remove(&self, id: HandlerId) -> Option<Registration> {
        let mut handlers = self.handlers.write().unwrap_or_else(|p| p.into_inner());
        let removed = handlers.iter().find(|r| r.id == id).cloned()?;
        *handlers = Arc::new(handlers.iter().filter(|r| r.id != id).cloned().collect());
        Some(removed)
    }

    /// Removes every handler (the node shuts down).
    pub(crate) fn clear(&self) -> Vec<Registration> {
        let mut handlers = self.handlers.write().unwrap_or_else(|p| p.into_inner());
        let all = handlers.iter().cloned().collect();
        *handlers = Arc::new(Vec::new());
        all
    }

    /// Whether any handler matches `event_type`.
    pub(crate) fn handles(&self, event_type: &str, node: &Id) -> bool {
        self.handlers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|r| r.accepts(event_type, node))
    }
}

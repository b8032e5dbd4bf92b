//! Which of a node's flows wait for an answer: what tells a deadlock from
//! a node that is only busy.
//!
//! A request whose causal chain shows its target waiting for it (see
//! [`Causal::waiting`](crate::Causal::waiting)) can deadlock only when no
//! slot of the target will free itself. A slot whose flow computes, sleeps
//! or waits for anything but an answer will end; one whose flow waits for
//! the answer to a request it sent may never. So a node counts its flows
//! waiting for an answer (a [`Blocked`] held by the wait, from its first
//! poll until the answer, or the end of the streamed answer, or until the
//! wait is dropped), and such a request is refused with
//! [`HappenError::Deadlock`](crate::HappenError::Deadlock) only when every
//! running flow of its target is one of them. Otherwise it is queued and
//! runs when a slot frees.
//!
//! The check is made when the request reaches the node and when its
//! requester starts to wait, not again later: a request queued while a
//! slot was computing, whose flow then waits on a chain that never comes
//! back to this node but is stuck on its slots all the same, ends with
//! its timeout (as any deadlock through several nodes' slots does).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::NodeCore;
use crate::event::Event;

/// One flow of a node counted as waiting for an answer, until dropped.
pub(crate) struct Blocked(Arc<NodeCore>);

impl Blocked {
    /// Counts the flow this code runs in as waiting for the answer to
    /// `request`, if the request was sent from it (the nodes waiting for
    /// the request end with the flow's node).
    pub(crate) fn on(request: &Event) -> Option<Blocked> {
        let sender = request.causal().waiting.last()?;
        let node = crate::causality::current_node()?;
        if node.id != *sender {
            return None;
        }
        node.scheduler.blocked.fetch_add(1, Ordering::AcqRel);
        Some(Blocked(node))
    }
}

impl Drop for Blocked {
    fn drop(&mut self) {
        self.0.scheduler.blocked.fetch_sub(1, Ordering::AcqRel);
    }
}

impl std::fmt::Debug for Blocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Blocked").field(&self.0.id).finish()
    }
}

impl NodeCore {
    /// Whether each of the `running` flows waits for an answer (then no
    /// slot frees itself).
    pub(super) fn all_blocked(&self, running: usize) -> bool {
        self.scheduler.blocked.load(Ordering::Acquire) >= running
    }
}

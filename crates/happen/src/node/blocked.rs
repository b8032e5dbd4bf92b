//! Which of a node's flows wait for an answer: what tells a deadlock from
//! a node that is only busy.
//!
//! A request whose causal chain shows its target waiting for it (see
//! [`Causal::waiting`](crate::Causal::waiting)) can deadlock only when no
//! slot of the target will free itself. A slot whose flow computes, sleeps
//! or waits for anything but an answer will end; one whose flow waits for
//! the answer to a request it sent may never. So a node counts its flows
//! that wait for an answer (a flow waiting for several at once counts
//! once), and such a request is refused with
//! [`HappenError::Deadlock`](crate::HappenError::Deadlock) only when every
//! running flow of its target is one of them; otherwise it queues for a
//! slot. A flow counts from the first poll of its wait (a [`Blocked`]
//! held by the wait) until the answer comes or the wait is dropped; one
//! reading a streamed answer, until the stream's end.
//!
//! The check is made where the request is scheduled, where its requester
//! starts to wait, and again whenever a flow of the target comes to wait
//! and makes every slot a waiting one: then the requests queued there
//! whose requesters wait, and whose chains name the node, are refused
//! ([`NodeCore::refuse_deadlocked`]). A wait is not told from one that
//! will be answered: a slot waiting for a slow but live node counts too,
//! so a request back can still be refused while that slot would have freed.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::NodeCore;
use crate::context::Shared;
use crate::error::HappenError;
use crate::event::Event;

/// One wait of a flow for an answer, counted until dropped.
pub(crate) struct Blocked(Arc<Shared>);

impl Blocked {
    /// Counts the flow this code runs in as waiting for the answer to
    /// `request`, if the request was sent from it (the nodes waiting for
    /// the request end with the flow's node).
    pub(crate) fn on(request: &Event) -> Option<Blocked> {
        let sender = request.causal().waiting.last()?;
        let flow = crate::causality::current_flow()?;
        let node = flow.node().core();
        if node.id != *sender {
            return None;
        }
        if flow.waits.fetch_add(1, Ordering::AcqRel) == 0 {
            node.scheduler.blocked.fetch_add(1, Ordering::AcqRel);
            node.refuse_deadlocked();
        }
        Some(Blocked(flow))
    }
}

impl Drop for Blocked {
    fn drop(&mut self) {
        if self.0.waits.fetch_sub(1, Ordering::AcqRel) == 1 {
            let node = self.0.node().core();
            node.scheduler.blocked.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl std::fmt::Debug for Blocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Blocked")
            .field(&self.0.node().core().id)
            .finish()
    }
}

impl NodeCore {
    /// Whether each of the `running` flows waits for an answer (then no
    /// slot frees itself).
    pub(super) fn all_blocked(&self, running: usize) -> bool {
        self.scheduler.blocked.load(Ordering::Acquire) >= running
    }

    /// Refuses, as deadlocks, the queued requests whose requesters wait
    /// and whose chains name this node, once no slot will free itself.
    fn refuse_deadlocked(&self) {
        let refused: Vec<_> = {
            let mut mailbox = self.scheduler.mailbox();
            let running = self.scheduler.running(&mailbox);
            if mailbox.queue.is_empty()
                || running < self.limits.max_concurrent
                || !self.all_blocked(running)
            {
                return;
            }
            let queue = std::mem::take(&mut mailbox.queue);
            let (refused, kept) = queue.into_iter().partition::<Vec<_>, _>(|delivery| {
                !delivery.deadlock_at_await && self.waits_for(delivery).is_some()
            });
            mailbox.queue = kept.into();
            if refused.is_empty() {
                return;
            }
            let relieved = self.relieved(mailbox.queue.len());
            drop(mailbox);
            if relieved {
                self.report_pressure(false, 0);
            }
            refused
        };
        for delivery in refused {
            let chain = self.cycle(&delivery.event).unwrap_or_default();
            let error = HappenError::Deadlock {
                node: self.id.to_string(),
                event_type: delivery.event.event_type().to_owned(),
                chain,
                max_concurrent: self.limits.max_concurrent,
            };
            let _ = delivery.refuse(error);
        }
    }
}

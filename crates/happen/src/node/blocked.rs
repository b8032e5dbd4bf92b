//! Which of a node's flows wait for an answer: what tells a deadlock from
//! a node that is only busy.
//!
//! A request whose causal chain shows its target waiting for it (see
//! [`Causal::waiting`](crate::Causal::waiting)) can deadlock only when no
//! slot of the target will free itself. A slot whose flow computes, sleeps
//! or waits for anything but an answer will end; one whose flow waits for
//! the answer to a request it sent may never. So a node counts its slots
//! whose flows wait for an answer (a flow waiting for several at once
//! counts once), and such a request is refused with
//! [`HappenError::Deadlock`](crate::HappenError::Deadlock) only when every
//! running slot of its target is one of them; otherwise it queues for a
//! slot. A flow counts from the first poll of its wait (a [`Blocked`]
//! held by the wait) until the answer comes, the wait is dropped or the
//! flow ends (a wait handed to a task counts no more then); one reading a
//! streamed answer, until the stream's end. The queue is checked again
//! only once the wait is known not to be answered at once (a request
//! refused where it was sent, or run in the requester's own poll, does
//! not make the flow a waiting one for that check).
//!
//! The check is made where the request is scheduled, where its requester
//! starts to wait, and again whenever a flow of the target comes to wait
//! and makes every slot a waiting one: then the requests queued there
//! whose requesters wait, and whose chains name the node, are refused
//! ([`NodeCore::refuse_deadlocked`]). A wait is not told from one that
//! will be answered: a slot waiting for a slow but live node counts too,
//! so a request back can still be refused while that slot would have freed.
//! An event matching several handlers holds one slot and runs as many
//! flows, which share a [`SlotWaits`]: the slot frees only when all of them
//! have ended, so it counts (once) as soon as any of them waits.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::NodeCore;
use crate::context::Shared;
use crate::error::HappenError;
use crate::event::Event;

/// The flag set on [`Shared::waits`] when the flow has ended: its count
/// was given back then, and the waits it left behind count no more.
const ENDED: usize = 1 << (usize::BITS - 1);

/// What the flows of one event (several handlers took it) share: how many
/// of them wait for an answer. Their slot counts as waiting while any does.
#[derive(Debug, Default)]
pub(crate) struct SlotWaits(AtomicUsize);

/// The flow `flow` came to wait: its slot counts, unless another flow of
/// the slot already made it count.
fn slot_waits(flow: &Shared) {
    if flow
        .slot
        .as_ref()
        .is_none_or(|slot| slot.0.fetch_add(1, Ordering::AcqRel) == 0)
    {
        let node = flow.node().core();
        node.scheduler.blocked.fetch_add(1, Ordering::AcqRel);
    }
}

/// The flow `flow` waits no more: its slot counts no more, unless another
/// flow of the slot still waits.
fn slot_goes_on(flow: &Shared) {
    if flow
        .slot
        .as_ref()
        .is_none_or(|slot| slot.0.fetch_sub(1, Ordering::AcqRel) == 1)
    {
        let node = flow.node().core();
        node.scheduler.blocked.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One wait of a flow for an answer, counted until dropped (or until the
/// flow ends, if the wait outlives it: handed to a task, say).
pub(crate) struct Blocked {
    flow: Arc<Shared>,
    /// Whether this wait made its flow a waiting one, and the node's
    /// queue is still to be checked for what that deadlocks.
    unchecked: bool,
}

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
        let first = flow.waits.fetch_add(1, Ordering::AcqRel) == 0;
        if first {
            slot_waits(&flow);
        }
        Some(Blocked {
            flow,
            unchecked: first,
        })
    }

    /// The answer did not come at once (the request was not refused or
    /// answered where it was sent): if no slot of the node frees itself
    /// now, refuses what that deadlocks (see [`NodeCore::refuse_deadlocked`]).
    pub(crate) fn waits(&mut self) {
        if std::mem::take(&mut self.unchecked) {
            self.flow.node().core().refuse_deadlocked();
        }
    }

    /// The flow `flow` ended: if it still waits (a wait it handed on, or
    /// kept, lives on), it counts no more.
    pub(crate) fn ended(flow: &Shared) {
        // Read first, so that a flow that waits for nothing (nearly all)
        // pays no atomic operation.
        if flow.waits.load(Ordering::Acquire) == 0 {
            return;
        }
        let before = flow.waits.fetch_or(ENDED, Ordering::AcqRel);
        if before != 0 && before & ENDED == 0 {
            slot_goes_on(flow);
        }
    }
}

impl Drop for Blocked {
    fn drop(&mut self) {
        // The last wait of a flow that has not ended.
        if self.flow.waits.fetch_sub(1, Ordering::AcqRel) == 1 {
            slot_goes_on(&self.flow);
        }
    }
}

impl std::fmt::Debug for Blocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Blocked")
            .field(&self.flow.node().core().id)
            .finish()
    }
}

impl NodeCore {
    /// Whether each of the `running` slots waits for an answer (then none
    /// frees itself).
    pub(super) fn all_blocked(&self, running: usize) -> bool {
        self.scheduler.blocked.load(Ordering::Acquire) >= running
    }

    /// Refuses, as deadlocks, the queued requests whose requesters wait
    /// and whose chains name this node, once no slot will free itself.
    pub(super) fn refuse_deadlocked(&self) {
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

//! A node's scheduler: at most `max_concurrent` events handled at once, a
//! FIFO queue of at most `queue_limit` behind them, refusal beyond that.
//!
//! A slot is one tokio task: when its event's flows end it takes the next
//! queued event itself, so the slot count stays exact and a queued event
//! costs no extra spawn.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use futures::FutureExt;

use super::{Node, NodeCore};
use crate::delivery::Delivery;
use crate::error::{HappenError, Result};
use crate::flow;

#[derive(Default)]
struct Slots {
    active: usize,
    queue: VecDeque<Delivery>,
}

#[derive(Default)]
pub(super) struct Scheduler {
    slots: Mutex<Slots>,
    /// Signalled whenever the last running flow ends.
    idle: tokio::sync::Notify,
}

impl Scheduler {
    fn slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until nothing runs or waits in the queue.
    pub(super) async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            {
                let slots = self.slots();
                if slots.active == 0 && slots.queue.is_empty() {
                    return;
                }
            }
            notified.await;
        }
    }
}

impl NodeCore {
    /// Runs `delivery` now, queues it, or refuses it (`QueueFull`).
    pub(crate) fn schedule(self: &Arc<Self>, delivery: Delivery) -> Result<()> {
        let mut slots = self.scheduler.slots();
        if slots.active < self.limits.max_concurrent {
            slots.active += 1;
            drop(slots);
            self.start(delivery);
            Ok(())
        } else if slots.queue.len() < self.limits.queue_limit {
            slots.queue.push_back(delivery);
            Ok(())
        } else {
            let error = HappenError::QueueFull {
                node: self.id.to_string(),
                active: slots.active,
                queue_limit: self.limits.queue_limit,
            };
            drop(slots);
            delivery.refuse(error)
        }
    }

    /// Spawns the flows for a delivery that holds one of the node's slots;
    /// when they end, the slot passes to the next queued event.
    fn start(self: &Arc<Self>, delivery: Delivery) {
        let Some(runtime) = self.runtime.upgrade() else {
            // The runtime was dropped: nothing will run here any more.
            self.release_slot();
            let _ = delivery.refuse(HappenError::Shutdown);
            return;
        };
        let core = self.clone();
        runtime.spawn(async move {
            let mut delivery = delivery;
            loop {
                // Flows catch their own panics; this catches the rest (a
                // matcher, an error whose Display panics) so that the slot is
                // always handed on.
                if let Err(panic) = AssertUnwindSafe(core.run(delivery)).catch_unwind().await {
                    tracing::error!(node = %core.id, message = %flow::panic_message(panic.as_ref()), "event delivery panicked");
                }
                let (next, idle) = {
                    let mut slots = core.scheduler.slots();
                    let next = slots.queue.pop_front();
                    if next.is_none() {
                        slots.active -= 1;
                    }
                    (next, slots.active == 0)
                };
                match next {
                    // Reusing this task for the queued event keeps the slot
                    // count exact and saves a spawn.
                    Some(queued) => delivery = queued,
                    None => {
                        if idle {
                            core.scheduler.idle.notify_waiters();
                        }
                        break;
                    }
                }
            }
        });
    }

    fn release_slot(&self) {
        self.scheduler.slots().active -= 1;
        self.scheduler.idle.notify_waiters();
    }

    /// Runs every matching handler's flow for one event; the first registered
    /// answers the requester. The delivery is acknowledged when all of them
    /// completed, negatively when one failed.
    async fn run(self: &Arc<Self>, delivery: Delivery) {
        let Delivery {
            event,
            responder,
            ack,
        } = delivery;
        let handlers = self.registry.snapshot();
        let node = Node::from_core(self.clone());
        let mut matching = handlers
            .iter()
            .filter(|r| r.accepts(event.event_type(), &self.id));
        let Some(first) = matching.next() else {
            // Every handler was removed while the event waited in the queue.
            let error = HappenError::NoHandler {
                node: self.id.to_string(),
                event_type: event.event_type().to_owned(),
            };
            let _ = Delivery {
                event,
                responder,
                ack,
            }
            .refuse(error);
            return;
        };
        let first_flow = flow::run(node.clone(), first.entry.clone(), event.clone(), responder);
        let others: Vec<_> = matching
            .map(|r| flow::run(node.clone(), r.entry.clone(), event.clone(), None))
            .collect();
        let failure = if others.is_empty() {
            first_flow.await
        } else {
            let (first, rest) =
                futures::future::join(first_flow, futures::future::join_all(others)).await;
            first.or_else(|| rest.into_iter().flatten().next())
        };
        if let Some(ack) = ack {
            match failure {
                None => ack.ack(),
                Some(error) => ack.nak(&error),
            }
        }
    }
}

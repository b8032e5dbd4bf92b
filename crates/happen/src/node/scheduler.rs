//! A node's scheduler: at most `max_concurrent` events handled at once, a
//! FIFO queue of at most `queue_limit` behind them, refusal beyond that.
//!
//! # How flows run
//!
//! A node has at most one *worker*: a tokio task that takes deliveries from
//! the node's mailbox in order and runs each one's flows *inline*. Most
//! handlers finish without waiting on anything, so they complete within that
//! first poll, and an event then costs no task of its own. A flow that does
//! suspend is moved, as it is, into a task of its own and the worker goes on
//! with the next delivery, so a slow handler never holds up its node's queue
//! beyond `max_concurrent`.
//!
//! The worker is started when a delivery finds none and stops when the
//! mailbox is empty (after yielding once, so that a requester answered just
//! now can send its next event to a worker that is still there): an idle node
//! costs no task. A task whose suspended flow ends takes over as the worker
//! when there is queued work and no worker, so the slot count stays exact.
//!
//! Moving a suspended future to another task is sound: the new task polls it
//! again, which registers its own waker; the worker's waker, registered by
//! the first poll, at most causes a spurious wake-up.

use std::collections::VecDeque;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;

use futures::FutureExt;

use super::NodeCore;
use crate::delivery::Delivery;
use crate::error::{HappenError, Result};
use crate::flow;

/// Flows a worker runs inline before it yields to other tasks.
const INLINE_BUDGET: u32 = 64;

#[derive(Default)]
struct Mailbox {
    /// Deliveries not started yet, in arrival order.
    queue: VecDeque<Delivery>,
    /// Events whose flows have started and not ended (inline or in a task).
    running: usize,
    /// Whether a worker is alive and will look at the queue again.
    worker: bool,
}

#[derive(Default)]
pub(super) struct Scheduler {
    mailbox: Mutex<Mailbox>,
    /// Signalled whenever the node becomes idle (nothing runs or waits),
    /// once somebody has waited for that.
    idle: tokio::sync::Notify,
    /// Whether [`Scheduler::idle`] was ever called (until then nobody
    /// needs the signal, which costs a lock).
    watched: AtomicBool,
}

impl Scheduler {
    fn mailbox(&self) -> MutexGuard<'_, Mailbox> {
        self.mailbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until nothing runs or waits in the queue.
    pub(super) async fn idle(&self) {
        self.watched.store(true, Ordering::SeqCst);
        loop {
            let notified = self.idle.notified();
            {
                let mailbox = self.mailbox();
                if mailbox.running == 0 && mailbox.queue.is_empty() {
                    return;
                }
            }
            notified.await;
        }
    }
}

/// The future of one event's flows, boxed so that it can move to a task of
/// its own if it suspends.
type Running = Pin<Box<dyn Future<Output = std::thread::Result<()>> + Send>>;

impl NodeCore {
    /// Queues `delivery` for the node's worker (starting one if needed), or
    /// refuses it (`QueueFull`) when `max_concurrent` flows run and
    /// `queue_limit` events wait already.
    pub(crate) fn schedule(self: &Arc<Self>, delivery: Delivery) -> Result<()> {
        let mut mailbox = self.scheduler.mailbox();
        let capacity = self
            .limits
            .max_concurrent
            .saturating_add(self.limits.queue_limit);
        if mailbox.running + mailbox.queue.len() >= capacity {
            let error = HappenError::QueueFull {
                node: self.id.to_string(),
                active: mailbox.running,
                queue_limit: self.limits.queue_limit,
            };
            drop(mailbox);
            return delivery.refuse(error);
        }
        mailbox.queue.push_back(delivery);
        if mailbox.worker {
            return Ok(());
        }
        mailbox.worker = true;
        drop(mailbox);
        let Some(runtime) = self.runtime.upgrade() else {
            // The runtime was dropped: nothing will run here any more.
            self.refuse_queued(HappenError::Shutdown);
            return Err(HappenError::Shutdown);
        };
        let core = self.clone();
        runtime.spawn(core.worker());
        Ok(())
    }

    /// Refuses everything in the queue (the runtime is gone).
    fn refuse_queued(&self, error: HappenError) {
        let queued: Vec<Delivery> = {
            let mut mailbox = self.scheduler.mailbox();
            mailbox.worker = false;
            mailbox.queue.drain(..).collect()
        };
        for delivery in queued {
            let _ = delivery.refuse(error.clone());
        }
        self.scheduler.idle.notify_waiters();
    }

    /// The worker's future (named, so that a flow's task can become the
    /// worker without a recursive future type).
    fn worker(self: Arc<Self>) -> futures::future::BoxFuture<'static, ()> {
        Box::pin(self.work())
    }

    /// The worker: starts queued deliveries while slots are free, running
    /// each inline until its flows end or suspend.
    async fn work(self: Arc<Self>) {
        let mut yielded = false;
        let mut inline: u32 = 0;
        loop {
            let next = {
                let mut mailbox = self.scheduler.mailbox();
                if mailbox.running < self.limits.max_concurrent {
                    let next = mailbox.queue.pop_front();
                    if next.is_some() {
                        mailbox.running += 1;
                    } else if yielded {
                        mailbox.worker = false;
                        return;
                    }
                    next
                } else {
                    // Every slot is taken: the task of the next flow to end
                    // takes over.
                    mailbox.worker = false;
                    return;
                }
            };
            let Some(delivery) = next else {
                // Stay a moment: whoever was just answered may send again.
                yielded = true;
                reschedule().await;
                continue;
            };
            yielded = false;
            let mut running: Running =
                Box::pin(AssertUnwindSafe(self.clone().run(delivery)).catch_unwind());
            match futures::poll!(running.as_mut()) {
                Poll::Ready(result) => {
                    self.ended(result);
                }
                Poll::Pending => {
                    let Some(runtime) = self.runtime.upgrade() else {
                        drop(running);
                        self.ended(Ok(()));
                        self.refuse_queued(HappenError::Shutdown);
                        return;
                    };
                    let core = self.clone();
                    runtime.spawn(async move {
                        let result = running.await;
                        if core.ended(result) {
                            core.worker().await;
                        }
                    });
                }
            }
            inline += 1;
            if inline.is_multiple_of(INLINE_BUDGET) {
                // A long queue of quick flows must not starve other tasks.
                reschedule().await;
            }
        }
    }

    /// Bookkeeping when an event's flows have ended; returns whether the
    /// caller must become the worker (queued work and no worker).
    fn ended(&self, result: std::thread::Result<()>) -> bool {
        if let Err(panic) = result {
            // Flows catch their own panics; this catches the rest (a
            // matcher, an error whose Display panics).
            tracing::error!(node = %self.id, message = %flow::panic_message(panic.as_ref()), "event delivery panicked");
        }
        let (take_over, idle) = {
            let mut mailbox = self.scheduler.mailbox();
            mailbox.running -= 1;
            let take_over = !mailbox.worker && !mailbox.queue.is_empty();
            if take_over {
                mailbox.worker = true;
            }
            (take_over, mailbox.running == 0 && mailbox.queue.is_empty())
        };
        if idle && self.scheduler.watched.load(Ordering::SeqCst) {
            self.scheduler.idle.notify_waiters();
        }
        take_over
    }
}

impl NodeCore {
    /// Runs every matching handler's flow for one event; the first registered
    /// answers the requester. The delivery is acknowledged when all of them
    /// completed, negatively when one failed.
    async fn run(self: Arc<Self>, delivery: Delivery) {
        let Delivery {
            event,
            responder,
            ack,
            matched,
        } = delivery;
        let Some(matched) = self
            .registry
            .still_matching(matched, event.event_type(), &self.id)
        else {
            // Every handler was removed while the event waited in the queue.
            let error = HappenError::NoHandler {
                node: self.id.to_string(),
                event_type: event.event_type().to_owned(),
            };
            let _ = Delivery {
                event,
                responder,
                ack,
                matched: None,
            }
            .refuse(error);
            return;
        };
        let first = &matched.handlers[matched.first];
        let matching = matched.handlers[matched.first + 1..]
            .iter()
            .filter(|r| r.accepts(event.event_type(), &self.id));
        let first_flow = first.entry.start(self.clone(), event.clone(), responder);
        let others: Vec<_> = matching
            .map(|r| r.entry.start(self.clone(), event.clone(), None))
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

/// Lets the other tasks run once: the task wakes itself and returns
/// `Pending`, going to the back of the run queue. (`tokio::task::yield_now`
/// defers the wake-up until the runtime has polled its I/O driver, a system
/// call per yield on an otherwise busy thread.)
fn reschedule() -> impl Future<Output = ()> {
    let mut yielded = false;
    std::future::poll_fn(move |cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
}

//! A node's scheduler: at most `max_concurrent` events handled at once, a
//! queue of at most `queue_limit` behind them (in arrival or priority order,
//! see [`super::queue`]), refusal beyond that.
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
//! mailbox is empty: an idle node costs no task. After answering a request
//! it first yields once, so that the requester, answered just now, can send
//! its next request to a worker that is still there. After other events it
//! stops at once: on a multi-thread runtime a task that wakes itself wakes
//! an idle worker thread too (a system call), and a worker that caught up
//! with a stream of tells did that every time. A task whose suspended flow
//! ends takes over as the worker when there is queued work and no worker,
//! so the slot count stays exact.
//!
//! A requester that awaits its answer may run the request's flow itself
//! ([`NodeCore::claim`]): when the request is next in the node's queue, a
//! slot is free and the event is not durable, the requester's poll takes it
//! and runs it inline, as the worker would have, so the answer is there
//! without waiting for the worker's turn (nor for the wake-ups that turn
//! costs: on a multi-thread runtime, an idle thread woken per request).
//! Never ahead of queued events, nor of deliveries the worker has taken
//! and not started; a few levels at most one inside another on a thread;
//! not for callers that block a plain thread (`send_sync`).
//!
//! Moving a suspended future to another task is sound: the new task polls it
//! again, which registers its own waker; the worker's waker, registered by
//! the first poll, at most causes a spurious wake-up.

use std::collections::VecDeque;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;

use futures::FutureExt;

use super::NodeCore;
use super::start::{Flows, Started, settle};
use crate::delivery::Delivery;
use crate::error::{HappenError, Result};

/// How many claimed requests may run one inside another on a thread.
const MAX_NESTED_CLAIMS: u32 = 4;

thread_local! {
    /// Claimed requests running on this thread now, one inside another.
    static CLAIMS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Leaves one level of claimed requests (also when the flow panics).
struct Nested;

impl Drop for Nested {
    fn drop(&mut self) {
        CLAIMS.with(|depth| depth.set(depth.get().saturating_sub(1)));
    }
}

/// The most deliveries a worker takes from the mailbox in one lock.
const TAKE_AT_ONCE: usize = 64;

#[derive(Default)]
pub(super) struct Mailbox {
    /// Deliveries not started yet, in arrival order.
    pub(super) queue: VecDeque<Delivery>,
    /// Events whose flows have started and not ended (inline or in a task).
    running: usize,
    /// Whether a worker is alive and will look at the queue again.
    worker: bool,
    /// Events whose flows have ended since the node started, less those
    /// still counted in [`Scheduler::ended`] (flow balance reads the sum
    /// to see progress).
    completed: u64,
}

#[derive(Default)]
pub(super) struct Scheduler {
    mailbox: Mutex<Mailbox>,
    /// Signalled whenever the node becomes idle (nothing runs or waits),
    /// once somebody has waited for that.
    pub(super) idle: tokio::sync::Notify,
    /// Whether [`Scheduler::idle`] was ever called (until then nobody
    /// needs the signal, which costs a lock).
    watched: AtomicBool,
    /// Events whose flows the worker ran to their end since it last took
    /// the lock: their slots are free, and `running` counts them (and
    /// `completed` does not yet) until the worker folds this in (one
    /// atomic per event instead of a lock).
    ended: AtomicUsize,
    /// Whether backpressure was reported and the queue has not emptied
    /// since.
    pub(super) pressure: AtomicBool,
    /// Whether the worker holds deliveries it took from the queue and has
    /// not started yet (set under the mailbox lock): a claim must not
    /// overtake them.
    holding: AtomicBool,
    /// Set by [`NodeCore::abandon`]: events not started yet are refused.
    pub(super) abandoned: AtomicBool,
    /// Slots of this node whose flows wait now for the answer to a request
    /// they sent (see [`super::blocked`]).
    pub(super) blocked: AtomicUsize,
}

impl Scheduler {
    pub(super) fn mailbox(&self) -> MutexGuard<'_, Mailbox> {
        self.mailbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes every delivery out of the queue.
    pub(super) fn drain(&self) -> Vec<Delivery> {
        self.mailbox().queue.drain(..).collect()
    }

    /// The events whose flows run now: `running` less the inline flows
    /// that ended since the worker last counted (call with the lock held).
    pub(super) fn running(&self, mailbox: &Mailbox) -> usize {
        mailbox
            .running
            .saturating_sub(self.ended.load(Ordering::Acquire))
    }

    /// Waits until nothing runs or waits in the queue.
    pub(super) async fn idle(&self) {
        self.watched.store(true, Ordering::SeqCst);
        loop {
            let notified = self.idle.notified();
            {
                let mailbox = self.mailbox();
                if self.running(&mailbox) == 0 && mailbox.queue.is_empty() {
                    return;
                }
            }
            notified.await;
        }
    }
}

impl NodeCore {
    /// How loaded the node is: events waiting in its queue, events whose
    /// flows run, and events whose flows have ended since it started.
    pub(crate) fn load(&self) -> (usize, usize, u64) {
        let mailbox = self.scheduler.mailbox();
        let unfolded = self.scheduler.ended.load(Ordering::Acquire) as u64;
        (
            mailbox.queue.len(),
            self.scheduler.running(&mailbox),
            mailbox.completed + unfolded,
        )
    }

    /// Queues `delivery` for the node's worker (starting one if needed), or
    /// refuses it (`QueueFull`) when `max_concurrent` flows run and
    /// `queue_limit` events wait already.
    pub(crate) fn schedule(self: &Arc<Self>, delivery: Delivery) -> Result<()> {
        let mut mailbox = self.scheduler.mailbox();
        let capacity = self
            .limits
            .max_concurrent
            .saturating_add(self.limits.queue_limit);
        let running = self.scheduler.running(&mailbox);
        if running >= self.limits.max_concurrent
            && !delivery.deadlock_at_await
            && self.all_blocked(running)
            && let Some(chain) = self.waits_for(&delivery)
        {
            drop(mailbox);
            let error = HappenError::Deadlock {
                node: self.id.to_string(),
                event_type: delivery.event.event_type().to_owned(),
                chain,
                max_concurrent: self.limits.max_concurrent,
            };
            return delivery.refuse(error);
        }
        if running + mailbox.queue.len() >= capacity {
            let error = HappenError::QueueFull {
                node: self.id.to_string(),
                active: running,
                queue_limit: self.limits.queue_limit,
            };
            drop(mailbox);
            return delivery.refuse(error);
        }
        if delivery.inline
            && !mailbox.worker
            && mailbox.queue.is_empty()
            && running < self.limits.max_concurrent
        {
            // An idle node and a caller with nothing of the user's on its
            // stack (a transport's reader): run the flow right here.
            mailbox.running += 1;
            drop(mailbox);
            self.run_inline(delivery);
            return Ok(());
        }
        super::queue::enqueue(&mut mailbox.queue, delivery, self.limits.queue_strategy);
        let queued = mailbox.queue.len();
        let pressed = self.pressed(queued);
        let worker = std::mem::replace(&mut mailbox.worker, true);
        drop(mailbox);
        if pressed {
            self.report_pressure(true, queued);
        }
        if worker {
            return Ok(());
        }
        let Some(runtime) = self.runtime.upgrade() else {
            // The runtime was dropped: nothing will run here any more.
            self.refuse_queued(HappenError::Shutdown);
            return Err(HappenError::Shutdown);
        };
        let core = self.clone();
        runtime.spawn(core.worker());
        Ok(())
    }

    /// When `delivery` is a request this node waits for itself, up the
    /// causal chain (see [`Causal::waiting`](crate::Causal::waiting)): the
    /// cycle of waiting nodes, from this node back to it.
    pub(super) fn waits_for(&self, delivery: &Delivery) -> Option<Vec<String>> {
        // A requester that dropped its handle waits for nothing.
        if delivery.responder.as_ref()?.is_abandoned() {
            return None;
        }
        self.cycle(&delivery.event)
    }

    /// The cycle of waiting nodes `request` closes at this node, if it
    /// names this node among those waiting up its causal chain.
    pub(super) fn cycle(&self, request: &crate::event::Event) -> Option<Vec<String>> {
        let waiting = &request.causal().waiting;
        if waiting.is_empty() {
            return None;
        }
        let at = waiting.iter().position(|node| *node == self.id)?;
        let mut chain: Vec<String> = waiting[at..].iter().map(|n| n.to_string()).collect();
        chain.push(self.id.to_string());
        Some(chain)
    }

    /// Runs the queued delivery of `request` in the caller's task, if it is
    /// next in the queue, holds no acknowledgement and a slot is free: a
    /// requester that awaits its answer does the work itself rather than
    /// waiting for the worker's turn (see [`Sent`](crate::Sent)). The flow
    /// runs to its end, or until it suspends and moves to a task of its
    /// own; otherwise nothing happens and the worker runs the request.
    pub(crate) fn claim(self: &Arc<Self>, request: &crate::event::Event) {
        // A flow that requests, whose handler requests, ...: past a few
        // levels the worker runs them, so that the stack stays shallow.
        // During a shutdown the worker runs it, whose task the shutdown
        // waits for.
        let deep = CLAIMS.with(|depth| depth.get()) >= MAX_NESTED_CLAIMS || self.draining();
        let delivery = {
            let mut mailbox = self.scheduler.mailbox();
            let slot = self.scheduler.running(&mailbox) < self.limits.max_concurrent;
            let free = !self.scheduler.holding.load(Ordering::Acquire);
            let next = mailbox.queue.front();
            if !slot
                || deep
                || !next.is_some_and(|n| free && n.ack.is_none() && n.event.is(request))
            {
                // Not run here: with no slot, waiting may be a deadlock
                // (checked again under the lock, which the rare case takes
                // twice); otherwise the request is marked as waited for,
                // should the node's flows all come to wait.
                drop(mailbox);
                self.refuse_if_deadlocked(request);
                return;
            }
            mailbox.running += 1;
            let delivery = mailbox.queue.pop_front();
            if self.relieved(mailbox.queue.len()) {
                drop(mailbox);
                self.report_pressure(false, 0);
            }
            delivery
        };
        let Some(delivery) = delivery else {
            return;
        };
        CLAIMS.with(|depth| depth.set(depth.get() + 1));
        let _nested = Nested;
        self.run_inline(delivery);
    }

    /// Refuses `request` with [`HappenError::Deadlock`] (through its
    /// responder, to the requester now starting to wait) if it still waits
    /// in this node's queue, every slot is taken by flows of which one
    /// waits for an answer (see [`super::blocked`]), and this node is among
    /// those waiting up the request's causal chain: waiting would never
    /// end. A request queued like that and never waited for (its handle
    /// dropped: fire-and-forget) stays queued and runs once a slot frees.
    /// One left queued is marked as waited for: the node refuses it later
    /// if its flows all come to wait ([`NodeCore::refuse_deadlocked`]).
    /// Returns whether it was refused.
    pub(crate) fn refuse_if_deadlocked(&self, request: &crate::event::Event) -> bool {
        let Some(chain) = self.cycle(request) else {
            return false;
        };
        let mut mailbox = self.scheduler.mailbox();
        let Some(at) = mailbox.queue.iter().position(|d| d.event.is(request)) else {
            return false; // started already, or never queued here
        };
        let running = self.scheduler.running(&mailbox);
        if running < self.limits.max_concurrent || !self.all_blocked(running) {
            // Its requester waits from now on: checked again when every
            // flow of this node comes to wait for an answer.
            if let Some(queued) = mailbox.queue.get_mut(at) {
                queued.deadlock_at_await = false;
            }
            return false;
        }
        let delivery = mailbox.queue.remove(at);
        let relieved = self.relieved(mailbox.queue.len());
        drop(mailbox);
        if relieved {
            self.report_pressure(false, 0);
        }
        if let Some(delivery) = delivery {
            let _ = delivery.refuse(HappenError::Deadlock {
                node: self.id.to_string(),
                event_type: request.event_type().to_owned(),
                chain,
                max_concurrent: self.limits.max_concurrent,
            });
        }
        true
    }

    /// Waits until nothing runs or waits in the node's queue.
    pub(crate) async fn quiet(&self) {
        self.scheduler.idle().await;
    }

    /// Runs a delivery that already holds a slot in the caller's task: its
    /// flows are polled once (with a waker that does nothing: if they
    /// suspend, they move to a task of their own, whose first poll registers
    /// its real waker).
    fn run_inline(self: &Arc<Self>, delivery: Delivery) {
        let Some(started) = self.start(delivery) else {
            self.end_inline(false);
            return;
        };
        let mut cx = std::task::Context::from_waker(futures::task::noop_waker_ref());
        if self.poll_started(started, &mut cx) {
            self.end_inline(true);
        }
    }

    /// Polls an event's flows once, in the caller's task; settles them and
    /// returns `true` if they ended, moves them into a task of their own
    /// and returns `false` if they suspended.
    fn poll_started(
        self: &Arc<Self>,
        mut started: Started,
        cx: &mut std::task::Context<'_>,
    ) -> bool {
        let polled =
            std::panic::catch_unwind(AssertUnwindSafe(|| Pin::new(&mut started.flows).poll(cx)));
        match polled {
            Ok(Poll::Ready(failure)) => {
                settle(started.ack, Ok(failure), self);
                if let Flows::One(flow, handler) = started.flows {
                    crate::entry::keep(flow, handler);
                }
            }
            Err(panic) => settle(started.ack, Err(panic), self),
            Ok(Poll::Pending) => {
                self.continue_in_task(started);
                return false;
            }
        }
        true
    }

    /// Gives back the slot of an inline flow (`completed`: its flows ran
    /// to their end); starts a worker if events were queued meanwhile and
    /// none is running.
    fn end_inline(self: &Arc<Self>, completed: bool) {
        if self.ended(completed) {
            match self.runtime.upgrade() {
                Some(runtime) => runtime.spawn(self.clone().worker()),
                None => self.refuse_queued(HappenError::Shutdown),
            }
        }
    }

    /// Moves flows that suspended into a task of their own; when they end,
    /// that task gives back their slot (and takes over as the worker if
    /// events wait and no worker runs). With the runtime gone (its last
    /// handle dropped) a started flow still runs to its end, as the flows
    /// already in tasks do, and what waits is refused with `Shutdown`.
    fn continue_in_task(self: &Arc<Self>, started: Started) {
        let core = self.clone();
        let task = async move {
            let Started { flows, ack } = started;
            let outcome = AssertUnwindSafe(flows).catch_unwind().await;
            settle(ack, outcome, &core);
            if core.ended(true) {
                core.worker().await;
            }
        };
        if let Some(runtime) = self.runtime.upgrade() {
            return runtime.spawn(task);
        }
        match tokio::runtime::Handle::try_current() {
            Ok(tokio) => {
                self.refuse_queued(HappenError::Shutdown);
                drop(tokio.spawn(task));
            }
            Err(_) => {
                drop(task);
                self.ended(false);
                self.refuse_queued(HappenError::Shutdown);
            }
        }
    }

    /// Refuses everything in the queue (the runtime is gone: no worker).
    fn refuse_queued(&self, error: HappenError) {
        self.scheduler.mailbox().worker = false;
        self.refuse_waiting(error);
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
        // Whether the last event started here was a request: its
        // requester, answered just now, may send the next one at once.
        let mut answered = false;
        // Deliveries taken from the mailbox in one lock, each holding a
        // slot already, in arrival order.
        let mut taken: VecDeque<Delivery> = VecDeque::new();
        loop {
            if taken.is_empty() {
                // Every delivery taken so far has started.
                self.scheduler.holding.store(false, Ordering::Release);
                let mut mailbox = self.scheduler.mailbox();
                let ended = self.scheduler.ended.swap(0, Ordering::AcqRel);
                mailbox.running -= ended;
                mailbox.completed += ended as u64;
                let free = self
                    .limits
                    .max_concurrent
                    .saturating_sub(mailbox.running)
                    .min(mailbox.queue.len())
                    .min(TAKE_AT_ONCE);
                if free > 0 {
                    mailbox.running += free;
                    taken.extend(mailbox.queue.drain(..free));
                    self.scheduler.holding.store(true, Ordering::Release);
                    if self.relieved(mailbox.queue.len()) {
                        drop(mailbox);
                        self.report_pressure(false, 0);
                    }
                } else if yielded || !answered || mailbox.running >= self.limits.max_concurrent {
                    // Nothing to do (after one turn's wait if a requester
                    // was just answered), or every slot is taken (the task
                    // of the next flow to end takes over).
                    mailbox.worker = false;
                    let idle = mailbox.running == 0 && mailbox.queue.is_empty();
                    drop(mailbox);
                    self.notify_if_idle(idle);
                    return;
                }
            }
            let Some(delivery) = taken.pop_front() else {
                // Nothing queued: stay a moment, whoever was just answered
                // may send again.
                yielded = true;
                reschedule().await;
                continue;
            };
            yielded = false;
            answered = delivery.responder.is_some();
            if !tokio::task::coop::has_budget_remaining() {
                // Give way before the flow, not inside it: polled with no
                // budget left, it would suspend at its first tokio resource.
                reschedule().await;
            }
            let Some(started) = self.start(delivery) else {
                // Refused (no handler any more): the slot is free, nothing
                // completed.
                self.scheduler.mailbox().running -= 1;
                continue;
            };
            let mut started = Some(started);
            let ended = std::future::poll_fn(|cx| {
                Poll::Ready(started.take().is_some_and(|s| self.poll_started(s, cx)))
            })
            .await;
            if ended {
                self.scheduler.ended.fetch_add(1, Ordering::AcqRel);
            }
            // A long queue of quick flows must not starve other tasks: each
            // flow takes a unit of the task's tokio budget (128 per turn),
            // and the worker yields when it is used up.
            tokio::task::coop::consume_budget().await;
        }
    }

    /// Gives back the slot of an event whose flows ended in a task of their
    /// own or inline outside the worker (`completed`: they ran to their
    /// end); returns whether the caller must become the worker (queued
    /// work and no worker).
    fn ended(&self, completed: bool) -> bool {
        let (take_over, idle) = {
            let mut mailbox = self.scheduler.mailbox();
            mailbox.running -= 1;
            mailbox.completed += u64::from(completed);
            let take_over = !mailbox.worker && !mailbox.queue.is_empty();
            if take_over {
                mailbox.worker = true;
            }
            (take_over, mailbox.running == 0 && mailbox.queue.is_empty())
        };
        self.notify_if_idle(idle);
        take_over
    }

    fn notify_if_idle(&self, idle: bool) {
        if idle && self.scheduler.watched.load(Ordering::SeqCst) {
            self.scheduler.idle.notify_waiters();
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

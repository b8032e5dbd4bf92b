//! The node's side of the zero path: its zero handlers, the queue of zero
//! events waiting for them, and the one long-lived task that runs them.
//!
//! Zero handlers are synchronous functions, so a node runs them one event
//! after another in its lane's task: no task, box or context is made per
//! event. The queue and the task's batch swap their storage, keeping their
//! capacity, and the task parks on a [`Notify`] when there is nothing to do;
//! after warm-up nothing here touches the heap. Zero events and ordinary
//! events to one node are not ordered with respect to each other.
//!
//! A zero request awaited in this process is usually run by its requester
//! (a *claim*, as for ordinary requests): when it is the next event of the
//! lane and no handler of the lane runs, the requester's task takes it
//! from the queue and runs the handler itself, outside any flow's causal
//! scope, as the lane's task would; the requester then finds its answer
//! without waiting (the lane's task, woken when the request was queued,
//! finds nothing and parks again). The lane's `busy` mark keeps its
//! handlers one at a time whoever runs them.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;

use super::ZeroEvent;
pub use super::next::{ZeroContext, ZeroNext};
use super::reply::ReplyTo;
use super::run::run;
use crate::delivery::{Arrival, Delivery};
use crate::error::{BoxError, HappenError, Result};
use crate::node::{HandlerId, Node, NodeCore};
use crate::pattern::Pattern;

/// A registered zero handler.
pub(crate) type ZeroFn = dyn Fn(&ZeroEvent, &ZeroContext<'_>) -> std::result::Result<ZeroNext, BoxError>
    + Send
    + Sync
    + 'static;

struct Registered {
    id: HandlerId,
    pattern: Pattern,
    handler: Arc<ZeroFn>,
}

pub(super) struct Item {
    pub(super) event: ZeroEvent,
    pub(super) reply: ReplyTo,
    /// The handler that matched on arrival.
    pub(super) handler: Which,
}

/// Which handler runs a queued event: the one that matched on arrival,
/// named without a reference count of its own (an event costs no atomic
/// operation for it; the lane's task takes the handlers once per batch).
pub(super) enum Which {
    /// The lane's `handlers[i]`.
    At(usize),
    /// A handler of its own: one removed while the event waited, or the
    /// event's requester runs it (a claim).
    Owned(Arc<ZeroFn>),
}

/// A lane's handlers, the events waiting for them, and whether some task
/// runs one: behind one lock, so that a delivery matches and queues in one
/// acquisition.
#[derive(Default)]
struct Queue {
    handlers: Vec<Registered>,
    items: VecDeque<Item>,
    /// The lane's task runs a batch, or a requester runs a claimed event:
    /// nobody else may start one.
    busy: bool,
}

/// A node's zero handlers and the events waiting for them.
pub(crate) struct Lane {
    queue: Mutex<Queue>,
    wake: Notify,
    /// Told whenever the lane stops being busy, once someone waits for it
    /// (`watched`).
    idle: Notify,
    watched: AtomicBool,
    started: AtomicBool,
    /// Events of the task's batch not started yet: they count against the
    /// node's `queue_limit` as waiting ones (written by the task alone).
    in_batch: AtomicUsize,
}

impl Lane {
    fn new() -> Lane {
        Lane {
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            idle: Notify::new(),
            watched: AtomicBool::new(false),
            started: AtomicBool::new(false),
            in_batch: AtomicUsize::new(0),
        }
    }

    /// Refuses the events waiting in the lane (see [`NodeCore::abandon`]).
    pub(crate) fn abandon(&self) {
        let items = std::mem::take(&mut self.queue().items);
        for item in items {
            item.reply.refuse(HappenError::Shutdown);
        }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn matches(&self, event_type: &str) -> bool {
        let queue = self.queue();
        queue.handlers.iter().any(|h| h.pattern.matches(event_type))
    }

    /// Removes the handler `id`; whether it was one of this lane's. Events
    /// it matched before are still handled by it.
    pub(crate) fn remove(&self, id: HandlerId) -> bool {
        let removed = {
            let mut guard = self.queue();
            let queue = &mut *guard;
            let at = queue.handlers.iter().position(|h| h.id == id);
            at.map(|at| {
                let removed = queue.handlers.remove(at);
                // Waiting events it matched keep it; those of the handlers
                // after it follow them down the list.
                for item in &mut queue.items {
                    match &mut item.handler {
                        Which::At(i) if *i == at => {
                            item.handler = Which::Owned(removed.handler.clone());
                        }
                        Which::At(i) if *i > at => *i -= 1,
                        _ => {}
                    }
                }
                removed
            })
        };
        // Dropped after the lock is released: what the handler captured may
        // send to this node when dropped.
        let removed = removed.is_some();
        if removed {
            crate::transport::routes::changed();
        }
        removed
    }

    /// Whether every zero handler's pattern answers by the event type alone.
    pub(crate) fn is_pure(&self) -> bool {
        let queue = self.queue();
        queue.handlers.iter().all(|h| h.pattern.is_pure())
    }
}

impl NodeCore {
    /// The node's zero lane, if a zero handler was ever registered.
    pub(crate) fn zero_lane(&self) -> Option<&Arc<Lane>> {
        self.zero.get()
    }

    /// Whether some zero handler of the node takes `event_type`.
    pub(crate) fn zero_matches(&self, event_type: &str) -> bool {
        self.zero_lane()
            .is_some_and(|lane| lane.matches(event_type))
    }
}

/// Registers a zero handler on `node`.
pub(crate) fn register(node: &Node, pattern: Pattern, handler: Arc<ZeroFn>) -> Result<HandlerId> {
    pattern.validate()?;
    let core = node.core();
    if core.is_closed() {
        return Err(HappenError::Shutdown);
    }
    let runtime = node.runtime()?;
    // Broadcast interest is the transport's; direct sends reach the node
    // by its id whatever its handlers.
    runtime.transport().subscribe(node, &pattern)?;
    let lane = core.zero.get_or_init(|| Arc::new(Lane::new()));
    let id = HandlerId::next();
    lane.queue().handlers.push(Registered {
        id,
        pattern,
        handler,
    });
    crate::transport::routes::changed();
    Ok(id)
}

/// Hands a zero event to `node`: its zero lane when a zero handler takes
/// it, else its ordinary handlers, converted. Refusals go to `reply` too.
pub(crate) fn deliver(
    node: &Arc<NodeCore>,
    event: ZeroEvent,
    reply: ReplyTo,
    arrival: Arrival,
) -> Result<()> {
    // A closed node refuses it below, whoever sent it.
    if node.guards_senders()
        && !node.is_closed()
        && let Err(error) = node.accepts_zero(&event)
    {
        reply.answer(Err(error.clone()), node);
        return Err(error);
    }
    deliver_accepted(node, event, reply, arrival)
}

/// [`deliver`] for an event the node's guard already took: an ordinary
/// event converted for a zero handler was checked in its own form (its
/// source and signature, which its zero form does not carry).
#[inline]
pub(crate) fn deliver_accepted(
    node: &Arc<NodeCore>,
    event: ZeroEvent,
    reply: ReplyTo,
    arrival: Arrival,
) -> Result<()> {
    let refuse = |reply: ReplyTo, error: HappenError| {
        reply.answer(Err(error.clone()), node);
        Err(error)
    };
    if node.is_closed() {
        let error = HappenError::UnknownNode {
            node: node.id().to_string(),
        };
        return refuse(reply, error);
    }
    // No zero handler takes it: the ordinary handlers, converted.
    let ordinary = |event: ZeroEvent, reply: ReplyTo| {
        let ordinary = event.to_event();
        let responder = reply.into_responder(node);
        crate::delivery::deliver(node, Delivery::new(ordinary, responder, arrival))
    };
    let Some(lane) = node.zero_lane() else {
        return ordinary(event, reply);
    };
    let first = {
        let mut queue = lane.queue();
        let raw = event.event_type_bytes();
        let found = queue
            .handlers
            .iter()
            .position(|h| h.pattern.matches_raw(raw, || event.event_type()));
        let Some(at) = found else {
            drop(queue);
            return ordinary(event, reply);
        };
        let limit = node.limits().queue_limit;
        let waiting = queue.items.len() + lane.in_batch.load(Ordering::Relaxed);
        if waiting >= limit.max(1) {
            drop(queue);
            let error = HappenError::QueueFull {
                node: node.id().to_string(),
                active: 1,
                queue_limit: limit,
            };
            return refuse(reply, error);
        }
        queue.items.push_back(Item {
            event,
            reply,
            handler: Which::At(at),
        });
        queue.items.len() == 1
    };
    // Events queued behind others are taken with them: whoever queued the
    // first woke (or started) the task, which has not taken it yet.
    lane.kick(node, first);
    Ok(())
}

/// Starts the lane's task: it runs for as long as the node lives.
/// The task is tracked by the runtime, so that its shutdown waits until the
/// queued events are handled.
fn start(node: &Arc<NodeCore>, lane: Arc<Lane>) {
    let weak = Arc::downgrade(node);
    let task = work(weak, lane);
    match node.runtime_inner() {
        Some(runtime) => runtime.spawn(task),
        None => drop(tokio::spawn(task)),
    }
}

impl Lane {
    /// Wakes the lane's task (the runtime is shutting down: it ends once its
    /// queue is empty).
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Waits until no handler of the lane runs and none waits (a shutdown:
    /// a requester may have claimed an event before it began).
    pub(crate) async fn quiet(&self) {
        self.watched.store(true, Ordering::SeqCst);
        loop {
            let idle = self.idle.notified();
            let mut idle = std::pin::pin!(idle);
            idle.as_mut().enable();
            {
                let queue = self.queue();
                if !queue.busy && queue.items.is_empty() {
                    return;
                }
            }
            idle.await;
        }
    }

    /// Marks the lane free; whether events wait.
    fn free(&self) -> bool {
        let waiting = {
            let mut queue = self.queue();
            queue.busy = false;
            !queue.items.is_empty()
        };
        if self.watched.load(Ordering::SeqCst) {
            self.idle.notify_waiters();
        }
        waiting
    }

    /// Starts the lane's task if none runs, or else wakes it if `wake`.
    fn kick(self: &Arc<Lane>, node: &Arc<NodeCore>, wake: bool) {
        if !self.started.load(Ordering::Acquire) && !self.started.swap(true, Ordering::AcqRel) {
            start(node, self.clone());
        } else if wake {
            self.wake.notify_one();
        }
    }

    /// Runs the queued event `id` in the caller's task, now, if it is the
    /// next of the lane and no handler of the lane runs (a zero request
    /// awaited in this process: the lane's task need not be woken for it).
    /// Events sent before it are never overtaken, and the lane still runs
    /// one handler at a time. During a shutdown the lane's task runs it.
    pub(crate) fn claim(self: &Arc<Lane>, node: &Arc<NodeCore>, id: &[u8; 16]) {
        if node.draining() || node.is_closed() {
            return;
        }
        let item = {
            let mut queue = self.queue();
            match queue.items.front() {
                Some(next) if !queue.busy && next.event.id().0 == *id => {}
                _ => return,
            }
            queue.busy = true;
            let item = queue.items.pop_front();
            item.map(|mut item| {
                // Taken out of the queue, it holds its handler itself (the
                // claim runs it with no list of the lane's handlers).
                if let Which::At(at) = item.handler
                    && let Some(h) = queue.handlers.get(at)
                {
                    item.handler = Which::Owned(h.handler.clone());
                }
                item
            })
        };
        let _busy = Claimed { lane: self, node };
        if let Some(item) = item {
            crate::causality::outside(|| run(&Node::from_core(node.clone()), item, &[]));
        }
    }
}

/// A claimed event running: when it ends the lane is free again, and its
/// task is woken for whatever came meanwhile.
struct Claimed<'a> {
    lane: &'a Arc<Lane>,
    node: &'a Arc<NodeCore>,
}

impl Drop for Claimed<'_> {
    fn drop(&mut self) {
        if self.lane.free() {
            self.lane.kick(self.node, true);
        }
    }
}

async fn work(node: Weak<NodeCore>, lane: Arc<Lane>) {
    let mut batch: VecDeque<Item> = VecDeque::new();
    // The handlers as they were when the batch was taken (what its events'
    // `Which::At` name); emptied after each batch, so that a removed
    // handler is not kept alive by an idle task.
    let mut handlers: Vec<Arc<ZeroFn>> = Vec::new();
    loop {
        {
            let mut queue = lane.queue();
            // While a requester runs a claimed event the task waits: the
            // requester wakes it when done if more came.
            if !queue.busy {
                std::mem::swap(&mut queue.items, &mut batch);
                lane.in_batch.store(batch.len(), Ordering::Relaxed);
                queue.busy = !batch.is_empty();
                if queue.busy {
                    handlers.extend(queue.handlers.iter().map(|h| h.handler.clone()));
                }
            }
        }
        if batch.is_empty() {
            let stop = node
                .upgrade()
                .is_none_or(|core| core.is_closed() || core.draining());
            if stop {
                // The next event starts a task again (a running flow may
                // still send one while the runtime drains); one that came
                // just now is taken by this task.
                lane.started.store(false, Ordering::SeqCst);
                // Events behind a claimed one are the claimer's to pass on.
                let waiting = {
                    let queue = lane.queue();
                    !queue.busy && !queue.items.is_empty()
                };
                if waiting && !lane.started.swap(true, Ordering::SeqCst) {
                    continue;
                }
                return;
            }
            // Woken by the next event, or by a shutdown; a node shut down
            // on its own is seen within a second.
            let _ = tokio::time::timeout(Duration::from_secs(1), lane.wake.notified()).await;
            continue;
        }
        let Some(core) = node.upgrade() else {
            return;
        };
        let running = Running {
            lane: &lane,
            core: &core,
        };
        let handle = Node::from_core(core.clone());
        let total = batch.len();
        for (i, item) in batch.drain(..).enumerate() {
            lane.in_batch.store(total - i - 1, Ordering::Relaxed);
            match core.abandoned() {
                true => item.reply.refuse(HappenError::Shutdown),
                false => run(&handle, item, &handlers),
            }
        }
        handlers.clear();
        drop(handle);
        drop(running);
        lane.free();
        // Other tasks on this thread get their turn between batches.
        tokio::task::yield_now().await;
    }
}

/// The lane's task running a batch. Should the task end by a panic (no
/// handler's: those are caught), the lane is freed and a new task takes
/// what waits, so that neither the queue nor a shutdown waits forever.
struct Running<'a> {
    lane: &'a Arc<Lane>,
    core: &'a Arc<NodeCore>,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.lane.started.store(false, Ordering::SeqCst);
            if self.lane.free() {
                self.lane.kick(self.core, true);
            }
        }
    }
}

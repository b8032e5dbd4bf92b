//! Nodes: the actors of a Happen system. A node registers handlers for the
//! event types it cares about and emits events by broadcast or direct send.
//!
//! Each node schedules its own flows: events are handled concurrently up to
//! the node's `max_concurrent`, further events wait in a FIFO queue of at most
//! `queue_limit`, and beyond that the sender gets
//! [`HappenError::QueueFull`]. Nothing is dropped silently.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

use crate::causality;
use crate::config::NodeLimits;
use crate::confluence::SentToAll;
use crate::error::{HappenError, Result};
use crate::event::{self, Event};
use crate::flow::{self, Handler, Step};
use crate::id::Id;
use crate::name::{validate_event_type, validate_node_id};
use crate::pattern::{IntoPattern, Pattern};
use crate::response::Sent;
use crate::runtime::{Happen, RuntimeInner};
use crate::state::global::Global;
use crate::state::{Collect, State, View};
use crate::store::Store;
use crate::transport::Responder;

/// Handler ids are unique in the process, so an id from one node never
/// removes another node's handler.
static NEXT_HANDLER: AtomicU64 = AtomicU64::new(1);

/// Identifies one handler registration on a node, for [`Node::off`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HandlerId(u64);

#[derive(Clone)]
struct Registration {
    id: HandlerId,
    pattern: Pattern,
    step: Step,
}

impl Registration {
    /// Whether this handler takes `event_type`. A function matcher that
    /// panics counts as "no" (and is logged): user code must not take the
    /// node down.
    fn accepts(&self, event_type: &str, node: &Id) -> bool {
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

struct Delivery {
    event: Event,
    responder: Option<Responder>,
}

#[derive(Default)]
struct Scheduler {
    active: usize,
    queue: VecDeque<Delivery>,
}

pub(crate) struct NodeCore {
    id: Id,
    /// Weak: the runtime lives as long as a `Happen` handle does; nodes
    /// (held by the runtime's transport) must not keep it alive.
    runtime: Weak<RuntimeInner>,
    store: Arc<dyn Store>,
    temporal: bool,
    limits: NodeLimits,
    handlers: RwLock<Arc<Vec<Registration>>>,
    scheduler: Mutex<Scheduler>,
    /// Serializes this process's updates of the node's state.
    state_lock: tokio::sync::Mutex<()>,
}

/// A node: an independent actor that handles and emits events.
///
/// Create nodes with [`Happen::node`]. A `Node` is a cheap handle; clones refer
/// to the same node.
///
/// ```
/// use happen::prelude::*;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> happen::Result<()> {
/// let happen = Happen::embedded();
/// let orders = happen.node("order-service")?;
/// let payments = happen.node("payment-service")?;
///
/// payments.on("process-payment", |event: Event, cx: Context| async move {
///     assert_eq!(cx.sender(), "order-service");
///     assert!(cx.expects_response());
///     json!({ "status": "approved", "amount": event.payload()["amount"] })
/// })?;
///
/// let reply = orders
///     .send(&payments, Event::new("process-payment", json!({ "amount": 129.99 })))
///     .response()
///     .await?;
/// assert_eq!(reply["status"], "approved");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Node(Arc<NodeCore>);

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.0.id)
            .field("limits", &self.0.limits)
            .finish_non_exhaustive()
    }
}

impl PartialEq for Node {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Node {}

/// Something that names the node an event is sent to: a [`Node`] or a node id.
pub trait Target {
    /// The id of the target node.
    fn target_id(&self) -> &str;

    /// The id as a shared [`Id`] (a node hands out its own without copying).
    fn target_shared_id(&self) -> Id {
        Id::from(self.target_id())
    }
}

impl Target for Node {
    fn target_id(&self) -> &str {
        self.id()
    }

    fn target_shared_id(&self) -> Id {
        self.0.id.clone()
    }
}

impl Target for str {
    fn target_id(&self) -> &str {
        self
    }
}

impl Target for String {
    fn target_id(&self) -> &str {
        self
    }
}

impl<T: Target + ?Sized> Target for &T {
    fn target_id(&self) -> &str {
        (**self).target_id()
    }

    fn target_shared_id(&self) -> Id {
        (**self).target_shared_id()
    }
}

impl Node {
    pub(crate) fn new(id: Id, runtime: &Arc<RuntimeInner>, limits: NodeLimits) -> Self {
        Node(Arc::new(NodeCore {
            id,
            runtime: Arc::downgrade(runtime),
            store: runtime.store().clone(),
            temporal: runtime.config().temporal_config().enabled,
            limits,
            handlers: RwLock::new(Arc::new(Vec::new())),
            scheduler: Mutex::new(Scheduler::default()),
            state_lock: tokio::sync::Mutex::new(()),
        }))
    }

    pub(crate) fn core(&self) -> &Arc<NodeCore> {
        &self.0
    }

    /// The node's id.
    pub fn id(&self) -> &str {
        &self.0.id
    }

    /// The node's id as a shared [`Id`].
    pub fn shared_id(&self) -> &Id {
        &self.0.id
    }

    /// The limits this node runs with (after system defaults and overrides).
    pub fn limits(&self) -> NodeLimits {
        self.0.limits
    }

    /// This node's own state: get, transform, history.
    ///
    /// ```
    /// use happen::prelude::*;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> happen::Result<()> {
    /// let happen = Happen::embedded();
    /// let counter = happen.node("counter")?;
    /// counter.state().set(|s| json!(s.as_u64().unwrap_or(0) + 1)).await?;
    /// counter.state().set(|s| json!(s.as_u64().unwrap_or(0) + 1)).await?;
    /// assert_eq!(counter.state().get().await?, json!(2));
    /// # Ok(()) }
    /// ```
    pub fn state(&self) -> State {
        State::new(self.clone())
    }

    /// A read-only window into the state of the node `node` (in any process).
    pub fn view(&self, node: &str) -> View {
        View::new(self.store().clone(), node.to_owned())
    }

    /// Collects projections of several nodes' state in one call.
    ///
    /// ```
    /// use happen::prelude::*;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> happen::Result<()> {
    /// let happen = Happen::embedded();
    /// let dashboard = happen.node("dashboard")?;
    /// happen.node("inventory")?.state().set(|_| json!({ "products": { "p1": { "stock": 0 } } })).await?;
    /// happen.node("orders")?.state().set(|_| json!({ "pending": 4 })).await?;
    ///
    /// let data = dashboard
    ///     .collect()
    ///     .from("orders", |s| s["pending"].clone())
    ///     .from_as("outOfStock", "inventory", |s| json!(s["products"].as_object().map_or(0, |p| p.len())))
    ///     .from("no-such-node", |s| s.clone())
    ///     .await?;
    /// assert_eq!(data["orders"], Some(json!(4)));
    /// assert_eq!(data["outOfStock"], Some(json!(1)));
    /// assert_eq!(data["no-such-node"], None);
    /// # Ok(()) }
    /// ```
    pub fn collect(&self) -> Collect {
        Collect::new(self.store().clone())
    }

    /// The system-wide key-value namespace (see [`crate::state::global`]).
    pub fn global(&self) -> Global {
        Global::new(self.store().clone())
    }

    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        &self.0.store
    }

    pub(crate) fn state_lock(&self) -> &tokio::sync::Mutex<()> {
        &self.0.state_lock
    }

    pub(crate) fn temporal_enabled(&self) -> bool {
        self.0.temporal
    }

    /// The runtime this node belongs to; `None` once every [`Happen`] handle
    /// of it has been dropped.
    pub fn happen(&self) -> Option<Happen> {
        self.0.runtime.upgrade().map(Happen::from_inner)
    }

    fn runtime(&self) -> Result<Arc<RuntimeInner>> {
        self.0.runtime.upgrade().ok_or(HappenError::Shutdown)
    }

    /// Registers `handler` as the first step of a flow for every event whose
    /// type matches `pattern`.
    ///
    /// `pattern` is a string pattern (`"order.created"`, `"order.*"`,
    /// `"{order,payment}.created"`, `"audit.>"`), a closure `Fn(&str) -> bool`,
    /// or a [`Pattern`] built with the combinators of [`crate::pattern`]. An
    /// invalid pattern string is an error here.
    ///
    /// When several handlers of one node match an event, each runs its own
    /// flow; a requester receives the result of the first registered.
    ///
    /// ```
    /// use happen::prelude::*;
    /// # let happen = Happen::embedded();
    /// # let node = happen.node("n").unwrap();
    /// node.on("order.*", |_e: Event, _cx: Context| async {}).unwrap();
    /// node.on(|t: &str| t.ends_with(".failed"), |_e: Event, _cx: Context| async {}).unwrap();
    /// let err = node.on("order.{", |_e: Event, _cx: Context| async {}).unwrap_err();
    /// assert!(matches!(err, HappenError::InvalidPattern(_)));
    /// ```
    pub fn on(&self, pattern: impl IntoPattern, handler: impl Handler) -> Result<HandlerId> {
        self.on_step(pattern.into_pattern(), Step::new(handler))
    }

    pub(crate) fn on_step(&self, pattern: Pattern, step: Step) -> Result<HandlerId> {
        pattern.validate()?;
        let runtime = self.runtime()?;
        let id = HandlerId(NEXT_HANDLER.fetch_add(1, Ordering::Relaxed));
        runtime.transport().interest(&pattern);
        let registration = Registration { id, pattern, step };
        let mut handlers = self.0.handlers.write().unwrap_or_else(|p| p.into_inner());
        let mut next = Vec::with_capacity(handlers.len() + 1);
        next.extend(handlers.iter().cloned());
        next.push(registration);
        *handlers = Arc::new(next);
        Ok(id)
    }

    /// Removes a handler registered with [`Node::on`]. Flows it already
    /// started run to their end. Returns whether it was registered.
    pub fn off(&self, id: HandlerId) -> bool {
        let mut handlers = self.0.handlers.write().unwrap_or_else(|p| p.into_inner());
        if !handlers.iter().any(|r| r.id == id) {
            return false;
        }
        *handlers = Arc::new(handlers.iter().filter(|r| r.id != id).cloned().collect());
        true
    }

    /// Sends `event` to every node with a matching handler, this one included.
    ///
    /// Returns once the event is handed to the receivers; their flows run
    /// concurrently. Fails on an invalid event type, after shutdown, or when a
    /// receiver's queue is full (the other receivers still get the event).
    ///
    /// ```
    /// use happen::prelude::*;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> happen::Result<()> {
    /// let happen = Happen::embedded();
    /// let weather = happen.node("weather")?;
    /// let emergency = happen.node("emergency")?;
    /// let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    /// emergency.on("severe-weather", move |event: Event, _cx: Context| {
    ///     let tx = tx.clone();
    ///     async move { tx.send(event.payload()["region"].clone()).unwrap(); }
    /// })?;
    /// weather.broadcast(Event::new("severe-weather", json!({ "region": "Gulf Coast" })))?;
    /// assert_eq!(rx.recv().await.unwrap(), "Gulf Coast");
    /// # Ok(()) }
    /// ```
    pub fn broadcast(&self, event: Event) -> Result<()> {
        let runtime = self.runtime()?;
        let event = self.prepare(&runtime, event).map_err(|(e, _)| e)?;
        runtime.transport().broadcast(event)
    }

    /// Sends `event` to `target` and returns at once; the event is already on
    /// its way.
    ///
    /// Await the returned [`Sent`] (or call [`Sent::response`]) for the flow's
    /// result, use [`Sent::on_response`] for a callback, or drop it for
    /// fire-and-forget. Errors (no such node, no matching handler, full queue,
    /// invalid event type) arrive through the handle without waiting for a
    /// timeout.
    pub fn send(&self, target: impl Target, event: Event) -> Sent {
        let target = target.target_shared_id();
        let timeout = self.0.limits.timeout;
        let prepared = match self.runtime() {
            Ok(runtime) => match validate_node_id(&target) {
                Ok(()) => self.prepare(&runtime, event).map(|e| (runtime, e)),
                Err(e) => Err((e.into(), event)),
            },
            Err(e) => Err((e, event)),
        };
        match prepared {
            Ok((runtime, event)) => {
                let (sent, reply) = Sent::new(target.clone(), event.clone(), timeout);
                runtime
                    .transport()
                    .send(&target, event, reply, sent.deadline());
                sent
            }
            Err((e, event)) => Sent::refused(target, event, timeout, e),
        }
    }

    /// Sends `event` to every node of `targets` (a [`NodeGroup`](crate::NodeGroup), nodes or
    /// ids). Each runs its own flow; await the handle for the results keyed
    /// by node id, each with its own outcome.
    pub fn send_to_all<T: Target>(
        &self,
        targets: impl IntoIterator<Item = T>,
        event: Event,
    ) -> SentToAll {
        let targets: Vec<Id> = targets.into_iter().map(|t| t.target_shared_id()).collect();
        let timeout = self.0.limits.timeout;
        let runtime = self.runtime();
        let prepared = match &runtime {
            Ok(runtime) => self.prepare(runtime, event),
            Err(e) => Err((e.clone(), event)),
        };
        let sent = targets
            .into_iter()
            .map(|target| {
                let outcome = match (&runtime, &prepared) {
                    (Ok(runtime), Ok(event)) => match validate_node_id(&target) {
                        Ok(()) => {
                            let (sent, reply) = Sent::new(target.clone(), event.clone(), timeout);
                            runtime.transport().send(
                                &target,
                                event.clone(),
                                reply,
                                sent.deadline(),
                            );
                            sent
                        }
                        Err(e) => Sent::refused(target.clone(), event.clone(), timeout, e.into()),
                    },
                    (_, Err((e, event))) => {
                        Sent::refused(target.clone(), event.clone(), timeout, e.clone())
                    }
                    (Err(e), Ok(event)) => {
                        Sent::refused(target.clone(), event.clone(), timeout, e.clone())
                    }
                };
                (target, outcome)
            })
            .collect();
        SentToAll::new(sent)
    }

    /// Validates and stamps an outgoing event with its causal context; a
    /// refused event comes back with the reason.
    fn prepare(
        &self,
        runtime: &RuntimeInner,
        mut event: Event,
    ) -> Result<Event, (HappenError, Event)> {
        if let Err(e) = validate_event_type(event.event_type()) {
            return Err((e.into(), event));
        }
        let parent = causality::current_event();
        if parent.is_none() && runtime.is_closed() {
            return Err((HappenError::Shutdown, event));
        }
        event::stamp(&mut event, &self.0.id, parent.as_ref().map(Event::causal));
        Ok(event)
    }
}

impl NodeCore {
    /// Whether any handler of this node matches `event_type`.
    pub(crate) fn handles(&self, event_type: &str) -> bool {
        self.handlers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|r| r.accepts(event_type, &self.id))
    }

    /// Accepts an event for handling: runs it now, queues it, or refuses it.
    /// A refusal is also sent to the responder.
    pub(crate) fn deliver(
        self: &Arc<Self>,
        event: Event,
        responder: Option<Responder>,
    ) -> Result<()> {
        if !self.handles(event.event_type()) {
            let error = HappenError::NoHandler {
                node: self.id.to_string(),
                event_type: event.event_type().to_owned(),
            };
            return refuse(error, responder);
        }
        let delivery = Delivery { event, responder };
        let mut scheduler = self.scheduler.lock().unwrap_or_else(|p| p.into_inner());
        if scheduler.active < self.limits.max_concurrent {
            scheduler.active += 1;
            drop(scheduler);
            self.start(delivery);
            Ok(())
        } else if scheduler.queue.len() < self.limits.queue_limit {
            scheduler.queue.push_back(delivery);
            Ok(())
        } else {
            let error = HappenError::QueueFull {
                node: self.id.to_string(),
                active: scheduler.active,
                queue_limit: self.limits.queue_limit,
            };
            drop(scheduler);
            refuse(error, delivery.responder)
        }
    }

    /// Spawns the flows for a delivery that holds one of the node's slots;
    /// when they end, the slot passes to the next queued event.
    fn start(self: &Arc<Self>, delivery: Delivery) {
        let Some(runtime) = self.runtime.upgrade() else {
            // The runtime was dropped: nothing will run here any more.
            self.scheduler
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .active -= 1;
            let _ = refuse(HappenError::Shutdown, delivery.responder);
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
                    tracing::error!(node = %core.id, message = %crate::flow::panic_message(panic.as_ref()), "event delivery panicked");
                }
                let next = {
                    let mut scheduler = core.scheduler.lock().unwrap_or_else(|p| p.into_inner());
                    let next = scheduler.queue.pop_front();
                    if next.is_none() {
                        scheduler.active -= 1;
                    }
                    next
                };
                match next {
                    // Reusing this task for the queued event keeps the slot
                    // count exact and saves a spawn.
                    Some(queued) => delivery = queued,
                    None => break,
                }
            }
        });
    }

    /// Runs every matching handler's flow for one event; the first registered
    /// answers the requester.
    async fn run(self: &Arc<Self>, delivery: Delivery) {
        let Delivery { event, responder } = delivery;
        let handlers = self
            .handlers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let node = Node(self.clone());
        let mut matching = handlers
            .iter()
            .filter(|r| r.accepts(event.event_type(), &self.id));
        let Some(first) = matching.next() else {
            // Every handler was removed while the event waited in the queue.
            let error = HappenError::NoHandler {
                node: self.id.to_string(),
                event_type: event.event_type().to_owned(),
            };
            let _ = refuse(error, responder);
            return;
        };
        let first_flow = flow::run(node.clone(), first.step.clone(), event.clone(), responder);
        let others: Vec<_> = matching
            .map(|r| flow::run(node.clone(), r.step.clone(), event.clone(), None))
            .collect();
        if others.is_empty() {
            first_flow.await;
        } else {
            futures::future::join(first_flow, futures::future::join_all(others)).await;
        }
    }
}

fn refuse(error: HappenError, responder: Option<Responder>) -> Result<()> {
    if let Some(responder) = responder {
        responder.reply(Err(error.clone()));
    }
    Err(error)
}

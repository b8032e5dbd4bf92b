//! Nodes: the actors of a Happen system. A node registers handlers for the
//! event types it cares about and emits events by broadcast or direct send.
//!
//! Each node schedules its own flows: events are handled
//! concurrently up to the node's `max_concurrent`, further events wait in a
//! FIFO queue of at most `queue_limit`, and beyond that the sender gets
//! [`HappenError::QueueFull`]. Nothing is dropped silently.

mod blocked;
mod guard;
mod queue;
mod registry;
mod scheduler;
mod send;
mod shutdown;
pub(crate) use blocked::{Blocked, SlotWaits};
pub(crate) use send::Addressee;
mod start;
mod target;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

pub use queue::PRIORITY_FIELD;
pub use registry::HandlerId;
pub(crate) use registry::{KeptMatch, Matched, Registration};
pub use target::{NodeRef, Target};

use crate::accept::AcceptFrom;
use crate::config::NodeLimits;
use crate::entry::Entry;
use crate::error::{HappenError, Result};
use crate::event::Event;
use crate::flow::Handler;
use crate::id::Id;
use crate::identity::{Keys, NodeKeys, SignerRef};
use crate::observe::Observers;
use crate::pattern::{IntoPattern, Pattern};
use crate::receipt::Receipt;
use crate::runtime::{Happen, RuntimeInner};
use crate::state::global::Global;
use crate::state::{Collect, State, View};
use crate::store::Store;
use registry::Registry;
use scheduler::Scheduler;

pub(crate) struct NodeCore {
    id: Id,
    /// Weak: the runtime lives as long as a `Happen` handle does; nodes
    /// (held by the runtime's transport) must not keep it alive.
    runtime: Weak<RuntimeInner>,
    store: Arc<dyn Store>,
    snapshots: crate::state::temporal::Snapshots,
    limits: NodeLimits,
    /// Whom the node takes events from (`None`: anyone).
    accept: Option<AcceptFrom>,
    /// The node's signer.
    keys: NodeKeys,
    /// The public keys of senders, for checking signatures.
    key_registry: Arc<Keys>,
    registry: Registry,
    scheduler: Scheduler,
    /// Serializes this process's updates of the node's state.
    state_lock: Arc<tokio::sync::Mutex<()>>,
    /// The runtime's record of settled exactly-once events (state marks).
    settled: Arc<crate::store::applied::Settled>,
    observers: Observers,
    /// Set by [`Node::shutdown`].
    closed: AtomicBool,
    /// The runtime's closed flag (set by its shutdown, or when it is
    /// dropped), read without upgrading `runtime`.
    runtime_closed: Arc<AtomicBool>,
    /// Whether the runtime delivers events between its own nodes in the
    /// process (see [`crate::transport::Transport::in_process`]).
    in_process: bool,
    /// Whether the node is durable and its events are retried by this
    /// process (the embedded runtime; over NATS, JetStream keeps them).
    retried_here: bool,
    /// Exactly-once in this process: the events already taken.
    pub(crate) seen: crate::durable::Seen,
    /// Retries of its events waiting for their backoff (durable in this
    /// process), which its shutdown runs at once.
    pub(crate) retries: crate::retries::Retries,
    /// Where the node's events are kept across a restart (a durable node of
    /// an embedded runtime on disk).
    #[cfg(feature = "redb")]
    spool: Option<Arc<crate::spool::Spool>>,
    /// The node's zero handlers and their queue (see [`crate::zero`]).
    pub(crate) zero: std::sync::OnceLock<Arc<crate::zero::Lane>>,
}

impl NodeCore {
    pub(crate) fn id(&self) -> &Id {
        &self.id
    }

    pub(crate) fn limits(&self) -> &NodeLimits {
        &self.limits
    }

    /// Whether the node was shut down.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The runtime, while it is running.
    pub(crate) fn runtime_inner(&self) -> Option<Arc<RuntimeInner>> {
        self.runtime.upgrade()
    }

    /// Whether `event` reaches the node for the first time (always, unless
    /// the node is in exactly-once mode and took a copy of it already).
    pub(crate) fn first_sight(&self, event: &Event) -> bool {
        let delivery = &self.limits.delivery;
        delivery.mode != crate::DeliveryMode::ExactlyOnce
            || self.seen.first(&event.causal().id, delivery.dedup_window)
    }

    /// The runtime's record of settled exactly-once events (state marks).
    pub(crate) fn settled(&self) -> &Arc<crate::store::applied::Settled> {
        &self.settled
    }

    /// Whether the transport stores the node's events (a durable node over
    /// NATS): they reach it only from there.
    pub(crate) fn stored_by_transport(&self) -> bool {
        self.limits.delivery.mode.is_durable() && !self.retried_here
    }

    /// Where the node's events are kept across a restart, if anywhere.
    #[cfg(feature = "redb")]
    pub(crate) fn spool(&self) -> Option<&Arc<crate::spool::Spool>> {
        self.spool.as_ref()
    }

    /// Whether events to the node are retried by this process.
    pub(crate) fn retried_here(&self) -> bool {
        self.retried_here
    }

    pub(crate) fn observers(&self) -> &Observers {
        &self.observers
    }

    /// The handlers of this node that take `event_type`, if any.
    pub(crate) fn matching(&self, event_type: &str) -> Option<Matched> {
        if self.closed.load(Ordering::Acquire) {
            return None;
        }
        self.registry.matching(event_type, &self.id)
    }

    /// The node's signer (a key pair made now if none was configured).
    pub(crate) fn signer(&self) -> &Arc<dyn crate::identity::Signer> {
        self.keys.signer()
    }

    /// The handlers `event_type` matches, also while the node shuts down
    /// (for a retry its shutdown runs; see [`crate::retries`]).
    pub(crate) fn handlers_for(&self, event_type: &str) -> Option<Matched> {
        self.registry.matching(event_type, &self.id)
    }

    /// The handlers that take an event of `event_type` now; the reason if
    /// none does.
    pub(crate) fn admits(&self, event_type: &str) -> Result<Matched> {
        if self.closed.load(Ordering::Acquire) {
            return Err(HappenError::UnknownNode {
                node: self.id.to_string(),
            });
        }
        self.registry
            .matching(event_type, &self.id)
            .ok_or_else(|| HappenError::NoHandler {
                node: self.id.to_string(),
                event_type: event_type.to_owned(),
            })
    }
}

/// A node: an independent actor that handles and emits events.
///
/// Create nodes with [`Happen::node`]. A `Node` is a cheap handle; clones refer
/// to the same node.
///
/// As a target, a handle stands for its node's id, as it would over NATS:
/// an event sent to it goes to the live node of that id in the sender's
/// runtime. So a handle kept after its node was shut down reaches a new
/// node created with the same id, and a handle from another runtime in the
/// same process reaches the sender's runtime's node of that id, if any.
///
/// `S` is the type of the node-local value the handle gives the flows it
/// registers ([`Node::with_local`]); `()` by default.
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
pub struct Node<S = ()> {
    core: Arc<NodeCore>,
    local: S,
}

impl<S: Clone> Clone for Node<S> {
    fn clone(&self) -> Self {
        Node {
            core: self.core.clone(),
            local: self.local.clone(),
        }
    }
}

impl<S> std::fmt::Debug for Node<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.core.id)
            .field("limits", &self.core.limits)
            .finish_non_exhaustive()
    }
}

/// Two handles are equal when they refer to the same node (whatever their
/// local values).
impl<S, T> PartialEq<Node<T>> for Node<S> {
    fn eq(&self, other: &Node<T>) -> bool {
        Arc::ptr_eq(&self.core, &other.core)
    }
}

impl<S> Eq for Node<S> {}

impl Node {
    pub(crate) fn new(
        id: Id,
        runtime: &Arc<RuntimeInner>,
        limits: NodeLimits,
        (accept, identity): (Option<AcceptFrom>, Option<SignerRef>),
        snapshots: crate::state::temporal::Snapshots,
    ) -> Self {
        let retried_here =
            limits.delivery.mode.is_durable() && !runtime.transport().stores_durable_events();
        let keys = NodeKeys::new(identity);
        let registry = runtime.transport().local().keys().clone();
        if limits.sign {
            // Receivers look the key up by node id: known before the
            // node's first signed event leaves.
            let public_key = keys.signer().public_key();
            registry.learn(&id, public_key.clone());
            runtime.transport().register_key(&id, &public_key);
        }
        Node::from_core(Arc::new(NodeCore {
            id,
            runtime: Arc::downgrade(runtime),
            store: runtime.store().clone(),
            snapshots,
            registry: Registry::default(),
            scheduler: Scheduler::default(),
            state_lock: Arc::new(tokio::sync::Mutex::new(())),
            settled: runtime.settled().clone(),
            observers: runtime.config().observers().clone(),
            closed: AtomicBool::new(false),
            zero: std::sync::OnceLock::new(),
            runtime_closed: runtime.closed_flag().clone(),
            in_process: runtime.transport().in_process(),
            retried_here,
            limits,
            accept,
            keys,
            key_registry: registry,
            seen: Default::default(),
            retries: Default::default(),
            #[cfg(feature = "redb")]
            spool: runtime.store().spool().filter(|_| retried_here),
        }))
    }

    pub(crate) fn from_core(core: Arc<NodeCore>) -> Self {
        Node { core, local: () }
    }
}

impl<S> Node<S> {
    pub(crate) fn core(&self) -> &Arc<NodeCore> {
        &self.core
    }

    /// The node's id.
    pub fn id(&self) -> &str {
        &self.core.id
    }

    /// The node's id as a shared [`Id`].
    pub fn shared_id(&self) -> &Id {
        &self.core.id
    }

    /// The node's public key (see [`crate::identity`]): the configured
    /// key's, or that of a key pair made the first time it is needed.
    pub fn public_key(&self) -> String {
        self.core.signer().public_key()
    }

    /// The limits this node runs with (after system defaults and overrides).
    pub fn limits(&self) -> NodeLimits {
        self.core.limits
    }

    /// The node-local value this handle gives its flows.
    pub fn local(&self) -> &S {
        &self.local
    }

    /// A handle to the same node whose flows see `local` as
    /// [`Context::local`](crate::Context::local), with no lookup that could
    /// fail: the place for what every step needs (a client, a pool, shared
    /// data behind an `Arc`). Handlers registered through the returned
    /// handle take `Context<T>`; see [`crate::flow`] for an example.
    ///
    /// The value is cloned for each flow, so make it cheap to clone (wrap
    /// large or mutable data in an `Arc`). It stays in this process: it is
    /// not state (see [`Node::state`]) and does not travel with events.
    pub fn with_local<T>(&self, local: T) -> Node<T> {
        Node {
            core: self.core.clone(),
            local,
        }
    }

    /// A handle to the same node without its local value.
    pub fn untyped(&self) -> Node {
        Node::from_core(self.core.clone())
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
        State::new(
            self.store().clone(),
            self.core.settled.clone(),
            self.core.id.clone(),
            self.core.snapshots.clone(),
            Some(self.core.state_lock.clone()),
        )
    }

    /// A read-only window into the state of the node `node` (in any
    /// process): a node id, or a [`Node`] handle, as for [`Node::send`].
    ///
    /// ```
    /// use happen::prelude::*;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> happen::Result<()> {
    /// let happen = Happen::embedded();
    /// let stock = happen.node("stock")?;
    /// stock.state().set(|_| json!({ "p1": 3 })).await?;
    /// let shop = happen.node("shop")?;
    /// assert_eq!(shop.view(&stock).get().await?, Some(json!({ "p1": 3 })));
    /// assert_eq!(shop.view("stock").get().await?, Some(json!({ "p1": 3 })));
    /// # Ok(()) }
    /// ```
    pub fn view(&self, node: impl Target) -> View {
        View::new(self.store().clone(), node.target_id().to_owned())
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
        &self.core.store
    }

    /// The runtime this node belongs to; `None` once every [`Happen`] handle
    /// of it has been dropped.
    pub fn happen(&self) -> Option<Happen> {
        self.core.runtime.upgrade().map(Happen::from_inner)
    }

    pub(crate) fn runtime(&self) -> Result<Arc<RuntimeInner>> {
        self.core.runtime.upgrade().ok_or(HappenError::Shutdown)
    }

    /// Removes a handler registered with [`Node::on`]. Flows it already
    /// started run to their end. Returns whether it was registered.
    ///
    /// Over NATS, a subscription that no remaining handler of this process
    /// needs is released, so the server stops sending its events here.
    pub fn off(&self, id: HandlerId) -> bool {
        if let Some(lane) = self.core.zero_lane()
            && lane.remove(id)
        {
            return true;
        }
        match self.core.registry.remove(id) {
            Some(registration) => {
                if let Ok(runtime) = self.runtime() {
                    runtime.transport().unsubscribe(&registration.interest);
                }
                true
            }
            None => false,
        }
    }

    /// Waits until this node and its handlers, as registered so far, are
    /// reachable from every process: over NATS, until the server has
    /// processed their subscriptions (a round trip); at once embedded.
    ///
    /// Registration ([`Node::on`], [`Happen::node`]) returns before the
    /// server knows of it; another process sending right away could find
    /// nobody. Await `ready()` before announcing the node to others.
    ///
    /// ```
    /// use happen::prelude::*;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> happen::Result<()> {
    /// let happen = Happen::embedded();
    /// let svc = happen.node("svc")?;
    /// svc.on("ping", |_e: Event, _cx: Context| async { json!("pong") })?;
    /// svc.ready().await?; // now other processes can reach it
    /// # Ok(()) }
    /// ```
    pub async fn ready(&self) -> Result<()> {
        self.runtime()?.transport().flush().await
    }

    /// Sends `event` to every node with a matching handler, this one included.
    ///
    /// Returns once the event is handed to the receivers; their flows run
    /// concurrently. Fails on an invalid event type, after shutdown, or when a
    /// receiver's queue is full (the other receivers still get the event).
    /// The [`Receipt`] says, when awaited, that the copies for durable
    /// receivers are stored.
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
    pub fn broadcast(&self, event: Event) -> Result<Receipt> {
        let runtime = self.runtime()?;
        let event = self
            .prepare(event, false, send::Addressee::Everyone)
            .map_err(|(e, _)| e)?;
        runtime.transport().broadcast(event)
    }
}

impl<S> Node<S> {
    /// Hands the node the events spooled for it before a restart that its
    /// handlers now take.
    #[cfg(feature = "redb")]
    fn resume_spooled(&self) {
        let Some(spool) = self.core.spool() else {
            return;
        };
        let core = &self.core;
        for event in spool.take_pending(core.id(), |t| core.matching(t).is_some()) {
            let mut delivery =
                crate::delivery::Delivery::new(event, None, crate::delivery::Arrival::Remote);
            delivery.inline = false;
            let _ = crate::delivery::deliver(core, delivery);
        }
    }
}

impl<S: Clone + Send + Sync + 'static> Node<S> {
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
    pub fn on(&self, pattern: impl IntoPattern, handler: impl Handler<S>) -> Result<HandlerId> {
        self.on_handler(pattern.into_pattern(), handler)
    }

    pub(crate) fn on_handler(
        &self,
        pattern: Pattern,
        handler: impl Handler<S>,
    ) -> Result<HandlerId> {
        pattern.validate()?;
        let runtime = self.runtime()?;
        // A node shut down, or a runtime shutting down (as `Happen::node`
        // then refuses new nodes), takes no new handler.
        if self.core.closed.load(Ordering::Acquire)
            || self.core.runtime_closed.load(Ordering::Acquire)
        {
            return Err(HappenError::Shutdown);
        }
        let interest = runtime.transport().subscribe(&self.untyped(), &pattern)?;
        let id = HandlerId::next();
        self.core.registry.add(Registration {
            id,
            pattern,
            entry: Entry::new(handler, self.local.clone()),
            interest,
        });
        #[cfg(feature = "redb")]
        self.resume_spooled();
        Ok(id)
    }
}

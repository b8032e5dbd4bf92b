//! The runtime: [`Happen`] creates nodes, routes their events through a
//! transport, and shuts them down cleanly.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio_util::task::TaskTracker;

use crate::config::{HappenConfig, NodeConfig};
use crate::error::{HappenError, Result};
use crate::id::Id;
use crate::name::{NameError, NameKind, validate_node_id};
#[cfg(feature = "nats")]
use crate::nats::NatsConfig;
use crate::node::Node;
use crate::state::State;
use crate::store::Store;
#[cfg(feature = "nats")]
use crate::store::Unavailable;
use crate::store::applied::Settled;
#[cfg(feature = "nats")]
use crate::store::jetstream::JetStreamStore;
use crate::store::memory::MemoryStore;
use crate::system::Counters;
use crate::system::RUNTIME_NODE;
use crate::transport::Transport;
use crate::transport::local::LocalTransport;
#[cfg(feature = "nats")]
use crate::transport::nats::NatsTransport;

/// The NATS client a runtime holds (none without the `nats` feature).
#[cfg(feature = "nats")]
type Client = async_nats::Client;
#[cfg(not(feature = "nats"))]
type Client = std::convert::Infallible;

pub(crate) struct RuntimeInner {
    config: HappenConfig,
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    client: Option<Client>,
    transport: Arc<dyn Transport>,
    store: Arc<dyn Store>,
    /// Exactly-once events settled, whose state marks may go.
    settled: Arc<Settled>,
    tracker: TaskTracker,
    /// Cancelled when shutdown begins: waits that would hold it up end.
    pub(crate) stopping: tokio_util::sync::CancellationToken,
    /// Set by shutdown or when the runtime is dropped; shared with its
    /// nodes, which check it without upgrading their weak reference.
    closed: Arc<AtomicBool>,
    /// The tokio runtime the Happen runtime was made in: flows run there even
    /// when an event is sent from a thread outside it.
    handle: Option<tokio::runtime::Handle>,
    /// The node behind [`Happen::on`], made on first use.
    pub(crate) runtime_node: std::sync::Mutex<Option<Node>>,
}

impl RuntimeInner {
    pub(crate) fn transport(&self) -> &dyn Transport {
        &*self.transport
    }

    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Exactly-once events settled, whose state marks may go.
    pub(crate) fn settled(&self) -> &Arc<Settled> {
        &self.settled
    }

    pub(crate) fn config(&self) -> &HappenConfig {
        &self.config
    }

    /// Spawns a flow task on the runtime's tokio runtime, tracked for shutdown.
    pub(crate) fn spawn<F>(&self, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        match &self.handle {
            Some(handle) => drop(self.tracker.spawn_on(fut, handle)),
            None => drop(self.tracker.spawn(fut)),
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The tokio runtime the Happen runtime was made in, if any.
    pub(crate) fn handle(&self) -> Option<&tokio::runtime::Handle> {
        self.handle.as_ref()
    }

    /// The closed flag, for the nodes.
    pub(crate) fn closed_flag(&self) -> &Arc<AtomicBool> {
        &self.closed
    }
}

impl Drop for RuntimeInner {
    /// The last `Happen` handle is gone: stop serving at once (no drain).
    fn drop(&mut self) {
        self.closed.store(true, Ordering::Release);
        self.transport.abort();
    }
}

/// A Happen runtime: the system that nodes live in.
///
/// [`Happen::embedded`] runs every node in this process with no server. It
/// must be used from within a tokio runtime (flows are tokio tasks). `Happen`
/// is a cheap handle; clones refer to the same runtime. The runtime lives as
/// long as a handle does: dropping the last one stops it at once (nodes stop
/// receiving and their sends fail with [`HappenError::Shutdown`]);
/// [`Happen::shutdown`] stops it gracefully.
///
/// ```
/// use happen::prelude::*;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> happen::Result<()> {
/// let happen = Happen::embedded();
/// let greeter = happen.node("greeter")?;
/// greeter.on("greet", |event: Event, _cx: Context| async move {
///     json!(format!("hello, {}", event.payload()["name"].as_str().unwrap_or("stranger")))
/// })?;
/// let reply = greeter.send(&greeter, Event::new("greet", json!({ "name": "Ada" }))).await?;
/// assert_eq!(reply, "hello, Ada");
/// happen.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Happen(pub(crate) Arc<RuntimeInner>);

impl std::fmt::Debug for Happen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Happen")
            .field("config", &self.0.config)
            .field("closed", &self.0.is_closed())
            .finish_non_exhaustive()
    }
}

impl Happen {
    /// In one process when `nats_url` is `None`, else connected to the NATS
    /// server at that URL (with the default [`NatsConfig`]
    /// otherwise): for programs that run either way, such as the examples'
    /// `--nats URL`. Without the `nats` feature a URL is a
    /// [`HappenError::Config`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> happen::Result<()> {
    /// use happen::{Happen, HappenConfig};
    /// let url = std::env::args().skip_while(|a| a != "--nats").nth(1);
    /// let happen = Happen::start(url.as_deref(), HappenConfig::default()).await?;
    /// # Ok(()) }
    /// ```
    pub async fn start(nats_url: Option<&str>, config: HappenConfig) -> Result<Happen> {
        match nats_url {
            None => Ok(Self::embedded_with(config)),
            #[cfg(feature = "nats")]
            Some(url) => Self::connect_with(crate::NatsConfig::new(url), config).await,
            #[cfg(not(feature = "nats"))]
            Some(url) => Err(crate::HappenError::Config(format!(
                "cannot connect to {url}: this build has no NATS support (the `nats` feature)"
            ))),
        }
    }

    /// An in-process runtime with the default configuration.
    pub fn embedded() -> Happen {
        Self::embedded_with(HappenConfig::default())
    }

    /// An in-process runtime with `config`.
    pub fn embedded_with(config: HappenConfig) -> Happen {
        let store = Arc::new(MemoryStore::in_memory(*config.temporal_config()));
        Self::with_transport(config, Box::new(LocalTransport::default()), store)
    }

    /// An in-process runtime whose state, global state and state history are
    /// kept in a database file in `dir` (created if needed), so that they
    /// survive a restart of the process. Every change is on disk before it
    /// is visible (feature `redb`).
    ///
    /// ```
    /// use happen::prelude::*;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> happen::Result<()> {
    /// let dir = tempfile::tempdir().unwrap();
    /// {
    ///     let happen = Happen::embedded_on_disk(dir.path(), HappenConfig::default())?;
    ///     happen.node("ledger")?.state().set(|_| json!({ "balance": 10 })).await?;
    ///     happen.shutdown().await;
    /// }
    /// let again = Happen::embedded_on_disk(dir.path(), HappenConfig::default())?;
    /// assert_eq!(again.node("ledger")?.state().get().await?, json!({ "balance": 10 }));
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "redb")]
    pub fn embedded_on_disk(
        dir: impl AsRef<std::path::Path>,
        config: HappenConfig,
    ) -> Result<Happen> {
        let store = Arc::new(MemoryStore::persistent(
            dir.as_ref(),
            *config.temporal_config(),
        )?);
        Ok(Self::with_transport(
            config,
            Box::new(LocalTransport::default()),
            store,
        ))
    }

    /// A runtime whose nodes reach each other, in this and other processes,
    /// through the NATS server(s) of `nats`.
    ///
    /// Node code is the same as with [`Happen::embedded`]. Fails with a clear
    /// error, without hanging, when the configuration is invalid, the server
    /// cannot be reached within the connect timeout, is older than 2.10, or
    /// lacks JetStream while [`NatsConfig::jetstream`] is on.
    ///
    /// ```no_run
    /// use happen::prelude::*;
    /// use happen::NatsConfig;
    /// # #[tokio::main] async fn main() -> happen::Result<()> {
    /// let happen = Happen::connect(NatsConfig::new("nats://127.0.0.1:4222")).await?;
    /// let orders = happen.node("order-service")?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "nats")]
    pub async fn connect(nats: NatsConfig) -> Result<Happen> {
        Self::connect_with(nats, HappenConfig::default()).await
    }

    /// [`Happen::connect`] with a runtime configuration.
    #[cfg(feature = "nats")]
    pub async fn connect_with(nats: NatsConfig, mut config: HappenConfig) -> Result<Happen> {
        let window = config.resolve("", &NodeConfig::new()).delivery.dedup_window;
        let (transport, client) = NatsTransport::connect(&nats, window).await?;
        if let Some(retention) = nats.record {
            let recorder =
                crate::trace::Recorder::jetstream(&client, &nats.prefix, retention).await?;
            config = config.recorder(recorder);
        }
        let store: Arc<dyn Store> = if nats.jetstream {
            Arc::new(
                JetStreamStore::open(
                    client.clone(),
                    &nats.prefix,
                    *config.temporal_config(),
                    nats.replicas,
                )
                .await?,
            )
        } else {
            Arc::new(Unavailable)
        };
        Ok(Self::build(
            config,
            Box::new(transport),
            store,
            Some(client),
        ))
    }

    /// The NATS client of a runtime made by [`Happen::connect`] (`None` for
    /// the embedded runtime): for what Happen does not wrap, such as your own
    /// subjects, request/reply with non-Happen services, or JetStream
    /// streams of your own. Happen's subjects start with the configured
    /// prefix; leave those to Happen.
    ///
    /// ```no_run
    /// # #[tokio::main] async fn main() -> happen::Result<()> {
    /// use happen::{Happen, NatsConfig};
    /// let happen = Happen::connect(NatsConfig::new("nats://127.0.0.1:4222")).await?;
    /// let client = happen.nats_client().expect("connected over NATS");
    /// client.publish("metrics.raw", "42".into()).await.expect("published");
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "nats")]
    pub fn nats_client(&self) -> Option<&async_nats::Client> {
        self.0.client.as_ref()
    }

    /// The runtime's recorder of the causal web, if it has one (see
    /// [`crate::trace`] and [`HappenConfig::recorder`]).
    pub fn recorder(&self) -> Option<&crate::trace::Recorder> {
        self.0.config.recorder_ref()
    }

    /// Waits until the server has processed everything dispatched so far
    /// (subscriptions of new nodes and handlers, sent events): a round trip
    /// through it, after which other processes can reach this process's
    /// nodes and have been sent its events, and every event sent so far to
    /// a durable node is stored (in JetStream; embedded on disk, in the
    /// redb file). Otherwise immediate for the embedded runtime. While the
    /// server is unreachable it waits for the reconnection.
    pub async fn flush(&self) -> Result<()> {
        self.0.transport.flush().await?;
        // Embedded on disk: what was sent to durable nodes is written.
        #[cfg(feature = "redb")]
        if let Some(spool) = self.0.store.spool() {
            spool.flush().await;
        }
        Ok(())
    }

    /// How many events went undelivered, were refused or rejected, and how
    /// many flows failed, since the runtime started (see [`crate::system`]).
    pub fn counters(&self) -> Counters {
        self.0.transport.counters()
    }

    /// A runtime as `settings` describe (see [`crate::settings`]):
    /// connected to NATS when they have a `nats` section, embedded
    /// otherwise.
    ///
    /// ```
    /// use happen::prelude::*;
    /// use happen::settings::Settings;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> happen::Result<()> {
    /// let settings = Settings::from_json(r#"{ "concurrency": { "default": { "maxConcurrent": 4 } } }"#)?;
    /// let happen = Happen::from_settings(&settings).await?;
    /// assert_eq!(happen.node("n")?.limits().max_concurrent, 4);
    /// # Ok(()) }
    /// ```
    pub async fn from_settings(settings: &crate::settings::Settings) -> Result<Happen> {
        let config = settings.happen_config();
        #[cfg(feature = "nats")]
        if let Some(nats) = settings.nats_config() {
            return Happen::connect_with(nats, config).await;
        }
        #[cfg(not(feature = "nats"))]
        if settings.nats.is_some() {
            return Err(HappenError::Config(
                "settings: nats: this build of happen has no `nats` feature".into(),
            ));
        }
        Ok(Happen::embedded_with(config))
    }

    /// The state of the node `node` (an id or a [`Node`]),
    /// read and written through the store without becoming that node.
    /// Updates are atomic as from the node itself (conditional writes).
    /// It goes around the node's ownership of its state, which the
    /// specification keeps to the node: from another node's handler, send
    /// the owner an event, or read it through [`Node::view`](crate::Node::view).
    ///
    /// ```
    /// use happen::prelude::*;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> happen::Result<()> {
    /// let happen = Happen::embedded();
    /// happen.state_of("ledger")?.set(|_| json!({ "balance": 5 })).await?;
    /// assert!(happen.existing_node("ledger").is_none(), "state_of made no node");
    /// let ledger = happen.node("ledger")?;
    /// assert_eq!(happen.state_of(&ledger)?.get().await?, json!({ "balance": 5 }));
    /// # Ok(()) }
    /// ```
    pub fn state_of(&self, node: impl crate::node::Target) -> Result<State> {
        let id = node.target_id();
        validate_node_id(id)?;
        if let Some(node) = self.0.transport.node(id) {
            return Ok(node.state());
        }
        Ok(State::new(
            self.0.store.clone(),
            self.0.settled.clone(),
            Id::from(id),
            self.0
                .config
                .resolve_snapshots(id, &crate::NodeConfig::new()),
            None,
        ))
    }

    fn with_transport(
        config: HappenConfig,
        transport: Box<dyn Transport>,
        store: Arc<dyn Store>,
    ) -> Happen {
        Self::build(config, transport, store, None)
    }

    fn build(
        config: HappenConfig,
        transport: Box<dyn Transport>,
        store: Arc<dyn Store>,
        client: Option<Client>,
    ) -> Happen {
        transport
            .local()
            .keys()
            .set_verifier(config.verifier_ref().clone());
        let inner = Arc::new(RuntimeInner {
            config,
            client,
            transport: Arc::from(transport),
            store,
            settled: Arc::default(),
            tracker: TaskTracker::new(),
            stopping: Default::default(),
            closed: Arc::new(AtomicBool::new(false)),
            handle: tokio::runtime::Handle::try_current().ok(),
            runtime_node: std::sync::Mutex::new(None),
        });
        // Flow balance watches from the tokio runtime the Happen runtime was
        // made in (none: made outside one, nothing is watched).
        let balance = *inner.config.flow_balance_config();
        if balance.enabled
            && let Some(handle) = &inner.handle
        {
            // Weak, and not the runtime itself: the watcher must never be
            // what keeps a dropped runtime alive for a moment.
            handle.spawn(crate::balance::watch(
                Arc::downgrade(&inner.transport),
                inner.closed.clone(),
                balance,
            ));
        }
        Happen(inner)
    }

    pub(crate) fn from_inner(inner: Arc<RuntimeInner>) -> Happen {
        Happen(inner)
    }

    /// The runtime's configuration.
    pub fn config(&self) -> &HappenConfig {
        &self.0.config
    }

    /// A handle to this runtime's node `id`, if it has one (made earlier,
    /// not shut down): for code that manages nodes it did not make, such as
    /// a supervisor restarting one. Its node-local value is not part of the
    /// handle.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> happen::Result<()> {
    /// let happen = happen::Happen::embedded();
    /// happen.node("worker")?;
    /// let worker = happen.existing_node("worker").expect("made above");
    /// worker.shutdown().await;
    /// assert!(happen.existing_node("worker").is_none());
    /// # Ok(()) }
    /// ```
    pub fn existing_node(&self, id: &str) -> Option<Node> {
        self.0.transport.local().lookup(id)
    }

    /// Creates the node `id` with the system's settings for that id.
    ///
    /// Node ids are single tokens: no whitespace, `.`, `*`, `>`, `{`, `}` or
    /// `,` (so that they can name network subjects). An id may be used once
    /// per runtime.
    ///
    /// Over NATS, one id made in several processes is one node with several
    /// instances, as replicas of a service are: each event sent to it goes
    /// to one instance (a NATS queue group; with co-location, a sender's own
    /// process's instance first, see `NatsConfig::co_located`),
    /// and each broadcast reaches every instance. Give every instance the
    /// same handlers: an event that reaches an instance without a matching
    /// one fails with `NoHandler` even when another instance has it. Nothing
    /// tells two unrelated services apart that chose one id, unless they
    /// sign ([`NodeConfig::sign`](crate::NodeConfig::sign): another key for a live node id is an
    /// [`IdentityConflict`](crate::HappenError::IdentityConflict)).
    pub fn node(&self, id: &str) -> Result<Node> {
        self.node_with(id, NodeConfig::default())
    }

    /// Creates the node `id` with its own settings on top of the system's.
    ///
    /// ```
    /// use std::time::Duration;
    /// use happen::{Happen, NodeConfig};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> happen::Result<()> {
    /// let happen = Happen::embedded();
    /// let node = happen.node_with("batcher", NodeConfig::new().max_concurrent(4).timeout(Duration::from_secs(30)))?;
    /// assert_eq!(node.limits().max_concurrent, 4);
    /// assert!(happen.node("batcher").is_err(), "ids are unique");
    /// assert!(happen.node("bad id").is_err(), "ids are single tokens");
    /// let reserved = happen.node(happen::RUNTIME_NODE).unwrap_err();
    /// assert!(reserved.to_string().contains("reserved"), "{reserved}");
    /// happen.on("anything", |_e: happen::Event, _cx: happen::Context| async {})?;
    /// # Ok(()) }
    /// ```
    pub fn node_with(&self, id: &str, config: NodeConfig) -> Result<Node> {
        validate_node_id(id)?;
        if id == RUNTIME_NODE {
            return Err(NameError {
                kind: NameKind::NodeId,
                name: id.to_owned(),
                reason: "it is reserved for the node that runs `Happen::on`'s handlers".to_owned(),
            }
            .into());
        }
        self.make_node(id, config)
    }

    /// [`Happen::node_with`] for any valid id, the reserved one included.
    pub(crate) fn make_node(&self, id: &str, config: NodeConfig) -> Result<Node> {
        if self.0.is_closed() {
            return Err(HappenError::Shutdown);
        }
        let limits = self.0.config.resolve(id, &config);
        let accept = self.0.config.resolve_accept(id, &config);
        let identity = self.0.config.resolve_identity(id, &config);
        let snapshots = self.0.config.resolve_snapshots(id, &config);
        let node = Node::new(Id::from(id), &self.0, limits, (accept, identity), snapshots);
        self.0.transport.attach(&node)?;
        Ok(node)
    }

    /// Stops accepting new events from outside the running flows, waits for
    /// every accepted event (running or queued) to finish its flow, and
    /// releases the nodes.
    ///
    /// Events emitted by flows that are still running are accepted, so that
    /// in-flight work completes. Over NATS, requests this runtime sent whose
    /// requester still waits are drained too, each up to its timeout (one
    /// sent with no timeout keeps `shutdown` waiting while its requester
    /// does); a fire-and-forget event still on the wire may arrive after the
    /// nodes are gone. Durable nodes then stop taking stored events: what
    /// they received and did not start goes back to the stream. A flow that
    /// never ends keeps `shutdown` waiting; bound it with
    /// `tokio::time::timeout` if that can happen. Called from a flow of this
    /// runtime, it returns at once and drains in a task of its own.
    pub async fn shutdown(&self) {
        if crate::causality::current_flow().is_some_and(|f| f.core().runtime_is(&self.0)) {
            let happen = self.clone(); // it would wait for this very flow
            return drop(tokio::spawn(async move { happen.drain().await }));
        }
        self.drain().await;
    }

    async fn drain(&self) {
        self.0.closed.store(true, Ordering::Release);
        self.0.stopping.cancel();
        // Requests still on the wire (over NATS) become flows here or answers
        // from elsewhere; wait for those whose requester is still waiting.
        self.0.transport.settle().await;
        // Zero lanes end once their queues are empty.
        for node in self.0.transport.local().nodes() {
            if let Some(lane) = node.core().zero_lane() {
                lane.wake();
            }
        }
        self.0.tracker.close();
        loop {
            self.0.tracker.wait().await;
            // A request claimed by its requester before the shutdown began
            // runs in the requester's task, which the tracker does not know;
            // what it starts (a step's flow, a worker for an event it sends)
            // may start after the tracker was found empty: then once more.
            for node in self.0.transport.local().nodes() {
                node.core().quiet().await;
                if let Some(lane) = node.core().zero_lane() {
                    lane.quiet().await;
                }
            }
            if self.0.tracker.is_empty() {
                break;
            }
        }
        self.0.transport.close().await;
    }

    /// [`Happen::shutdown`] with a limit: returns `false` if draining took
    /// longer than `limit`, and then stops taking work anyway: the runtime
    /// refuses new events and nodes, its nodes are detached (nothing more
    /// is delivered to them), the events waiting in their queues are
    /// refused with [`HappenError::Shutdown`] instead of started (a durable
    /// one is kept, to be delivered again) and, over NATS, the connection
    /// is closed (requests this runtime sent end with `Shutdown`).
    ///
    /// Flows still running then are not cancelled (a flow dropped half-way
    /// could leave the state it was changing half changed): they run on
    /// to their end, what they send finding no node of this runtime, and
    /// a requester waiting for one gets its answer then, or its timeout.
    pub async fn shutdown_within(&self, limit: std::time::Duration) -> bool {
        let drained = tokio::time::timeout(limit, self.shutdown()).await.is_ok();
        if !drained {
            self.0.tracker.close();
            // Abandoned first, so that the refusals of what waited can still
            // leave through the connection.
            for node in self.0.transport.local().nodes() {
                node.core().abandon();
            }
            self.0.transport.abort();
        }
        drained
    }
}

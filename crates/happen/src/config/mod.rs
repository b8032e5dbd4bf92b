//! Runtime and node configuration: request timeouts, concurrency limits and
//! delivery guarantees.
//!
//! Limits are resolved for each node from three layers, later ones winning:
//! the system default, every node-id pattern that matches the node (in the
//! order they were added), and the node's own [`NodeConfig`].
//!
//! ```
//! use std::time::Duration;
//! use happen::{HappenConfig, NodeConfig};
//!
//! let config = HappenConfig::default()
//!     .request_timeout(Duration::from_secs(2))
//!     .default_limits(100, 10_000)
//!     .for_nodes("api-*", NodeConfig::new().max_concurrent(200).queue_limit(20_000))
//!     .for_nodes("worker-*", NodeConfig::new().max_concurrent(50));
//!
//! let api = config.resolve("api-gateway", &NodeConfig::new());
//! assert_eq!((api.max_concurrent, api.queue_limit), (200, 20_000));
//! let worker = config.resolve("worker-3", &NodeConfig::new().timeout(Duration::from_secs(9)));
//! assert_eq!((worker.max_concurrent, worker.queue_limit), (50, 10_000));
//! assert_eq!(worker.timeout, Duration::from_secs(9));
//! ```

use std::time::Duration;

use std::sync::Arc;

use crate::accept::AcceptFrom;
use crate::balance::FlowBalanceConfig;
use crate::identity::{Ed25519, SignerRef, Verifier};
use crate::observe::{Observer, Observers};
use crate::pattern::glob_match;
use crate::state::temporal::{Snapshots, TemporalConfig};

mod node;
pub use node::{NodeConfig, NodeLimits, QueueStrategy};

/// The default request timeout: 5 seconds.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// The default number of flows a node runs at once.
pub const DEFAULT_MAX_CONCURRENT: usize = 100;
/// The default number of events a node queues when all its flows are busy.
pub const DEFAULT_QUEUE_LIMIT: usize = 10_000;
/// The default longest causal chain an event may end (its path's length):
/// far beyond any designed chain of steps, near enough to stop a runaway
/// loop of events before its paths grow large.
pub const DEFAULT_MAX_CAUSAL_DEPTH: usize = 256;

/// System-wide configuration of a Happen runtime.
#[derive(Debug, Clone)]
pub struct HappenConfig {
    defaults: NodeLimits,
    patterns: Vec<(String, NodeConfig)>,
    temporal: TemporalConfig,
    snapshots: Snapshots,
    observers: Observers,
    recorder: Option<crate::trace::Recorder>,
    balance: FlowBalanceConfig,
    verifier: VerifierSlot,
}

/// How signatures are checked (a trait object, shown by name only).
#[derive(Clone)]
struct VerifierSlot(Arc<dyn Verifier>);

impl std::fmt::Debug for VerifierSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier")
    }
}

impl Default for HappenConfig {
    fn default() -> Self {
        HappenConfig {
            defaults: NodeLimits {
                max_concurrent: DEFAULT_MAX_CONCURRENT,
                queue_limit: DEFAULT_QUEUE_LIMIT,
                timeout: DEFAULT_TIMEOUT,
                delivery: DeliveryConfig::direct(),
                sign: false,
                require_signed: false,
                max_causal_depth: DEFAULT_MAX_CAUSAL_DEPTH,
                queue_strategy: QueueStrategy::Fifo,
                backpressure_permille: 1000,
            },
            patterns: Vec::new(),
            temporal: TemporalConfig::default(),
            snapshots: Snapshots::All,
            observers: Observers::default(),
            recorder: None,
            balance: FlowBalanceConfig::default(),
            verifier: VerifierSlot(Arc::new(Ed25519)),
        }
    }
}

impl HappenConfig {
    /// Sets the default response timeout of every node.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.defaults.timeout = timeout;
        self
    }

    /// Sets the default concurrency limits of every node.
    pub fn default_limits(mut self, max_concurrent: usize, queue_limit: usize) -> Self {
        self.defaults.max_concurrent = max_concurrent.max(1);
        self.defaults.queue_limit = queue_limit;
        self
    }

    /// Sets the longest causal chain an event may end: an event whose path
    /// (the nodes from its chain's root to its sender) would be longer is
    /// not sent, and the sender gets
    /// [`HappenError::CausalDepth`](crate::HappenError::CausalDepth) naming
    /// the nodes that repeat. This stops a runaway loop of events (A tells
    /// B, B tells A, ...) at once rather than letting it run with ever longer
    /// paths. The default is [`DEFAULT_MAX_CAUSAL_DEPTH`]; a loop of steps
    /// within one flow ([`Flow::again`](crate::Flow::again)) adds no depth.
    ///
    /// ```
    /// use happen::prelude::*;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> happen::Result<()> {
    /// let happen = Happen::embedded_with(HappenConfig::default().max_causal_depth(8));
    /// let echo = happen.node("echo")?;
    /// echo.on("ping", |e: Event, cx: Context| async move {
    ///     // Answers every ping with another ping: a loop with no end.
    ///     cx.node().send("echo", Event::new("ping", e.payload().clone())).response().await
    /// })?;
    /// let err = echo.send("echo", Event::new("ping", json!(0))).response().await.unwrap_err();
    /// // The ninth ping would end a chain of 9 nodes; every flow above fails with it.
    /// assert!(err.to_string().contains("9 hops deep in its causal chain (limit 8)"), "{err}");
    /// # Ok(()) }
    /// ```
    pub fn max_causal_depth(mut self, depth: usize) -> Self {
        self.defaults.max_causal_depth = depth.max(1);
        self
    }

    /// Sets how events are delivered to every node that does not say
    /// otherwise (the documentation's system-wide `delivery` settings).
    pub fn delivery(mut self, delivery: DeliveryConfig) -> Self {
        self.defaults.delivery = delivery;
        self
    }

    /// Overrides settings for nodes whose id matches `pattern`, where `*`
    /// stands for any run of characters (`"api-*"`, `"*-worker"`, `"*"`).
    pub fn for_nodes(mut self, pattern: impl Into<String>, config: NodeConfig) -> Self {
        self.patterns.push((pattern.into(), config));
        self
    }

    /// Sets when flow balance checks the nodes and what it reports (see
    /// [`crate::balance`]); on by default.
    pub fn flow_balance(mut self, balance: FlowBalanceConfig) -> Self {
        self.balance = balance;
        self
    }

    /// The flow balance settings.
    pub fn flow_balance_config(&self) -> &FlowBalanceConfig {
        &self.balance
    }

    /// Sets how much state history is kept (see [`crate::state::temporal`]).
    pub fn temporal(mut self, temporal: TemporalConfig) -> Self {
        self.temporal = temporal;
        self
    }

    /// Selects which state changes every node keeps as snapshots, unless a
    /// node or a pattern layer says otherwise (see [`Snapshots`]).
    pub fn snapshots(mut self, snapshots: Snapshots) -> Self {
        self.snapshots = snapshots;
        self
    }

    /// Adds an observer of the event flow (see [`crate::observe`]); several
    /// may be added, and are called in the order given.
    pub fn observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observers = self.observers.with(observer);
        self
    }

    /// Records the causal web with `recorder` (installed as an observer;
    /// see [`crate::trace`]), and makes it the runtime's
    /// [`Happen::recorder`](crate::Happen::recorder).
    pub fn recorder(mut self, recorder: crate::trace::Recorder) -> Self {
        self.observers = self.observers.with(Arc::new(recorder.clone()));
        self.recorder = Some(recorder);
        self
    }

    /// The recorder set with [`HappenConfig::recorder`], if any.
    pub fn recorder_ref(&self) -> Option<&crate::trace::Recorder> {
        self.recorder.as_ref()
    }

    pub(crate) fn observers(&self) -> &Observers {
        &self.observers
    }

    /// The state history settings.
    pub fn temporal_config(&self) -> &TemporalConfig {
        &self.temporal
    }

    /// The settings a node with this id and own configuration runs with.
    pub fn resolve(&self, node_id: &str, own: &NodeConfig) -> NodeLimits {
        let mut limits = self.defaults;
        for (pattern, config) in &self.patterns {
            if glob_match(pattern, node_id) {
                config.apply(&mut limits);
            }
        }
        own.apply(&mut limits);
        limits
    }

    /// The acceptance rules a node with this id and own configuration
    /// checks: its own, else those of the last matching pattern layer.
    pub(crate) fn resolve_accept(&self, node_id: &str, own: &NodeConfig) -> Option<AcceptFrom> {
        self.own_or_layer(node_id, own, |c| c.accept_from.as_ref())
            .map(|rules| AcceptFrom::new(rules.clone()))
    }

    /// The key a node with this id and own configuration signs with, if
    /// one is given: its own, else the last matching pattern layer's.
    /// The snapshot selection of the node `node_id`: off when temporal
    /// state is off, else its own, a pattern layer's, or the system's.
    pub(crate) fn resolve_snapshots(&self, node_id: &str, own: &NodeConfig) -> Snapshots {
        if !self.temporal.enabled {
            return Snapshots::Off;
        }
        self.own_or_layer(node_id, own, |c| c.snapshots.as_ref())
            .unwrap_or(&self.snapshots)
            .clone()
    }

    pub(crate) fn resolve_identity(&self, node_id: &str, own: &NodeConfig) -> Option<SignerRef> {
        self.own_or_layer(node_id, own, |c| c.identity.as_ref())
            .cloned()
    }

    /// A setting that is not a limit (so not merged field by field): the
    /// node's own, else that of the last pattern layer matching its id.
    fn own_or_layer<'a, T>(
        &'a self,
        node_id: &str,
        own: &'a NodeConfig,
        field: impl Fn(&'a NodeConfig) -> Option<&'a T>,
    ) -> Option<&'a T> {
        field(own).or_else(|| {
            self.patterns
                .iter()
                .rev()
                .filter(|(pattern, _)| glob_match(pattern, node_id))
                .find_map(|(_, config)| field(config))
        })
    }

    /// Checks signatures with `verifier` instead of the built-in ed25519
    /// one (an HSM, a KMS, another key format). See [`crate::identity`].
    pub fn verifier(mut self, verifier: impl Verifier) -> Self {
        self.verifier = VerifierSlot(Arc::new(verifier));
        self
    }

    pub(crate) fn verifier_ref(&self) -> &Arc<dyn Verifier> {
        &self.verifier.0
    }
}

/// The guarantee a node's events are delivered with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum DeliveryMode {
    /// Handed straight to the node (over NATS: core publish/subscribe). The
    /// fastest; an event in flight or queued is lost if the receiving
    /// process dies, and a failed flow is not run again.
    #[default]
    Direct,
    /// Stored before delivery, acknowledged when the flow ends, redelivered
    /// (with backoff) after a failure, a full queue or a crash, until
    /// [`DeliveryConfig::max_attempts`]; then dead-lettered. A flow may run
    /// more than once for one event.
    AtLeastOnce,
    /// At-least-once delivery whose repeats have no duplicate effect inside
    /// Happen: a redelivered event whose flow completed is not run again,
    /// and a re-run flow's emitted events keep their ids (so the stream's
    /// de-duplication drops the copies). See [`crate::durable`].
    ExactlyOnce,
}

impl DeliveryMode {
    /// Whether events are stored before delivery and acknowledged.
    pub fn is_durable(self) -> bool {
        self != DeliveryMode::Direct
    }
}

/// How events to a node are delivered: the documentation's `delivery`
/// (`mode`, `acknowledge`, `deduplication`, `deduplicationWindow`) and
/// `flowControl` (`maxPending`) settings, with the retry policy.
///
/// Durable modes always acknowledge explicitly, when the flow ends; the
/// documentation's `acknowledge: true` is implied.
///
/// ```
/// use std::time::Duration;
/// use happen::{DeliveryConfig, DeliveryMode};
///
/// let delivery = DeliveryConfig::exactly_once()
///     .max_attempts(3)
///     .backoff(Duration::from_millis(50), Duration::from_secs(2))
///     .dedup_window(Duration::from_secs(300));
/// assert_eq!(delivery.mode, DeliveryMode::ExactlyOnce);
/// assert_eq!(delivery.retry_delay(1), Duration::from_millis(50));
/// assert!(delivery.retry_delay(10) <= Duration::from_secs(2));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryConfig {
    /// The guarantee.
    pub mode: DeliveryMode,
    /// How many times one event is handed to the node before it goes to
    /// the dead letters (at least 1).
    pub max_attempts: u32,
    /// The delay before the first retry; each further retry doubles it.
    pub backoff: Duration,
    /// The longest delay between two attempts.
    pub max_backoff: Duration,
    /// How long event ids are remembered to drop repeated copies (the
    /// JetStream stream's duplicate window, from the runtime's default
    /// delivery; in exactly-once mode completed flows and the answers of
    /// requests are remembered as long in the process, and over NATS the
    /// completion records are kept for twice the stream's window).
    pub dedup_window: Duration,
    /// How long the server waits for a flow to end before it hands the
    /// event out again (a process that died mid-flow).
    pub ack_wait: Duration,
    /// How many unacknowledged events the node is handed at once (the
    /// documentation's `flowControl.maxPending`, counted in events).
    pub max_pending: usize,
}

impl DeliveryConfig {
    /// Direct delivery (the default).
    pub const fn direct() -> Self {
        DeliveryConfig {
            mode: DeliveryMode::Direct,
            max_attempts: 5,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            dedup_window: Duration::from_secs(120),
            ack_wait: Duration::from_secs(30),
            max_pending: 256,
        }
    }

    /// At-least-once delivery with the default retry policy (5 attempts,
    /// backoff from 100 ms to 10 s).
    pub const fn at_least_once() -> Self {
        Self::direct().mode(DeliveryMode::AtLeastOnce)
    }

    /// Exactly-once processing with the default retry policy.
    pub const fn exactly_once() -> Self {
        Self::direct().mode(DeliveryMode::ExactlyOnce)
    }

    /// Sets the mode.
    pub const fn mode(mut self, mode: DeliveryMode) -> Self {
        self.mode = mode;
        self
    }

    /// Sets how many times an event is handed to the node (at least 1).
    pub const fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = if attempts == 0 { 1 } else { attempts };
        self
    }

    /// Sets the first retry delay and the longest one.
    pub const fn backoff(mut self, first: Duration, max: Duration) -> Self {
        self.backoff = first;
        self.max_backoff = max;
        self
    }

    /// Sets how long event ids are remembered for de-duplication.
    pub const fn dedup_window(mut self, window: Duration) -> Self {
        self.dedup_window = window;
        self
    }

    /// Sets how long a flow may run before its event is handed out again.
    pub const fn ack_wait(mut self, wait: Duration) -> Self {
        self.ack_wait = wait;
        self
    }

    /// Sets how many unacknowledged events the node is handed at once.
    pub const fn max_pending(mut self, events: usize) -> Self {
        self.max_pending = if events == 0 { 1 } else { events };
        self
    }

    /// The delay before attempt `failed + 1`, after `failed` failed
    /// attempts: exponential from [`backoff`](Self::backoff), capped by
    /// [`max_backoff`](Self::max_backoff). [`crate::durable`] adds up to
    /// 20% jitter so that retries of many events spread out.
    pub fn retry_delay(&self, failed: u32) -> Duration {
        let doublings = failed.saturating_sub(1).min(31);
        self.backoff
            .saturating_mul(1u32 << doublings)
            .min(self.max_backoff)
    }
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self::direct()
    }
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        assert!(glob_match("api-*", "api-gateway"));
        assert!(glob_match("api-*", "api-"));
        assert!(!glob_match("api-*", "xapi-1"));
        assert!(glob_match("*-worker", "img-worker"));
        assert!(glob_match("a*b*c", "aXbYc"));
        assert!(!glob_match("a*b*c", "aXcYb"));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
        assert!(!glob_match("ab*ba", "aba"));
    }
}

//! Runtime and node configuration: request timeouts and concurrency limits.
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

use crate::observe::{Observer, Observers};
use crate::pattern::glob_match;
use crate::state::temporal::TemporalConfig;

/// The default request timeout: 5 seconds.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// The default number of flows a node runs at once.
pub const DEFAULT_MAX_CONCURRENT: usize = 100;
/// The default number of events a node queues when all its flows are busy.
pub const DEFAULT_QUEUE_LIMIT: usize = 10_000;

/// Settings for one node, or for every node whose id matches a pattern.
/// Unset fields fall back to the layer below.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeConfig {
    /// How many flows the node runs at once.
    pub max_concurrent: Option<usize>,
    /// How many events wait when all flows are busy; beyond that senders get
    /// [`HappenError::QueueFull`](crate::HappenError::QueueFull).
    pub queue_limit: Option<usize>,
    /// How long a `send` from this node waits for a response by default.
    pub timeout: Option<Duration>,
}

impl NodeConfig {
    /// A configuration with nothing set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets how many flows run at once (at least 1).
    pub fn max_concurrent(mut self, n: usize) -> Self {
        self.max_concurrent = Some(n);
        self
    }

    /// Sets how many events may wait for a free flow slot.
    pub fn queue_limit(mut self, n: usize) -> Self {
        self.queue_limit = Some(n);
        self
    }

    /// Sets the default response timeout of this node's requests.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    fn apply(&self, to: &mut NodeLimits) {
        if let Some(n) = self.max_concurrent {
            to.max_concurrent = n.max(1);
        }
        if let Some(n) = self.queue_limit {
            to.queue_limit = n;
        }
        if let Some(t) = self.timeout {
            to.timeout = t;
        }
    }
}

/// The settings a node runs with, once every layer is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeLimits {
    /// Flows run at once.
    pub max_concurrent: usize,
    /// Events queued beyond that.
    pub queue_limit: usize,
    /// Default response timeout of the node's requests.
    pub timeout: Duration,
}

/// System-wide configuration of a Happen runtime.
#[derive(Debug, Clone)]
pub struct HappenConfig {
    defaults: NodeLimits,
    patterns: Vec<(String, NodeConfig)>,
    temporal: TemporalConfig,
    observers: Observers,
}

impl Default for HappenConfig {
    fn default() -> Self {
        HappenConfig {
            defaults: NodeLimits {
                max_concurrent: DEFAULT_MAX_CONCURRENT,
                queue_limit: DEFAULT_QUEUE_LIMIT,
                timeout: DEFAULT_TIMEOUT,
            },
            patterns: Vec::new(),
            temporal: TemporalConfig::default(),
            observers: Observers::default(),
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

    /// Overrides settings for nodes whose id matches `pattern`, where `*`
    /// stands for any run of characters (`"api-*"`, `"*-worker"`, `"*"`).
    pub fn for_nodes(mut self, pattern: impl Into<String>, config: NodeConfig) -> Self {
        self.patterns.push((pattern.into(), config));
        self
    }

    /// Sets how much state history is kept (see [`crate::state::temporal`]).
    pub fn temporal(mut self, temporal: TemporalConfig) -> Self {
        self.temporal = temporal;
        self
    }

    /// Adds an observer of the event flow (see [`crate::observe`]); several
    /// may be added, and are called in the order given.
    pub fn observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observers = self.observers.with(observer);
        self
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

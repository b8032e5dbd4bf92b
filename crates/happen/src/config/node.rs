//! One node's settings ([`NodeConfig`]) and what a node runs with once every
//! layer is applied ([`NodeLimits`]).

use std::time::Duration;

use std::sync::Arc;

use super::DeliveryConfig;
use crate::accept::AcceptRule;
use crate::identity::{Signer, SignerRef};
use crate::state::temporal::Snapshots;

/// Settings for one node, or for every node whose id matches a pattern.
/// Unset fields fall back to the layer below.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeConfig {
    /// How many events the node handles at once. An event that several of
    /// the node's handlers match takes one slot for all their flows, which
    /// run side by side.
    pub max_concurrent: Option<usize>,
    /// How many events wait when all flows are busy; beyond that senders get
    /// [`HappenError::QueueFull`](crate::HappenError::QueueFull).
    pub queue_limit: Option<usize>,
    /// How long a `send` from this node waits for a response by default.
    pub timeout: Option<Duration>,
    /// How events to the node are delivered (see [`DeliveryConfig`]).
    pub delivery: Option<DeliveryConfig>,
    /// Whom the node takes events from (see [`crate::accept`]); `None`:
    /// anyone, unless a pattern layer sets rules.
    pub accept_from: Option<Vec<AcceptRule>>,
    /// The node's key (see [`crate::identity`]); `None`: made when first
    /// needed.
    pub identity: Option<SignerRef>,
    /// Whether the node signs the events it sends.
    pub sign: Option<bool>,
    /// Whether the node refuses events that are not signed.
    pub require_signed: Option<bool>,
    /// The longest causal chain an event the node sends may end (see
    /// [`HappenConfig::max_causal_depth`](super::HappenConfig::max_causal_depth)).
    pub max_causal_depth: Option<usize>,
    /// Which state changes the node keeps as snapshots (see [`Snapshots`]).
    pub snapshots: Option<Snapshots>,
    /// In which order waiting events start (see [`QueueStrategy`]).
    pub queue_strategy: Option<QueueStrategy>,
    /// The share of `queue_limit` (in thousandths) at which the node
    /// reports backpressure (see [`NodeConfig::backpressure_threshold`]).
    pub backpressure_permille: Option<u16>,
}

/// In which order a node starts the events waiting in its queue (the
/// documentation's `queueStrategy`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum QueueStrategy {
    /// In the order they arrived (the default).
    #[default]
    Fifo,
    /// Higher priority first; events of equal priority in the order they
    /// arrived. An event's priority is set by the sender with
    /// [`Event::with_priority`](crate::Event::with_priority) (the
    /// application context field `priority`, an integer; 0 when absent or
    /// not an integer). Only the order of waiting events changes, and an
    /// event waits only until the node's worker next takes one: events sent
    /// one after another to an idle node (in one burst, before the worker
    /// has run) wait together, so the first of them does not start before a
    /// later one of higher priority.
    Priority,
}

impl NodeConfig {
    /// A configuration with nothing set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets how many events the node handles at once (at least 1); see
    /// [`NodeConfig::max_concurrent`](#structfield.max_concurrent).
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

    /// Sets how events to this node are delivered: directly (the default),
    /// or stored first and retried (see [`crate::durable`]).
    pub fn delivery(mut self, delivery: DeliveryConfig) -> Self {
        self.delivery = Some(delivery);
        self
    }

    /// Takes events only from senders or origins one of `rules` matches
    /// (the documentation's `acceptFrom`; see [`crate::accept`]). Replaces
    /// the rules of a pattern layer.
    pub fn accept_from<I, R>(mut self, rules: I) -> Self
    where
        I: IntoIterator<Item = R>,
        R: Into<AcceptRule>,
    {
        self.accept_from = Some(rules.into_iter().map(Into::into).collect());
        self
    }

    /// Gives the node this key pair (or any [`Signer`]) instead of one made
    /// when first needed: a key that stays the same across restarts, or
    /// one kept outside the process. See [`crate::identity`].
    pub fn identity(mut self, signer: impl Signer) -> Self {
        self.identity = Some(SignerRef(Arc::new(signer)));
        self
    }

    /// Signs every event the node sends, its answers to requests included
    /// (see [`crate::identity`]; zero events and streamed items are not
    /// signed). Over
    /// NATS the node's public key is registered in JetStream, so a runtime
    /// connected with `NatsConfig::jetstream(false)` refuses to make a
    /// signing node ([`HappenError::Config`](crate::HappenError::Config)).
    pub fn sign(mut self, sign: bool) -> Self {
        self.sign = Some(sign);
        self
    }

    /// Refuses events that are not signed by their sender's registered key
    /// (see [`crate::identity`]). Signed events are checked either way.
    ///
    /// Over NATS this holds for the answers to the node's requests too: an
    /// answer is taken only when the node asked signed it (a reply subject
    /// is a subject anyone on the server may publish to); one that is not
    /// ends the request with [`HappenError::Integrity`](crate::HappenError::Integrity).
    /// Error replies and streamed items are not signed and are taken as
    /// they come. In one process an answer can only come from the node
    /// asked, and is taken signed or not.
    pub fn require_signed(mut self, require: bool) -> Self {
        self.require_signed = Some(require);
        self
    }

    /// Sets the longest causal chain an event this node sends may end
    /// (see [`HappenConfig::max_causal_depth`](super::HappenConfig::max_causal_depth)).
    pub fn max_causal_depth(mut self, depth: usize) -> Self {
        self.max_causal_depth = Some(depth);
        self
    }

    /// Selects which state changes the node keeps as snapshots;
    /// `Snapshots::Off` turns its history off (see [`Snapshots`]).
    pub fn snapshots(mut self, snapshots: Snapshots) -> Self {
        self.snapshots = Some(snapshots);
        self
    }

    /// Sets in which order waiting events start (see [`QueueStrategy`]).
    pub fn queue_strategy(mut self, strategy: QueueStrategy) -> Self {
        self.queue_strategy = Some(strategy);
        self
    }

    /// Reports backpressure when the node's queue reaches `share` of its
    /// `queue_limit` (the documentation's `backpressureThreshold`, e.g.
    /// `0.8`), before the limit itself refuses events: the runtime
    /// broadcasts a [`system::BACKPRESSURE`](crate::system::BACKPRESSURE)
    /// event (`{"node", "queued", "queueLimit", "pressure": true}`) when
    /// the queue reaches it, and one with `"pressure": false` once it is
    /// empty again. It reaches every node that handles it, in every process
    /// (senders among them: the signal to slow down), sent by the node
    /// itself. `share` is clamped to
    /// 0..=1; 1 (the default) reports nothing before the limit.
    pub fn backpressure_threshold(mut self, share: f64) -> Self {
        let share = if share.is_finite() {
            share.clamp(0.0, 1.0)
        } else {
            1.0
        };
        self.backpressure_permille = Some((share * 1000.0).round() as u16);
        self
    }

    pub(super) fn apply(&self, to: &mut NodeLimits) {
        if let Some(strategy) = self.queue_strategy {
            to.queue_strategy = strategy;
        }
        if let Some(permille) = self.backpressure_permille {
            to.backpressure_permille = permille.min(1000);
        }
        if let Some(n) = self.max_concurrent {
            to.max_concurrent = n.max(1);
        }
        if let Some(n) = self.queue_limit {
            to.queue_limit = n;
        }
        if let Some(t) = self.timeout {
            to.timeout = t;
        }
        if let Some(d) = self.delivery {
            to.delivery = d;
        }
        if let Some(sign) = self.sign {
            to.sign = sign;
        }
        if let Some(require) = self.require_signed {
            to.require_signed = require;
        }
        if let Some(depth) = self.max_causal_depth {
            to.max_causal_depth = depth.max(1);
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
    /// How events to the node are delivered.
    pub delivery: DeliveryConfig,
    /// Whether the node signs what it sends.
    pub sign: bool,
    /// Whether the node refuses unsigned events.
    pub require_signed: bool,
    /// The longest causal chain an event the node sends may end.
    pub max_causal_depth: usize,
    /// In which order waiting events start.
    pub queue_strategy: QueueStrategy,
    /// The share of `queue_limit`, in thousandths, at which backpressure is
    /// reported (1000: not before the limit).
    pub backpressure_permille: u16,
}

impl NodeLimits {
    /// The queue length at which backpressure is reported, if before the
    /// limit.
    pub(crate) fn backpressure_at(&self) -> Option<usize> {
        (self.backpressure_permille < 1000).then(|| {
            (self.queue_limit as u128 * u128::from(self.backpressure_permille) / 1000) as usize
        })
    }
}

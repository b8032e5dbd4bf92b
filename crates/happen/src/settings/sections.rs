//! The sections of [`Settings`](super::Settings), and how each maps onto
//! the runtime's configuration.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::accept::AcceptRule;
use crate::config::{DeliveryConfig, DeliveryMode, NodeConfig, QueueStrategy};

fn local_server() -> Vec<String> {
    vec!["nats://127.0.0.1:4222".to_owned()]
}

/// A duration: text with a unit (`250ms`, `5s`, `10m`, `2h`, `30d`) or a
/// number of milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Millis(pub Duration);

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
            Other(serde_json::Value),
        }
        match Raw::deserialize(d)? {
            Raw::Number(ms) => Ok(Millis(Duration::from_millis(ms))),
            Raw::Other(value) => Err(serde::de::Error::custom(format!(
                "{value} is not a duration (a whole number of milliseconds, or text such as \"30s\")"
            ))),
            Raw::Text(text) => parse_duration(&text).map(Millis).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "\"{text}\" is not a duration (a number with ms, s, m, h or d, e.g. \"30s\")"
                ))
            }),
        }
    }
}

fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    let ms = match unit.trim() {
        "ms" => n,
        "s" => n.checked_mul(1_000)?,
        "m" => n.checked_mul(60_000)?,
        "h" => n.checked_mul(3_600_000)?,
        "d" => n.checked_mul(86_400_000)?,
        _ => return None,
    };
    Some(Duration::from_millis(ms))
}

/// The NATS connection (the documentation's `nats.connection`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[non_exhaustive]
pub struct NatsSettings {
    /// Server URLs (`nats://`, `tls://`, `ws://`, `wss://`); at least one.
    /// Left out, the local server (`nats://127.0.0.1:4222`), as the
    /// documentation's own settings assume.
    #[serde(default = "local_server")]
    pub servers: Vec<String>,
    /// The connection's name, as the server shows it.
    pub name: Option<String>,
    /// The subject prefix of this Happen system.
    pub prefix: Option<String>,
    /// Whether JetStream is used (state, durable delivery).
    pub jetstream: Option<bool>,
    /// Whether events between this runtime's own nodes stay in the process.
    pub co_located: Option<bool>,
    /// JetStream replicas of the streams and buckets Happen makes.
    pub replicas: Option<usize>,
    /// Messages that may wait for the server before sends are refused.
    pub outgoing_limit: Option<usize>,
    /// How long connecting may take.
    pub connect_timeout: Option<Millis>,
    /// Reconnection after losing the server.
    pub reconnect: Option<ReconnectSettings>,
    /// Credentials.
    pub auth: Option<AuthSettings>,
    /// TLS.
    pub tls: Option<TlsSettings>,
}

/// Reconnection (see [`crate::nats::Reconnect`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[non_exhaustive]
pub struct ReconnectSettings {
    /// Give up after this many attempts in a row (absent: never).
    pub max_attempts: Option<usize>,
    /// The first wait.
    pub base_delay: Option<Millis>,
    /// The longest wait.
    pub max_delay: Option<Millis>,
}

/// Credentials: one of them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[non_exhaustive]
pub struct AuthSettings {
    /// A user (with `password`).
    pub user: Option<String>,
    /// The user's password.
    pub password: Option<String>,
    /// A token.
    pub token: Option<String>,
    /// A `.creds` file.
    pub credentials_file: Option<PathBuf>,
    /// An NKey seed.
    pub nkey_seed: Option<String>,
}

/// TLS (see [`crate::nats::Tls`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[non_exhaustive]
pub struct TlsSettings {
    /// Refuse to connect without TLS.
    #[serde(default)]
    pub required: bool,
    /// PEM files of extra roots to trust.
    #[serde(default)]
    pub root_certificates: Vec<PathBuf>,
    /// A client certificate (PEM), with `clientKey`.
    pub client_certificate: Option<PathBuf>,
    /// The client certificate's key (PEM).
    pub client_key: Option<PathBuf>,
}

/// Concurrency defaults and per-pattern overrides.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[non_exhaustive]
pub struct Concurrency {
    /// Settings of every node.
    pub default: Option<NodeSettings>,
    /// Settings of the nodes whose id matches each pattern (`*`: any run
    /// of characters).
    #[serde(default)]
    pub patterns: BTreeMap<String, NodeSettings>,
}

/// One layer of node settings.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[non_exhaustive]
pub struct NodeSettings {
    /// Flows run at once (at least 1).
    pub max_concurrent: Option<usize>,
    /// Events waiting behind them.
    pub queue_limit: Option<usize>,
    /// `fifo` or `priority`.
    pub queue_strategy: Option<QueueStrategyName>,
    /// The share of `queueLimit` at which backpressure is reported (0 to 1).
    pub backpressure_threshold: Option<f64>,
    /// The nodes' default response timeout.
    pub timeout: Option<Millis>,
    /// The longest causal chain their events may end.
    pub max_causal_depth: Option<usize>,
    /// Senders or origins to take events from (patterns).
    pub accept_from: Option<Vec<String>>,
    /// Whether they sign what they send.
    pub sign: Option<bool>,
    /// Whether they refuse unsigned events.
    pub require_signed: Option<bool>,
    /// How events to them are delivered.
    pub delivery: Option<DeliverySettings>,
}

/// A queue strategy by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueStrategyName {
    /// [`QueueStrategy::Fifo`].
    Fifo,
    /// [`QueueStrategy::Priority`].
    Priority,
}

/// Delivery (see [`DeliveryConfig`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[non_exhaustive]
pub struct DeliverySettings {
    /// `direct`, `at-least-once` or `exactly-once`.
    pub mode: Option<DeliveryModeName>,
    /// Attempts before an event is dead-lettered.
    pub max_attempts: Option<u32>,
    /// The first retry's wait.
    pub backoff: Option<Millis>,
    /// The longest retry wait.
    pub max_backoff: Option<Millis>,
    /// How long ids are remembered for de-duplication.
    pub dedup_window: Option<Millis>,
    /// How long a delivery may run before it is redelivered.
    pub ack_wait: Option<Millis>,
    /// Events handed to a node and not yet acknowledged, at most.
    pub max_pending: Option<usize>,
}

/// A delivery mode by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeliveryModeName {
    /// [`DeliveryMode::Direct`].
    Direct,
    /// [`DeliveryMode::AtLeastOnce`].
    AtLeastOnce,
    /// [`DeliveryMode::ExactlyOnce`].
    ExactlyOnce,
}

/// State history (see [`TemporalConfig`](crate::TemporalConfig)).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[non_exhaustive]
pub struct TemporalSettings {
    /// Whether snapshots are kept.
    pub enabled: Option<bool>,
    /// Snapshots kept per node.
    pub history: Option<usize>,
    /// Snapshots older than this go.
    pub max_age: Option<Millis>,
}

/// Signing, for every node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[non_exhaustive]
pub struct SecuritySettings {
    /// Every node signs what it sends.
    pub sign: Option<bool>,
    /// Every node refuses unsigned events.
    pub require_signed: Option<bool>,
}

impl NodeSettings {
    /// This layer as a node configuration; its `delivery` section applied
    /// over `delivery_below` (what the layers below it make).
    pub(super) fn node_config(&self, delivery_below: DeliveryConfig) -> NodeConfig {
        let mut c = NodeConfig::new();
        c.max_concurrent = self.max_concurrent;
        c.queue_limit = self.queue_limit;
        c.timeout = self.timeout.map(|m| m.0);
        c.max_causal_depth = self.max_causal_depth;
        c.sign = self.sign;
        c.require_signed = self.require_signed;
        c.delivery = self.delivery.as_ref().map(|d| d.apply(delivery_below));
        c.accept_from = self
            .accept_from
            .as_ref()
            .map(|rules| rules.iter().map(|r| AcceptRule::from(r.as_str())).collect());
        if let Some(strategy) = self.queue_strategy {
            c = c.queue_strategy(match strategy {
                QueueStrategyName::Fifo => QueueStrategy::Fifo,
                QueueStrategyName::Priority => QueueStrategy::Priority,
            });
        }
        if let Some(share) = self.backpressure_threshold {
            c = c.backpressure_threshold(share);
        }
        c
    }
}

impl DeliverySettings {
    pub(super) fn apply(&self, mut d: DeliveryConfig) -> DeliveryConfig {
        if let Some(mode) = self.mode {
            d.mode = match mode {
                DeliveryModeName::Direct => DeliveryMode::Direct,
                DeliveryModeName::AtLeastOnce => DeliveryMode::AtLeastOnce,
                DeliveryModeName::ExactlyOnce => DeliveryMode::ExactlyOnce,
            };
        }
        d.max_attempts = self.max_attempts.unwrap_or(d.max_attempts);
        d.backoff = self.backoff.map_or(d.backoff, |m| m.0);
        d.max_backoff = self.max_backoff.map_or(d.max_backoff, |m| m.0);
        d.dedup_window = self.dedup_window.map_or(d.dedup_window, |m| m.0);
        d.ack_wait = self.ack_wait.map_or(d.ack_wait, |m| m.0);
        d.max_pending = self.max_pending.unwrap_or(d.max_pending);
        d
    }
}

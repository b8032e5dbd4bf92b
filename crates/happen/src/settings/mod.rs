//! One configuration object for a whole runtime, readable from a file and
//! from environment variables, so that an operator configures a deployed
//! system without recompiling: the documentation's `initializeHappen({..})`.
//!
//! The keys follow the documentation (camelCase). Everything is optional;
//! without a `nats` section the runtime is embedded.
//!
//! ```json
//! {
//!   "nats": {
//!     "servers": ["nats://127.0.0.1:4222"],
//!     "name": "orders-service",
//!     "reconnect": { "maxAttempts": 10, "baseDelay": "100ms", "maxDelay": "4s" }
//!   },
//!   "requestTimeout": "5s",
//!   "concurrency": {
//!     "default": { "maxConcurrent": 100, "queueLimit": 10000, "queueStrategy": "fifo",
//!                  "backpressureThreshold": 0.8 },
//!     "patterns": { "api-*": { "maxConcurrent": 200 }, "worker-*": { "queueStrategy": "priority" } }
//!   },
//!   "delivery": { "mode": "exactly-once", "maxAttempts": 5 },
//!   "temporal": { "enabled": true, "history": 100, "maxAge": "30d" },
//!   "security": { "sign": true, "requireSigned": false }
//! }
//! ```
//!
//! [`Settings::load`] reads a file (JSON, or TOML with the `toml` feature,
//! chosen by the extension) and then the environment: every variable
//! `HAPPEN_<KEY>__<KEY>...` sets one key, segments in `UPPER_SNAKE` form
//! (`HAPPEN_CONCURRENCY__DEFAULT__MAX_CONCURRENT=50`,
//! `HAPPEN_NATS__SERVERS=nats://a:4222,nats://b:4222`). Only variables
//! whose first segment is a top-level key of the settings are read
//! (`HAPPEN_NATS_SERVER`, say, names `natsServer`, no setting, and is left
//! to whichever program uses it); within those, a wrong key is an error
//! naming the variable. A value is read as
//! JSON when it parses as JSON, else as text, and a comma-separated value
//! for a list becomes the list. The keys that hold text (names, prefixes,
//! credentials and file paths) take the variable's text as it is, so that a
//! token `123456`, a password `null` or one in quotes is that text. `HAPPEN_CONFIG` names the file when no path
//! is given. Durations are text with a unit (`250ms`, `5s`, `10m`, `2h`,
//! `30d`) or a number of milliseconds.
//!
//! A wrong key or value is an error naming it:
//!
//! ```
//! use happen::settings::Settings;
//!
//! let error = Settings::from_json(r#"{ "concurrency": { "default": { "maxConcurent": 5 } } }"#)
//!     .unwrap_err();
//! assert!(error.to_string().contains("concurrency.default.maxConcurent"), "{error}");
//! let error = Settings::from_json(r#"{ "temporal": { "maxAge": "a while" } }"#).unwrap_err();
//! assert!(error.to_string().contains("temporal.maxAge"), "{error}");
//! ```
//!
//! The documentation's own shapes are read too, rewritten into these keys
//! first; a key given both ways must agree, and what Happen cannot honour
//! is an error naming it:
//!
//! | the documentation's | read as |
//! |---|---|
//! | `nats.connection.{servers, jetstream, ..}`, and the same under `nats.connection.server` | `nats.{servers, jetstream, ..}` (`nats.connection.browser` is not a Rust process's: skipped) |
//! | `nats.connection.reconnect: true`, `reconnectTimeWait`, `maxReconnectAttempts` | `nats.reconnect`: a fixed wait (`baseDelay` = `maxDelay`), `maxAttempts` (-1: never give up); `reconnect: false` is refused (Happen always reconnects) |
//! | `nats.capabilities.persistence.{enabled, keyValue.enabled}` | `nats.jetstream` |
//! | `nats.capabilities.persistence.keyValue.buckets` | checked against the names Happen gives them after `nats.prefix` (`happen-state`, `happen-temporal`, `happen-global`) |
//! | `nats.capabilities.temporal`, `nats.capabilities.persistence.temporal` | `temporal` |
//! | `nats.capabilities.delivery` | `delivery` |
//! | `nats.capabilities.flowControl.enabled: true` | nothing (always on); `maxPending` (bytes) is refused, pointing to `delivery.maxPending` |
//! | in any `delivery`: `exactlyOnce: true`, `acknowledge: true`, `deduplication: true`, `deduplicationWindow`, `timeout`, `retries` | `mode: "exactly-once"`, nothing (always), nothing (always; `false` is refused, as is `exactlyOnce: false`, which names no mode), `dedupWindow`, `ackWait`, `maxAttempts` = retries + 1 |
//!
//! ```
//! use happen::settings::Settings;
//!
//! let documented = Settings::from_json(r#"{ "nats": {
//!     "connection": { "server": { "servers": ["nats://127.0.0.1:4222"], "jetstream": true },
//!                     "reconnectTimeWait": 2000, "maxReconnectAttempts": -1 },
//!     "capabilities": { "delivery": { "mode": "exactly-once", "deduplicationWindow": "5m" } } } }"#)?;
//! let direct = Settings::from_json(r#"{ "nats": {
//!     "servers": ["nats://127.0.0.1:4222"], "jetstream": true,
//!     "reconnect": { "baseDelay": 2000, "maxDelay": 2000 } },
//!   "delivery": { "mode": "exactly-once", "dedupWindow": "5m" } }"#)?;
//! assert_eq!(documented, direct);
//! # Ok::<(), happen::HappenError>(())
//! ```
//!
//! Patterns of `concurrency.patterns` are applied in the order of their
//! keys (sorted), each over the defaults; a node's own `NodeConfig` wins.
//! A `delivery` section in a layer changes only the keys it names: the
//! default layer's over the top-level section, a pattern's over both (when
//! two patterns match one node and both have a `delivery` section, the
//! later pattern's section, applied over those two, is the one used).
//! Not everything Happen can do is a setting: handlers, observers,
//! verifiers and signers are code.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::config::{DeliveryConfig, HappenConfig, NodeConfig};
use crate::error::{HappenError, Result};
use crate::state::temporal::TemporalConfig;

mod documented;
mod sections;
pub use sections::{
    AuthSettings, Concurrency, DeliveryModeName, DeliverySettings, Millis, NatsSettings,
    NodeSettings, QueueStrategyName, ReconnectSettings, SecuritySettings, TemporalSettings,
    TlsSettings,
};

/// The prefix of the environment variables [`Settings::load`] reads.
pub const ENV_PREFIX: &str = "HAPPEN_";

/// The whole runtime's settings; see the [module docs](self).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[non_exhaustive]
pub struct Settings {
    /// The NATS connection; `None`: an embedded runtime.
    pub nats: Option<NatsSettings>,
    /// The default response timeout of every node.
    pub request_timeout: Option<Millis>,
    /// The longest causal chain an event may end.
    pub max_causal_depth: Option<usize>,
    /// Concurrency defaults and per-pattern overrides.
    #[serde(default)]
    pub concurrency: Concurrency,
    /// How events are delivered to every node that does not say otherwise.
    pub delivery: Option<DeliverySettings>,
    /// State history.
    pub temporal: Option<TemporalSettings>,
    /// Signing, for every node.
    pub security: Option<SecuritySettings>,
}

/// The keys of [`Settings`] at the top level: the environment variables
/// read are those whose first segment names one of them.
const TOP_LEVEL_KEYS: [&str; 7] = [
    "nats",
    "requestTimeout",
    "maxCausalDepth",
    "concurrency",
    "delivery",
    "temporal",
    "security",
];

fn invalid(key: &str, why: impl std::fmt::Display) -> HappenError {
    HappenError::Config(format!("settings: {key}: {why}"))
}

impl Settings {
    /// Settings from JSON text.
    pub fn from_json(text: &str) -> Result<Settings> {
        let value: Value = serde_json::from_str(text).map_err(|e| invalid("(the JSON text)", e))?;
        Settings::from_value(value)
    }

    /// Settings from TOML text.
    #[cfg(feature = "toml")]
    pub fn from_toml(text: &str) -> Result<Settings> {
        let value: Value = toml::from_str(text).map_err(|e| invalid("(the TOML text)", e))?;
        Settings::from_value(value)
    }

    /// Settings from a JSON value (what the file and the environment make).
    pub fn from_value(mut value: Value) -> Result<Settings> {
        documented::rewrite(&mut value)?;
        let settings: Settings = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            invalid(&path, e.into_inner())
        })?;
        settings.validate()?;
        Ok(settings)
    }

    /// Reads `file` (or the file `HAPPEN_CONFIG` names, if any), then the
    /// `HAPPEN_*` environment variables over it.
    pub fn load(file: Option<&Path>) -> Result<Settings> {
        Settings::load_from(file, std::env::vars())
    }

    /// [`Settings::load`] with the variables given (for tests, or another
    /// source of variables).
    pub fn load_from(
        file: Option<&Path>,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings> {
        let vars: Vec<(String, String)> = vars.into_iter().collect();
        let named = vars
            .iter()
            .find(|(k, _)| k == "HAPPEN_CONFIG")
            .map(|(_, v)| PathBuf::from(v));
        let mut value = match file.map(Path::to_path_buf).or(named) {
            Some(path) => read_file(&path)?,
            None => Value::Object(Map::new()),
        };
        for (key, raw) in &vars {
            let Some(rest) = key.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            if rest == "CONFIG" || rest.is_empty() {
                continue;
            }
            let path: Vec<String> = rest.split("__").map(camel).collect();
            if !TOP_LEVEL_KEYS.contains(&path[0].as_str()) {
                // Another program's variable (`HAPPEN_NATS_SERVER`, ...):
                // only the settings' own top-level keys are read.
                tracing::debug!(variable = %key, "not a setting: ignored");
                continue;
            }
            set(&mut value, &path, env_value(&path, raw))
                .map_err(|why| invalid(&format!("{key} (environment)"), why))?;
        }
        Settings::from_value(value)
    }

    fn validate(&self) -> Result<()> {
        let layers = self
            .concurrency
            .default
            .iter()
            .map(|l| ("concurrency.default".to_owned(), l))
            .chain(
                self.concurrency
                    .patterns
                    .iter()
                    .map(|(p, l)| (format!("concurrency.patterns.{p}"), l)),
            );
        for (at, layer) in layers {
            if layer.max_concurrent == Some(0) {
                return Err(invalid(
                    &format!("{at}.maxConcurrent"),
                    "must be at least 1",
                ));
            }
            if let Some(t) = layer.backpressure_threshold
                && !(0.0..=1.0).contains(&t)
            {
                return Err(invalid(
                    &format!("{at}.backpressureThreshold"),
                    format!("{t} is not between 0 and 1"),
                ));
            }
        }
        let deliveries = self
            .delivery
            .iter()
            .map(|d| ("delivery".to_owned(), d))
            .chain(self.concurrency.default.iter().filter_map(|l| {
                l.delivery
                    .as_ref()
                    .map(|d| ("concurrency.default.delivery".to_owned(), d))
            }))
            .chain(self.concurrency.patterns.iter().filter_map(|(p, l)| {
                l.delivery
                    .as_ref()
                    .map(|d| (format!("concurrency.patterns.{p}.delivery"), d))
            }));
        for (at, delivery) in deliveries {
            if delivery.max_attempts == Some(0) {
                return Err(invalid(&format!("{at}.maxAttempts"), "must be at least 1"));
            }
            if delivery.max_pending == Some(0) {
                return Err(invalid(&format!("{at}.maxPending"), "must be at least 1"));
            }
        }
        if self.max_causal_depth == Some(0) {
            return Err(invalid("maxCausalDepth", "must be at least 1"));
        }
        if self.request_timeout.is_some_and(|Millis(t)| t.is_zero()) {
            return Err(invalid(
                "requestTimeout",
                "must be longer than 0 (every request would time out at once)",
            ));
        }
        if let Some(nats) = &self.nats {
            if nats.servers.is_empty() {
                return Err(invalid("nats.servers", "name at least one server"));
            }
            if nats.reconnect.as_ref().and_then(|r| r.max_attempts) == Some(0) {
                return Err(invalid(
                    "nats.reconnect.maxAttempts",
                    "must be at least 1 (leave it out to never give up)",
                ));
            }
            if let Some(auth) = &nats.auth {
                let given = [
                    auth.user.is_some(),
                    auth.token.is_some(),
                    auth.credentials_file.is_some(),
                    auth.nkey_seed.is_some(),
                ];
                if given.iter().filter(|g| **g).count() > 1 {
                    return Err(invalid(
                        "nats.auth",
                        "give one of user, token, credentialsFile, nkeySeed",
                    ));
                }
                if auth.user.is_some() != auth.password.is_some() {
                    return Err(invalid("nats.auth", "user and password go together"));
                }
            }
            if let Some(tls) = &nats.tls
                && tls.client_certificate.is_some() != tls.client_key.is_some()
            {
                return Err(invalid(
                    "nats.tls",
                    "clientCertificate and clientKey go together",
                ));
            }
        }
        // Everything else the connection checks (replicas, zero limits and
        // delays, addresses), found now rather than when connecting.
        #[cfg(feature = "nats")]
        if let Some(config) = self.nats_config()
            && let Err(error) = config.validate()
        {
            let why = match error {
                HappenError::Config(why) => why,
                other => other.to_string(),
            };
            return Err(invalid("nats", why));
        }
        Ok(())
    }

    /// The runtime configuration these settings describe (everything but
    /// the NATS connection).
    pub fn happen_config(&self) -> HappenConfig {
        let mut config = HappenConfig::default();
        if let Some(Millis(t)) = self.request_timeout {
            config = config.request_timeout(t);
        }
        if let Some(depth) = self.max_causal_depth {
            config = config.max_causal_depth(depth);
        }
        // A layer's delivery section changes only the keys it names: over
        // the system-wide section, and a pattern's over the default layer's.
        let system = self
            .delivery
            .as_ref()
            .map_or(DeliveryConfig::direct(), |d| {
                d.apply(DeliveryConfig::direct())
            });
        if self.delivery.is_some() {
            config = config.delivery(system);
        }
        let below_patterns = self
            .concurrency
            .default
            .as_ref()
            .and_then(|d| d.delivery.as_ref())
            .map_or(system, |d| d.apply(system));
        if let Some(temporal) = &self.temporal {
            let mut t = TemporalConfig::default();
            t.enabled = temporal.enabled.unwrap_or(t.enabled);
            t.history = temporal.history.unwrap_or(t.history);
            t.max_age = temporal.max_age.map_or(t.max_age, |m| m.0);
            config = config.temporal(t);
        }
        // Layers in order: security and defaults for every node, then the
        // patterns (the node's own configuration comes last, in code).
        if let Some(security) = &self.security {
            let mut all = NodeConfig::new();
            all.sign = security.sign;
            all.require_signed = security.require_signed;
            config = config.for_nodes("*", all);
        }
        if let Some(default) = &self.concurrency.default {
            config = config.for_nodes("*", default.node_config(system));
        }
        for (pattern, layer) in &self.concurrency.patterns {
            config = config.for_nodes(pattern.clone(), layer.node_config(below_patterns));
        }
        config
    }

    /// The NATS connection these settings describe, if any.
    #[cfg(feature = "nats")]
    pub fn nats_config(&self) -> Option<crate::nats::NatsConfig> {
        use crate::nats::{Auth, NatsConfig, Reconnect, Tls};
        let nats = self.nats.as_ref()?;
        let mut servers = nats.servers.iter();
        let mut config = NatsConfig::new(servers.next()?.clone());
        for server in servers {
            config = config.server(server.clone());
        }
        if let Some(name) = &nats.name {
            config = config.name(name.clone());
        }
        if let Some(prefix) = &nats.prefix {
            config = config.prefix(prefix.clone());
        }
        if let Some(js) = nats.jetstream {
            config = config.jetstream(js);
        }
        if let Some(co) = nats.co_located {
            config = config.co_located(co);
        }
        if let Some(r) = nats.replicas {
            config = config.replicas(r);
        }
        if let Some(limit) = nats.outgoing_limit {
            config = config.outgoing_limit(limit);
        }
        if let Some(Millis(t)) = nats.connect_timeout {
            config = config.connect_timeout(t);
        }
        if let Some(r) = &nats.reconnect {
            let d = Reconnect::default();
            config = config.reconnect(Reconnect {
                max_attempts: r.max_attempts,
                base_delay: r.base_delay.map_or(d.base_delay, |m| m.0),
                max_delay: r.max_delay.map_or(d.max_delay, |m| m.0),
            });
        }
        if let Some(a) = &nats.auth {
            let auth = if let (Some(user), Some(password)) = (&a.user, &a.password) {
                Auth::UserPassword {
                    user: user.clone(),
                    password: password.clone(),
                }
            } else if let Some(token) = &a.token {
                Auth::Token(token.clone())
            } else if let Some(file) = &a.credentials_file {
                Auth::CredentialsFile(file.clone())
            } else if let Some(seed) = &a.nkey_seed {
                Auth::NkeySeed(seed.clone())
            } else {
                Auth::None
            };
            config = config.auth(auth);
        }
        if let Some(t) = &nats.tls {
            config = config.tls(Tls {
                required: t.required,
                root_certificates: t.root_certificates.clone(),
                client_certificate: t.client_certificate.clone().zip(t.client_key.clone()),
            });
        }
        Some(config)
    }
}

fn read_file(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid(&path.display().to_string(), format!("cannot read: {e}")))?;
    let file = path.display().to_string();
    match path.extension().and_then(|e| e.to_str()) {
        #[cfg(feature = "toml")]
        Some("toml") => toml::from_str(&text).map_err(|e| invalid(&file, e)),
        #[cfg(not(feature = "toml"))]
        Some("toml") => Err(invalid(&file, "TOML needs the `toml` feature")),
        _ => serde_json::from_str(&text).map_err(|e| invalid(&file, e)),
    }
}

/// `MAX_CONCURRENT` → `maxConcurrent`; a segment with lower-case letters
/// (a pattern such as `api-*`) stays as it is.
fn camel(segment: &str) -> String {
    if segment.chars().any(|c| c.is_ascii_lowercase()) {
        return segment.to_owned();
    }
    let mut out = String::new();
    for (i, word) in segment.split('_').filter(|w| !w.is_empty()).enumerate() {
        let word = word.to_ascii_lowercase();
        if i == 0 {
            out.push_str(&word);
        } else {
            let mut chars = word.chars();
            if let Some(first) = chars.next() {
                out.push(first.to_ascii_uppercase());
                out.extend(chars);
            }
        }
    }
    out
}

/// The value of an environment variable: the text itself for the keys
/// that hold text, a list for the keys that are lists, else JSON if it
/// parses, else text.
fn env_value(path: &[String], raw: &str) -> Value {
    let texts = [
        "name",
        "prefix",
        "user",
        "password",
        "token",
        "credentialsFile",
        "nkeySeed",
        "clientCertificate",
        "clientKey",
    ];
    if path.last().is_some_and(|k| texts.contains(&k.as_str())) {
        return Value::String(raw.to_owned());
    }
    let lists = ["servers", "acceptFrom", "rootCertificates"];
    if path.last().is_some_and(|k| lists.contains(&k.as_str()))
        && !raw.trim_start().starts_with('[')
    {
        return Value::Array(
            raw.split(',')
                .map(|s| Value::String(s.trim().to_owned()))
                .collect(),
        );
    }
    serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_owned()))
}

fn set(root: &mut Value, path: &[String], value: Value) -> std::result::Result<(), String> {
    let Some((last, parents)) = path.split_last() else {
        return Err("no key".into());
    };
    let mut at = root;
    for key in parents {
        let Value::Object(map) = at else {
            return Err(format!("{key} is inside a value that is not a section"));
        };
        at = map
            .entry(key.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    match at {
        Value::Object(map) => {
            map.insert(last.clone(), value);
            Ok(())
        }
        _ => Err(format!("{last} is inside a value that is not a section")),
    }
}

#[cfg(test)]
mod tests;

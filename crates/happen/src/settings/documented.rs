//! The documentation's own shapes of the settings, read into Happen's.
//!
//! The documentation writes `initializeHappen({ nats: { connection: {..},
//! capabilities: {..} } })` and `createNode(id, { delivery: {..} })`; these
//! settings name the same things more directly (`nats.servers`,
//! `delivery`, `temporal`). Before the settings are read, every form of the
//! documentation is rewritten into Happen's (see the table in the
//! [settings docs](super)). A key given both ways must say the same, and a
//! value of the documentation's that Happen cannot honour is an error
//! naming it, never dropped.

use serde_json::{Map, Value, json};

use super::invalid;
use crate::error::Result;

/// Rewrites the documentation's forms in `root` (the whole settings) into
/// Happen's.
pub(super) fn rewrite(root: &mut Value) -> Result<()> {
    let Value::Object(root) = root else {
        return Ok(()); // not a section: the reader says so
    };
    match root.remove("nats") {
        Some(Value::Object(mut nats)) => {
            if let Some(connection) = nats.remove("connection") {
                rewrite_connection(&mut nats, section(connection, "nats.connection")?)?;
            }
            if let Some(capabilities) = nats.remove("capabilities") {
                let capabilities = section(capabilities, "nats.capabilities")?;
                rewrite_capabilities(root, &mut nats, capabilities)?;
            }
            root.insert("nats".into(), Value::Object(nats));
        }
        // Not a section: left for the reader to name.
        Some(other) => {
            root.insert("nats".into(), other);
        }
        None => {}
    }
    if let Some(Value::Object(delivery)) = root.get_mut("delivery") {
        rewrite_delivery(delivery, "delivery")?;
    }
    if let Some(Value::Object(concurrency)) = root.get_mut("concurrency") {
        if let Some(Value::Object(default)) = concurrency.get_mut("default")
            && let Some(Value::Object(delivery)) = default.get_mut("delivery")
        {
            rewrite_delivery(delivery, "concurrency.default.delivery")?;
        }
        if let Some(Value::Object(patterns)) = concurrency.get_mut("patterns") {
            for (pattern, layer) in patterns.iter_mut() {
                if let Some(Value::Object(delivery)) = layer.get_mut("delivery") {
                    let at = format!("concurrency.patterns.{pattern}.delivery");
                    rewrite_delivery(delivery, &at)?;
                }
            }
        }
    }
    Ok(())
}

/// `value` as a section, or an error naming `at`.
fn section(value: Value, at: &str) -> Result<Map<String, Value>> {
    match value {
        Value::Object(map) => Ok(map),
        other => Err(invalid(at, format!("a section ({{..}}), not {other}"))),
    }
}

/// Sets `key` of `into` to `value`, unless it holds another value already
/// (`from` names where the new one was written).
fn put(into: &mut Map<String, Value>, key: &str, value: Value, from: &str) -> Result<()> {
    match into.get(key) {
        Some(old) if *old != value => Err(invalid(
            from,
            format!("says {value}, where {key} says {old}: give it once"),
        )),
        _ => {
            into.insert(key.to_owned(), value);
            Ok(())
        }
    }
}

/// A boolean, or an error naming `at`.
fn boolean(value: &Value, at: &str) -> Result<bool> {
    value
        .as_bool()
        .ok_or_else(|| invalid(at, format!("true or false, not {value}")))
}

/// An error for every key left in `rest`: none of them is known at `at`.
fn nothing_else(rest: Map<String, Value>, at: &str, known: &str) -> Result<()> {
    match rest.keys().next() {
        Some(key) => Err(invalid(
            &format!("{at}.{key}"),
            format!("unknown key (known here: {known})"),
        )),
        None => Ok(()),
    }
}

/// `nats.connection`: its `server` environment's keys, the reconnection
/// keys of the documentation's NATS client, and Happen's own keys.
fn rewrite_connection(
    nats: &mut Map<String, Value>,
    mut connection: Map<String, Value>,
) -> Result<()> {
    if let Some(server) = connection.remove("server") {
        let at = "nats.connection.server";
        for (key, value) in section(server, at)? {
            put(&mut connection, &key, value, &format!("{at}.{key}"))?;
        }
    }
    // A Rust process runs as a server: a browser's connection is not its.
    connection.remove("browser");
    let mut reconnect = match connection.remove("reconnect") {
        None | Some(Value::Bool(true)) => Map::new(),
        Some(Value::Object(own)) => own, // Happen's own form
        Some(Value::Bool(false)) => {
            return Err(invalid(
                "nats.connection.reconnect",
                "Happen always reconnects; bound it with maxReconnectAttempts",
            ));
        }
        Some(other) => {
            return Err(invalid(
                "nats.connection.reconnect",
                format!("true, or a section, not {other}"),
            ));
        }
    };
    if let Some(wait) = connection.remove("reconnectTimeWait") {
        // The documentation's client waits the same time before every
        // attempt: a backoff that starts and ends there.
        let at = "nats.connection.reconnectTimeWait";
        put(&mut reconnect, "baseDelay", wait.clone(), at)?;
        put(&mut reconnect, "maxDelay", wait, at)?;
    }
    if let Some(attempts) = connection.remove("maxReconnectAttempts") {
        let at = "nats.connection.maxReconnectAttempts";
        match attempts.as_i64() {
            Some(-1) => {} // never give up: Happen's default
            Some(n) if n >= 1 => put(&mut reconnect, "maxAttempts", json!(n), at)?,
            _ => {
                return Err(invalid(
                    at,
                    format!("-1 (never give up) or at least 1, not {attempts}"),
                ));
            }
        }
    }
    if !reconnect.is_empty() {
        connection.insert("reconnect".into(), Value::Object(reconnect));
    }
    for (key, value) in connection {
        let from = format!("nats.connection.{key}");
        put(nats, &key, value, &from)?;
    }
    Ok(())
}

/// `nats.capabilities`: persistence (JetStream, its buckets, temporal
/// state), delivery and flow control.
fn rewrite_capabilities(
    root: &mut Map<String, Value>,
    nats: &mut Map<String, Value>,
    mut capabilities: Map<String, Value>,
) -> Result<()> {
    if let Some(persistence) = capabilities.remove("persistence") {
        rewrite_persistence(
            root,
            nats,
            section(persistence, "nats.capabilities.persistence")?,
        )?;
    }
    if let Some(temporal) = capabilities.remove("temporal") {
        put(root, "temporal", temporal, "nats.capabilities.temporal")?;
    }
    if let Some(delivery) = capabilities.remove("delivery") {
        let at = "nats.capabilities.delivery";
        let mut delivery = section(delivery, at)?;
        rewrite_delivery(&mut delivery, at)?;
        let into = root
            .entry("delivery")
            .or_insert_with(|| Value::Object(Map::new()));
        let Value::Object(into) = into else {
            return Err(invalid("delivery", "a section"));
        };
        for (key, value) in delivery {
            put(into, &key, value, &format!("{at}.{key}"))?;
        }
    }
    if let Some(flow) = capabilities.remove("flowControl") {
        let at = "nats.capabilities.flowControl";
        let mut flow = section(flow, at)?;
        if let Some(enabled) = flow.remove("enabled")
            && !boolean(&enabled, &format!("{at}.enabled"))?
        {
            return Err(invalid(
                &format!("{at}.enabled"),
                "Happen's flow control is always on (consumers ask for what they take)",
            ));
        }
        if flow.contains_key("maxPending") {
            return Err(invalid(
                &format!("{at}.maxPending"),
                "bytes pending in the documentation's client; Happen bounds what waits by \
                 events: delivery.maxPending (handed to a node, not yet acknowledged) and \
                 concurrency.default.queueLimit",
            ));
        }
        nothing_else(flow, at, "enabled")?;
    }
    nothing_else(
        capabilities,
        "nats.capabilities",
        "persistence, temporal, delivery, flowControl",
    )
}

/// `nats.capabilities.persistence`: whether JetStream is used, the names
/// of its buckets (checked: Happen names them after `nats.prefix`), and
/// temporal state.
fn rewrite_persistence(
    root: &mut Map<String, Value>,
    nats: &mut Map<String, Value>,
    mut persistence: Map<String, Value>,
) -> Result<()> {
    let at = "nats.capabilities.persistence";
    let mut jetstream = match persistence.remove("enabled") {
        Some(enabled) => Some(boolean(&enabled, &format!("{at}.enabled"))?),
        None => None,
    };
    if let Some(key_value) = persistence.remove("keyValue") {
        let at = format!("{at}.keyValue");
        let mut key_value = section(key_value, &at)?;
        if let Some(enabled) = key_value.remove("enabled") {
            let enabled = boolean(&enabled, &format!("{at}.enabled"))?;
            jetstream = Some(jetstream.unwrap_or(true) && enabled);
        }
        if let Some(buckets) = key_value.remove("buckets") {
            check_buckets(nats, section(buckets, &format!("{at}.buckets"))?, &at)?;
        }
        nothing_else(key_value, &at, "enabled, buckets")?;
    }
    if let Some(temporal) = persistence.remove("temporal") {
        put(root, "temporal", temporal, &format!("{at}.temporal"))?;
    }
    nothing_else(persistence, at, "enabled, keyValue, temporal")?;
    if let Some(jetstream) = jetstream {
        put(
            nats,
            "jetstream",
            Value::Bool(jetstream),
            &format!("{at}.enabled"),
        )?;
    }
    Ok(())
}

/// The documentation's bucket names are accepted when they are the ones
/// Happen uses for the configured prefix.
fn check_buckets(nats: &Map<String, Value>, buckets: Map<String, Value>, at: &str) -> Result<()> {
    let prefix = nats
        .get("prefix")
        .and_then(Value::as_str)
        .unwrap_or("happen");
    let base = prefix.replace('.', "_");
    for (kind, name) in buckets {
        let expected = match kind.as_str() {
            "state" | "temporal" | "global" => format!("{base}-{kind}"),
            _ => {
                return Err(invalid(
                    &format!("{at}.buckets.{kind}"),
                    "unknown bucket (known: state, temporal, global)",
                ));
            }
        };
        if name.as_str() != Some(expected.as_str()) {
            return Err(invalid(
                &format!("{at}.buckets.{kind}"),
                format!(
                    "Happen names this bucket \"{expected}\" after nats.prefix (\"{prefix}\"); \
                     set nats.prefix to change the names, not {name}"
                ),
            ));
        }
    }
    Ok(())
}

/// A delivery section in the documentation's form (system-wide or a
/// node's): `exactlyOnce`, `acknowledge`, `deduplication`,
/// `deduplicationWindow`, `timeout`, `retries`.
fn rewrite_delivery(delivery: &mut Map<String, Value>, at: &str) -> Result<()> {
    if let Some(once) = delivery.remove("exactlyOnce") {
        if !boolean(&once, &format!("{at}.exactlyOnce"))? {
            // Which weaker mode is meant is not said: asked, not guessed.
            return Err(invalid(
                &format!("{at}.exactlyOnce"),
                "false says what the mode is not; name it: mode \"at-least-once\" or \"direct\"",
            ));
        }
        put(
            delivery,
            "mode",
            json!("exactly-once"),
            &format!("{at}.exactlyOnce"),
        )?;
    }
    if let Some(acknowledge) = delivery.remove("acknowledge")
        && !boolean(&acknowledge, &format!("{at}.acknowledge"))?
    {
        return Err(invalid(
            &format!("{at}.acknowledge"),
            "durable delivery always acknowledges a handled event; mode \"direct\" has no \
             acknowledgement",
        ));
    }
    if let Some(dedup) = delivery.remove("deduplication")
        && !boolean(&dedup, &format!("{at}.deduplication"))?
    {
        return Err(invalid(
            &format!("{at}.deduplication"),
            "Happen always de-duplicates a repeated publish of an event (by its id, within \
             dedupWindow), and exactly-once delivery is de-duplication; it cannot be turned off",
        ));
    }
    if let Some(window) = delivery.remove("deduplicationWindow") {
        put(
            delivery,
            "dedupWindow",
            window,
            &format!("{at}.deduplicationWindow"),
        )?;
    }
    if let Some(timeout) = delivery.remove("timeout") {
        // How long a delivery may take before it is tried again.
        put(delivery, "ackWait", timeout, &format!("{at}.timeout"))?;
    }
    if let Some(retries) = delivery.remove("retries") {
        let at = format!("{at}.retries");
        let attempts = retries
            .as_u64()
            .and_then(|n| n.checked_add(1))
            .ok_or_else(|| invalid(&at, format!("a number of retries, not {retries}")))?;
        put(delivery, "maxAttempts", json!(attempts), &at)?;
    }
    Ok(())
}

//! Settings read from text, files and variables, mapped onto the runtime's
//! configuration; every wrong key or value named.

use std::time::Duration;

use super::*;
use crate::config::{DeliveryMode, QueueStrategy};

const FULL: &str = r#"{
  "nats": {
    "servers": ["nats://127.0.0.1:4222", "nats://127.0.0.1:4223"],
    "name": "orders-service",
    "reconnect": { "maxAttempts": 10, "baseDelay": "100ms", "maxDelay": "4s" },
    "auth": { "user": "orders", "password": "secret" }
  },
  "requestTimeout": "2s",
  "maxCausalDepth": 64,
  "concurrency": {
    "default": { "maxConcurrent": 100, "queueLimit": 10000, "queueStrategy": "fifo",
                 "backpressureThreshold": 0.8 },
    "patterns": {
      "api-*": { "maxConcurrent": 200, "queueLimit": 20000 },
      "worker-*": { "maxConcurrent": 50, "queueStrategy": "priority", "timeout": 9000 }
    }
  },
  "delivery": { "mode": "at-least-once", "maxAttempts": 7, "backoff": "250ms" },
  "temporal": { "enabled": true, "history": 10, "maxAge": "30d" },
  "security": { "sign": true }
}"#;

fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn the_documented_object_maps_onto_the_configuration() {
    let settings = Settings::from_json(FULL).unwrap();
    let config = settings.happen_config();
    let api = config.resolve("api-gateway", &NodeConfig::new());
    assert_eq!((api.max_concurrent, api.queue_limit), (200, 20_000));
    assert_eq!(api.timeout, Duration::from_secs(2));
    assert!(api.sign, "security applies to every node");
    assert_eq!(api.backpressure_permille, 800);
    assert_eq!(api.max_causal_depth, 64);
    assert_eq!(api.delivery.mode, DeliveryMode::AtLeastOnce);
    assert_eq!(api.delivery.max_attempts, 7);
    assert_eq!(api.delivery.backoff, Duration::from_millis(250));
    let worker = config.resolve("worker-1", &NodeConfig::new());
    assert_eq!(worker.queue_strategy, QueueStrategy::Priority);
    assert_eq!(worker.timeout, Duration::from_secs(9));
    assert_eq!((worker.max_concurrent, worker.queue_limit), (50, 10_000));
    let t = config.temporal_config();
    assert_eq!(
        (t.history, t.max_age),
        (10, Duration::from_secs(30 * 86_400))
    );
    #[cfg(feature = "nats")]
    {
        let nats = settings.nats_config().expect("a nats section");
        assert!(format!("{nats:?}").contains("orders-service"));
        assert!(
            !format!("{nats:?}").contains("secret"),
            "the password stays out of logs"
        );
    }
}

#[test]
fn variables_override_the_file_and_name_their_keys() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("happen.json");
    std::fs::write(&file, FULL).unwrap();
    let settings = Settings::load_from(
        Some(&file),
        vars(&[
            ("HAPPEN_CONCURRENCY__DEFAULT__MAX_CONCURRENT", "7"),
            ("HAPPEN_CONCURRENCY__PATTERNS__api-*__QUEUE_LIMIT", "5"),
            (
                "HAPPEN_NATS__SERVERS",
                "nats://10.0.0.1:4222, nats://10.0.0.2:4222",
            ),
            ("HAPPEN_TEMPORAL__MAX_AGE", "2h"),
            ("HAPPEN_REQUEST_TIMEOUT", "750"),
            ("PATH", "/usr/bin"),
        ]),
    )
    .unwrap();
    let default = settings.concurrency.default.as_ref().unwrap();
    assert_eq!(default.max_concurrent, Some(7));
    assert_eq!(settings.concurrency.patterns["api-*"].queue_limit, Some(5));
    assert_eq!(
        settings.concurrency.patterns["api-*"].max_concurrent,
        Some(200)
    );
    assert_eq!(
        settings.nats.as_ref().unwrap().servers,
        ["nats://10.0.0.1:4222", "nats://10.0.0.2:4222"]
    );
    assert_eq!(
        settings.temporal.as_ref().unwrap().max_age,
        Some(Millis(Duration::from_secs(7200)))
    );
    assert_eq!(
        settings.request_timeout,
        Some(Millis(Duration::from_millis(750)))
    );

    let error =
        Settings::load_from(Some(&file), vars(&[("HAPPEN_MAX_CAUSAL_DEPTH", "deep")])).unwrap_err();
    assert!(error.to_string().contains("maxCausalDepth"), "{error}");
    // HAPPEN_CONFIG names the file when no path is given.
    let settings =
        Settings::load_from(None, vars(&[("HAPPEN_CONFIG", file.to_str().unwrap())])).unwrap();
    assert_eq!(settings.max_causal_depth, Some(64));
}

/// Keys that hold text take the variable as it is: read as JSON first, a
/// numeric token was refused ("expected a string"), a password `null` was
/// unset, and a quoted one lost its quotes without a word.
#[test]
fn text_keys_take_the_variable_as_it_is() {
    let settings = Settings::load_from(
        None,
        vars(&[
            ("HAPPEN_NATS__SERVERS", "nats://127.0.0.1:4222"),
            ("HAPPEN_NATS__NAME", "1"),
            ("HAPPEN_NATS__PREFIX", "true"),
            ("HAPPEN_NATS__AUTH__USER", "null"),
            ("HAPPEN_NATS__AUTH__PASSWORD", "\"quoted\""),
        ]),
    )
    .unwrap();
    let nats = settings.nats.as_ref().unwrap();
    assert_eq!(nats.name.as_deref(), Some("1"));
    assert_eq!(nats.prefix.as_deref(), Some("true"));
    let auth = nats.auth.as_ref().unwrap();
    assert_eq!(auth.user.as_deref(), Some("null"));
    assert_eq!(auth.password.as_deref(), Some("\"quoted\""));
    let settings = Settings::load_from(
        None,
        vars(&[
            ("HAPPEN_NATS__SERVERS", "nats://127.0.0.1:4222"),
            ("HAPPEN_NATS__AUTH__TOKEN", "123456"),
        ]),
    )
    .unwrap();
    let auth = settings.nats.unwrap().auth.unwrap();
    assert_eq!(auth.token.as_deref(), Some("123456"));
}

#[cfg(feature = "toml")]
#[test]
fn toml_files_read_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("happen.toml");
    std::fs::write(
        &file,
        r#"
requestTimeout = "3s"
[concurrency.default]
maxConcurrent = 12
queueStrategy = "priority"
[concurrency.patterns."api-*"]
maxConcurrent = 99
"#,
    )
    .unwrap();
    let config = Settings::load_from(Some(&file), vars(&[]))
        .unwrap()
        .happen_config();
    let api = config.resolve("api-1", &NodeConfig::new());
    assert_eq!(api.max_concurrent, 99);
    assert_eq!(api.queue_strategy, QueueStrategy::Priority);
    assert_eq!(api.timeout, Duration::from_secs(3));
}

#[test]
fn wrong_keys_and_values_are_errors_naming_them() {
    for (text, key) in [
        (r#"{ "concurency": {} }"#, "concurency"),
        (
            r#"{ "concurrency": { "default": { "maxConcurrent": 0 } } }"#,
            "concurrency.default.maxConcurrent",
        ),
        (
            r#"{ "concurrency": { "patterns": { "api-*": { "backpressureThreshold": 1.5 } } } }"#,
            "concurrency.patterns.api-*.backpressureThreshold",
        ),
        (
            r#"{ "concurrency": { "default": { "queueStrategy": "lifo" } } }"#,
            "concurrency.default.queueStrategy",
        ),
        (r#"{ "delivery": { "mode": "twice" } }"#, "delivery.mode"),
        (r#"{ "temporal": { "maxAge": "soon" } }"#, "temporal.maxAge"),
        (r#"{ "nats": { "servers": [] } }"#, "nats.servers"),
        (
            r#"{ "nats": { "servers": ["nats://x"], "auth": { "user": "u" } } }"#,
            "nats.auth",
        ),
        (r#"{ "maxCausalDepth": -1 }"#, "maxCausalDepth"),
        (r#"{ "requestTimeout": "0s" }"#, "requestTimeout"),
        (r#"{ "requestTimeout": 0 }"#, "requestTimeout"),
    ] {
        let error = Settings::from_json(text).unwrap_err();
        assert!(matches!(error, HappenError::Config(_)), "{error:?}");
        assert!(error.to_string().contains(key), "{text}: {error}");
    }
    // A duration that is neither a whole number of milliseconds nor text
    // says so, not what the parser tried.
    for (text, shown) in [
        (r#"{ "requestTimeout": -5 }"#, "-5 is not a duration"),
        (r#"{ "requestTimeout": 1.5 }"#, "1.5 is not a duration"),
    ] {
        let error = Settings::from_json(text).unwrap_err().to_string();
        assert!(
            error.contains(shown) && !error.contains("untagged"),
            "{error}"
        );
    }
    // The documentation's shapes leave the server out: the local one.
    let local =
        Settings::from_json(r#"{ "nats": { "connection": { "jetstream": true } } }"#).unwrap();
    assert_eq!(
        local.nats.unwrap().servers,
        ["nats://127.0.0.1:4222".to_owned()]
    );
    let missing =
        Settings::load_from(Some(Path::new("/nonexistent/happen.json")), vars(&[])).unwrap_err();
    assert!(
        missing.to_string().contains("/nonexistent/happen.json"),
        "{missing}"
    );
}

#[test]
fn empty_settings_are_the_defaults() {
    let settings = Settings::from_json("{}").unwrap();
    assert_eq!(settings, Settings::default());
    let limits = settings.happen_config().resolve("any", &NodeConfig::new());
    let defaults = HappenConfig::default().resolve("any", &NodeConfig::new());
    assert_eq!(limits, defaults);
}

#[test]
fn a_layers_delivery_section_changes_only_the_keys_it_names() {
    let settings = Settings::from_json(
        r#"{
          "delivery": { "mode": "at-least-once", "backoff": "250ms" },
          "concurrency": {
            "default": { "delivery": { "maxPending": 32 } },
            "patterns": { "pay-*": { "delivery": { "maxAttempts": 9 } } }
          }
        }"#,
    )
    .unwrap();
    let config = settings.happen_config();
    let orders = config.resolve("orders", &NodeConfig::new()).delivery;
    assert_eq!(orders.mode, DeliveryMode::AtLeastOnce);
    assert_eq!(orders.max_pending, 32);
    assert_eq!(orders.max_attempts, DeliveryConfig::direct().max_attempts);
    // The pattern changes the attempts and keeps the durable mode.
    let pay = config.resolve("pay-1", &NodeConfig::new()).delivery;
    assert_eq!(pay.mode, DeliveryMode::AtLeastOnce);
    assert_eq!(
        (pay.max_attempts, pay.max_pending, pay.backoff),
        (9, 32, Duration::from_millis(250))
    );
}

#[test]
fn other_programs_happen_variables_are_left_alone() {
    let loaded = Settings::load_from(
        None,
        vars(&[
            ("HAPPEN_NATS_SERVER", "/usr/local/bin/nats-server"),
            ("HAPPEN_BENCH_N", "1000"),
            ("HAPPEN_REQUEST_TIMEOUT", "3s"),
        ]),
    )
    .unwrap();
    assert_eq!(loaded.request_timeout, Some(Millis(Duration::from_secs(3))));
    // A wrong key under a setting's own name is still an error naming it.
    let error = Settings::load_from(None, vars(&[("HAPPEN_NATS__SERVRS", "nats://a:4222")]))
        .unwrap_err()
        .to_string();
    assert!(error.contains("servrs"), "{error}");
}

#[test]
fn zero_attempts_and_zero_pending_are_refused_by_name() {
    for (text, key) in [
        (
            r#"{ "delivery": { "maxAttempts": 0 } }"#,
            "delivery.maxAttempts",
        ),
        (
            r#"{ "concurrency": { "patterns": { "a-*": { "delivery": { "maxPending": 0 } } } } }"#,
            "concurrency.patterns.a-*.delivery.maxPending",
        ),
        (
            r#"{ "nats": { "servers": ["nats://127.0.0.1:4222"], "reconnect": { "maxAttempts": 0 } } }"#,
            "nats.reconnect.maxAttempts",
        ),
    ] {
        let error = Settings::from_json(text).unwrap_err().to_string();
        assert!(error.contains(key), "{text}: {error}");
    }
}

#[cfg(feature = "nats")]
#[test]
fn what_the_connection_would_refuse_is_refused_when_read() {
    for (nats, says) in [
        (r#""replicas": 0"#, "replicas"),
        (r#""outgoingLimit": 0"#, "outgoing_limit"),
        (r#""connectTimeout": 0"#, "connect_timeout"),
        (r#""reconnect": { "baseDelay": 0 }"#, "delay"),
        (r#""prefix": "a b""#, "prefix"),
    ] {
        let text = format!(r#"{{ "nats": {{ "servers": ["nats://127.0.0.1:4222"], {nats} }} }}"#);
        let error = Settings::from_json(&text).unwrap_err().to_string();
        assert!(
            error.contains("settings: nats") && error.contains(says),
            "{text}: {error}"
        );
    }
}

/// The documentation's initialisation objects, as written there (its
/// quick start, unified configuration, temporal state, delivery,
/// reconnection and node-level delivery examples), read into the same
/// settings as Happen's own keys.
#[test]
fn the_documentations_own_objects_are_read() {
    let quick_start = Settings::from_json(
        r#"{ "nats": { "connection": {
            "server": { "servers": ["nats://127.0.0.1:4222"], "jetstream": true },
            "browser": { "servers": ["wss://127.0.0.1:8443"], "jetstream": true } } } }"#,
    )
    .unwrap();
    let nats = quick_start.nats.as_ref().unwrap();
    assert_eq!(nats.servers, ["nats://127.0.0.1:4222"]);
    assert_eq!(nats.jetstream, Some(true));

    let unified = Settings::from_json(
        r#"{ "nats": {
            "connection": { "server": { "servers": ["nats://127.0.0.1:4222"], "jetstream": true } },
            "capabilities": {
              "persistence": { "enabled": true, "keyValue": { "enabled": true,
                "buckets": { "state": "happen-state", "temporal": "happen-temporal" } } },
              "delivery": { "exactlyOnce": true, "deduplication": true } } } }"#,
    )
    .unwrap();
    assert_eq!(unified.nats.as_ref().unwrap().jetstream, Some(true));
    let delivery = unified.happen_config();
    assert_eq!(
        delivery.resolve("any", &NodeConfig::new()).delivery.mode,
        DeliveryMode::ExactlyOnce
    );

    let temporal = Settings::from_json(
        r#"{ "nats": { "servers": ["nats://127.0.0.1:4222"], "capabilities": { "persistence": {
            "enabled": true,
            "keyValue": { "enabled": true, "buckets": { "state": "happen-state", "temporal": "happen-temporal" } },
            "temporal": { "enabled": true, "history": 100, "maxAge": "30d" } } } } }"#,
    )
    .unwrap();
    let t = temporal.temporal.as_ref().unwrap();
    assert_eq!((t.enabled, t.history), (Some(true), Some(100)));
    assert_eq!(t.max_age, Some(Millis(Duration::from_secs(30 * 86_400))));

    let resilience = Settings::from_json(
        r#"{ "nats": { "servers": ["nats://127.0.0.1:4222"],
            "connection": { "reconnect": true, "reconnectTimeWait": 2000, "maxReconnectAttempts": -1 },
            "capabilities": { "delivery": { "mode": "exactly-once", "deduplication": true,
                                            "deduplicationWindow": "5m" } } } }"#,
    )
    .unwrap();
    let reconnect = resilience.nats.as_ref().unwrap().reconnect.clone().unwrap();
    assert_eq!(reconnect.base_delay, Some(Millis(Duration::from_secs(2))));
    assert_eq!(reconnect.max_delay, Some(Millis(Duration::from_secs(2))));
    assert_eq!(reconnect.max_attempts, None, "-1: never give up");
    let d = resilience.delivery.as_ref().unwrap();
    assert_eq!(d.dedup_window, Some(Millis(Duration::from_secs(300))));

    // createNode("payment-service", { delivery: { exactlyOnce, acknowledge,
    // timeout, retries } }), as a pattern's layer.
    let node = Settings::from_json(
        r#"{ "concurrency": { "patterns": { "payment-service": { "delivery": {
            "exactlyOnce": true, "acknowledge": true, "timeout": 5000, "retries": 3 } } } } }"#,
    )
    .unwrap();
    let limits = node
        .happen_config()
        .resolve("payment-service", &NodeConfig::new());
    assert_eq!(limits.delivery.mode, DeliveryMode::ExactlyOnce);
    assert_eq!(limits.delivery.ack_wait, Duration::from_secs(5));
    assert_eq!(
        limits.delivery.max_attempts, 4,
        "three retries after the first"
    );
}

/// What the documentation's forms say that Happen cannot honour, or that
/// contradicts the same key given Happen's way, is an error naming it.
#[test]
fn the_documentations_forms_that_cannot_hold_are_refused_by_name() {
    let refused = |json: &str, key: &str| {
        let error = Settings::from_json(json).unwrap_err().to_string();
        assert!(error.contains(key), "{key} not named: {error}");
    };
    let servers = r#""servers": ["nats://127.0.0.1:4222"]"#;
    refused(
        &format!(r#"{{ "nats": {{ {servers}, "connection": {{ "reconnect": false }} }} }}"#),
        "nats.connection.reconnect",
    );
    refused(
        &format!(r#"{{ "nats": {{ {servers}, "connection": {{ "maxReconnectAttempts": 0 }} }} }}"#),
        "nats.connection.maxReconnectAttempts",
    );
    refused(
        r#"{ "nats": { "servers": ["nats://a:4222"], "connection": { "servers": ["nats://b:4222"] } } }"#,
        "nats.connection.servers",
    );
    refused(
        &format!(
            r#"{{ "nats": {{ {servers}, "capabilities": {{ "persistence": {{ "keyValue": {{ "buckets": {{ "state": "mine" }} }} }} }} }} }}"#
        ),
        "happen-state",
    );
    refused(
        &format!(
            r#"{{ "nats": {{ {servers}, "prefix": "shop", "capabilities": {{ "persistence": {{ "keyValue": {{ "buckets": {{ "state": "happen-state" }} }} }} }} }} }}"#
        ),
        "shop-state",
    );
    refused(
        &format!(
            r#"{{ "nats": {{ {servers}, "capabilities": {{ "flowControl": {{ "enabled": true, "maxPending": 262144 }} }} }} }}"#
        ),
        "nats.capabilities.flowControl.maxPending",
    );
    refused(
        &format!(r#"{{ "nats": {{ {servers}, "capabilities": {{ "sharding": {{}} }} }} }}"#),
        "nats.capabilities.sharding",
    );
    refused(
        r#"{ "delivery": { "mode": "exactly-once", "deduplication": false } }"#,
        "delivery.deduplication",
    );
    refused(
        r#"{ "concurrency": { "default": { "delivery": { "acknowledge": false } } } }"#,
        "concurrency.default.delivery.acknowledge",
    );
    refused(
        r#"{ "delivery": { "mode": "at-least-once", "exactlyOnce": true } }"#,
        "delivery.exactlyOnce",
    );
    // A layer saying what it is not, under one that is exactly-once.
    refused(
        r#"{ "delivery": { "mode": "exactly-once" },
             "concurrency": { "patterns": { "audit-*": { "delivery": { "exactlyOnce": false } } } } }"#,
        "concurrency.patterns.audit-*.delivery.exactlyOnce",
    );
    refused(
        r#"{ "delivery": { "mode": "at-least-once", "deduplication": false } }"#,
        "delivery.deduplication",
    );
}

//! Connecting to NATS: clear errors for what cannot work, and every
//! supported way of authenticating.

use std::time::Duration;

use happen::nats::NatsConfig;
use happen::prelude::*;
use happen_test::NatsServer;

mod support;
use support::*;

#[tokio::test]
async fn unreachable_server_is_an_error_not_a_hang() {
    // A port nobody listens on: bind one, note it, release it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = NatsConfig::new(format!("nats://127.0.0.1:{port}"))
        .connect_timeout(Duration::from_millis(500));
    let err = within("connect error", 30, Happen::connect(config))
        .await
        .unwrap_err();
    assert!(matches!(err, HappenError::Transport { .. }), "{err:?}");
    assert!(err.to_string().contains("cannot connect to NATS"), "{err}");
}

#[tokio::test]
async fn invalid_config_is_an_error() {
    let err = Happen::connect(NatsConfig::new("nats://127.0.0.1:4222").prefix("has space"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, HappenError::Config(ref m) if m.contains("prefix")),
        "{err:?}"
    );
    let err = Happen::connect(NatsConfig::new("nats://127.0.0.1:notaport"))
        .await
        .unwrap_err();
    assert!(matches!(err, HappenError::Config(_)), "{err:?}");
}

#[tokio::test]
async fn jetstream_required_but_missing_is_a_clear_error() {
    let server = NatsServer::start_without_jetstream().unwrap();
    let err = within(
        "connect",
        30,
        Happen::connect(NatsConfig::new(server.url())),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, HappenError::Config(ref m) if m.contains("JetStream")),
        "{err:?}"
    );
    // Without the requirement the same server is fine.
    let happen = Happen::connect(NatsConfig::new(server.url()).jetstream(false))
        .await
        .unwrap();
    // What needs JetStream is refused when the node is made, not later by
    // every other process: a durable node, and a signing one (its key is
    // registered there).
    for (id, config) in [
        (
            "durable",
            NodeConfig::new().delivery(happen::DeliveryConfig::at_least_once()),
        ),
        ("signing", NodeConfig::new().sign(true)),
    ] {
        let err = happen.node_with(id, config).unwrap_err();
        assert!(
            matches!(err, HappenError::Config(ref m) if m.contains("JetStream")),
            "{id}: {err:?}"
        );
    }
    happen.node("plain").unwrap();
    happen.shutdown().await;
}

#[tokio::test]
async fn user_password_auth_is_used() {
    // A server that requires a user: the right password connects, a wrong
    // one is refused with a clear error.
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("auth.conf");
    std::fs::write(&conf, "authorization { user: app, password: s3cret }\n").unwrap();
    let server = AuthServer::start(&["-c", conf.to_str().unwrap()]);
    let auth = |password: &str| happen::nats::Auth::UserPassword {
        user: "app".into(),
        password: password.into(),
    };
    let happen = server.connect(auth("s3cret")).await;
    serves(&happen, "authed").await;
    happen.shutdown().await;
    let err = Happen::connect(server.config(auth("wrong")))
        .await
        .unwrap_err();
    assert!(matches!(err, HappenError::Transport { .. }), "{err:?}");
}

#[tokio::test]
async fn token_auth_is_used() {
    let server = AuthServer::start(&["--auth", "tok-7f3a"]);
    let token = |t: &str| happen::nats::Auth::Token(t.into());
    server.connect(token("tok-7f3a")).await.shutdown().await;
    let err = Happen::connect(server.config(token("wrong")))
        .await
        .unwrap_err();
    assert!(matches!(err, HappenError::Transport { .. }), "{err:?}");
}

/// TLS: a server that requires it accepts a client trusting its certificate,
/// and a client without that trust is refused with a clear error.
/// A self-signed certificate for 127.0.0.1 and its key, as PEM files in
/// `dir`.
fn self_signed(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    let cert = dir.join("server.pem");
    let key = dir.join("server-key.pem");
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

#[tokio::test]
async fn tls_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path());
    let server = AuthServer::start(&[
        "--tls",
        "--tlscert",
        cert.to_str().unwrap(),
        "--tlskey",
        key.to_str().unwrap(),
    ]);
    let tls = |trust: Vec<std::path::PathBuf>| {
        NatsConfig::new(server.url.clone())
            .jetstream(false)
            .connect_timeout(Duration::from_secs(2))
            .tls(happen::nats::Tls {
                required: true,
                root_certificates: trust,
                client_certificate: None,
            })
    };
    let happen = connect_retrying(|| tls(vec![cert.clone()])).await;
    serves(&happen, "secure").await;
    happen.shutdown().await;
    let err = Happen::connect(tls(Vec::new())).await.unwrap_err();
    assert!(
        matches!(err, HappenError::Transport { .. }),
        "an untrusted certificate is refused: {err:?}"
    );
}

/// A credentials file that cannot be read is a clear configuration error
/// before any connection is tried.
#[tokio::test]
async fn unreadable_credentials_file_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.creds");
    let config =
        NatsConfig::new("nats://127.0.0.1:4222").auth(happen::nats::Auth::CredentialsFile(missing));
    let err = Happen::connect(config).await.unwrap_err();
    assert!(
        matches!(err, HappenError::Config(ref m) if m.contains("credentials file")),
        "{err:?}"
    );
    let garbage = dir.path().join("garbage.creds");
    std::fs::write(&garbage, "not a creds file").unwrap();
    let config =
        NatsConfig::new("nats://127.0.0.1:4222").auth(happen::nats::Auth::CredentialsFile(garbage));
    let err = Happen::connect(config).await.unwrap_err();
    assert!(
        matches!(err, HappenError::Config(ref m) if m.contains("credentials file")),
        "{err:?}"
    );
}

/// The servers of a configuration are tried in the order given (async-nats
/// would shuffle them unless told not to): the first one while it is up, the
/// next one when it is not.
#[tokio::test]
async fn servers_are_tried_in_the_listed_order() {
    let mut first = NatsServer::start_without_jetstream().unwrap();
    let second = NatsServer::start_without_jetstream().unwrap();
    let config = |first: &NatsServer| {
        NatsConfig::new(first.url())
            .server(second.url())
            .jetstream(false)
            .connect_timeout(Duration::from_secs(2))
    };
    for _ in 0..10 {
        let happen = Happen::connect(config(&first)).await.unwrap();
        let port = happen.nats_client().unwrap().server_info().port;
        assert_eq!(port, first.port(), "connected to the first listed server");
        happen.shutdown().await;
    }
    first.stop();
    let happen = within("connect to the second", 30, Happen::connect(config(&first)))
        .await
        .unwrap();
    assert_eq!(
        happen.nats_client().unwrap().server_info().port,
        second.port()
    );
    happen.shutdown().await;
}

/// Registers a `ping` handler on each runtime and checks that a node of
/// each reaches the other's (the second runtime connected over `scheme`).
async fn reach_each_other(over_tcp: &Happen, other: &Happen, scheme: &'static str) {
    let answer = move |over: &'static str| {
        move |_e: Event, _cx: Context| async move { json!(format!("pong over {over}")) }
    };
    over_tcp
        .node("tcp-side")
        .unwrap()
        .on("ping", answer("tcp"))
        .unwrap();
    other
        .node("other-side")
        .unwrap()
        .on("ping", answer(scheme))
        .unwrap();
    over_tcp.flush().await.unwrap();
    other.flush().await.unwrap();
    for (from, to, expected) in [
        (other, "tcp-side", "pong over tcp".to_owned()),
        (over_tcp, "other-side", format!("pong over {scheme}")),
    ] {
        let node = from.node("ping-client").unwrap();
        let answer = within(
            "an answer across",
            10,
            node.send(to, Event::new("ping", json!(null))).response(),
        )
        .await
        .unwrap();
        assert_eq!(answer, json!(expected));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_url_joins_the_same_system() {
    // nats-server's WebSocket listener, beside its ordinary port.
    let ws_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = NatsServer::builder()
        .config(format!(
            "websocket {{ listen: \"127.0.0.1:{ws_port}\", no_tls: true }}"
        ))
        .start()
        .unwrap();
    let over_tcp = Happen::connect(NatsConfig::new(server.url()))
        .await
        .unwrap();
    let over_ws = Happen::connect(NatsConfig::new(format!("ws://127.0.0.1:{ws_port}")))
        .await
        .unwrap();
    reach_each_other(&over_tcp, &over_ws, "ws").await;
    // State (JetStream) works through it too.
    let from_ws = over_ws.node("ws-client").unwrap();
    from_ws
        .state()
        .set(|_| json!({ "via": "ws" }))
        .await
        .unwrap();
    assert_eq!(
        over_tcp.state_of("ws-client").unwrap().get().await.unwrap(),
        json!({ "via": "ws" })
    );
    over_ws.shutdown().await;
    over_tcp.shutdown().await;
}

/// An operator's file and variables configure a deployed runtime: the
/// server from a variable, limits from the file; a wrong value fails
/// before anything connects, naming the key.
#[tokio::test]
async fn settings_from_a_file_and_the_environment_connect_and_configure() {
    use happen::settings::Settings;

    let server = NatsServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("happen.toml");
    std::fs::write(
        &file,
        "requestTimeout = \"3s\"\n[nats]\nservers = [\"nats://127.0.0.1:1\"]\n\
         [concurrency.patterns.\"svc-*\"]\nmaxConcurrent = 3\nqueueStrategy = \"priority\"\n",
    )
    .unwrap();
    let vars = vec![
        ("HAPPEN_NATS__SERVERS".to_owned(), server.url()),
        ("HAPPEN_NATS__NAME".to_owned(), "from-settings".to_owned()),
    ];
    let settings = Settings::load_from(Some(&file), vars).unwrap();
    let happen = Happen::from_settings(&settings).await.unwrap();
    let svc = happen.node("svc-1").unwrap();
    assert_eq!(svc.limits().max_concurrent, 3);
    assert_eq!(svc.limits().queue_strategy, happen::QueueStrategy::Priority);
    assert_eq!(svc.limits().timeout, Duration::from_secs(3));
    svc.on("ping", |_e: Event, _cx: Context| async { json!("pong") })
        .unwrap();
    // Another runtime, on its own connection, reaches it through the server.
    let other = Happen::connect(NatsConfig::new(server.url()))
        .await
        .unwrap();
    happen.flush().await.unwrap();
    let answer = other
        .node("caller")
        .unwrap()
        .send("svc-1", Event::new("ping", json!(null)))
        .await
        .unwrap();
    assert_eq!(answer, json!("pong"));

    let wrong = Settings::load_from(
        Some(&file),
        vec![(
            "HAPPEN_NATS__RECONNECT__MAX_DELAY".to_owned(),
            "later".to_owned(),
        )],
    )
    .unwrap_err();
    assert!(
        wrong.to_string().contains("nats.reconnect.maxDelay"),
        "{wrong}"
    );
    other.shutdown().await;
    happen.shutdown().await;
}

/// `wss://`: nats-server's WebSocket listener with TLS (a self-signed
/// certificate the client is told to trust). A runtime on it reaches one on
/// the ordinary port; without the certificate it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secure_websocket_url_joins_the_same_system() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path());
    let wss_port = free_port();
    let server = NatsServer::builder()
        .config(format!(
            "websocket {{ listen: \"127.0.0.1:{wss_port}\", tls {{ cert_file: \"{}\", key_file: \"{}\" }} }}",
            cert.display(),
            key.display()
        ))
        .start()
        .unwrap();
    let wss = |trust: Vec<std::path::PathBuf>| {
        NatsConfig::new(format!("wss://127.0.0.1:{wss_port}"))
            .jetstream(false)
            .connect_timeout(Duration::from_secs(2))
            .tls(happen::nats::Tls {
                required: true,
                root_certificates: trust,
                client_certificate: None,
            })
    };
    let over_wss = connect_retrying(|| wss(vec![cert.clone()])).await;
    let over_tcp = Happen::connect(NatsConfig::new(server.url()).jetstream(false))
        .await
        .unwrap();
    reach_each_other(&over_tcp, &over_wss, "wss").await;
    let refused = Happen::connect(wss(Vec::new())).await.unwrap_err();
    assert!(
        matches!(refused, HappenError::Transport { .. }),
        "{refused:?}"
    );
    over_wss.shutdown().await;
    over_tcp.shutdown().await;
}

/// Stream names fold the subject prefix's case and punctuation: a second
/// system whose prefix folds to the same name is told so when it connects,
/// rather than having its durable events and trace records captured by no
/// stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefixes_that_name_one_stream_are_refused_clearly() {
    let server = happen_test::NatsServer::start().unwrap();
    let first = Happen::connect(
        NatsConfig::new(server.url())
            .prefix("shop.eu")
            .record(happen::trace::TraceRetention::default()),
    )
    .await
    .unwrap();
    first.flush().await.unwrap();
    let second = Happen::connect(
        NatsConfig::new(server.url())
            .prefix("shop_eu")
            .record(happen::trace::TraceRetention::default()),
    )
    .await;
    let error = second.expect_err("the second prefix was taken");
    assert!(matches!(error, HappenError::Config(_)), "{error}");
    assert!(error.to_string().contains("SHOP_EU"), "{error}");
    // A prefix of its own works beside the first.
    let third = Happen::connect(NatsConfig::new(server.url()).prefix("shop.us"))
        .await
        .unwrap();
    third.flush().await.unwrap();
}

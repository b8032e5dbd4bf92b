//! NATS-specific behaviour: connection errors, connection status events,
//! delivery across a server restart, and hostile bytes on the wire.

use std::time::Duration;

use happen::nats::{NatsConfig, Reconnect};
use happen::prelude::*;
use happen_test::NatsServer;
use tokio::sync::mpsc;

fn fast_reconnect(url: String) -> NatsConfig {
    NatsConfig::new(url).reconnect(Reconnect {
        max_attempts: None,
        base_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(250),
    })
}

async fn within<T>(what: &str, secs: u64, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within {secs} s"))
}

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
    happen.shutdown().await;
}

/// A nats-server started with extra arguments (an auth setting) on a free
/// loopback port; killed on drop.
struct AuthServer {
    child: std::process::Child,
    url: String,
}

impl AuthServer {
    fn start(extra: &[&str]) -> AuthServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let port_arg = port.to_string();
        let mut args = vec!["-a", "127.0.0.1", "-p", &port_arg];
        args.extend_from_slice(extra);
        let child = std::process::Command::new(NatsServer::binary())
            .args(args)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        AuthServer {
            child,
            url: format!("nats://127.0.0.1:{port}"),
        }
    }

    fn config(&self, auth: happen::nats::Auth) -> NatsConfig {
        NatsConfig::new(self.url.clone())
            .jetstream(false)
            .connect_timeout(Duration::from_secs(2))
            .auth(auth)
    }

    /// Connects with `auth`, retrying while the server starts.
    async fn connect(&self, auth: happen::nats::Auth) -> Happen {
        connect_retrying(|| self.config(auth.clone())).await
    }
}

/// Connects with `config()`, retrying while a just-started server comes up.
async fn connect_retrying(config: impl Fn() -> NatsConfig) -> Happen {
    for _ in 0..50 {
        if let Ok(happen) = Happen::connect(config()).await {
            return happen;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("could not connect with the right credentials");
}

/// A node of `happen` answers a request sent through the server.
async fn serves(happen: &Happen, id: &str) {
    let node = happen.node(id).unwrap();
    node.on("ping", |_e: Event, _cx: Context| async { json!("pong") })
        .unwrap();
    assert_eq!(
        node.send(&node, Event::new("ping", json!(null)))
            .await
            .unwrap(),
        json!("pong")
    );
}

impl Drop for AuthServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_is_reported_and_events_sent_during_it_arrive_after_reconnection() {
    let mut server = NatsServer::start().unwrap();
    let happen = Happen::connect(fast_reconnect(server.url())).await.unwrap();
    let watcher = happen.node("watcher").unwrap();
    let sink = happen.node("sink").unwrap();
    let source = happen.node("source").unwrap();

    let (status_tx, mut status_rx) = mpsc::unbounded_channel();
    watcher
        .on(happen::CONNECTION_STATUS, move |e: Event, _cx: Context| {
            let tx = status_tx.clone();
            async move {
                assert_eq!(e.causal().sender, happen::SYSTEM_SENDER);
                let _ = tx.send(e.payload()["status"].as_str().unwrap_or("").to_owned());
            }
        })
        .unwrap();
    let (got_tx, mut got_rx) = mpsc::unbounded_channel();
    sink.on("outage.note", move |e: Event, _cx: Context| {
        let tx = got_tx.clone();
        async move {
            let _ = tx.send(e.payload()["n"].as_i64().unwrap());
            json!("noted")
        }
    })
    .unwrap();
    happen.flush().await.unwrap();
    // Working before the outage.
    assert_eq!(
        source
            .send(&sink, Event::new("outage.note", json!({ "n": -1 })))
            .await
            .unwrap(),
        "noted"
    );
    assert_eq!(got_rx.recv().await.unwrap(), -1);

    server.stop();
    let status = within("disconnected status", 30, async {
        loop {
            let s = status_rx.recv().await.unwrap();
            if s == "disconnected" {
                return s;
            }
        }
    })
    .await;
    assert_eq!(status, "disconnected");

    // Published while the server is down.
    for n in 0..5 {
        source
            .broadcast(Event::new("outage.note", json!({ "n": n })))
            .unwrap();
    }
    let request = source
        .send(&sink, Event::new("outage.note", json!({ "n": 100 })))
        .timeout(Duration::from_secs(30));

    server.restart().unwrap();
    // The documentation's name for a restored connection.
    within("reconnected status", 30, async {
        while status_rx.recv().await.unwrap() != "reconnected" {}
    })
    .await;

    assert_eq!(
        within("request answer", 30, request.response())
            .await
            .unwrap(),
        "noted"
    );
    let mut seen: Vec<i64> = Vec::new();
    within("the outage's events", 30, async {
        while seen.len() < 6 {
            seen.push(got_rx.recv().await.unwrap());
        }
    })
    .await;
    seen.sort();
    assert_eq!(
        seen,
        vec![0, 1, 2, 3, 4, 100],
        "nothing lost, nothing twice"
    );
    happen.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_during_an_outage_finishes() {
    let mut server = NatsServer::start().unwrap();
    let happen = Happen::connect(fast_reconnect(server.url())).await.unwrap();
    let node = happen.node("lonely").unwrap();
    node.on("x", |_e: Event, _cx: Context| async {}).unwrap();
    happen.flush().await.unwrap();
    server.stop();
    assert!(
        happen.shutdown_within(Duration::from_secs(20)).await,
        "shutdown drained"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_request_to_a_dead_instance_does_not_block_shutdown() {
    let server = NatsServer::start().unwrap();
    // An "instance" of node ghost that takes requests and never answers.
    let raw = async_nats::connect(server.url()).await.unwrap();
    let _ghost = raw
        .queue_subscribe("happen.node.ghost", "happen".into())
        .await
        .unwrap();
    raw.flush().await.unwrap();
    let happen = Happen::connect(NatsConfig::new(server.url()))
        .await
        .unwrap();
    let a = happen.node("asker").unwrap();
    let held = a
        .send("ghost", Event::new("x", json!(null)))
        .timeout(Duration::from_millis(300));
    assert!(happen.shutdown_within(Duration::from_secs(20)).await);
    assert!(matches!(
        held.await.unwrap_err(),
        HappenError::Timeout { .. } | HappenError::NoResponse { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_refuses_new_work_from_other_processes() {
    let server = NatsServer::start().unwrap();
    let a = Happen::connect(NatsConfig::new(server.url()))
        .await
        .unwrap();
    let b = Happen::connect(NatsConfig::new(server.url()))
        .await
        .unwrap();
    let svc = a.node("svc").unwrap();
    svc.on("work", |_e: Event, _cx: Context| async {
        tokio::time::sleep(Duration::from_millis(30)).await;
        json!("done")
    })
    .unwrap();
    a.flush().await.unwrap();
    let client = b.node("client").unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s = stop.clone();
    let load = tokio::spawn(async move {
        let mut refused = 0;
        while !s.load(std::sync::atomic::Ordering::Relaxed) {
            let sent = client
                .send("svc", Event::new("work", json!(null)))
                .timeout(Duration::from_secs(5));
            tokio::spawn(async move { sent.await });
            if let Err(HappenError::Shutdown) =
                client.send("svc", Event::new("work", json!(null))).await
            {
                refused += 1;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        refused
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        a.shutdown_within(Duration::from_secs(20)).await,
        "a busy node still shuts down"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = load.await.unwrap();
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_runtime_stops_serving_its_node_id() {
    let server = NatsServer::start().unwrap();
    let old = Happen::connect(NatsConfig::new(server.url()))
        .await
        .unwrap();
    old.node("svc")
        .unwrap()
        .on("who", |_e: Event, _cx: Context| async { json!("old") })
        .unwrap();
    old.flush().await.unwrap();
    drop(old);
    let new = Happen::connect(NatsConfig::new(server.url()))
        .await
        .unwrap();
    let svc = new.node("svc").unwrap();
    svc.on("who", |_e: Event, _cx: Context| async { json!("new") })
        .unwrap();
    new.flush().await.unwrap();
    let asker = new.node("asker").unwrap();
    for _ in 0..20 {
        assert_eq!(
            asker
                .send("svc", Event::new("who", json!(null)))
                .await
                .unwrap(),
            json!("new")
        );
    }
    new.shutdown().await;
}

/// TLS: a server that requires it accepts a client trusting its certificate,
/// and a client without that trust is refused with a clear error.
#[tokio::test]
async fn tls_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    let cert = dir.path().join("server.pem");
    let key = dir.path().join("server-key.pem");
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
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

/// Global state and views are shared by every runtime connected to the
/// server (as separate processes would be), and a watch in one sees changes
/// made by another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_state_and_views_span_runtimes() {
    use futures::StreamExt;
    let server = NatsServer::start().unwrap();
    let a = Happen::connect(NatsConfig::new(server.url()))
        .await
        .unwrap();
    let b = Happen::connect(NatsConfig::new(server.url()))
        .await
        .unwrap();
    let writer = a.node("writer").unwrap();
    let reader = b.node("reader").unwrap();
    let mut watch = reader.global().watch("dataset:big").await.unwrap();

    writer
        .global()
        .set("dataset:big", json!({ "rows": [1, 2, 3] }))
        .await
        .unwrap();
    writer
        .state()
        .set(|_| json!({ "owner": "a" }))
        .await
        .unwrap();

    assert_eq!(
        reader.global().get("dataset:big").await.unwrap(),
        Some(json!({ "rows": [1, 2, 3] }))
    );
    assert_eq!(
        reader.view("writer").get().await.unwrap(),
        Some(json!({ "owner": "a" }))
    );
    let change = within("watched change", 10, watch.next()).await.unwrap();
    assert_eq!(change.key, "dataset:big");
    assert_eq!(change.value, Some(json!({ "rows": [1, 2, 3] })));
    a.shutdown().await;
    b.shutdown().await;
}

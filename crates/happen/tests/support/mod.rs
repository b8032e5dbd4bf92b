//! Helpers shared by the NATS test binaries (each uses part of them).

#![allow(dead_code)]

use std::time::Duration;

use happen::nats::{NatsConfig, Reconnect};
use happen::prelude::*;
use happen_test::NatsServer;

pub fn fast_reconnect(url: String) -> NatsConfig {
    NatsConfig::new(url).reconnect(Reconnect {
        max_attempts: None,
        base_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(250),
    })
}

pub async fn within<T>(what: &str, secs: u64, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within {secs} s"))
}

/// A nats-server started with extra arguments (an auth setting) on a free
/// loopback port; killed on drop.
pub struct AuthServer {
    child: std::process::Child,
    pub url: String,
}

impl AuthServer {
    pub fn start(extra: &[&str]) -> AuthServer {
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

    pub fn config(&self, auth: happen::nats::Auth) -> NatsConfig {
        NatsConfig::new(self.url.clone())
            .jetstream(false)
            .connect_timeout(Duration::from_secs(2))
            .auth(auth)
    }

    /// Connects with `auth`, retrying while the server starts.
    pub async fn connect(&self, auth: happen::nats::Auth) -> Happen {
        connect_retrying(|| self.config(auth.clone())).await
    }
}

/// Connects with `config()`, retrying while a just-started server comes up.
pub async fn connect_retrying(config: impl Fn() -> NatsConfig) -> Happen {
    for _ in 0..50 {
        if let Ok(happen) = Happen::connect(config()).await {
            return happen;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("could not connect with the right credentials");
}

/// A node of `happen` answers a request sent through the server.
pub async fn serves(happen: &Happen, id: &str) {
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

/// A runtime connected to `server` with the default configuration.
pub async fn connect(server: &NatsServer) -> Happen {
    Happen::connect(NatsConfig::new(server.url()))
        .await
        .expect("connects to the test server")
}

/// The payloads of the `system.rejected` events `happen` reports, as they
/// come (a handler on the runtime's own node).
pub fn rejections(happen: &Happen) -> tokio::sync::mpsc::UnboundedReceiver<serde_json::Value> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    happen
        .on(happen::system::REJECTED, move |e: Event, _cx: Context| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(e.payload().clone());
            }
        })
        .unwrap();
    rx
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

type Connections = std::sync::Arc<tokio::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>;

/// A TCP forwarder on loopback that can be cut (every connection dropped,
/// new ones refused) and restored: a network link a test controls.
pub struct Link {
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    connections: Connections,
}

impl Link {
    /// Forwards connections to `listen` on to `target`.
    pub async fn start(listen: u16, target: u16) -> Link {
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", listen))
            .await
            .unwrap();
        let open = std::sync::Arc::new(AtomicBool::new(true));
        let connections = Connections::default();
        let (o, c) = (open.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !o.load(Ordering::SeqCst) {
                    continue; // dropped: the link is down
                }
                let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                else {
                    continue;
                };
                c.lock().await.push(tokio::spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }));
            }
        });
        Link { open, connections }
    }

    /// Drops every connection and refuses new ones.
    pub async fn cut(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        for connection in self.connections.lock().await.drain(..) {
            connection.abort();
        }
    }

    /// Takes connections again.
    pub fn restore(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Starts `test` (an ignored test of this binary) in a child process with
/// the server's `url` in the environment variable `var`, and returns it
/// once it prints the line `ready`. Blocking: call it from
/// `spawn_blocking`.
pub fn start_child(test: &str, var: &str, url: &str, ready: &str) -> std::process::Child {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--ignored", "--nocapture"])
        .env(var, url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufReader::new(stdout).lines();
    assert!(
        lines.any(|l| l.is_ok_and(|l| l.trim() == ready)),
        "{test} did not start"
    );
    child
}

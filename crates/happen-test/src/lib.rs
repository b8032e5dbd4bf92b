//! Test support for Happen: a throwaway `nats-server` for tests of
//! NATS-backed systems.
//!
//! [`NatsServer::start`] runs `nats-server -js` on a free loopback port with a
//! temporary JetStream store, waits until it is ready, and stops it when the
//! value is dropped. The binary is `$HAPPEN_NATS_SERVER` if set, otherwise
//! `nats-server` on `PATH` (`scripts/ensure-nats-server` installs one).
//! [`NatsServer::builder`] adds server settings (a configuration file's
//! lines, extra arguments) for tests that need them. [`round_trip`] and
//! [`subscribed`] tell when the server has taken what a raw `async_nats`
//! client sent (its `flush` does not wait for the server).
//!
//! This crate is separate from `happen` so that the library carries no test
//! harness; it depends on nothing of `happen`, and reports failures as
//! [`std::io::Error`]s.
//!
//! ```no_run
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use happen::{Happen, NatsConfig};
//! use happen_test::NatsServer;
//!
//! let server = NatsServer::start()?;
//! let happen = Happen::connect(NatsConfig::new(server.url())).await?;
//!
//! let small = NatsServer::builder().config("max_payload: 4096").start()?;
//! # Ok(()) }
//! ```

mod raw;
pub use raw::{round_trip, subscribed};

use std::io::{self, BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long to wait for a started server to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// How a [`NatsServer`] is started; see [`NatsServer::builder`].
#[derive(Debug, Clone)]
pub struct Builder {
    jetstream: bool,
    monitoring: bool,
    config: Vec<String>,
    args: Vec<String>,
}

impl Builder {
    /// Without JetStream (core NATS only).
    pub fn without_jetstream(mut self) -> Self {
        self.jetstream = false;
        self
    }

    /// Turns on the server's HTTP monitoring endpoint on a free loopback
    /// port; read it with [`NatsServer::monitor`].
    pub fn monitoring(mut self) -> Self {
        self.monitoring = true;
        self
    }

    /// Adds a line to the server's configuration file (nats-server's own
    /// syntax, e.g. `max_payload: 4096`).
    pub fn config(mut self, line: impl Into<String>) -> Self {
        self.config.push(line.into());
        self
    }

    /// Adds a command-line argument (e.g. `--user`, `alice`).
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Starts the server on a free loopback port and waits until it is ready.
    pub fn start(mut self) -> io::Result<NatsServer> {
        let store = tempfile::tempdir()?;
        let binary = NatsServer::binary();
        let monitor_port = if self.monitoring {
            let port = free_port()?;
            // Loopback only (the flag -m would listen on every interface).
            self.config.push(format!("http: \"127.0.0.1:{port}\""));
            Some(port)
        } else {
            None
        };
        let config_file = if self.config.is_empty() {
            None
        } else {
            let path = store.path().join("nats-server.conf");
            std::fs::write(&path, self.config.join("\n") + "\n")?;
            Some(path)
        };
        let mut server = NatsServer {
            child: None,
            port: 0,
            monitor_port,
            store,
            binary,
            settings: self,
            config_file,
        };
        let (child, port) = server.spawn(None)?;
        server.child = Some(child);
        server.port = port;
        Ok(server)
    }
}

/// A `nats-server` child process on a loopback port, stopped on drop.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    monitor_port: Option<u16>,
    store: tempfile::TempDir,
    binary: PathBuf,
    settings: Builder,
    config_file: Option<PathBuf>,
}

fn error(message: String) -> io::Error {
    io::Error::other(message)
}

/// A loopback port nobody listens on right now.
fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl NatsServer {
    /// The server binary: `$HAPPEN_NATS_SERVER`, else `nats-server` on `PATH`.
    pub fn binary() -> PathBuf {
        std::env::var_os("HAPPEN_NATS_SERVER")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("nats-server"))
    }

    /// A builder for a server with JetStream and no other settings.
    pub fn builder() -> Builder {
        Builder {
            jetstream: true,
            monitoring: false,
            config: Vec::new(),
            args: Vec::new(),
        }
    }

    /// Starts a server with JetStream on a free loopback port.
    pub fn start() -> io::Result<NatsServer> {
        Self::builder().start()
    }

    /// Starts a server without JetStream (core NATS only).
    pub fn start_without_jetstream() -> io::Result<NatsServer> {
        Self::builder().without_jetstream().start()
    }

    /// The client URL, `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The body of a monitoring endpoint's answer (e.g. `/connz?subs=1`, a
    /// JSON document); the server must have been built with
    /// [`Builder::monitoring`].
    pub fn monitor(&self, path: &str) -> io::Result<String> {
        use std::io::{Read, Write};
        let port = self.monitor_port.ok_or_else(|| {
            error("monitoring is off; build the server with .monitoring()".into())
        })?;
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            stream,
            "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let (head, body) = response
            .split_once("\r\n\r\n")
            .ok_or_else(|| error("a malformed HTTP answer".into()))?;
        if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
            return Err(error(format!(
                "monitoring answered {}",
                head.lines().next().unwrap_or("")
            )));
        }
        Ok(body.to_owned())
    }

    /// Whether the server process is running (it was not stopped).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Stops the server (clients see a disconnect).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port with the same store (after
    /// [`NatsServer::stop`], or as a restart).
    pub fn restart(&mut self) -> io::Result<()> {
        self.stop();
        // The port was just released; give the OS a few tries to hand it back.
        let mut last = None;
        for _ in 0..20 {
            match self.spawn(Some(self.port)) {
                Ok((child, _)) => {
                    self.child = Some(child);
                    return Ok(());
                }
                Err(e) => {
                    last = Some(e);
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        Err(last.unwrap_or_else(|| error("nats-server did not restart".into())))
    }

    fn spawn(&self, port: Option<u16>) -> io::Result<(Child, u16)> {
        let port_arg = port.map_or_else(|| "-1".to_owned(), |p| p.to_string());
        let store = self.store.path().to_string_lossy().into_owned();
        let mut args: Vec<String> = vec!["-a".into(), "127.0.0.1".into(), "-p".into(), port_arg];
        if let Some(config) = &self.config_file {
            args.extend(["-c".into(), config.to_string_lossy().into_owned()]);
        }
        if self.settings.jetstream {
            args.extend(["-js".into(), "-sd".into(), store]);
        }
        args.extend(self.settings.args.iter().cloned());
        let mut child = Command::new(&self.binary)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                error(format!(
                    "cannot start {}: {e}; install it with scripts/ensure-nats-server or set HAPPEN_NATS_SERVER",
                    self.binary.display()
                ))
            })?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| error("nats-server's stderr is not piped".into()))?;
        let (tx, rx) = mpsc::channel();
        // Keep reading the log for the server's whole life: a full pipe would
        // block it.
        std::thread::spawn(move || {
            let mut port = None;
            for line in BufReader::new(stderr)
                .lines()
                .map_while(std::io::Result::ok)
            {
                if let Some(rest) = line.split("Listening for client connections on ").nth(1) {
                    port = rest
                        .rsplit(':')
                        .next()
                        .and_then(|p| p.trim().parse::<u16>().ok());
                }
                if line.contains("Server is ready") {
                    let _ = tx.send(port.ok_or_else(|| "no client port in the log".to_owned()));
                }
                if line.contains("[FTL]") {
                    let _ = tx.send(Err(line.clone()));
                }
            }
            let _ = tx.send(Err("nats-server exited".to_owned()));
        });
        let failed = |mut child: Child, why: String| {
            let _ = child.kill();
            let _ = child.wait();
            Err(error(why))
        };
        match rx.recv_timeout(READY_TIMEOUT) {
            Ok(Ok(port)) => Ok((child, port)),
            Ok(Err(why)) => failed(child, format!("nats-server did not start: {why}")),
            Err(_) => failed(
                child,
                format!(
                    "nats-server was not ready within {}s",
                    READY_TIMEOUT.as_secs()
                ),
            ),
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Several `nats-server`s on loopback ports joined in one JetStream
/// cluster (routes between all of them), each with its own store; stopped
/// on drop.
///
/// A cluster needs a moment after start to elect its JetStream leader:
/// connect with retries.
#[derive(Debug)]
pub struct NatsCluster {
    servers: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts `size` servers (at least 1) in one cluster.
    pub fn start(size: usize) -> io::Result<NatsCluster> {
        let routes: Vec<u16> = (0..size.max(1))
            .map(|_| free_port())
            .collect::<io::Result<_>>()?;
        let all = routes
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let servers = routes
            .iter()
            .enumerate()
            .map(|(i, port)| {
                NatsServer::builder()
                    .arg("--cluster_name")
                    .arg("happen-test")
                    .arg("--server_name")
                    .arg(format!("n{i}"))
                    .arg("--cluster")
                    .arg(format!("nats://127.0.0.1:{port}"))
                    .arg("--routes")
                    .arg(all.clone())
                    .start()
            })
            .collect::<io::Result<_>>()?;
        Ok(NatsCluster { servers })
    }

    /// The client URLs of every server, in order.
    pub fn urls(&self) -> Vec<String> {
        self.servers.iter().map(NatsServer::url).collect()
    }

    /// The `i`-th server (to stop or restart it).
    pub fn server(&mut self, i: usize) -> &mut NatsServer {
        &mut self.servers[i]
    }
}

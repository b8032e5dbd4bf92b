//! Test support: a throwaway `nats-server` for tests of NATS-backed systems.
//!
//! [`NatsServer::start`] runs `nats-server -js` on a free loopback port with a
//! temporary JetStream store, waits until it is ready, and stops it when the
//! value is dropped. The binary is `$HAPPEN_NATS_SERVER` if set, otherwise
//! `nats-server` on `PATH` (`scripts/ensure-nats-server` installs one).
//!
//! ```no_run
//! # #[tokio::main] async fn main() -> happen::Result<()> {
//! use happen::testing::NatsServer;
//! use happen::{Happen, NatsConfig};
//!
//! let server = NatsServer::start()?;
//! let happen = Happen::connect(NatsConfig::new(server.url())).await?;
//! # Ok(()) }
//! ```

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::error::{HappenError, Result};

/// How long to wait for a started server to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A `nats-server` child process, stopped on drop.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    store: tempfile::TempDir,
    binary: PathBuf,
    jetstream: bool,
}

impl NatsServer {
    /// The server binary: `$HAPPEN_NATS_SERVER`, else `nats-server` on `PATH`.
    pub fn binary() -> PathBuf {
        std::env::var_os("HAPPEN_NATS_SERVER")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("nats-server"))
    }

    /// Starts a server with JetStream on a free loopback port.
    pub fn start() -> Result<NatsServer> {
        Self::start_with(true)
    }

    /// Starts a server without JetStream (core NATS only).
    pub fn start_without_jetstream() -> Result<NatsServer> {
        Self::start_with(false)
    }

    fn start_with(jetstream: bool) -> Result<NatsServer> {
        let store = tempfile::tempdir()
            .map_err(|e| HappenError::Transport(format!("cannot create a store directory: {e}")))?;
        let binary = Self::binary();
        let (child, port) = spawn(&binary, None, &store.path().to_string_lossy(), jetstream)?;
        Ok(NatsServer {
            child: Some(child),
            port,
            store,
            binary,
            jetstream,
        })
    }

    /// The client URL, `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
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
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        let store = self.store.path().to_string_lossy().into_owned();
        // The port was just released; give the OS a few tries to hand it back.
        let mut last = None;
        for _ in 0..20 {
            match spawn(&self.binary, Some(self.port), &store, self.jetstream) {
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
        Err(last.unwrap_or_else(|| HappenError::Transport("nats-server did not restart".into())))
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn(
    binary: &PathBuf,
    port: Option<u16>,
    store: &str,
    jetstream: bool,
) -> Result<(Child, u16)> {
    let port_arg = port.map_or_else(|| "-1".to_owned(), |p| p.to_string());
    let mut args = vec!["-a", "127.0.0.1", "-p", &port_arg];
    if jetstream {
        args.extend(["-js", "-sd", store]);
    }
    let mut child = Command::new(binary)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            HappenError::Transport(format!(
                "cannot start {}: {e}; install it with scripts/ensure-nats-server or set HAPPEN_NATS_SERVER",
                binary.display()
            ))
        })?;
    let stderr = child.stderr.take().expect("stderr is piped");
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
    match rx.recv_timeout(READY_TIMEOUT) {
        Ok(Ok(port)) => Ok((child, port)),
        Ok(Err(why)) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(HappenError::Transport(format!(
                "nats-server did not start: {why}"
            )))
        }
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(HappenError::Transport(format!(
                "nats-server was not ready within {}s",
                READY_TIMEOUT.as_secs()
            )))
        }
    }
}

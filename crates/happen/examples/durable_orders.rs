//! An order system that survives a killed payment process.
//!
//! The shop (this process) sends orders to the `payments` node, which runs in
//! a process of its own and tells the shop's `ledger` node each payment it
//! captured. Both nodes are exactly-once: the orders wait in JetStream while
//! the payment process is down, and a payment flow that the kill cut short
//! runs again without capturing twice (the events it emits again keep their
//! ids, so the stream drops the copies). The payment process is killed with
//! SIGKILL in the middle of the stream, then started again; at the end the
//! ledger must hold every order exactly once.
//!
//! ```text
//! # with nats-server on PATH or in $HAPPEN_NATS_SERVER (scripts/ensure-nats-server
//! # installs one), a throwaway server is started for the demo:
//! HAPPEN_NATS_SERVER=$(scripts/ensure-nats-server) cargo run --example durable_orders
//! # or against a server of yours (started with -js):
//! cargo run --example durable_orders -- --nats nats://127.0.0.1:4222
//! ```
//!
//! The payment handler shows where an external side effect goes: a charge
//! at a payment provider is at-least-once (the flow may be cut after the
//! charge), so it is keyed by the event id, which is the same on every
//! attempt.

use std::collections::HashMap;
use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use happen::nats::NatsConfig;
use happen::prelude::*;
use happen::{DeliveryConfig, Node};

const ORDERS: u64 = 300;

fn exactly_once() -> NodeConfig {
    NodeConfig::new().max_concurrent(1).delivery(
        DeliveryConfig::exactly_once()
            .backoff(Duration::from_millis(20), Duration::from_millis(500))
            // A flow cut short by the kill is handed out again after 2 s.
            .ack_wait(Duration::from_secs(2)),
    )
}

/// The payment process: charges each order and tells the ledger.
async fn payment_process(url: String) -> happen::Result<()> {
    let happen = Happen::connect(NatsConfig::new(url)).await?;
    let payments = happen.node_with("payments", exactly_once())?;
    payments.on("order.pay", |event: Event, cx: Context| async move {
        let order = event.payload()["order"].clone();
        // The provider call would go here, with `event.id()` as its
        // idempotency key.
        tokio::time::sleep(Duration::from_millis(3)).await;
        cx.node().tell(
            "ledger",
            Event::new(
                "payment.captured",
                json!({ "order": order, "key": event.id() }),
            ),
        )?;
        Ok::<_, HappenError>(())
    })?;
    happen.flush().await?;
    println!("ready");
    std::future::pending::<()>().await;
    Ok(())
}

/// Starts the payment process and waits until it consumes its orders.
fn start_payments(url: &str) -> std::io::Result<Child> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["--role", "payments", "--nats", url])
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().expect("piped");
    let ready = std::io::BufReader::new(stdout)
        .lines()
        .any(|line| line.is_ok_and(|l| l.trim() == "ready"));
    if !ready {
        let _ = child.kill();
        return Err(std::io::Error::other("the payment process did not start"));
    }
    Ok(child)
}

/// Captured payments by order, as the ledger counted them.
#[derive(Clone, Default)]
struct Ledger(Arc<Mutex<HashMap<u64, u32>>>);

impl Ledger {
    fn attach(&self, node: &Node) -> happen::Result<()> {
        let ledger = self.clone();
        node.on("payment.captured", move |event: Event, _cx: Context| {
            let ledger = ledger.clone();
            async move {
                let order = event.payload()["order"].as_u64().unwrap_or(u64::MAX);
                *ledger.0.lock().unwrap().entry(order).or_default() += 1;
            }
        })?;
        Ok(())
    }

    fn captured(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    async fn wait_for(&self, n: usize, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while self.captured() < n {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }
}

async fn shop(url: String) -> Result<(), Box<dyn std::error::Error>> {
    let happen = Happen::connect(NatsConfig::new(url.clone())).await?;
    let ledger_node = happen.node_with("ledger", exactly_once())?;
    let ledger = Ledger::default();
    ledger.attach(&ledger_node)?;
    happen.flush().await?;

    let mut payments = start_payments(&url)?;
    let shop = happen.node("shop")?;
    for order in 0..ORDERS {
        shop.tell(
            "payments",
            Event::new("order.pay", json!({ "order": order })),
        )?;
    }
    happen.flush().await?; // every order is stored
    println!("{ORDERS} orders stored in JetStream");

    // Kill the payment process mid-stream (SIGKILL: no clean shutdown).
    assert!(
        ledger.wait_for(60, Duration::from_secs(30)).await,
        "the first 60 payments did not arrive within 30 s"
    );
    payments.kill()?;
    payments.wait()?;
    let at_kill = ledger.captured();
    println!("payment process killed after {at_kill} payments");
    tokio::time::sleep(Duration::from_millis(300)).await;
    println!(
        "while it is down, the orders wait: {} captured (a capture on its way when it died may land now)",
        ledger.captured()
    );

    let mut payments = tokio::task::spawn_blocking(move || start_payments(&url)).await??;
    println!("payment process started again");
    let complete = ledger
        .wait_for(ORDERS as usize, Duration::from_secs(60))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await; // late copies would show now
    payments.kill()?;
    payments.wait()?;

    let counts = ledger.0.lock().unwrap().clone();
    let captured: u32 = counts.values().sum();
    let duplicated = captured.saturating_sub(counts.len() as u32);
    let lost = ORDERS - counts.len() as u64;
    println!("orders {ORDERS}, captured {captured}, lost {lost}, duplicated {duplicated}");
    happen.shutdown().await;
    if !complete || lost > 0 || duplicated > 0 {
        return Err("the ledger does not hold every order exactly once".into());
    }
    println!("every order paid exactly once, across a killed payment process");
    Ok(())
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if arg("--role").as_deref() == Some("payments") {
        let url = arg("--nats").ok_or("--role payments needs --nats URL")?;
        payment_process(url).await?;
        return Ok(());
    }
    // A server of the user's, or a throwaway one for the demo.
    let (url, _server) = match arg("--nats") {
        Some(url) => (url, None),
        None => {
            let server = happen_test::NatsServer::start().map_err(|e| {
                format!("{e}\n(or pass --nats URL for a nats-server started with -js)")
            })?;
            (server.url(), Some(server))
        }
    };
    shop(url).await
}

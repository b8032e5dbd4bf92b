//! Causality crosses process boundaries: the demo's services and storefront
//! run as two OS processes talking through nats-server, and every event
//! either of them saw belongs to one correlation, with paths that span both.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use happen_test::NatsServer;
use serde_json::Value;

const SERVICES: [&str; 4] = [
    "inventory-service",
    "payment-service",
    "shipping-service",
    "notification-service",
];
const STOREFRONT: [&str; 2] = ["storefront", "order-service"];

struct KillOnDrop(Option<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn traces(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("TRACE "))
        .map(|j| serde_json::from_str(j).expect("trace lines are JSON"))
        .collect()
}

#[test]
fn causality_spans_two_processes() {
    let server = NatsServer::start().expect("nats-server starts");
    let demo = env!("CARGO_BIN_EXE_happen");
    let url = server.url();

    let mut services = KillOnDrop(Some(
        Command::new(demo)
            .args(["demo", "--nats", &url, "--role", "services", "--trace-json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    ));
    // Wait for READY, keeping the rest of its output.
    let stdout = services.0.as_mut().unwrap().stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    // The reader hands over the first line, then keeps the rest until the
    // process closes its output: joining it waits for every line.
    let reader = std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
        if let Some(first) = lines.next() {
            let _ = tx.send(first);
        }
        lines.collect::<Vec<_>>()
    });
    let first = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("services start");
    assert!(first.starts_with("READY"), "{first}");

    let storefront: Output = Command::new(demo)
        .args([
            "demo",
            "--nats",
            &url,
            "--role",
            "storefront",
            "--trace-json",
        ])
        .output()
        .unwrap();
    let storefront_out = String::from_utf8_lossy(&storefront.stdout).into_owned();
    assert!(
        storefront.status.success(),
        "storefront failed:\n{storefront_out}\n{}",
        String::from_utf8_lossy(&storefront.stderr)
    );
    assert!(
        storefront_out.contains("\"success\": true"),
        "{storefront_out}"
    );

    let mut child = services.0.take().unwrap();
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "the services process ends after order.completed"
    );
    let services_out: String = reader.join().expect("reader thread").join("\n");

    let (a, b) = (traces(&storefront_out), traces(&services_out));
    assert!(
        a.len() >= 4 && b.len() >= 4,
        "both processes saw events:\n{storefront_out}\n{services_out}"
    );
    let correlations: HashSet<&str> = a
        .iter()
        .chain(&b)
        .map(|t| t["correlationId"].as_str().unwrap())
        .collect();
    assert_eq!(correlations.len(), 1, "one transaction: {correlations:?}");

    // Events the services process received were sent from the other process.
    let senders_seen_by_services: HashSet<&str> =
        b.iter().map(|t| t["sender"].as_str().unwrap()).collect();
    assert!(
        senders_seen_by_services
            .iter()
            .all(|s| STOREFRONT.contains(s)),
        "{senders_seen_by_services:?}"
    );
    // And some path runs through nodes of both processes.
    let spans_both = a.iter().chain(&b).any(|t| {
        let path: Vec<&str> = t["path"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        path.iter().any(|n| STOREFRONT.contains(n)) && path.iter().any(|n| SERVICES.contains(n))
    });
    assert!(
        spans_both,
        "a path spanning both processes:\n{storefront_out}\n{services_out}"
    );
    // The root event is the storefront's; every other event descends from it.
    let root = a
        .iter()
        .find(|t| t["causationId"].is_null())
        .expect("a root event");
    assert_eq!(root["id"], root["correlationId"]);
    assert_eq!(root["path"], serde_json::json!(["storefront"]));
}

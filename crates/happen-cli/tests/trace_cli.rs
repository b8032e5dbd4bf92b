//! `happen trace` and `happen watch`: the demo's causal web as a tree and
//! as a live feed, embedded and read back from a NATS system's JetStream
//! trace by another process.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};

use happen_test::NatsServer;

fn happen_cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_happen"))
        .args(args)
        .env_remove("HAPPEN_NATS_URL")
        .output()
        .expect("the happen binary runs")
}

fn stdout_of(args: &[&str]) -> String {
    let out = happen_cli(args);
    assert!(
        out.status.success(),
        "happen {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// The demo's transaction, as its tree shows it.
fn assert_is_the_demo_tree(tree: &str) {
    for expected in [
        "create-order from storefront → order-service",
        "├─ check-inventory from order-service → inventory-service",
        "│  └─ happen.response from inventory-service",
        "├─ process-payment from order-service → payment-service",
        "├─ create-shipment from order-service → shipping-service",
        "├─ order.completed from order-service → notification-service",
        "└─ happen.response from order-service",
    ] {
        assert!(tree.contains(expected), "{expected:?} is not in:\n{tree}");
    }
    assert!(!tree.contains("FAILED"), "{tree}");
}

#[test]
fn trace_prints_the_embedded_demos_tree() {
    assert_is_the_demo_tree(&stdout_of(&["trace"]));
    // Nothing but the JSON on standard output (a pipe into a JSON tool).
    let json: serde_json::Value =
        serde_json::from_str(&stdout_of(&["trace", "--json"])).expect("--json prints JSON alone");
    assert_eq!(json["events"].as_array().map(Vec::len), Some(9));
}

#[test]
fn watch_prints_the_embedded_demos_events_as_they_happen() {
    let out = stdout_of(&["watch", "{process-payment,create-shipment}"]);
    let lines: Vec<&str> = out.lines().collect();
    // Each of the two events: sent, delivered, finished, in that order.
    let kinds: Vec<(&str, &str)> = lines
        .iter()
        .map(|l| {
            let mut words = l.split_whitespace().skip(1);
            (words.next().unwrap(), words.next().unwrap())
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("sent", "process-payment"),
            ("delivered", "process-payment"),
            ("finished", "process-payment"),
            ("sent", "create-shipment"),
            ("delivered", "create-shipment"),
            ("finished", "create-shipment"),
        ],
        "{out}"
    );
    assert_eq!(stdout_of(&["watch", "--count", "2"]).lines().count(), 2);
}

#[test]
fn an_empty_transaction_id_is_refused_by_name() {
    let out = happen_cli(&["trace", "--nats", "nats://127.0.0.1:1", ""]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("correlation id is empty"), "{stderr}");
}

/// `happen watch | head -1`: the reader goes away, and watch ends quietly.
#[test]
fn watch_ends_quietly_when_its_reader_goes_away() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_happen"))
        .arg("watch")
        .env_remove("HAPPEN_NATS_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the happen binary runs");
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.contains("create-order"), "{first}");
    // The reader (and the pipe) dropped here.
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.status.success(), "{}: {stderr}", out.status);
}

#[test]
fn a_recorded_distributed_demo_is_traced_from_another_process() {
    let server = NatsServer::start().unwrap();
    let url = server.url();
    // A watcher in its own process, started before the demo.
    let mut watcher = Command::new(env!("CARGO_BIN_EXE_happen"))
        .args(["watch", "--nats", &url, "--count", "3", "create-order"])
        .env_remove("HAPPEN_NATS_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // It says so once the server has its subscription.
    let mut said = String::new();
    BufReader::new(watcher.stderr.take().unwrap())
        .read_line(&mut said)
        .unwrap();
    assert!(said.starts_with("watching"), "{said}");

    let demo = stdout_of(&["demo", "--nats", &url, "--record"]);
    let id = demo
        .lines()
        .find_map(|l| l.strip_prefix("Transaction: "))
        .expect("the demo names its transaction")
        .to_owned();
    assert_is_the_demo_tree(&stdout_of(&["trace", "--nats", &url, &id]));

    let watched = watcher.wait_with_output().unwrap();
    let watched = String::from_utf8(watched.stdout).unwrap();
    assert_eq!(watched.lines().count(), 3, "{watched}");
    assert!(
        watched
            .lines()
            .all(|l| l.contains("create-order") && l.contains(&id)),
        "{watched}"
    );

    let unknown = happen_cli(&["trace", "--nats", &url, "no-such-transaction"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("nothing is recorded"));
    let no_id = happen_cli(&["trace", "--nats", &url]);
    assert_eq!(no_id.status.code(), Some(2));
}

/// The numbers of the table row starting with `| label |`.
fn row(table: &str, label: &str) -> Vec<f64> {
    let line = table
        .lines()
        .find(|l| l.starts_with(&format!("| {label} |")))
        .unwrap_or_else(|| panic!("no row {label} in:\n{table}"));
    line.split('|')
        .skip(2)
        .filter_map(|cell| cell.split_whitespace().next()?.parse::<f64>().ok())
        .collect()
}

#[test]
fn bench_prints_happen_beside_its_baselines() {
    let table = stdout_of(&["bench", "--messages", "2000", "--reps", "1"]);
    for label in ["request→response", "fire-and-forget", "fan-out to 5"] {
        let numbers = row(&table, label);
        assert_eq!(
            numbers.len(),
            3,
            "happen, baseline, ratio in {label}:\n{table}"
        );
        assert!(numbers.iter().all(|n| *n > 0.0), "{table}");
    }
    let server = NatsServer::start().unwrap();
    let table = stdout_of(&[
        "bench",
        "--nats",
        &server.url(),
        "--messages",
        "300",
        "--reps",
        "1",
    ]);
    for label in ["p50", "p99"] {
        let numbers = row(&table, label);
        assert_eq!(numbers.len(), 3, "{table}");
        assert!(numbers.iter().all(|n| *n > 0.0), "{table}");
    }
}

/// The body of `GET path` from the server at `address` (HTTP/1.0: the
/// server closes the connection after the answer).
fn get(address: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}

#[test]
fn the_view_follows_a_nats_systems_trace() {
    let server = NatsServer::start().unwrap();
    let url = server.url();
    let mut child = Command::new(env!("CARGO_BIN_EXE_happen"))
        .args(["view", "--nats", &url, "--port", "0"])
        .env_remove("HAPPEN_NATS_URL")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = String::new();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    out.read_line(&mut said).unwrap();
    // Keep reading what it prints, so that it never writes to a closed pipe.
    std::thread::spawn(move || for _ in out.lines() {});
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _view = Kill(child);
    let address = said
        .trim()
        .strip_prefix("view: http://")
        .and_then(|a| a.strip_suffix('/'))
        .unwrap_or_else(|| panic!("{said}"))
        .to_owned();

    let demo = stdout_of(&["demo", "--nats", &url, "--record"]);
    let id = demo
        .lines()
        .find_map(|l| l.strip_prefix("Transaction: "))
        .unwrap()
        .to_owned();
    // The feed lists the transaction once its records have come by.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !get(&address, "/api/transactions").contains(&id) {
        assert!(
            std::time::Instant::now() < deadline,
            "the view never listed {id}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let tx: serde_json::Value =
        serde_json::from_str(&get(&address, &format!("/api/transactions/{id}"))).unwrap();
    assert_eq!(tx["events"].as_array().map(Vec::len), Some(9), "{tx}");
    assert!(get(&address, "/").contains("<title>Happen: the causal web</title>"));
}

/// Ctrl-C ends `happen view` while it repeats the demo and while a page
/// holds its live stream open (the stream ends with the server).
#[test]
fn ctrl_c_ends_the_view_with_a_page_open() {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_happen"))
        .args(["view", "--port", "0", "--repeat", "1"])
        .env_remove("HAPPEN_NATS_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the happen binary runs");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = lines
        .by_ref()
        .map(Result::unwrap)
        .find_map(|l| l.strip_prefix("view: http://").map(str::to_owned))
        .expect("the view says where");
    let address = url.trim_end_matches('/').to_owned();
    // Keep reading, so that the repeating demo never blocks on the pipe.
    std::thread::spawn(move || lines.for_each(drop));
    // A page's live stream, held open.
    let mut live = std::net::TcpStream::connect(&address).unwrap();
    write!(live, "GET /api/live HTTP/1.1\r\nHost: {address}\r\n\r\n").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let interrupted = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(interrupted.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("happen view still runs 10 s after Ctrl-C");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    drop(live);
}

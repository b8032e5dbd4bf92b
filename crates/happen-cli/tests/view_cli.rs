//! `happen view` in a real browser: the demo runs, headless Chromium opens
//! the page, and the drawn graph must show the demo's nodes and its causal
//! edges in order; a screenshot is kept as an artifact. The live feed is
//! checked at the HTTP level: records arrive as server-sent events while
//! the demo runs again.
//!
//! Chromium is `$HAPPEN_CHROMIUM` or `chromium` on PATH
//! (`scripts/ensure-chromium` installs Debian's package).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The view process, killed when the test ends however it ends.
struct View(Child);

impl Drop for View {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn chromium() -> String {
    std::env::var("HAPPEN_CHROMIUM").unwrap_or_else(|_| "chromium".to_owned())
}

fn browse(args: &[&str], url: &str) -> Vec<u8> {
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
        ])
        .args(args)
        .arg(url)
        .stderr(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}): run scripts/ensure-chromium or set HAPPEN_CHROMIUM",
                chromium()
            )
        });
    assert!(out.status.success(), "chromium failed: {}", out.status);
    out.stdout
}

#[test]
fn the_view_draws_the_demos_causal_graph_in_a_browser() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_happen"))
        .args(["view", "--port", "0", "--repeat", "1"])
        .env_remove("HAPPEN_NATS_URL")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let _view = View(child);
    let mut url = None;
    let mut id = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(u) = line.strip_prefix("view: ") {
            url = Some(u.to_owned());
        }
        if let Some(t) = line.strip_prefix("Transaction: ") {
            id = Some(t.to_owned());
            break;
        }
    }
    let (url, id) = (url.expect("the view says where"), id.expect("the demo ran"));
    // Keep reading what the view prints, so that it never blocks on a
    // full pipe while it repeats the demo.
    std::thread::spawn(move || for _ in lines {});

    let page = format!("{url}?tx={id}");
    let dom =
        String::from_utf8(browse(&["--virtual-time-budget=800", "--dump-dom"], &page)).unwrap();
    for node in [
        "storefront",
        "order-service",
        "inventory-service",
        "payment-service",
        "shipping-service",
        "notification-service",
    ] {
        assert!(
            dom.contains(&format!("data-node=\"{node}\"")),
            "node {node} is not drawn:\n{dom}"
        );
    }
    let edges: Vec<&str> = dom
        .split("data-edge=\"")
        .skip(1)
        .map(|rest| &rest[..rest.find('"').unwrap()])
        .collect();
    assert_eq!(
        edges,
        [
            "storefront→order-service create-order",
            "order-service→inventory-service check-inventory",
            "inventory-service→order-service happen.response",
            "order-service→payment-service process-payment",
            "payment-service→order-service happen.response",
            "order-service→shipping-service create-shipment",
            "shipping-service→order-service happen.response",
            "order-service→notification-service order.completed",
            "order-service→storefront happen.response",
        ],
        "the causal edges, in causal order"
    );
    assert!(dom.contains(&id), "the page names the transaction");
    assert!(
        !dom.contains("class=\"edge failed"),
        "nothing failed in the demo"
    );

    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("happen-view.png");
    let _ = std::fs::remove_file(&shot);
    browse(
        &[
            "--virtual-time-budget=800",
            "--window-size=1500,750",
            &format!("--screenshot={}", shot.display()),
        ],
        &page,
    );
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(
        size > 10_000,
        "a screenshot of the graph at {} ({size} bytes)",
        shot.display()
    );
    println!("screenshot: {}", shot.display());

    // Live: records of the next run of the demo arrive as server-sent events.
    let address = url.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    write!(
        stream,
        "GET /api/live HTTP/1.1\r\nHost: {address}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen = String::new();
    let mut buffer = [0u8; 4096];
    while Instant::now() < deadline && !seen.contains("\"kind\":\"finished\"") {
        if let Ok(n) = stream.read(&mut buffer) {
            seen.push_str(&String::from_utf8_lossy(&buffer[..n]));
        }
    }
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    assert!(seen.contains("text/event-stream"), "{seen}");
    assert!(
        seen.contains("data: {") && seen.contains("\"kind\":\"finished\""),
        "no live record within 15 s:\n{seen}"
    );
}

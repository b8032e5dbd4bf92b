//! The deterministic test kit: ids and timestamps from a seed and tokio's
//! paused clock, capture with assertions on the causal web, and replay of a
//! captured run into a fresh runtime.

use std::sync::Arc;
use std::time::Duration;

use happen::prelude::*;
use happen::resilience::Retry;
use happen::testkit::{self, Capture};

/// A small system: the shop asks the bank (which fails the first two
/// times and is retried with backoff), then tells the warehouse.
fn system(happen: &Happen) -> Node {
    let attempts = Arc::new(std::sync::atomic::AtomicU32::new(0));
    happen
        .node("bank")
        .unwrap()
        .on("charge", move |_e: Event, _cx: Context| {
            let n = attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            async move {
                if n % 3 < 2 {
                    return Err(std::io::Error::other("busy"));
                }
                Ok(json!("paid"))
            }
        })
        .unwrap();
    happen
        .node("warehouse")
        .unwrap()
        .on("ship", |_e: Event, _cx: Context| async {})
        .unwrap();
    let shop = happen.node("shop").unwrap();
    shop.on("order", |e: Event, cx: Context| async move {
        let retry = Retry::new(5).backoff(Duration::from_secs(1), Duration::from_secs(60));
        let paid = retry
            .run(|_| async {
                cx.node()
                    .send("bank", Event::new("charge", e.payload().clone()))
                    .response()
                    .await
            })
            .await?;
        cx.node()
            .tell("warehouse", Event::new("ship", e.payload().clone()))?;
        Ok::<_, HappenError>(paid)
    })
    .unwrap();
    shop
}

/// A captured runtime with the system, the shop, and a client node.
fn captured() -> (Arc<Capture>, Happen, Node, Node) {
    let capture = Capture::new();
    let happen = Happen::embedded_with(capture.install(HappenConfig::default()));
    let shop = system(&happen);
    let client = happen.node("client").unwrap();
    (capture, happen, shop, client)
}

/// One run of the system with `seed`: the ids of its events, in order.
async fn run_ids(seed: u64) -> Vec<String> {
    let _ids = testkit::deterministic(seed);
    let (capture, happen, shop, client) = captured();
    client
        .send(&shop, Event::new("order", json!({ "n": 1 })))
        .await
        .unwrap();
    happen.shutdown().await;
    capture.events().iter().map(|e| e.id().to_owned()).collect()
}

#[tokio::test(start_paused = true)]
async fn the_same_seed_gives_the_same_ids_and_another_seed_others() {
    let first = run_ids(11).await;
    let again = run_ids(11).await;
    let other = run_ids(12).await;
    // order, three charges (two fail), the bank's answer, ship, the answer.
    assert_eq!(first.len(), 7, "{first:?}");
    assert_eq!(first, again);
    assert_ne!(first, other);
    // Time-ordered, as every id Happen makes.
    let mut sorted = first.clone();
    sorted.sort();
    assert_eq!(sorted, first);
}

#[tokio::test(start_paused = true)]
async fn backoff_runs_on_the_paused_clock() {
    let _ids = testkit::deterministic(1);
    let capture = Capture::new();
    let happen = Happen::embedded_with(
        capture.install(HappenConfig::default().request_timeout(Duration::from_secs(120))),
    );
    let shop = system(&happen);
    let started = tokio::time::Instant::now();
    let wall = std::time::Instant::now();
    let paid = happen
        .node("client")
        .unwrap()
        .send(&shop, Event::new("order", json!({ "n": 1 })))
        .await
        .unwrap();
    assert_eq!(paid, json!("paid"));
    // Two failures: waits of 0.5..1 s and 1..2 s with jitter, on tokio's
    // clock; the wall clock hardly moved.
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1500) && waited <= Duration::from_secs(3),
        "{waited:?}"
    );
    assert!(
        wall.elapsed() < Duration::from_secs(1),
        "{:?}",
        wall.elapsed()
    );
    // Timestamps follow the same clock.
    let charges = capture.of_type("charge");
    assert_eq!(charges.len(), 3);
    let spread = charges[2].causal().timestamp - charges[0].causal().timestamp;
    assert_eq!(
        u128::from(spread),
        waited.as_millis(),
        "stamped on the paused clock"
    );
    happen.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn the_capture_asserts_on_the_causal_web() {
    let capture = Capture::new();
    let happen = Happen::embedded_with(capture.install(HappenConfig::default()));
    let shop = system(&happen);
    happen
        .node("client")
        .unwrap()
        .send(&shop, Event::new("order", json!({ "n": 1 })))
        .await
        .unwrap();
    happen.shutdown().await;

    capture.assert_caused("order", "charge");
    capture.assert_caused("order", "ship");
    capture.assert_none("refund");
    assert!(
        !capture.caused("ship", "order"),
        "causes point back in time only"
    );
    let failed: Vec<_> = capture
        .flows()
        .into_iter()
        .filter(|f| f.error.is_some())
        .collect();
    assert_eq!(failed.len(), 2, "the bank's two failures");
    let ship = &capture.of_type("ship")[0];
    let why: Vec<String> = capture
        .why(ship)
        .iter()
        .map(|e| e.event_type().to_owned())
        .collect();
    assert_eq!(why, ["ship", "order"]);

    let missing = std::panic::catch_unwind(|| capture.assert_caused("ship", "charge"));
    let message = *missing.unwrap_err().downcast::<String>().unwrap();
    assert!(
        message.contains("no \"charge\" event was caused by a \"ship\" event"),
        "{message}"
    );
    let present = std::panic::catch_unwind(|| capture.assert_none("charge"));
    let message = *present.unwrap_err().downcast::<String>().unwrap();
    assert!(
        message.contains("3 \"charge\" event(s) were sent"),
        "{message}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_captured_run_replays_into_a_fresh_runtime_with_the_same_outcome() {
    let (first, happen, shop, client) = captured();
    client
        .send(&shop, Event::new("order", json!({ "n": 1 })))
        .await
        .unwrap();
    client
        .tell("warehouse", Event::new("ship", json!({ "n": 2 })))
        .unwrap();
    client
        .send(&shop, Event::new("order", json!({ "n": 3 })))
        .await
        .unwrap();
    happen.shutdown().await;

    let second = Capture::new();
    let fresh = Happen::embedded_with(second.install(HappenConfig::default()));
    system(&fresh);
    first.replay(&fresh).await.unwrap();
    fresh.shutdown().await;

    assert_eq!(second.outline(), first.outline());
    assert_eq!(second.of_type("ship").len(), 3);
}

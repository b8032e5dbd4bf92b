//! What event integrity costs: the hash of an event's canonical encoding
//! ([`happen::EventHash::of`]), which every event crossing the NATS wire
//! pays twice (the sender computes it, the receiver recomputes it), beside
//! serializing the same event to JSON as a yardstick of per-event work.
//! In one process nothing is hashed unless `event.hash()` is called.
//!
//! Then the cost of signatures: ed25519 signing and checking per event,
//! and request→response signed and checked beside unsigned, in one process
//! and over NATS (a throwaway nats-server on loopback).
//!
//! ```text
//! cargo bench -p happen --bench integrity
//! HAPPEN_BENCH_N=200000 cargo bench -p happen --bench integrity
//! ```
//!
//! Medians of 5 repetitions of `N` events each (default 100,000), in
//! nanoseconds per event.

use std::hint::black_box;
use std::time::Instant;

use happen::prelude::*;

mod support;
use support::{env_usize, median};

const REPS: usize = 5;

/// A stamped event, as one crossing the wire would be.
fn stamped(payload: Value) -> Event {
    let happen = Happen::embedded();
    let sender = happen.node("sender").expect("a node");
    let sent = sender.send(
        "nobody",
        Event::new("order.created", payload).with_source("user-1", "user"),
    );
    sent.event().clone()
}

fn ns_per_event(n: usize, mut work: impl FnMut()) -> f64 {
    let mut runs = Vec::with_capacity(REPS);
    work(); // warm-up
    for _ in 0..REPS {
        let start = Instant::now();
        for _ in 0..n {
            work();
        }
        runs.push(start.elapsed() / u32::try_from(n).unwrap_or(u32::MAX));
    }
    median(runs).as_nanos() as f64
}

fn main() {
    let n = env_usize("HAPPEN_BENCH_N", 100_000);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let _guard = runtime.enter();
    let events = [
        ("small: {\"seq\": 12345}", stamped(json!({ "seq": 12345 }))),
        (
            "order: 5 fields, 3 items",
            stamped(json!({
                "orderId": "ORD-2026-000123",
                "customer": { "id": "c-42", "tier": "gold" },
                "items": [
                    { "sku": "A-1", "qty": 2, "price": 9.99 },
                    { "sku": "B-7", "qty": 1, "price": 24.5 },
                    { "sku": "C-3", "qty": 4, "price": 1.25 }
                ],
                "total": 49.48,
                "currency": "EUR"
            })),
        ),
        (
            "1 KiB string payload",
            stamped(json!({ "blob": "x".repeat(1024) })),
        ),
    ];
    println!("happen integrity benchmark: {n} events per repetition, medians of {REPS}\n");
    println!("| event | hash (EventHash::of) | JSON serialization (yardstick) | hash / JSON |");
    println!("|---|---|---|---|");
    for (label, event) in &events {
        let hash = ns_per_event(n, || {
            black_box(happen::EventHash::of(black_box(event)));
        });
        let json = ns_per_event(n, || {
            black_box(serde_json::to_vec(black_box(event)).expect("serializes"));
        });
        println!(
            "| {label} | {hash:.0} ns | {json:.0} ns | {:.2} |",
            hash / json
        );
    }
    println!(
        "\nOver NATS each event is hashed twice (sender and receiver); in one process, only when asked."
    );

    // Signatures: what a signing node adds to each event it sends, and a
    // receiver to each signed event it takes (ed25519 over the hash), beside
    // the unsigned path of the same kind in the same run.
    let key = happen::NodeIdentity::generate();
    let hash = events[0].1.hash();
    let sign = ns_per_event(n / 10, || {
        black_box(happen::Signer::sign(&key, black_box(hash.as_bytes())).expect("signs"));
    });
    let signature = happen::Signer::sign(&key, hash.as_bytes()).expect("signs");
    let public = key.public_key();
    let verify = ns_per_event(n / 10, || {
        happen::Verifier::verify(
            &happen::Ed25519,
            &public,
            black_box(hash.as_bytes()),
            &signature,
        )
        .expect("verifies");
    });
    println!("\n| per event | signing node (sender) | checking node (receiver) |");
    println!("|---|---|---|");
    println!("| ed25519 over the 32-byte hash | {sign:.0} ns | {verify:.0} ns |");

    // In one process, end to end: a signing sender to a node that requires
    // signatures, beside the same pair unsigned.
    let round_trips = |signed: bool| {
        runtime.block_on(async {
            let h = Happen::embedded();
            let from = h
                .node_with("from", NodeConfig::new().sign(signed))
                .expect("a node");
            let to = h
                .node_with("to", NodeConfig::new().require_signed(signed))
                .expect("a node");
            to.on("ping", |e: Event, _cx: Context| async move {
                e.payload().clone()
            })
            .expect("a handler");
            let count = (n / 10).max(1);
            let mut runs = Vec::new();
            for _ in 0..REPS {
                let start = Instant::now();
                for i in 0..count {
                    from.send(&to, Event::new("ping", json!(i)))
                        .await
                        .expect("answered");
                }
                runs.push(start.elapsed() / u32::try_from(count).unwrap_or(u32::MAX));
            }
            median(runs).as_nanos() as f64
        })
    };
    let (plain, signed) = (round_trips(false), round_trips(true));
    println!("\n| request→response | unsigned | signed and checked | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| in one process (embedded runtime) | {plain:.0} ns | {signed:.0} ns | {:.2}× |",
        signed / plain
    );

    // Over NATS: the two nodes in two runtimes (two connections), as
    // between processes; the hash is paid either way, the signature only
    // when signing.
    let server = happen_test::NatsServer::start().expect("nats-server (set HAPPEN_NATS_SERVER)");
    let over_nats = |signed: bool| {
        runtime.block_on(async {
            let connect = || Happen::connect(happen::NatsConfig::new(server.url()));
            let (a, b) = (
                connect().await.expect("connects"),
                connect().await.expect("connects"),
            );
            let (from_id, to_id) = if signed {
                ("s-from", "s-to")
            } else {
                ("u-from", "u-to")
            };
            let from = a
                .node_with(from_id, NodeConfig::new().sign(signed))
                .expect("a node");
            let to = b
                .node_with(to_id, NodeConfig::new().require_signed(signed))
                .expect("a node");
            to.on("ping", |e: Event, _cx: Context| async move {
                e.payload().clone()
            })
            .expect("a handler");
            a.flush().await.expect("flushed");
            b.flush().await.expect("flushed");
            let count = (n / 50).max(1);
            let mut runs = Vec::new();
            for _ in 0..REPS {
                let start = Instant::now();
                for i in 0..count {
                    from.send(to_id, Event::new("ping", json!(i)))
                        .await
                        .expect("answered");
                }
                runs.push(start.elapsed() / u32::try_from(count).unwrap_or(u32::MAX));
            }
            median(runs).as_nanos() as f64
        })
    };
    let (plain, signed) = (over_nats(false), over_nats(true));
    println!(
        "| over NATS (two runtimes, loopback) | {plain:.0} ns | {signed:.0} ns | {:.2}× |",
        signed / plain
    );
}

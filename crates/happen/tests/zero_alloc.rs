//! The zero path allocates nothing per event once warm: a counting global
//! allocator sees every heap allocation of this test binary while a node
//! builds (pooled writer), sends, receives and handles zero events in one
//! process, and the count over 100,000 events must stay at zero.
//!
//! A node with acceptance controls is counted the same way (the sender is
//! checked in place). The ordinary path is counted beside it, so that the counter is seen to
//! count (and the difference is on record).

use std::alloc::System;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use happen::AcceptRule;
use happen::prelude::*;
use happen::zero::{ZeroNext, ZeroWriter};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Allocations and reallocations since `region` began.
fn allocations(region: &Region<'_, System>) -> u64 {
    let change = region.change();
    (change.allocations + change.reallocations) as u64
}

const BATCH: u64 = 100;

/// The allocation counts are process-wide: the tests run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Sends `rounds` batches of zero events from `from` to `to`, each batch
/// handled before the next is sent.
async fn zero_rounds(from: &Node, to: &Node, handled: &AtomicU64, rounds: u64) {
    for _ in 0..rounds {
        let target = handled.load(Ordering::Relaxed) + BATCH;
        for i in 0..BATCH {
            let mut reading = ZeroWriter::new("reading");
            reading
                .u64("seq", i)
                .f64("celsius", 21.5)
                .str("sensor", "s-17");
            from.zero_tell(to, reading).unwrap();
        }
        while handled.load(Ordering::Relaxed) < target {
            tokio::task::yield_now().await;
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn zero_events_allocate_nothing_per_event_once_warm() {
    let _serial = SERIAL.lock().await;
    let happen = Happen::embedded();
    let gateway = happen.node("gateway").unwrap();
    let sink = happen.node("sink").unwrap();
    let handled = Arc::new(AtomicU64::new(0));
    let sum = Arc::new(AtomicU64::new(0));
    let (h, s) = (handled.clone(), sum.clone());
    sink.zero("reading", move |event, _cx| {
        let seq: u64 = event.get("seq")?;
        let celsius = event.f64(event.offsets().get("celsius").unwrap_or(0))?;
        let sensor: &str = event.get("sensor")?;
        s.fetch_add(
            seq + celsius as u64 + sensor.len() as u64,
            Ordering::Relaxed,
        );
        h.fetch_add(1, Ordering::Relaxed);
        Ok(ZeroNext::Done)
    })
    .unwrap();

    // Warm-up: the pool, the queue and the lane's task reach their size.
    zero_rounds(&gateway, &sink, &handled, 100).await;

    let rounds = 1000;
    let events = rounds * BATCH;
    let region = Region::new(GLOBAL);
    zero_rounds(&gateway, &sink, &handled, rounds).await;
    let zero_allocations = allocations(&region);
    let all_rounds = 100 + rounds;
    assert_eq!(handled.load(Ordering::Relaxed), all_rounds * BATCH);
    // Every event was read: seq 0..99 per batch, then 21 (celsius) and 4
    // (the sensor's length) each.
    assert_eq!(
        sum.load(Ordering::Relaxed),
        all_rounds * (BATCH * (BATCH - 1) / 2) + all_rounds * BATCH * 25
    );

    // A node with acceptance controls checks each zero event's sender in
    // place: still nothing allocated per event.
    let guarded = happen
        .node_with(
            "guarded",
            NodeConfig::new().accept_from([AcceptRule::node("gate*")]),
        )
        .unwrap();
    let guarded_handled = Arc::new(AtomicU64::new(0));
    let g = guarded_handled.clone();
    guarded
        .zero("reading", move |event, _cx| {
            let _seq: u64 = event.get("seq")?;
            g.fetch_add(1, Ordering::Relaxed);
            Ok(ZeroNext::Done)
        })
        .unwrap();
    zero_rounds(&gateway, &guarded, &guarded_handled, 100).await;
    let region = Region::new(GLOBAL);
    zero_rounds(&gateway, &guarded, &guarded_handled, rounds).await;
    let guarded_allocations = allocations(&region);
    assert_eq!(guarded_handled.load(Ordering::Relaxed), all_rounds * BATCH);
    assert_eq!(
        guarded_allocations, 0,
        "with acceptance controls the zero path allocated {guarded_allocations} times over {events} events"
    );

    // The ordinary path, counted the same way, for comparison.
    let ordinary_handled = Arc::new(AtomicU64::new(0));
    let o = ordinary_handled.clone();
    sink.on("ordinary", move |_e: Event, _cx: Context| {
        let o = o.clone();
        async move {
            o.fetch_add(1, Ordering::Relaxed);
        }
    })
    .unwrap();
    let region = Region::new(GLOBAL);
    for i in 0..10_000u64 {
        gateway
            .tell(&sink, Event::new("ordinary", json!({ "seq": i })))
            .unwrap();
        if i % BATCH == BATCH - 1 {
            while ordinary_handled.load(Ordering::Relaxed) <= i {
                tokio::task::yield_now().await;
            }
        }
    }
    let ordinary_allocations = allocations(&region);
    println!(
        "zero path: {events} events, {zero_allocations} allocations ({:.3} per event); ordinary path: 10000 events, {ordinary_allocations} allocations ({:.1} per event)",
        zero_allocations as f64 / events as f64,
        ordinary_allocations as f64 / 10_000.0,
    );
    assert!(ordinary_allocations >= 10_000, "the counter counts");
    assert_eq!(
        zero_allocations, 0,
        "the zero path allocated {zero_allocations} times over {events} events"
    );
    happen.shutdown().await;
}

/// An event of more fields than are checked pair by pair, all under one
/// parent (so that their names share the clash filter's bits and every
/// event takes the sorted check): still nothing allocated per event.
#[tokio::test(flavor = "current_thread")]
async fn an_event_of_many_nested_fields_allocates_nothing_once_warm() {
    let _serial = SERIAL.lock().await;
    const FIELDS: [&str; 20] = [
        "location.f0",
        "location.f1",
        "location.f2",
        "location.f3",
        "location.f4",
        "location.f5",
        "location.f6",
        "location.f7",
        "location.f8",
        "location.f9",
        "location.f10",
        "location.f11",
        "location.f12",
        "location.f13",
        "location.f14",
        "location.f15",
        "location.f16",
        "location.f17",
        "location.f18",
        "location.f19",
    ];
    let happen = Happen::embedded();
    let gateway = happen.node("gateway").unwrap();
    let sink = happen.node("sink").unwrap();
    let handled = Arc::new(AtomicU64::new(0));
    let h = handled.clone();
    sink.zero("reading", move |event, _cx| {
        let _read: u64 = event.get("location.f15")?;
        h.fetch_add(1, Ordering::Relaxed);
        Ok(ZeroNext::Done)
    })
    .unwrap();
    let send = |rounds: u64| {
        let (gateway, sink, handled) = (&gateway, &sink, &handled);
        async move {
            for _ in 0..rounds {
                let target = handled.load(Ordering::Relaxed) + BATCH;
                for i in 0..BATCH {
                    let mut reading = ZeroWriter::new("reading");
                    for name in FIELDS {
                        reading.u64(name, i);
                    }
                    gateway.zero_tell(sink, reading).unwrap();
                }
                while handled.load(Ordering::Relaxed) < target {
                    tokio::task::yield_now().await;
                }
            }
        }
    };
    send(50).await;
    let region = Region::new(GLOBAL);
    send(100).await;
    let allocated = allocations(&region);
    assert_eq!(handled.load(Ordering::Relaxed), 150 * BATCH);
    assert_eq!(
        allocated,
        0,
        "{allocated} allocations over {} events",
        100 * BATCH
    );
}

//! Zero events written on one thread and handled on another (a
//! multi-thread runtime) allocate (almost) nothing per event once warm:
//! the buffers the handling thread's pool cannot keep go back to the
//! writing thread through the small shared pool. Counted with a counting
//! global allocator, in a binary of its own so that no other test's
//! allocations are counted.

use std::alloc::System;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use happen::prelude::*;
use happen::zero::{ZeroNext, ZeroWriter};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const BATCH: u64 = 100;

/// Sends `rounds` batches of zero events, each handled before the next.
async fn zero_rounds(from: &Node, to: &Node, handled: &AtomicU64, rounds: u64) {
    for _ in 0..rounds {
        let target = handled.load(Ordering::Relaxed) + BATCH;
        for i in 0..BATCH {
            let mut reading = ZeroWriter::new("reading");
            reading.u64("seq", i).f64("celsius", 21.5);
            from.zero_tell(to, reading).unwrap();
        }
        while handled.load(Ordering::Relaxed) < target {
            tokio::task::yield_now().await;
        }
    }
}

/// The test's body runs on the thread blocking on it, and the lane's task
/// on the runtime's one worker: every event is written on one thread and
/// dropped on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn events_written_and_handled_on_two_threads_allocate_almost_nothing() {
    let happen = Happen::embedded();
    let gateway = happen.node("gateway").unwrap();
    let sink = happen.node("sink").unwrap();
    let writer_thread = std::thread::current().id();
    let handled = Arc::new(AtomicU64::new(0));
    let elsewhere = Arc::new(AtomicU64::new(0));
    let (h, e) = (handled.clone(), elsewhere.clone());
    sink.zero("reading", move |event, _cx| {
        let _seq: u64 = event.get("seq")?;
        if std::thread::current().id() != writer_thread {
            e.fetch_add(1, Ordering::Relaxed);
        }
        h.fetch_add(1, Ordering::Relaxed);
        Ok(ZeroNext::Done)
    })
    .unwrap();

    // Warm-up: the handling thread's own pool fills (4,096 buffers), and
    // what it is given back after that starts to flow to the writer.
    zero_rounds(&gateway, &sink, &handled, 100).await;

    let rounds = 200;
    let events = rounds * BATCH;
    let region = Region::new(GLOBAL);
    zero_rounds(&gateway, &sink, &handled, rounds).await;
    let change = region.change();
    let allocations = (change.allocations + change.reallocations) as u64;
    assert_eq!(handled.load(Ordering::Relaxed), (100 + rounds) * BATCH);
    assert_eq!(
        elsewhere.load(Ordering::Relaxed),
        (100 + rounds) * BATCH,
        "every event was handled on another thread than its writer's"
    );
    println!(
        "{events} events written and handled on two threads: {allocations} allocations ({:.4} per event)",
        allocations as f64 / events as f64
    );
    // Before the shared pool: one per event (the writer's buffer). Still
    // counted after warm-up: a few dozen at most over 20,000 events (the
    // shared pool growing to the most buffers ever in flight at once).
    assert!(
        allocations < events / 50,
        "{allocations} allocations over {events} events"
    );
}

//! What recording the causal web costs: the same in-process workloads with
//! no observer, with a recorder in memory, and with one on disk, measured in
//! one run, alternating, medians of the repetitions.
//!
//! ```text
//! cargo bench -p happen --bench trace
//! HAPPEN_BENCH_N=50000 HAPPEN_BENCH_REPS=7 cargo bench -p happen --bench trace
//! ```
//!
//! - request→response: `a.send(&b, Event::new("ping", payload)).await`
//!   awaited one after another, ns per request;
//! - fire-and-forget: `a.tell(&b, ..)` in batches of 1000, waiting after
//!   each until `b` has handled it, events per second.
//!
//! The "off" row is the runtime as everybody gets it (no observer: one
//! branch per event where an observer would be called). The recorder rows
//! keep three records per event (stamped, delivered, finished), plus a
//! response event and its record per request.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use happen::prelude::*;
use happen::trace::Recorder;
use support::*;
use tokio::sync::Notify;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Off,
    Memory,
    Disk,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Off => "off (no observer)",
            Mode::Memory => "recorder in memory",
            Mode::Disk => "recorder on disk (redb)",
        }
    }

    fn config(self, dir: &std::path::Path) -> HappenConfig {
        let config = HappenConfig::default();
        match self {
            Mode::Off => config,
            Mode::Memory => config.recorder(Recorder::in_memory(100_000)),
            Mode::Disk => config.recorder(
                Recorder::on_disk(dir.join(format!("trace-{}.redb", rand_suffix())), 100_000)
                    .expect("trace database"),
            ),
        }
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

async fn request_response(config: HappenConfig, n: usize) -> Duration {
    let happen = Happen::embedded_with(config);
    let a = happen.node("client").unwrap();
    let b = happen.node("server").unwrap();
    b.on("ping", |e: Event, _cx: Context| async move {
        e.payload()["seq"].clone()
    })
    .unwrap();
    let started = Instant::now();
    for i in 0..n {
        let reply = a
            .send(&b, Event::new("ping", json!({ "seq": i })))
            .await
            .unwrap();
        assert_eq!(reply, json!(i));
    }
    let elapsed = started.elapsed();
    settle(&happen).await;
    elapsed
}

/// Messages sent before waiting until they are handled.
const BATCH: usize = 1000;

async fn fire_and_forget(config: HappenConfig, n: usize) -> Duration {
    let happen = Happen::embedded_with(config);
    let a = happen.node("sender").unwrap();
    let b = happen
        .node_with("counter", NodeConfig::new().queue_limit(BATCH))
        .unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let target = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(Notify::new());
    let (c, t, d) = (count.clone(), target.clone(), done.clone());
    b.on("ping", move |_e: Event, _cx: Context| {
        if c.fetch_add(1, Ordering::Relaxed) + 1 == t.load(Ordering::Relaxed) {
            d.notify_one();
        }
        async {}
    })
    .unwrap();
    let started = Instant::now();
    for first in (0..n).step_by(BATCH) {
        let last = (first + BATCH).min(n);
        target.store(last, Ordering::Relaxed);
        for i in first..last {
            a.tell(&b, Event::new("ping", json!({ "seq": i }))).unwrap();
        }
        done.notified().await;
    }
    let elapsed = started.elapsed();
    settle(&happen).await;
    elapsed
}

/// Ends a run outside the timing: the recorder has written everything (a
/// disk recorder's thread must not go on into the next run) and the runtime
/// is down.
async fn settle(happen: &Happen) {
    if let Some(recorder) = happen.recorder() {
        recorder.flush().await;
    }
    happen.shutdown().await;
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n = env_usize("HAPPEN_BENCH_N", 50_000);
    let reps = env_usize("HAPPEN_BENCH_REPS", 5);
    let dir = tempfile::tempdir().unwrap();
    let rt = current_thread_runtime();
    // HAPPEN_BENCH_ONLY: a part of a row's name ("memory", "disk", "off").
    let modes: Vec<Mode> = [Mode::Off, Mode::Memory, Mode::Disk]
        .into_iter()
        .filter(|m| *m == Mode::Off || selected("", m.name()))
        .collect();
    let mut request = vec![Vec::new(); modes.len()];
    let mut tell = vec![Vec::new(); modes.len()];
    for _ in 0..reps {
        // Alternating, so that a slow minute of the machine hits all alike.
        for (i, mode) in modes.iter().enumerate() {
            request[i].push(run_on(&rt, request_response(mode.config(dir.path()), n)));
            tell[i].push(run_on(&rt, fire_and_forget(mode.config(dir.path()), n)));
        }
    }
    let per = |d: Duration| d.as_nanos() as f64 / n as f64;
    let base_rq = per(median(request[0].clone()));
    let base_ff = n as f64 / median(tell[0].clone()).as_secs_f64();
    println!("\n### recording overhead (current-thread, {n} messages, medians of {reps})\n");
    println!("| recording | request→response | ×off | fire-and-forget | ×off |");
    println!("|---|---|---|---|---|");
    for (i, mode) in modes.iter().enumerate() {
        let rq = per(median(request[i].clone()));
        let ff = n as f64 / median(tell[i].clone()).as_secs_f64();
        println!(
            "| {} | {:.0} ns | {:.2} | {} | {:.2} |",
            mode.name(),
            rq,
            base_rq / rq,
            fmt_rate(ff),
            ff / base_ff
        );
    }
    println!("\n×off: throughput relative to no observer (1.00: the same; 0.50: half).");
}

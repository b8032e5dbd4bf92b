//! In-process benchmark of the embedded runtime: what `happen` costs compared
//! with hand-written tokio channels doing the same work.
//!
//! Run it in release mode with
//!
//! ```text
//! cargo bench -p happen --bench local
//! HAPPEN_BENCH_N=20000 cargo bench -p happen --bench local      # fewer operations per repetition
//! HAPPEN_BENCH_ONLY="current-thread / round" cargo bench -p happen --bench local   # one benchmark
//! ```
//!
//! Environment variables (all optional):
//!
//! - `HAPPEN_BENCH_N`: operations per repetition (default [`DEFAULT_N`]).
//! - `HAPPEN_BENCH_BATCH`: fire-and-forget batch size (default
//!   [`DEFAULT_BATCH`]).
//! - `HAPPEN_BENCH_ONLY`: keep only the benchmarks whose
//!   "runtime / benchmark" label contains this text (handy under a profiler).
//!
//! Every benchmark runs on a current-thread tokio runtime and on a
//! multi-thread runtime with 2 workers. The driving code runs in a spawned
//! task (so that on the multi-thread runtime it runs on a worker thread).
//!
//! 1. **Round trip**: `N` sequential `a.send(&b, event).response().await`
//!    against a baseline of one long-lived tokio task that receives
//!    `(payload, oneshot::Sender)` from a `tokio::sync::mpsc` channel and
//!    answers on the oneshot. Both carry the same `serde_json` payload
//!    (`{"seq": i}`) and answer with `payload["seq"]`. Reported in ns per
//!    round trip; ratio = baseline ns / happen ns (relative throughput).
//! 2. **Fire-and-forget**: sends whose handles are dropped at once, then a
//!    wait until the handler has counted every event (an atomic counter and a
//!    `Notify`), so handling is measured, not only enqueueing. The baseline
//!    pushes the same payloads into an unbounded `tokio::sync::mpsc` channel
//!    drained by a task that counts them the same way. The receiving node's
//!    `queue_limit` is the batch size, so nothing is refused. Reported in
//!    events/s; ratio = happen / baseline. It runs twice:
//!    - in batches of `HAPPEN_BENCH_BATCH` events (send a batch, wait for it
//!      to be handled, repeat until `N`): the steady state, where the backlog
//!      stays small;
//!    - as one batch of `N` events: with the default `N` both sides then hold
//!      tens of MB of queued events, and the figures are dominated by the
//!      allocator and page faults rather than by the event path (the
//!      baseline slows down about tenfold, which flatters the ratio).
//!
//! Each benchmark does one warm-up repetition and then [`REPS`] timed
//! repetitions of `N` operations; happen and the baseline alternate within
//! each repetition so that both see the same machine noise. The table shows
//! medians; the spread (min..max) follows it. Targets apply to the
//! current-thread runtime.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use happen::prelude::*;
use tokio::runtime::{Builder, Runtime};
use tokio::sync::{Notify, mpsc, oneshot};

/// Operations per repetition unless `HAPPEN_BENCH_N` says otherwise.
mod support;
use support::{env_usize, fmt_rate, run_on, selected};

const DEFAULT_N: usize = 100_000;
/// Fire-and-forget events sent before waiting for them to be handled.
const DEFAULT_BATCH: usize = 1_000;
/// Timed repetitions per benchmark (after one warm-up).
const REPS: usize = 7;
/// Minimum round-trip throughput of happen relative to the baseline.
const ROUND_TRIP_TARGET: f64 = 0.5;
/// Minimum fire-and-forget throughput of happen relative to the baseline.
const FIRE_AND_FORGET_TARGET: f64 = 0.25;

/// The timed repetitions of one measurement (warm-up excluded).
#[derive(Default)]
struct Samples(Vec<Duration>);

impl Samples {
    fn sorted(&self) -> Vec<Duration> {
        let mut v = self.0.clone();
        v.sort();
        v
    }

    fn median(&self) -> Duration {
        let v = self.sorted();
        v[v.len() / 2]
    }

    fn min(&self) -> Duration {
        self.sorted()[0]
    }

    fn max(&self) -> Duration {
        *self.sorted().last().expect("no samples")
    }
}

/// Counts handled events and wakes the waiter when `target` is reached.
struct Counter {
    count: AtomicUsize,
    target: AtomicUsize,
    done: Notify,
}

impl Counter {
    fn new() -> Arc<Self> {
        Arc::new(Counter {
            count: AtomicUsize::new(0),
            target: AtomicUsize::new(usize::MAX),
            done: Notify::new(),
        })
    }

    fn arm(&self, n: usize) {
        self.count.store(0, Ordering::SeqCst);
        self.target.store(n, Ordering::SeqCst);
    }

    fn hit(&self) {
        let seen = self.count.fetch_add(1, Ordering::AcqRel) + 1;
        if seen == self.target.load(Ordering::Acquire) {
            // `notify_one` keeps a permit if the waiter is not waiting yet.
            self.done.notify_one();
        }
    }

    async fn wait(&self) {
        self.done.notified().await;
    }
}

fn payload(i: usize) -> Value {
    json!({ "seq": i })
}

/// Times `n` sequential request/response round trips through happen and
/// through a plain mpsc + oneshot server task.
async fn round_trip(n: usize) -> (Samples, Samples) {
    let happen = Happen::embedded();
    let a = happen.node("client").expect("node");
    let b = happen.node("server").expect("node");
    b.on("ping", |e: Event, _cx: Context| async move {
        e.payload()["seq"].clone()
    })
    .expect("handler");

    let (tx, mut rx) = mpsc::channel::<(Value, oneshot::Sender<Value>)>(1024);
    let server = tokio::spawn(async move {
        while let Some((p, reply)) = rx.recv().await {
            let _ = reply.send(p["seq"].clone());
        }
    });

    let (mut happen_samples, mut raw_samples) = (Samples::default(), Samples::default());
    for rep in 0..=REPS {
        let start = Instant::now();
        for i in 0..n {
            let v = a
                .send(&b, Event::new("ping", payload(i)))
                .response()
                .await
                .expect("happen round trip");
            black_box(v);
        }
        let happen_time = start.elapsed();

        let start = Instant::now();
        for i in 0..n {
            let (otx, orx) = oneshot::channel();
            tx.send((payload(i), otx)).await.expect("server alive");
            black_box(orx.await.expect("raw round trip"));
        }
        let raw_time = start.elapsed();

        if rep > 0 {
            happen_samples.0.push(happen_time);
            raw_samples.0.push(raw_time);
        }
    }

    drop(tx);
    server.await.expect("server task");
    happen.shutdown().await;
    (happen_samples, raw_samples)
}

/// Times `n` fire-and-forget sends, `batch` at a time (each batch handled
/// before the next is sent), through happen and through an unbounded mpsc
/// channel into a counting task.
async fn fire_and_forget(n: usize, batch: usize) -> (Samples, Samples) {
    let batch = batch.clamp(1, n);
    let happen = Happen::embedded();
    let a = happen.node("producer").expect("node");
    let b = happen
        .node_with("consumer", NodeConfig::new().queue_limit(batch))
        .expect("node");
    let happen_counter = Counter::new();
    let counter = happen_counter.clone();
    b.on("tick", move |e: Event, _cx: Context| {
        let counter = counter.clone();
        async move {
            black_box(e.payload());
            counter.hit();
        }
    })
    .expect("handler");

    let raw_counter = Counter::new();
    let (tx, mut rx) = mpsc::unbounded_channel::<Value>();
    let counter = raw_counter.clone();
    let consumer = tokio::spawn(async move {
        while let Some(p) = rx.recv().await {
            black_box(&p);
            counter.hit();
        }
    });

    let (mut happen_samples, mut raw_samples) = (Samples::default(), Samples::default());
    for rep in 0..=REPS {
        let start = Instant::now();
        for first in (0..n).step_by(batch) {
            let last = (first + batch).min(n);
            happen_counter.arm(last - first);
            for i in first..last {
                drop(a.send(&b, Event::new("tick", payload(i))));
            }
            happen_counter.wait().await;
        }
        let happen_time = start.elapsed();

        let start = Instant::now();
        for first in (0..n).step_by(batch) {
            let last = (first + batch).min(n);
            raw_counter.arm(last - first);
            for i in first..last {
                tx.send(payload(i)).expect("consumer alive");
            }
            raw_counter.wait().await;
        }
        let raw_time = start.elapsed();

        if rep > 0 {
            happen_samples.0.push(happen_time);
            raw_samples.0.push(raw_time);
        }
    }

    drop(tx);
    consumer.await.expect("consumer task");
    happen.shutdown().await;
    (happen_samples, raw_samples)
}

/// One row of the results table.
struct Row {
    runtime: &'static str,
    benchmark: String,
    happen: String,
    baseline: String,
    ratio: f64,
    target: Option<f64>,
    spread: String,
}

fn ns_per_op(d: Duration, n: usize) -> f64 {
    d.as_nanos() as f64 / n as f64
}

fn events_per_sec(d: Duration, n: usize) -> f64 {
    n as f64 / d.as_secs_f64()
}

/// What to run: operations per repetition and the fire-and-forget batch.
#[derive(Clone, Copy)]
struct Params {
    n: usize,
    batch: usize,
}

fn rows_for(runtime: &'static str, rt: &Runtime, p: Params, current_thread: bool) -> Vec<Row> {
    let mut rows = Vec::new();
    if selected(runtime, "round trip") {
        rows.push(round_trip_row(runtime, rt, p.n, current_thread));
    }
    let batches = format!("fire-and-forget, batches of {}", p.batch);
    if selected(runtime, &batches) {
        rows.push(fire_and_forget_row(
            runtime,
            batches,
            rt,
            p.n,
            p.batch,
            current_thread,
        ));
    }
    let single = format!("fire-and-forget, one batch of {}", p.n);
    if p.batch < p.n && selected(runtime, &single) {
        rows.push(fire_and_forget_row(
            runtime,
            single,
            rt,
            p.n,
            p.n,
            current_thread,
        ));
    }
    rows
}

fn round_trip_row(runtime: &'static str, rt: &Runtime, n: usize, current_thread: bool) -> Row {
    let (h, r) = run_on(rt, round_trip(n));
    let (hm, rm) = (ns_per_op(h.median(), n), ns_per_op(r.median(), n));
    Row {
        runtime,
        benchmark: "round trip".to_owned(),
        happen: format!("{hm:.0} ns/op"),
        baseline: format!("{rm:.0} ns/op"),
        ratio: rm / hm,
        target: current_thread.then_some(ROUND_TRIP_TARGET),
        spread: format!(
            "happen {:.0}..{:.0} ns/op, baseline {:.0}..{:.0} ns/op",
            ns_per_op(h.min(), n),
            ns_per_op(h.max(), n),
            ns_per_op(r.min(), n),
            ns_per_op(r.max(), n),
        ),
    }
}

fn fire_and_forget_row(
    runtime: &'static str,
    benchmark: String,
    rt: &Runtime,
    n: usize,
    batch: usize,
    current_thread: bool,
) -> Row {
    let (h, r) = run_on(rt, fire_and_forget(n, batch));
    let (hm, rm) = (events_per_sec(h.median(), n), events_per_sec(r.median(), n));
    Row {
        runtime,
        benchmark,
        happen: fmt_rate(hm),
        baseline: fmt_rate(rm),
        ratio: hm / rm,
        target: current_thread.then_some(FIRE_AND_FORGET_TARGET),
        spread: format!(
            "happen {}..{}, baseline {}..{}",
            fmt_rate(events_per_sec(h.max(), n)),
            fmt_rate(events_per_sec(h.min(), n)),
            fmt_rate(events_per_sec(r.max(), n)),
            fmt_rate(events_per_sec(r.min(), n)),
        ),
    }
}

fn main() {
    let n = env_usize("HAPPEN_BENCH_N", DEFAULT_N);
    let params = Params {
        n,
        batch: env_usize("HAPPEN_BENCH_BATCH", DEFAULT_BATCH).min(n),
    };
    let started = Instant::now();

    let current = Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("current-thread runtime");
    let mut rows = rows_for("current-thread", &current, params, true);
    drop(current);

    let multi = Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("multi-thread runtime");
    rows.extend(rows_for("multi-thread (2 workers)", &multi, params, false));
    drop(multi);

    println!(
        "happen in-process benchmark: N = {n} operations per repetition, \
         1 warm-up + {REPS} repetitions, medians; {} CPUs available\n",
        std::thread::available_parallelism().map_or(0, |p| p.get())
    );
    println!("| runtime | benchmark | happen | baseline | ratio | target | met? |");
    println!("|---|---|---|---|---|---|---|");
    for row in &rows {
        let (target, met) = match row.target {
            Some(t) => (
                format!("≥ {t}"),
                if row.ratio >= t { "yes" } else { "no" }.to_owned(),
            ),
            None => ("—".to_owned(), "—".to_owned()),
        };
        println!(
            "| {} | {} | {} | {} | {:.2} | {} | {} |",
            row.runtime, row.benchmark, row.happen, row.baseline, row.ratio, target, met
        );
    }
    println!("\nSpread over the {REPS} repetitions (min..max):\n");
    for row in &rows {
        println!("- {} / {}: {}", row.runtime, row.benchmark, row.spread);
    }
    println!(
        "\nRatios: round trip = baseline ns / happen ns; fire-and-forget = happen ev/s / baseline ev/s. \
         Total time {:.1} s.",
        started.elapsed().as_secs_f64()
    );
}

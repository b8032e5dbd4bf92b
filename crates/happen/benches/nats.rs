//! Benchmark of the NATS runtime: what `happen` costs on top of a plain
//! `async-nats` client doing the same work through the same server.
//!
//! Run it in release mode with
//!
//! ```text
//! cargo bench -p happen --bench nats
//! HAPPEN_BENCH_N=2000 cargo bench -p happen --bench nats        # fewer requests per repetition
//! HAPPEN_BENCH_ONLY="current-thread / request" cargo bench -p happen --bench nats   # one benchmark
//! ```
//!
//! The bench starts one `nats-server -js` on a free loopback port for the whole
//! run (through [`happen_test::NatsServer`]: the binary is
//! `$HAPPEN_NATS_SERVER`, else `nats-server` on `PATH`;
//! `scripts/ensure-nats-server` installs one) and stops it at the end.
//!
//! Environment variables (all optional):
//!
//! - `HAPPEN_BENCH_N`: requests per repetition (default [`DEFAULT_N`]).
//! - `HAPPEN_BENCH_BROADCASTS`: broadcasts per repetition (default
//!   [`DEFAULT_BROADCASTS`]; more than requests, because they are much
//!   cheaper and a short repetition is noisy).
//! - `HAPPEN_BENCH_BATCH`: broadcast batch size (default [`DEFAULT_BATCH`]).
//! - `HAPPEN_BENCH_SIDE`: `happen` or `plain` runs only that side of the
//!   request and broadcast benchmarks (the other side's cells read 0):
//!   under `perf stat`
//!   or `perf record`, what one side costs, system calls and context
//!   switches included.
//! - `HAPPEN_BENCH_ONLY`: keep only the benchmarks whose
//!   "runtime / benchmark" label contains this text (handy under a profiler).
//!
//! Every benchmark runs on a current-thread tokio runtime and on a
//! multi-thread runtime with 2 workers. The driving code runs in a spawned
//! task (so that on the multi-thread runtime it runs on a worker thread).
//!
//! Happen delivers events between nodes of one runtime in the process
//! (co-located delivery), so the benchmarks put the two sides in **two
//! runtimes** (`Happen::connect` twice: two connections), as two processes
//! would be; the plain baseline likewise uses two `async_nats::Client`s.
//!
//! 1. **Request/response latency**: `N` sequential
//!    `a.send("server", Event::new("ping", {"seq": i})).await`
//!    from node `a` of runtime A to node `server` of runtime B: the request
//!    goes to `happen.node.server`, the reply to A's inbox. The handler
//!    answers `payload["seq"]`. The baseline: a responder client subscribed
//!    to `bench.echo` parses each request's JSON body and publishes
//!    `body["seq"]` as JSON to the reply subject, while a requester client
//!    calls `client.request("bench.echo", {"seq": i})` in a loop and parses
//!    the JSON answer. Happen and plain take turns every [`REQUEST_CHUNK`]
//!    requests, because this machine's wake-up latency (which dominates a
//!    loopback round trip) drifts between modes over seconds. Every
//!    request's latency is recorded; the table shows the median and the 99th
//!    percentile, and the ratios happen / plain (lower is better). The bytes
//!    of one request and one reply on the wire are printed after the table.
//! 2. **Broadcast throughput**: `M` times
//!    `a.broadcast(Event::new("tick", {"seq": i}))` from runtime A while node
//!    `consumer` of runtime B counts deliveries (an atomic counter and a
//!    `Notify`); the clock stops when all of them have been handled. The
//!    baseline: a publisher client publishes the same JSON bodies with
//!    `client.publish("bench.tick", ..).await` while a subscriber client
//!    parses and counts them. Events not handled within [`WAIT_LIMIT`] are
//!    reported as missing. Reported in events/s; ratio = happen / plain. It
//!    runs:
//!    - in batches of `HAPPEN_BENCH_BATCH` (publish a batch, wait until it has
//!      been handled, repeat until `M`): the steady state;
//!    - as one batch of `M`: buffering effects more than the event path;
//!    - for information, in batches with the consumer in the producer's own
//!      runtime: co-located, no server involved (not compared with a target).
//!
//! Each benchmark does one warm-up repetition and then [`REPS`] timed
//! repetitions of `N` requests or `M` broadcasts; happen and the baseline
//! alternate within each repetition so that both see the same machine noise.
//! The tables show medians over the repetitions; the spread (min..max)
//! follows them.
//!
//! After the tables, the benchmark runs itself again under `taskset -c 0`
//! (everything, the nats-server included, on one CPU: no cross-CPU
//! wake-ups, much steadier latencies) and prints that run's tables too;
//! `HAPPEN_BENCH_PINNED=1` marks that child run (set it to skip the pinned
//! run).

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use happen::NatsConfig;
use happen::prelude::*;
use happen_test::NatsServer;
use tokio::runtime::{Builder, Runtime};
use tokio::sync::Notify;

/// Requests per repetition unless `HAPPEN_BENCH_N` says otherwise.
mod support;
use support::{env_usize, fmt_rate, run_on, selected};

const DEFAULT_N: usize = 10_000;
/// Requests of one side before the other side takes its turn.
const REQUEST_CHUNK: usize = 500;
/// Broadcasts per repetition unless `HAPPEN_BENCH_BROADCASTS` says otherwise.
const DEFAULT_BROADCASTS: usize = 50_000;
/// Broadcasts published before waiting for them to be handled.
const DEFAULT_BATCH: usize = 1_000;
/// Timed repetitions per benchmark (after one warm-up).
const REPS: usize = 5;
/// Maximum median (and p99) request latency of happen relative to plain.
const LATENCY_TARGET: f64 = 1.10;
/// Minimum broadcast throughput of happen relative to plain.
const BROADCAST_TARGET: f64 = 0.7;
/// How long to wait for one batch of broadcasts to be handled.
const WAIT_LIMIT: Duration = Duration::from_secs(10);
/// Plain subjects.
const ECHO_SUBJECT: &str = "bench.echo";
const TICK_SUBJECT: &str = "bench.tick";

/// Values of one measurement, one per timed repetition (warm-up excluded).
#[derive(Default)]
struct Samples(Vec<f64>);

impl Samples {
    fn sorted(&self) -> Vec<f64> {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        v
    }

    fn median(&self) -> f64 {
        let v = self.sorted();
        v[v.len() / 2]
    }

    fn min(&self) -> f64 {
        self.sorted()[0]
    }

    fn max(&self) -> f64 {
        *self.sorted().last().expect("no samples")
    }
}

/// The `q` quantile (nearest rank) of sorted latencies, in µs.
fn quantile_us(sorted: &[Duration], q: f64) -> f64 {
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1e6
}

/// Counts handled events and wakes the waiter once a target is reached. The
/// count is cumulative over a benchmark, so that a late event cannot be
/// mistaken for one of the next batch.
struct Counter {
    count: AtomicUsize,
    target: AtomicUsize,
    reached: Notify,
}

impl Counter {
    fn new() -> Arc<Self> {
        Arc::new(Counter {
            count: AtomicUsize::new(0),
            target: AtomicUsize::new(usize::MAX),
            reached: Notify::new(),
        })
    }

    fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Sets the count to wait for; call it before publishing the batch.
    fn arm(&self, target: usize) {
        self.target.store(target, Ordering::SeqCst);
    }

    fn hit(&self) {
        let seen = self.count.fetch_add(1, Ordering::SeqCst) + 1;
        if seen >= self.target.load(Ordering::SeqCst) {
            self.reached.notify_waiters();
        }
    }

    /// Waits until the armed target is reached; `false` after `limit`.
    async fn wait(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        let target = self.target.load(Ordering::SeqCst);
        loop {
            let notified = self.reached.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count() >= target {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.count() >= target;
            }
        }
    }
}

/// Publishes batches and waits for them to be handled, keeping track of
/// events that never arrived.
struct Tally {
    counter: Arc<Counter>,
    expected: usize,
    missing: usize,
}

impl Tally {
    fn new(counter: Arc<Counter>) -> Self {
        Tally {
            counter,
            expected: 0,
            missing: 0,
        }
    }

    fn arm(&mut self, batch: usize) {
        self.expected += batch;
        self.counter.arm(self.expected);
    }

    async fn wait(&mut self) {
        if !self.counter.wait(WAIT_LIMIT).await {
            // Count what never came and carry on from what did.
            let got = self.counter.count();
            self.missing += self.expected.saturating_sub(got);
            self.expected = got;
        }
    }
}

fn payload(i: usize) -> Value {
    json!({ "seq": i })
}

fn body(i: usize) -> Bytes {
    Bytes::from(serde_json::to_vec(&payload(i)).expect("JSON body"))
}

async fn connect_happen(url: &str) -> Happen {
    Happen::connect(NatsConfig::new(url))
        .await
        .expect("happen connects to the bench's nats-server")
}

async fn connect_plain(url: &str) -> async_nats::Client {
    async_nats::connect(url)
        .await
        .expect("async-nats connects to the bench's nats-server")
}

/// Per-repetition latency quantiles (µs) and message sizes of the
/// request/response benchmark.
#[derive(Default)]
struct Latency {
    happen_p50: Samples,
    happen_p99: Samples,
    plain_p50: Samples,
    plain_p99: Samples,
    /// Bytes of happen's request event and reply on the wire.
    happen_sizes: (usize, usize),
    /// Bytes of the plain request and reply bodies.
    plain_sizes: (usize, usize),
}

/// Times `n` sequential requests through happen and through a plain client.
async fn request_response(url: String, n: usize) -> Latency {
    // Two runtimes, two connections: the request and its answer cross the
    // server, as between two processes (within one runtime they would not).
    let happen = connect_happen(&url).await;
    let serving = connect_happen(&url).await;
    let a = happen.node("client").expect("node");
    let b = serving.node("server").expect("node");
    b.on("ping", |e: Event, _cx: Context| async move {
        e.payload()["seq"].clone()
    })
    .expect("handler");
    b.ready().await.expect("ready");
    happen.flush().await.expect("flush");

    // Plain: a requesting client and a responding client.
    let client = connect_plain(&url).await;
    let responder = connect_plain(&url).await;
    let mut requests = responder.subscribe(ECHO_SUBJECT).await.expect("subscribe");
    happen_test::round_trip(&responder)
        .await
        .expect("round trip");
    let echo = tokio::spawn(async move {
        while let Some(message) = requests.next().await {
            let Some(reply) = message.reply else { continue };
            let request: Value = serde_json::from_slice(&message.payload).expect("JSON request");
            let answer = serde_json::to_vec(&request["seq"]).expect("JSON answer");
            responder
                .publish(reply, Bytes::from(answer))
                .await
                .expect("publish the answer");
        }
    });
    client.flush().await.expect("flush");

    // `flush` only writes the subscription: the server may not have
    // processed it when the first plain request arrives ("no responders"
    // when plain goes first, with `HAPPEN_BENCH_SIDE=plain`).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let side = std::env::var("HAPPEN_BENCH_SIDE").unwrap_or_default();
    let mut out = Latency::default();
    let mut happen_lat = Vec::with_capacity(n);
    let mut plain_lat = Vec::with_capacity(n);
    for rep in 0..=REPS {
        happen_lat.clear();
        plain_lat.clear();
        // Alternate in chunks: the machine's wake-up latency drifts over
        // seconds, and both sides should see the same drift.
        for first in (0..n).step_by(REQUEST_CHUNK) {
            let last = (first + REQUEST_CHUNK).min(n);
            for i in (first..last).filter(|_| side != "plain") {
                let start = Instant::now();
                let v = a
                    .send("server", Event::new("ping", payload(i)))
                    .await
                    .expect("happen request");
                happen_lat.push(start.elapsed());
                black_box(v);
            }
            for i in (first..last).filter(|_| side != "happen") {
                let start = Instant::now();
                let answer = client
                    .request(ECHO_SUBJECT, body(i))
                    .await
                    .expect("plain request");
                let v: Value = serde_json::from_slice(&answer.payload).expect("JSON answer");
                plain_lat.push(start.elapsed());
                black_box(v);
            }
        }

        // One side left out (`HAPPEN_BENCH_SIDE`): its cells read 0.
        for skipped in [&mut happen_lat, &mut plain_lat] {
            if skipped.is_empty() {
                skipped.push(Duration::ZERO);
            }
        }
        if rep > 0 {
            happen_lat.sort();
            plain_lat.sort();
            out.happen_p50.0.push(quantile_us(&happen_lat, 0.5));
            out.happen_p99.0.push(quantile_us(&happen_lat, 0.99));
            out.plain_p50.0.push(quantile_us(&plain_lat, 0.5));
            out.plain_p99.0.push(quantile_us(&plain_lat, 0.99));
        }
    }

    // Message sizes, outside the timed part, as a bystander on the server
    // sees them: a copy of the request on the node's subject, and the reply
    // on the inbox.
    let i = n.saturating_sub(1);
    let mut requests_seen = client
        .subscribe("happen.node.server")
        .await
        .expect("subscribe");
    let mut replies_seen = client.subscribe("_INBOX.>").await.expect("subscribe");
    // A request on the same connection is answered only after the server
    // has processed the subscriptions before it (a flush is not enough: it
    // only writes them).
    client
        .request(ECHO_SUBJECT, body(0))
        .await
        .expect("round trip");
    // That request's own reply, as seen on `_INBOX.>`.
    let _ = replies_seen.next().await.expect("our own reply copy");
    a.send("server", Event::new("ping", payload(i)))
        .await
        .expect("size probe");
    let request = requests_seen.next().await.expect("request copy");
    let reply = replies_seen.next().await.expect("reply copy");
    out.happen_sizes = (request.payload.len(), reply.payload.len());
    let answer = client.request(ECHO_SUBJECT, body(i)).await.expect("probe");
    out.plain_sizes = (body(i).len(), answer.payload.len());

    echo.abort();
    let _ = echo.await;
    happen.shutdown().await;
    serving.shutdown().await;
    out
}

/// Broadcast throughput (events/s per repetition) and events never handled.
#[derive(Default)]
struct Throughput {
    happen: Samples,
    plain: Samples,
    happen_missing: usize,
    plain_missing: usize,
}

/// Times `n` broadcasts, `batch` at a time (each batch handled before the
/// next is published), through happen and through a plain client.
async fn broadcast(url: String, n: usize, batch: usize, same_runtime: bool) -> Throughput {
    let batch = batch.clamp(1, n);
    let happen = connect_happen(&url).await;
    // The consumer in a second runtime (another connection: the events
    // cross the server), or in the producer's own (co-located: they do not).
    let consuming = if same_runtime {
        happen.clone()
    } else {
        connect_happen(&url).await
    };
    let a = happen.node("producer").expect("node");
    let b = consuming
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
    b.ready().await.expect("ready");
    happen.flush().await.expect("flush");

    // Plain: a publishing client and a subscribing client.
    let client = connect_plain(&url).await;
    let subscriber = connect_plain(&url).await;
    let mut ticks = subscriber.subscribe(TICK_SUBJECT).await.expect("subscribe");
    happen_test::round_trip(&subscriber)
        .await
        .expect("round trip");
    let plain_counter = Counter::new();
    let counter = plain_counter.clone();
    let consumer = tokio::spawn(async move {
        while let Some(message) = ticks.next().await {
            let v: Value = serde_json::from_slice(&message.payload).expect("JSON tick");
            black_box(v);
            counter.hit();
        }
    });
    client.flush().await.expect("flush");

    let mut out = Throughput::default();
    let mut happen_tally = Tally::new(happen_counter);
    let mut plain_tally = Tally::new(plain_counter);
    let side = std::env::var("HAPPEN_BENCH_SIDE").unwrap_or_default();
    // One side left out (`HAPPEN_BENCH_SIDE`): it sends nothing.
    let (happen_n, plain_n) = match side.as_str() {
        "happen" => (n, 0),
        "plain" => (0, n),
        _ => (n, n),
    };
    for rep in 0..=REPS {
        let start = Instant::now();
        for first in (0..happen_n).step_by(batch) {
            let last = (first + batch).min(n);
            happen_tally.arm(last - first);
            for i in first..last {
                a.broadcast(Event::new("tick", payload(i)))
                    .expect("happen broadcast");
            }
            happen_tally.wait().await;
        }
        let happen_time = start.elapsed();

        let start = Instant::now();
        for first in (0..plain_n).step_by(batch) {
            let last = (first + batch).min(n);
            plain_tally.arm(last - first);
            for i in first..last {
                client
                    .publish(TICK_SUBJECT, body(i))
                    .await
                    .expect("plain publish");
            }
            plain_tally.wait().await;
        }
        let plain_time = start.elapsed();

        if rep > 0 {
            out.happen
                .0
                .push(happen_n as f64 / happen_time.as_secs_f64());
            out.plain.0.push(plain_n as f64 / plain_time.as_secs_f64());
        }
    }
    out.happen_missing = happen_tally.missing;
    out.plain_missing = plain_tally.missing;

    consumer.abort();
    let _ = consumer.await;
    happen.shutdown().await;
    consuming.shutdown().await;
    out
}

fn fmt_us(us: f64) -> String {
    format!("{us:.1} µs")
}

fn yes_no(ok: bool) -> &'static str {
    if ok { "yes" } else { "no" }
}

/// What to run: requests and broadcasts per repetition, broadcast batch.
#[derive(Clone, Copy)]
struct Params {
    n: usize,
    broadcasts: usize,
    batch: usize,
}

/// One row of the latency table.
struct LatencyRow {
    runtime: &'static str,
    latency: Latency,
}

/// One row of the throughput table.
struct BroadcastRow {
    runtime: &'static str,
    benchmark: String,
    throughput: Throughput,
}

#[derive(Default)]
struct Results {
    latency: Vec<LatencyRow>,
    broadcast: Vec<BroadcastRow>,
}

fn run_all(results: &mut Results, runtime: &'static str, rt: &Runtime, url: &str, p: Params) {
    if selected(runtime, "request/response") {
        results.latency.push(LatencyRow {
            runtime,
            latency: run_on(rt, request_response(url.to_owned(), p.n)),
        });
    }
    let mut batches = vec![(format!("broadcast, batches of {}", p.batch), p.batch, false)];
    if p.batch < p.broadcasts {
        batches.push((
            format!("broadcast, one batch of {}", p.broadcasts),
            p.broadcasts,
            false,
        ));
    }
    batches.push((
        format!(
            "(for information) batches of {}, consumer in the producer's runtime: no server",
            p.batch
        ),
        p.batch,
        true,
    ));
    for (benchmark, batch, same_runtime) in batches {
        if selected(runtime, &benchmark) {
            results.broadcast.push(BroadcastRow {
                runtime,
                benchmark,
                throughput: run_on(
                    rt,
                    broadcast(url.to_owned(), p.broadcasts, batch, same_runtime),
                ),
            });
        }
    }
}

fn print_latency(rows: &[LatencyRow]) {
    if rows.is_empty() {
        return;
    }
    println!(
        "Request/response latency (lower is better; target: happen ≤ {LATENCY_TARGET}× plain)\n"
    );
    println!(
        "| runtime | happen p50 | plain p50 | ratio p50 | happen p99 | plain p99 | ratio p99 | met? (p50 / p99) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for row in rows {
        let l = &row.latency;
        let r50 = l.happen_p50.median() / l.plain_p50.median();
        let r99 = l.happen_p99.median() / l.plain_p99.median();
        println!(
            "| {} | {} | {} | {:.2} | {} | {} | {:.2} | {} / {} |",
            row.runtime,
            fmt_us(l.happen_p50.median()),
            fmt_us(l.plain_p50.median()),
            r50,
            fmt_us(l.happen_p99.median()),
            fmt_us(l.plain_p99.median()),
            r99,
            yes_no(r50 <= LATENCY_TARGET),
            yes_no(r99 <= LATENCY_TARGET),
        );
    }
    println!("\nSpread over the {REPS} repetitions (min..max of each repetition's quantile):\n");
    for row in rows {
        let l = &row.latency;
        println!(
            "- {}: happen p50 {:.1}..{:.1} µs, p99 {:.1}..{:.1} µs; plain p50 {:.1}..{:.1} µs, p99 {:.1}..{:.1} µs",
            row.runtime,
            l.happen_p50.min(),
            l.happen_p50.max(),
            l.happen_p99.min(),
            l.happen_p99.max(),
            l.plain_p50.min(),
            l.plain_p50.max(),
            l.plain_p99.min(),
            l.plain_p99.max(),
        );
    }
    let l = &rows[0].latency;
    println!(
        "\nOn the wire: happen request event {} B and reply {} B (compact MessagePack, with the causal context); \
         plain request {} B and reply {} B (JSON).\n",
        l.happen_sizes.0, l.happen_sizes.1, l.plain_sizes.0, l.plain_sizes.1
    );
}

fn print_broadcast(rows: &[BroadcastRow]) {
    if rows.is_empty() {
        return;
    }
    println!(
        "Broadcast throughput (publisher and subscriber on separate connections; target: happen ≥ {BROADCAST_TARGET}× plain)\n"
    );
    println!("| runtime | benchmark | happen | plain | ratio | met? |");
    println!("|---|---|---|---|---|---|");
    for row in rows {
        let t = &row.throughput;
        let ratio = t.happen.median() / t.plain.median();
        let met = if row.benchmark.starts_with('(') {
            "—"
        } else {
            yes_no(ratio >= BROADCAST_TARGET)
        };
        println!(
            "| {} | {} | {} | {} | {:.2} | {} |",
            row.runtime,
            row.benchmark,
            fmt_rate(t.happen.median()),
            fmt_rate(t.plain.median()),
            ratio,
            met,
        );
    }
    println!("\nSpread over the {REPS} repetitions (min..max):\n");
    for row in rows {
        let t = &row.throughput;
        println!(
            "- {} / {}: happen {}..{}, plain {}..{}",
            row.runtime,
            row.benchmark,
            fmt_rate(t.happen.min()),
            fmt_rate(t.happen.max()),
            fmt_rate(t.plain.min()),
            fmt_rate(t.plain.max()),
        );
    }
    let missing: Vec<String> = rows
        .iter()
        .filter(|r| r.throughput.happen_missing + r.throughput.plain_missing > 0)
        .map(|r| {
            format!(
                "{} / {}: happen {}, plain {}",
                r.runtime, r.benchmark, r.throughput.happen_missing, r.throughput.plain_missing
            )
        })
        .collect();
    if missing.is_empty() {
        println!("\nEvery broadcast was handled (none missing).");
    } else {
        println!(
            "\nMISSING (not handled within {} s): {}",
            WAIT_LIMIT.as_secs(),
            missing.join("; ")
        );
    }
}

fn main() {
    let n = env_usize("HAPPEN_BENCH_N", DEFAULT_N);
    let broadcasts = env_usize("HAPPEN_BENCH_BROADCASTS", DEFAULT_BROADCASTS);
    let params = Params {
        n,
        broadcasts,
        batch: env_usize("HAPPEN_BENCH_BATCH", DEFAULT_BATCH).min(broadcasts),
    };
    let started = Instant::now();
    let mut server = NatsServer::start().expect(
        "cannot start nats-server; set HAPPEN_NATS_SERVER or run scripts/ensure-nats-server",
    );
    let url = server.url();
    let mut results = Results::default();

    let current = Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("current-thread runtime");
    run_all(&mut results, "current-thread", &current, &url, params);
    drop(current);

    let multi = Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("multi-thread runtime");
    run_all(
        &mut results,
        "multi-thread (2 workers)",
        &multi,
        &url,
        params,
    );
    drop(multi);
    server.stop();

    println!(
        "happen NATS benchmark: one nats-server ({}) on loopback, N = {n} requests and M = {broadcasts} broadcasts per repetition, \
         1 warm-up + {REPS} repetitions, medians; {} CPUs available\n",
        NatsServer::binary().display(),
        std::thread::available_parallelism().map_or(0, |p| p.get())
    );
    print_latency(&results.latency);
    print_broadcast(&results.broadcast);
    println!(
        "\nRatios: latency = happen / plain (lower is better); broadcast = happen ev/s / plain ev/s. \
         Total time {:.1} s.",
        started.elapsed().as_secs_f64()
    );
    if std::env::var_os(PINNED).is_none() {
        run_pinned();
    }
}

/// Set in the pinned child run.
const PINNED: &str = "HAPPEN_BENCH_PINNED";

/// Runs this benchmark again with everything (the bench and its
/// nats-server) on CPU 0, and prints its tables: without cross-CPU wake-ups
/// the latencies are much steadier.
fn run_pinned() {
    println!("\n## Pinned to CPU 0 (`taskset -c 0`)\n");
    let Ok(exe) = std::env::current_exe() else {
        println!("(cannot find this benchmark's executable: pinned run skipped)");
        return;
    };
    let status = std::process::Command::new("taskset")
        .arg("-c")
        .arg("0")
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .env(PINNED, "1")
        .status();
    match status {
        Ok(status) if status.success() => {}
        Ok(status) => println!("(the pinned run failed: {status})"),
        Err(e) => println!("(taskset is not available, pinned run skipped: {e})"),
    }
}

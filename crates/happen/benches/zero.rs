//! Zero-allocation processing beside the ordinary path and a raw baseline,
//! in one run.
//!
//! ```text
//! cargo bench -p happen --bench zero
//! HAPPEN_BENCH_N=20000 cargo bench -p happen --bench zero      # fewer messages per repetition
//! HAPPEN_BENCH_ONLY="in process" cargo bench -p happen --bench zero
//! HAPPEN_BENCH_CONTENDERS=zero cargo bench -p happen --bench zero   # under a profiler
//! ```
//!
//! Every message is a sensor reading: a sequence number (`u64`), a
//! temperature (`f64`) and a sensor name (4 bytes). Each receiver reads all
//! three and counts the message.
//!
//! In process (current-thread runtime):
//!
//! - **fire-and-forget**: `N` messages in batches of `HAPPEN_BENCH_BATCH`
//!   (send the batch, wait until all are handled). *raw*: a tokio unbounded
//!   mpsc channel of a plain struct to a task (what one would write by
//!   hand, no causal context). *zero*: `gateway.zero_tell(&sink, writer)`
//!   to a `sink.zero("reading", ..)` handler reading the fields through
//!   offsets. *ordinary*: `gateway.tell(&sink, Event::new("reading",
//!   json!({..})))` to an ordinary handler reading the JSON payload.
//! - **request→response**: `N` sequential round trips answered with the
//!   temperature doubled. *raw*: mpsc of (struct, oneshot sender) to a task.
//!   *zero*: `zero_send`, answered with a zero reply. *ordinary*: `send`,
//!   answered with a JSON value.
//!
//! Over NATS (one `nats-server` on loopback; sender and receiver in two
//! runtimes on two connections, as two processes would be):
//!
//! - **fire-and-forget**: *plain*: an `async-nats` client publishes the
//!   same bytes a zero event travels as (the buffer and its hash) to a
//!   subject another client subscribes to, counting messages. *zero*:
//!   `zero_tell` between the two runtimes. *ordinary*: `tell` of the same
//!   reading as a JSON payload.
//! - **request p50**: *plain*: `client.request` of those bytes to a
//!   responder client that answers 8 bytes. *zero*: `zero_send`.
//!
//! Reported: medians of `HAPPEN_BENCH_REPS` repetitions (default 5) after
//! one warm-up repetition, and ratios (throughput relative to the baseline;
//! 1.00 is as fast).

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use happen::prelude::*;
use happen::zero::{ZeroEvent, ZeroNext, ZeroWriter};
use happen_test::NatsServer;
use support::{current_thread_runtime, env_usize, fmt_rate, median, selected};
use tokio::sync::{Notify, mpsc, oneshot};

/// Counts handled messages and wakes the sender when a target is reached.
#[derive(Default)]
struct Counter {
    count: AtomicU64,
    target: AtomicU64,
    done: Notify,
}

impl Counter {
    fn arm(&self, n: u64) {
        self.count.store(0, Ordering::SeqCst);
        self.target.store(n, Ordering::SeqCst);
    }
    fn hit(&self) {
        if self.count.fetch_add(1, Ordering::AcqRel) + 1 == self.target.load(Ordering::Acquire) {
            self.done.notify_one();
        }
    }
    async fn wait(&self) {
        self.done.notified().await;
    }
}

/// The plain struct of the raw baseline.
struct Reading {
    seq: u64,
    celsius: f64,
    sensor: [u8; 4],
}

fn writer(seq: u64) -> ZeroWriter {
    let mut w = ZeroWriter::new("reading");
    w.u64("seq", seq).f64("celsius", 21.5).str("sensor", "s-17");
    w
}

/// Reads a zero reading's fields (as a real handler would).
fn read_zero(event: &ZeroEvent) -> Result<f64, happen::zero::ZeroError> {
    let offsets = event.offsets();
    let seq = event.u64(offsets.get("seq").unwrap_or(0))?;
    let celsius = event.f64(offsets.get("celsius").unwrap_or(0))?;
    let sensor = event.str(offsets.get("sensor").unwrap_or(0))?;
    Ok(celsius + (seq + sensor.len() as u64) as f64 * 0.0)
}

/// Whether `HAPPEN_BENCH_CONTENDERS` (a comma-separated subset of `raw`,
/// `zero`, `ordinary`; all when unset) keeps `name`.
fn wanted(name: &str) -> bool {
    std::env::var("HAPPEN_BENCH_CONTENDERS")
        .map_or(true, |list| list.split(',').any(|c| c.trim() == name))
}

/// Times `f` if `name` is wanted; NaN (shown as "—") if not.
async fn maybe<F, Fut>(name: &str, reps: usize, f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Duration>,
{
    if wanted(name) {
        timed(reps, f).await
    } else {
        Duration::ZERO
    }
}

struct Settings {
    n: u64,
    batch: u64,
    reps: usize,
}

/// Times `reps` repetitions (after one warm-up) of `f`, returning the median.
async fn timed<F, Fut>(reps: usize, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Duration>,
{
    f().await;
    let mut samples = Vec::with_capacity(reps);
    for _ in 0..reps {
        samples.push(f().await);
    }
    median(samples)
}

/// Sends `n` messages in batches: `send(i)` each, then waits for the batch.
async fn batched(n: u64, batch: u64, counter: &Counter, mut send: impl FnMut(u64)) -> Duration {
    let start = Instant::now();
    let mut first = 0;
    while first < n {
        let last = (first + batch).min(n);
        counter.arm(last - first);
        for i in first..last {
            send(i);
        }
        counter.wait().await;
        first = last;
    }
    start.elapsed()
}

struct Row {
    name: &'static str,
    raw: f64,
    zero: f64,
    ordinary: Option<f64>,
    baseline: &'static str,
}

/// The receiving node's handlers: a zero handler and an ordinary one, each
/// reading the three fields, counting one-way messages and answering
/// requests with the temperature doubled.
fn register_sink(sink: &Node, counter: &Arc<Counter>) {
    let c = counter.clone();
    sink.zero("reading", move |event, cx| {
        let celsius = read_zero(event)?;
        if cx.expects_response() {
            let mut reply = ZeroWriter::new("reading-ok");
            reply.f64("doubled", celsius * 2.0);
            return Ok(ZeroNext::Reply(reply));
        }
        c.hit();
        Ok(ZeroNext::Done)
    })
    .unwrap();
    let c = counter.clone();
    sink.on("ordinary", move |event: Event, cx: Context| {
        let c = c.clone();
        async move {
            let p = event.payload();
            let celsius = p["celsius"].as_f64().unwrap_or(0.0)
                + (p["seq"].as_u64().unwrap_or(0) + p["sensor"].as_str().map_or(0, str::len) as u64)
                    as f64
                    * 0.0;
            if !cx.expects_response() {
                c.hit();
            }
            json!(celsius * 2.0)
        }
    })
    .unwrap();
}

async fn in_process(s: &Settings) -> Vec<Row> {
    let mut rows = Vec::new();
    let happen = Happen::embedded();
    let gateway = happen.node("gateway").unwrap();
    let sink = happen.node("sink").unwrap();
    let counter = Arc::new(Counter::default());
    register_sink(&sink, &counter);
    let ordinary = |i: u64| {
        Event::new(
            "ordinary",
            json!({ "seq": i, "celsius": 21.5, "sensor": "s-17" }),
        )
    };

    if selected("in process", "fire-and-forget") {
        let (tx, mut rx) = mpsc::unbounded_channel::<Reading>();
        let c = counter.clone();
        tokio::spawn(async move {
            while let Some(r) = rx.recv().await {
                std::hint::black_box(r.celsius + (r.seq + r.sensor.len() as u64) as f64 * 0.0);
                c.hit();
            }
        });
        let raw = maybe("raw", s.reps, || {
            batched(s.n, s.batch, &counter, |i| {
                let _ = tx.send(Reading {
                    seq: i,
                    celsius: 21.5,
                    sensor: *b"s-17",
                });
            })
        })
        .await;
        let zero = maybe("zero", s.reps, || {
            batched(s.n, s.batch, &counter, |i| {
                gateway.zero_tell(&sink, writer(i)).unwrap()
            })
        })
        .await;
        let ord = maybe("ordinary", s.reps, || {
            batched(s.n, s.batch, &counter, |i| {
                drop(gateway.tell(&sink, ordinary(i)).unwrap())
            })
        })
        .await;
        let rate = |d: Duration| s.n as f64 / d.as_secs_f64();
        rows.push(Row {
            name: "fire-and-forget",
            raw: rate(raw),
            zero: rate(zero),
            ordinary: Some(rate(ord)),
            baseline: "tokio mpsc",
        });
    }
    if selected("in process", "request") {
        let (tx, mut rx) = mpsc::unbounded_channel::<(Reading, oneshot::Sender<f64>)>();
        tokio::spawn(async move {
            while let Some((r, reply)) = rx.recv().await {
                let _ = reply.send(r.celsius * 2.0 + (r.seq + r.sensor.len() as u64) as f64 * 0.0);
            }
        });
        let n = s.n / 2;
        let raw = maybe("raw", s.reps, || async {
            let start = Instant::now();
            for i in 0..n {
                let (reply, answer) = oneshot::channel();
                let _ = tx.send((
                    Reading {
                        seq: i,
                        celsius: 21.5,
                        sensor: *b"s-17",
                    },
                    reply,
                ));
                std::hint::black_box(answer.await.unwrap());
            }
            start.elapsed()
        })
        .await;
        let zero = maybe("zero", s.reps, || async {
            let start = Instant::now();
            for i in 0..n {
                let answer = gateway.zero_send(&sink, writer(i)).await.unwrap();
                std::hint::black_box(answer.zero().map(|z| z.get::<f64>("doubled")));
            }
            start.elapsed()
        })
        .await;
        let ord = maybe("ordinary", s.reps, || async {
            let start = Instant::now();
            for i in 0..n {
                std::hint::black_box(gateway.send(&sink, ordinary(i)).await.unwrap());
            }
            start.elapsed()
        })
        .await;
        let rate = |d: Duration| n as f64 / d.as_secs_f64();
        rows.push(Row {
            name: "request→response",
            raw: rate(raw),
            zero: rate(zero),
            ordinary: Some(rate(ord)),
            baseline: "tokio mpsc + oneshot",
        });
    }
    happen.shutdown().await;
    rows
}

/// Lets the server take a new subscription before anyone publishes to it
/// (a client's flush does not wait for the server to process it).
async fn settle(client: &async_nats::Client) {
    happen_test::round_trip(client).await.unwrap();
}

async fn over_nats(s: &Settings, server: &NatsServer) -> Vec<Row> {
    let mut rows = Vec::new();
    let receiver = Happen::connect(happen::NatsConfig::new(server.url()))
        .await
        .unwrap();
    let sender = Happen::connect(happen::NatsConfig::new(server.url()))
        .await
        .unwrap();
    let sink = receiver.node("sink").unwrap();
    let gateway = sender.node("gateway").unwrap();
    let counter = Arc::new(Counter::default());
    register_sink(&sink, &counter);
    receiver.flush().await.unwrap();
    sender.flush().await.unwrap();

    // The bytes a zero reading travels as: the buffer, then its hash.
    let sample = writer(0).finish("gateway").unwrap();
    let mut wire = sample.as_bytes().to_vec();
    wire.extend_from_slice(blake3::hash(sample.as_bytes()).as_bytes());
    let wire = Bytes::from(wire);
    let publisher = async_nats::connect(server.url()).await.unwrap();
    let subscriber = async_nats::connect(server.url()).await.unwrap();

    if selected("over NATS", "fire-and-forget") {
        let mut ticks = subscriber.subscribe("bench.zero.tick").await.unwrap();
        settle(&subscriber).await;
        let c = counter.clone();
        tokio::spawn(async move {
            while let Some(message) = ticks.next().await {
                // Reading the same fields: check and open the buffer.
                let bytes = &message.payload[..message.payload.len() - 32];
                if let Ok(event) = ZeroEvent::from_bytes(bytes) {
                    std::hint::black_box(read_zero(&event).ok());
                }
                c.hit();
            }
        });
        let plain = maybe("raw", s.reps, || async {
            let start = Instant::now();
            let mut first = 0;
            while first < s.n {
                let last = (first + s.batch).min(s.n);
                counter.arm(last - first);
                for _ in first..last {
                    publisher
                        .publish("bench.zero.tick", wire.clone())
                        .await
                        .unwrap();
                }
                counter.wait().await;
                first = last;
            }
            start.elapsed()
        })
        .await;
        let zero = maybe("zero", s.reps, || {
            batched(s.n, s.batch, &counter, |i| {
                gateway.zero_tell("sink", writer(i)).unwrap()
            })
        })
        .await;
        let ord = maybe("ordinary", s.reps, || {
            batched(s.n, s.batch, &counter, |i| {
                let event = Event::new(
                    "ordinary",
                    json!({ "seq": i, "celsius": 21.5, "sensor": "s-17" }),
                );
                drop(gateway.tell("sink", event).unwrap());
            })
        })
        .await;
        let rate = |d: Duration| s.n as f64 / d.as_secs_f64();
        rows.push(Row {
            name: "fire-and-forget",
            raw: rate(plain),
            zero: rate(zero),
            ordinary: Some(rate(ord)),
            baseline: "async-nats publish/subscribe",
        });
    }
    if selected("over NATS", "request") {
        let mut requests = subscriber.subscribe("bench.zero.echo").await.unwrap();
        settle(&subscriber).await;
        let responder = subscriber.clone();
        tokio::spawn(async move {
            while let Some(message) = requests.next().await {
                let bytes = &message.payload[..message.payload.len() - 32];
                let answer = ZeroEvent::from_bytes(bytes)
                    .ok()
                    .and_then(|e| read_zero(&e).ok())
                    .unwrap_or(0.0);
                if let Some(reply) = message.reply {
                    let _ = responder
                        .publish(reply, Bytes::copy_from_slice(&(answer * 2.0).to_le_bytes()))
                        .await;
                }
            }
        });
        let n = (s.n / 20).max(100);
        let mut plain = Vec::new();
        let mut zero = Vec::new();
        for _ in 0..=s.reps {
            for _ in 0..n {
                let start = Instant::now();
                std::hint::black_box(
                    publisher
                        .request("bench.zero.echo", wire.clone())
                        .await
                        .unwrap(),
                );
                plain.push(start.elapsed());
                let start = Instant::now();
                std::hint::black_box(gateway.zero_send("sink", writer(1)).await.unwrap());
                zero.push(start.elapsed());
            }
        }
        let p50 = |v: Vec<Duration>| median(v);
        let (plain, zero) = (p50(plain), p50(zero));
        println!(
            "over NATS request p50: zero {:.1} µs, plain {:.1} µs ({:.2}× plain)",
            zero.as_secs_f64() * 1e6,
            plain.as_secs_f64() * 1e6,
            zero.as_secs_f64() / plain.as_secs_f64()
        );
        rows.push(Row {
            name: "request p50 (ratio: plain ÷ zero)",
            raw: 1.0 / plain.as_secs_f64(),
            zero: 1.0 / zero.as_secs_f64(),
            ordinary: None,
            baseline: "async-nats request",
        });
    }
    sender.shutdown().await;
    receiver.shutdown().await;
    rows
}

/// A rate; a slow one (a round trip over the network) as its latency.
fn rate_or_dash(rate: f64) -> String {
    if !rate.is_finite() {
        "—".into()
    } else if rate < 100_000.0 {
        format!("{:.1} µs", 1e6 / rate)
    } else {
        fmt_rate(rate)
    }
}

fn print(title: &str, rows: &[Row]) {
    println!("\n{title}");
    println!("| | baseline | zero | ordinary | zero ÷ baseline | zero ÷ ordinary |");
    println!("|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} ({}) | {} | {} | {:.2} | {} |",
            r.name,
            rate_or_dash(r.raw),
            r.baseline,
            rate_or_dash(r.zero),
            r.ordinary.map_or("—".into(), rate_or_dash),
            r.zero / r.raw,
            r.ordinary
                .map_or("—".into(), |o| format!("{:.2}", r.zero / o)),
        );
    }
}

fn main() {
    let s = Settings {
        n: env_usize("HAPPEN_BENCH_N", 100_000) as u64,
        batch: env_usize("HAPPEN_BENCH_BATCH", 1_000) as u64,
        reps: env_usize("HAPPEN_BENCH_REPS", 5),
    };
    let rt = current_thread_runtime();
    let local = rt.block_on(in_process(&s));
    print(
        &format!(
            "In process, current-thread, {} messages, medians of {}:",
            s.n, s.reps
        ),
        &local,
    );
    if ["fire-and-forget", "request"]
        .iter()
        .any(|benchmark| selected("over NATS", benchmark))
    {
        let server = NatsServer::start().expect("nats-server starts");
        let nats = rt.block_on(over_nats(&s, &server));
        print(
            &format!(
                "Over NATS, current-thread, two connections, medians of {}:",
                s.reps
            ),
            &nats,
        );
    }
    println!(
        "\ngoals: in process fire-and-forget zero ÷ tokio mpsc ≥ 0.5; over NATS fire-and-forget zero ÷ plain ≥ 0.8"
    );
}

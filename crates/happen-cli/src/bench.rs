//! `happen bench`: the standard measurements of a Happen runtime beside a
//! baseline measured in the same run, with a progress bar, as a table.
//!
//! Embedded (no `--nats`): request→response, fire-and-forget and fan-out to
//! five receivers, each beside plain tokio channels doing the same (mpsc +
//! oneshot). Over NATS: request→response latency (p50, p99) between two
//! connections, beside plain async-nats request/reply of the same payload.
//! The project's own `cargo bench` suite measures more (the actor crates,
//! multi-thread runtimes, memory); this is the quick look at a machine or a
//! server.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use happen::prelude::*;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::{Notify, mpsc, oneshot};

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Measure over the NATS server at URL instead of in this process
    #[arg(long, value_name = "URL", env = crate::NATS_URL_ENV)]
    pub(crate) nats: Option<String>,

    /// Messages per repetition
    #[arg(long, value_name = "N", default_value_t = 20_000)]
    pub(crate) messages: usize,

    /// Repetitions of each measurement (the median is reported)
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub(crate) reps: usize,
}

/// Messages sent before waiting for them to be handled.
const BATCH: usize = 1000;
/// Receivers of the fan-out.
const FAN_OUT: usize = 5;

fn progress(total: usize) -> ProgressBar {
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

pub(crate) async fn bench(args: BenchArgs) -> Result<(), String> {
    let (n, reps) = (args.messages.max(BATCH), args.reps.max(1));
    match &args.nats {
        None => embedded(n, reps).await,
        Some(url) => over_nats(url, n, reps).await,
    }
}

type Measure = fn(usize) -> futures::future::BoxFuture<'static, Duration>;

async fn embedded(n: usize, reps: usize) -> Result<(), String> {
    let rows: [(&str, &str, Measure, Measure); 3] = [
        (
            "request→response",
            "ns per request",
            |n| Box::pin(happen_request(n)),
            |n| Box::pin(tokio_request(n)),
        ),
        (
            "fire-and-forget",
            "events/s",
            |n| Box::pin(happen_tell(n, 1)),
            |n| Box::pin(tokio_tell(n, 1)),
        ),
        (
            "fan-out to 5",
            "deliveries/s",
            |n| Box::pin(happen_tell(n, FAN_OUT)),
            |n| Box::pin(tokio_tell(n, FAN_OUT)),
        ),
    ];
    let bar = progress(rows.len() * reps * 2);
    let mut results = Vec::new();
    for (name, unit, happen, tokio) in rows {
        let (mut h, mut t) = (Vec::new(), Vec::new());
        for _ in 0..reps {
            bar.set_message(format!("{name}: happen"));
            // As spawned tasks: the runtime's scheduler, not block_on's
            // own polling, drives them (as in any application).
            h.push(tokio::spawn(happen(n)).await.map_err(|e| e.to_string())?);
            bar.inc(1);
            bar.set_message(format!("{name}: tokio channels"));
            t.push(tokio::spawn(tokio(n)).await.map_err(|e| e.to_string())?);
            bar.inc(1);
        }
        results.push((name, unit, median(h), median(t)));
    }
    bar.finish_and_clear();
    println!("happen bench (embedded, current-thread, {n} messages, medians of {reps})\n");
    println!("| measure | happen | tokio channels | throughput happen ÷ tokio |");
    println!("|---|---|---|---|");
    for (name, unit, h, t) in results {
        let per = |d: Duration, k: usize| {
            if unit == "ns per request" {
                format!("{:.0} ns", d.as_nanos() as f64 / n as f64)
            } else {
                format!("{:.2} M {unit}", (n * k) as f64 / d.as_secs_f64() / 1e6)
            }
        };
        let k = if name.starts_with("fan-out") {
            FAN_OUT
        } else {
            1
        };
        // Throughput ratio: above 1, happen is faster.
        let ratio = t.as_secs_f64() / h.as_secs_f64();
        println!("| {name} | {} | {} | {ratio:.2} |", per(h, k), per(t, k));
    }
    println!(
        "\nhappen stamps a full causal context on every event (id, sender, cause, transaction, path, time);\n\
         the channels carry the bare payload. `cargo bench -p happen --bench local` compares with ractor, kameo and actix."
    );
    Ok(())
}

async fn happen_request(n: usize) -> Duration {
    let happen = Happen::embedded();
    let a = happen.node("client").expect("node");
    let b = happen.node("server").expect("node");
    b.on("ping", |e: Event, _cx: Context| async move {
        e.payload()["seq"].clone()
    })
    .expect("handler");
    let started = Instant::now();
    for i in 0..n {
        let reply = a
            .send(&b, Event::new("ping", json!({ "seq": i })))
            .response()
            .await;
        debug_assert_eq!(reply.ok(), Some(json!(i)));
    }
    let elapsed = started.elapsed();
    happen.shutdown().await;
    elapsed
}

async fn tokio_request(n: usize) -> Duration {
    let (tx, mut rx) = mpsc::channel::<(Value, oneshot::Sender<Value>)>(BATCH);
    let server = tokio::spawn(async move {
        while let Some((payload, reply)) = rx.recv().await {
            let _ = reply.send(payload["seq"].clone());
        }
    });
    let started = Instant::now();
    for i in 0..n {
        let (reply, answer) = oneshot::channel();
        let _ = tx.send((json!({ "seq": i }), reply)).await;
        let _ = answer.await;
    }
    let elapsed = started.elapsed();
    drop(tx);
    let _ = server.await;
    elapsed
}

/// `n` one-way messages to `receivers` nodes (a tell to one, a broadcast
/// to several), in batches, each batch waited for.
async fn happen_tell(n: usize, receivers: usize) -> Duration {
    let happen = Happen::embedded();
    let sender = happen.node("sender").expect("node");
    let (count, target, done) = counters();
    let mut first = None;
    for r in 0..receivers {
        let node = happen
            .node_with(
                &format!("receiver-{r}"),
                NodeConfig::new().queue_limit(BATCH),
            )
            .expect("node");
        let (c, t, d) = (count.clone(), target.clone(), done.clone());
        node.on("tick", move |_e: Event, _cx: Context| {
            arrived(&c, &t, &d);
            async {}
        })
        .expect("handler");
        first.get_or_insert(node);
    }
    let first = first.expect("a receiver");
    let started = Instant::now();
    for start in (0..n).step_by(BATCH) {
        let last = (start + BATCH).min(n);
        target.store(last * receivers, Ordering::Relaxed);
        for i in start..last {
            let event = Event::new("tick", json!({ "seq": i }));
            let _ = if receivers == 1 {
                sender.tell(&first, event)
            } else {
                sender.broadcast(event)
            };
        }
        done.notified().await;
    }
    let elapsed = started.elapsed();
    happen.shutdown().await;
    elapsed
}

async fn tokio_tell(n: usize, receivers: usize) -> Duration {
    let (count, target, done) = counters();
    let mut senders = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..receivers {
        let (tx, mut rx) = mpsc::channel::<Value>(BATCH);
        let (c, t, d) = (count.clone(), target.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            while let Some(_payload) = rx.recv().await {
                arrived(&c, &t, &d);
            }
        }));
        senders.push(tx);
    }
    let started = Instant::now();
    for start in (0..n).step_by(BATCH) {
        let last = (start + BATCH).min(n);
        target.store(last * receivers, Ordering::Relaxed);
        for i in start..last {
            for tx in &senders {
                let _ = tx.send(json!({ "seq": i })).await;
            }
        }
        done.notified().await;
    }
    let elapsed = started.elapsed();
    drop(senders);
    for task in tasks {
        let _ = task.await;
    }
    elapsed
}

type Counters = (Arc<AtomicUsize>, Arc<AtomicUsize>, Arc<Notify>);

fn counters() -> Counters {
    (Arc::default(), Arc::default(), Arc::new(Notify::new()))
}

fn arrived(count: &AtomicUsize, target: &AtomicUsize, done: &Notify) {
    if count.fetch_add(1, Ordering::Relaxed) + 1 == target.load(Ordering::Relaxed) {
        done.notify_one();
    }
}

#[cfg(not(feature = "nats"))]
async fn over_nats(_url: &str, _n: usize, _reps: usize) -> Result<(), String> {
    Err("this build has no NATS support".to_owned())
}

#[cfg(feature = "nats")]
async fn over_nats(url: &str, n: usize, reps: usize) -> Result<(), String> {
    use futures::StreamExt;
    let n = n.min(5_000);
    let connect = |name: &'static str| async move {
        Happen::connect(happen::NatsConfig::new(url).name(name))
            .await
            .map_err(|e| format!("cannot connect to {url}: {e}"))
    };
    let server = connect("happen-bench-server").await?;
    let client = connect("happen-bench-client").await?;
    let node = server.node("bench-server").map_err(|e| e.to_string())?;
    node.on("ping", |e: Event, _cx: Context| async move {
        e.payload()["seq"].clone()
    })
    .map_err(|e| e.to_string())?;
    server.flush().await.map_err(|e| e.to_string())?;
    let asker = client.node("bench-client").map_err(|e| e.to_string())?;

    let plain_server = async_nats::connect(url).await.map_err(|e| e.to_string())?;
    let plain_client = async_nats::connect(url).await.map_err(|e| e.to_string())?;
    let mut subscription = plain_server
        .subscribe("happen-bench.plain")
        .await
        .map_err(|e| e.to_string())?;
    let responder = plain_server.clone();
    let answering = tokio::spawn(async move {
        while let Some(message) = subscription.next().await {
            if let Some(reply) = message.reply {
                let _ = responder.publish(reply, message.payload).await;
            }
        }
    });
    plain_server.flush().await.map_err(|e| e.to_string())?;

    let bar = progress(reps * 2);
    let (mut happen_lat, mut plain_lat) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        bar.set_message("request→response: happen");
        for i in 0..n {
            let started = Instant::now();
            asker
                .send("bench-server", Event::new("ping", json!({ "seq": i })))
                .response()
                .await
                .map_err(|e| e.to_string())?;
            happen_lat.push(started.elapsed());
        }
        bar.inc(1);
        bar.set_message("request→response: plain async-nats");
        for i in 0..n {
            let payload = serde_json::to_vec(&json!({ "seq": i })).map_err(|e| e.to_string())?;
            let started = Instant::now();
            plain_client
                .request("happen-bench.plain", payload.into())
                .await
                .map_err(|e| e.to_string())?;
            plain_lat.push(started.elapsed());
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    answering.abort();
    client.shutdown().await;
    server.shutdown().await;
    let pct = |samples: &mut Vec<Duration>, p: f64| {
        samples.sort();
        samples[((samples.len() - 1) as f64 * p) as usize]
    };
    let (h50, h99) = (pct(&mut happen_lat, 0.5), pct(&mut happen_lat, 0.99));
    let (p50, p99) = (pct(&mut plain_lat, 0.5), pct(&mut plain_lat, 0.99));
    println!("happen bench (over NATS at {url}, {n} requests × {reps})\n");
    println!("| request→response | happen | plain async-nats | latency happen ÷ plain |");
    println!("|---|---|---|---|");
    for (label, h, p) in [("p50", h50, p50), ("p99", h99, p99)] {
        println!(
            "| {label} | {:.1} µs | {:.1} µs | {:.2} |",
            h.as_secs_f64() * 1e6,
            p.as_secs_f64() * 1e6,
            h.as_secs_f64() / p.as_secs_f64()
        );
    }
    println!("\nA latency ratio: below 1 happen is faster; 1.10 or below is the project's goal.");
    Ok(())
}

//! Durable delivery beside plain JetStream, in the same run, on one
//! throwaway nats-server (loopback).
//!
//! ```text
//! cargo bench -p happen --bench durable
//! HAPPEN_BENCH_N=5000 cargo bench -p happen --bench durable   # fewer events per repetition
//! ```
//!
//! What is measured (medians of 3 timed repetitions after a warm-up):
//!
//! 1. **Pipelined throughput.** Happen: one runtime `tell`s N events to an
//!    at-least-once node of another runtime; the time runs until the node
//!    has handled all N (each stored in the stream, consumed, acked). Plain:
//!    one client publishes N messages to a JetStream stream (interest
//!    retention, acks awaited side by side), another consumes them through a
//!    durable pull consumer with explicit acks (same `max_ack_pending`); the
//!    time runs until it has acked all N. Goal: happen ≥ 0.6× plain.
//! 2. **Request latency.** Happen: `send(..).await` to an at-least-once
//!    node, one request at a time. Plain: publish to the stream with a reply
//!    subject in a header, the consumer answers it with a core publish and
//!    acks; the requester waits for the answer. p50 and p99. Goal: happen
//!    p50 ≤ 1.3× plain.
//!    Also printed: plain with a `Nats-Msg-Id` per message, the server-side
//!    de-duplication happen's events always carry.
//! 3. **Exactly-once overhead**: the throughput of 1 with an exactly-once
//!    node (a completion record per event) against at-least-once.
//! 4. **Recovery**: N events stored while the node's process is down; the
//!    rate at which a newly started process catches up.
//! 5. **Relay**: N events to an at-least-once node whose flow tells each
//!    on to an at-least-once sink; an event is acknowledged only once the
//!    event its flow emitted is stored. Plain: a consumer that publishes
//!    each message on, awaits the stream's acknowledgement, then acks (256
//!    at once, the consumer's `max_ack_pending`); a second consumer acks the
//!    relayed messages. Events per second until the sink has all N.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures::StreamExt;
use happen::nats::NatsConfig;
use happen::prelude::*;
use happen::{DeliveryConfig, Node};
use happen_test::NatsServer;

const DEFAULT_N: usize = 20_000;
const REQUESTS: usize = 2_000;
const REPS: usize = 3;
const THROUGHPUT_GOAL: f64 = 0.6;
const LATENCY_GOAL: f64 = 1.3;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn quantile_us(sorted: &[Duration], q: f64) -> f64 {
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1e6
}

fn body(i: usize) -> Bytes {
    Bytes::from(serde_json::to_vec(&json!({ "seq": i })).expect("JSON"))
}

fn durable(delivery: DeliveryConfig) -> NodeConfig {
    NodeConfig::new().delivery(delivery)
}

/// Counts handled events; `until` waits for a total.
#[derive(Clone, Default)]
struct Count(Arc<AtomicUsize>);

impl Count {
    fn attach(&self, node: &Node) {
        let count = self.clone();
        node.on("item", move |_e: Event, _cx: Context| {
            count.0.fetch_add(1, Ordering::Relaxed);
            async {}
        })
        .expect("handler");
    }

    async fn until(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.0.load(Ordering::Relaxed) < n {
            assert!(
                Instant::now() < deadline,
                "only {} of {n} handled",
                self.0.load(Ordering::Relaxed)
            );
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
}

/// Happen: events per second from the first tell until all are handled.
async fn happen_throughput(url: &str, n: usize, delivery: DeliveryConfig, rep: usize) -> f64 {
    let receiver = Happen::connect(NatsConfig::new(url))
        .await
        .expect("connect");
    let id = format!("sink-{rep}-{:?}", delivery.mode)
        .replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "");
    let node = receiver.node_with(&id, durable(delivery)).expect("node");
    let count = Count::default();
    count.attach(&node);
    receiver.flush().await.expect("flush");
    let rate = pipelined(url, &id, n, &count).await;
    receiver.shutdown().await;
    rate
}

/// Tells `n` items to `target` from a runtime of its own; events per
/// second from the first tell until `count` has reached `n`.
async fn pipelined(url: &str, target: &str, n: usize, count: &Count) -> f64 {
    let sender = Happen::connect(NatsConfig::new(url))
        .await
        .expect("connect");
    let from = sender.node("source").expect("node");
    let start = Instant::now();
    for i in 0..n {
        from.tell(target, Event::new("item", json!({ "seq": i })))
            .expect("tell");
        if i % 256 == 0 {
            tokio::task::yield_now().await;
        }
    }
    count.until(n).await;
    let rate = n as f64 / start.elapsed().as_secs_f64();
    sender.shutdown().await;
    rate
}

async fn plain_stream(js: &jetstream::Context) -> stream::Stream {
    js.get_or_create_stream(stream::Config {
        name: "PLAIN".into(),
        subjects: vec!["plain.>".into()],
        retention: stream::RetentionPolicy::Interest,
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .expect("plain stream")
}

async fn plain_consumer(
    stream: &stream::Stream,
    name: &str,
    subject: &str,
) -> consumer::PullConsumer {
    stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(name.into()),
            filter_subject: subject.into(),
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending: 256,
            ..Default::default()
        })
        .await
        .expect("plain consumer")
}

/// Plain JetStream: messages per second from the first publish until the
/// consumer has acked all.
async fn plain_throughput(url: &str, n: usize, rep: usize, with_ids: bool) -> f64 {
    let consuming = async_nats::connect(url).await.expect("connect");
    let js = jetstream::new(consuming);
    let stream = plain_stream(&js).await;
    let subject = format!("plain.t{rep}{with_ids}");
    let consumer = plain_consumer(&stream, &format!("t{rep}{with_ids}"), &subject).await;
    let mut messages = consumer.messages().await.expect("messages");
    let handled = tokio::spawn(async move {
        let mut seen = 0;
        while seen < n {
            let message = messages.next().await.expect("open").expect("message");
            message.ack().await.expect("ack");
            seen += 1;
        }
    });
    let publishing = jetstream::new(async_nats::connect(url).await.expect("connect"));
    let start = Instant::now();
    publish_all(&publishing, &subject, n, with_ids).await;
    handled.await.expect("consumer");
    n as f64 / start.elapsed().as_secs_f64()
}

/// Publishes `n` messages to `subject`, up to 1,024 awaiting the stream's
/// acknowledgement at once; returns once all are stored.
async fn publish_all(publishing: &jetstream::Context, subject: &str, n: usize, with_ids: bool) {
    let mut acks = futures::stream::FuturesUnordered::new();
    for i in 0..n {
        let mut headers = HeaderMap::new();
        if with_ids {
            headers.insert("Nats-Msg-Id", format!("{subject}-{i}").as_str());
        }
        let stored = publishing
            .publish_with_headers(subject.to_owned(), headers, body(i))
            .await
            .expect("publish");
        acks.push(std::future::IntoFuture::into_future(stored));
        while acks.len() >= 1024 {
            acks.next().await.expect("ack").expect("stored");
        }
    }
    while let Some(ack) = acks.next().await {
        ack.expect("stored");
    }
}

/// Happen: events per second through a relay: N tells to an at-least-once
/// node whose flow tells each on to an at-least-once sink (an event is
/// acknowledged once the event its flow emitted is stored), until the sink
/// has handled all N.
async fn happen_relay(url: &str, n: usize, rep: usize) -> f64 {
    let receiver = Happen::connect(NatsConfig::new(url))
        .await
        .expect("connect");
    let (relay, sink) = (format!("relay-{rep}"), format!("relay-sink-{rep}"));
    let node = receiver
        .node_with(&relay, durable(DeliveryConfig::at_least_once()))
        .expect("node");
    let to = sink.clone();
    node.on("item", move |e: Event, cx: Context| {
        let sent = cx
            .node()
            .tell(&to, Event::new("item", e.payload().clone()))
            .map(drop);
        async move { sent }
    })
    .expect("handler");
    let sink = receiver
        .node_with(&sink, durable(DeliveryConfig::at_least_once()))
        .expect("node");
    let count = Count::default();
    count.attach(&sink);
    receiver.flush().await.expect("flush");
    let rate = pipelined(url, &relay, n, &count).await;
    receiver.shutdown().await;
    rate
}

/// Plain JetStream relay done safely: each message is published on to the
/// sink's subject, and acknowledged once that publish is stored (up to the
/// consumer's 256 at once); messages per second until the sink's consumer
/// has acked all N.
async fn plain_relay(url: &str, n: usize, rep: usize) -> f64 {
    let relaying = async_nats::connect(url).await.expect("connect");
    let js = jetstream::new(relaying);
    let stream = plain_stream(&js).await;
    let (subject, onward) = (format!("plain.relay{rep}"), format!("plain.onward{rep}"));
    let relay = plain_consumer(&stream, &format!("relay{rep}"), &subject).await;
    let sink = plain_consumer(&stream, &format!("onward{rep}"), &onward).await;
    let relay_js = js.clone();
    tokio::spawn(async move {
        let messages = relay.messages().await.expect("messages");
        messages
            .for_each_concurrent(256, |message| {
                let (js, onward) = (relay_js.clone(), onward.clone());
                async move {
                    let message = message.expect("message");
                    let stored = js
                        .publish(onward, message.payload.clone())
                        .await
                        .expect("publish");
                    stored.await.expect("stored");
                    message.ack().await.expect("ack");
                }
            })
            .await;
    });
    let mut sunk = sink.messages().await.expect("messages");
    let handled = tokio::spawn(async move {
        for _ in 0..n {
            let message = sunk.next().await.expect("open").expect("message");
            message.ack().await.expect("ack");
        }
    });
    let publishing = jetstream::new(async_nats::connect(url).await.expect("connect"));
    let start = Instant::now();
    publish_all(&publishing, &subject, n, false).await;
    handled.await.expect("consumer");
    n as f64 / start.elapsed().as_secs_f64()
}

/// Happen: sequential requests to an at-least-once node; (p50, p99) in µs.
async fn happen_latency(url: &str, n: usize) -> (f64, f64) {
    let receiver = Happen::connect(NatsConfig::new(url))
        .await
        .expect("connect");
    let node = receiver
        .node_with("echo", durable(DeliveryConfig::at_least_once()))
        .expect("node");
    node.on("ping", |e: Event, _cx: Context| async move {
        e.payload().clone()
    })
    .expect("handler");
    receiver.flush().await.expect("flush");
    let sender = Happen::connect(NatsConfig::new(url))
        .await
        .expect("connect");
    let from = sender.node("asker").expect("node");
    let mut times = Vec::with_capacity(n);
    for i in 0..n + n / 10 {
        let start = Instant::now();
        from.send("echo", Event::new("ping", json!({ "seq": i })))
            .await
            .expect("answer");
        if i >= n / 10 {
            times.push(start.elapsed());
        }
    }
    times.sort();
    sender.shutdown().await;
    receiver.shutdown().await;
    (quantile_us(&times, 0.5), quantile_us(&times, 0.99))
}

/// Plain JetStream request: publish with a reply header, the consumer
/// answers and acks; (p50, p99) in µs.
async fn plain_latency(url: &str, n: usize) -> (f64, f64) {
    let serving = async_nats::connect(url).await.expect("connect");
    let js = jetstream::new(serving.clone());
    let stream = plain_stream(&js).await;
    let consumer = plain_consumer(&stream, "echo", "plain.echo").await;
    let mut messages = consumer.messages().await.expect("messages");
    tokio::spawn(async move {
        while let Some(Ok(message)) = messages.next().await {
            if let Some(reply) = message.headers.as_ref().and_then(|h| h.get("Reply-To")) {
                let _ = serving
                    .publish(reply.as_str().to_owned(), message.payload.clone())
                    .await;
            }
            let _ = message.ack().await;
        }
    });
    let client = async_nats::connect(url).await.expect("connect");
    let publishing = jetstream::new(client.clone());
    let inbox = client.new_inbox();
    let mut answers = client.subscribe(inbox.clone()).await.expect("subscribe");
    let mut times = Vec::with_capacity(n);
    for i in 0..n + n / 10 {
        let start = Instant::now();
        let mut headers = HeaderMap::new();
        headers.insert("Reply-To", inbox.as_str());
        let stored = publishing
            .publish_with_headers("plain.echo", headers, body(i))
            .await
            .expect("publish");
        answers.next().await.expect("answer");
        stored.await.expect("stored");
        if i >= n / 10 {
            times.push(start.elapsed());
        }
    }
    times.sort();
    (quantile_us(&times, 0.5), quantile_us(&times, 0.99))
}

/// Events per second a newly started process catches up with, after `n`
/// were stored while its node was down.
async fn recovery(url: &str, n: usize) -> f64 {
    let config = durable(DeliveryConfig::at_least_once());
    let first = Happen::connect(NatsConfig::new(url))
        .await
        .expect("connect");
    first.node_with("recovering", config.clone()).expect("node");
    first.flush().await.expect("flush");
    first.shutdown().await;
    let sender = Happen::connect(NatsConfig::new(url))
        .await
        .expect("connect");
    let from = sender.node("source").expect("node");
    for i in 0..n {
        from.tell("recovering", Event::new("item", json!({ "seq": i })))
            .expect("tell");
        if i % 256 == 0 {
            tokio::task::yield_now().await;
        }
    }
    sender.flush().await.expect("stored");
    let start = Instant::now();
    let second = Happen::connect(NatsConfig::new(url))
        .await
        .expect("connect");
    let node = second.node_with("recovering", config).expect("node");
    let count = Count::default();
    count.attach(&node);
    count.until(n).await;
    let rate = n as f64 / start.elapsed().as_secs_f64();
    second.shutdown().await;
    sender.shutdown().await;
    rate
}

fn main() {
    let n = env_usize("HAPPEN_BENCH_N", DEFAULT_N);
    let requests = env_usize("HAPPEN_BENCH_REQUESTS", REQUESTS);
    let server = NatsServer::start().expect("nats-server (scripts/ensure-nats-server)");
    let url = server.url();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "happen durable-delivery benchmark: N = {n} events per repetition, {requests} requests, 1 warm-up + {REPS} repetitions, medians; 2 CPUs, multi-thread runtime"
    );
    let (mut happen_rates, mut plain_rates, mut exactly_rates, mut id_rates) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    rt.block_on(async {
        for rep in 0..=REPS {
            let h = happen_throughput(&url, n, DeliveryConfig::at_least_once(), rep).await;
            let p = plain_throughput(&url, n, rep, false).await;
            let d = plain_throughput(&url, n, rep, true).await;
            let e = happen_throughput(&url, n, DeliveryConfig::exactly_once(), rep).await;
            if rep > 0 {
                happen_rates.push(h);
                plain_rates.push(p);
                exactly_rates.push(e);
                id_rates.push(d);
            }
        }
    });
    let (h, p, e, d) = (
        median(happen_rates),
        median(plain_rates),
        median(exactly_rates),
        median(id_rates),
    );
    let (hl, pl) = rt.block_on(async {
        (
            happen_latency(&url, requests).await,
            plain_latency(&url, requests).await,
        )
    });
    let catch_up = rt.block_on(recovery(&url, n));
    let (mut relay_rates, mut plain_relay_rates) = (Vec::new(), Vec::new());
    rt.block_on(async {
        for rep in 0..=REPS {
            let h = happen_relay(&url, n, rep).await;
            let p = plain_relay(&url, n, rep).await;
            if rep > 0 {
                relay_rates.push(h);
                plain_relay_rates.push(p);
            }
        }
    });
    let (relayed, plain_relayed) = (median(relay_rates), median(plain_relay_rates));

    println!();
    println!("| measure | happen | plain JetStream | ratio | goal |");
    println!("|---|---|---|---|---|");
    println!(
        "| pipelined throughput (at-least-once) | {:.1} k ev/s | {:.1} k msg/s | {:.2} | ≥ {THROUGHPUT_GOAL} {} |",
        h / 1e3,
        p / 1e3,
        h / p,
        if h / p >= THROUGHPUT_GOAL {
            "met"
        } else {
            "missed"
        }
    );
    println!(
        "| request latency p50 | {:.0} µs | {:.0} µs | {:.2} | ≤ {LATENCY_GOAL} {} |",
        hl.0,
        pl.0,
        hl.0 / pl.0,
        if hl.0 / pl.0 <= LATENCY_GOAL {
            "met"
        } else {
            "missed"
        }
    );
    println!(
        "| request latency p99 | {:.0} µs | {:.0} µs | {:.2} | — |",
        hl.1,
        pl.1,
        hl.1 / pl.1
    );
    println!();
    println!(
        "- plain JetStream with a `Nats-Msg-Id` on every message (de-duplication, as happen publishes): {:.1} k msg/s; happen / that: {:.2}",
        d / 1e3,
        h / d
    );
    println!(
        "- exactly-once throughput: {:.1} k ev/s, {:.2}× at-least-once (a completion record per event)",
        e / 1e3,
        e / h
    );
    println!(
        "- relay (each event's flow tells a durable sink; acknowledged once that is stored): happen {:.1} k ev/s, plain JetStream (publish, await stored, ack) {:.1} k msg/s; ratio {:.2}",
        relayed / 1e3,
        plain_relayed / 1e3,
        relayed / plain_relayed
    );
    println!(
        "- recovery: {:.1} k ev/s caught up by a process started after {n} events were stored",
        catch_up / 1e3
    );
}

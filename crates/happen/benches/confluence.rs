//! Confluence and streaming costs, on the embedded runtime and over NATS, in
//! one run on a current-thread tokio runtime:
//!
//! - **batch vs single sends**: the time to deliver 100 events and get the
//!   answers, three ways (the handler sums the values either way):
//!   - *concurrent*: 100 `send`s dispatched at once, then all awaited
//!     together (`join_all`): what a caller who has 100 events at hand and
//!     does not batch would write, and the fair comparison for a batch;
//!   - *sequential*: 100 `send`s, each awaited before the next is sent: 100
//!     round trips, for reference;
//!   - *batch*: one `send` of `Event::batch` of the same 100 events.
//!
//!   The speed-ups are concurrent time / batch time (what batching itself
//!   saves) and sequential time / batch time.
//! - **streamed items/s**: a handler emits N items with `cx.emit`, the
//!   requester consumes `Sent::stream()` to the end.
//!
//! ```text
//! cargo bench -p happen --bench confluence   # HAPPEN_BENCH_N streamed items (default 20000)
//! ```

use std::future::IntoFuture;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::join_all;
use happen::prelude::*;
use happen::{HappenConfig, NatsConfig};
use happen_test::NatsServer;

mod support;
use support::{current_thread_runtime, env_usize, median};

const REPS: usize = 5;

async fn timed<F, Fut>(mut run: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    run().await; // warm-up
    let mut samples = Vec::with_capacity(REPS);
    for _ in 0..REPS {
        let start = Instant::now();
        run().await;
        samples.push(start.elapsed());
    }
    median(samples)
}

fn events(n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| Event::new("reading", json!({ "value": i as f64 })))
        .collect()
}

/// One runtime's row of the table.
struct Figures {
    sequential: Duration,
    concurrent: Duration,
    batch: Duration,
    streamed_per_sec: f64,
}

async fn figures(happen: &Happen, stream_items: usize) -> Figures {
    let sender = happen.node("bench-sender").expect("node");
    let sink = happen.node("bench-sink").expect("node");
    sink.on("reading", |event: Event, _cx: Context| async move {
        json!(
            event
                .events()
                .iter()
                .filter_map(|e| e.payload()["value"].as_f64())
                .sum::<f64>()
        )
    })
    .expect("handler");
    sink.on("firehose", |event: Event, cx: Context| async move {
        let n = event.payload()["n"].as_u64().unwrap_or(0);
        for i in 0..n {
            cx.emit(json!({ "i": i })).await?;
        }
        Ok::<_, HappenError>(json!("done"))
    })
    .expect("handler");
    happen.flush().await.expect("flush");

    let sequential = timed(|| {
        let (sender, sink) = (sender.clone(), sink.clone());
        async move {
            for event in events(100) {
                sender.send(&sink, event).await.expect("single");
            }
        }
    })
    .await;
    let concurrent = timed(|| {
        let (sender, sink) = (sender.clone(), sink.clone());
        async move {
            // Every send is dispatched here, before the first is awaited.
            let pending: Vec<_> = events(100)
                .into_iter()
                .map(|event| sender.send(&sink, event).into_future())
                .collect();
            for answer in join_all(pending).await {
                answer.expect("single");
            }
        }
    })
    .await;
    let batch = timed(|| {
        let (sender, sink) = (sender.clone(), sink.clone());
        async move {
            sender
                .send(&sink, Event::batch(events(100)).expect("batch"))
                .await
                .expect("batch");
        }
    })
    .await;
    let streamed = timed(|| {
        let (sender, sink) = (sender.clone(), sink.clone());
        async move {
            let count = sender
                .send(&sink, Event::new("firehose", json!({ "n": stream_items })))
                .stream()
                .count()
                .await;
            assert_eq!(count, stream_items + 1);
        }
    })
    .await;
    Figures {
        sequential,
        concurrent,
        batch,
        streamed_per_sec: stream_items as f64 / streamed.as_secs_f64(),
    }
}

fn micros(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn main() {
    let stream_items: usize = env_usize("HAPPEN_BENCH_N", 20_000);
    let rt = current_thread_runtime();
    let server = NatsServer::start().expect("nats-server (run scripts/ensure-nats-server)");
    let url = server.url();
    rt.block_on(async move {
        let embedded = Happen::embedded_with(HappenConfig::default());
        let e = figures(&embedded, stream_items).await;
        embedded.shutdown().await;
        let nats = Happen::connect(NatsConfig::new(url)).await.expect("connect");
        let n = figures(&nats, stream_items / 4).await;
        nats.shutdown().await;

        println!("median of {REPS} after a warm-up; current-thread runtime; {stream_items} streamed items embedded, {} over NATS\n", stream_items / 4);
        println!(
            "| runtime | 100 concurrent sends | 100 sequential sends | 1 batch of 100 | batch vs concurrent | batch vs sequential | streamed items/s |"
        );
        println!("|---|---|---|---|---|---|---|");
        for (name, f) in [("embedded", e), ("NATS", n)] {
            let times = |d: Duration| d.as_secs_f64() / f.batch.as_secs_f64();
            println!(
                "| {name} | {} | {} | {} | {:.1}x | {:.1}x | {:.0} k/s |",
                micros(f.concurrent),
                micros(f.sequential),
                micros(f.batch),
                times(f.concurrent),
                times(f.sequential),
                f.streamed_per_sec / 1e3
            );
        }
    });
}

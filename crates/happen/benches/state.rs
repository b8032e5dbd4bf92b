//! State throughput: `node.state().set(..)` and `.get()` on the embedded
//! runtime (memory) and on the NATS runtime (JetStream KV), against plain
//! async-nats KV `update`/`get` on the same server as the baseline for the
//! NATS figures. One run, a current-thread tokio runtime, one nats-server
//! started by the bench on a free loopback port.
//!
//! ```text
//! cargo bench -p happen --bench state
//! HAPPEN_BENCH_N=500 cargo bench -p happen --bench state     # operations per repetition
//! ```
//!
//! Each figure is the median of 5 repetitions after one warm-up, in
//! operations per second (sequential operations: this is latency-bound).

use std::time::{Duration, Instant};

use bytes::Bytes;
use happen::prelude::*;
use happen::{HappenConfig, NatsConfig};
use happen_test::NatsServer;

mod support;
use support::{current_thread_runtime, env_usize, median};

const REPS: usize = 5;

fn ops_per_sec(d: Duration, n: usize) -> f64 {
    n as f64 / d.as_secs_f64()
}

async fn measure<F, Fut>(n: usize, mut op: F) -> f64
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut samples = Vec::with_capacity(REPS);
    for rep in 0..=REPS {
        let start = Instant::now();
        for i in 0..n {
            op(i).await;
        }
        if rep > 0 {
            samples.push(start.elapsed());
        }
    }
    ops_per_sec(median(samples), n)
}

async fn happen_figures(happen: &Happen, n: usize) -> (f64, f64) {
    let node = happen.node("bench-counter").expect("node");
    let set = measure(n, |_| {
        let node = node.clone();
        async move {
            node.state()
                .set(|s| json!(s.as_u64().unwrap_or(0) + 1))
                .await
                .expect("set");
        }
    })
    .await;
    let get = measure(n, |_| {
        let node = node.clone();
        async move {
            node.state().get().await.expect("get");
        }
    })
    .await;
    (set, get)
}

async fn raw_kv_figures(url: &str, n: usize) -> (f64, f64) {
    let client = async_nats::connect(url).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let kv = js
        .create_key_value(async_nats::jetstream::kv::Config {
            bucket: "bench-raw".into(),
            history: 1,
            ..Default::default()
        })
        .await
        .expect("bucket");
    let mut revision = kv
        .put("counter", Bytes::from_static(b"0"))
        .await
        .expect("put");
    let set = {
        let mut samples = Vec::with_capacity(REPS);
        for rep in 0..=REPS {
            let start = Instant::now();
            for _ in 0..n {
                // The same work as a state update: read, transform, conditional write.
                let current = kv.entry("counter").await.expect("entry").expect("present");
                let value: u64 = serde_json::from_slice(&current.value).expect("json");
                let next = Bytes::from(serde_json::to_vec(&(value + 1)).expect("json"));
                revision = kv
                    .update("counter", next, current.revision)
                    .await
                    .expect("update");
            }
            if rep > 0 {
                samples.push(start.elapsed());
            }
        }
        ops_per_sec(median(samples), n)
    };
    let _ = revision;
    let get = measure(n, |_| {
        let kv = kv.clone();
        async move {
            let bytes = kv.get("counter").await.expect("get").expect("present");
            let _: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        }
    })
    .await;
    (set, get)
}

fn rate(ops: f64) -> String {
    if ops >= 1e6 {
        format!("{:.2} M ops/s", ops / 1e6)
    } else if ops >= 1e3 {
        format!("{:.1} k ops/s", ops / 1e3)
    } else {
        format!("{ops:.0} ops/s")
    }
}

fn main() {
    let n: usize = env_usize("HAPPEN_BENCH_N", 2_000);
    let rt = current_thread_runtime();
    let server = NatsServer::start().expect("nats-server (run scripts/ensure-nats-server)");
    let url = server.url();
    rt.block_on(async move {
        let embedded = Happen::embedded_with(HappenConfig::default());
        let (e_set, e_get) = happen_figures(&embedded, n * 10).await;
        embedded.shutdown().await;

        let nats = Happen::connect(NatsConfig::new(url.clone())).await.expect("connect");
        let (n_set, n_get) = happen_figures(&nats, n).await;
        nats.shutdown().await;

        let (r_set, r_get) = raw_kv_figures(&url, n).await;

        println!("N = {} (embedded), {n} (NATS); median of {REPS}; current-thread runtime\n", n * 10);
        println!("| operation | embedded (memory) | NATS (JetStream KV) | plain async-nats KV | NATS / plain | NATS / embedded |");
        println!("|---|---|---|---|---|---|");
        println!(
            "| state set (read-modify-write) | {} | {} | {} | {:.2} | {:.4} |",
            rate(e_set),
            rate(n_set),
            rate(r_set),
            n_set / r_set,
            n_set / e_set
        );
        println!(
            "| state get | {} | {} | {} | {:.2} | {:.4} |",
            rate(e_get),
            rate(n_get),
            rate(r_get),
            n_get / r_get,
            n_get / e_get
        );
    });
}

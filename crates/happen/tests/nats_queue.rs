//! Backpressure across processes: a node's report that its queue passed
//! its threshold reaches a node of another runtime (another connection),
//! so a sender elsewhere can slow down.

use std::sync::Arc;
use std::time::Duration;

use happen::prelude::*;
use happen::system;
use happen_test::NatsServer;
use tokio::sync::{Notify, Semaphore, mpsc};

mod support;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backpressure_report_reaches_another_process() {
    let server = NatsServer::start().unwrap();
    let busy = connect(&server).await;
    let elsewhere = connect(&server).await;
    let worker = busy
        .node_with(
            "bpx-worker",
            NodeConfig::new()
                .max_concurrent(1)
                .queue_limit(4)
                .backpressure_threshold(0.5),
        )
        .unwrap();
    let permits = Arc::new(Semaphore::new(0));
    let started = Arc::new(Notify::new());
    let (p, s) = (permits.clone(), started.clone());
    worker
        .on("job", move |_e: Event, _cx: Context| {
            let (p, s) = (p.clone(), s.clone());
            async move {
                s.notify_one();
                if let Ok(permit) = p.acquire().await {
                    permit.forget();
                }
            }
        })
        .unwrap();
    let sender = elsewhere.node("bpx-sender").unwrap();
    let (tx, mut reports) = mpsc::unbounded_channel();
    sender
        .on(system::BACKPRESSURE, move |e: Event, _cx: Context| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(e.payload().clone());
            }
        })
        .unwrap();
    busy.flush().await.unwrap();
    elsewhere.flush().await.unwrap();

    sender
        .tell("bpx-worker", Event::new("job", json!(0)))
        .unwrap();
    within("the first job to start", 10, started.notified()).await;
    for i in 1..=2 {
        sender
            .tell("bpx-worker", Event::new("job", json!(i)))
            .unwrap();
    }
    let report = within("the backpressure report", 10, reports.recv())
        .await
        .unwrap();
    assert_eq!(report["node"], "bpx-worker");
    assert_eq!(
        (report["pressure"].clone(), report["queued"].clone()),
        (json!(true), json!(2))
    );
    permits.add_permits(3);
    let report = within("the relief report", 10, reports.recv())
        .await
        .unwrap();
    assert_eq!(report["pressure"], false);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), reports.recv())
            .await
            .is_err(),
        "one report each way"
    );
    busy.shutdown().await;
    elsewhere.shutdown().await;
}

//! Concurrency: flows run side by side within a node's limits, a full queue is reported to the
//! sender, and shutdown drains the flows in flight.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use happen::prelude::*;
use tokio::sync::Notify;

use super::{Backend, ev, never_answers, start};

pub async fn slow_flow_does_not_block_others(backend: &dyn Backend) {
    let h = start(backend).await;
    let a = h.node("slow-a").unwrap();
    let b = h.node("slow-b").unwrap();
    let release = never_answers(&b, "slow");
    b.on("fast", |_e: Event, _cx: Context| async { json!("fast") })
        .unwrap();
    let slow = a.send(&b, ev("slow", json!(null)));
    // The slow flow is still waiting; the fast one completes meanwhile.
    assert_eq!(
        a.send(&b, ev("fast", json!(null))).await.unwrap(),
        json!("fast")
    );
    release.notify_one();
    assert_eq!(slow.await.unwrap(), Value::Null);
}

pub async fn max_concurrent_bounds_running_flows(backend: &dyn Backend) {
    let h = start(backend).await;
    let a = h.node("mc-a").unwrap();
    let b = h
        .node_with("mc-b", NodeConfig::new().max_concurrent(2))
        .unwrap();
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (r, p) = (running.clone(), peak.clone());
    b.on("work", move |_e: Event, _cx: Context| {
        let (r, p) = (r.clone(), p.clone());
        async move {
            let now = r.fetch_add(1, Ordering::SeqCst) + 1;
            p.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            r.fetch_sub(1, Ordering::SeqCst);
        }
    })
    .unwrap();
    let sends: Vec<_> = (0..8)
        .map(|_| a.send(&b, ev("work", json!(null))))
        .collect();
    for s in sends {
        s.await.unwrap();
    }
    assert_eq!(
        peak.load(Ordering::SeqCst),
        2,
        "at most 2 flows at once, and 2 did overlap"
    );
}

pub async fn full_queue_is_reported_to_sender(backend: &dyn Backend) {
    let h = start(backend).await;
    let a = h.node("qf-a").unwrap();
    let b = h
        .node_with("qf-b", NodeConfig::new().max_concurrent(1).queue_limit(2))
        .unwrap();
    let release = Arc::new(Notify::new());
    let started = Arc::new(Notify::new());
    let (rel, st) = (release.clone(), started.clone());
    b.on("job", move |_e: Event, _cx: Context| {
        let (rel, st) = (rel.clone(), st.clone());
        async move {
            st.notify_one();
            rel.notified().await;
            json!("done")
        }
    })
    .unwrap();
    let running = a.send(&b, ev("job", json!(1)));
    started.notified().await; // the only slot is taken
    let queued: Vec<_> = (0..2).map(|i| a.send(&b, ev("job", json!(i)))).collect();
    let err = a.send(&b, ev("job", json!("extra"))).await.unwrap_err();
    assert_eq!(
        err,
        HappenError::QueueFull {
            node: "qf-b".into(),
            active: 1,
            queue_limit: 2
        }
    );
    // Everything accepted completes.
    for _ in 0..2 {
        release.notify_one(); // the running job ends; the next queued one starts
        started.notified().await;
    }
    release.notify_one();
    assert_eq!(running.await.unwrap(), json!("done"));
    for q in queued {
        assert_eq!(q.await.unwrap(), json!("done"));
    }
}

pub async fn node_id_patterns_override_limits(backend: &dyn Backend) {
    let config = HappenConfig::default()
        .default_limits(100, 10_000)
        .for_nodes(
            "api-*",
            NodeConfig::new().max_concurrent(200).queue_limit(20_000),
        )
        .for_nodes("worker-*", NodeConfig::new().max_concurrent(50));
    let h = backend.start(config).await;
    let api = h.node("api-gateway").unwrap().limits();
    let worker = h.node("worker-7").unwrap().limits();
    let plain = h.node("billing").unwrap().limits();
    let own = h
        .node_with("api-special", NodeConfig::new().max_concurrent(3))
        .unwrap()
        .limits();
    assert_eq!((api.max_concurrent, api.queue_limit), (200, 20_000));
    assert_eq!((worker.max_concurrent, worker.queue_limit), (50, 10_000));
    assert_eq!((plain.max_concurrent, plain.queue_limit), (100, 10_000));
    assert_eq!((own.max_concurrent, own.queue_limit), (3, 20_000));
}

/// A shutdown that runs out of time stops taking work: the flow running
/// runs on, but nothing queued starts after it, and the requesters behind
/// it hear `Shutdown` at once (a review found them all run, one by one).
pub async fn a_shutdown_out_of_time_starts_nothing_queued(backend: &dyn Backend) {
    let h = start(backend).await;
    let a = h.node("so-a").unwrap();
    let b = h
        .node_with("so-b", NodeConfig::new().max_concurrent(1))
        .unwrap();
    let started = Arc::new(AtomicUsize::new(0));
    let s = started.clone();
    b.on("slow", move |_e: Event, _cx: Context| {
        let s = s.clone();
        async move {
            s.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(200)).await;
            json!("done")
        }
    })
    .unwrap();
    let sends: Vec<_> = (0..5)
        .map(|_| {
            a.send(&b, ev("slow", json!(null)))
                .timeout(Duration::from_secs(10))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!h.shutdown_within(Duration::from_millis(50)).await);
    let mut outcomes = Vec::new();
    for sent in sends {
        outcomes.push(
            tokio::time::timeout(Duration::from_secs(5), sent.response())
                .await
                .expect("every requester hears"),
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(started.load(Ordering::SeqCst), 1, "{outcomes:?}");
    // The running flow's answer, unless it had to cross the connection
    // the runtime closed.
    assert!(
        matches!(&outcomes[0], Ok(v) if v == "done") || outcomes[0] == Err(HappenError::Shutdown),
        "{outcomes:?}"
    );
    assert!(
        outcomes[1..]
            .iter()
            .all(|o| o == &Err(HappenError::Shutdown)),
        "{outcomes:?}"
    );
}

pub async fn shutdown_drains_in_flight_flows(backend: &dyn Backend) {
    let h = start(backend).await;
    let a = h.node("sd-a").unwrap();
    let b = h
        .node_with("sd-b", NodeConfig::new().max_concurrent(2))
        .unwrap();
    let c = h.node("sd-c").unwrap();
    let finished = Arc::new(AtomicUsize::new(0));
    let f = finished.clone();
    c.on("inner", |_e: Event, _cx: Context| async {
        json!("inner-ok")
    })
    .unwrap();
    b.on("work", move |_e: Event, cx: Context| {
        let f = f.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            // Work caused by an in-flight flow is still accepted while draining.
            let inner = cx.node().send("sd-c", ev("inner", json!(null))).await?;
            f.fetch_add(1, Ordering::SeqCst);
            Ok::<_, HappenError>(inner)
        }
    })
    .unwrap();
    let sends: Vec<_> = (0..5)
        .map(|_| a.send(&b, ev("work", json!(null))))
        .collect();
    h.shutdown().await;
    assert_eq!(
        finished.load(Ordering::SeqCst),
        5,
        "running and queued flows completed"
    );
    for s in sends {
        assert_eq!(s.await.unwrap(), json!("inner-ok"));
    }
    let err = a.send(&c, ev("inner", json!(null))).await.unwrap_err();
    assert_eq!(err, HappenError::Shutdown);
    assert_eq!(
        a.broadcast(ev("inner", json!(null))).unwrap_err(),
        HappenError::Shutdown
    );
    assert!(matches!(h.node("late").unwrap_err(), HappenError::Shutdown));
    // Nor does a node take a new handler.
    let late_handler = a.on("late", |_e: Event, _cx: Context| async {});
    assert!(
        matches!(late_handler, Err(HappenError::Shutdown)),
        "{late_handler:?}"
    );
}

/// `Node::shutdown` takes one node out: the flows it runs and the events in
/// its queue finish, then senders get an error naming it (UnknownNode; over
/// NATS a sender it answered recently may first wait for it to come back,
/// then get Unreachable), its handlers are gone, and the id can be used
/// again; the other nodes keep working.
pub async fn node_shutdown_finishes_its_flows_and_frees_its_id(backend: &dyn Backend) {
    let h = start(backend).await;
    let client = h
        .node_with(
            "ns-client",
            NodeConfig::new().timeout(Duration::from_secs(1)),
        )
        .unwrap();
    let worker = h
        .node_with("ns-worker", NodeConfig::new().max_concurrent(1))
        .unwrap();
    let other = h.node("ns-other").unwrap();
    let finished = Arc::new(AtomicUsize::new(0));
    let f = finished.clone();
    worker
        .on("job", move |_e: Event, _cx: Context| {
            let f = f.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(30)).await;
                f.fetch_add(1, Ordering::SeqCst);
                json!("done")
            }
        })
        .unwrap();
    other
        .on("job", |_e: Event, _cx: Context| async { json!("other") })
        .unwrap();
    h.flush().await.unwrap();
    // One runs, two wait in the queue.
    let jobs: Vec<_> = (0..3)
        .map(|_| client.send(&worker, ev("job", json!(null))))
        .collect();
    tokio::time::sleep(Duration::from_millis(10)).await;
    worker.shutdown().await;
    assert_eq!(finished.load(Ordering::SeqCst), 3, "queued work finished");
    for job in jobs {
        assert_eq!(job.await.unwrap(), "done");
    }
    let err = client
        .send("ns-worker", ev("job", json!(null)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, HappenError::UnknownNode { ref node } | HappenError::Unreachable { ref node, .. } if node == "ns-worker"),
        "{err:?}"
    );
    assert!(matches!(
        worker.on("job", |_e: Event, _cx: Context| async {}),
        Err(HappenError::Shutdown)
    ));
    // Nor does it send anything new under its id.
    assert!(matches!(
        worker.tell(&other, ev("job", json!(null))),
        Err(HappenError::Shutdown)
    ));
    assert!(matches!(
        worker.broadcast(ev("job", json!(null))),
        Err(HappenError::Shutdown)
    ));
    assert_eq!(
        worker
            .send(&other, ev("job", json!(null)))
            .await
            .unwrap_err(),
        HappenError::Shutdown
    );
    assert_eq!(
        client.send(&other, ev("job", json!(null))).await.unwrap(),
        "other"
    );
    let again = h.node("ns-worker").unwrap();
    again
        .on("job", |_e: Event, _cx: Context| async {
            json!("new worker")
        })
        .unwrap();
    again.ready().await.unwrap();
    assert_eq!(
        client
            .send("ns-worker", ev("job", json!(null)))
            .await
            .unwrap(),
        "new worker"
    );
}

/// Waits (bounded) until `node` has `n` events waiting in its queue.
async fn until_queued(node: &Node, n: usize) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while node.queued() < n {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{} waiting, not {n}", node.queued()));
}

pub async fn priority_queue_starts_higher_priorities_first(backend: &dyn Backend) {
    let h = start(backend).await;
    let client = h.node("pq-client").unwrap();
    let worker = h
        .node_with(
            "pq-worker",
            NodeConfig::new()
                .max_concurrent(1)
                .queue_strategy(happen::QueueStrategy::Priority),
        )
        .unwrap();
    let release = Arc::new(Notify::new());
    let blocked = Arc::new(Notify::new());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (r, b) = (release.clone(), blocked.clone());
    worker
        .on("job", move |e: Event, _cx: Context| {
            let (tx, r, b) = (tx.clone(), r.clone(), b.clone());
            async move {
                let name = e.payload().as_str().unwrap_or_default().to_owned();
                if name == "blocker" {
                    b.notify_one();
                    r.notified().await;
                }
                let _ = tx.send(name);
            }
        })
        .unwrap();
    h.flush().await.unwrap();

    // The blocker holds the only slot; the rest wait in the queue.
    client.tell(&worker, ev("job", json!("blocker"))).unwrap();
    blocked.notified().await;
    for (name, priority) in [
        ("low", 1),
        ("high-1", 5),
        ("none", 0),
        ("mid", 3),
        ("high-2", 5),
    ] {
        let event = ev("job", json!(name));
        let event = if name == "none" {
            event
        } else {
            event.with_priority(priority)
        };
        client.tell(&worker, event).unwrap();
    }
    until_queued(&worker, 5).await;
    release.notify_one();
    let mut order = Vec::new();
    for _ in 0..6 {
        order.push(
            tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert_eq!(order, ["blocker", "high-1", "high-2", "mid", "low", "none"]);
}

pub async fn backpressure_is_reported_before_the_queue_is_full(backend: &dyn Backend) {
    let h = start(backend).await;
    let client = h.node("bp-client").unwrap();
    let worker = h
        .node_with(
            "bp-worker",
            NodeConfig::new()
                .max_concurrent(1)
                .queue_limit(10)
                .backpressure_threshold(0.5),
        )
        .unwrap();
    let (tx, mut reports) = tokio::sync::mpsc::unbounded_channel();
    client
        .on(
            happen::system::BACKPRESSURE,
            move |e: Event, _cx: Context| {
                let tx = tx.clone();
                async move {
                    // Reported by the node itself.
                    assert_eq!(e.causal().sender, "bp-worker");
                    let _ = tx.send(e.payload().clone());
                }
            },
        )
        .unwrap();
    // Each job waits for a permit: the test decides when they finish.
    let permits = Arc::new(tokio::sync::Semaphore::new(0));
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
    h.flush().await.unwrap();

    client.tell(&worker, ev("job", json!(0))).unwrap(); // takes the only slot
    started.notified().await;
    for i in 1..=4 {
        client.tell(&worker, ev("job", json!(i))).unwrap();
    }
    until_queued(&worker, 4).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(200), reports.recv())
            .await
            .is_err(),
        "no report below the threshold (5 of 10)"
    );
    // The fifth waiting event reaches the threshold: reported once, and
    // still accepted.
    client.tell(&worker, ev("job", json!(5))).unwrap();
    client.tell(&worker, ev("job", json!(6))).unwrap();
    let report = tokio::time::timeout(Duration::from_secs(10), reports.recv())
        .await
        .expect("a backpressure report")
        .unwrap();
    assert_eq!(report["node"], "bp-worker");
    assert_eq!(report["pressure"], true);
    assert_eq!(report["queued"], 5);
    assert_eq!(report["queueLimit"], 10);
    until_queued(&worker, 6).await;
    // Drained: reported once more, pressure off.
    permits.add_permits(7);
    let report = tokio::time::timeout(Duration::from_secs(10), reports.recv())
        .await
        .expect("the relief report")
        .unwrap();
    assert_eq!(report["pressure"], false);
    assert_eq!(report["node"], "bp-worker");
}

/// Events a sender sent first start first: a request after three tells is
/// handled after them, whoever runs it (in one process the awaiting
/// requester may run it itself, but never ahead of what was queued).
pub async fn a_request_does_not_overtake_events_sent_before_it(backend: &dyn Backend) {
    let h = start(backend).await;
    let a = h.node("order-a").unwrap();
    let b = h.node("order-b").unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let (ticks, counted) = (seen.clone(), seen.clone());
    b.on("tick", move |_e: Event, _cx: Context| {
        ticks.fetch_add(1, Ordering::SeqCst);
        async {}
    })
    .unwrap();
    b.on("count", move |_e: Event, _cx: Context| {
        let n = counted.load(Ordering::SeqCst);
        async move { json!(n) }
    })
    .unwrap();
    h.flush().await.unwrap();
    for i in 0..3 {
        a.tell(&b, ev("tick", json!(i))).unwrap();
    }
    assert_eq!(
        a.send(&b, ev("count", json!(null))).await.unwrap(),
        json!(3)
    );
}

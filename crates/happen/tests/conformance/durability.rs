//! Durable delivery: failed and refused events are tried again with backoff,
//! the requester gets the answer of the attempt that ends the event, the
//! last failure is dead-lettered and reported, and exactly-once flows that
//! run again emit the same events, which their durable receivers take once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use happen::prelude::*;
use happen::{DeliveryConfig, system};
use tokio::sync::mpsc;

use super::{Backend, ev, recv, start};

/// Quick retries, so that the tests do not wait for the default backoff.
fn quick(delivery: DeliveryConfig) -> NodeConfig {
    NodeConfig::new()
        .delivery(delivery.backoff(Duration::from_millis(10), Duration::from_millis(40)))
}

/// A handler that fails its first `failures` attempts, then answers the
/// attempt number; counts attempts in `attempts`.
fn flaky(failures: u32, attempts: Arc<AtomicU32>) -> impl happen::Handler {
    move |_e: Event, _cx: Context| {
        let attempts = attempts.clone();
        async move {
            let n = attempts.fetch_add(1, Ordering::SeqCst) + 1;
            if n <= failures {
                return Err(HappenError::Cancelled);
            }
            Ok(json!(n))
        }
    }
}

/// Waits until `count` reaches `n` (at most 20 s).
async fn reaches(count: &AtomicU32, n: u32, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while count.load(Ordering::SeqCst) < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: {} of {n}",
            count.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn failed_flow_is_retried_and_the_requester_gets_the_final_answer(backend: &dyn Backend) {
    let h = start(backend).await;
    let client = h.node("dur-client").unwrap();
    let worker = h
        .node_with("dur-worker", quick(DeliveryConfig::at_least_once()))
        .unwrap();
    let attempts = Arc::new(AtomicU32::new(0));
    worker.on("job", flaky(2, attempts.clone())).unwrap();
    h.flush().await.unwrap();
    // Two failures, then success: the requester sees only the success.
    let answer = client.send(&worker, ev("job", json!(1))).await.unwrap();
    assert_eq!(answer, json!(3));
    assert_eq!(attempts.load(Ordering::SeqCst), 3);

    // A tell is retried the same way.
    attempts.store(0, Ordering::SeqCst);
    client.tell(&worker, ev("job", json!(2))).unwrap();
    reaches(&attempts, 3, "the tell was not retried").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        3,
        "no attempt after success"
    );
    assert_eq!(h.counters().dead_lettered, 0);
}

/// A request's flow that streamed an item and then failed has given its
/// requester the failure as its final answer; the event is still tried
/// again (at-least-once), but what the retry emits goes nowhere: not back
/// to the requester (it has its answer), and not broadcast as
/// `<type>.item` events to whoever takes them (they are a request's
/// private answer).
pub async fn a_retried_streaming_request_sends_its_items_nowhere(backend: &dyn Backend) {
    use futures::StreamExt;
    let h = start(backend).await;
    let client = h.node("rs-client").unwrap();
    let exporter = h
        .node_with("rs-exporter", quick(DeliveryConfig::at_least_once()))
        .unwrap();
    let spy = h.node("rs-spy").unwrap();
    let attempts = Arc::new(AtomicU32::new(0));
    let counted = attempts.clone();
    exporter
        .on("export", move |_e: Event, cx: Context| {
            let counted = counted.clone();
            async move {
                let attempt = counted.fetch_add(1, Ordering::SeqCst) + 1;
                cx.emit(json!({ "row": "for rs-client", "attempt": attempt }))
                    .await?;
                if attempt == 1 {
                    return Err(HappenError::Cancelled);
                }
                Ok(json!("done"))
            }
        })
        .unwrap();
    let (leaked_tx, mut leaked) = mpsc::unbounded_channel();
    spy.on("export.item", move |e: Event, _cx: Context| {
        let leaked_tx = leaked_tx.clone();
        async move {
            let _ = leaked_tx.send(e.payload().clone());
        }
    })
    .unwrap();
    h.flush().await.unwrap();
    let got: Vec<_> = client
        .send(&exporter, ev("export", json!(null)))
        .stream()
        .collect()
        .await;
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(
        got[1].is_err(),
        "the first attempt's failure ends the stream: {got:?}"
    );
    reaches(&attempts, 2, "the request was not tried again").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        leaked.try_recv().is_err(),
        "the retry's items were broadcast"
    );
}

pub async fn last_failure_is_dead_lettered_and_reported(backend: &dyn Backend) {
    let h = start(backend).await;
    let client = h.node("dl-client").unwrap();
    let monitor = h.node("dl-monitor").unwrap();
    let worker = h
        .node_with(
            "dl-worker",
            quick(DeliveryConfig::at_least_once().max_attempts(3)),
        )
        .unwrap();
    let attempts = Arc::new(AtomicU32::new(0));
    worker.on("job", flaky(u32::MAX, attempts.clone())).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    monitor
        .on(system::DEAD_LETTER, super::recorder(tx, json!(null)))
        .unwrap();
    h.flush().await.unwrap();

    let sent = client.send(&worker, ev("job", json!({ "order": 7 })));
    let id = sent.id().to_owned();
    let error = sent.await.unwrap_err();
    assert!(
        matches!(&error, HappenError::HandlerFailed { node, .. } if node == "dl-worker"),
        "the last attempt's failure reaches the requester: {error:?}"
    );
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    let report = recv(&mut rx).await;
    let payload = report.payload();
    assert_eq!(payload["node"], "dl-worker");
    assert_eq!(payload["eventId"], id.as_str());
    assert_eq!(payload["eventType"], "job");
    assert_eq!(payload["attempts"], 3);
    assert_eq!(payload["event"]["payload"]["order"], 7);
    assert!(payload["error"].as_str().unwrap().contains("dl-worker"));
    assert_eq!(h.counters().dead_lettered, 1);
}

pub async fn saturated_durable_node_takes_events_later(backend: &dyn Backend) {
    let h = start(backend).await;
    let client = h.node("sat-client").unwrap();
    let worker = h
        .node_with(
            "sat-worker",
            quick(DeliveryConfig::at_least_once().max_attempts(50))
                .max_concurrent(1)
                .queue_limit(0),
        )
        .unwrap();
    let done = Arc::new(AtomicU32::new(0));
    let d = done.clone();
    worker
        .on("slow", move |_e: Event, _cx: Context| {
            let done = d.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                done.fetch_add(1, Ordering::SeqCst);
            }
        })
        .unwrap();
    h.flush().await.unwrap();
    // A direct node with one slot and no queue would refuse all but one.
    for i in 0..10 {
        client.tell(&worker, ev("slow", json!(i))).unwrap();
    }
    reaches(&done, 10, "not every event was processed").await;
    assert_eq!(h.counters().dead_lettered, 0);
    assert_eq!(h.counters().refused, 0);
}

pub async fn exactly_once_re_run_emits_the_same_events(backend: &dyn Backend) {
    let h = start(backend).await;
    let client = h.node("eo-client").unwrap();
    let payments = h
        .node_with("eo-payments", quick(DeliveryConfig::exactly_once()))
        .unwrap();
    let ledger = h
        .node_with("eo-ledger", quick(DeliveryConfig::exactly_once()))
        .unwrap();
    let attempts = Arc::new(AtomicU32::new(0));
    let emitted = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (a, e) = (attempts.clone(), emitted.clone());
    payments
        .on("charge", move |_event: Event, cx: Context| {
            let (attempts, emitted) = (a.clone(), e.clone());
            async move {
                // Emits, then fails the first time: the re-run emits again.
                let sent = cx.node().send("eo-ledger", Event::new("entry", json!(500)));
                emitted.lock().unwrap().push(sent.id().to_owned());
                if attempts.fetch_add(1, Ordering::SeqCst) == 0 {
                    return Err(HappenError::Cancelled);
                }
                Ok(json!("charged"))
            }
        })
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    ledger
        .on("entry", super::recorder(tx, json!(null)))
        .unwrap();
    h.flush().await.unwrap();

    assert_eq!(
        client
            .send(&payments, ev("charge", json!(null)))
            .await
            .unwrap(),
        json!("charged")
    );
    let emitted = emitted.lock().unwrap().clone();
    assert_eq!(emitted.len(), 2, "the flow ran twice");
    assert_eq!(emitted[0], emitted[1], "the re-run emitted the same event");
    let entry = recv(&mut rx).await;
    assert_eq!(entry.id(), emitted[0]);
    super::assert_quiet(&mut rx, "the ledger took a copy").await;
}

/// A handler that adds 1 to its node's state and to `tally`'s, then fails
/// its first attempt (so that its flow runs again).
fn counting_then_failing(attempts: Arc<AtomicU32>) -> impl happen::Handler {
    move |_event: Event, cx: Context| {
        let attempts = attempts.clone();
        async move {
            let add = |s: Value| json!(s.as_u64().unwrap_or(0) + 1);
            cx.node().state().set(add).await?;
            let tally = cx.node().happen().unwrap().state_of("so-tally")?;
            tally.set(add).await?;
            if attempts.fetch_add(1, Ordering::SeqCst) == 0 {
                return Err(HappenError::Cancelled);
            }
            Ok(json!("counted"))
        }
    }
}

pub async fn exactly_once_re_run_applies_its_state_changes_once(backend: &dyn Backend) {
    let h = start(backend).await;
    let client = h.node("so-client").unwrap();
    let once = h
        .node_with("so-once", quick(DeliveryConfig::exactly_once()))
        .unwrap();
    let least = h
        .node_with("so-least", quick(DeliveryConfig::at_least_once()))
        .unwrap();
    let (once_runs, least_runs) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    once.on("count", counting_then_failing(once_runs.clone()))
        .unwrap();
    least
        .on("count", counting_then_failing(least_runs.clone()))
        .unwrap();
    h.flush().await.unwrap();

    // Exactly-once: the flow ran twice, its two updates applied once.
    let answer = client.send(&once, ev("count", json!(null))).await.unwrap();
    assert_eq!(answer, json!("counted"));
    assert_eq!(once_runs.load(Ordering::SeqCst), 2, "the flow ran twice");
    assert_eq!(once.state().get().await.unwrap(), json!(1));
    let tally = h.state_of("so-tally").unwrap();
    assert_eq!(
        tally.get().await.unwrap(),
        json!(1),
        "another node's state too"
    );

    // At-least-once: the re-run's updates apply again.
    let answer = client.send(&least, ev("count", json!(null))).await.unwrap();
    assert_eq!(answer, json!("counted"));
    assert_eq!(least_runs.load(Ordering::SeqCst), 2);
    assert_eq!(least.state().get().await.unwrap(), json!(2));
    assert_eq!(tally.get().await.unwrap(), json!(3));

    // A later event's updates apply as usual (the marks are per event).
    once_runs.store(1, Ordering::SeqCst);
    client.send(&once, ev("count", json!(null))).await.unwrap();
    assert_eq!(once.state().get().await.unwrap(), json!(2));
    assert_eq!(tally.get().await.unwrap(), json!(4));
}

pub async fn exactly_once_flows_of_one_event_emit_distinct_events(backend: &dyn Backend) {
    let h = start(backend).await;
    let client = h.node("ef-client").unwrap();
    let source = h
        .node_with("ef-source", quick(DeliveryConfig::exactly_once()))
        .unwrap();
    let sink = h
        .node_with("ef-sink", quick(DeliveryConfig::exactly_once()))
        .unwrap();
    // Two handlers take the same event and each emits one event: their
    // ids derive from the cause and the emitting flow, so both arrive.
    for label in ["first", "second"] {
        source
            .on("order", move |_e: Event, cx: Context| async move {
                cx.node()
                    .tell("ef-sink", Event::new("line", json!(label)))?;
                Ok::<_, HappenError>(json!(label))
            })
            .unwrap();
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    sink.on("line", super::recorder(tx, json!(null))).unwrap();
    h.flush().await.unwrap();

    client.tell(&source, ev("order", json!(null))).unwrap();
    let (a, b) = (recv(&mut rx).await, recv(&mut rx).await);
    assert_ne!(a.id(), b.id());
    let mut labels = vec![a.payload().clone(), b.payload().clone()];
    labels.sort_by_key(|v| v.to_string());
    assert_eq!(labels, vec![json!("first"), json!("second")]);
    super::assert_quiet(&mut rx, "a third line").await;
}

pub async fn receipts_resolve_once_events_are_kept(backend: &dyn Backend) {
    let h = start(backend).await;
    let client = h.node("rc-client").unwrap();
    let durable = h
        .node_with("rc-durable", quick(DeliveryConfig::at_least_once()))
        .unwrap();
    let direct = h.node("rc-direct").unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    durable
        .on("note", super::recorder(tx.clone(), json!("noted")))
        .unwrap();
    direct
        .on("note", super::recorder(tx, json!("noted")))
        .unwrap();
    h.flush().await.unwrap();

    // A node that keeps no copy: known at once.
    let receipt = client.tell(&direct, ev("note", json!(1))).unwrap();
    assert!(receipt.is_ready());
    receipt.await.unwrap();
    // A durable node: once stored (over NATS, JetStream's acknowledgement).
    client
        .tell("rc-durable", ev("note", json!(2)))
        .unwrap()
        .await
        .unwrap();
    // A broadcast both take.
    client
        .broadcast(ev("note", json!(3)))
        .unwrap()
        .await
        .unwrap();
    // A request: stored first, then answered.
    let mut sent = client.send("rc-durable", ev("note", json!(4)));
    sent.stored().await.unwrap();
    assert_eq!(sent.response().await.unwrap(), json!("noted"));
    let mut payloads = Vec::new();
    for _ in 0..5 {
        payloads.push(recv(&mut rx).await.payload().as_i64().unwrap());
    }
    payloads.sort_unstable();
    assert_eq!(payloads, [1, 2, 3, 3, 4]);

    // A request refused before it left: its receipt says why.
    let mut refused = client.send("rc-durable", ev("not a type!", json!(null)));
    assert!(matches!(
        refused.stored().await,
        Err(HappenError::InvalidName(_))
    ));
}

pub async fn broadcasts_to_durable_nodes_are_retried_and_taken_once(backend: &dyn Backend) {
    let h = start(backend).await;
    let announcer = h.node("bc-announcer").unwrap();
    let durable = h
        .node_with("bc-durable", quick(DeliveryConfig::at_least_once()))
        .unwrap();
    let plain = h.node("bc-plain").unwrap();
    let attempts = Arc::new(AtomicU32::new(0));
    durable.on("price.*", flaky(1, attempts.clone())).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    plain
        .on("price.changed", super::recorder(tx, json!(null)))
        .unwrap();
    h.flush().await.unwrap();

    announcer
        .broadcast(ev("price.changed", json!({ "sku": "A-1" })))
        .unwrap();
    recv(&mut rx).await;
    reaches(
        &attempts,
        2,
        "the durable node's failed attempt was not retried",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        2,
        "one failed attempt, one success, no second copy"
    );
    super::assert_quiet(&mut rx, "the plain node took it once").await;
}

/// An event sent to a group of durable nodes is stamped once (one id for
/// every copy), and each node of the group takes its copy, once, whatever
/// its mode. (Over NATS each copy is stored under the event id and its
/// node: under the id alone the server dropped every copy after the first.)
pub async fn an_event_sent_to_a_group_reaches_each_durable_node(backend: &dyn Backend) {
    let h = start(backend).await;
    let sender = h.node("grp-sender").unwrap();
    let mut group = Vec::new();
    let handled = Arc::new(AtomicU32::new(0));
    for (id, mode) in [
        ("grp-ledger", DeliveryConfig::exactly_once()),
        ("grp-audit", DeliveryConfig::at_least_once()),
        ("grp-archive", DeliveryConfig::exactly_once()),
    ] {
        let node = h.node_with(id, quick(mode)).unwrap();
        let handled = handled.clone();
        node.on("entry", move |e: Event, _cx: Context| {
            handled.fetch_add(1, Ordering::SeqCst);
            async move { json!({ "by": id, "cents": e.payload()["cents"] }) }
        })
        .unwrap();
        group.push(id);
    }
    h.flush().await.unwrap();
    let sent = sender.send_to_all(group.clone(), ev("entry", json!({ "cents": 5 })));
    let id = sent.id().to_owned();
    let results = sent.await;
    for node in &group {
        let answer = results.get(*node).expect("a result per node");
        assert_eq!(
            answer.as_ref().ok(),
            Some(&json!({ "by": node, "cents": 5 })),
            "{node}: {answer:?} (event {id})"
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(handled.load(Ordering::SeqCst), 3, "each copy once");
}

/// An exactly-once flow that asks a durable node, then fails, runs again;
/// its request, numbered like every event the flow emits, is the same
/// request: it is not run again, and the re-run gets the first answer
/// (the request used to be dropped as a copy, unanswered, so every retry
/// failed the same way and the event went to the dead letters).
pub async fn a_re_run_flow_gets_the_answer_to_its_request_again(backend: &dyn Backend) {
    for (receiver_mode, label) in [
        (DeliveryConfig::exactly_once(), "exactly-once"),
        (DeliveryConfig::at_least_once(), "at-least-once"),
    ] {
        let h = start(backend).await;
        let client = h.node("rr-client").unwrap();
        let checkout = h
            .node_with("rr-checkout", quick(DeliveryConfig::exactly_once()))
            .unwrap();
        let fraud = h.node_with("rr-fraud", quick(receiver_mode)).unwrap();
        let scored = Arc::new(AtomicU32::new(0));
        let s = scored.clone();
        fraud
            .on("score", move |_e: Event, _cx: Context| {
                let n = s.fetch_add(1, Ordering::SeqCst) + 1;
                async move { json!({ "score": 7, "run": n }) }
            })
            .unwrap();
        let attempts = Arc::new(AtomicU32::new(0));
        let a = attempts.clone();
        checkout
            .on("checkout", move |_e: Event, cx: Context| {
                let a = a.clone();
                async move {
                    let attempt = a.fetch_add(1, Ordering::SeqCst) + 1;
                    let score = cx.node().send("rr-fraud", ev("score", json!({}))).await?;
                    if attempt == 1 {
                        return Err(HappenError::Cancelled);
                    }
                    Ok(json!({ "score": score, "attempt": attempt }))
                }
            })
            .unwrap();
        h.flush().await.unwrap();
        let answer = client
            .send(&checkout, ev("checkout", json!({})))
            .await
            .unwrap_or_else(|e| panic!("{label} receiver: {e}"));
        assert_eq!(answer["attempt"], 2, "{label}");
        let runs = scored.load(Ordering::SeqCst);
        match label {
            // Asked twice, run once: the copy got the first answer.
            "exactly-once" => {
                assert_eq!(answer["score"], json!({ "score": 7, "run": 1 }), "{label}");
                assert_eq!(runs, 1, "{label}: the copy was run");
            }
            // At-least-once: the copy may run again, and is answered.
            _ => assert!((1..=2).contains(&runs), "{label}: {runs} runs"),
        }
        h.shutdown().await;
    }
}

pub async fn a_node_falling_behind_is_reported_down_then_up(backend: &dyn Backend) {
    use happen::balance::{self, FlowBalanceConfig};
    let config = HappenConfig::default().flow_balance(
        FlowBalanceConfig::default()
            .interval(Duration::from_millis(20))
            .lag_threshold(3),
    );
    let h = backend.start(config).await;
    let ops = h.node("fb-ops").unwrap();
    let slow = h
        .node_with("fb-slow", NodeConfig::new().max_concurrent(1))
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    // A runtime-level handler (the documentation's `happen.on`).
    h.on("node.{down,up}", super::recorder(tx, json!(null)))
        .unwrap();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let g = gate.clone();
    slow.on("job", move |_e: Event, _cx: Context| {
        let gate = g.clone();
        async move {
            gate.acquire().await.unwrap().forget();
        }
    })
    .unwrap();
    h.flush().await.unwrap();
    for i in 0..6 {
        ops.tell(&slow, ev("job", json!(i))).unwrap();
    }
    let down = recv(&mut rx).await;
    assert_eq!(down.event_type(), balance::NODE_DOWN);
    assert_eq!(down.payload()["nodeId"], "fb-slow");
    assert_eq!(down.payload()["pattern"], "bottleneck");
    assert!(
        down.payload()["lagMetrics"]["messagesWaiting"]
            .as_u64()
            .unwrap()
            >= 3
    );
    gate.add_permits(6);
    let up = recv(&mut rx).await;
    assert_eq!(up.event_type(), balance::NODE_UP);
    assert_eq!(up.payload()["nodeId"], "fb-slow");
}

pub async fn a_timed_out_request_to_a_durable_node_is_still_processed(backend: &dyn Backend) {
    let h = start(backend).await;
    let client = h.node("to-client").unwrap();
    let worker = h
        .node_with("to-worker", quick(DeliveryConfig::at_least_once()))
        .unwrap();
    let done = Arc::new(AtomicU32::new(0));
    let d = done.clone();
    worker
        .on("slow", move |_e: Event, _cx: Context| {
            let done = d.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                done.fetch_add(1, Ordering::SeqCst);
                json!("finished")
            }
        })
        .unwrap();
    h.flush().await.unwrap();
    let error = client
        .send(&worker, ev("slow", json!(null)))
        .timeout(Duration::from_millis(50))
        .await
        .unwrap_err();
    assert!(matches!(error, HappenError::Timeout { .. }), "{error:?}");
    reaches(&done, 1, "the event was not processed after the timeout").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        done.load(Ordering::SeqCst),
        1,
        "processed once, not retried"
    );
}

/// Zero events have direct delivery only: a durable node takes no zero
/// handler, and a zero event to it is refused with the reason (it would
/// go around the store that keeps and settles the node's events), while
/// ordinary events still reach it.
pub async fn zero_handlers_and_zero_events_stay_off_durable_nodes(backend: &dyn Backend) {
    use happen::zero::{ZeroNext, ZeroWriter};
    let h = start(backend).await;
    let gateway = h.node("zd-gateway").unwrap();
    let ledger = h
        .node_with("zd-ledger", quick(DeliveryConfig::at_least_once()))
        .unwrap();
    let refused = ledger.zero("reading", |_e, _cx| Ok(ZeroNext::Done));
    assert!(
        matches!(&refused, Err(HappenError::Config(m)) if m.contains("zd-ledger") && m.contains("durable")),
        "a zero handler on a durable node: {refused:?}"
    );
    let (tx, mut rx) = mpsc::unbounded_channel();
    ledger
        .on("reading", super::recorder(tx, json!(null)))
        .unwrap();
    h.flush().await.unwrap();
    let writer = || {
        let mut w = ZeroWriter::new("reading");
        w.f64("celsius", 21.5);
        w
    };
    let told = gateway.zero_tell(&ledger, writer());
    assert!(
        matches!(&told, Err(HappenError::Config(m)) if m.contains("zd-ledger")),
        "a zero tell to a durable node: {told:?}"
    );
    let asked = gateway.zero_send(&ledger, writer()).await;
    assert!(
        matches!(&asked, Err(HappenError::Config(_))),
        "a zero request to a durable node: {:?}",
        asked.map(|a| a.into_value())
    );
    gateway
        .tell(&ledger, ev("reading", json!({ "celsius": 21.5 })))
        .unwrap();
    assert_eq!(recv(&mut rx).await.payload()["celsius"], 21.5);
}

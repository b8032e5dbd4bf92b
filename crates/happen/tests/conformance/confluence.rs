//! Confluence: one handler on a group of nodes runs a flow per node, and a batch of events is
//! one invocation.

use std::time::Duration;

use happen::prelude::*;
use tokio::sync::mpsc;

use super::{Backend, ev, never_answers, start};

pub async fn group_handler_runs_divergent_flows_per_node(backend: &dyn Backend) {
    let h = start(backend).await;
    let monitor = h.node("cf-monitor").unwrap();
    let group =
        happen::NodeGroup::new(["cf-alert", "cf-log", "cf-admin"].map(|id| h.node(id).unwrap()));
    async fn alert(_e: Event, _cx: Context) -> Value {
        json!({ "alertsSent": 10 })
    }
    async fn log(_e: Event, cx: Context) -> Value {
        json!({ "logged": cx.get("seen-by") })
    }
    async fn admin(_e: Event, _cx: Context) -> Value {
        json!({ "dashboardUpdated": true })
    }
    group
        .on("critical-alert", |_e: Event, cx: Context| async move {
            // Each node's flow has its own context.
            assert_eq!(cx.get("seen-by"), None);
            cx.set("seen-by", cx.node().id());
            match cx.node().id() {
                "cf-alert" => Flow::next(alert),
                "cf-log" => Flow::next(log),
                _ => Flow::next(admin),
            }
        })
        .unwrap();
    let sent = monitor.send_to_all(
        &group,
        ev("critical-alert", json!({ "issue": "disk full" })),
    );
    assert!(!sent.id().is_empty());
    let results = sent.await;
    assert_eq!(results.len(), 3);
    assert_eq!(
        results["cf-alert"].as_ref().unwrap(),
        &json!({ "alertsSent": 10 })
    );
    assert_eq!(
        results["cf-log"].as_ref().unwrap(),
        &json!({ "logged": "cf-log" })
    );
    assert_eq!(
        results["cf-admin"].as_ref().unwrap(),
        &json!({ "dashboardUpdated": true })
    );
}

/// A node named twice in a group is in it once: a handler registered on
/// the group runs once for each event the node takes.
pub async fn a_node_named_twice_in_a_group_is_in_it_once(backend: &dyn Backend) {
    let h = start(backend).await;
    let a = h.node("dg-a").unwrap();
    let group = happen::NodeGroup::new([a.clone(), h.node("dg-b").unwrap(), a.clone()]);
    assert_eq!(
        group
            .nodes()
            .iter()
            .map(|n| n.id().to_string())
            .collect::<Vec<_>>(),
        ["dg-a", "dg-b"]
    );
    let runs = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counted = runs.clone();
    let ids = group
        .on("ping", move |_e: Event, _cx: Context| {
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                json!("pong")
            }
        })
        .unwrap();
    assert_eq!(ids.len(), 2);
    h.flush().await.unwrap();
    let client = h.node("dg-client").unwrap();
    assert_eq!(
        client.send(&a, ev("ping", json!(null))).await.unwrap(),
        json!("pong")
    );
    assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1);
}

pub async fn group_send_reports_each_nodes_outcome_separately(backend: &dyn Backend) {
    let h = start(backend).await;
    let sender = h.node("gs-sender").unwrap();
    let ok = h.node("gs-ok").unwrap();
    let failing = h.node("gs-failing").unwrap();
    let slow = h.node("gs-slow").unwrap();
    ok.on("verify", |_e: Event, _cx: Context| async {
        json!({ "verified": true })
    })
    .unwrap();
    failing
        .on("verify", |_e: Event, _cx: Context| async {
            Err::<Value, _>("ledger offline")
        })
        .unwrap();
    let _release = never_answers(&slow, "verify");
    let results = sender
        .send_to_all(
            ["gs-ok", "gs-failing", "gs-slow", "gs-nobody"],
            ev("verify", json!(null)),
        )
        .timeout(Duration::from_millis(400))
        .response()
        .await;
    assert_eq!(
        results["gs-ok"].as_ref().unwrap(),
        &json!({ "verified": true })
    );
    assert!(
        matches!(&results["gs-failing"], Err(HappenError::HandlerFailed { cause, .. }) if cause == "ledger offline")
    );
    assert!(
        matches!(&results["gs-slow"], Err(HappenError::Timeout { .. })),
        "{:?}",
        results["gs-slow"]
    );
    assert!(
        matches!(&results["gs-nobody"], Err(HappenError::UnknownNode { .. })),
        "{:?}",
        results["gs-nobody"]
    );

    // A node named twice (by id and by handle) gets the event once.
    let (tx, mut ran) = mpsc::unbounded_channel();
    let counted = h.node("gs-counted").unwrap();
    counted
        .on("count", move |_e: Event, _cx: Context| {
            let tx = tx.clone();
            async move { tx.send(()).unwrap() }
        })
        .unwrap();
    let targets = [
        counted.clone(),
        h.existing_node("gs-counted").unwrap(),
        counted.clone(),
    ];
    let results = sender.send_to_all(&targets, ev("count", json!(null))).await;
    assert_eq!(results.len(), 1);
    assert!(results["gs-counted"].is_ok(), "{results:?}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut runs = 0;
    while ran.try_recv().is_ok() {
        runs += 1;
    }
    assert_eq!(runs, 1);
}

pub async fn batch_is_one_invocation_with_each_events_context(backend: &dyn Backend) {
    let h = start(backend).await;
    let sensors = h.node("bt-sensors").unwrap();
    let telemetry = h.node("bt-telemetry").unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel::<(Event, Option<usize>, u64)>();
    telemetry
        .on("sensor-reading", move |event: Event, cx: Context| {
            let tx = tx.clone();
            async move {
                tx.send((
                    event.clone(),
                    cx.batch().map(<[Event]>::len),
                    cx.received_at(),
                ))
                .unwrap();
                let sum: f64 = event
                    .events()
                    .iter()
                    .filter_map(|e| e.payload()["value"].as_f64())
                    .sum();
                json!({ "count": event.events().len(), "sum": sum })
            }
        })
        .unwrap();
    let readings: Vec<Event> = [10.0, 20.0, 30.0]
        .iter()
        .map(|v| ev("sensor-reading", json!({ "value": v })))
        .collect();
    let batch = Event::batch(readings).unwrap();
    let reply = sensors.send(&telemetry, batch).await.unwrap();
    assert_eq!(reply, json!({ "count": 3, "sum": 60.0 }));
    let (envelope, batch_len, received_at) = rx.recv().await.unwrap();
    assert!(envelope.is_batch());
    assert_eq!(batch_len, Some(3));
    assert!(received_at > 0);
    let members = envelope.batch_events().unwrap();
    let ids: std::collections::HashSet<&str> = members.iter().map(|m| m.id()).collect();
    assert_eq!(ids.len(), 3, "each event has its own id");
    for member in members {
        assert_ne!(member.id(), envelope.id());
        assert_eq!(member.causal().sender, "bt-sensors");
        assert_eq!(
            member.causal().correlation_id,
            envelope.causal().correlation_id
        );
        assert_eq!(member.causal().path, vec!["bt-sensors"]);
    }
    assert_eq!(
        rx.try_recv().ok().map(|_| ()),
        None,
        "one invocation for the whole batch"
    );
    // A single event is not a batch.
    let single = sensors
        .send(&telemetry, ev("sensor-reading", json!({ "value": 5.0 })))
        .await
        .unwrap();
    assert_eq!(single, json!({ "count": 1, "sum": 5.0 }));
    let (event, batch_len, _) = rx.recv().await.unwrap();
    assert!(!event.is_batch());
    assert_eq!(batch_len, None);
}

pub async fn batch_to_a_group(backend: &dyn Backend) {
    let h = start(backend).await;
    let sender = h.node("bg-sender").unwrap();
    let group = happen::NodeGroup::new([h.node("bg-a").unwrap(), h.node("bg-b").unwrap()]);
    group
        .on("process-order", |event: Event, cx: Context| async move {
            let total: f64 = event
                .events()
                .iter()
                .filter_map(|e| e.payload()["total"].as_f64())
                .sum();
            json!({ "node": cx.node().id(), "orders": event.events().len(), "total": total })
        })
        .unwrap();
    let batch = Event::batch([
        ev(
            "process-order",
            json!({ "orderId": "ORD-001", "total": 125.0 }),
        ),
        ev(
            "process-order",
            json!({ "orderId": "ORD-002", "total": 75.5 }),
        ),
    ])
    .unwrap();
    let results = sender.send_to_all(&group, batch).await;
    for id in ["bg-a", "bg-b"] {
        assert_eq!(
            results[id].as_ref().unwrap(),
            &json!({ "node": id, "orders": 2, "total": 200.5 })
        );
    }
}

pub async fn empty_and_mixed_batches_are_errors(_backend: &dyn Backend) {
    assert_eq!(
        Event::batch(Vec::new()).unwrap_err(),
        HappenError::EmptyBatch
    );
    let mixed = Event::batch([ev("a", json!(1)), ev("b", json!(2))]).unwrap_err();
    assert!(
        matches!(mixed, HappenError::InvalidBatch { .. }),
        "{mixed:?}"
    );
    let nested = Event::batch([Event::batch([ev("a", json!(1))]).unwrap()]).unwrap_err();
    assert!(
        matches!(nested, HappenError::InvalidBatch { .. }),
        "{nested:?}"
    );
}

//! Causality: every event carries its causal context (ids, correlation, path, sender) across
//! hops, awaits, responses and spawned work, without the user passing it on.

use std::time::Duration;

use happen::prelude::*;
use tokio::sync::mpsc;

use super::{Backend, assert_child_of, ev, recorder, recv, start};

pub async fn causality_is_automatic_across_three_hops(backend: &dyn Backend) {
    let h = start(backend).await;
    let a = h.node("hop-a").unwrap();
    let b = h.node("hop-b").unwrap();
    let c = h.node("hop-c").unwrap();
    let d = h.node("hop-d").unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();

    // b: waits, then sends on to c and awaits the answer (causality across .await)
    let tx_b = tx.clone();
    b.on("start", move |event: Event, cx: Context| {
        let tx = tx_b.clone();
        async move {
            tx.send(event).unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
            let c_reply = cx
                .node()
                .send("hop-c", ev("middle", json!({})))
                .response()
                .await?;
            Ok::<_, HappenError>(json!({ "from_c": c_reply }))
        }
    })
    .unwrap();
    // c: broadcasts to d from a second step, after an await
    let tx_c = tx.clone();
    c.on("middle", move |event: Event, _cx: Context| {
        let tx = tx_c.clone();
        async move {
            tx.send(event).unwrap();
            Flow::next(|_e: Event, cx: Context| async move {
                tokio::task::yield_now().await;
                cx.node().broadcast(ev("end", json!({})))?;
                Ok::<_, HappenError>(json!("c-done"))
            })
        }
    })
    .unwrap();
    d.on("end", recorder(tx.clone(), json!(null))).unwrap();

    let sent = a.send(&b, ev("start", json!({})));
    let root_id = sent.id().to_owned();
    let reply = sent.response().await.unwrap();
    assert_eq!(reply, json!({ "from_c": "c-done" }));

    let at_b = recv(&mut rx).await;
    let at_c = recv(&mut rx).await;
    let at_d = recv(&mut rx).await;
    assert_eq!(at_b.event_type(), "start");
    assert_eq!(at_c.event_type(), "middle");
    assert_eq!(at_d.event_type(), "end");

    let root = at_b.causal();
    assert_eq!(root.id, root_id);
    assert_eq!(root.causation_id, None);
    assert_eq!(
        root.correlation_id, root.id,
        "a root event correlates to itself"
    );
    assert_eq!(root.path, vec!["hop-a"]);
    assert_eq!(root.sender, "hop-a");
    assert_child_of(at_c.causal(), root, "hop-b");
    assert_child_of(at_d.causal(), at_c.causal(), "hop-c");
    assert_eq!(at_d.causal().path, vec!["hop-a", "hop-b", "hop-c"]);
    assert!(root.timestamp > 0 && at_d.causal().timestamp >= root.timestamp);
}

pub async fn user_correlation_id_is_inherited(backend: &dyn Backend) {
    let h = start(backend).await;
    let a = h.node("corr-a").unwrap();
    let b = h.node("corr-b").unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    b.on("first", |_e: Event, cx: Context| async move {
        cx.node().broadcast(ev("second", json!(null))).map(drop)
    })
    .unwrap();
    a.on("second", recorder(tx, json!(null))).unwrap();
    a.send(
        &b,
        ev("first", json!(null)).with_correlation_id("order-123"),
    )
    .response()
    .await
    .unwrap();
    let second = recv(&mut rx).await;
    assert_eq!(second.causal().correlation_id, "order-123");
    assert_eq!(second.causal().path, vec!["corr-a", "corr-b"]);
}

pub async fn origin_and_application_context_arrive(backend: &dyn Backend) {
    let h = start(backend).await;
    let a = h.node("origin-a").unwrap();
    let b = h.node("origin-b").unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    b.on("update-order", recorder(tx, json!(null))).unwrap();
    let event = ev("update-order", json!({ "orderId": "o-1" }))
        .with_source("user-456", "user")
        .with_context("tenant", json!("acme"));
    a.send(&b, event).response().await.unwrap();
    let got = recv(&mut rx).await;
    assert_eq!(got.origin().node_id, "origin-a");
    assert_eq!(got.origin().source_id.as_deref(), Some("user-456"));
    assert_eq!(got.origin().source_type.as_deref(), Some("user"));
    assert_eq!(got.context_value("tenant"), Some(&json!("acme")));
    assert_eq!(got.payload(), &json!({ "orderId": "o-1" }));
}

pub async fn event_ids_are_time_ordered(backend: &dyn Backend) {
    let h = start(backend).await;
    let a = h.node("ids-a").unwrap();
    let b = h.node("ids-b").unwrap();
    b.on("x", |_e: Event, _cx: Context| async {}).unwrap();
    let mut ids = Vec::new();
    for _ in 0..200 {
        ids.push(a.send(&b, ev("x", json!(null))).id().to_owned());
    }
    for pair in ids.windows(2) {
        assert!(
            pair[0] < pair[1],
            "ids must increase: {} then {}",
            pair[0],
            pair[1]
        );
    }
}

pub async fn response_event_carries_causal_context(backend: &dyn Backend) {
    let h = start(backend).await;
    let a = h.node("resp-a").unwrap();
    let b = h.node("resp-b").unwrap();
    b.on("q", |_e: Event, _cx: Context| async { json!(42) })
        .unwrap();
    let sent = a.send(&b, ev("q", json!(null)));
    let request_id = sent.id().to_owned();
    let response = sent.response_event().await.unwrap();
    assert_eq!(response.payload(), &json!(42));
    assert_eq!(
        response.causal().causation_id.as_deref(),
        Some(request_id.as_str())
    );
    assert_eq!(response.causal().correlation_id, request_id);
    assert_eq!(response.causal().sender, "resp-b");
    assert_eq!(response.causal().path, vec!["resp-a", "resp-b"]);
}

pub async fn spawned_work_keeps_causality(backend: &dyn Backend) {
    let h = start(backend).await;
    let a = h.node("spawn-a").unwrap();
    let b = h.node("spawn-b").unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    b.on("go", |_e: Event, cx: Context| async move {
        let node = cx.node().clone();
        happen::spawn(async move { node.broadcast(ev("from-task", json!(null))).map(drop) })
            .await
            .unwrap()
    })
    .unwrap();
    a.on("from-task", recorder(tx, json!(null))).unwrap();
    let sent = a.send(&b, ev("go", json!(null)));
    let id = sent.id().to_owned();
    sent.response().await.unwrap();
    let got = recv(&mut rx).await;
    assert_eq!(got.causal().causation_id.as_deref(), Some(id.as_str()));
    assert_eq!(got.causal().path, vec!["spawn-a", "spawn-b"]);
}

/// The origin's source and the application context travel down the whole
/// chain a flow starts (send, broadcast, response), unless an event sets its
/// own, which its descendants then inherit.
pub async fn origin_and_application_context_flow_to_child_events(backend: &dyn Backend) {
    let h = start(backend).await;
    let gateway = h.node("ctx-gateway").unwrap();
    let orders = h.node("ctx-orders").unwrap();
    let billing = h.node("ctx-billing").unwrap();
    let audit = h.node("ctx-audit").unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    orders
        .on("place", |_e: Event, cx: Context| async move {
            // Inherits everything from "place".
            let charged = cx
                .node()
                .send("ctx-billing", ev("charge", json!({})))
                .response_event()
                .await?;
            // Overrides the source and one field; keeps the other.
            cx.node().broadcast(
                ev("order.audited", json!({}))
                    .with_source("orders-service", "service")
                    .with_context("priority", json!("low")),
            )?;
            Ok::<_, HappenError>(serde_json::to_value(charged.context()).unwrap())
        })
        .unwrap();
    billing
        .on("charge", recorder(tx.clone(), json!("charged")))
        .unwrap();
    audit
        .on("order.audited", recorder(tx.clone(), json!(null)))
        .unwrap();
    audit.on("audit.ack", recorder(tx, json!(null))).unwrap();
    h.flush().await.unwrap();

    let root = ev("place", json!({}))
        .with_source("user-456", "user")
        .with_context("tenant", json!("acme"))
        .with_context("priority", json!("high"));
    let response_context = gateway.send(&orders, root).response().await.unwrap();
    let mut got = [recv(&mut rx).await, recv(&mut rx).await];
    got.sort_by_key(|e| e.event_type().to_owned());
    let (charge, audited) = (&got[0], &got[1]);
    assert_eq!(charge.event_type(), "charge");
    assert_eq!(charge.origin().node_id, "ctx-orders");
    assert_eq!(charge.origin().source_id.as_deref(), Some("user-456"));
    assert_eq!(charge.origin().source_type.as_deref(), Some("user"));
    assert_eq!(charge.context_value("tenant"), Some(&json!("acme")));
    assert_eq!(charge.context_value("priority"), Some(&json!("high")));
    // The response event billing sent back inherits too.
    assert_eq!(response_context["origin"]["sourceId"], "user-456");
    assert_eq!(response_context["tenant"], "acme");
    // An event that sets its own keeps it.
    assert_eq!(
        audited.origin().source_id.as_deref(),
        Some("orders-service")
    );
    assert_eq!(audited.origin().source_type.as_deref(), Some("service"));
    assert_eq!(audited.context_value("priority"), Some(&json!("low")));
    assert_eq!(audited.context_value("tenant"), Some(&json!("acme")));
}

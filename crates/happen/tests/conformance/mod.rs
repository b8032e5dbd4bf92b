//! The conformance suite: every behaviour a Happen user relies on, written once
//! and run against each runtime. A runtime joins by implementing [`Backend`]
//! and invoking [`conformance_suite!`] in its own test file.

#![allow(dead_code)] // each test binary uses the part of this module it needs

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use happen::prelude::*;
use happen::{Causal, HandlerId};
use tokio::sync::{Notify, mpsc};

/// Builds a fresh, isolated runtime for one test.
pub trait Backend: Send + Sync + 'static {
    /// A runtime with `config`.
    fn start(&self, config: HappenConfig) -> BoxFuture<'static, Happen>;
}

/// Generates one `#[tokio::test]` per conformance test for a backend.
#[macro_export]
macro_rules! conformance_suite {
    ($backend:expr) => {
        $crate::conformance_suite!(@tests $backend;
            causality_is_automatic_across_three_hops,
            user_correlation_id_is_inherited,
            origin_and_application_context_arrive,
            event_ids_are_time_ordered,
            response_event_carries_causal_context,
            spawned_work_keeps_causality,
            string_patterns_select_handlers,
            function_and_combinator_patterns_select_handlers,
            invalid_pattern_is_an_error_at_registration,
            invalid_event_type_is_rejected,
            invalid_and_duplicate_node_ids_are_rejected,
            steps_chain_and_share_context,
            step_can_loop_with_again,
            step_can_name_itself_with_step_macro,
            steps_branch_on_conditions,
            every_return_form_completes_the_flow,
            context_describes_the_flow,
            step_error_reaches_requester,
            error_in_later_step_reaches_requester,
            panic_reaches_requester_and_node_keeps_serving,
            broadcast_reaches_every_matching_node_including_sender,
            send_dispatches_without_awaiting,
            response_callback_receives_result,
            per_call_timeout,
            per_node_default_timeout,
            no_handler_is_reported_at_once,
            unknown_node_is_reported_at_once,
            removed_handler_no_longer_runs,
            several_handlers_each_run_and_first_registered_answers,
            slow_flow_does_not_block_others,
            max_concurrent_bounds_running_flows,
            full_queue_is_reported_to_sender,
            node_id_patterns_override_limits,
            shutdown_drains_in_flight_flows,
            state_get_set_and_projection,
            concurrent_state_updates_are_atomic,
            views_see_other_nodes_and_missing_nodes_are_none,
            global_state_is_shared_and_watchable,
            temporal_snapshots_record_the_causing_event,
            temporal_retention_by_count_and_age,
            error_whose_display_panics_is_reported_and_node_keeps_serving,
            panicking_matcher_counts_as_no_match,
            invalid_target_id_is_rejected,
            handler_ids_belong_to_their_node,
            timeout_counts_from_send,
            dropping_the_runtime_stops_its_nodes,
            send_from_a_thread_outside_tokio,
            group_handler_runs_divergent_flows_per_node,
            group_send_reports_each_nodes_outcome_separately,
            batch_is_one_invocation_with_each_events_context,
            batch_to_a_group,
            empty_and_mixed_batches_are_errors,
            stream_delivers_items_then_final_in_order,
            stream_error_after_items_arrives_in_order,
            slow_consumer_bounds_the_producer,
            dropping_the_stream_cancels_the_producer,
            continuation_step_can_stream,
            response_of_a_streaming_flow_is_its_final_value,
            broadcast_streaming_handler_broadcasts_its_items,
        );
    };
    (@tests $backend:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let backend = $backend;
                tokio::time::timeout(
                    std::time::Duration::from_secs(60),
                    conformance::$name(&backend),
                )
                .await
                .expect("conformance test did not finish within 60 s");
            }
        )*
    };
}

async fn start(backend: &dyn Backend) -> Happen {
    backend.start(HappenConfig::default()).await
}

/// A handler that records every event it receives and answers `reply`.
fn recorder(tx: mpsc::UnboundedSender<Event>, reply: Value) -> impl happen::Handler {
    move |event: Event, _cx: Context| {
        let tx = tx.clone();
        let reply = reply.clone();
        async move {
            let _ = tx.send(event);
            reply
        }
    }
}

async fn recv(rx: &mut mpsc::UnboundedReceiver<Event>) -> Event {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("no event within 10 s")
        .expect("channel closed")
}

/// Asserts that nothing more arrives within a short grace period.
async fn assert_quiet(rx: &mut mpsc::UnboundedReceiver<Event>, what: &str) {
    if let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
        panic!("{what}: unexpected event {e:?}");
    }
}

fn ev(event_type: &str, payload: Value) -> Event {
    Event::new(event_type, payload)
}

fn assert_child_of(child: &Causal, parent: &Causal, sender: &str) {
    assert_eq!(
        child.causation_id.as_deref(),
        Some(parent.id.as_str()),
        "causationId"
    );
    assert_eq!(child.correlation_id, parent.correlation_id, "correlationId");
    let mut path = parent.path.clone();
    path.push(happen::Id::from(sender));
    assert_eq!(child.path, path, "path");
    assert_eq!(child.sender, sender, "sender");
    assert_ne!(child.id, parent.id);
}

// ---------------------------------------------------------------- causality

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
        cx.node().broadcast(ev("second", json!(null)))
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
        happen::spawn(async move { node.broadcast(ev("from-task", json!(null))) })
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

// ---------------------------------------------------------------- patterns

/// Registers `pattern` on `node` with a handler that reports `label` and the type.
fn label_handler(
    node: &Node,
    pattern: impl happen::IntoPattern,
    label: &'static str,
    tx: &mpsc::UnboundedSender<(String, String)>,
) -> HandlerId {
    let tx = tx.clone();
    node.on(pattern, move |event: Event, _cx: Context| {
        let tx = tx.clone();
        async move {
            let _ = tx.send((label.to_owned(), event.event_type().to_owned()));
        }
    })
    .unwrap()
}

async fn matched_by(
    sender: &Node,
    rx: &mut mpsc::UnboundedReceiver<(String, String)>,
    types: &[&str],
) -> Vec<(String, String)> {
    for t in types {
        sender.broadcast(ev(t, json!(null))).unwrap();
    }
    // A terminator that every node handles: everything before it has been
    // dispatched by the time it arrives (one receiver, flows may interleave,
    // so wait for quiet as well).
    let mut got = Vec::new();
    while let Ok(Some(x)) = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
        got.push(x);
    }
    got.sort();
    got
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<_> = expected
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect();
    v.sort();
    v
}

pub async fn string_patterns_select_handlers(backend: &dyn Backend) {
    let h = start(backend).await;
    let n = h.node("patterns").unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    label_handler(&n, "order.submitted", "exact", &tx);
    label_handler(&n, "order.*", "star", &tx);
    label_handler(&n, "{order,payment}.created", "alt", &tx);
    label_handler(&n, "user.profile.*", "multi", &tx);
    label_handler(&n, "audit.>", "tail", &tx);
    let got = matched_by(
        &n,
        &mut rx,
        &[
            "order.submitted",
            "order.created",
            "order.item.added",
            "payment.created",
            "refund.created",
            "user.profile.updated",
            "user.profile",
            "audit.a",
            "audit.a.b.c",
            "audit",
        ],
    )
    .await;
    assert_eq!(
        got,
        pairs(&[
            ("exact", "order.submitted"),
            ("star", "order.submitted"),
            ("star", "order.created"),
            ("alt", "order.created"),
            ("alt", "payment.created"),
            ("multi", "user.profile.updated"),
            ("tail", "audit.a"),
            ("tail", "audit.a.b.c"),
        ])
    );
}

pub async fn function_and_combinator_patterns_select_handlers(backend: &dyn Backend) {
    use happen::pattern::{domain, exact, not, one_of, wildcard};
    let h = start(backend).await;
    let n = h.node("combinators").unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    label_handler(&n, |t: &str| t.ends_with(".failed"), "fn", &tx);
    label_handler(
        &n,
        domain("user").and(not(exact("user.password-changed"))),
        "user",
        &tx,
    );
    label_handler(
        &n,
        one_of([exact("order.submitted"), wildcard("shipping.*")]),
        "one_of",
        &tx,
    );
    let got = matched_by(
        &n,
        &mut rx,
        &[
            "payment.failed",
            "user.created",
            "user.password-changed",
            "order.submitted",
            "shipping.sent",
            "shipping.sent.late",
        ],
    )
    .await;
    assert_eq!(
        got,
        pairs(&[
            ("fn", "payment.failed"),
            ("user", "user.created"),
            ("one_of", "order.submitted"),
            ("one_of", "shipping.sent"),
        ])
    );
}

pub async fn invalid_pattern_is_an_error_at_registration(backend: &dyn Backend) {
    let h = start(backend).await;
    let n = h.node("bad-patterns").unwrap();
    for bad in ["", "order.", "a..b", "order.{a,", "ord*", "a.>.b", "a b"] {
        let err = n
            .on(bad, |_e: Event, _cx: Context| async {})
            .expect_err(&format!("pattern {bad:?} must be rejected"));
        assert!(
            matches!(err, HappenError::InvalidPattern(_)),
            "{bad:?}: {err}"
        );
        assert!(err.to_string().contains("invalid pattern"), "{err}");
    }
    let err = n
        .on(
            happen::pattern::wildcard("x.{"),
            |_e: Event, _cx: Context| async {},
        )
        .unwrap_err();
    assert!(matches!(err, HappenError::InvalidPattern(_)));
}

pub async fn invalid_event_type_is_rejected(backend: &dyn Backend) {
    let h = start(backend).await;
    let n = h.node("bad-types").unwrap();
    n.on(|_: &str| true, |_e: Event, _cx: Context| async {})
        .unwrap();
    for bad in ["", "a b", "order.*", "a..b", "x>"] {
        let err = n.broadcast(ev(bad, json!(null))).unwrap_err();
        assert!(matches!(err, HappenError::InvalidName(_)), "{bad:?}: {err}");
        let err = n.send(&n, ev(bad, json!(null))).await.unwrap_err();
        assert!(matches!(err, HappenError::InvalidName(_)), "{bad:?}: {err}");
    }
}

pub async fn invalid_and_duplicate_node_ids_are_rejected(backend: &dyn Backend) {
    let h = start(backend).await;
    for bad in ["", "a.b", "a b", "a*", "x>"] {
        let err = h.node(bad).unwrap_err();
        assert!(matches!(err, HappenError::InvalidName(_)), "{bad:?}: {err}");
    }
    h.node("unique").unwrap();
    let err = h.node("unique").unwrap_err();
    assert!(matches!(err, HappenError::DuplicateNode { .. }), "{err}");
}

// ---------------------------------------------------------------- the Event Continuum

#[derive(Clone, Debug, PartialEq)]
struct Validation {
    items: usize,
}

async fn validate(event: Event, cx: Context) -> Flow {
    let items = event.payload()["items"].as_array().map_or(0, Vec::len);
    if items == 0 {
        return Flow::done(json!({ "success": false, "reason": "validation-failed" }));
    }
    cx.insert(Validation { items });
    cx.set("trail", json!(["validate"]));
    Flow::next(reserve)
}

async fn reserve(_event: Event, cx: Context) -> Flow {
    let v: Validation = cx.typed().expect("validation from step 1");
    cx.update("trail", |t| {
        t.as_array_mut().unwrap().push(json!("reserve"))
    });
    cx.set("reserved", v.items);
    Flow::next(finish)
}

async fn finish(_event: Event, cx: Context) -> happen::Result<Value> {
    cx.update("trail", |t| t.as_array_mut().unwrap().push(json!("finish")));
    Ok(json!({ "success": true, "reserved": cx.get("reserved"), "trail": cx.get("trail") }))
}

pub async fn steps_chain_and_share_context(backend: &dyn Backend) {
    let h = start(backend).await;
    let n = h.node("chain").unwrap();
    n.on("create-order", validate).unwrap();
    let ok = n
        .send(&n, ev("create-order", json!({ "items": [1, 2] })))
        .await
        .unwrap();
    assert_eq!(
        ok,
        json!({ "success": true, "reserved": 2, "trail": ["validate", "reserve", "finish"] })
    );
    let rejected = n
        .send(&n, ev("create-order", json!({ "items": [] })))
        .await
        .unwrap();
    assert_eq!(
        rejected,
        json!({ "success": false, "reason": "validation-failed" })
    );
}

pub async fn step_can_loop_with_again(backend: &dyn Backend) {
    let h = start(backend).await;
    let n = h.node("looper").unwrap();
    n.on("retry", |event: Event, cx: Context| async move {
        let attempts = cx.update("attempts", |v| {
            *v = json!(v.as_u64().unwrap_or(0) + 1);
            v.as_u64().unwrap()
        });
        if attempts < event.payload()["succeed_on"].as_u64().unwrap() {
            Flow::again()
        } else {
            Flow::done(json!({ "attempts": attempts }))
        }
    })
    .unwrap();
    let out = n
        .send(&n, ev("retry", json!({ "succeed_on": 200 })))
        .await
        .unwrap();
    assert_eq!(out, json!({ "attempts": 200 }));
}

#[happen::step]
async fn process_items(event: Event, cx: Context) -> Flow {
    let index = cx.get_as::<usize>("index").unwrap_or(0);
    let items = event.payload()["items"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if index < items.len() {
        cx.update("sum", |s| {
            *s = json!(s.as_i64().unwrap_or(0) + items[index].as_i64().unwrap())
        });
        cx.set("index", index + 1);
        return Flow::next(process_items);
    }
    Flow::next(summarize)
}

async fn summarize(_event: Event, cx: Context) -> Value {
    json!({ "count": cx.get("index"), "sum": cx.get("sum") })
}

pub async fn step_can_name_itself_with_step_macro(backend: &dyn Backend) {
    let h = start(backend).await;
    let n = h.node("macro-loop").unwrap();
    n.on("sum", process_items).unwrap();
    let out = n
        .send(&n, ev("sum", json!({ "items": [1, 2, 3, 4] })))
        .await
        .unwrap();
    assert_eq!(out, json!({ "count": 4, "sum": 10 }));
}

pub async fn steps_branch_on_conditions(backend: &dyn Backend) {
    async fn rush(_e: Event, _cx: Context) -> Value {
        json!("rush")
    }
    async fn standard(_e: Event, _cx: Context) -> Value {
        json!("standard")
    }
    let h = start(backend).await;
    let n = h.node("brancher").unwrap();
    n.on("ship", |event: Event, _cx: Context| async move {
        if event.payload()["rush"] == json!(true) {
            Flow::next(rush)
        } else {
            Flow::next(standard)
        }
    })
    .unwrap();
    assert_eq!(
        n.send(&n, ev("ship", json!({ "rush": true })))
            .await
            .unwrap(),
        json!("rush")
    );
    assert_eq!(
        n.send(&n, ev("ship", json!({ "rush": false })))
            .await
            .unwrap(),
        json!("standard")
    );
}

pub async fn every_return_form_completes_the_flow(backend: &dyn Backend) {
    #[derive(serde::Serialize)]
    struct Receipt {
        id: u32,
    }
    let h = start(backend).await;
    let n = h.node("forms").unwrap();
    n.on("value", |_e: Event, _cx: Context| async {
        json!({ "v": 1 })
    })
    .unwrap();
    n.on("unit", |_e: Event, _cx: Context| async {}).unwrap();
    n.on("ok", |_e: Event, _cx: Context| async {
        Ok::<_, std::io::Error>(json!("fine"))
    })
    .unwrap();
    n.on("flow-done-with", |_e: Event, _cx: Context| async {
        Flow::done_with(&Receipt { id: 7 })
    })
    .unwrap();
    n.on("nested-ok-flow", |_e: Event, _cx: Context| async {
        Ok::<_, HappenError>(Flow::next(|_e: Event, _cx: Context| async {
            json!("second")
        }))
    })
    .unwrap();
    assert_eq!(
        n.send(&n, ev("value", json!(null))).await.unwrap(),
        json!({ "v": 1 })
    );
    assert_eq!(
        n.send(&n, ev("unit", json!(null))).await.unwrap(),
        Value::Null
    );
    assert_eq!(
        n.send(&n, ev("ok", json!(null))).await.unwrap(),
        json!("fine")
    );
    assert_eq!(
        n.send(&n, ev("flow-done-with", json!(null))).await.unwrap(),
        json!({ "id": 7 })
    );
    assert_eq!(
        n.send(&n, ev("nested-ok-flow", json!(null))).await.unwrap(),
        json!("second")
    );
}

pub async fn context_describes_the_flow(backend: &dyn Backend) {
    let h = start(backend).await;
    let asker = h.node("ctx-asker").unwrap();
    let n = h.node("ctx-node").unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel::<Value>();
    n.on("describe", move |event: Event, cx: Context| {
        let tx = tx.clone();
        async move {
            let d = json!({
                "node": cx.node().id(),
                "sender": cx.sender(),
                "expects_response": cx.expects_response(),
                "same_event": cx.event().id() == event.id(),
                "causal_id": cx.causal().id == event.id(),
            });
            tx.send(d.clone()).unwrap();
            d
        }
    })
    .unwrap();
    asker.send(&n, ev("describe", json!(null))).await.unwrap();
    let by_send = rx.recv().await.unwrap();
    assert_eq!(
        by_send,
        json!({ "node": "ctx-node", "sender": "ctx-asker", "expects_response": true, "same_event": true, "causal_id": true })
    );
    asker.broadcast(ev("describe", json!(null))).unwrap();
    let by_broadcast = rx.recv().await.unwrap();
    assert_eq!(by_broadcast["expects_response"], false);
    assert_eq!(by_broadcast["sender"], "ctx-asker");
}

// ---------------------------------------------------------------- errors

pub async fn step_error_reaches_requester(backend: &dyn Backend) {
    let h = start(backend).await;
    let a = h.node("err-a").unwrap();
    let b = h.node("err-b").unwrap();
    b.on("charge", |_e: Event, _cx: Context| async {
        Err::<Value, _>(std::io::Error::other("card declined"))
    })
    .unwrap();
    let err = a.send(&b, ev("charge", json!(null))).await.unwrap_err();
    match &err {
        HappenError::HandlerFailed {
            node,
            event_type,
            cause,
        } => {
            assert_eq!(node, "err-b");
            assert_eq!(event_type, "charge");
            assert!(cause.contains("card declined"), "{cause}");
        }
        other => panic!("expected HandlerFailed, got {other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains("err-b") && text.contains("charge") && text.contains("card declined"));
}

pub async fn error_in_later_step_reaches_requester(backend: &dyn Backend) {
    let h = start(backend).await;
    let n = h.node("err-later").unwrap();
    n.on("two-steps", |_e: Event, _cx: Context| async {
        Flow::next(|_e: Event, _cx: Context| async { Flow::fail("inventory unavailable") })
    })
    .unwrap();
    let err = n.send(&n, ev("two-steps", json!(null))).await.unwrap_err();
    assert!(
        matches!(&err, HappenError::HandlerFailed { cause, .. } if cause == "inventory unavailable"),
        "{err:?}"
    );
}

pub async fn panic_reaches_requester_and_node_keeps_serving(backend: &dyn Backend) {
    let h = start(backend).await;
    let a = h.node("panic-a").unwrap();
    let b = h.node("panic-b").unwrap();
    b.on("explode", |_e: Event, _cx: Context| async {
        Flow::next(|_e: Event, _cx: Context| async {
            if true {
                panic!("boom in step two");
            }
        })
    })
    .unwrap();
    b.on("ping", |_e: Event, _cx: Context| async { json!("pong") })
        .unwrap();
    for _ in 0..3 {
        let err = a.send(&b, ev("explode", json!(null))).await.unwrap_err();
        match err {
            HappenError::HandlerPanicked {
                node,
                event_type,
                message,
            } => {
                assert_eq!((node.as_str(), event_type.as_str()), ("panic-b", "explode"));
                assert!(message.contains("boom in step two"), "{message}");
            }
            other => panic!("expected HandlerPanicked, got {other:?}"),
        }
        assert_eq!(
            a.send(&b, ev("ping", json!(null))).await.unwrap(),
            json!("pong")
        );
    }
}

// ---------------------------------------------------------------- communication

pub async fn broadcast_reaches_every_matching_node_including_sender(backend: &dyn Backend) {
    let h = start(backend).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let weather = h.node("weather").unwrap();
    let mut listeners = vec![weather.clone()];
    for id in ["emergency", "news", "traffic"] {
        listeners.push(h.node(id).unwrap());
    }
    for node in &listeners {
        let tx = tx.clone();
        let me = node.id().to_owned();
        node.on("severe-weather", move |event: Event, _cx: Context| {
            let tx = tx.clone();
            let me = me.clone();
            async move {
                tx.send(ev(&format!("got.{me}"), event.payload().clone()))
                    .unwrap();
            }
        })
        .unwrap();
    }
    let deaf = h.node("deaf").unwrap();
    deaf.on("other", recorder(tx.clone(), json!(null))).unwrap();

    weather
        .broadcast(ev("severe-weather", json!({ "region": "Gulf Coast" })))
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..4 {
        let e = recv(&mut rx).await;
        assert_eq!(e.payload()["region"], "Gulf Coast");
        got.push(e.event_type().to_owned());
    }
    got.sort();
    assert_eq!(
        got,
        vec!["got.emergency", "got.news", "got.traffic", "got.weather"]
    );
    assert_quiet(&mut rx, "the non-matching node and nobody twice").await;
}

pub async fn send_dispatches_without_awaiting(backend: &dyn Backend) {
    let h = start(backend).await;
    let a = h.node("ff-a").unwrap();
    let b = h.node("ff-b").unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    b.on("send-email", recorder(tx, json!(null))).unwrap();
    for i in 0..10 {
        // The handle is dropped at once: fire-and-forget.
        drop(a.send(&b, ev("send-email", json!({ "n": i }))));
    }
    let mut seen: Vec<i64> = Vec::new();
    for _ in 0..10 {
        seen.push(recv(&mut rx).await.payload()["n"].as_i64().unwrap());
    }
    seen.sort();
    assert_eq!(seen, (0..10).collect::<Vec<_>>());
}

pub async fn response_callback_receives_result(backend: &dyn Backend) {
    let h = start(backend).await;
    let a = h.node("cb-a").unwrap();
    let b = h.node("cb-b").unwrap();
    b.on("check-inventory", |event: Event, _cx: Context| async move {
        json!({ "available": event.payload()["quantity"].as_u64() < Some(10) })
    })
    .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    for q in [5, 50] {
        let tx = tx.clone();
        a.send(&b, ev("check-inventory", json!({ "quantity": q })))
            .on_response(move |reply| tx.send((q, reply)).unwrap());
    }
    let mut got = [rx.recv().await.unwrap(), rx.recv().await.unwrap()];
    got.sort_by_key(|(q, _)| *q);
    assert_eq!(got[0].1.as_ref().unwrap()["available"], true);
    assert_eq!(got[1].1.as_ref().unwrap()["available"], false);
}

fn never_answers(node: &Node, event_type: &str) -> Arc<Notify> {
    let release = Arc::new(Notify::new());
    let r = release.clone();
    node.on(event_type, move |_e: Event, _cx: Context| {
        let r = r.clone();
        async move { r.notified().await }
    })
    .unwrap();
    release
}

pub async fn per_call_timeout(backend: &dyn Backend) {
    let h = start(backend).await;
    let a = h.node("to-a").unwrap();
    let b = h.node("to-b").unwrap();
    let _release = never_answers(&b, "hang");
    let err = a
        .send(&b, ev("hang", json!(null)))
        .timeout(Duration::from_millis(100))
        .await
        .unwrap_err();
    match err {
        HappenError::Timeout {
            node,
            event_type,
            after_ms,
        } => {
            assert_eq!(
                (node.as_str(), event_type.as_str(), after_ms),
                ("to-b", "hang", 100)
            );
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
}

pub async fn per_node_default_timeout(backend: &dyn Backend) {
    let h = backend
        .start(HappenConfig::default().request_timeout(Duration::from_millis(150)))
        .await;
    assert_eq!(
        h.node("probe").unwrap().limits().timeout,
        Duration::from_millis(150)
    );
    let a = h
        .node_with(
            "tn-a",
            NodeConfig::new().timeout(Duration::from_millis(120)),
        )
        .unwrap();
    let b = h.node("tn-b").unwrap();
    let _release = never_answers(&b, "hang");
    assert_eq!(a.limits().timeout, Duration::from_millis(120));
    let err = a.send(&b, ev("hang", json!(null))).await.unwrap_err();
    assert!(
        matches!(err, HappenError::Timeout { after_ms: 120, .. }),
        "{err:?}"
    );
    assert_eq!(happen::config::DEFAULT_TIMEOUT, Duration::from_secs(5));
}

pub async fn no_handler_is_reported_at_once(backend: &dyn Backend) {
    let h = start(backend).await;
    // A timeout far longer than the test's own limit: only an immediate
    // NoHandler lets this test pass.
    let a = h
        .node_with("nh-a", NodeConfig::new().timeout(Duration::from_secs(3600)))
        .unwrap();
    let b = h.node("nh-b").unwrap();
    b.on("known", |_e: Event, _cx: Context| async {}).unwrap();
    let err = a.send(&b, ev("unknown", json!(null))).await.unwrap_err();
    assert_eq!(
        err,
        HappenError::NoHandler {
            node: "nh-b".into(),
            event_type: "unknown".into()
        }
    );
    let lonely = h.node("nh-empty").unwrap();
    let err = a.send(&lonely, ev("known", json!(null))).await.unwrap_err();
    assert!(matches!(err, HappenError::NoHandler { .. }), "{err:?}");
}

pub async fn unknown_node_is_reported_at_once(backend: &dyn Backend) {
    let h = start(backend).await;
    let a = h
        .node_with("un-a", NodeConfig::new().timeout(Duration::from_secs(3600)))
        .unwrap();
    let err = a
        .send("nobody-here", ev("x", json!(null)))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        HappenError::UnknownNode {
            node: "nobody-here".into()
        }
    );
}

pub async fn removed_handler_no_longer_runs(backend: &dyn Backend) {
    let h = start(backend).await;
    let n = h.node("offable").unwrap();
    let id = n
        .on("x", |_e: Event, _cx: Context| async { json!(1) })
        .unwrap();
    assert_eq!(n.send(&n, ev("x", json!(null))).await.unwrap(), json!(1));
    assert!(n.off(id));
    assert!(!n.off(id));
    let err = n.send(&n, ev("x", json!(null))).await.unwrap_err();
    assert!(matches!(err, HappenError::NoHandler { .. }), "{err:?}");
}

pub async fn several_handlers_each_run_and_first_registered_answers(backend: &dyn Backend) {
    let h = start(backend).await;
    let a = h.node("multi-a").unwrap();
    let b = h.node("multi-b").unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let runs = Arc::new(AtomicUsize::new(0));
    for (pattern, answer) in [
        ("order.*", "first"),
        ("order.created", "second"),
        (">", "third"),
    ] {
        let runs = runs.clone();
        let tx = tx.clone();
        b.on(pattern, move |_e: Event, cx: Context| {
            let runs = runs.clone();
            let tx = tx.clone();
            async move {
                // Each flow has its own context.
                assert_eq!(cx.get("mine"), None);
                cx.set("mine", answer);
                runs.fetch_add(1, Ordering::SeqCst);
                tx.send(ev(&format!("ran.{answer}"), json!(null))).unwrap();
                json!(answer)
            }
        })
        .unwrap();
    }
    let reply = a.send(&b, ev("order.created", json!(null))).await.unwrap();
    assert_eq!(reply, json!("first"));
    let mut ran = Vec::new();
    for _ in 0..3 {
        ran.push(recv(&mut rx).await.event_type().to_owned());
    }
    ran.sort();
    assert_eq!(ran, vec!["ran.first", "ran.second", "ran.third"]);
    assert_eq!(runs.load(Ordering::SeqCst), 3);
}

// ---------------------------------------------------------------- concurrency

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
}

// ---------------------------------------------------------------- state

async fn next(
    s: &mut futures::stream::BoxStream<'static, happen::GlobalChange>,
) -> happen::GlobalChange {
    use futures::StreamExt;
    tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .expect("a change within 10 s")
        .expect("the watch stays open")
}

pub async fn state_get_set_and_projection(backend: &dyn Backend) {
    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Orders {
        backlog: Vec<String>,
    }
    let h = start(backend).await;
    let n = h.node("st-orders").unwrap();
    let state = n.state();
    assert_eq!(state.get().await.unwrap(), Value::Null, "no state yet");
    assert_eq!(state.get_as::<Orders>().await.unwrap(), None);
    let new = state.set(|_| json!({ "backlog": ["o-1"] })).await.unwrap();
    assert_eq!(new, json!({ "backlog": ["o-1"] }));
    state
        .set(|mut s| {
            s["backlog"].as_array_mut().unwrap().push(json!("o-2"));
            s
        })
        .await
        .unwrap();
    let count = state
        .get_with(|s| s["backlog"].as_array().map_or(0, Vec::len))
        .await
        .unwrap();
    assert_eq!(count, 2);
    assert_eq!(
        state.get_as::<Orders>().await.unwrap(),
        Some(Orders {
            backlog: vec!["o-1".into(), "o-2".into()]
        })
    );
    // Another handle to the same node sees the same state.
    assert_eq!(n.clone().state().get().await.unwrap()["backlog"][1], "o-2");
}

pub async fn concurrent_state_updates_are_atomic(backend: &dyn Backend) {
    let h = start(backend).await;
    let a = h.node("inc-a").unwrap();
    let counter = h.node("inc-counter").unwrap();
    counter
        .on("increment", |_e: Event, cx: Context| async move {
            cx.node()
                .state()
                .set(|s| json!(s.as_u64().unwrap_or(0) + 1))
                .await?;
            Ok::<_, HappenError>(())
        })
        .unwrap();
    let sends: Vec<_> = (0..1000)
        .map(|_| {
            a.send(&counter, ev("increment", json!(null)))
                .timeout(Duration::from_secs(50))
        })
        .collect();
    for s in futures::future::join_all(sends.into_iter().map(|s| s.response())).await {
        s.unwrap();
    }
    assert_eq!(counter.state().get().await.unwrap(), json!(1000));
}

pub async fn views_see_other_nodes_and_missing_nodes_are_none(backend: &dyn Backend) {
    let h = start(backend).await;
    let orders = h.node("vw-orders").unwrap();
    let customers = h.node("vw-customers").unwrap();
    let inventory = h.node("vw-inventory").unwrap();
    customers
        .state()
        .set(|_| json!({ "c1": { "name": "Ada", "address": "1 Main St" } }))
        .await
        .unwrap();
    inventory
        .state()
        .set(|_| json!({ "p1": { "stock": 3 } }))
        .await
        .unwrap();

    let updated = orders
        .state()
        .set_with_views(["vw-customers", "vw-inventory", "vw-nobody"], |mut state, views| {
            state["o1"] = json!({
                "shipTo": views.get_with("vw-customers", |c| c["c1"]["address"].clone()),
                "canShip": views.get_with("vw-inventory", |i| i["p1"]["stock"].as_u64() > Some(0)),
                "missing": views.get("vw-nobody").is_none(),
            });
            state
        })
        .await
        .unwrap();
    assert_eq!(
        updated["o1"],
        json!({ "shipTo": "1 Main St", "canShip": true, "missing": true })
    );

    assert_eq!(
        orders
            .view("vw-customers")
            .get_with(|c| c["c1"]["name"].clone())
            .await
            .unwrap(),
        Some(json!("Ada"))
    );
    assert_eq!(orders.view("vw-nobody").get().await.unwrap(), None);

    let collected = orders
        .collect()
        .from_as("customer", "vw-customers", |c| c["c1"]["name"].clone())
        .from("vw-inventory", |i| i["p1"]["stock"].clone())
        .from_as("ghost", "vw-nobody", |g| g.clone())
        .await
        .unwrap();
    assert_eq!(collected.len(), 3);
    assert_eq!(collected["customer"], Some(json!("Ada")));
    assert_eq!(collected["vw-inventory"], Some(json!(3)));
    assert_eq!(collected["ghost"], None);
}

pub async fn global_state_is_shared_and_watchable(backend: &dyn Backend) {
    let h = start(backend).await;
    let writer = h.node("gl-writer").unwrap();
    let reader = h.node("gl-reader").unwrap();
    let mut watch = reader.global().watch("user:profile:123").await.unwrap();
    let mut all = reader.global().watch_all().await.unwrap();

    writer
        .global()
        .set("user:profile:123", json!({ "name": "Ada" }))
        .await
        .unwrap();
    writer
        .global()
        .set("report.q3", json!([1, 2, 3]))
        .await
        .unwrap();
    assert_eq!(
        reader.global().get("user:profile:123").await.unwrap(),
        Some(json!({ "name": "Ada" }))
    );
    assert_eq!(
        reader
            .global()
            .get_as::<Vec<u8>>("report.q3")
            .await
            .unwrap(),
        Some(vec![1, 2, 3])
    );
    assert_eq!(reader.global().get("absent").await.unwrap(), None);
    assert_eq!(
        reader.global().keys().await.unwrap(),
        vec!["report.q3", "user:profile:123"]
    );

    writer.global().delete("user:profile:123").await.unwrap();
    writer.global().delete("never-there").await.unwrap();
    assert_eq!(reader.global().get("user:profile:123").await.unwrap(), None);
    assert_eq!(reader.global().keys().await.unwrap(), vec!["report.q3"]);

    let set = next(&mut watch).await;
    assert_eq!(
        (set.key.as_str(), set.value),
        ("user:profile:123", Some(json!({ "name": "Ada" })))
    );
    let deleted = next(&mut watch).await;
    assert_eq!(
        (deleted.key.as_str(), deleted.value),
        ("user:profile:123", None)
    );
    let keys: Vec<String> = vec![
        next(&mut all).await.key,
        next(&mut all).await.key,
        next(&mut all).await.key,
    ];
    assert_eq!(
        keys,
        vec!["user:profile:123", "report.q3", "user:profile:123"]
    );

    let err = reader.global().set("", json!(1)).await.unwrap_err();
    assert!(matches!(err, HappenError::Config(_)), "{err:?}");
}

pub async fn temporal_snapshots_record_the_causing_event(backend: &dyn Backend) {
    let h = start(backend).await;
    let bank = h.node("tm-bank").unwrap();
    let account = h.node("tm-account").unwrap();
    account
        .on("deposit", |event: Event, cx: Context| async move {
            let amount = event.payload()["amount"].as_i64().unwrap_or(0);
            let state = cx
                .node()
                .state()
                .set(|s| json!({ "balance": s["balance"].as_i64().unwrap_or(0) + amount }))
                .await?;
            Ok::<_, HappenError>(state)
        })
        .unwrap();
    // A change outside any flow has no cause and is not recorded.
    account
        .state()
        .set(|_| json!({ "balance": 0 }))
        .await
        .unwrap();

    let mut ids = Vec::new();
    for (amount, correlation) in [(10, "txn-a"), (20, "txn-b"), (5, "txn-a")] {
        let sent = bank.send(
            &account,
            ev("deposit", json!({ "amount": amount })).with_correlation_id(correlation),
        );
        ids.push(sent.id().to_owned());
        sent.await.unwrap();
    }

    let history = account.state().history().await.unwrap();
    assert_eq!(history.len(), 3, "one snapshot per change made in a flow");
    let balances: Vec<i64> = history
        .iter()
        .map(|s| s.state["balance"].as_i64().unwrap())
        .collect();
    assert_eq!(balances, vec![10, 30, 35], "ordered by time");

    let after_second = account.state().when(ids[1].as_str()).await.unwrap();
    assert_eq!(after_second.len(), 1);
    let snap = &after_second[0];
    assert_eq!(snap.state, json!({ "balance": 30 }));
    assert_eq!(snap.context.id, ids[1]);
    assert_eq!(snap.context.correlation_id, "txn-b");
    assert_eq!(snap.context.sender, "tm-bank");
    assert_eq!(snap.context.event_type, "deposit");
    assert_eq!(snap.context.causation_id, None, "a root event");
    assert!(snap.context.timestamp > 0);

    let txn_a = account
        .state()
        .when(|c: &happen::SnapshotContext| c.correlation_id == "txn-a")
        .await
        .unwrap();
    assert_eq!(
        txn_a
            .iter()
            .map(|s| s.state["balance"].clone())
            .collect::<Vec<_>>(),
        vec![json!(10), json!(35)]
    );
    assert!(
        account
            .state()
            .when("no-such-event")
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn temporal_retention_by_count_and_age(backend: &dyn Backend) {
    let config = HappenConfig::default().temporal(happen::TemporalConfig {
        enabled: true,
        history: 3,
        max_age: Duration::from_secs(2),
    });
    let h = backend.start(config).await;
    let n = h.node("tm-retained").unwrap();
    n.on("bump", |_e: Event, cx: Context| async move {
        cx.node()
            .state()
            .set(|s| json!(s.as_u64().unwrap_or(0) + 1))
            .await?;
        Ok::<_, HappenError>(())
    })
    .unwrap();
    for _ in 0..5 {
        n.send(&n, ev("bump", json!(null))).await.unwrap();
    }
    let kept: Vec<Value> = n
        .state()
        .history()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.state)
        .collect();
    assert_eq!(
        kept,
        vec![json!(3), json!(4), json!(5)],
        "only the newest 3"
    );
    tokio::time::sleep(Duration::from_millis(2600)).await;
    assert!(
        n.state().history().await.unwrap().is_empty(),
        "older than max_age"
    );
    assert_eq!(
        n.state().get().await.unwrap(),
        json!(5),
        "retention prunes history, not state"
    );
}

// ---------------------------------------------------------------- robustness

pub async fn error_whose_display_panics_is_reported_and_node_keeps_serving(backend: &dyn Backend) {
    #[derive(Debug)]
    struct Nasty;
    impl std::fmt::Display for Nasty {
        fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            panic!("Display of Nasty panicked")
        }
    }
    impl std::error::Error for Nasty {}

    let h = start(backend).await;
    let a = h.node("nasty-a").unwrap();
    let b = h
        .node_with("nasty-b", NodeConfig::new().max_concurrent(1))
        .unwrap();
    b.on("nasty", |_e: Event, _cx: Context| async {
        Err::<Value, _>(Nasty)
    })
    .unwrap();
    b.on("ping", |_e: Event, _cx: Context| async { json!("pong") })
        .unwrap();
    for _ in 0..3 {
        let err = a.send(&b, ev("nasty", json!(null))).await.unwrap_err();
        assert!(
            matches!(err, HappenError::HandlerPanicked { .. }),
            "{err:?}"
        );
        assert_eq!(
            a.send(&b, ev("ping", json!(null))).await.unwrap(),
            json!("pong")
        );
    }
}

pub async fn panicking_matcher_counts_as_no_match(backend: &dyn Backend) {
    let h = start(backend).await;
    let a = h.node("pm-a").unwrap();
    let b = h.node("pm-b").unwrap();
    b.on(
        |_: &str| -> bool { panic!("matcher bug") },
        |_e: Event, _cx: Context| async { json!("never") },
    )
    .unwrap();
    b.on("ping", |_e: Event, _cx: Context| async { json!("pong") })
        .unwrap();
    for _ in 0..3 {
        assert_eq!(
            a.send(&b, ev("ping", json!(null))).await.unwrap(),
            json!("pong")
        );
        let err = a.send(&b, ev("other", json!(null))).await.unwrap_err();
        assert!(matches!(err, HappenError::NoHandler { .. }), "{err:?}");
    }
}

pub async fn invalid_target_id_is_rejected(backend: &dyn Backend) {
    let h = start(backend).await;
    let a = h.node("it-a").unwrap();
    for bad in ["a b", "a.b", "", "x*"] {
        let err = a.send(bad, ev("x", json!(null))).await.unwrap_err();
        assert!(
            matches!(err, HappenError::InvalidName(_)),
            "{bad:?}: {err:?}"
        );
    }
}

pub async fn handler_ids_belong_to_their_node(backend: &dyn Backend) {
    let h = start(backend).await;
    let a = h.node("hid-a").unwrap();
    let b = h.node("hid-b").unwrap();
    a.on("x", |_e: Event, _cx: Context| async { json!("a") })
        .unwrap();
    let b_id = b
        .on("x", |_e: Event, _cx: Context| async { json!("b") })
        .unwrap();
    assert!(!a.off(b_id), "an id from another node removes nothing");
    assert_eq!(a.send(&a, ev("x", json!(null))).await.unwrap(), json!("a"));
    assert!(b.off(b_id));
}

pub async fn timeout_counts_from_send(backend: &dyn Backend) {
    let h = start(backend).await;
    let a = h.node("tfs-a").unwrap();
    let b = h.node("tfs-b").unwrap();
    let _release = never_answers(&b, "hang");
    let sent = a
        .send(&b, ev("hang", json!(null)))
        .timeout(Duration::from_secs(2));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // The 2 s have passed since the send: the answer is Timeout at once,
    // not 2 s after this await.
    let err = tokio::time::timeout(Duration::from_secs(1), sent)
        .await
        .expect("the timeout counts from the send, not from the await")
        .unwrap_err();
    assert!(matches!(err, HappenError::Timeout { .. }), "{err:?}");
}

pub async fn dropping_the_runtime_stops_its_nodes(backend: &dyn Backend) {
    let h = start(backend).await;
    let a = h.node("drop-a").unwrap();
    a.on("x", |_e: Event, _cx: Context| async { json!(1) })
        .unwrap();
    assert_eq!(a.send(&a, ev("x", json!(null))).await.unwrap(), json!(1));
    assert!(a.happen().is_some());
    drop(h);
    assert!(a.happen().is_none(), "the last Happen handle is gone");
    assert_eq!(
        a.send(&a, ev("x", json!(null))).await.unwrap_err(),
        HappenError::Shutdown
    );
    assert_eq!(
        a.broadcast(ev("x", json!(null))).unwrap_err(),
        HappenError::Shutdown
    );
    let err = a.on("y", |_e: Event, _cx: Context| async {}).unwrap_err();
    assert_eq!(err, HappenError::Shutdown);
}

pub async fn send_from_a_thread_outside_tokio(backend: &dyn Backend) {
    let h = start(backend).await;
    let a = h.node("thread-a").unwrap();
    let b = h.node("thread-b").unwrap();
    b.on("from-thread", |e: Event, _cx: Context| async move {
        e.payload().clone()
    })
    .unwrap();
    h.flush().await.unwrap();
    // A plain OS thread: no tokio context. The flow still runs on the
    // runtime the system was made in.
    let sent = std::thread::spawn(move || a.send(&b, ev("from-thread", json!(7))))
        .join()
        .unwrap();
    assert_eq!(sent.await.unwrap(), json!(7));
}

// ---------------------------------------------------------------- confluence

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

// ---------------------------------------------------------------- streaming

async fn collect_stream(sent: happen::Sent) -> Vec<Result<happen::StreamItem, HappenError>> {
    use futures::StreamExt;
    tokio::time::timeout(Duration::from_secs(20), sent.stream().collect::<Vec<_>>())
        .await
        .expect("the stream ends")
}

pub async fn stream_delivers_items_then_final_in_order(backend: &dyn Backend) {
    use happen::StreamItem::{Done, Item};
    let h = start(backend).await;
    let client = h.node("sm-client").unwrap();
    let processor = h.node("sm-processor").unwrap();
    processor
        .on(
            "process-large-dataset",
            |event: Event, cx: Context| async move {
                let data: Vec<i64> = event.payload()["dataset"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(Value::as_i64)
                    .collect();
                for (i, chunk) in data.chunks(10).enumerate() {
                    cx.emit(json!({ "chunk": i, "sum": chunk.iter().sum::<i64>() }))
                        .await?;
                }
                Ok::<_, HappenError>(json!({ "status": "complete" }))
            },
        )
        .unwrap();
    let dataset: Vec<i64> = (0..95).collect();
    let got = collect_stream(client.send(
        &processor,
        ev("process-large-dataset", json!({ "dataset": dataset })),
    ))
    .await;
    assert_eq!(got.len(), 11);
    for (i, item) in got[..10].iter().enumerate() {
        let expected: i64 = (i as i64 * 10..(i as i64 * 10 + 10).min(95)).sum();
        assert_eq!(
            item.as_ref().unwrap(),
            &Item(json!({ "chunk": i, "sum": expected }))
        );
    }
    assert_eq!(
        got[10].as_ref().unwrap(),
        &Done(json!({ "status": "complete" }))
    );
    // A handler that never emits is a one-element stream.
    processor
        .on("plain", |_e: Event, _cx: Context| async { json!(1) })
        .unwrap();
    let plain = collect_stream(client.send(&processor, ev("plain", json!(null)))).await;
    assert_eq!(plain.len(), 1);
    assert_eq!(plain[0].as_ref().unwrap(), &Done(json!(1)));
}

pub async fn stream_error_after_items_arrives_in_order(backend: &dyn Backend) {
    use happen::StreamItem::Item;
    let h = start(backend).await;
    let client = h.node("se-client").unwrap();
    let producer = h.node("se-producer").unwrap();
    producer
        .on("fragile", |_e: Event, cx: Context| async move {
            cx.emit(json!(1)).await?;
            cx.emit(json!(2)).await?;
            Err::<Value, HappenError>(HappenError::Config("disk failed".into()))
        })
        .unwrap();
    let got = collect_stream(client.send(&producer, ev("fragile", json!(null)))).await;
    assert_eq!(got.len(), 3);
    assert_eq!(got[0].as_ref().unwrap(), &Item(json!(1)));
    assert_eq!(got[1].as_ref().unwrap(), &Item(json!(2)));
    assert!(
        matches!(&got[2], Err(HappenError::HandlerFailed { cause, .. }) if cause.contains("disk failed")),
        "{:?}",
        got[2]
    );
}

pub async fn slow_consumer_bounds_the_producer(backend: &dyn Backend) {
    use futures::StreamExt;
    let h = start(backend).await;
    let client = h.node("bp-client").unwrap();
    let producer = h.node("bp-producer").unwrap();
    let emitted = Arc::new(AtomicUsize::new(0));
    let e = emitted.clone();
    producer
        .on("firehose", move |_e: Event, cx: Context| {
            let e = e.clone();
            async move {
                for i in 0..200 {
                    cx.emit(json!(i)).await?;
                    e.fetch_add(1, Ordering::SeqCst);
                }
                Ok::<_, HappenError>(json!("done"))
            }
        })
        .unwrap();
    let mut stream = client.send(&producer, ev("firehose", json!(null))).stream();
    let mut consumed = 0;
    for _ in 0..5 {
        stream.next().await.unwrap().unwrap();
        consumed += 1;
        tokio::time::sleep(Duration::from_millis(150)).await;
        let ahead = emitted.load(Ordering::SeqCst).saturating_sub(consumed);
        assert!(
            ahead <= happen::stream::STREAM_WINDOW + 1,
            "the producer ran {ahead} items ahead of a slow consumer"
        );
    }
    // Draining the rest lets it finish.
    let rest: Vec<_> = stream.collect().await;
    assert_eq!(rest.len(), 200 - 5 + 1);
    assert_eq!(emitted.load(Ordering::SeqCst), 200);
}

pub async fn dropping_the_stream_cancels_the_producer(backend: &dyn Backend) {
    use futures::StreamExt;
    let h = start(backend).await;
    let client = h.node("cn-client").unwrap();
    let producer = h.node("cn-producer").unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel::<HappenError>();
    producer
        .on("metrics", move |_e: Event, cx: Context| {
            let tx = tx.clone();
            async move {
                let mut i = 0u64;
                loop {
                    if let Err(e) = cx.emit(json!(i)).await {
                        tx.send(e.clone()).unwrap();
                        return Err(e);
                    }
                    i += 1;
                }
                #[allow(unreachable_code)]
                Ok::<Value, HappenError>(Value::Null)
            }
        })
        .unwrap();
    let mut stream = client.send(&producer, ev("metrics", json!(null))).stream();
    for expected in 0..3 {
        assert_eq!(
            stream.next().await.unwrap().unwrap(),
            happen::StreamItem::Item(json!(expected))
        );
    }
    drop(stream);
    let why = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("the producer stops")
        .unwrap();
    assert_eq!(why, HappenError::Cancelled);
}

pub async fn continuation_step_can_stream(backend: &dyn Backend) {
    use happen::StreamItem::{Done, Item};
    async fn report(_e: Event, cx: Context) -> happen::Result<Value> {
        for p in [50, 100] {
            cx.emit(json!({ "progress": p })).await?;
        }
        Ok(json!({ "records": cx.get("records") }))
    }
    let h = start(backend).await;
    let client = h.node("cs-client").unwrap();
    let importer = h.node("cs-importer").unwrap();
    importer
        .on("import-file", |_e: Event, cx: Context| async move {
            cx.set("records", 42);
            Flow::next(report)
        })
        .unwrap();
    let got: Vec<_> = collect_stream(client.send(&importer, ev("import-file", json!(null))))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        got,
        vec![
            Item(json!({ "progress": 50 })),
            Item(json!({ "progress": 100 })),
            Done(json!({ "records": 42 }))
        ]
    );
}

pub async fn response_of_a_streaming_flow_is_its_final_value(backend: &dyn Backend) {
    let h = start(backend).await;
    let client = h.node("rs-client").unwrap();
    let producer = h.node("rs-producer").unwrap();
    producer
        .on("count", |_e: Event, cx: Context| async move {
            for i in 0..40 {
                cx.emit(json!(i)).await?;
            }
            Ok::<_, HappenError>(json!("counted"))
        })
        .unwrap();
    assert_eq!(
        client
            .send(&producer, ev("count", json!(null)))
            .await
            .unwrap(),
        json!("counted")
    );
}

pub async fn broadcast_streaming_handler_broadcasts_its_items(backend: &dyn Backend) {
    let h = start(backend).await;
    let monitor = h.node("bs-monitor").unwrap();
    let dashboard = h.node("bs-dashboard").unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    dashboard
        .on("system-metrics.item", recorder(tx, json!(null)))
        .unwrap();
    monitor
        .on("system-metrics", |_e: Event, cx: Context| async move {
            for load in [0.5, 0.7, 0.6] {
                cx.emit(json!({ "load": load })).await?;
            }
            Ok::<_, HappenError>(())
        })
        .unwrap();
    h.flush().await.unwrap();
    let start = ev("system-metrics", json!(null));
    monitor.broadcast(start).unwrap();
    let mut items = Vec::new();
    for _ in 0..3 {
        items.push(recv(&mut rx).await);
    }
    items.sort_by_key(|e| e.context_value("stream").unwrap()["seq"].as_u64());
    let origin = items[0]
        .causal()
        .causation_id
        .clone()
        .expect("caused by the broadcast");
    for (seq, (item, load)) in items.iter().zip([0.5, 0.7, 0.6]).enumerate() {
        assert_eq!(item.payload(), &json!({ "load": load }));
        assert_eq!(item.causal().sender, "bs-monitor");
        assert_eq!(item.causal().causation_id.as_ref(), Some(&origin));
        assert_eq!(
            item.context_value("stream").unwrap(),
            &json!({ "of": origin.as_str(), "seq": seq })
        );
    }
}

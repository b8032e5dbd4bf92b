//! Communication: broadcast, send and responses, timeouts, and the errors for a missing
//! handler or node.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use happen::prelude::*;
use tokio::sync::mpsc;

use super::{Backend, assert_quiet, ev, never_answers, recorder, recv, start};

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

/// `Duration::MAX` as a timeout means no deadline in practice: the answer
/// arrives, whether it is set per call, per node or for the runtime.
pub async fn the_longest_timeout_waits_for_the_answer(backend: &dyn Backend) {
    let h = backend
        .start(HappenConfig::default().request_timeout(Duration::MAX))
        .await;
    let a = h
        .node_with("lt-a", NodeConfig::new().timeout(Duration::MAX))
        .unwrap();
    let b = h.node("lt-b").unwrap();
    let c = h.node("lt-c").unwrap();
    b.on("slow", |e: Event, _cx: Context| async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        e.payload().clone()
    })
    .unwrap();
    let answer = a
        .send(&b, ev("slow", json!(1)))
        .timeout(Duration::MAX)
        .await
        .unwrap();
    assert_eq!(answer, json!(1));
    assert_eq!(a.send(&b, ev("slow", json!(2))).await.unwrap(), json!(2));
    assert_eq!(c.send(&b, ev("slow", json!(3))).await.unwrap(), json!(3));
    let all = a
        .send_to_all([&b], ev("slow", json!(4)))
        .timeout(Duration::MAX)
        .await;
    assert_eq!(all["lt-b"].as_ref().unwrap(), &json!(4));
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

/// A handler removed while events that matched it wait in the node's
/// queue takes none of those that start after its removal.
pub async fn a_handler_removed_mid_queue_takes_no_later_events(backend: &dyn Backend) {
    let h = start(backend).await;
    let sender = h.node("mid-queue-sender").unwrap();
    let node = h.node("mid-queue").unwrap();
    let removed_runs = Arc::new(AtomicUsize::new(0));
    let count = removed_runs.clone();
    let removed = node
        .on("tick", move |_e: Event, _cx: Context| {
            count.fetch_add(1, Ordering::SeqCst);
            async {}
        })
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let runs = Arc::new(AtomicUsize::new(0));
    let handle = node.clone();
    node.on("tick", move |e: Event, _cx: Context| {
        // The fifth removes the other handler, with events still queued.
        if runs.fetch_add(1, Ordering::SeqCst) == 4 {
            assert!(handle.off(removed));
        }
        let _ = tx.send(e);
        async {}
    })
    .unwrap();
    for i in 0..10 {
        sender.tell(&node, ev("tick", json!(i))).unwrap();
    }
    for _ in 0..10 {
        recv(&mut rx).await;
    }
    assert_eq!(
        removed_runs.load(Ordering::SeqCst),
        5,
        "the removed handler took events after its removal"
    );
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

/// A tell runs the target's flow like a send, with nobody waiting: the flow
/// sees expects_response() false and its result goes nowhere. Errors known
/// at dispatch (an invalid event type or target) are returned.
pub async fn tell_runs_the_flow_without_an_answer(backend: &dyn Backend) {
    let h = start(backend).await;
    let sensor = h.node("tell-sensor").unwrap();
    let log = h.node("tell-log").unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    log.on("reading", move |e: Event, cx: Context| {
        let tx = tx.clone();
        async move {
            tx.send((e, cx.expects_response())).unwrap();
            json!("nobody reads this")
        }
    })
    .unwrap();
    h.flush().await.unwrap();
    sensor.tell(&log, ev("reading", json!(21.5))).unwrap();
    let (event, expects_response) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(!expects_response);
    assert_eq!(event.payload(), &json!(21.5));
    assert_eq!(event.causal().sender, "tell-sensor");
    assert!(matches!(
        sensor.tell(&log, ev("bad type", json!(null))),
        Err(HappenError::InvalidName(_))
    ));
    assert!(matches!(
        sensor.tell("bad id", ev("reading", json!(null))),
        Err(HappenError::InvalidName(_))
    ));
}

/// `response_as` deserializes the answer into the caller's type, and says
/// which type when the answer does not fit.
pub async fn typed_responses_with_response_as(backend: &dyn Backend) {
    #[derive(Debug, PartialEq, serde::Deserialize)]
    struct Quote {
        sku: String,
        cents: u64,
    }
    let h = start(backend).await;
    let shop = h.node("typed-shop").unwrap();
    let pricing = h.node("typed-pricing").unwrap();
    pricing
        .on("quote", |e: Event, _cx: Context| async move {
            json!({ "sku": e.payload()["sku"], "cents": 1250 })
        })
        .unwrap();
    h.flush().await.unwrap();
    let quote: Quote = shop
        .send(&pricing, ev("quote", json!({ "sku": "A-1" })))
        .response_as()
        .await
        .unwrap();
    assert_eq!(
        quote,
        Quote {
            sku: "A-1".into(),
            cents: 1250
        }
    );
    let err = shop
        .send(&pricing, ev("quote", json!({ "sku": 7 })))
        .response_as::<Quote>()
        .await
        .unwrap_err();
    assert!(
        matches!(err, HappenError::Codec { ref message, .. } if message.contains("Quote")),
        "{err:?}"
    );
    // What did not fit, and where, is in the message itself.
    assert!(
        err.to_string()
            .contains("invalid type: integer `7`, expected a string"),
        "{err}"
    );
}

pub async fn synchronous_callers_block_where_waiting_stops_nothing(backend: &dyn Backend) {
    let h = start(backend).await;
    let server = h.node("sync-server").unwrap();
    server
        .on("double", |e: Event, _cx: Context| async move {
            json!(e.payload().as_i64().unwrap_or(0) * 2)
        })
        .unwrap();
    let client = h.node("sync-client").unwrap();
    client
        .on("http-request", |e: Event, _cx: Context| async move {
            json!({ "status": 200, "body": e.payload()["path"] })
        })
        .unwrap();
    h.flush().await.unwrap();

    // On the thread driving the runtime: refused at once, nothing sent, on a
    // current-thread runtime (waiting would stop it); answered on a
    // multi-thread one, whose other tasks move to another thread meanwhile.
    let here = client.send_sync("sync-server", ev("double", json!(1)));
    if tokio::runtime::Handle::current().runtime_flavor()
        == tokio::runtime::RuntimeFlavor::CurrentThread
    {
        assert!(
            matches!(here, Err(HappenError::BlockingInRuntime { .. })),
            "{here:?}"
        );
    } else {
        assert_eq!(here.unwrap(), json!(2));
    }
    // On a thread of its own: answered (the test's thread keeps driving
    // the runtime meanwhile, by awaiting).
    let (tx, rx) = tokio::sync::oneshot::channel();
    let node = client.clone();
    std::thread::spawn(move || {
        let doubled = node.send_sync("sync-server", ev("double", json!(21)));
        let processed = node.process_sync(ev("http-request", json!({ "path": "/orders" })));
        let _ = tx.send((doubled, processed));
    });
    let (doubled, processed) = tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .expect("the blocking calls returned within 10 s")
        .unwrap();
    assert_eq!(doubled.unwrap(), json!(42));
    let response = processed.unwrap();
    assert_eq!(response.payload()["body"], "/orders");
    assert_eq!(
        response.causal().sender,
        "sync-client",
        "its own node answered"
    );
}

//! Robustness: misbehaving user code and misuse (panicking Display or matchers, bad ids, a
//! dropped runtime, calls from outside tokio) are contained and reported.

use std::time::Duration;

use happen::prelude::*;

use super::{Backend, ev, never_answers, start};

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

/// A handler's error whose `Drop` panics (dropped where the event is
/// settled, outside the flow) is contained: the node's slot comes back and
/// it keeps serving, for a tell (the error dropped by the node) and a
/// suspended flow alike. Before, the node never took another event.
pub async fn error_whose_drop_panics_leaves_the_node_serving(backend: &dyn Backend) {
    #[derive(Debug)]
    struct Grenade;
    impl std::fmt::Display for Grenade {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("grenade")
        }
    }
    impl std::error::Error for Grenade {}
    impl Drop for Grenade {
        fn drop(&mut self) {
            if !std::thread::panicking() {
                panic!("Grenade dropped")
            }
        }
    }

    let h = start(backend).await;
    let client = h.node("grenade-client").unwrap();
    let svc = h
        .node_with("grenade-svc", NodeConfig::new().max_concurrent(1))
        .unwrap();
    svc.on("bad", |_e: Event, _cx: Context| async {
        Err::<Value, _>(Grenade)
    })
    .unwrap();
    svc.on("bad-later", |_e: Event, _cx: Context| async {
        tokio::time::sleep(Duration::from_millis(5)).await;
        Err::<Value, _>(Grenade)
    })
    .unwrap();
    svc.on("ping", |_e: Event, _cx: Context| async { json!("pong") })
        .unwrap();
    h.flush().await.unwrap();
    for bad in ["bad", "bad-later", "bad", "bad-later"] {
        client.tell(&svc, ev(bad, json!(null))).unwrap();
        let pong = client
            .send(&svc, ev("ping", json!(null)))
            .timeout(Duration::from_secs(5))
            .await;
        assert_eq!(pong.ok(), Some(json!("pong")), "after {bad}");
    }
    assert!(h.shutdown_within(Duration::from_secs(5)).await, "drained");
}

/// `shutdown` awaited in the node's own handler (a "stop" handler), of the
/// node or of the whole runtime, returns: the flow answers, and the
/// shutdown ends after it. Before, it waited for that very flow, for good.
pub async fn shutdown_awaited_in_the_nodes_own_handler_returns(backend: &dyn Backend) {
    for whole_runtime in [false, true] {
        let h = start(backend).await;
        let client = h.node("stop-client").unwrap();
        let svc = h.node("stop-svc").unwrap();
        let (me, runtime) = (svc.clone(), h.clone());
        svc.on("stop", move |_e: Event, _cx: Context| {
            let (me, runtime) = (me.clone(), runtime.clone());
            async move {
                match whole_runtime {
                    true => runtime.shutdown().await,
                    false => me.shutdown().await,
                }
                json!("stopping")
            }
        })
        .unwrap();
        h.flush().await.unwrap();
        let sent = client
            .send(&svc, ev("stop", json!(null)))
            .timeout(Duration::from_secs(60));
        let answer = tokio::time::timeout(Duration::from_secs(10), sent).await;
        assert_eq!(
            answer.ok().and_then(|a| a.ok()),
            Some(json!("stopping")),
            "whole runtime: {whole_runtime}"
        );
        // The shutdown goes on and ends: the node is gone.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while h.existing_node("stop-svc").is_some() {
            assert!(tokio::time::Instant::now() < deadline, "never shut down");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
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

/// Dropping the last handle with requests queued: a flow that has started
/// runs to its end and answers (in one process; over NATS its answer
/// cannot travel once the connection is gone, and its requester hears
/// `Shutdown`); what waits in the queue is refused with `Shutdown`. No
/// requester is left with `NoResponse` (a review found one whose flow had
/// started just before the drop dropped with it).
pub async fn dropping_the_runtime_ends_started_flows_and_refuses_the_rest(backend: &dyn Backend) {
    let h = start(backend).await;
    let slow = h
        .node_with("dr-slow", NodeConfig::new().max_concurrent(1))
        .unwrap();
    slow.on("work", |_e: Event, _cx: Context| async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        json!("done")
    })
    .unwrap();
    let client = h.node("dr-client").unwrap();
    h.flush().await.unwrap();
    let waiting: Vec<_> = (0..5)
        .map(|i| tokio::spawn(client.send(&slow, ev("work", json!(i))).into_future()))
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(h);
    let mut outcomes = Vec::new();
    for handle in waiting {
        outcomes.push(handle.await.unwrap());
    }
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, Ok(v) if v == "done") || matches!(o, Err(HappenError::Shutdown))),
        "{outcomes:?}"
    );
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

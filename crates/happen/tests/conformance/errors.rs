//! Errors: a step that fails or panics, first or later in the flow, reaches the requester,
//! and the node keeps serving.

use happen::prelude::*;

use super::{Backend, ev, start};

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
            ..
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

/// A step that fails because a request it made failed (`?` on the send)
/// gives its requester that failure typed, through every hop: in one
/// process as across the wire, `handler_error::<HappenError>()` is the
/// downstream error, not only its text.
pub async fn a_downstream_failure_reaches_the_requester_typed(backend: &dyn Backend) {
    let h = start(backend).await;
    let client = h.node("typed-client").unwrap();
    let middle = h.node("typed-middle").unwrap();
    let slow = h.node("typed-slow").unwrap();
    let last = h.node("typed-last").unwrap();
    slow.on("work", |_e: Event, _cx: Context| async {
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        json!("late")
    })
    .unwrap();
    middle
        .on("work", |e: Event, cx: Context| async move {
            let sent = cx
                .node()
                .send("typed-slow", e)
                .timeout(std::time::Duration::from_millis(100));
            sent.await
        })
        .unwrap();
    // Two hops: the middle asks the last node, which asks a node with no
    // handler for what it is sent.
    middle
        .on("chain", |e: Event, cx: Context| async move {
            cx.node().send("typed-last", e).await
        })
        .unwrap();
    last.on("chain", |e: Event, cx: Context| async move {
        cx.node()
            .send("typed-client", Event::new("unhandled", e.payload().clone()))
            .await
    })
    .unwrap();

    let err = client
        .send(&middle, ev("work", json!(null)))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.handler_error::<HappenError>(),
            Some(HappenError::Timeout { node, .. }) if node == "typed-slow"
        ),
        "{err:?}"
    );

    let err = client
        .send(&middle, ev("chain", json!(null)))
        .await
        .unwrap_err();
    let from_last = err.handler_error::<HappenError>();
    assert!(
        matches!(from_last, Some(HappenError::HandlerFailed { node, .. }) if node == "typed-last"),
        "{err:?}"
    );
    assert!(
        matches!(
            from_last.and_then(|e| e.handler_error::<HappenError>()),
            Some(HappenError::NoHandler { node, event_type }) if node == "typed-client" && event_type == "unhandled"
        ),
        "{err:?}"
    );
}

/// Every failed flow is counted where it ran, with a requester or without
/// one: a tell that fails has nobody to tell, and the count shows it.
pub async fn failed_flows_are_counted_where_they_ran(backend: &dyn Backend) {
    let h = start(backend).await;
    let a = h.node("count-a").unwrap();
    let b = h.node("count-b").unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    b.on("fail", move |_e: Event, _cx: Context| {
        let _ = tx.send(());
        async { Err::<Value, _>(std::io::Error::other("nope")) }
    })
    .unwrap();
    b.on("explode", |_e: Event, _cx: Context| async {
        if true {
            panic!("boom");
        }
    })
    .unwrap();
    b.on("fine", |_e: Event, _cx: Context| async { json!("ok") })
        .unwrap();
    h.flush().await.unwrap();
    let before = h.counters().failed;
    a.tell(&b, ev("fail", json!(null))).unwrap();
    rx.recv().await.unwrap();
    assert!(a.send(&b, ev("explode", json!(null))).await.is_err());
    assert_eq!(a.send(&b, ev("fine", json!(null))).await.unwrap(), "ok");
    // The told flow may end just after its handler ran.
    for _ in 0..100 {
        if h.counters().failed - before == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(h.counters().failed - before, 2);
}

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

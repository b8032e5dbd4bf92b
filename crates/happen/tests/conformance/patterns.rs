//! Patterns: which handlers an event type selects (string, function and combinator patterns),
//! and the validation of patterns, event types and node ids.

use std::time::Duration;

use happen::HandlerId;
use happen::prelude::*;
use tokio::sync::mpsc;

use super::{Backend, ev, start};

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
    // The documentation's glob: `*` spans segments (filtered in-process over
    // NATS, since no subject filter says it).
    label_handler(&n, wildcard("account.*.completed"), "glob", &tx);
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
            "account.profile.update.completed",
            "account.completed",
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
            ("one_of", "shipping.sent.late"),
            ("glob", "account.profile.update.completed"),
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
            happen::pattern::wildcard("x y*"),
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

/// Who takes a broadcast follows every change: a handler registered after
/// broadcasts of its type were made, a handler removed, a node shut down, a
/// zero handler added, and a function pattern whose answer changes with no
/// registration in between (it is asked on every broadcast).
pub async fn broadcast_receivers_follow_handler_changes(backend: &dyn Backend) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let h = start(backend).await;
    let sender = h.node("route-sender").unwrap();
    let a = h.node("route-a").unwrap();
    let b = h.node("route-b").unwrap();
    let c = h.node("route-c").unwrap();
    let d = h.node("route-d").unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();

    assert_eq!(matched_by(&sender, &mut rx, &["tick"]).await, pairs(&[]));
    let from_a = label_handler(&a, "tick", "a", &tx);
    h.flush().await.unwrap();
    assert_eq!(
        matched_by(&sender, &mut rx, &["tick"]).await,
        pairs(&[("a", "tick")])
    );

    label_handler(&b, "tick", "b", &tx);
    h.flush().await.unwrap();
    assert_eq!(
        matched_by(&sender, &mut rx, &["tick"]).await,
        pairs(&[("a", "tick"), ("b", "tick")])
    );

    assert!(a.off(from_a));
    h.flush().await.unwrap();
    assert_eq!(
        matched_by(&sender, &mut rx, &["tick"]).await,
        pairs(&[("b", "tick")])
    );

    b.shutdown().await;
    h.flush().await.unwrap();
    assert_eq!(matched_by(&sender, &mut rx, &["tick"]).await, pairs(&[]));

    let on = Arc::new(AtomicBool::new(false));
    let asked = on.clone();
    label_handler(
        &c,
        move |t: &str| t == "tick" && asked.load(Ordering::SeqCst),
        "c",
        &tx,
    );
    h.flush().await.unwrap();
    assert_eq!(matched_by(&sender, &mut rx, &["tick"]).await, pairs(&[]));
    on.store(true, Ordering::SeqCst);
    assert_eq!(
        matched_by(&sender, &mut rx, &["tick"]).await,
        pairs(&[("c", "tick")])
    );

    let zero_tx = tx.clone();
    d.zero("tick", move |event, _cx| {
        let _ = zero_tx.send(("d".to_owned(), event.event_type().to_owned()));
        Ok(happen::zero::ZeroNext::Done)
    })
    .unwrap();
    h.flush().await.unwrap();
    assert_eq!(
        matched_by(&sender, &mut rx, &["tick"]).await,
        pairs(&[("c", "tick"), ("d", "tick")])
    );
}

/// Registers on `node` a handler of `event_type` that holds the returned
/// `Arc` and sends on the returned channel when it runs.
fn holding_handler(
    node: &Node,
    event_type: &str,
) -> (std::sync::Arc<()>, mpsc::UnboundedReceiver<()>, HandlerId) {
    let held = std::sync::Arc::new(());
    let in_handler = held.clone();
    let (tx, rx) = mpsc::unbounded_channel();
    let id = node
        .on(event_type, move |_e: Event, _cx: Context| {
            let _held = &in_handler;
            let tx = tx.clone();
            async move {
                let _ = tx.send(());
            }
        })
        .unwrap();
    (held, rx, id)
}

/// A node shut down lets go of its handlers (and what they hold) even if
/// broadcasts of its types were routed to it and are not sent again.
pub async fn a_shut_down_node_is_not_kept_by_broadcast_routes(backend: &dyn Backend) {
    let h = start(backend).await;
    let sender = h.node("kept-sender").unwrap();
    let node = h.node("kept-node").unwrap();
    let (held, mut rx, _) = holding_handler(&node, "kept.tick");
    h.flush().await.unwrap();
    sender.broadcast(ev("kept.tick", json!(null))).unwrap();
    rx.recv().await.unwrap();
    node.shutdown().await;
    drop(node);
    assert_eq!(
        std::sync::Arc::strong_count(&held),
        1,
        "the handler was dropped"
    );
}

/// Whether nothing but the caller holds `held` within two seconds.
async fn let_go(held: &std::sync::Arc<()>) -> bool {
    for _ in 0..400 {
        if std::sync::Arc::strong_count(held) == 1 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

/// A handler removed with `off` is let go of (with what it holds) even if
/// broadcasts of its type were routed to it and are not sent again.
pub async fn a_removed_handler_is_not_kept_by_broadcast_routes(backend: &dyn Backend) {
    let h = start(backend).await;
    let sender = h.node("off-sender").unwrap();
    let node = h.node("off-node").unwrap();
    let (held, mut rx, id) = holding_handler(&node, "off.tick");
    h.flush().await.unwrap();
    sender.broadcast(ev("off.tick", json!(null))).unwrap();
    rx.recv().await.unwrap();
    assert!(node.off(id));
    // The flow that ran may still be ending; nothing else holds the handler.
    assert!(let_go(&held).await, "the handler was dropped");
    assert!(rx.recv().await.is_none(), "its sender went with it");
}

/// A handler removed with `off` is let go of (with what it holds) while a
/// flow of another handler of the same node is still running.
pub async fn a_removed_handler_is_not_kept_by_another_handlers_flow(backend: &dyn Backend) {
    let h = start(backend).await;
    let sender = h.node("busy-sender").unwrap();
    let node = h.node("busy-node").unwrap();
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let released = std::sync::Arc::new(tokio::sync::Mutex::new(Some(released)));
    let (began, mut running) = mpsc::unbounded_channel();
    node.on("busy.slow", move |_e: Event, _cx: Context| {
        let (released, began) = (released.clone(), began.clone());
        async move {
            let _ = began.send(());
            if let Some(released) = released.lock().await.take() {
                let _ = released.await;
            }
        }
    })
    .unwrap();
    let (held, _rx, id) = holding_handler(&node, "busy.other");
    h.flush().await.unwrap();
    sender
        .tell("busy-node", ev("busy.slow", json!(null)))
        .unwrap();
    running.recv().await.unwrap();
    assert!(node.off(id));
    // The slow flow is still waiting: it must not keep the removed handler.
    assert!(
        let_go(&held).await,
        "the removed handler was dropped while the other flow runs"
    );
    let _ = release.send(());
}

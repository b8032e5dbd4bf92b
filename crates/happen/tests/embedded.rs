//! The conformance suite on the embedded (in-process) runtime.

mod conformance;

use futures::future::BoxFuture;
use happen::{Happen, HappenConfig};

struct Embedded;

impl conformance::Backend for Embedded {
    fn start(&self, config: HappenConfig) -> BoxFuture<'static, Happen> {
        Box::pin(async move { Happen::embedded_with(config) })
    }
}

conformance_suite!(Embedded);

/// In one process a broadcast that meets a full queue is refused to the
/// broadcaster (the other receivers still get it). Over NATS the receiving
/// process cannot answer a broadcast; it logs the refusal instead.
#[tokio::test]
async fn broadcast_to_full_queue_is_refused_to_the_broadcaster() {
    use happen::prelude::*;
    use std::sync::Arc;
    use tokio::sync::{Notify, mpsc};

    let h = Happen::embedded();
    let a = h.node("bq-a").unwrap();
    let full = h
        .node_with(
            "bq-full",
            happen::NodeConfig::new().max_concurrent(1).queue_limit(0),
        )
        .unwrap();
    let other = h.node("bq-other").unwrap();
    let release = Arc::new(Notify::new());
    let r = release.clone();
    full.on("tick", move |_e: Event, _cx: Context| {
        let r = r.clone();
        async move { r.notified().await }
    })
    .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    other
        .on("tick", move |e: Event, _cx: Context| {
            let tx = tx.clone();
            async move { tx.send(e.payload().clone()).unwrap() }
        })
        .unwrap();
    a.broadcast(Event::new("tick", json!(1))).unwrap(); // takes the only slot
    let err = a.broadcast(Event::new("tick", json!(2))).unwrap_err();
    assert!(
        matches!(err, HappenError::QueueFull { ref node, .. } if node == "bq-full"),
        "{err:?}"
    );
    let mut got = vec![rx.recv().await.unwrap(), rx.recv().await.unwrap()];
    got.sort_by_key(|v| v.as_i64());
    assert_eq!(got, vec![json!(1), json!(2)], "the other receiver got both");
    release.notify_one();
}

/// With a state directory, state, global state and history survive the
/// runtime (a restart of the process).
#[tokio::test]
async fn state_history_and_global_survive_a_restart_on_disk() {
    use happen::prelude::*;
    let dir = tempfile::tempdir().unwrap();
    let first_event;
    {
        let h = Happen::embedded_on_disk(dir.path(), HappenConfig::default()).unwrap();
        let account = h.node("account").unwrap();
        account
            .on("deposit", |e: Event, cx: Context| async move {
                let amount = e.payload()["amount"].as_i64().unwrap_or(0);
                cx.node()
                    .state()
                    .set(|s| json!(s.as_i64().unwrap_or(0) + amount))
                    .await?;
                Ok::<_, HappenError>(())
            })
            .unwrap();
        let sent = account.send(&account, Event::new("deposit", json!({ "amount": 5 })));
        first_event = sent.id().to_owned();
        sent.await.unwrap();
        account
            .send(&account, Event::new("deposit", json!({ "amount": 7 })))
            .await
            .unwrap();
        account
            .global()
            .set("config:rate", json!(0.25))
            .await
            .unwrap();
        h.shutdown().await;
    }
    let h = Happen::embedded_on_disk(dir.path(), HappenConfig::default()).unwrap();
    let account = h.node("account").unwrap();
    assert_eq!(account.state().get().await.unwrap(), json!(12));
    assert_eq!(
        account.global().get("config:rate").await.unwrap(),
        Some(json!(0.25))
    );
    let then = account.state().when(first_event.as_str()).await.unwrap();
    assert_eq!(then.len(), 1);
    assert_eq!(then[0].state, json!(5));
    assert_eq!(account.state().history().await.unwrap().len(), 2);
    // Updates continue from the stored revision.
    account
        .state()
        .set(|s| json!(s.as_i64().unwrap() + 1))
        .await
        .unwrap();
    assert_eq!(account.state().get().await.unwrap(), json!(13));
}

/// A state directory that cannot be used is a clear error.
#[tokio::test]
async fn unusable_state_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let err = happen::Happen::embedded_on_disk(&file, happen::HappenConfig::default()).unwrap_err();
    assert!(
        matches!(err, happen::HappenError::Config(ref m) if m.contains("state directory")),
        "{err:?}"
    );
}

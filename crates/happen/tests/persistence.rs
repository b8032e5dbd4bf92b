//! Embedded persistence (feature `redb`): state, global state and history in
//! a database file survive a restart, and what is visible is what is on disk.

use happen::prelude::*;

/// With a state directory, state, global state and history survive the
/// runtime (a restart of the process).
#[tokio::test]
async fn state_history_and_global_survive_a_restart_on_disk() {
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

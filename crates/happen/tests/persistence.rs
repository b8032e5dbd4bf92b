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

/// Concurrent writers of one global key and one node's state: what a reader
/// saw last is what the file holds after a restart (writes reach the disk
/// in the order they became visible), in every one of 20 rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_was_visible_is_what_survives_a_restart() {
    const WRITERS: u64 = 100;
    let dir = tempfile::tempdir().unwrap();
    let mut mismatches = Vec::new();
    for round in 0..20 {
        let (global_seen, state_seen) = {
            let h = Happen::embedded_on_disk(dir.path(), HappenConfig::default()).unwrap();
            let mut tasks = Vec::new();
            for i in 0..WRITERS {
                let h = h.clone();
                tasks.push(tokio::spawn(async move {
                    let writer = h.state_of("shared").unwrap();
                    let global = h.node(&format!("w{i}")).unwrap().global();
                    global.set("last-writer", json!(i)).await.unwrap();
                    writer.set(move |_| json!(i)).await.unwrap();
                }));
            }
            for task in tasks {
                task.await.unwrap();
            }
            let seen = (
                h.node("reader")
                    .unwrap()
                    .global()
                    .get("last-writer")
                    .await
                    .unwrap(),
                h.state_of("shared").unwrap().get().await.unwrap(),
            );
            h.shutdown().await;
            seen
        };
        let h = Happen::embedded_on_disk(dir.path(), HappenConfig::default()).unwrap();
        let on_disk = (
            h.node("reader")
                .unwrap()
                .global()
                .get("last-writer")
                .await
                .unwrap(),
            h.state_of("shared").unwrap().get().await.unwrap(),
        );
        if on_disk != (global_seen.clone(), state_seen.clone()) {
            mismatches.push((round, global_seen, state_seen, on_disk));
        }
        h.shutdown().await;
    }
    assert!(
        mismatches.is_empty(),
        "memory and disk disagreed: {mismatches:?}"
    );
}

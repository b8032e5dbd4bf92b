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

/// Embedded on disk, events for a durable node are spooled: those whose
/// flows had not completed when the runtime stopped are handed to the node
/// after the restart, in the order sent; completed ones are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_for_a_durable_node_survive_a_restart_on_disk() {
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    let durable = || {
        NodeConfig::new()
            .max_concurrent(1)
            .delivery(happen::DeliveryConfig::at_least_once())
    };
    // The first run, in a tokio runtime of its own that ends with it (as
    // the process would), taking the flow that never completes with it.
    let path = dir.path().to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let h = Happen::embedded_on_disk(&path, HappenConfig::default()).unwrap();
            let mailer = h.node_with("mailer", durable()).unwrap();
            let shop = h.node("shop").unwrap();
            // The first two complete; the others never do.
            mailer
                .on("mail", |e: Event, _cx: Context| async move {
                    if e.payload()["seq"].as_u64().unwrap() >= 2 {
                        std::future::pending::<()>().await;
                    }
                })
                .unwrap();
            for seq in 0..5 {
                shop.tell(&mailer, Event::new("mail", json!({ "seq": seq })))
                    .unwrap();
            }
            h.flush().await.unwrap(); // on disk
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        });
    })
    .join()
    .unwrap();
    let h = Happen::embedded_on_disk(dir.path(), HappenConfig::default()).unwrap();
    let mailer = h.node_with("mailer", durable()).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    mailer
        .on("mail", move |e: Event, _cx: Context| {
            let seen = s.clone();
            async move {
                seen.lock()
                    .unwrap()
                    .push(e.payload()["seq"].as_u64().unwrap());
            }
        })
        .unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while seen.lock().unwrap().len() < 3 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(*seen.lock().unwrap(), [2, 3, 4]);
    // Completed after the restart: nothing is left for a third run.
    h.flush().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    h.shutdown().await;
    drop((mailer, h));
    let h = Happen::embedded_on_disk(dir.path(), HappenConfig::default()).unwrap();
    let mailer = h.node_with("mailer", durable()).unwrap();
    let again = Arc::new(Mutex::new(0));
    let a = again.clone();
    mailer
        .on("mail", move |_e: Event, _cx: Context| {
            *a.lock().unwrap() += 1;
            async {}
        })
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(*again.lock().unwrap(), 0);
}

/// Runs three events through a durable node on disk whose flows add 1 to
/// the node's state and are cut off by a restart before they complete,
/// then lets them run again to completion; returns the state after that.
async fn state_after_a_cut_off_run(mode: happen::DeliveryConfig) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let config = move || NodeConfig::new().max_concurrent(3).delivery(mode);
    let add = |s: Value| json!(s.as_u64().unwrap_or(0) + 1);
    in_a_process_that_ends(dir.path(), move |h| async move {
        let ledger = h.node_with("ledger", config()).unwrap();
        let shop = h.node("shop").unwrap();
        ledger
            .on("entry", move |_e: Event, cx: Context| async move {
                cx.node().state().set(add).await?;
                // The process dies here.
                std::future::pending::<()>().await;
                Ok::<_, HappenError>(())
            })
            .unwrap();
        for seq in 0..3 {
            shop.tell(&ledger, Event::new("entry", json!({ "seq": seq })))
                .unwrap();
        }
        h.flush().await.unwrap();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while ledger.state().get().await.unwrap() != json!(3) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the first run's updates"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    });
    let h = Happen::embedded_on_disk(dir.path(), HappenConfig::default()).unwrap();
    let ledger = h.node_with("ledger", config()).unwrap();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let d = done.clone();
    ledger
        .on("entry", move |_e: Event, cx: Context| {
            let done = d.clone();
            async move {
                cx.node().state().set(add).await?;
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok::<_, HappenError>(())
            }
        })
        .unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while done.load(std::sync::atomic::Ordering::SeqCst) < 3 {
        assert!(tokio::time::Instant::now() < deadline, "the re-runs");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    ledger.state().get().await.unwrap()
}

/// Exactly-once on disk: flows cut off by a restart run again, and the
/// state changes their first run made are not made a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_state_changes_survive_a_restart_once() {
    let state = state_after_a_cut_off_run(happen::DeliveryConfig::exactly_once()).await;
    assert_eq!(state, json!(3), "each event's update applied once");
    // At-least-once makes them again: the same run shows the difference.
    let state = state_after_a_cut_off_run(happen::DeliveryConfig::at_least_once()).await;
    assert_eq!(state, json!(6));
}

/// Embedded on disk, a tell's receipt resolves once the event is in the
/// database: a process that ends right after (no flush, no shutdown) finds
/// it there when it starts again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolved_receipt_means_the_event_survives_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let durable = || NodeConfig::new().delivery(happen::DeliveryConfig::at_least_once());
    let sent = 50u64;
    in_a_process_that_ends(dir.path(), move |h| async move {
        let mailer = h.node_with("mailer", durable()).unwrap();
        let shop = h.node("shop").unwrap();
        mailer
            .on("mail", |_e: Event, _cx: Context| {
                std::future::pending::<()>()
            })
            .unwrap();
        let mut last = None;
        for seq in 0..sent {
            last = Some(
                shop.tell(&mailer, Event::new("mail", json!({ "seq": seq })))
                    .unwrap(),
            );
        }
        // One writer keeps them in order: the last receipt covers all.
        last.unwrap().await.unwrap();
        // The process ends here: the runtime goes without a shutdown.
    });
    let h = Happen::embedded_on_disk(dir.path(), HappenConfig::default()).unwrap();
    let mailer = h.node_with("mailer", durable()).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    mailer
        .on("mail", move |e: Event, _cx: Context| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(e.payload()["seq"].as_u64().unwrap());
            }
        })
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < sent as usize {
        let next = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv()).await;
        seen.push(next.expect("every stored event").unwrap());
    }
    assert_eq!(seen, (0..sent).collect::<Vec<_>>());
}

/// Runs `body` with a runtime on disk in `dir`, on a thread with a tokio
/// runtime of its own that ends with it (as a process would, with no
/// shutdown of the Happen runtime).
fn in_a_process_that_ends<F, Fut>(dir: &std::path::Path, body: F)
where
    F: FnOnce(Happen) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let path = dir.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let h = Happen::embedded_on_disk(&path, HappenConfig::default()).unwrap();
            body(h).await;
        });
    })
    .join()
    .unwrap();
}

#[tokio::test]
async fn a_recorded_transaction_is_traced_after_a_restart() {
    use happen::trace::Recorder;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trace.redb");
    let order = {
        let recorder = Recorder::on_disk(&path, 10_000).unwrap();
        let h = Happen::embedded_with(HappenConfig::default().recorder(recorder.clone()));
        let shop = h.node("shop").unwrap();
        h.node("bank")
            .unwrap()
            .on("charge", |_e: Event, _cx: Context| async { json!("paid") })
            .unwrap();
        shop.on("order", |_e: Event, cx: Context| async move {
            cx.node()
                .send("bank", Event::new("charge", json!(1)))
                .response()
                .await
        })
        .unwrap();
        let sent = shop.send(&shop, Event::new("order", json!(null)));
        let order = sent.id().to_owned();
        sent.await.unwrap();
        h.shutdown().await;
        recorder.flush().await;
        order
    };
    // A new process (here: a new recorder once the old one let go of the file).
    let recorder = {
        let mut tries = 0;
        loop {
            match Recorder::on_disk(&path, 10_000) {
                Ok(r) => break r,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(e) => panic!("{e}"),
            }
        }
    };
    let tx = recorder.transaction(&order).await.unwrap();
    let charge = tx
        .events()
        .iter()
        .find(|e| e.event_type == "charge")
        .unwrap();
    assert_eq!(charge.flows[0].node, "bank");
    let why: Vec<&str> = tx
        .why(&charge.causal.id)
        .iter()
        .map(|e| e.event_type.as_str())
        .collect();
    assert_eq!(why, ["charge", "order"]);
}

/// A spooled event waiting for its retry does not keep the database after
/// shutdown: it stays on disk, and the directory opens again at once.
/// (The retry held the node, and with it the database, for its backoff.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_waiting_on_disk_lets_the_database_go_at_shutdown() {
    retry_waiting_on_disk_at_shutdown(false).await;
}

/// The node's own shutdown, with its retry waiting on disk, returns
/// without waiting out the backoff, and the event stays for the next run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_shutdown_leaves_its_retry_waiting_on_disk() {
    retry_waiting_on_disk_at_shutdown(true).await;
}

async fn retry_waiting_on_disk_at_shutdown(node_first: bool) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    {
        let happen = Happen::embedded_on_disk(dir.path(), HappenConfig::default()).unwrap();
        let client = happen.node("client").unwrap();
        let retry = happen::DeliveryConfig::at_least_once()
            .backoff(Duration::from_secs(20), Duration::from_secs(20));
        let svc = happen
            .node_with("svc", NodeConfig::new().delivery(retry))
            .unwrap();
        svc.on("job", |_e: Event, _cx: Context| async {
            Err::<Value, _>(HappenError::Cancelled)
        })
        .unwrap();
        client
            .tell(&svc, Event::new("job", json!(null)))
            .unwrap()
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        if node_first {
            let stopped = tokio::time::timeout(Duration::from_secs(5), svc.shutdown()).await;
            assert!(
                stopped.is_ok(),
                "the node's shutdown waited out the backoff"
            );
        }
        happen.shutdown().await;
    }
    let again = Happen::embedded_on_disk(dir.path(), HappenConfig::default());
    let reopened = again.is_ok();
    // The event is still there: the next run takes it.
    let taken = Arc::new(AtomicUsize::new(0));
    if let Ok(happen) = &again {
        let t = taken.clone();
        let svc = happen
            .node_with(
                "svc",
                NodeConfig::new().delivery(happen::DeliveryConfig::at_least_once()),
            )
            .unwrap();
        svc.on("job", move |_e: Event, _cx: Context| {
            t.fetch_add(1, Ordering::SeqCst);
            async {}
        })
        .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while taken.load(Ordering::SeqCst) == 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    println!(
        "on disk, retry waiting at shutdown (node first: {node_first}): reopened={reopened} taken-next-run={}",
        taken.load(Ordering::SeqCst)
    );
    assert!(reopened, "{:?}", again.err());
    assert_eq!(taken.load(Ordering::SeqCst), 1, "kept for the next run");
}

//! State across runtimes on one server, as separate processes share it.

use std::time::Duration;

use happen::prelude::*;
use happen_test::NatsServer;

mod support;
use support::*;

/// Global state and views are shared by every runtime connected to the
/// server (as separate processes would be), and a watch in one sees changes
/// made by another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_state_and_views_span_runtimes() {
    use futures::StreamExt;
    let server = NatsServer::start().unwrap();
    let a = connect(&server).await;
    let b = connect(&server).await;
    let writer = a.node("writer").unwrap();
    let reader = b.node("reader").unwrap();
    let mut watch = reader.global().watch("dataset:big").await.unwrap();

    writer
        .global()
        .set("dataset:big", json!({ "rows": [1, 2, 3] }))
        .await
        .unwrap();
    writer
        .state()
        .set(|_| json!({ "owner": "a" }))
        .await
        .unwrap();

    assert_eq!(
        reader.global().get("dataset:big").await.unwrap(),
        Some(json!({ "rows": [1, 2, 3] }))
    );
    assert_eq!(
        reader.view("writer").get().await.unwrap(),
        Some(json!({ "owner": "a" }))
    );
    let change = within("watched change", 10, watch.next()).await.unwrap();
    assert_eq!(change.key, "dataset:big");
    assert_eq!(change.value, Some(json!({ "rows": [1, 2, 3] })));
    a.shutdown().await;
    b.shutdown().await;
}

/// The documentation's way to pass large data: put it in global state and
/// send the key. A value larger than the server's `max_payload` (1 MiB by
/// default; 2.7 MB here) is kept in a JetStream object store, the bucket
/// holding a pointer: another runtime reads it and watches it whole, it
/// can become small and large again, and a delete takes both (a spec
/// audit found it refused with `PayloadTooLarge`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_global_values_span_runtimes() {
    use futures::StreamExt;
    let server = NatsServer::start().unwrap();
    let a = connect(&server).await;
    let b = connect(&server).await;
    let writer = a.node("producer").unwrap();
    let reader = b.node("consumer").unwrap();
    let mut watch = reader.global().watch("dataset:large").await.unwrap();
    let rows: Vec<u64> = (0..400_000).collect(); // ~2.7 MB of JSON
    let large = json!({ "rows": rows });
    assert!(serde_json::to_vec(&large).unwrap().len() > 2 << 20);

    writer.global().set("dataset:large", &large).await.unwrap();
    assert_eq!(
        reader.global().get("dataset:large").await.unwrap().as_ref(),
        Some(&large)
    );
    let change = within("watched change", 10, watch.next()).await.unwrap();
    assert_eq!(
        change.value.as_ref(),
        Some(&large),
        "the watch sees it whole"
    );

    let js = async_nats::jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let live = || live_objects(&js);
    assert_eq!(live().await, 1);

    // Small (its object goes), then large again (another value), then gone.
    let small = json!("small");
    writer.global().set("dataset:large", &small).await.unwrap();
    assert_eq!(
        reader.global().get("dataset:large").await.unwrap(),
        Some(small)
    );
    assert_eq!(
        live().await,
        0,
        "nothing points to the large value any more"
    );
    let other = json!({ "rows": rows, "again": true });
    writer.global().set("dataset:large", &other).await.unwrap();
    assert_eq!(
        reader.global().get("dataset:large").await.unwrap().as_ref(),
        Some(&other)
    );
    assert_eq!(live().await, 1);
    writer.global().delete("dataset:large").await.unwrap();
    assert_eq!(reader.global().get("dataset:large").await.unwrap(), None);
    assert_eq!(live().await, 0, "the delete took the object too");
    a.shutdown().await;
    b.shutdown().await;
}

/// Large global values written to one key at once from two runtimes: the
/// key ends holding one of them whole, and the object store holds exactly
/// the object it points to (each write replaces the pointer it read, and
/// deletes that pointer's object; before, two writers that read the same
/// pointer both deleted its object and the loser's object stayed behind
/// with nothing pointing to it). A delete then leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_large_global_writers_leave_no_orphan() {
    const WRITERS: usize = 8;
    let server = NatsServer::builder()
        .config("max_payload: 65536")
        .start()
        .unwrap();
    let a = connect(&server).await;
    let b = connect(&server).await;
    let nodes = [a.node("writer").unwrap(), b.node("writer").unwrap()];
    let value = |writer: usize| json!({ "writer": writer, "rows": vec![writer; 40_000] });
    for round in 0..3 {
        let mut tasks = Vec::new();
        for (i, node) in nodes.iter().cycle().take(2 * WRITERS).enumerate() {
            let (node, value) = (node.clone(), value(i));
            tasks.push(tokio::spawn(async move {
                node.global().set("shared:large", &value).await
            }));
        }
        for task in tasks {
            task.await.unwrap().expect("every write lands");
        }
        let held = nodes[round % 2].global().get("shared:large").await.unwrap();
        let writer = held.as_ref().and_then(|v| v["writer"].as_u64()).unwrap() as usize;
        assert_eq!(held, Some(value(writer)), "one writer's value, whole");
        let js = async_nats::jetstream::new(async_nats::connect(server.url()).await.unwrap());
        let live = live_objects(&js).await;
        println!(
            "faults: large-global-writers round={round} writes={} live-objects={live} orphans={}",
            2 * WRITERS,
            live.saturating_sub(1)
        );
        assert_eq!(live, 1, "round {round}: only the object the key points to");
    }
    nodes[0].global().delete("shared:large").await.unwrap();
    assert_eq!(nodes[1].global().get("shared:large").await.unwrap(), None);
    a.shutdown().await;
    b.shutdown().await;
}

/// A write over a pointer whose object cannot be deleted (here a pointer
/// naming no valid object, as a raw client could leave it) lands, and keeps
/// the large object it wrote: the old object is left over, logged, not a
/// failed write (a review found the write reported failed and its own new
/// object deleted, the key then pointing to nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_old_object_cannot_be_deleted_lands_whole() {
    let server = NatsServer::builder()
        .config("max_payload: 65536")
        .start()
        .unwrap();
    let a = connect(&server).await;
    let node = a.node("writer").unwrap();
    node.global().set("blob", &json!("small")).await.unwrap();
    let js = async_nats::jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let bucket = js.get_key_value("happen-global").await.unwrap();
    // Happen's pointer form, naming an object the store refuses to look up.
    bucket
        .put("blob", bytes::Bytes::from_static(b"\0happen-large-v1\0"))
        .await
        .unwrap();

    let large = json!({ "rows": vec![7u64; 40_000] });
    let written = node.global().set("blob", &large).await;
    let read = node.global().get("blob").await;
    let live = live_objects(&js).await;
    println!(
        "faults: large-global-over-an-undeletable-pointer written={} read-whole={} live-objects={live}",
        written.is_ok(),
        matches!(&read, Ok(Some(v)) if *v == large)
    );
    written.expect("the write lands");
    assert_eq!(read.unwrap(), Some(large));
    assert_eq!(live, 1, "the new object is kept");
    a.shutdown().await;
}

/// Two runtimes (as two processes) each run 1,000 concurrent increments of
/// one node's state, ten rounds: every update lands, the counter ends at
/// 20,000, and no update gives up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_in_two_runtimes_lose_no_update() {
    const ROUNDS: u64 = 10;
    const PER_RUNTIME: u64 = 1_000;
    let server = NatsServer::start().unwrap();
    let a = connect(&server).await;
    let b = connect(&server).await;
    // One node id with an instance in each runtime.
    let counters = [a.node("counter").unwrap(), b.node("counter").unwrap()];
    let started = std::time::Instant::now();
    for round in 1..=ROUNDS {
        let mut tasks = Vec::new();
        for node in &counters {
            for _ in 0..PER_RUNTIME {
                let node = node.clone();
                tasks.push(tokio::spawn(async move {
                    node.state()
                        .set(|s| json!(s.as_u64().unwrap_or(0) + 1))
                        .await
                }));
            }
        }
        for task in tasks {
            task.await.unwrap().expect("every update lands");
        }
        assert_eq!(
            counters[0].state().get().await.unwrap(),
            json!(round * 2 * PER_RUNTIME),
            "after round {round}"
        );
    }
    println!(
        "concurrent state writers: {} increments from 2 runtimes in {:?}, counter = {}",
        ROUNDS * 2 * PER_RUNTIME,
        started.elapsed(),
        counters[1].state().get().await.unwrap()
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// Over NATS a node's stored state is a message, bounded by the server's
/// `max_payload` like an event: a larger state is refused with
/// `PayloadTooLarge` before anything is written, and the value stored
/// before stays. (A global value that large is kept in the object store:
/// `large_global_values_span_runtimes`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_over_the_servers_limit_are_refused_clearly() {
    let limit = 65_536usize;
    let server = NatsServer::builder()
        .config(format!("max_payload: {limit}"))
        .start()
        .unwrap();
    let happen = connect(&server).await;
    let node = happen.node("keeper").unwrap();
    let big = json!("x".repeat(limit));
    node.state()
        .set(|_: Value| json!({ "n": 1 }))
        .await
        .unwrap();
    let err = node
        .state()
        .set(move |_: Value| json!({ "blob": big.clone() }))
        .await
        .unwrap_err();
    assert!(
        matches!(err, HappenError::PayloadTooLarge { .. }),
        "{err:?}"
    );
    assert_eq!(node.state().get().await.unwrap(), json!({ "n": 1 }));

    // Just under the limit: the headers of a conditional save count too.
    let near = json!("y".repeat(limit - 60));
    let err = node
        .state()
        .set(move |_: Value| near.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(err, HappenError::PayloadTooLarge { .. }),
        "{err:?}"
    );
    // A change made in a flow whose snapshot (the value and its cause)
    // would not fit is refused before the value is saved.
    node.on("grow", move |_e: Event, cx: Context| async move {
        // Fits a conditional save (128 bytes kept for its headers), not a
        // snapshot (the value and some 180 bytes of its cause).
        let grown = json!("z".repeat(limit - 150));
        cx.node()
            .state()
            .set(move |_: Value| grown.clone())
            .await
            .map(drop)
    })
    .unwrap();
    let err = node
        .send(&node, Event::new("grow", json!(null)))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, HappenError::HandlerFailed { cause, .. } if cause.contains("exceeds")),
        "{err:?}"
    );
    assert_eq!(node.state().get().await.unwrap(), json!({ "n": 1 }));
    happen.shutdown().await;
}

/// How many large global values the object store holds (not deleted).
async fn live_objects(js: &async_nats::jetstream::Context) -> usize {
    use futures::StreamExt;
    let objects = js.get_object_store("happen-global-large").await.unwrap();
    let listed: Vec<_> = objects.list().await.unwrap().collect().await;
    listed
        .into_iter()
        .filter(|info| info.as_ref().is_ok_and(|i| !i.deleted))
        .count()
}

/// A node's history is in the order its changes were saved, whatever
/// order the snapshots reached the temporal stream in (two processes
/// updating one node's state publish them after their saves, in either
/// order) and whatever their timestamps say. The stream's entries are
/// written here by a raw client: the revision 5 change first, then the
/// revision 4 one with a later timestamp, and one in the form recorded
/// before snapshots carried their revision (older than any that do).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_in_the_order_changes_were_saved() {
    let server = NatsServer::start().unwrap();
    let happen = connect(&server).await;
    let node = happen.node("ordered").unwrap();
    node.on("set", |e: Event, cx: Context| async move {
        cx.node().state().set(|_| e.payload().clone()).await
    })
    .unwrap();
    let client = happen.node("client").unwrap();
    client
        .send(&node, Event::new("set", json!(1)))
        .await
        .unwrap();
    let first = node.state().history().await.unwrap();
    assert_eq!(first.len(), 1);
    let snapshot = |value: u64, timestamp: u64| {
        let mut s = serde_json::to_value(&first[0]).unwrap();
        s["state"] = json!(value);
        s["context"]["timestamp"] = json!(timestamp);
        s
    };
    let js = async_nats::jetstream::new(async_nats::connect(server.url()).await.unwrap());
    for entry in [
        json!({ "revision": 5, "snapshot": snapshot(5, 1_000) }),
        json!({ "revision": 4, "snapshot": snapshot(4, 2_000) }),
        snapshot(0, 3_000),
    ] {
        js.publish("happen.temporal.ordered", entry.to_string().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let states: Vec<Value> = node
        .state()
        .history()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.state)
        .collect();
    assert_eq!(states, [json!(0), json!(1), json!(4), json!(5)]);
}

/// A change whose snapshot cannot be stored (the temporal stream was
/// deleted) is saved and stands: the flow does not fail, and a retrying
/// node does not apply it again. Before, `set` failed after the save, and
/// each retry added one more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_whose_snapshot_cannot_be_stored_stands() {
    let server = NatsServer::start().unwrap();
    let happen = connect(&server).await;
    let delivery = happen::DeliveryConfig::at_least_once()
        .max_attempts(3)
        .backoff(Duration::from_millis(10), Duration::from_millis(10));
    let ledger = happen
        .node_with("ledger", NodeConfig::new().delivery(delivery))
        .unwrap();
    ledger
        .on("add", |_e: Event, cx: Context| async move {
            cx.node()
                .state()
                .set(|s| json!(s.as_u64().unwrap_or(0) + 1))
                .await
        })
        .unwrap();
    happen.flush().await.unwrap();
    let client = happen.node("client").unwrap();
    let add = || client.send(&ledger, Event::new("add", json!(null)));
    assert_eq!(add().await.unwrap(), json!(1));
    let js = async_nats::jetstream::new(async_nats::connect(server.url()).await.unwrap());
    js.delete_stream("happen-temporal").await.unwrap();
    assert_eq!(add().await.unwrap(), json!(2));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ledger.state().get().await.unwrap(), json!(2));
}

/// Every process's history is kept in one stream: a runtime configured
/// with less history than another leaves the longer retention in place
/// (it cut everyone's history to its own), and one asking for more grows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_keeping_less_history_does_not_cut_anothers() {
    let server = NatsServer::start().unwrap();
    let keeping = |history| {
        HappenConfig::default().temporal(happen::TemporalConfig {
            enabled: true,
            history,
            max_age: Duration::from_secs(3600),
        })
    };
    let connect =
        |history| Happen::connect_with(happen::NatsConfig::new(server.url()), keeping(history));
    let a = connect(100).await.unwrap();
    let node = a.node("kept").unwrap();
    node.on("tick", |e: Event, cx: Context| async move {
        cx.node().state().set(|_| e.payload().clone()).await
    })
    .unwrap();
    let client = a.node("client").unwrap();
    for i in 0..20 {
        client
            .send(&node, Event::new("tick", json!(i)))
            .await
            .unwrap();
    }
    assert_eq!(node.state().history().await.unwrap().len(), 20);
    let _b = connect(3).await.unwrap();
    assert_eq!(node.state().history().await.unwrap().len(), 20);
    let js = async_nats::jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let limit = |js: async_nats::jetstream::Context| async move {
        let mut stream = js.get_stream("happen-temporal").await.unwrap();
        stream.info().await.unwrap().config.max_messages_per_subject
    };
    assert_eq!(limit(js.clone()).await, 100);
    let _c = connect(500).await.unwrap();
    assert_eq!(limit(js).await, 500);
}

/// A large global value under the longest key, made of characters that
/// escaping triples: it is stored and read back, and the connection stays
/// up (its object was named after the escaped key, and the object store's
/// subject for that name was longer than the server takes, so the server
/// closed the whole connection and the write failed after 15 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_global_value_under_the_longest_key_is_stored() {
    let server = NatsServer::start().unwrap();
    let happen = connect(&server).await;
    let node = happen.node("writer").unwrap();
    let key = ":".repeat(happen::state::global::MAX_KEY_LEN);
    let connects = || {
        let client = happen.nats_client().expect("over NATS");
        client
            .statistics()
            .connects
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let before = connects();
    let rows: Vec<u64> = (0..200_000).collect();
    let large = json!({ "rows": rows });
    within("the write", 10, node.global().set(&key, &large))
        .await
        .unwrap();
    assert_eq!(
        node.global().get(&key).await.unwrap().as_ref(),
        Some(&large)
    );
    assert_eq!(connects(), before, "the connection stayed up");
}

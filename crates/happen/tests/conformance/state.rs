//! State: node state and views of other nodes, shared and watchable global state, and temporal
//! snapshots with their retention.

use std::time::Duration;

use happen::prelude::*;

use super::{Backend, ev, start};

async fn next(
    s: &mut futures::stream::BoxStream<'static, happen::GlobalChange>,
) -> happen::GlobalChange {
    use futures::StreamExt;
    tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .expect("a change within 10 s")
        .expect("the watch stays open")
}

pub async fn state_get_set_and_projection(backend: &dyn Backend) {
    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Orders {
        backlog: Vec<String>,
    }
    let h = start(backend).await;
    let n = h.node("st-orders").unwrap();
    let state = n.state();
    assert_eq!(state.get().await.unwrap(), Value::Null, "no state yet");
    assert_eq!(state.get_as::<Orders>().await.unwrap(), None);
    let new = state.set(|_| json!({ "backlog": ["o-1"] })).await.unwrap();
    assert_eq!(new, json!({ "backlog": ["o-1"] }));
    state
        .set(|mut s| {
            s["backlog"].as_array_mut().unwrap().push(json!("o-2"));
            s
        })
        .await
        .unwrap();
    let count = state
        .get_with(|s| s["backlog"].as_array().map_or(0, Vec::len))
        .await
        .unwrap();
    assert_eq!(count, 2);
    assert_eq!(
        state.get_as::<Orders>().await.unwrap(),
        Some(Orders {
            backlog: vec!["o-1".into(), "o-2".into()]
        })
    );
    // Another handle to the same node sees the same state.
    assert_eq!(n.clone().state().get().await.unwrap()["backlog"][1], "o-2");
}

pub async fn concurrent_state_updates_are_atomic(backend: &dyn Backend) {
    let h = start(backend).await;
    let a = h.node("inc-a").unwrap();
    let counter = h.node("inc-counter").unwrap();
    counter
        .on("increment", |_e: Event, cx: Context| async move {
            cx.node()
                .state()
                .set(|s| json!(s.as_u64().unwrap_or(0) + 1))
                .await?;
            Ok::<_, HappenError>(())
        })
        .unwrap();
    let sends: Vec<_> = (0..1000)
        .map(|_| {
            a.send(&counter, ev("increment", json!(null)))
                .timeout(Duration::from_secs(50))
        })
        .collect();
    for s in futures::future::join_all(sends.into_iter().map(|s| s.response())).await {
        s.unwrap();
    }
    assert_eq!(counter.state().get().await.unwrap(), json!(1000));
}

pub async fn views_see_other_nodes_and_missing_nodes_are_none(backend: &dyn Backend) {
    let h = start(backend).await;
    let orders = h.node("vw-orders").unwrap();
    let customers = h.node("vw-customers").unwrap();
    let inventory = h.node("vw-inventory").unwrap();
    customers
        .state()
        .set(|_| json!({ "c1": { "name": "Ada", "address": "1 Main St" } }))
        .await
        .unwrap();
    inventory
        .state()
        .set(|_| json!({ "p1": { "stock": 3 } }))
        .await
        .unwrap();

    let updated = orders
        .state()
        .set_with_views(["vw-customers", "vw-inventory", "vw-nobody"], |mut state, views| {
            state["o1"] = json!({
                "shipTo": views.get_with("vw-customers", |c| c["c1"]["address"].clone()),
                "canShip": views.get_with("vw-inventory", |i| i["p1"]["stock"].as_u64() > Some(0)),
                "missing": views.get("vw-nobody").is_none(),
            });
            state
        })
        .await
        .unwrap();
    assert_eq!(
        updated["o1"],
        json!({ "shipTo": "1 Main St", "canShip": true, "missing": true })
    );

    assert_eq!(
        orders
            .view("vw-customers")
            .get_with(|c| c["c1"]["name"].clone())
            .await
            .unwrap(),
        Some(json!("Ada"))
    );
    assert_eq!(orders.view("vw-nobody").get().await.unwrap(), None);

    let collected = orders
        .collect()
        .from_as("customer", "vw-customers", |c| c["c1"]["name"].clone())
        .from("vw-inventory", |i| i["p1"]["stock"].clone())
        .from_as("ghost", "vw-nobody", |g| g.clone())
        .await
        .unwrap();
    assert_eq!(collected.len(), 3);
    assert_eq!(collected["customer"], Some(json!("Ada")));
    assert_eq!(collected["vw-inventory"], Some(json!(3)));
    assert_eq!(collected["ghost"], None);

    // Text that is no node id is an error, the same on every runtime (one
    // store read it as a node without state, another as a key error).
    for invalid in ["", "a b", "vw.orders"] {
        let viewed = orders.view(invalid).get().await;
        assert!(
            matches!(viewed, Err(HappenError::InvalidName(_))),
            "{invalid:?}: {viewed:?}"
        );
        let collected = orders
            .collect()
            .from("x", |v| v.clone())
            .from(invalid, |v| v.clone())
            .await;
        assert!(
            matches!(collected, Err(HappenError::InvalidName(_))),
            "{collected:?}"
        );
    }
}

pub async fn global_state_is_shared_and_watchable(backend: &dyn Backend) {
    let h = start(backend).await;
    let writer = h.node("gl-writer").unwrap();
    let reader = h.node("gl-reader").unwrap();
    let mut watch = reader.global().watch("user:profile:123").await.unwrap();
    let mut all = reader.global().watch_all().await.unwrap();

    writer
        .global()
        .set("user:profile:123", json!({ "name": "Ada" }))
        .await
        .unwrap();
    writer
        .global()
        .set("report.q3", json!([1, 2, 3]))
        .await
        .unwrap();
    assert_eq!(
        reader.global().get("user:profile:123").await.unwrap(),
        Some(json!({ "name": "Ada" }))
    );
    assert_eq!(
        reader
            .global()
            .get_as::<Vec<u8>>("report.q3")
            .await
            .unwrap(),
        Some(vec![1, 2, 3])
    );
    assert_eq!(reader.global().get("absent").await.unwrap(), None);
    assert_eq!(
        reader.global().keys().await.unwrap(),
        vec!["report.q3", "user:profile:123"]
    );

    writer.global().delete("user:profile:123").await.unwrap();
    writer.global().delete("never-there").await.unwrap();
    assert_eq!(reader.global().get("user:profile:123").await.unwrap(), None);
    assert_eq!(reader.global().keys().await.unwrap(), vec!["report.q3"]);

    let set = next(&mut watch).await;
    assert_eq!(
        (set.key.as_str(), set.value),
        ("user:profile:123", Some(json!({ "name": "Ada" })))
    );
    let deleted = next(&mut watch).await;
    assert_eq!(
        (deleted.key.as_str(), deleted.value),
        ("user:profile:123", None)
    );
    let keys: Vec<String> = vec![
        next(&mut all).await.key,
        next(&mut all).await.key,
        next(&mut all).await.key,
    ];
    assert_eq!(
        keys,
        vec!["user:profile:123", "report.q3", "user:profile:123"]
    );

    let err = reader.global().set("", json!(1)).await.unwrap_err();
    assert!(matches!(err, HappenError::Config(_)), "{err:?}");
}

/// A watcher of one key gets its changes however busy the other keys are,
/// and changes from writers racing on one key reach the watcher in the
/// order they were applied: the last it gets is the stored value. (Over
/// NATS a value replaced before the watcher read it may be skipped.)
pub async fn global_watchers_miss_no_change(backend: &dyn Backend) {
    use futures::StreamExt;
    let h = start(backend).await;
    let node = h.node("gw-node").unwrap();
    let global = node.global();
    let mut watch = global.watch("gw:config").await.unwrap();
    global.set("gw:config", json!("v1")).await.unwrap();
    for i in 0..1_100 {
        global.set("gw:metrics", json!(i)).await.unwrap();
    }
    global.set("gw:config", json!("v2")).await.unwrap();
    assert_eq!(next(&mut watch).await.value, Some(json!("v1")));
    assert_eq!(next(&mut watch).await.value, Some(json!("v2")));

    let mut race = global.watch("gw:race").await.unwrap();
    let writers: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|who| {
            let global = node.global();
            tokio::spawn(async move {
                for i in 0..50 {
                    global
                        .set("gw:race", json!(format!("{who}{i}")))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let stored = global.get("gw:race").await.unwrap();
    let mut seen = 0;
    while next(&mut race).await.value != stored {
        seen += 1;
        assert!(seen < 100, "the stored value never came");
    }
    let after = tokio::time::timeout(Duration::from_millis(300), race.next()).await;
    assert!(after.is_err(), "a change after the last: {after:?}");
}

pub async fn temporal_snapshots_record_the_causing_event(backend: &dyn Backend) {
    let h = start(backend).await;
    let bank = h.node("tm-bank").unwrap();
    let account = h.node("tm-account").unwrap();
    account
        .on("deposit", |event: Event, cx: Context| async move {
            let amount = event.payload()["amount"].as_i64().unwrap_or(0);
            let state = cx
                .node()
                .state()
                .set(|s| json!({ "balance": s["balance"].as_i64().unwrap_or(0) + amount }))
                .await?;
            Ok::<_, HappenError>(state)
        })
        .unwrap();
    // A change outside any flow has no cause and is not recorded.
    account
        .state()
        .set(|_| json!({ "balance": 0 }))
        .await
        .unwrap();

    let mut ids = Vec::new();
    for (amount, correlation) in [(10, "txn-a"), (20, "txn-b"), (5, "txn-a")] {
        let sent = bank.send(
            &account,
            ev("deposit", json!({ "amount": amount })).with_correlation_id(correlation),
        );
        ids.push(sent.id().to_owned());
        sent.await.unwrap();
    }

    let history = account.state().history().await.unwrap();
    assert_eq!(history.len(), 3, "one snapshot per change made in a flow");
    let balances: Vec<i64> = history
        .iter()
        .map(|s| s.state["balance"].as_i64().unwrap())
        .collect();
    assert_eq!(balances, vec![10, 30, 35], "ordered by time");

    let after_second = account.state().when(ids[1].as_str()).await.unwrap();
    assert_eq!(after_second.len(), 1);
    let snap = &after_second[0];
    assert_eq!(snap.state, json!({ "balance": 30 }));
    assert_eq!(snap.context.id, ids[1]);
    assert_eq!(snap.context.correlation_id, "txn-b");
    assert_eq!(snap.context.sender, "tm-bank");
    assert_eq!(snap.context.event_type, "deposit");
    assert_eq!(snap.context.causation_id, None, "a root event");
    assert!(snap.context.timestamp > 0);

    let txn_a = account
        .state()
        .when(|c: &happen::SnapshotContext| c.correlation_id == "txn-a")
        .await
        .unwrap();
    assert_eq!(
        txn_a
            .iter()
            .map(|s| s.state["balance"].clone())
            .collect::<Vec<_>>(),
        vec![json!(10), json!(35)]
    );
    assert!(
        account
            .state()
            .when("no-such-event")
            .await
            .unwrap()
            .is_empty()
    );

    // A batch is handled in one flow: the snapshot after it is found by the
    // batch's id and by each member's.
    account
        .on("deposits", |event: Event, cx: Context| async move {
            let total: i64 = event
                .events()
                .iter()
                .filter_map(|e| e.payload()["amount"].as_i64())
                .sum();
            cx.node()
                .state()
                .set(|s| json!({ "balance": s["balance"].as_i64().unwrap_or(0) + total }))
                .await
        })
        .unwrap();
    let batch = Event::batch([
        ev("deposits", json!({ "amount": 1 })),
        ev("deposits", json!({ "amount": 2 })),
    ])
    .unwrap();
    let sent = bank.send(&account, batch);
    let envelope = sent.event().clone();
    sent.await.unwrap();
    let members = envelope.batch_events().unwrap();
    for id in std::iter::once(envelope.id()).chain(members.iter().map(|m| m.id())) {
        let found = account.state().when(id).await.unwrap();
        assert_eq!(found.len(), 1, "the snapshot after {id}");
        assert_eq!(found[0].state, json!({ "balance": 38 }));
        assert_eq!(found[0].context.id, envelope.id());
    }
    assert_eq!(
        account.state().when(envelope.id()).await.unwrap()[0]
            .context
            .members
            .len(),
        2
    );
}

pub async fn temporal_retention_by_count_and_age(backend: &dyn Backend) {
    let config = HappenConfig::default().temporal(happen::TemporalConfig {
        enabled: true,
        history: 3,
        max_age: Duration::from_secs(2),
    });
    let h = backend.start(config).await;
    let n = h.node("tm-retained").unwrap();
    n.on("bump", |_e: Event, cx: Context| async move {
        cx.node()
            .state()
            .set(|s| json!(s.as_u64().unwrap_or(0) + 1))
            .await?;
        Ok::<_, HappenError>(())
    })
    .unwrap();
    for _ in 0..5 {
        n.send(&n, ev("bump", json!(null))).await.unwrap();
    }
    let kept: Vec<Value> = n
        .state()
        .history()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.state)
        .collect();
    assert_eq!(
        kept,
        vec![json!(3), json!(4), json!(5)],
        "only the newest 3"
    );
    tokio::time::sleep(Duration::from_millis(2600)).await;
    assert!(
        n.state().history().await.unwrap().is_empty(),
        "older than max_age"
    );
    assert_eq!(
        n.state().get().await.unwrap(),
        json!(5),
        "retention prunes history, not state"
    );
}

/// `Happen::state_of` reads and writes a node's state through the store,
/// atomically, without creating the node (its events still all go to the
/// real node, in this process or another).
pub async fn state_of_reads_and_writes_without_becoming_the_node(backend: &dyn Backend) {
    let h = start(backend).await;
    let ledger = h.node("so-ledger").unwrap();
    ledger
        .on("balance", |_e: Event, cx: Context| async move {
            cx.node().state().get().await
        })
        .unwrap();
    h.flush().await.unwrap();
    let outside = h.state_of("so-ledger").unwrap();
    assert_eq!(outside.node(), "so-ledger");
    outside.set(|_| json!({ "balance": 5 })).await.unwrap();
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let state = if i % 2 == 0 {
                h.state_of("so-ledger").unwrap()
            } else {
                ledger.state()
            };
            tokio::spawn(async move {
                state
                    .set(|s| json!({ "balance": s["balance"].as_i64().unwrap_or(0) + 1 }))
                    .await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let asker = h.node("so-asker").unwrap();
    assert_eq!(
        asker
            .send(&ledger, ev("balance", json!(null)))
            .await
            .unwrap(),
        json!({ "balance": 25 })
    );
    // A node that does not exist here has state too, and stays absent.
    h.state_of("so-elsewhere")
        .unwrap()
        .set(|_| json!(1))
        .await
        .unwrap();
    assert_eq!(
        asker.view("so-elsewhere").get().await.unwrap(),
        Some(json!(1))
    );
    let err = asker
        .send("so-elsewhere", ev("balance", json!(null)))
        .await
        .unwrap_err();
    assert!(matches!(err, HappenError::UnknownNode { .. }), "{err:?}");
    assert!(matches!(
        h.state_of("bad id"),
        Err(HappenError::InvalidName(_))
    ));
}

pub async fn snapshots_are_taken_for_selected_events_only(backend: &dyn Backend) {
    use happen::Snapshots;
    use happen::pattern::Pattern;

    let config = HappenConfig::default()
        .snapshots(Snapshots::matching("order.*"))
        .for_nodes("ss-quiet-*", NodeConfig::new().snapshots(Snapshots::Off));
    let h = backend.start(config).await;
    let client = h.node("ss-client").unwrap();
    let orders = h.node("ss-orders").unwrap();
    let quiet = h.node("ss-quiet-1").unwrap();
    let large = h
        .node_with(
            "ss-large",
            NodeConfig::new().snapshots(Snapshots::when(|e: &Event| {
                e.payload()["amount"].as_u64().unwrap_or(0) >= 100
            })),
        )
        .unwrap();
    for node in [&orders, &quiet, &large] {
        node.on(Pattern::any(), |e: Event, cx: Context| async move {
            cx.node().state().set(|_| e.payload().clone()).await
        })
        .unwrap();
    }
    h.flush().await.unwrap();

    for node in [&orders, &quiet, &large] {
        for (event_type, amount) in [
            ("order.placed", 50),
            ("audit.read", 500),
            ("order.paid", 150),
        ] {
            client
                .send(node, ev(event_type, json!({ "amount": amount })))
                .await
                .unwrap();
        }
    }
    let types = |history: Vec<happen::Snapshot>| {
        history
            .into_iter()
            .map(|s| s.context.event_type)
            .collect::<Vec<_>>()
    };
    // The system's selection: order events only.
    assert_eq!(
        types(orders.state().history().await.unwrap()),
        ["order.placed", "order.paid"]
    );
    // A pattern layer turned history off; the state still changes.
    assert!(quiet.state().history().await.unwrap().is_empty());
    assert_eq!(quiet.state().get().await.unwrap(), json!({ "amount": 150 }));
    // The node's own predicate wins over the system's pattern.
    assert_eq!(
        types(large.state().history().await.unwrap()),
        ["audit.read", "order.paid"]
    );
}

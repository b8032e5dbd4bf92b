//! The causal web recorded across processes: two runtimes on two
//! connections record into one JetStream stream, and a third, which runs no
//! node, reads a whole transaction back from it, and watches records live.

use std::time::Duration;

use happen::nats::NatsConfig;
use happen::prelude::*;
use happen::trace::{TraceRetention, Transaction};
use happen_test::NatsServer;
use tokio::sync::mpsc;

mod support;
use support::*;

fn recording(server: &NatsServer) -> NatsConfig {
    NatsConfig::new(server.url()).record(TraceRetention::default())
}

/// Reads the transaction until it has `events` events each handled where
/// expected (other processes' records arrive through the server).
async fn read_until(reader: &Happen, id: &str, done: impl Fn(&Transaction) -> bool) -> Transaction {
    let recorder = reader.recorder().expect("a recording runtime");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let tx = recorder.transaction(id).await.unwrap();
        if done(&tx) {
            return tx;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the transaction was not recorded whole within 10 s:\n{tx}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_across_processes_is_read_back_whole() {
    let server = NatsServer::start().unwrap();
    let front = Happen::connect(recording(&server)).await.unwrap();
    let back = Happen::connect(recording(&server)).await.unwrap();
    let reader = Happen::connect(recording(&server)).await.unwrap();
    let mut live = reader.recorder().unwrap().watch();
    reader.recorder().unwrap().watching().await;

    let (tx, mut shipped) = mpsc::unbounded_channel();
    back.node("bank")
        .unwrap()
        .on("charge", |_e: Event, _cx: Context| async { json!("paid") })
        .unwrap();
    back.node("warehouse")
        .unwrap()
        .on("ship", |_e: Event, cx: Context| async move {
            cx.node().broadcast(Event::new("shipped", json!(null)))?;
            Ok::<_, HappenError>(())
        })
        .unwrap();
    let shop = front.node("shop").unwrap();
    shop.on("order", |_e: Event, cx: Context| async move {
        let paid = cx
            .node()
            .send("bank", Event::new("charge", json!(5)))
            .response()
            .await?;
        cx.node()
            .tell("warehouse", Event::new("ship", json!(null)))?;
        Ok::<_, HappenError>(paid)
    })
    .unwrap();
    front
        .node("notifier")
        .unwrap()
        .on("shipped", move |e: Event, _cx: Context| {
            let tx = tx.clone();
            async move { tx.send(e).unwrap() }
        })
        .unwrap();
    back.flush().await.unwrap();
    front.flush().await.unwrap();

    let sent = front
        .node("client")
        .unwrap()
        .send(&shop, Event::new("order", json!({})));
    let order = sent.id().to_owned();
    assert_eq!(sent.response().await.unwrap(), json!("paid"));
    let heard = within("the shipped broadcast", 10, shipped.recv())
        .await
        .unwrap();
    front.shutdown().await;
    back.shutdown().await;

    // Every flow of the transaction has ended and been recorded, by two
    // processes; the reader ran none of it.
    let handled = |tx: &Transaction, t: &str, node: &str| {
        tx.events()
            .iter()
            .any(|e| e.event_type == t && e.flows.iter().any(|f| f.node == node))
    };
    let tx = read_until(&reader, &order, |tx| {
        handled(tx, "order", "shop")
            && handled(tx, "charge", "bank")
            && handled(tx, "ship", "warehouse")
            && handled(tx, "shipped", "notifier")
    })
    .await;
    let recorder = reader.recorder().unwrap();
    let why: Vec<String> = recorder
        .why(heard.id())
        .await
        .unwrap()
        .into_iter()
        .map(|e| format!("{} by {}", e.event_type, e.causal.sender))
        .collect();
    assert_eq!(
        why,
        ["shipped by warehouse", "ship by shop", "order by client"]
    );
    let tree = tx.to_string();
    assert!(tree.contains("charge from shop → bank"), "{tree}");
    assert!(recorder.effects(&order).await.unwrap().len() >= 3);

    // The reader saw the records as they were made, from both processes.
    let mut nodes = std::collections::BTreeSet::new();
    while let Ok(Ok(record)) = tokio::time::timeout(Duration::from_millis(500), live.recv()).await {
        if let happen::trace::What::Finished { node, .. } = record.what {
            nodes.insert(node);
        }
    }
    assert!(
        nodes.contains("bank") && nodes.contains("shop"),
        "{nodes:?}"
    );
    assert_eq!(recorder.dropped(), 0);
}

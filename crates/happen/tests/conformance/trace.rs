//! The recorded causal web: a recorder installed in the runtime answers
//! what a transaction looked like, why an event happened, what it caused,
//! and which flows were slow or failed.

use std::time::Duration;

use happen::prelude::*;
use happen::trace::Recorder;
use tokio::sync::mpsc;

use super::{Backend, ev};

fn types<'a>(events: impl IntoIterator<Item = &'a happen::trace::Traced>) -> Vec<&'a str> {
    events.into_iter().map(|e| e.event_type.as_str()).collect()
}

pub async fn the_recorder_answers_why_and_effects(backend: &dyn Backend) {
    assert!(
        backend
            .start(HappenConfig::default())
            .await
            .recorder()
            .is_none()
    );
    let recorder = Recorder::in_memory(10_000);
    let h = backend
        .start(HappenConfig::default().recorder(recorder.clone()))
        .await;
    let shop = h.node("tr-shop").unwrap();
    let bank = h.node("tr-bank").unwrap();
    let warehouse = h.node("tr-warehouse").unwrap();
    let notifier = h.node("tr-notifier").unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    bank.on("charge", |_e: Event, _cx: Context| async { json!("paid") })
        .unwrap();
    shop.on("order", |_e: Event, cx: Context| async move {
        let paid = cx
            .node()
            .send("tr-bank", ev("charge", json!(10)))
            .response()
            .await?;
        cx.node().tell("tr-warehouse", ev("ship", json!(null)))?;
        Ok::<_, HappenError>(paid)
    })
    .unwrap();
    warehouse
        .on("ship", |_e: Event, cx: Context| async move {
            cx.node().broadcast(ev("shipped", json!(null)))?;
            Ok::<_, HappenError>(())
        })
        .unwrap();
    notifier
        .on("shipped", move |e: Event, _cx: Context| {
            let tx = tx.clone();
            async move { tx.send(e).unwrap() }
        })
        .unwrap();

    let client = h.node("tr-client").unwrap();
    let sent = client.send(&shop, ev("order", json!({})));
    let order = sent.id().to_owned();
    assert_eq!(sent.response().await.unwrap(), json!("paid"));
    let shipped = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("nothing shipped within 10 s")
        .unwrap();
    // Every flow has ended (and been recorded) once the runtime is down.
    h.shutdown().await;

    let tx = recorder.transaction(&order).await.unwrap();
    assert_eq!(tx.correlation_id(), order);
    assert_eq!(types(tx.roots()), ["order"]);
    // Why did the notifier hear "shipped"? The warehouse shipped because the
    // shop took the order.
    let why = recorder.why(shipped.id()).await.unwrap();
    assert_eq!(types(&why), ["shipped", "ship", "order"]);
    assert_eq!(why[1].causal.sender, "tr-shop");
    // What did the order cause? The charge (and the bank's answer), the
    // shipment, the broadcast, in causal order.
    let effects = recorder.effects(&order).await.unwrap();
    let effects: Vec<&str> = types(&effects)
        .into_iter()
        .filter(|t| *t != "happen.response")
        .collect();
    assert_eq!(effects, ["charge", "ship", "shipped"]);

    let charge = tx
        .events()
        .iter()
        .find(|e| e.event_type == "charge")
        .unwrap();
    assert_eq!(charge.delivered_to, ["tr-bank"]);
    assert_eq!(charge.flows.len(), 1);
    assert_eq!(charge.flows[0].node, "tr-bank");
    assert!(charge.flows[0].answered && charge.flows[0].error.is_none());
    let heard = tx.event(shipped.id()).unwrap();
    assert!(heard.delivered_to.contains(&"tr-notifier".to_owned()));
    assert!(tx.failed().is_empty());

    let tree = tx.to_string();
    assert!(tree.contains("order from tr-client"), "{tree}");
    assert!(tree.contains("charge from tr-shop → tr-bank"), "{tree}");
    assert!(tree.contains("shipped from tr-warehouse"), "{tree}");
    // The tree nests: "shipped" is drawn below "ship", below "order".
    let line = |t: &str| tree.lines().position(|l| l.contains(t)).unwrap();
    assert!(line("order from") < line("ship from") && line("ship from") < line("shipped from"));
}

pub async fn the_recorder_names_slow_and_failed_flows(backend: &dyn Backend) {
    let recorder = Recorder::in_memory(10_000);
    let h = backend
        .start(HappenConfig::default().recorder(recorder.clone()))
        .await;
    let worker = h.node("sf-worker").unwrap();
    worker
        .on("job", |_e: Event, cx: Context| async move {
            let slow = cx
                .node()
                .send("sf-worker", ev("slow", json!(null)))
                .response();
            let fail = cx
                .node()
                .send("sf-worker", ev("fail", json!(null)))
                .response();
            let (slow, fail) = futures::join!(slow, fail);
            json!({ "slow": slow.is_ok(), "fail": fail.is_ok() })
        })
        .unwrap();
    worker
        .on("slow", |_e: Event, _cx: Context| async {
            tokio::time::sleep(Duration::from_millis(60)).await;
        })
        .unwrap();
    worker
        .on("fail", |_e: Event, _cx: Context| async {
            Err::<(), _>(std::io::Error::other("card declined"))
        })
        .unwrap();
    let sent = h
        .node("sf-client")
        .unwrap()
        .send(&worker, ev("job", json!(null)));
    let job = sent.id().to_owned();
    assert_eq!(
        sent.response().await.unwrap(),
        json!({ "slow": true, "fail": false })
    );
    h.shutdown().await;

    let tx = recorder.transaction(&job).await.unwrap();
    // The job waited for the slow flow, so it ran longest; then the slow one.
    let slowest = tx.slowest(2);
    assert_eq!(
        slowest
            .iter()
            .map(|(e, _)| e.event_type.as_str())
            .collect::<Vec<_>>(),
        ["job", "slow"]
    );
    assert!(slowest[1].1.elapsed >= Duration::from_millis(60));
    let failed = tx.failed();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].0.event_type, "fail");
    assert!(
        failed[0]
            .1
            .error
            .as_deref()
            .unwrap()
            .contains("card declined")
    );
    assert!(tx.to_string().contains("FAILED"));
}

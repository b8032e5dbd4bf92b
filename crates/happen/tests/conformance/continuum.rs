//! The Event Continuum: a flow is a chain of steps that share a context, loop, branch and
//! finish with any return form.

use happen::prelude::*;
use tokio::sync::mpsc;

use super::{Backend, ev, start};

#[derive(Clone, Debug, PartialEq)]
struct Validation {
    items: usize,
}

async fn validate(event: Event, cx: Context) -> Flow {
    let items = event.payload()["items"].as_array().map_or(0, Vec::len);
    if items == 0 {
        return Flow::done(json!({ "success": false, "reason": "validation-failed" }));
    }
    cx.insert(Validation { items });
    cx.set("trail", json!(["validate"]));
    Flow::next(reserve)
}

async fn reserve(_event: Event, cx: Context) -> Flow {
    let v: Validation = cx.typed().expect("validation from step 1");
    cx.update("trail", |t| {
        t.as_array_mut().unwrap().push(json!("reserve"))
    });
    cx.set("reserved", v.items);
    Flow::next(finish)
}

async fn finish(_event: Event, cx: Context) -> happen::Result<Value> {
    cx.update("trail", |t| t.as_array_mut().unwrap().push(json!("finish")));
    Ok(json!({ "success": true, "reserved": cx.get("reserved"), "trail": cx.get("trail") }))
}

pub async fn steps_chain_and_share_context(backend: &dyn Backend) {
    let h = start(backend).await;
    let n = h.node("chain").unwrap();
    n.on("create-order", validate).unwrap();
    let ok = n
        .send(&n, ev("create-order", json!({ "items": [1, 2] })))
        .await
        .unwrap();
    assert_eq!(
        ok,
        json!({ "success": true, "reserved": 2, "trail": ["validate", "reserve", "finish"] })
    );
    let rejected = n
        .send(&n, ev("create-order", json!({ "items": [] })))
        .await
        .unwrap();
    assert_eq!(
        rejected,
        json!({ "success": false, "reason": "validation-failed" })
    );
}

pub async fn step_can_loop_with_again(backend: &dyn Backend) {
    let h = start(backend).await;
    let n = h.node("looper").unwrap();
    n.on("retry", |event: Event, cx: Context| async move {
        let attempts = cx.update("attempts", |v| {
            *v = json!(v.as_u64().unwrap_or(0) + 1);
            v.as_u64().unwrap()
        });
        if attempts < event.payload()["succeed_on"].as_u64().unwrap() {
            Flow::again()
        } else {
            Flow::done(json!({ "attempts": attempts }))
        }
    })
    .unwrap();
    let out = n
        .send(&n, ev("retry", json!({ "succeed_on": 200 })))
        .await
        .unwrap();
    assert_eq!(out, json!({ "attempts": 200 }));
}

#[happen::step]
async fn process_items(event: Event, cx: Context) -> Flow {
    let index = cx.get_as::<usize>("index").unwrap_or(0);
    let items = event.payload()["items"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if index < items.len() {
        cx.update("sum", |s| {
            *s = json!(s.as_i64().unwrap_or(0) + items[index].as_i64().unwrap())
        });
        cx.set("index", index + 1);
        return Flow::next(process_items);
    }
    Flow::next(summarize)
}

async fn summarize(_event: Event, cx: Context) -> Value {
    json!({ "count": cx.get("index"), "sum": cx.get("sum") })
}

pub async fn step_can_name_itself_with_step_macro(backend: &dyn Backend) {
    let h = start(backend).await;
    let n = h.node("macro-loop").unwrap();
    n.on("sum", process_items).unwrap();
    let out = n
        .send(&n, ev("sum", json!({ "items": [1, 2, 3, 4] })))
        .await
        .unwrap();
    assert_eq!(out, json!({ "count": 4, "sum": 10 }));
}

pub async fn steps_branch_on_conditions(backend: &dyn Backend) {
    async fn rush(_e: Event, _cx: Context) -> Value {
        json!("rush")
    }
    async fn standard(_e: Event, _cx: Context) -> Value {
        json!("standard")
    }
    let h = start(backend).await;
    let n = h.node("brancher").unwrap();
    n.on("ship", |event: Event, _cx: Context| async move {
        if event.payload()["rush"] == json!(true) {
            Flow::next(rush)
        } else {
            Flow::next(standard)
        }
    })
    .unwrap();
    assert_eq!(
        n.send(&n, ev("ship", json!({ "rush": true })))
            .await
            .unwrap(),
        json!("rush")
    );
    assert_eq!(
        n.send(&n, ev("ship", json!({ "rush": false })))
            .await
            .unwrap(),
        json!("standard")
    );
}

pub async fn every_return_form_completes_the_flow(backend: &dyn Backend) {
    #[derive(serde::Serialize)]
    struct Receipt {
        id: u32,
    }
    let h = start(backend).await;
    let n = h.node("forms").unwrap();
    n.on("value", |_e: Event, _cx: Context| async {
        json!({ "v": 1 })
    })
    .unwrap();
    n.on("unit", |_e: Event, _cx: Context| async {}).unwrap();
    n.on("ok", |_e: Event, _cx: Context| async {
        Ok::<_, std::io::Error>(json!("fine"))
    })
    .unwrap();
    n.on("flow-done-with", |_e: Event, _cx: Context| async {
        Flow::done_with(&Receipt { id: 7 })
    })
    .unwrap();
    n.on("nested-ok-flow", |_e: Event, _cx: Context| async {
        Ok::<_, HappenError>(Flow::next(|_e: Event, _cx: Context| async {
            json!("second")
        }))
    })
    .unwrap();
    assert_eq!(
        n.send(&n, ev("value", json!(null))).await.unwrap(),
        json!({ "v": 1 })
    );
    assert_eq!(
        n.send(&n, ev("unit", json!(null))).await.unwrap(),
        Value::Null
    );
    assert_eq!(
        n.send(&n, ev("ok", json!(null))).await.unwrap(),
        json!("fine")
    );
    assert_eq!(
        n.send(&n, ev("flow-done-with", json!(null))).await.unwrap(),
        json!({ "id": 7 })
    );
    assert_eq!(
        n.send(&n, ev("nested-ok-flow", json!(null))).await.unwrap(),
        json!("second")
    );
}

pub async fn context_describes_the_flow(backend: &dyn Backend) {
    let h = start(backend).await;
    let asker = h.node("ctx-asker").unwrap();
    let n = h.node("ctx-node").unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel::<Value>();
    n.on("describe", move |event: Event, cx: Context| {
        let tx = tx.clone();
        async move {
            let d = json!({
                "node": cx.node().id(),
                "sender": cx.sender(),
                "expects_response": cx.expects_response(),
                "same_event": cx.event().id() == event.id(),
                "causal_id": cx.causal().id == event.id(),
            });
            tx.send(d.clone()).unwrap();
            d
        }
    })
    .unwrap();
    asker.send(&n, ev("describe", json!(null))).await.unwrap();
    let by_send = rx.recv().await.unwrap();
    assert_eq!(
        by_send,
        json!({ "node": "ctx-node", "sender": "ctx-asker", "expects_response": true, "same_event": true, "causal_id": true })
    );
    asker.broadcast(ev("describe", json!(null))).unwrap();
    let by_broadcast = rx.recv().await.unwrap();
    assert_eq!(by_broadcast["expects_response"], false);
    assert_eq!(by_broadcast["sender"], "ctx-asker");
}

/// A node-local value given with `with_local` reaches every step of every
/// flow of the handlers registered through that handle, as `cx.local()`.
pub async fn node_local_value_reaches_every_step(backend: &dyn Backend) {
    use std::sync::atomic::{AtomicU64, Ordering};
    #[derive(Default)]
    struct Inventory {
        reserved: AtomicU64,
    }
    type Local = std::sync::Arc<Inventory>;

    async fn reserve(e: Event, cx: Context<Local>) -> Flow<Local> {
        let n = e.payload()["n"].as_u64().unwrap_or(0);
        cx.local().reserved.fetch_add(n, Ordering::SeqCst);
        Flow::next(report)
    }
    async fn report(_e: Event, cx: Context<Local>) -> Value {
        json!(cx.local().reserved.load(Ordering::SeqCst))
    }

    let h = start(backend).await;
    let client = h.node("local-client").unwrap();
    let inventory = h
        .node("local-inventory")
        .unwrap()
        .with_local(Local::default());
    inventory.on("reserve", reserve).unwrap();
    h.flush().await.unwrap();
    for (n, total) in [(2, 2), (3, 5)] {
        let got = client
            .send(&inventory, ev("reserve", json!({ "n": n })))
            .await
            .unwrap();
        assert_eq!(got, json!(total));
    }
    assert_eq!(inventory.local().reserved.load(Ordering::SeqCst), 5);
}

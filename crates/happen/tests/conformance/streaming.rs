//! Streaming: a flow's items arrive in order before its final value, with back-pressure and
//! cancellation, from any step and by broadcast.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use happen::prelude::*;
use tokio::sync::mpsc;

use super::{Backend, ev, recorder, recv, start};

async fn collect_stream(sent: happen::Sent) -> Vec<Result<happen::StreamItem, HappenError>> {
    use futures::StreamExt;
    tokio::time::timeout(Duration::from_secs(20), sent.stream().collect::<Vec<_>>())
        .await
        .expect("the stream ends")
}

pub async fn stream_delivers_items_then_final_in_order(backend: &dyn Backend) {
    use happen::StreamItem::{Done, Item};
    let h = start(backend).await;
    let client = h.node("sm-client").unwrap();
    let processor = h.node("sm-processor").unwrap();
    processor
        .on(
            "process-large-dataset",
            |event: Event, cx: Context| async move {
                let data: Vec<i64> = event.payload()["dataset"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(Value::as_i64)
                    .collect();
                for (i, chunk) in data.chunks(10).enumerate() {
                    cx.emit(json!({ "chunk": i, "sum": chunk.iter().sum::<i64>() }))
                        .await?;
                }
                Ok::<_, HappenError>(json!({ "status": "complete" }))
            },
        )
        .unwrap();
    let dataset: Vec<i64> = (0..95).collect();
    let got = collect_stream(client.send(
        &processor,
        ev("process-large-dataset", json!({ "dataset": dataset })),
    ))
    .await;
    assert_eq!(got.len(), 11);
    for (i, item) in got[..10].iter().enumerate() {
        let expected: i64 = (i as i64 * 10..(i as i64 * 10 + 10).min(95)).sum();
        assert_eq!(
            item.as_ref().unwrap(),
            &Item(json!({ "chunk": i, "sum": expected }))
        );
    }
    assert_eq!(
        got[10].as_ref().unwrap(),
        &Done(json!({ "status": "complete" }))
    );
    // A handler that never emits is a one-element stream.
    processor
        .on("plain", |_e: Event, _cx: Context| async { json!(1) })
        .unwrap();
    let plain = collect_stream(client.send(&processor, ev("plain", json!(null)))).await;
    assert_eq!(plain.len(), 1);
    assert_eq!(plain[0].as_ref().unwrap(), &Done(json!(1)));
}

pub async fn stream_error_after_items_arrives_in_order(backend: &dyn Backend) {
    use happen::StreamItem::Item;
    let h = start(backend).await;
    let client = h.node("se-client").unwrap();
    let producer = h.node("se-producer").unwrap();
    producer
        .on("fragile", |_e: Event, cx: Context| async move {
            cx.emit(json!(1)).await?;
            cx.emit(json!(2)).await?;
            Err::<Value, HappenError>(HappenError::Config("disk failed".into()))
        })
        .unwrap();
    let got = collect_stream(client.send(&producer, ev("fragile", json!(null)))).await;
    assert_eq!(got.len(), 3);
    assert_eq!(got[0].as_ref().unwrap(), &Item(json!(1)));
    assert_eq!(got[1].as_ref().unwrap(), &Item(json!(2)));
    assert!(
        matches!(&got[2], Err(HappenError::HandlerFailed { cause, .. }) if cause.contains("disk failed")),
        "{:?}",
        got[2]
    );
}

pub async fn slow_consumer_bounds_the_producer(backend: &dyn Backend) {
    use futures::StreamExt;
    let h = start(backend).await;
    let client = h.node("bp-client").unwrap();
    let producer = h.node("bp-producer").unwrap();
    let emitted = Arc::new(AtomicUsize::new(0));
    let e = emitted.clone();
    producer
        .on("firehose", move |_e: Event, cx: Context| {
            let e = e.clone();
            async move {
                for i in 0..200 {
                    cx.emit(json!(i)).await?;
                    e.fetch_add(1, Ordering::SeqCst);
                }
                Ok::<_, HappenError>(json!("done"))
            }
        })
        .unwrap();
    let mut stream = client.send(&producer, ev("firehose", json!(null))).stream();
    let mut consumed = 0;
    for _ in 0..5 {
        stream.next().await.unwrap().unwrap();
        consumed += 1;
        tokio::time::sleep(Duration::from_millis(150)).await;
        let ahead = emitted.load(Ordering::SeqCst).saturating_sub(consumed);
        assert!(
            ahead <= happen::stream::STREAM_WINDOW + 1,
            "the producer ran {ahead} items ahead of a slow consumer"
        );
    }
    // Draining the rest lets it finish.
    let rest: Vec<_> = stream.collect().await;
    assert_eq!(rest.len(), 200 - 5 + 1);
    assert_eq!(emitted.load(Ordering::SeqCst), 200);
}

/// What the producer's `emit` failed with, once it stops.
async fn producer_stops_cancelled(rx: &mut mpsc::UnboundedReceiver<HappenError>) {
    let why = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("the producer stops")
        .unwrap();
    assert_eq!(why, HappenError::Cancelled);
}

pub async fn dropping_the_stream_cancels_the_producer(backend: &dyn Backend) {
    use futures::StreamExt;
    let h = start(backend).await;
    let client = h.node("cn-client").unwrap();
    let producer = h.node("cn-producer").unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel::<HappenError>();
    producer
        .on("metrics", move |_e: Event, cx: Context| {
            let tx = tx.clone();
            async move {
                let mut i = 0u64;
                loop {
                    if let Err(e) = cx.emit(json!(i)).await {
                        tx.send(e.clone()).unwrap();
                        return Err(e);
                    }
                    i += 1;
                }
                #[allow(unreachable_code)]
                Ok::<Value, HappenError>(Value::Null)
            }
        })
        .unwrap();
    let mut stream = client.send(&producer, ev("metrics", json!(null))).stream();
    for expected in 0..3 {
        assert_eq!(
            stream.next().await.unwrap().unwrap(),
            happen::StreamItem::Item(json!(expected))
        );
    }
    drop(stream);
    producer_stops_cancelled(&mut rx).await;

    // A stream read past its requester's timeout runs on (the timeout
    // bounds the wait for the first item) and stops its producer once
    // dropped.
    let (tx, mut rx) = mpsc::unbounded_channel::<HappenError>();
    producer
        .on("slow-metrics", move |_e: Event, cx: Context| {
            let tx = tx.clone();
            async move {
                let emit = |value: Value| {
                    let (cx, tx) = (cx.clone(), tx.clone());
                    async move {
                        cx.emit(value)
                            .await
                            .inspect_err(|e| tx.send(e.clone()).unwrap())
                    }
                };
                for i in 0..3 {
                    emit(json!(i)).await?;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
                loop {
                    emit(json!("late")).await?;
                }
                #[allow(unreachable_code)]
                Ok::<Value, HappenError>(Value::Null)
            }
        })
        .unwrap();
    let mut stream = client
        .send(&producer, ev("slow-metrics", json!(null)))
        .timeout(Duration::from_millis(150))
        .stream();
    for expected in 0..3 {
        assert_eq!(
            stream.next().await.unwrap().unwrap(),
            happen::StreamItem::Item(json!(expected))
        );
    }
    // The timeout applies until the first item only: the late one still
    // arrives.
    let late = stream.next().await.unwrap();
    assert_eq!(late, Ok(happen::StreamItem::Item(json!("late"))));
    drop(stream);
    producer_stops_cancelled(&mut rx).await;
}

/// A request whose handle is dropped unread is fire-and-forget: a flow
/// that streams runs to its end, well past the stream's window, and its
/// items, which nobody asked for, go nowhere (`emit` succeeds). Only a
/// consumer that took the stream cancels the producer by dropping it.
pub async fn a_dropped_request_lets_a_streaming_flow_run_to_its_end(backend: &dyn Backend) {
    let h = start(backend).await;
    let client = h.node("ff-client").unwrap();
    let importer = h.node("ff-importer").unwrap();
    let items = happen::stream::STREAM_WINDOW * 3;
    let (tx, mut rx) = mpsc::unbounded_channel::<Result<usize, HappenError>>();
    importer
        .on("import", move |_e: Event, cx: Context| {
            let tx = tx.clone();
            async move {
                // Slow to start: a requester's short timeout passes first.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let mut emitted = 0;
                for i in 0..items {
                    if let Err(error) = cx.emit(json!({ "progress": i })).await {
                        tx.send(Err(error)).unwrap();
                        return;
                    }
                    emitted += 1;
                }
                tx.send(Ok(emitted)).unwrap();
            }
        })
        .unwrap();
    drop(client.send(&importer, ev("import", json!(null))));
    let ran = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("the flow ends")
        .unwrap();
    assert_eq!(ran, Ok(items));
    // A flow whose requester stopped waiting (its timeout passed before the
    // first item) runs to its end too.
    let timed_out = client
        .send(&importer, ev("import", json!(null)))
        .timeout(Duration::from_millis(10))
        .await;
    assert!(
        matches!(timed_out, Err(HappenError::Timeout { .. })),
        "{timed_out:?}"
    );
    let ran = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("the flow ends")
        .unwrap();
    assert_eq!(ran, Ok(items));
}

/// When several handlers of a node match a request, the requester hears
/// the first registered; what the others emit goes nowhere (it is not
/// broadcast, as the items of a flow nobody asked for are).
pub async fn items_of_a_flow_the_requester_does_not_hear_go_nowhere(backend: &dyn Backend) {
    use futures::StreamExt;
    let h = start(backend).await;
    let client = h.node("ih-client").unwrap();
    let reporter = h.node("ih-reporter").unwrap();
    reporter
        .on("report", |_e: Event, _cx: Context| async { json!("first") })
        .unwrap();
    let (ran_tx, mut ran) = mpsc::unbounded_channel();
    reporter
        .on("report", move |e: Event, cx: Context| {
            let ran_tx = ran_tx.clone();
            async move {
                let how = e.payload().clone();
                let emitted = cx.emit(json!({ "secret": "partial", "how": how })).await;
                ran_tx.send((cx.expects_response(), emitted)).unwrap();
                json!("second")
            }
        })
        .unwrap();
    let (heard_tx, mut heard) = mpsc::unbounded_channel();
    h.node("ih-bystander")
        .unwrap()
        .on("report.item", move |e: Event, _cx: Context| {
            let heard_tx = heard_tx.clone();
            async move { heard_tx.send(e.payload().clone()).unwrap() }
        })
        .unwrap();
    let got: Vec<_> = client
        .send(&reporter, ev("report", json!("sent")))
        .stream()
        .collect()
        .await;
    assert_eq!(got, vec![Ok(happen::StreamItem::Done(json!("first")))]);
    let second = tokio::time::timeout(Duration::from_secs(10), ran.recv())
        .await
        .expect("the second flow runs")
        .unwrap();
    assert_eq!(second, (false, Ok(())));
    let leaked = tokio::time::timeout(Duration::from_millis(300), heard.recv()).await;
    assert!(leaked.is_err(), "the item was broadcast: {leaked:?}");

    // Started by a broadcast, the same flow's items are broadcast.
    client.broadcast(ev("report", json!("broadcast"))).unwrap();
    let item = tokio::time::timeout(Duration::from_secs(10), heard.recv())
        .await
        .expect("the item is broadcast")
        .unwrap();
    assert_eq!(item, json!({ "secret": "partial", "how": "broadcast" }));
}

pub async fn continuation_step_can_stream(backend: &dyn Backend) {
    use happen::StreamItem::{Done, Item};
    async fn report(_e: Event, cx: Context) -> happen::Result<Value> {
        for p in [50, 100] {
            cx.emit(json!({ "progress": p })).await?;
        }
        Ok(json!({ "records": cx.get("records") }))
    }
    let h = start(backend).await;
    let client = h.node("cs-client").unwrap();
    let importer = h.node("cs-importer").unwrap();
    importer
        .on("import-file", |_e: Event, cx: Context| async move {
            cx.set("records", 42);
            Flow::next(report)
        })
        .unwrap();
    let got: Vec<_> = collect_stream(client.send(&importer, ev("import-file", json!(null))))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        got,
        vec![
            Item(json!({ "progress": 50 })),
            Item(json!({ "progress": 100 })),
            Done(json!({ "records": 42 }))
        ]
    );
}

pub async fn response_of_a_streaming_flow_is_its_final_value(backend: &dyn Backend) {
    let h = start(backend).await;
    let client = h.node("rs-client").unwrap();
    let producer = h.node("rs-producer").unwrap();
    producer
        .on("count", |_e: Event, cx: Context| async move {
            for i in 0..40 {
                cx.emit(json!(i)).await?;
            }
            Ok::<_, HappenError>(json!("counted"))
        })
        .unwrap();
    assert_eq!(
        client
            .send(&producer, ev("count", json!(null)))
            .await
            .unwrap(),
        json!("counted")
    );
}

pub async fn broadcast_streaming_handler_broadcasts_its_items(backend: &dyn Backend) {
    let h = start(backend).await;
    let monitor = h.node("bs-monitor").unwrap();
    let dashboard = h.node("bs-dashboard").unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    dashboard
        .on("system-metrics.item", recorder(tx, json!(null)))
        .unwrap();
    monitor
        .on("system-metrics", |_e: Event, cx: Context| async move {
            for load in [0.5, 0.7, 0.6] {
                cx.emit(json!({ "load": load })).await?;
            }
            Ok::<_, HappenError>(())
        })
        .unwrap();
    h.flush().await.unwrap();
    let start = ev("system-metrics", json!(null));
    monitor.broadcast(start).unwrap();
    let mut items = Vec::new();
    for _ in 0..3 {
        items.push(recv(&mut rx).await);
    }
    items.sort_by_key(|e| e.stream().unwrap().seq);
    let origin = items[0]
        .causal()
        .causation_id
        .clone()
        .expect("caused by the broadcast");
    for (seq, (item, load)) in items.iter().zip([0.5, 0.7, 0.6]).enumerate() {
        assert_eq!(item.payload(), &json!({ "load": load }));
        assert_eq!(item.causal().sender, "bs-monitor");
        assert_eq!(item.causal().causation_id.as_ref(), Some(&origin));
        let stream = item.stream().expect("a stream item");
        assert_eq!((&stream.of, stream.seq), (&origin, seq as u64));
        let wire = serde_json::to_value(item).unwrap();
        assert_eq!(
            wire["context"]["stream"],
            json!({ "of": origin.as_str(), "seq": seq }),
            "the documented wire shape"
        );
    }
}

/// A flow started by a broadcast streams to its subscribers; one of them
/// with a full queue misses the item it refused, and the producer's
/// `emit` goes on (`cx.emit(v).await?` does not end the stream for the
/// others), as over NATS, where a refusal is the receiver's own.
pub async fn a_full_subscriber_does_not_end_a_broadcast_stream(backend: &dyn Backend) {
    let h = start(backend).await;
    let monitor = h.node("fs-monitor").unwrap();
    let full = h
        .node_with(
            "fs-full",
            NodeConfig::new().max_concurrent(1).queue_limit(0),
        )
        .unwrap();
    let release = Arc::new(tokio::sync::Notify::new());
    let held = release.clone();
    full.on("metrics.item", move |_e: Event, _cx: Context| {
        let held = held.clone();
        async move { held.notified().await }
    })
    .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    h.node("fs-log")
        .unwrap()
        .on("metrics.item", recorder(tx, json!(null)))
        .unwrap();
    let (done_tx, mut done) = mpsc::unbounded_channel();
    monitor
        .on("metrics", move |_e: Event, cx: Context| {
            let done_tx = done_tx.clone();
            async move {
                let mut outcome = Ok(());
                for i in 0..5 {
                    if let Err(error) = cx.emit(json!(i)).await {
                        outcome = Err(error);
                        break;
                    }
                }
                let _ = done_tx.send(outcome);
            }
        })
        .unwrap();
    h.flush().await.unwrap();
    monitor.broadcast(ev("metrics", json!(null))).unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(10), done.recv())
        .await
        .expect("the producer ends")
        .expect("it says how");
    assert_eq!(outcome, Ok(()));
    let mut logged = Vec::new();
    for _ in 0..5 {
        logged.push(recv(&mut rx).await.stream().unwrap().seq);
    }
    logged.sort_unstable();
    assert_eq!(logged, [0, 1, 2, 3, 4]);
    release.notify_one();
}

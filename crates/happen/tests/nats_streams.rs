//! Streamed responses over NATS whose consumer stops taking items: a
//! consumer whose process died must not hold the producer's flow (and its
//! slot) for good; a consumer that is only slow must get every item.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use happen::nats::NatsConfig;
use happen::prelude::*;
use happen::stream::{STREAM_WINDOW, StreamItem};
use happen_test::NatsServer;
use tokio::sync::mpsc;

mod support;
use support::*;

/// A producer of `count` items that counts the ones its `emit` took and
/// reports how its flow ended (`None`: it emitted them all).
fn producer(
    happen: &Happen,
    count: usize,
    config: NodeConfig,
) -> (
    Node,
    Arc<AtomicUsize>,
    mpsc::UnboundedReceiver<Option<HappenError>>,
) {
    let node = happen.node_with("ticker", config).unwrap();
    let emitted = Arc::new(AtomicUsize::new(0));
    let (ended_tx, ended) = mpsc::unbounded_channel();
    let counter = emitted.clone();
    node.on("ticks", move |_e: Event, cx: Context| {
        let (counter, ended_tx) = (counter.clone(), ended_tx.clone());
        async move {
            for i in 0..count {
                if let Err(error) = cx.emit(json!(i)).await {
                    let _ = ended_tx.send(Some(error.clone()));
                    return Err(error);
                }
                counter.fetch_add(1, Ordering::SeqCst);
            }
            let _ = ended_tx.send(None);
            Ok(json!("done"))
        }
    })
    .unwrap();
    (node, emitted, ended)
}

/// A child process killed when dropped (so that a failing test leaves
/// none behind).
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The consumer of `a_stream_whose_consumer_was_killed_frees_its_producer`,
/// run in a child process (this test binary, re-executed): asks for the
/// stream, takes two items, says so, and then takes nothing more.
/// Ignored unless that test starts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "started as a child process by a_stream_whose_consumer_was_killed_frees_its_producer"]
async fn stalled_consumer_process() {
    let url = std::env::var("HAPPEN_STREAM_CHILD").expect("started by the stream test");
    let happen = Happen::connect(NatsConfig::new(url)).await.unwrap();
    let reader = happen.node("reader").unwrap();
    let mut stream = reader
        .send("ticker", Event::new("ticks", json!(null)))
        .stream();
    for _ in 0..2 {
        stream.next().await.unwrap().unwrap();
    }
    println!("reading");
    std::future::pending::<()>().await;
}

/// The producer of `a_stream_whose_producer_was_killed_ends_as_broken`,
/// run in a child process: emits one item, says so, and then keeps its
/// flow open without emitting more. Ignored unless that test starts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "started as a child process by a_stream_whose_producer_was_killed_ends_as_broken"]
async fn stalled_producer_process() {
    let url = std::env::var("HAPPEN_STREAM_PRODUCER").expect("started by the stream test");
    let happen = Happen::connect(NatsConfig::new(url)).await.unwrap();
    let node = happen.node("exporter").unwrap();
    node.on("export", |_e: Event, cx: Context| async move {
        cx.emit(json!(0)).await?;
        std::future::pending::<()>().await;
        Ok::<_, HappenError>(json!("never"))
    })
    .unwrap();
    happen.flush().await.unwrap();
    println!("serving");
    std::future::pending::<()>().await;
}

/// A stream's producer process killed (SIGKILL: no end is sent) after its
/// first item: the reader, which hears nothing more, asks the producer's
/// credit subject once the stream has been quiet, and the server's "no
/// responders" (twice) ends the stream with `StreamBroken` within seconds.
/// Before, the reader waited for good (the request's timeout covers only
/// the first item).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_producer_was_killed_ends_as_broken() {
    let server = NatsServer::start().unwrap();
    let url = server.url();
    let mut child = Killed(
        tokio::task::spawn_blocking(move || {
            let test = "stalled_producer_process";
            start_child(test, "HAPPEN_STREAM_PRODUCER", &url, "serving")
        })
        .await
        .unwrap(),
    );
    let happen = connect(&server).await;
    let mut stream = happen
        .node("reader")
        .unwrap()
        .send("exporter", Event::new("export", json!(null)))
        .timeout(Duration::from_secs(5))
        .stream();
    let first = within("the first item", 10, stream.next()).await;
    assert_eq!(first.unwrap().unwrap(), StreamItem::Item(json!(0)));
    child.0.kill().unwrap(); // SIGKILL: no end is sent
    child.0.wait().unwrap();
    let killed_at = tokio::time::Instant::now();
    let end = within("the stream ends", 20, stream.next()).await;
    let after = killed_at.elapsed();
    println!(
        "faults: stream-producer-killed items=1 received=1 ended={:?} after-ms={}",
        end.as_ref().map(|e| e.as_ref().err()),
        after.as_millis()
    );
    assert!(
        matches!(&end, Some(Err(HappenError::StreamBroken { reason })) if reason.contains("process is gone")),
        "{end:?}"
    );
    assert!(stream.next().await.is_none());
    happen.shutdown().await;
}

/// A stream's consumer process killed (SIGKILL: it sends no cancel) while
/// the producer waits for credit: the producer's `emit` fails with
/// `Cancelled` within a few seconds, its node answers the next request,
/// and the runtime shuts down. Before the producer asked the consumer's
/// inbox, it waited for credit without end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_consumer_was_killed_frees_its_producer() {
    let server = NatsServer::start().unwrap();
    let happen = connect(&server).await;
    let items = 1_000;
    let (ticker, emitted, mut ended) = producer(&happen, items, NodeConfig::new());
    ticker
        .on(
            "ping",
            |_e: Event, _cx: Context| async move { json!("pong") },
        )
        .unwrap();
    happen.flush().await.unwrap();

    let url = server.url();
    let mut child = Killed(
        tokio::task::spawn_blocking(move || {
            let test = "stalled_consumer_process";
            start_child(test, "HAPPEN_STREAM_CHILD", &url, "reading")
        })
        .await
        .unwrap(),
    );
    // The producer runs a window ahead of the two items taken, then waits.
    within("the producer fills its window", 10, async {
        while emitted.load(Ordering::SeqCst) < STREAM_WINDOW {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    child.0.kill().unwrap(); // SIGKILL: no cancel is sent
    child.0.wait().unwrap();
    let killed_at = tokio::time::Instant::now();
    let why = within("the producer's flow ends", 15, ended.recv())
        .await
        .expect("the flow reports how it ended");
    let after = killed_at.elapsed();
    let emitted = emitted.load(Ordering::SeqCst);
    println!(
        "faults: stream-consumer-killed items={items} emitted={emitted} flow-ended={why:?} after-ms={}",
        after.as_millis()
    );
    assert_eq!(why, Some(HappenError::Cancelled));
    assert!(
        emitted <= STREAM_WINDOW + 2,
        "the producer ran past its window: {emitted}"
    );
    // The node is free for other work, and the runtime shuts down.
    let asker = happen.node("asker").unwrap();
    let pong = within(
        "the producer's node answers",
        10,
        asker
            .send(&ticker, Event::new("ping", json!(null)))
            .response(),
    )
    .await
    .unwrap();
    assert_eq!(pong, json!("pong"));
    assert!(happen.shutdown_within(Duration::from_secs(10)).await);
}

/// A consumer that takes nothing for longer than the producer waits
/// before asking about it (several times over) is slow, not gone: it gets
/// every item, in order, and the producer's flow ends with its value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_stream_consumer_is_not_taken_for_a_dead_one() {
    let server = NatsServer::start().unwrap();
    let producing = connect(&server).await;
    let consuming = connect(&server).await;
    let items = 3 * STREAM_WINDOW;
    let (_ticker, emitted, mut ended) = producer(&producing, items, NodeConfig::new());
    producing.flush().await.unwrap();
    slow_reader_gets_everything(&consuming, items, &emitted, &mut ended).await;
    producing.shutdown().await;
    consuming.shutdown().await;
}

/// The same with the slow reader in the producer's own runtime, asking a
/// durable node: its answer comes back through the server, and the
/// server, which does not echo a connection's own messages, has no
/// subscriber to show the probe to (its "no responders" once cancelled
/// such a stream after 2 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_in_the_producers_own_runtime_gets_every_item() {
    let server = NatsServer::start().unwrap();
    let happen = connect(&server).await;
    let items = 3 * STREAM_WINDOW;
    let durable = NodeConfig::new().delivery(happen::DeliveryConfig::at_least_once());
    let (_ticker, emitted, mut ended) = producer(&happen, items, durable);
    happen.flush().await.unwrap();
    slow_reader_gets_everything(&happen, items, &emitted, &mut ended).await;
    happen.shutdown().await;
}

/// Asks `ticker` for `items` items from a node of `consuming`, takes one,
/// takes nothing for 5 s (the producer asks about it twice), then takes
/// the rest: all arrive, in order, and the producer's flow ends with its
/// value.
async fn slow_reader_gets_everything(
    consuming: &Happen,
    items: usize,
    emitted: &AtomicUsize,
    ended: &mut mpsc::UnboundedReceiver<Option<HappenError>>,
) {
    let reader = consuming.node("reader").unwrap();
    let mut stream = reader
        .send("ticker", Event::new("ticks", json!(null)))
        .timeout(Duration::from_secs(60))
        .stream();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first, StreamItem::Item(json!(0)));
    // Five seconds without taking an item: the producer asks twice.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(emitted.load(Ordering::SeqCst) <= STREAM_WINDOW + 1);
    let rest: Vec<_> = within("the rest of the stream", 20, stream.collect()).await;
    let values: Vec<StreamItem> = rest.into_iter().map(|item| item.unwrap()).collect();
    let expected: Vec<StreamItem> = (1..items)
        .map(|i| StreamItem::Item(json!(i)))
        .chain([StreamItem::Done(json!("done"))])
        .collect();
    assert_eq!(values, expected);
    assert_eq!(within("the flow's end", 5, ended.recv()).await, Some(None));
    assert_eq!(emitted.load(Ordering::SeqCst), items);
}

/// What a producer's question "is this stream still wanted?" gets from a
/// live requester (here asked by hand, with a raw client in the
/// producer's place): nothing while the requester waits, a cancel once it
/// let go of the request (the answer to a lost cancel); and from the
/// server, "no responders" once the requester's runtime is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requester_answers_whether_it_still_wants_a_stream() {
    let server = NatsServer::start().unwrap();
    let raw = async_nats::connect(server.url()).await.unwrap();
    let mut requests = raw
        .queue_subscribe("happen.node.ticker", "happen".into())
        .await
        .unwrap();
    let mut credits = raw.subscribe("_INBOX.raw-producer.c1").await.unwrap();
    happen_test::round_trip(&raw).await.unwrap();
    let happen = connect(&server).await;
    let reader = happen.node("reader").unwrap();
    let sent = reader
        .send("ticker", Event::new("ticks", json!(null)))
        .timeout(Duration::from_secs(30));
    let request = within("the request reaches the producer", 10, requests.next())
        .await
        .unwrap();
    let items = request.reply.expect("a request names where to answer");
    let (inbox, token) = items.rsplit_once('.').unwrap();
    let probe = format!("{inbox}.s{token}");
    let ask = |raw: async_nats::Client, probe: String| async move {
        raw.publish_with_reply(probe, "_INBOX.raw-producer.c1", "".into())
            .await
            .unwrap();
        raw.flush().await.unwrap();
    };

    ask(raw.clone(), probe.clone()).await;
    let waiting = tokio::time::timeout(Duration::from_millis(500), credits.next()).await;
    assert!(
        waiting.is_err(),
        "a waiting requester answered: {waiting:?}"
    );

    drop(sent);
    ask(raw.clone(), probe.clone()).await;
    let cancel = within("the requester's cancel", 5, credits.next())
        .await
        .unwrap();
    assert!(cancel.status.is_none(), "{:?}", cancel.status);
    assert!(!cancel.payload.is_empty());

    happen.shutdown().await;
    drop(happen);
    // Asked until the server has seen the connection go (as a producer
    // asks every two seconds).
    let started = tokio::time::Instant::now();
    let gone = within("the server's answer", 10, async {
        loop {
            ask(raw.clone(), probe.clone()).await;
            let wait = Duration::from_millis(200);
            if let Ok(Some(message)) = tokio::time::timeout(wait, credits.next()).await {
                return message;
            }
        }
    })
    .await;
    println!("no responders after {:?}", started.elapsed());
    assert_eq!(gone.status, Some(async_nats::StatusCode::NO_RESPONDERS));
}

/// A first item refused as too large for the server (the flow handles the
/// error and goes on) does not leave the stream without credit: the item
/// that goes out first names the credit subject, so the producer gets
/// past its window and the reader gets every item and the end. Before,
/// the refused item had taken the credit subject with it, and the stream
/// stalled for good after `STREAM_WINDOW` items.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_item_refused_as_too_large_leaves_the_stream_its_credit() {
    let server = NatsServer::start().unwrap();
    let producing = connect(&server).await;
    let consuming = connect(&server).await;
    let count = 3 * STREAM_WINDOW;
    let node = producing.node("big").unwrap();
    let (first_tx, mut first) = mpsc::unbounded_channel();
    node.on("export", move |_e: Event, cx: Context| {
        let first_tx = first_tx.clone();
        async move {
            // Over the server's max_payload (1 MiB): refused, and handled.
            let _ = first_tx.send(cx.emit(json!("x".repeat(2_000_000))).await);
            for i in 0..count {
                cx.emit(json!(i)).await?;
            }
            Ok::<_, HappenError>(json!("done"))
        }
    })
    .unwrap();
    producing.flush().await.unwrap();
    let reader = consuming.node("reader").unwrap();
    let mut stream = reader
        .send("big", Event::new("export", json!(null)))
        .timeout(Duration::from_secs(60))
        .stream();
    let refused = within("the first emit returns", 10, first.recv()).await;
    assert!(
        matches!(refused, Some(Err(HappenError::PayloadTooLarge { .. }))),
        "{refused:?}"
    );
    let items: Vec<_> = within("the whole stream", 20, async {
        let mut items = Vec::new();
        while let Some(item) = stream.next().await {
            items.push(item.unwrap());
        }
        items
    })
    .await;
    let expected: Vec<_> = (0..count)
        .map(|i| StreamItem::Item(json!(i)))
        .chain([StreamItem::Done(json!("done"))])
        .collect();
    assert_eq!(items, expected);
}

//! The publishing task against a client with few acknowledgement permits.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use happen_test::NatsServer;

use super::TEST_ACK_PERMITS;
use crate::prelude::*;
use crate::{DeliveryConfig, NatsConfig};

/// More events than the client has permits for unacknowledged publishes:
/// all are stored and handled (the task never waits for a permit while
/// holding the acknowledgements that would free one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_events_than_ack_permits_are_stored() {
    TEST_ACK_PERMITS.store(8, Ordering::Relaxed);
    let server = NatsServer::start().unwrap();
    let happen = Happen::connect(NatsConfig::new(server.url()).co_located(false))
        .await
        .unwrap();
    TEST_ACK_PERMITS.store(0, Ordering::Relaxed);
    let sink = happen
        .node_with(
            "sink",
            NodeConfig::new().delivery(DeliveryConfig::at_least_once()),
        )
        .unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    sink.on("item", move |_e: Event, _cx: Context| {
        c.fetch_add(1, Ordering::Relaxed);
        async {}
    })
    .unwrap();
    happen.flush().await.unwrap();
    let source = happen.node("source").unwrap();
    for seq in 0..500 {
        source
            .tell("sink", Event::new("item", json!({ "seq": seq })))
            .unwrap();
    }
    tokio::time::timeout(Duration::from_secs(20), happen.flush())
        .await
        .expect("the events are stored")
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while count.load(Ordering::Relaxed) < 500 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of 500",
            count.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A copy of an event an exactly-once node of this process already
/// completed, stored again under another message id, is refused (counted
/// as rejected), not run again and not left pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_of_a_completed_event_stored_again_is_refused_without_running() {
    use async_nats::jetstream;
    let server = NatsServer::start().unwrap();
    let happen = Happen::connect(NatsConfig::new(server.url()).co_located(false))
        .await
        .unwrap();
    let ledger = happen
        .node_with(
            "ledger",
            NodeConfig::new().delivery(DeliveryConfig::exactly_once()),
        )
        .unwrap();
    let received = Arc::new(std::sync::Mutex::new(Vec::new()));
    let r = received.clone();
    ledger
        .on("entry", move |e: Event, _cx: Context| {
            r.lock().unwrap().push(e);
            async {}
        })
        .unwrap();
    happen.flush().await.unwrap();
    happen
        .node("shop")
        .unwrap()
        .tell("ledger", Event::new("entry", json!(5)))
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while received.lock().unwrap().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "not handled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Its completion is recorded before its acknowledgement.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let event = received.lock().unwrap()[0].clone();
    let js = jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "a-copy");
    js.publish_with_headers(
        "happen.durable.node.ledger",
        headers,
        crate::transport::nats::wire::encode_event(&event)
            .unwrap()
            .into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(received.lock().unwrap().len(), 1, "not run again");
    assert_eq!(happen.counters().rejected, 1, "refused as a copy");
    let stream = js.get_stream("HAPPEN_DURABLE").await.unwrap();
    let info = stream.consumer_info("ledger").await.unwrap();
    assert_eq!(
        (info.num_pending, info.num_ack_pending),
        (0, 0),
        "the copy was settled"
    );
}

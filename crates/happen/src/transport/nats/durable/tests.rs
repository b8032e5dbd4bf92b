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

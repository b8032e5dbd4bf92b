//! Zero events over NATS, seen from the wire: the message is the flat
//! buffer itself followed by its hash (no MessagePack), and hostile bytes
//! (truncated, forged, out-of-range offsets, garbage) are refused before
//! any handler runs, counted, reported, and answered with the reason.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use happen::nats::NatsConfig;
use happen::prelude::*;
use happen::zero::{ZeroEvent, ZeroNext, ZeroWriter};
use happen_test::NatsServer;

mod support;
use support::*;

fn with_hash(bytes: &[u8]) -> Bytes {
    let mut message = bytes.to_vec();
    message.extend_from_slice(blake3::hash(bytes).as_bytes());
    Bytes::from(message)
}

/// A runtime of its own with a node "sink" whose zero handler answers a
/// "reading" with its celsius, counting what it handled; and the
/// runtime's rejection reports.
async fn counting_sink(
    server: &NatsServer,
) -> (
    Happen,
    Arc<AtomicUsize>,
    tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
) {
    let receiver = Happen::connect(NatsConfig::new(server.url()))
        .await
        .unwrap();
    let sink = receiver.node("sink").unwrap();
    let handled = Arc::new(AtomicUsize::new(0));
    let h = handled.clone();
    sink.zero("reading", move |event, _cx| {
        h.fetch_add(1, Ordering::SeqCst);
        Ok(ZeroNext::Value(json!(event.get::<f64>("celsius")?)))
    })
    .unwrap();
    let rejected = rejections(&receiver);
    receiver.flush().await.unwrap();
    (receiver, handled, rejected)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_zero_buffer_is_the_message_and_hostile_bytes_are_refused() {
    let server = NatsServer::start().unwrap();
    let (receiver, handled, mut rejected) = counting_sink(&server).await;

    let raw = async_nats::connect(server.url()).await.unwrap();
    let mut direct = raw.subscribe("happen.node.sink").await.unwrap();
    happen_test::round_trip(&raw).await.unwrap();
    let sender = Happen::connect(NatsConfig::new(server.url()))
        .await
        .unwrap();
    let gateway = sender.node("gateway").unwrap();
    let mut writer = ZeroWriter::new("reading");
    writer.f64("celsius", 21.5).str("sensor", "s-1");
    gateway.zero_tell("sink", writer).unwrap();

    // On the wire: the buffer, then 32 bytes of hash; nothing else.
    let message = within("the zero message", 10, direct.next()).await.unwrap();
    assert!(message.headers.is_none());
    let (buffer, hash) = message.payload.split_at(message.payload.len() - 32);
    assert_eq!(&buffer[..2], b"HZ");
    assert_eq!(hash, blake3::hash(buffer).as_bytes());
    let event = ZeroEvent::from_bytes(buffer).unwrap();
    assert_eq!(event.event_type(), "reading");
    assert_eq!(event.sender(), "gateway");
    assert_eq!(event.get::<f64>("celsius").unwrap(), 21.5);
    assert_eq!(event.get::<&str>("sensor").unwrap(), "s-1");
    within("the tell handled", 10, async {
        while handled.load(Ordering::SeqCst) < 1 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;

    let genuine = message.payload.clone();
    let mut flipped = genuine.to_vec();
    flipped[60] ^= 0x01; // inside the header, the hash no longer matches
    // A field's value offset far outside the buffer, hashed again so that
    // only the layout check can refuse it.
    let fields = u32::from_le_bytes(buffer[80..84].try_into().unwrap()) as usize;
    let mut out_of_range = buffer.to_vec();
    out_of_range[fields + 12..fields + 16].copy_from_slice(&u32::MAX.to_le_bytes());
    let hostile: Vec<(&str, Bytes, &str)> = vec![
        ("truncated", genuine.slice(..40), "integrity"),
        ("flipped byte", Bytes::from(flipped), "integrity"),
        ("offset out of range", with_hash(&out_of_range), "outside"),
        (
            "garbage after the magic",
            with_hash(b"HZ\x01\x00garbage"),
            "truncated",
        ),
        ("short", Bytes::from_static(b"HZ"), "truncated"),
    ];
    for (what, bytes, reason) in &hostile {
        raw.publish("happen.node.sink", bytes.clone())
            .await
            .unwrap();
        let answer = within(what, 10, raw.request("happen.node.sink", bytes.clone()))
            .await
            .unwrap();
        // The answer is a zero event carrying the error.
        let answer = ZeroEvent::from_bytes(&answer.payload[..answer.payload.len() - 32]).unwrap();
        assert_eq!(answer.event_type(), "happen.error", "{what}");
        let text = answer.get::<&str>("error").unwrap().to_lowercase();
        assert!(text.contains(reason), "{what}: {text}");
    }
    let expected = hostile.len() * 2;
    for _ in 0..expected {
        within("a rejection report", 10, rejected.recv())
            .await
            .unwrap();
    }
    assert_eq!(receiver.counters().rejected, expected as u64);

    // The genuine bytes are still an event, and the node still serves.
    let answer = within(
        "a genuine request",
        10,
        raw.request("happen.node.sink", genuine),
    )
    .await
    .unwrap();
    let answer = ZeroEvent::from_bytes(&answer.payload[..answer.payload.len() - 32]).unwrap();
    assert_eq!(answer.event_type(), "happen.value");
    assert_eq!(answer.payload(), json!(21.5));
    let mut writer = ZeroWriter::new("reading");
    writer.f64("celsius", 3.0);
    let reply = gateway.zero_send("sink", writer).await.unwrap();
    assert_eq!(reply.into_value(), json!(3.0));
    let processed = handled.load(Ordering::SeqCst);
    println!(
        "zero over NATS: hostile sent={expected} rejected={expected} handled=0; genuine handled={processed}"
    );
    assert_eq!(processed, 3, "only the genuine events reached the handler");
    sender.shutdown().await;
    receiver.shutdown().await;
}

/// A runtime of its own with a durable (at-least-once) node "ledger".
async fn durable_ledger(server: &NatsServer) -> (Happen, Node) {
    let receiver = Happen::connect(NatsConfig::new(server.url()))
        .await
        .unwrap();
    let ledger = receiver
        .node_with(
            "ledger",
            NodeConfig::new().delivery(happen::DeliveryConfig::at_least_once()),
        )
        .unwrap();
    (receiver, ledger)
}

/// A zero event to a durable node is refused with the reason, from another
/// runtime and from the node's own (co-located): it would go around the
/// stream that stores and settles the node's events. Ordinary events still
/// reach the node, stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_events_to_a_durable_node_are_refused_with_the_reason() {
    let server = NatsServer::start().unwrap();
    let (receiver, ledger) = durable_ledger(&server).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    ledger
        .on("reading", move |e: Event, _cx: Context| {
            let _ = tx.send(e.payload()["celsius"].clone());
            async {}
        })
        .unwrap();
    receiver.flush().await.unwrap();
    let sender = Happen::connect(NatsConfig::new(server.url()))
        .await
        .unwrap();
    let gateway = sender.node("gateway").unwrap();
    let writer = || {
        let mut w = ZeroWriter::new("reading");
        w.f64("celsius", 21.5);
        w
    };
    for (side, from) in [
        ("another runtime", gateway.clone()),
        ("the node's own runtime", receiver.node("clerk").unwrap()),
    ] {
        match from.zero_tell("ledger", writer()) {
            Err(HappenError::Config(reason)) => {
                assert!(
                    reason.contains("ledger") && reason.contains("durable"),
                    "{side}: {reason}"
                )
            }
            other => panic!("{side}: a zero tell to a durable node: {other:?}"),
        }
        assert!(
            matches!(
                from.zero_send("ledger", writer()).await,
                Err(HappenError::Config(_))
            ),
            "{side}: a zero request to a durable node is refused"
        );
    }
    gateway
        .tell("ledger", Event::new("reading", json!({ "celsius": 21.5 })))
        .unwrap()
        .await
        .unwrap();
    assert_eq!(
        within("the ordinary event", 10, rx.recv()).await,
        Some(json!(21.5))
    );
    sender.shutdown().await;
    receiver.shutdown().await;
}

/// A durable node takes no zero event, whoever sends it: a runtime without
/// JetStream (which does not know the node is durable) and a raw client
/// are refused by the receiving process, and the handler never runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_node_refuses_zero_events_from_any_sender() {
    let server = NatsServer::start().unwrap();
    let (receiver, ledger) = durable_ledger(&server).await;
    let handled = Arc::new(AtomicUsize::new(0));
    let h = handled.clone();
    ledger
        .on("reading", move |_e: Event, _cx: Context| {
            h.fetch_add(1, Ordering::SeqCst);
            async { json!("handled") }
        })
        .unwrap();
    receiver.flush().await.unwrap();

    let plain = Happen::connect(NatsConfig::new(server.url()).jetstream(false))
        .await
        .unwrap();
    let gateway = plain.node("gateway").unwrap();
    let mut w = ZeroWriter::new("reading");
    w.f64("celsius", 2.0);
    let refused = gateway.zero_send("ledger", w).await.unwrap_err();
    assert!(matches!(refused, HappenError::Config(_)), "{refused}");

    let raw = async_nats::connect(server.url()).await.unwrap();
    let mut w = ZeroWriter::new("reading");
    w.f64("celsius", 1.0);
    let event = w.finish("gateway").unwrap();
    let answer = within(
        "the raw request's answer",
        10,
        raw.request("happen.node.ledger", with_hash(event.as_bytes())),
    )
    .await
    .unwrap();
    let answer = ZeroEvent::from_bytes(&answer.payload[..answer.payload.len() - 32]).unwrap();
    assert_eq!(answer.event_type(), "happen.error");
    assert_eq!(
        handled.load(Ordering::SeqCst),
        0,
        "a zero event reached a durable node"
    );
    plain.shutdown().await;
}

/// An answer that cannot travel (nested too deep to encode, larger than the
/// server takes) reaches the requester as an error at once, not as a
/// timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_cannot_travel_is_an_error_not_a_timeout() {
    let server = NatsServer::start().unwrap();
    let receiver = Happen::connect(NatsConfig::new(server.url()))
        .await
        .unwrap();
    let deep = |levels: usize| (0..levels).fold(json!(1), |inner, _| json!({ "k": inner }));
    let node = receiver.node("far").unwrap();
    node.zero("deep", move |_e, _cx| Ok(ZeroNext::Value(deep(150))))
        .unwrap();
    node.zero("big", |_e, _cx| {
        let mut w = ZeroWriter::new("big");
        w.bytes("blob", &vec![7u8; 2 << 20]);
        Ok(ZeroNext::Reply(w))
    })
    .unwrap();
    receiver.flush().await.unwrap();
    let sender = Happen::connect(NatsConfig::new(server.url()))
        .await
        .unwrap();
    let client = sender
        .node_with("client", NodeConfig::new().timeout(Duration::from_secs(20)))
        .unwrap();
    sender.flush().await.unwrap();
    let started = std::time::Instant::now();
    let too_deep = client.zero_send("far", ZeroWriter::new("deep")).await;
    assert!(
        matches!(too_deep, Err(HappenError::TooDeep { .. })),
        "{too_deep:?}"
    );
    let too_big = client.zero_send("far", ZeroWriter::new("big")).await;
    assert!(
        matches!(too_big, Err(HappenError::PayloadTooLarge { .. })),
        "{too_big:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the requester waited out its timeout"
    );
    sender.shutdown().await;
}

/// A zero event whose reply subject is not an inbox is rejected (counted,
/// reported) and never run: its answer would be published wherever that
/// subject says, under the receiving node's credentials. The same bytes
/// asked from an inbox are answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_event_is_answered_only_at_an_inbox() {
    let server = NatsServer::start().unwrap();
    let (receiver, handled, mut rejected) = counting_sink(&server).await;

    let raw = async_nats::connect(server.url()).await.unwrap();
    let mut direct = raw.subscribe("happen.node.sink").await.unwrap();
    let mut elsewhere = raw.subscribe("records.sink").await.unwrap();
    happen_test::round_trip(&raw).await.unwrap();
    let sender = Happen::connect(NatsConfig::new(server.url()))
        .await
        .unwrap();
    let mut writer = ZeroWriter::new("reading");
    writer.f64("celsius", 7.5);
    sender
        .node("gateway")
        .unwrap()
        .zero_tell("sink", writer)
        .unwrap();
    let genuine = within("the zero message", 10, direct.next())
        .await
        .unwrap()
        .payload;
    within("the tell handled", 10, async {
        while handled.load(Ordering::SeqCst) < 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;

    raw.publish_with_reply("happen.node.sink", "records.sink", genuine.clone())
        .await
        .unwrap();
    let report = within("the rejection", 10, rejected.recv()).await.unwrap();
    let published = tokio::time::timeout(Duration::from_millis(500), elsewhere.next()).await;
    println!(
        "zero over NATS: reply-subject-outside-an-inbox sent=1 rejected={} ran={} answered-there={}",
        receiver.counters().rejected,
        handled.load(Ordering::SeqCst) - 1,
        published.is_ok()
    );
    assert!(
        report["reason"].as_str().unwrap().contains("not an inbox"),
        "{report}"
    );
    assert!(published.is_err(), "an answer went outside an inbox");
    assert_eq!(handled.load(Ordering::SeqCst), 1, "the copy ran");
    assert_eq!(receiver.counters().rejected, 1);

    let answer = within("a request", 10, raw.request("happen.node.sink", genuine))
        .await
        .unwrap();
    let answer = ZeroEvent::from_bytes(&answer.payload[..answer.payload.len() - 32]).unwrap();
    assert_eq!(answer.payload(), json!(7.5));
    sender.shutdown().await;
    receiver.shutdown().await;
}

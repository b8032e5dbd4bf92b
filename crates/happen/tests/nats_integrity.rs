//! Integrity over NATS: a raw client (not Happen) replays captured events
//! with a changed payload, a changed sender, another event's hash, or
//! garbage. Every one is rejected before any node sees it, counted, and
//! reported as `system.rejected`; a request gets the reason back. The
//! untouched bytes are accepted, so the check is not refusing everything.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::Message;
use bytes::Bytes;
use futures::StreamExt;
use happen::nats::NatsConfig;
use happen::prelude::*;
use happen_test::NatsServer;
use tokio::sync::mpsc;

mod support;
use support::*;

/// Replaces the first occurrence of `from` in `bytes` with `to` (same
/// length), as an attacker editing a captured message would.
fn edit(bytes: &[u8], from: &[u8], to: &[u8]) -> Bytes {
    assert_eq!(from.len(), to.len());
    let at = bytes
        .windows(from.len())
        .position(|w| w == from)
        .unwrap_or_else(|| panic!("{from:?} not in the message"));
    let mut edited = bytes.to_vec();
    edited[at..at + to.len()].copy_from_slice(to);
    Bytes::from(edited)
}

async fn next(sub: &mut async_nats::Subscriber) -> Message {
    within("a captured message", 10, sub.next()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_and_forged_events_are_rejected_and_counted() {
    let server = NatsServer::start().unwrap();
    let receiver = Happen::connect(NatsConfig::new(server.url()))
        .await
        .unwrap();
    let ledger = receiver.node("ledger").unwrap();
    let (tx, mut taken) = mpsc::unbounded_channel();
    ledger
        .on("payment", move |e: Event, _cx: Context| {
            let tx = tx.clone();
            async move {
                let _ = tx.send((e.causal().sender.to_string(), e.payload()["cents"].clone()));
                json!("booked")
            }
        })
        .unwrap();
    let mut rejected = rejections(&receiver);
    receiver.flush().await.unwrap();

    // Capture genuine events as they cross the server.
    let raw = async_nats::connect(server.url()).await.unwrap();
    let mut direct = raw.subscribe("happen.node.ledger").await.unwrap();
    let mut broadcasts = raw.subscribe("happen.bcast.>").await.unwrap();
    happen_test::round_trip(&raw).await.unwrap();
    let sender = Happen::connect(NatsConfig::new(server.url()))
        .await
        .unwrap();
    let shop = sender.node("shop").unwrap();
    shop.tell("ledger", Event::new("payment", json!({ "cents": 100 })))
        .unwrap();
    shop.tell("ledger", Event::new("payment", json!({ "cents": 250 })))
        .unwrap();
    shop.broadcast(Event::new("payment", json!({ "cents": 700 })))
        .unwrap();
    let (first, second) = (next(&mut direct).await, next(&mut direct).await);
    let broadcast = next(&mut broadcasts).await;
    for _ in 0..3 {
        within("the genuine events", 10, taken.recv())
            .await
            .unwrap();
    }

    let genuine = first.payload.clone();
    // The hash is the last 32 bytes of an event.
    let mut swapped_hash = second.payload.to_vec();
    let m = swapped_hash.len();
    swapped_hash[m - 32..].copy_from_slice(&genuine[genuine.len() - 32..]);
    let forgeries: Vec<(&str, Bytes)> = vec![
        // 100 is the MessagePack byte 0x64; 101 is 0x65.
        (
            "changed payload",
            edit(&genuine, b"cents\x64", b"cents\x65"),
        ),
        ("changed sender", edit(&genuine, b"shop", b"shoq")),
        ("another event's hash", Bytes::from(swapped_hash)),
        (
            "garbage",
            Bytes::from_static(b"\x02\x9f\x00\xff not an event"),
        ),
    ];
    for (what, bytes) in &forgeries {
        raw.publish("happen.node.ledger", bytes.clone())
            .await
            .unwrap();
        raw.publish(broadcast.subject.clone(), bytes.clone())
            .await
            .unwrap();
        // As a request, the sender is told why.
        let answer = raw
            .request("happen.node.ledger", bytes.clone())
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&answer.payload);
        assert!(
            text.contains("integrity") || text.contains("decode"),
            "{what}: {text}"
        );
    }
    // The untouched bytes, replayed, are still an event (replays are not
    // detected by the hash: that takes a signature and a window).
    raw.publish("happen.node.ledger", genuine.clone())
        .await
        .unwrap();
    raw.publish(broadcast.subject.clone(), broadcast.payload.clone())
        .await
        .unwrap();
    happen_test::round_trip(&raw).await.unwrap();

    let expected = forgeries.len() * 3;
    let mut reports = Vec::new();
    while reports.len() < expected {
        reports.push(within("the rejections", 10, rejected.recv()).await.unwrap());
    }
    let integrity = reports
        .iter()
        .filter(|r| r["reason"].as_str().unwrap().contains("changed on the way"))
        .count();
    let mut replayed = vec![
        within("a replay", 10, taken.recv()).await.unwrap(),
        within("a replay", 10, taken.recv()).await.unwrap(),
    ];
    replayed.sort_by_key(|(_, cents)| cents.as_u64());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let counters = receiver.counters();
    println!(
        "integrity: forged={} rejected={} by-hash={} reached-a-node={} replays-taken={}",
        expected,
        counters.rejected,
        integrity,
        taken.try_recv().map_or(0, |_| 1),
        replayed.len()
    );
    assert_eq!(counters.rejected, expected as u64);
    assert_eq!(integrity, 3 * 3, "three edits, each sent three ways");
    assert!(taken.try_recv().is_err(), "a forged event reached the node");
    assert_eq!(
        replayed,
        vec![
            ("shop".to_string(), json!(100)),
            ("shop".to_string(), json!(700))
        ]
    );
}

/// A runtime of its own with a node "ledger" that requires signed events
/// and answers `event_type` with `answer(payload)`.
async fn ledger_requiring_signatures(
    server: &NatsServer,
    event_type: &str,
    answer: fn(&Value) -> Value,
) -> (Happen, Node) {
    let receiver = Happen::connect(NatsConfig::new(server.url()))
        .await
        .unwrap();
    let ledger = receiver
        .node_with("ledger", NodeConfig::new().require_signed(true))
        .unwrap();
    ledger
        .on(event_type, move |e: Event, _cx: Context| async move {
            answer(e.payload())
        })
        .unwrap();
    receiver.flush().await.unwrap();
    (receiver, ledger)
}

/// A runtime of its own with a node "payments" that signs what it sends.
async fn signing_sender(server: &NatsServer) -> (Happen, Node) {
    let sender = Happen::connect(NatsConfig::new(server.url()))
        .await
        .unwrap();
    let payments = sender
        .node_with("payments", NodeConfig::new().sign(true))
        .unwrap();
    sender.flush().await.unwrap();
    (sender, payments)
}

/// Signed senders across processes: the receiver finds the sender's key in
/// the registry bucket; a raw client that moves one event's signature onto
/// another event is refused (the hash is right, the signature is not its),
/// and so is a genuine event sent to the ledger and replayed to another
/// node (its signature is made for the ledger).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_are_checked_across_processes() {
    let server = NatsServer::start().unwrap();
    let (receiver, _ledger) =
        ledger_requiring_signatures(&server, "payment", |p| p["cents"].clone()).await;
    receiver
        .node_with("audit", NodeConfig::new().require_signed(true))
        .unwrap()
        .on("payment", |e: Event, _cx: Context| async move {
            e.payload()["cents"].clone()
        })
        .unwrap();
    receiver.flush().await.unwrap();
    let raw = async_nats::connect(server.url()).await.unwrap();
    let mut direct = raw.subscribe("happen.node.ledger").await.unwrap();
    happen_test::round_trip(&raw).await.unwrap();

    // The sender's process starts after the receiver's: its key reaches
    // the receiver through the bucket.
    let (sender, payments) = signing_sender(&server).await;
    let first = payments
        .send("ledger", Event::new("payment", json!({ "cents": 100 })))
        .await
        .unwrap();
    let second = payments
        .send("ledger", Event::new("payment", json!({ "cents": 250 })))
        .await
        .unwrap();
    assert_eq!((first, second), (json!(100), json!(250)));
    let (one, two) = (next(&mut direct).await, next(&mut direct).await);

    // The signature is the last 64 bytes of a signed event.
    let mut moved = two.payload.to_vec();
    let m = moved.len();
    moved[m - 64..].copy_from_slice(&one.payload[one.payload.len() - 64..]);
    let answer = raw
        .request("happen.node.ledger", Bytes::from(moved))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&answer.payload);
    assert!(text.contains("not the sender's"), "{text}");
    // The genuine bytes again: taken by the ledger, refused by the audit.
    let again = raw
        .request("happen.node.ledger", one.payload.clone())
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&again.payload);
    assert!(!text.contains("refused"), "{text}");
    let replayed = raw
        .request("happen.node.audit", one.payload.clone())
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&replayed.payload);
    assert!(
        text.contains("refused it") && text.contains("signed for node"),
        "{text}"
    );
    // An unsigned event (a raw client re-encoding is not needed: an
    // unsigned sender's event is enough) is refused by the ledger.
    let shop = sender.node("shop").unwrap();
    let refused = shop
        .send("ledger", Event::new("payment", json!({ "cents": 1 })))
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("not signed"), "{refused}");
    println!(
        "signatures: accepted=2 moved-signature=refused replayed-to-another-node=refused unsigned=refused"
    );
}

/// One node id claimed by two live processes with different keys is a
/// conflict (how duplicate node ids across processes are found); instances
/// sharing the key are one node; a record whose owner is gone is taken over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_id_claimed_with_another_key_is_a_conflict_while_its_owner_lives() {
    let server = NatsServer::start().unwrap();
    let connect = || Happen::connect(NatsConfig::new(server.url()));
    let seed = happen::NodeIdentity::generate().seed().unwrap();
    let signing = |key: happen::NodeIdentity| NodeConfig::new().identity(key).sign(true);

    let owner = connect().await.unwrap();
    owner
        .node_with(
            "payments",
            signing(happen::NodeIdentity::from_seed(&seed).unwrap()),
        )
        .unwrap();
    owner.flush().await.unwrap();

    // Another instance of the same node: same key, no conflict.
    let instance = connect().await.unwrap();
    instance
        .node_with(
            "payments",
            signing(happen::NodeIdentity::from_seed(&seed).unwrap()),
        )
        .unwrap();
    instance.flush().await.unwrap();

    // A different node under the same id while the owner lives.
    let impostor = connect().await.unwrap();
    impostor
        .node_with("payments", signing(happen::NodeIdentity::generate()))
        .unwrap();
    let conflict = impostor.flush().await.unwrap_err();
    assert!(
        matches!(conflict, HappenError::IdentityConflict { ref node, .. } if node == "payments"),
        "{conflict}"
    );

    // Once every process holding the old key is gone, a new key takes the
    // record over, and receivers check against it.
    owner.shutdown().await;
    instance.shutdown().await;
    drop((owner, instance));
    let successor = connect().await.unwrap();
    let renewed = successor
        .node_with("payments", signing(happen::NodeIdentity::generate()))
        .unwrap();
    within("the take-over", 10, successor.flush())
        .await
        .unwrap();
    let checker = connect().await.unwrap();
    let ledger = checker
        .node_with("ledger", NodeConfig::new().require_signed(true))
        .unwrap();
    ledger
        .on("entry", |_e: Event, _cx: Context| async { json!("ok") })
        .unwrap();
    checker.flush().await.unwrap();
    assert_eq!(
        renewed
            .send("ledger", Event::new("entry", json!(null)))
            .await
            .unwrap(),
        "ok"
    );
    println!("identity: instance=ok impostor=conflict successor=took-over");
}

/// A server running the deployment pattern (docs/deploy/nats-permissions.conf).
fn permissioned_server() -> NatsServer {
    let mut builder = NatsServer::builder();
    for line in include_str!("../../../docs/deploy/nats-permissions.conf").lines() {
        builder = builder.config(line);
    }
    builder.start().unwrap()
}

/// The payments service's runtime, with its node "payments" signing under
/// the key returned.
async fn signing_payments(server: &NatsServer) -> (Happen, happen::NodeIdentity) {
    let payments = Happen::connect(as_service(server, "payments"))
        .await
        .unwrap();
    let key = happen::NodeIdentity::generate();
    payments
        .node_with(
            "payments",
            NodeConfig::new().identity(key.clone()).sign(true),
        )
        .unwrap();
    payments.flush().await.unwrap();
    (payments, key)
}

/// A raw client's options for one of that file's services.
fn raw_service(user: &str) -> async_nats::ConnectOptions {
    async_nats::ConnectOptions::with_user_and_password(user.into(), format!("{user}-secret"))
}

/// Connecting as one of that file's services.
fn as_service(server: &NatsServer, user: &str) -> NatsConfig {
    NatsConfig::new(server.url()).auth(happen::nats::Auth::UserPassword {
        user: user.into(),
        password: format!("{user}-secret"),
    })
}

/// The deployment pattern for a hostile network (docs/deploy/
/// nats-permissions.conf): one user per service. The server refuses the
/// orders service's attempt to write the payments node's key, even once
/// the payments process is gone (when Happen alone would let a new key
/// take the record over), so events signed by anyone but payments never
/// pass as payments'.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_stops_one_service_from_acting_as_another() {
    let server = permissioned_server();
    let as_user = |user: &str| as_service(&server, user);

    let (payments, key) = signing_payments(&server).await;
    payments.shutdown().await;
    drop(payments);

    // The orders service claims the id with its own key: the record's
    // owner is gone, but the server does not let orders write it.
    let orders = Happen::connect(as_user("orders")).await.unwrap();
    orders
        .node_with("payments", NodeConfig::new().sign(true))
        .unwrap();
    let refused = within("the refused claim", 30, orders.flush()).await;
    assert!(
        refused.is_err(),
        "the server let orders write payments' key"
    );

    // The same, by hand, with a raw client of the orders user.
    let raw = raw_service("orders").connect(server.url()).await.unwrap();
    let js = async_nats::jetstream::new(raw);
    let registry = js.get_key_value("happen_identity").await.unwrap();
    let forged = within(
        "the raw write",
        30,
        registry.put("payments", Bytes::from("MFORGEDKEY")),
    )
    .await;
    assert!(forged.is_err(), "a raw write of payments' key was stored");
    let stored = registry.get("payments").await.unwrap().unwrap();
    assert_eq!(stored, Bytes::from(key.public_key()));
    println!("permissions: orders-claim=refused raw-write=refused record=payments'");
}

/// A requester that requires signed events takes only an answer signed by
/// the node it asked. A signing node's answers are signed; an answer that
/// another runtime made for a request it overheard (its reply subject
/// copied by a raw client) is refused and reported, never handed over, and
/// it does not end the request: the genuine answer, coming later, is taken.
/// When none comes in time, the request ends with the refusal's reason.
///
/// The genuine node answers only once the forged answer has been refused
/// (or never), so the order the test is about does not depend on timing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_to_a_requester_that_requires_signatures_are_checked() {
    let server = NatsServer::start().unwrap();
    let genuine = Happen::connect(NatsConfig::new(server.url()))
        .await
        .unwrap();
    let ledger = genuine
        .node_with("ledger", NodeConfig::new().sign(true))
        .unwrap();
    // The requester's runtime, once it exists: the genuine ledger waits for
    // its refusal count to grow before answering `after: n`.
    let watched: Arc<OnceLock<Happen>> = Arc::default();
    let requester = watched.clone();
    ledger
        .on("balance", move |e: Event, _cx: Context| {
            let requester = requester.clone();
            async move {
                match e.payload()["after"].as_u64() {
                    Some(refusals) => {
                        let victim = requester.get().expect("the requester runs");
                        while victim.counters().rejected <= refusals {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                    None if e.payload()["never"] == true => {
                        tokio::time::sleep(Duration::from_secs(600)).await;
                    }
                    None => {}
                }
                json!({ "cents": 100 })
            }
        })
        .unwrap();
    genuine.flush().await.unwrap();
    let victim = Happen::connect(NatsConfig::new(server.url()))
        .await
        .unwrap();
    let _ = watched.set(victim.clone());
    let payments = victim
        .node_with("payments", NodeConfig::new().require_signed(true))
        .unwrap();
    let lenient = victim.node("lenient").unwrap();
    let mut rejected = rejections(&victim);
    victim.flush().await.unwrap();

    let honest = payments
        .send("ledger", Event::new("balance", json!({})))
        .response_event()
        .await
        .unwrap();
    assert_eq!(honest.payload(), &json!({ "cents": 100 }));
    assert_eq!(honest.causal().sender, "ledger");
    assert!(honest.context().integrity.is_some(), "the answer is signed");
    assert_eq!(victim.counters().rejected, 0);

    // A runtime under another prefix answers what a raw client relays to it.
    let evil = Happen::connect(NatsConfig::new(server.url()).prefix("evil"))
        .await
        .unwrap();
    evil.node("ledger")
        .unwrap()
        .on("balance", |_e: Event, _cx: Context| async {
            json!({ "cents": 1_000_000 })
        })
        .unwrap();
    evil.flush().await.unwrap();
    let raw = async_nats::connect(server.url()).await.unwrap();
    let mut overheard = raw.subscribe("happen.node.ledger").await.unwrap();
    happen_test::round_trip(&raw).await.unwrap();
    let relay = raw.clone();
    let relayed = tokio::spawn(async move {
        for _ in 0..3 {
            let m = within("a request to relay", 60, overheard.next())
                .await
                .unwrap();
            relay
                .publish_with_reply("evil.node.ledger", m.reply.unwrap(), m.payload)
                .await
                .unwrap();
            relay.flush().await.unwrap();
        }
    });
    // The forged answer comes first and is refused; the genuine one, sent
    // only after that, is the request's answer.
    let answered = payments
        .send("ledger", Event::new("balance", json!({ "after": 0 })))
        .timeout(Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(answered, json!({ "cents": 100 }));
    let report = within("the refusal's report", 10, rejected.recv())
        .await
        .unwrap();
    assert!(
        report["reason"].as_str().unwrap().contains("not signed"),
        "{report}"
    );
    // With no genuine answer before its deadline, the request ends with
    // why the forged one was refused, not a bare timeout.
    let forged = payments
        .send("ledger", Event::new("balance", json!({ "never": true })))
        .timeout(Duration::from_secs(5))
        .await
        .expect_err("forged answer taken");
    assert!(
        matches!(&forged, HappenError::Integrity { reason, .. } if reason.contains("not signed")),
        "{forged}"
    );
    // A requester that does not require signatures takes the first answer,
    // as before.
    let taken = lenient
        .send("ledger", Event::new("balance", json!({ "never": true })))
        .timeout(Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(taken, json!({ "cents": 1_000_000 }));
    within("the relay", 10, relayed).await.unwrap();
    assert_eq!(
        victim.counters().rejected,
        2,
        "one refusal per forged answer"
    );
}

/// A key deleted from the registry by an operator is revoked in every
/// runtime, not only in those started afterwards: the node's signed events
/// are refused until a key is registered for it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_deleted_from_the_registry_is_revoked_everywhere() {
    let server = NatsServer::start().unwrap();
    let (_receiver, _ledger) =
        ledger_requiring_signatures(&server, "entry", |_| json!("booked")).await;
    let (_sender, payments) = signing_sender(&server).await;
    assert_eq!(
        payments
            .send("ledger", Event::new("entry", json!(1)))
            .await
            .unwrap(),
        "booked"
    );

    let raw = async_nats::connect(server.url()).await.unwrap();
    let registry = async_nats::jetstream::new(raw)
        .get_key_value("happen_identity")
        .await
        .unwrap();
    registry.purge("payments").await.unwrap();
    let refused = within("the revocation to reach the ledger", 10, async {
        loop {
            match payments.send("ledger", Event::new("entry", json!(2))).await {
                Err(error) => return error,
                Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await;
    assert!(
        matches!(&refused, HappenError::Integrity { reason, .. } if reason.contains("no key is registered")),
        "{refused}"
    );
}

/// The deployment pattern also keeps a service from reaching the registry
/// through JetStream's administration: changing the registry's stream (a
/// subject transform that writes another service's record), deleting or
/// purging it, or making a stream of its own that republishes into it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_stops_a_service_from_rewriting_the_registry_stream() {
    use async_nats::jetstream::stream;
    let server = permissioned_server();
    let (_payments, key) = signing_payments(&server).await;

    let raw = raw_service("orders")
        .request_timeout(Some(Duration::from_secs(2)))
        .connect(server.url())
        .await
        .unwrap();
    let js = async_nats::jetstream::new(raw);
    let registry = js.get_key_value("happen_identity").await.unwrap();
    let mut config = js
        .get_stream("KV_happen_identity")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    config.subjects.push("forge.*".into());
    config.subject_transform = Some(stream::SubjectTransform {
        source: "forge.*".into(),
        destination: "$KV.happen_identity.{{wildcard(1)}}".into(),
    });
    let updated = js.update_stream(&config).await;
    assert!(updated.is_err(), "orders changed the registry's stream");
    assert!(js.delete_stream("KV_happen_identity").await.is_err());
    assert!(
        js.get_stream("KV_happen_identity")
            .await
            .unwrap()
            .purge()
            .await
            .is_err()
    );
    let own = js
        .create_stream(stream::Config {
            name: "FORGE".into(),
            subjects: vec!["forge.>".into()],
            republish: Some(stream::Republish {
                source: ">".into(),
                destination: "$KV.happen_identity.payments".into(),
                headers_only: false,
            }),
            ..Default::default()
        })
        .await;
    if own.is_ok() {
        let forger = happen::NodeIdentity::generate();
        let _ = js
            .publish("forge.payments", forger.public_key().into())
            .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let stored = registry.get("payments").await.unwrap().unwrap();
    assert_eq!(
        stored,
        Bytes::from(key.public_key()),
        "the record was rewritten (republishing stream made: {})",
        own.is_ok()
    );
    println!(
        "registry stream: update=refused delete=refused purge=refused republish-stream={}",
        if own.is_ok() {
            "made, record unchanged"
        } else {
            "refused"
        }
    );
}

/// Copies of a signed event from a sender with no registered key cost one
/// registry lookup per sender, not one per copy: the copies wait for the
/// same lookup, and a sender found missing is remembered for a moment.
/// Every copy is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_signed_sender_is_looked_up_once_not_per_copy() {
    const COPIES: u64 = 5_000;
    let server = NatsServer::start().unwrap();
    let receiver = Happen::connect(NatsConfig::new(server.url()))
        .await
        .unwrap();
    let processed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = processed.clone();
    receiver
        .node("ledger")
        .unwrap()
        .on("entry", move |_e: Event, _cx: Context| {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::future::ready(())
        })
        .unwrap();
    receiver.flush().await.unwrap();
    // A signed event of a sender whose key record is then deleted.
    let (elsewhere, mallory) = signing_sender(&server).await;
    let raw = async_nats::connect(server.url()).await.unwrap();
    let mut captured = raw.subscribe("happen.node.ledger").await.unwrap();
    happen_test::round_trip(&raw).await.unwrap();
    mallory
        .tell("ledger", Event::new("entry", json!({ "seq": 0 })))
        .unwrap();
    let signed = next(&mut captured).await.payload;
    elsewhere.shutdown().await;
    let registry = async_nats::jetstream::new(raw.clone())
        .get_key_value("happen_identity")
        .await
        .unwrap();
    registry.purge("payments").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut lookups = raw
        .subscribe("$JS.API.DIRECT.GET.KV_happen_identity.>")
        .await
        .unwrap();
    happen_test::round_trip(&raw).await.unwrap();
    let refused_before = receiver.counters().refused;
    for _ in 0..COPIES {
        raw.publish("happen.node.ledger", signed.clone())
            .await
            .unwrap();
    }
    happen_test::round_trip(&raw).await.unwrap();
    within("every copy refused", 30, async {
        while receiver.counters().refused - refused_before < COPIES {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let mut seen = 0;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(200), lookups.next()).await {
        seen += 1;
    }
    println!("faults: unknown-signer copies={COPIES} lookups={seen} refused={COPIES}");
    assert!(seen <= 20, "{seen} registry lookups for {COPIES} copies");
    assert_eq!(
        processed.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "only the first, sent while its key was registered"
    );
}

/// A flood of messages that are not events costs the receiver a counter
/// each, not a log line and a report each: at most 100 reports a second go
/// out, and the next report says how many were left out, so that reports
/// plus what they say was left out account for every rejected message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_bad_messages_is_counted_in_full_and_reported_at_a_bounded_rate() {
    const FLOOD: u64 = 2_000;
    let server = NatsServer::start().unwrap();
    let (receiver, _ledger) = ledger_requiring_signatures(&server, "entry", |p| p.clone()).await;
    let mut rejected = rejections(&receiver);
    receiver.flush().await.unwrap();

    let raw = async_nats::connect(server.url()).await.unwrap();
    for i in 0..FLOOD {
        raw.publish("happen.node.ledger", Bytes::from(format!("junk {i}")))
            .await
            .unwrap();
    }
    happen_test::round_trip(&raw).await.unwrap();
    within("every bad message counted", 30, async {
        while receiver.counters().rejected < FLOOD {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // A second later, the next report falls in another second: it counts
    // what was left out since the last one that went out.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    raw.publish("happen.node.ledger", Bytes::from_static(b"junk, later"))
        .await
        .unwrap();
    happen_test::round_trip(&raw).await.unwrap();
    let accounted = |reports: &[Value]| -> u64 {
        reports
            .iter()
            .map(|r| 1 + r["suppressed"].as_u64().unwrap_or(0))
            .sum()
    };
    let mut reports = Vec::new();
    while accounted(&reports) < FLOOD + 1 {
        reports.push(within("the reports", 10, rejected.recv()).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(rejected.try_recv().is_err(), "more reports than rejections");
    assert_eq!(accounted(&reports), FLOOD + 1);
    assert_eq!(receiver.counters().rejected, FLOOD + 1);
    // However slowly this machine took the flood, it did not take 2,000
    // messages at 100 a second.
    assert!(
        (reports.len() as u64) < FLOOD / 2,
        "{} reports of {} rejections",
        reports.len(),
        FLOOD + 1
    );
    assert!(
        reports
            .iter()
            .any(|r| r["suppressed"].as_u64().is_some_and(|n| n > 0)),
        "no report said how many were left out"
    );

    // The node still takes what is an event.
    let (_sender, payments) = signing_sender(&server).await;
    assert_eq!(
        payments
            .send("ledger", Event::new("entry", json!("genuine")))
            .await
            .unwrap(),
        "genuine"
    );
    println!(
        "faults: bad-message-flood sent={FLOOD} counted={FLOOD} reports={}",
        reports.len()
    );
}

/// The runtime's own reports carry the sender `happen.system`, which no
/// node id can be, so a handler may trust an event from it. No event from
/// the network may claim it: a broadcast captured, its sender renamed to
/// `happen.system` and its hash computed again (the hash proves
/// wholeness, not origin) is rejected before any handler, the
/// runtime-level ones included (a security audit reached one). The same
/// broadcast under its real sender is delivered: any node may broadcast an
/// event of a system type, and only the sender tells them apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_event_from_the_network_passes_as_the_runtimes_own() {
    let server = NatsServer::start().unwrap();
    let victim = Happen::connect(NatsConfig::new(server.url()))
        .await
        .unwrap();
    let (tx, mut seen) = mpsc::unbounded_channel();
    victim
        .on("system.connection-status", move |e: Event, _cx: Context| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(e);
            }
        })
        .unwrap();
    let mut rejected = rejections(&victim);
    victim.flush().await.unwrap();
    // Whatever the runtime reported of its own connection so far.
    while let Ok(Some(own)) = tokio::time::timeout(Duration::from_millis(300), seen.recv()).await {
        assert_eq!(own.causal().sender, happen::SYSTEM_SENDER);
    }

    let raw = async_nats::connect(server.url()).await.unwrap();
    let mut tap = raw.subscribe("happen.bcast.>").await.unwrap();
    happen_test::round_trip(&raw).await.unwrap();
    let attacker = Happen::connect(NatsConfig::new(server.url()))
        .await
        .unwrap();
    let forger = attacker.node("happen-system").unwrap();
    forger
        .broadcast(Event::new(
            "system.connection-status",
            json!({ "status": "disconnected", "reason": "forged" }),
        ))
        .unwrap();
    let captured = next(&mut tap).await;
    let genuine = within("the broadcast under its sender", 10, seen.recv())
        .await
        .unwrap();
    assert_eq!(genuine.causal().sender, "happen-system");

    // Renamed (sender, origin, path) and hashed again.
    let renamed = serde_json::to_string(&genuine)
        .unwrap()
        .replace("happen-system", happen::SYSTEM_SENDER);
    let forged: Event = serde_json::from_str(&renamed).unwrap();
    let mut bytes = captured.payload.to_vec();
    let old = genuine.hash();
    let at =
        (bytes.windows(32).position(|w| w == old.as_bytes())).expect("the hash in the message");
    bytes[at..at + 32].copy_from_slice(happen::integrity::EventHash::of(&forged).as_bytes());
    let mut renamed_bytes = 0;
    while let Some(at) = bytes.windows(13).position(|w| w == b"happen-system") {
        bytes[at..at + 13].copy_from_slice(happen::SYSTEM_SENDER.as_bytes());
        renamed_bytes += 1;
    }
    assert!(renamed_bytes >= 1);
    raw.publish(captured.subject.clone(), Bytes::from(bytes))
        .await
        .unwrap();
    happen_test::round_trip(&raw).await.unwrap();
    let report = within("the rejection", 10, rejected.recv()).await.unwrap();
    let reason = report["reason"].as_str().unwrap().to_owned();
    let reached = tokio::time::timeout(Duration::from_millis(500), seen.recv())
        .await
        .ok()
        .flatten();
    println!(
        "integrity: forged-system-sender rejected={} reason={reason:?} reached-a-handler={}",
        victim.counters().rejected,
        reached.is_some()
    );
    assert!(reason.contains(happen::SYSTEM_SENDER), "{reason}");
    assert!(reached.is_none(), "a forged report reached a handler");
    assert_eq!(victim.counters().rejected, 1);
}

/// Another service, refused writing the payments node's identity record,
/// asks payments to write it instead: messages to `happen.node.payments`
/// whose reply subject is the record's subject, and a stored event to the
/// durable node with that subject as its `Happen-Reply-To`. An answer goes
/// only to an inbox: each message is rejected (counted, reported), never
/// run, and the record keeps payments' key. (A security audit's node wrote
/// its refusal into its own record this way, and lost its identity.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_message_makes_a_node_answer_outside_an_inbox() {
    let server = permissioned_server();
    let payments = Happen::connect(as_service(&server, "payments"))
        .await
        .unwrap();
    let key = happen::NodeIdentity::generate();
    let node = payments
        .node_with(
            "payments",
            NodeConfig::new()
                .identity(key.clone())
                .sign(true)
                .delivery(happen::DeliveryConfig::at_least_once()),
        )
        .unwrap();
    let (tx, mut ran) = mpsc::unbounded_channel();
    node.on("charge", move |e: Event, _cx: Context| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(e.payload().clone());
            json!("charged")
        }
    })
    .unwrap();
    let mut rejected = rejections(&payments);
    payments.flush().await.unwrap();

    let raw = raw_service("orders").connect(server.url()).await.unwrap();
    // Captured where payments may look (orders may not subscribe there).
    let tap = raw_service("payments").connect(server.url()).await.unwrap();
    let mut stored = tap.subscribe("happen.durable.node.payments").await.unwrap();
    happen_test::round_trip(&tap).await.unwrap();
    let orders = Happen::connect(as_service(&server, "orders"))
        .await
        .unwrap();
    let shop = orders.node("orders").unwrap();
    shop.tell("payments", Event::new("charge", json!({ "cents": 5 })))
        .unwrap();
    let genuine = next(&mut stored).await;
    assert_eq!(
        within("the genuine charge", 10, ran.recv()).await.unwrap()["cents"],
        5
    );

    let record = "$KV.happen_identity.payments";
    for bytes in [&b"junk"[..], &genuine.payload[..]] {
        raw.publish_with_reply(
            "happen.node.payments",
            record,
            Bytes::copy_from_slice(bytes),
        )
        .await
        .unwrap();
    }
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Happen-Reply-To", record);
    headers.insert("Nats-Msg-Id", "another-id");
    raw.publish_with_headers(genuine.subject.clone(), headers, genuine.payload.clone())
        .await
        .unwrap();
    happen_test::round_trip(&raw).await.unwrap();
    let mut reasons = Vec::new();
    for _ in 0..3 {
        let report = within("the rejections", 10, rejected.recv()).await.unwrap();
        reasons.push(report["reason"].as_str().unwrap().to_owned());
    }
    let again = tokio::time::timeout(Duration::from_millis(500), ran.recv()).await;
    let js = async_nats::jetstream::new(raw.clone());
    let registry = js.get_key_value("happen_identity").await.unwrap();
    let record_now = registry.get("payments").await.unwrap().unwrap();
    println!(
        "integrity: reply-subject-outside-an-inbox sent=3 rejected={} ran={} record-intact={}",
        payments.counters().rejected,
        again.is_ok(),
        record_now == key.public_key()
    );
    assert!(
        reasons.iter().all(|r| r.contains("not an inbox")),
        "{reasons:?}"
    );
    assert!(again.is_err(), "a message with a hostile reply subject ran");
    assert_eq!(
        record_now,
        Bytes::from(key.public_key()),
        "the record was overwritten"
    );
    assert_eq!(payments.counters().rejected, 3);
}

/// Under the deployment pattern, another service cannot take, settle or
/// drop the events stored for a durable node, nor write its state: the
/// payments user's attempts on the orders node's consumer (a pull, a
/// delete), on its deliveries' acknowledgements and on its state record
/// are refused by the server (reading the consumer's info is not: flow
/// balance reads every durable node's lag), and when orders comes back it handles
/// all ten events stored meanwhile. (A security audit, on the file before,
/// pulled and acknowledged all ten as payments, and rewrote orders' state.)
/// What the pattern cannot stop is documented in the file: a consumer of
/// payments' own reads copies, which orders still gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_stops_a_service_from_taking_another_ones_stored_events() {
    use async_nats::jetstream::consumer;
    let server = permissioned_server();
    let durable = || NodeConfig::new().delivery(happen::DeliveryConfig::at_least_once());
    // orders' first life registers the durable node and its state.
    let first = Happen::connect(as_service(&server, "orders"))
        .await
        .unwrap();
    let orders = first.node_with("orders", durable()).unwrap();
    orders
        .state()
        .set(|_| json!({ "balance": 100 }))
        .await
        .unwrap();
    first.flush().await.unwrap();
    first.shutdown().await;
    let shop_runtime = Happen::connect(as_service(&server, "orders"))
        .await
        .unwrap();
    let shop = shop_runtime.node("shop").unwrap();
    for n in 0..10 {
        shop.tell("orders", Event::new("order", json!({ "n": n })))
            .unwrap()
            .await
            .unwrap();
    }

    // The server's refusals of publishes come back as errors on the side.
    let violations = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = violations.clone();
    let raw = raw_service("payments")
        .request_timeout(Some(Duration::from_secs(2)))
        .event_callback(move |event| {
            let seen = seen.clone();
            async move {
                if let async_nats::Event::ServerError(error) = event {
                    seen.lock().unwrap().push(error.to_string());
                }
            }
        })
        .connect(server.url())
        .await
        .unwrap();
    let js = async_nats::jetstream::new(raw.clone());
    let stream = js.get_stream("HAPPEN_DURABLE").await.unwrap();
    let info = stream
        .get_consumer::<consumer::pull::Config>("orders")
        .await;
    let pulled = raw
        .request(
            "$JS.API.CONSUMER.MSG.NEXT.HAPPEN_DURABLE.orders",
            Bytes::from_static(br#"{"batch":10,"no_wait":true}"#),
        )
        .await;
    let deleted = stream.delete_consumer("orders").await;
    raw.publish(
        "$JS.ACK.HAPPEN_DURABLE.orders.1.1.1.0.0",
        Bytes::from_static(b"+ACK"),
    )
    .await
    .unwrap();
    happen_test::round_trip(&raw).await.unwrap();
    // The client reports the server's refusal through a task of its own:
    // it may come after the round trip.
    let refused =
        || (violations.lock().unwrap().iter()).any(|e| e.contains("$JS.ACK.HAPPEN_DURABLE.orders"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !refused() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ack_refused = refused();
    let state = js.get_key_value("happen-state").await.unwrap();
    let written = state
        .put("orders", Bytes::from(r#"{"balance":1000000}"#))
        .await;
    // A consumer of payments' own: it reads copies, it takes nothing.
    let spy = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("spy".into()),
            filter_subject: "happen.durable.node.orders".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut copies = spy
        .fetch()
        .max_messages(10)
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .unwrap();
    let mut read = 0;
    while let Some(Ok(message)) = copies.next().await {
        message.ack().await.unwrap();
        read += 1;
    }
    stream.delete_consumer("spy").await.unwrap();

    let second = Happen::connect(as_service(&server, "orders"))
        .await
        .unwrap();
    let orders = second.node_with("orders", durable()).unwrap();
    let (tx, mut handled) = mpsc::unbounded_channel();
    orders
        .on("order", move |e: Event, _cx: Context| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(e.payload()["n"].as_u64().unwrap());
            }
        })
        .unwrap();
    let mut got = Vec::new();
    while got.len() < 10 {
        got.push(
            within("orders' stored events", 20, handled.recv())
                .await
                .unwrap(),
        );
    }
    got.sort_unstable();
    let balance = orders.state().get().await.unwrap();
    println!(
        "permissions: info-open={} pull-refused={} delete-refused={} ack-refused={} state-write-refused={} spy-read={read} orders-handled={} balance={balance}",
        info.is_ok(),
        pulled.is_err(),
        deleted.is_err(),
        ack_refused,
        written.is_err(),
        got.len()
    );
    // Its info stays open: flow balance reads every durable node's lag.
    assert!(info.is_ok() && pulled.is_err() && deleted.is_err());
    assert!(ack_refused && written.is_err());
    assert_eq!(got, (0..10).collect::<Vec<u64>>());
    assert_eq!(balance, json!({ "balance": 100 }));
    second.shutdown().await;
}

/// An identity probe (a runtime asking whether a signing node's key is
/// still held) is answered only at an inbox: a probe naming the node's
/// own state record as its reply subject, sent by a service that may not
/// write that record, is rejected, and the record stays unwritten (a
/// review had the node write its key there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_probe_is_answered_only_at_an_inbox() {
    let server = permissioned_server();
    let (payments, key) = signing_payments(&server).await;
    let mut rejected = rejections(&payments);
    let raw = raw_service("orders")
        .request_timeout(Some(Duration::from_secs(2)))
        .connect(server.url())
        .await
        .unwrap();
    let js = async_nats::jetstream::new(raw.clone());
    let state = js.get_key_value("happen-state").await.unwrap();
    assert!(
        state
            .put("payments", Bytes::from_static(b"x"))
            .await
            .is_err(),
        "denied directly"
    );
    raw.publish_with_reply(
        "happen.identity.payments",
        "$KV.happen-state.payments",
        Bytes::from(key.public_key()),
    )
    .await
    .unwrap();
    happen_test::round_trip(&raw).await.unwrap();
    let report = within("the rejection", 10, rejected.recv()).await.unwrap();
    let written = state.get("payments").await.unwrap();
    println!(
        "integrity: identity-probe-outside-an-inbox rejected={} state-record={written:?}",
        payments.counters().rejected
    );
    assert!(report["reason"].as_str().unwrap().contains("not an inbox"));
    assert!(
        written.is_none(),
        "payments wrote into its own state record"
    );
    // A genuine probe, at an inbox, is still answered with the key.
    let answer = raw
        .request("happen.identity.payments", Bytes::from(key.public_key()))
        .await
        .unwrap();
    assert_eq!(answer.payload, Bytes::from(key.public_key()));
}

/// Only the durable node's consumer delivers on its pull inbox: a message
/// published there by anyone else (the inbox is named in every pull
/// request) is rejected and never acknowledged, since an acknowledgement
/// goes to the message's reply subject under the node's credentials (a
/// review had the node write `+TERM` into its identity record that way).
/// The node's stored events still arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_on_a_pull_inbox_not_delivered_by_the_consumer_is_not_acknowledged() {
    let server = NatsServer::start().unwrap();
    let raw = async_nats::connect(server.url()).await.unwrap();
    let mut pulls = raw
        .subscribe("$JS.API.CONSUMER.MSG.NEXT.HAPPEN_DURABLE.payments")
        .await
        .unwrap();
    let mut record_writes = raw.subscribe("$KV.happen_identity.payments").await.unwrap();
    happen_test::round_trip(&raw).await.unwrap();
    let payments = Happen::connect(NatsConfig::new(server.url()))
        .await
        .unwrap();
    let node = payments
        .node_with(
            "payments",
            NodeConfig::new()
                .sign(true)
                .delivery(happen::DeliveryConfig::at_least_once()),
        )
        .unwrap();
    let (tx, mut charged) = mpsc::unbounded_channel();
    node.on("charge", move |e: Event, _cx: Context| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(e.payload().clone());
        }
    })
    .unwrap();
    let mut rejected = rejections(&payments);
    payments.flush().await.unwrap();
    // The key's own registration.
    within("the key's registration", 10, record_writes.next())
        .await
        .unwrap();
    let pull = within("a pull request", 10, pulls.next()).await.unwrap();
    let inbox = pull.reply.unwrap().to_string();
    for forged_reply in ["$KV.happen_identity.payments", "_INBOX.elsewhere"] {
        raw.publish_with_reply(inbox.clone(), forged_reply, Bytes::from_static(b"junk"))
            .await
            .unwrap();
    }
    happen_test::round_trip(&raw).await.unwrap();
    for _ in 0..2 {
        let report = within("the rejections", 10, rejected.recv()).await.unwrap();
        assert!(
            report["reason"]
                .as_str()
                .unwrap()
                .contains("did not deliver")
        );
    }
    let sender = Happen::connect(NatsConfig::new(server.url()))
        .await
        .unwrap();
    let shop = sender.node("shop").unwrap();
    shop.tell("payments", Event::new("charge", json!(7)))
        .unwrap()
        .await
        .unwrap();
    assert_eq!(
        within("the stored event", 10, charged.recv())
            .await
            .unwrap(),
        7
    );
    let overwritten = tokio::time::timeout(Duration::from_millis(300), record_writes.next()).await;
    println!(
        "integrity: forged-pull-inbox-deliveries sent=2 rejected={} record-written={}",
        payments.counters().rejected,
        overwritten.is_ok()
    );
    assert!(
        overwritten.is_err(),
        "something was published to the identity record"
    );
    assert_eq!(payments.counters().rejected, 2);
}

/// Flow balance reads the lag of every durable node in the system, other
/// services' included; the deployment pattern leaves that open, so a
/// runtime's balance samples raise no permission error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_permissions_pattern_lets_flow_balance_read_every_durable_nodes_lag() {
    let server = permissioned_server();
    let orders = Happen::connect(as_service(&server, "orders"))
        .await
        .unwrap();
    let node = orders
        .node_with(
            "orders",
            NodeConfig::new().delivery(happen::DeliveryConfig::at_least_once()),
        )
        .unwrap();
    node.on("order", |_e: Event, _cx: Context| async {})
        .unwrap();
    orders.flush().await.unwrap();
    let balance =
        happen::balance::FlowBalanceConfig::default().interval(Duration::from_millis(100));
    let payments = Happen::connect_with(
        as_service(&server, "payments"),
        HappenConfig::default().flow_balance(balance),
    )
    .await
    .unwrap();
    let (tx, mut statuses) = mpsc::unbounded_channel();
    payments
        .on(happen::CONNECTION_STATUS, move |e: Event, _cx: Context| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(e.payload().clone());
            }
        })
        .unwrap();
    payments.flush().await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut errors = Vec::new();
    while let Ok(status) = statuses.try_recv() {
        if status["status"] == "error" {
            errors.push(status["reason"].to_string());
        }
    }
    println!("permissions: balance-samples-errors={}", errors.len());
    assert!(errors.is_empty(), "{errors:?}");
}

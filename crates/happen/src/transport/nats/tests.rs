//! NATS transport tests that speak the wire protocol directly (a raw client
//! sending hostile bytes, a faulty responder forging stream chunks).

use std::time::Duration;

use happen_test::NatsServer;
use tokio::sync::mpsc;

use super::wire::{self, Reply};
use crate::NatsConfig;
use crate::prelude::*;

pub(super) async fn within<T>(
    what: &str,
    secs: u64,
    fut: impl std::future::Future<Output = T>,
) -> T {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within {secs} s"))
}

/// Sends a request of `event_type` to node `node` from a raw client (in a
/// requester's place) and gives the subscription its replies come to.
pub(super) async fn raw_request(
    raw: &async_nats::Client,
    node: &str,
    event_type: &str,
) -> async_nats::Subscriber {
    let inbox = raw.new_inbox();
    let replies = raw.subscribe(inbox.clone()).await.unwrap();
    let mut request = Event::new(event_type, json!(null));
    crate::event::stamp(&mut request, &crate::Id::from("raw"), None);
    raw.publish_with_reply(
        format!("happen.node.{node}"),
        inbox,
        wire::encode_event(&request).unwrap().into(),
    )
    .await
    .unwrap();
    replies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bytes_are_refused_and_the_node_keeps_serving() {
    let server = NatsServer::start().unwrap();
    let happen = Happen::connect(NatsConfig::new(server.url()))
        .await
        .unwrap();
    let node = happen.node("target").unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    node.on(">", move |e: Event, _cx: Context| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(e.event_type().to_owned());
            json!("ok")
        }
    })
    .unwrap();
    happen.flush().await.unwrap();

    let raw = async_nats::connect(server.url()).await.unwrap();
    for garbage in [
        &b""[..],
        b"\xc1",
        b"\x93\x01\x02",
        b"{\"type\":\"json-not-msgpack\"}",
        &[0x91; 10_000],
    ] {
        let answer = raw
            .request("happen.node.target", bytes::Bytes::copy_from_slice(garbage))
            .await
            .unwrap();
        match wire::decode_reply(&answer.payload).unwrap() {
            wire::Reply::Err(HappenError::Codec { message, .. }) => {
                assert!(message.contains("decode"), "{message}")
            }
            other => panic!("expected a codec error, got {other:?}"),
        }
        raw.publish("happen.bcast.junk", bytes::Bytes::copy_from_slice(garbage))
            .await
            .unwrap();
    }
    raw.flush().await.unwrap();

    // Still serving, and no garbage reached a handler: what the ">"
    // handler saw are the reports of the rejections (five requests, five
    // broadcasts), then the event sent after.
    assert_eq!(
        node.send(&node, Event::new("after", json!(null)))
            .await
            .unwrap(),
        json!("ok")
    );
    let mut seen: Vec<String> = Vec::new();
    let reports = |seen: &[String]| {
        seen.iter()
            .filter(|t| *t == crate::system::REJECTED)
            .count()
    };
    while !seen.iter().any(|t| t == "after") || reports(&seen) < 10 {
        seen.push(within("the reports", 10, rx.recv()).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(rx.try_recv().is_err(), "more than expected: {seen:?}");
    assert_eq!((reports(&seen), seen.len()), (10, 11), "{seen:?}");
    assert_eq!(happen.counters().rejected, 10);
    happen.shutdown().await;
}

/// A responder (here a raw NATS client) whose stream skips, repeats or
/// truncates chunks: the requester sees the items up to the gap, then a
/// StreamBroken error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_or_reordered_stream_chunks_are_detected() {
    use crate::StreamItem;
    use futures::StreamExt;

    let server = NatsServer::start().unwrap();
    let raw = async_nats::connect(server.url()).await.unwrap();
    // Each request names the faulty sequence to answer with.
    let mut requests = raw
        .queue_subscribe("happen.node.faulty", "happen".into())
        .await
        .unwrap();
    let responder = raw.clone();
    // Credit goes only to an inbox (see `subjects::answerable`).
    let credit_subject = format!("{}.credit", raw.new_inbox());
    let credit_to = credit_subject.clone();
    tokio::spawn(async move {
        while let Some(message) = requests.next().await {
            let event = wire::decode_event(&message.payload).unwrap();
            let reply_to = message.reply.unwrap();
            let item = |seq: u64| Reply::Item {
                seq,
                value: json!(seq),
                credit: None,
            };
            // The gap's first item names where to send credit.
            let credited = Reply::Item {
                seq: 0,
                value: json!(0),
                credit: Some(credit_to.clone()),
            };
            // The same, naming a subject that is no inbox for its credit.
            let outside = Reply::Item {
                seq: 0,
                value: json!(0),
                credit: Some("happen.outside.credit".to_owned()),
            };
            let script: Vec<Reply> = match event.event_type() {
                "gap" => vec![credited, item(2)],
                "gap-outside" => vec![outside, item(2)],
                "reordered" => vec![item(0), item(1), item(3), item(2)],
                "truncated" => vec![
                    item(0),
                    item(1),
                    Reply::End {
                        seq: 5,
                        outcome: Box::new(Reply::Ok(Event::new("happen.response", json!("x")))),
                    },
                ],
                _ => vec![item(1)],
            };
            for reply in script {
                responder
                    .publish(reply_to.clone(), wire::encode_reply(&reply).unwrap().into())
                    .await
                    .unwrap();
            }
        }
    });
    let mut credit = raw.subscribe(credit_subject).await.unwrap();
    let mut outside = raw.subscribe("happen.outside.credit").await.unwrap();
    happen_test::round_trip(&raw).await.unwrap();

    let happen = Happen::connect(NatsConfig::new(server.url()))
        .await
        .unwrap();
    let client = happen.node("client").unwrap();
    for (kind, items_before) in [
        ("gap", 1),
        ("gap-outside", 1),
        ("reordered", 2),
        ("truncated", 2),
        ("late-start", 0),
    ] {
        let got: Vec<_> = within(
            kind,
            20,
            client
                .send("faulty", Event::new(kind, json!(null)))
                .stream()
                .collect(),
        )
        .await;
        assert_eq!(got.len(), items_before + 1, "{kind}: {got:?}");
        for (i, item) in got[..items_before].iter().enumerate() {
            assert_eq!(
                item.as_ref().unwrap(),
                &StreamItem::Item(json!(i)),
                "{kind}"
            );
        }
        assert!(
            matches!(got.last().unwrap(), Err(HappenError::StreamBroken { .. })),
            "{kind}: {:?}",
            got.last()
        );
        if kind == "gap" {
            // A producer that skipped items is told to stop (it would
            // otherwise wait for credit for good).
            let told = within("the cancel", 10, credit.next()).await.unwrap();
            assert!(
                matches!(wire::decode_credit(&told.payload), Ok(wire::Credit::Cancel)),
                "{:?}",
                wire::decode_credit(&told.payload)
            );
        }
        if kind == "gap-outside" {
            // Credit goes only to an inbox: the cancel is not sent where
            // the producer said (`subjects::answerable`).
            let sent = tokio::time::timeout(Duration::from_millis(300), outside.next()).await;
            assert!(sent.is_err(), "credit published outside an inbox");
        }
    }
    happen.shutdown().await;
}

/// A consumer that claims to have taken every item there can be
/// (`Credit::Acked(u64::MAX)`, from a raw client) only lifts the producer's
/// flow control: the producer neither overflows nor stops, its items all
/// arrive in order with their end, and it answers the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credit_of_u64_max_neither_overflows_nor_stalls_the_producer() {
    use futures::StreamExt;
    const ITEMS: u64 = 200;
    let server = NatsServer::start().unwrap();
    let happen = Happen::connect(NatsConfig::new(server.url()))
        .await
        .unwrap();
    let producer = happen.node("producer").unwrap();
    producer
        .on("count", |_e: Event, cx: Context| async move {
            for i in 0..ITEMS {
                cx.emit(json!(i)).await?;
            }
            Ok::<_, HappenError>(json!("done"))
        })
        .unwrap();
    happen.flush().await.unwrap();

    let raw = async_nats::connect(server.url()).await.unwrap();
    let mut replies = raw_request(&raw, "producer", "count").await;
    let mut seen = Vec::new();
    let end = within("the stream's end", 20, async {
        loop {
            let message = replies.next().await.unwrap();
            match wire::decode_reply(&message.payload).unwrap() {
                Reply::Item { seq, credit, .. } => {
                    if let Some(subject) = credit {
                        let all = wire::encode_credit(&wire::Credit::Acked(u64::MAX)).unwrap();
                        raw.publish(subject, all.into()).await.unwrap();
                    }
                    seen.push(seq);
                }
                Reply::End { seq, outcome } => return (seq, *outcome),
                other => panic!("unexpected reply {other:?}"),
            }
        }
    })
    .await;
    assert_eq!(seen, (0..ITEMS).collect::<Vec<_>>());
    assert_eq!(end.0, ITEMS);
    assert!(
        matches!(end.1, Reply::Ok(ref e) if e.payload() == &json!("done")),
        "{:?}",
        end.1
    );
    // Still answering.
    let asker = happen.node("asker").unwrap();
    let total = within(
        "a second request",
        20,
        asker
            .send(&producer, Event::new("count", json!(null)))
            .stream()
            .count(),
    )
    .await;
    assert_eq!(total as u64, ITEMS + 1);
}

/// A batch's members are judged with the envelope's sender, the one its
/// signature proves: members claiming another sender do not pass a node
/// rule the signer itself does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_members_claiming_another_sender_do_not_pass_acceptance() {
    let server = NatsServer::start().unwrap();
    let receiver = Happen::connect(NatsConfig::new(server.url()))
        .await
        .unwrap();
    let ledger = receiver
        .node_with(
            "ledger",
            NodeConfig::new()
                .require_signed(true)
                .accept_from([crate::AcceptRule::node("admin")]),
        )
        .unwrap();
    ledger
        .on("entry", |e: Event, _cx: Context| async move {
            json!(e.events().len())
        })
        .unwrap();
    receiver.flush().await.unwrap();
    let key = crate::NodeIdentity::generate();
    let other = Happen::connect(NatsConfig::new(server.url()))
        .await
        .unwrap();
    other
        .node_with("orders", NodeConfig::new().identity(key.clone()).sign(true))
        .unwrap();
    other.flush().await.unwrap();
    // Orders' signed batch whose members say they come from "admin".
    let mut batch =
        Event::batch([Event::new("entry", json!(1)), Event::new("entry", json!(2))]).unwrap();
    crate::event::stamp(&mut batch, &crate::Id::from("orders"), None);
    let mut value = serde_json::to_value(&batch).unwrap();
    for member in value["batch"].as_array_mut().unwrap() {
        member["context"]["causal"]["sender"] = json!("admin");
        member["context"]["origin"]["nodeId"] = json!("admin");
    }
    let mut forged: Event = serde_json::from_value(value).unwrap();
    crate::identity::sign(&mut forged, &key, Some("ledger")).unwrap();
    let raw = async_nats::connect(server.url()).await.unwrap();
    let answer = within(
        "the answer",
        10,
        raw.request(
            "happen.node.ledger",
            wire::encode_event(&forged).unwrap().into(),
        ),
    )
    .await
    .unwrap();
    let outcome = wire::decode_reply(&answer.payload).unwrap();
    assert!(
        matches!(outcome, Reply::Err(HappenError::NotAccepted { ref sender, .. }) if sender == "orders"),
        "{outcome:?}"
    );
}

/// A runtime with a signing `ledger` (its handlers added by `handlers`),
/// and another with a `payments` node that requires signed events.
pub(super) async fn signing_ledger_and_strict_payments(
    server: &NatsServer,
    handlers: impl FnOnce(&Node),
) -> (Happen, Happen, Node) {
    let genuine = Happen::connect(NatsConfig::new(server.url()))
        .await
        .unwrap();
    let ledger = genuine
        .node_with("ledger", NodeConfig::new().sign(true))
        .unwrap();
    handlers(&ledger);
    genuine.flush().await.unwrap();
    let victim = Happen::connect(NatsConfig::new(server.url()))
        .await
        .unwrap();
    let payments = victim
        .node_with("payments", NodeConfig::new().require_signed(true))
        .unwrap();
    victim.flush().await.unwrap();
    (genuine, victim, payments)
}

/// A requester that requires signatures checks every way an answer can
/// come: as an answer, as the end of a stream without items, and against
/// the request it answers (a signed answer to an earlier request, replayed,
/// is refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_checked_however_they_come_and_must_answer_this_request() {
    use futures::StreamExt;
    let server = NatsServer::start().unwrap();
    let (genuine, _victim, payments) = signing_ledger_and_strict_payments(&server, |ledger| {
        ledger
            .on("balance", |e: Event, _cx: Context| async move {
                json!({ "account": e.payload()["account"].clone() })
            })
            .unwrap();
    })
    .await;
    let raw = async_nats::connect(server.url()).await.unwrap();
    let mut inboxes = raw.subscribe("_INBOX.>").await.unwrap();
    happen_test::round_trip(&raw).await.unwrap();
    let first = payments
        .send("ledger", Event::new("balance", json!({ "account": "A" })))
        .await
        .unwrap();
    assert_eq!(first, json!({ "account": "A" }));
    let captured = within("the signed answer", 10, async {
        loop {
            let m = inboxes.next().await.unwrap();
            if let Ok(Reply::Ok(e)) = wire::decode_reply(&m.payload)
                && e.causal().sender == "ledger"
            {
                return e;
            }
        }
    })
    .await;
    genuine.shutdown().await;
    drop(genuine);

    // The node's subject now answered by a raw client: with the captured
    // answer (genuine, signed, to another request), or with an unsigned one
    // as the end of an empty stream.
    let mut requests = raw
        .queue_subscribe("happen.node.ledger", "happen".into())
        .await
        .unwrap();
    let responder = raw.clone();
    tokio::spawn(async move {
        while let Some(m) = requests.next().await {
            let event = wire::decode_event(&m.payload).unwrap();
            let reply = match event.payload()["how"].as_str() {
                Some("end") => Reply::End {
                    seq: 0,
                    outcome: Box::new(Reply::Ok(Event::new("happen.response", json!("forged")))),
                },
                _ => Reply::Ok(captured.clone()),
            };
            responder
                .publish(m.reply.unwrap(), wire::encode_reply(&reply).unwrap().into())
                .await
                .unwrap();
        }
    });
    happen_test::round_trip(&raw).await.unwrap();
    let replayed = payments
        .send("ledger", Event::new("balance", json!({ "account": "B" })))
        .timeout(Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(
        matches!(&replayed, HappenError::Integrity { reason, .. } if reason.contains("not to this request")),
        "{replayed}"
    );
    let ended = payments
        .send("ledger", Event::new("balance", json!({ "how": "end" })))
        .timeout(Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(
        matches!(&ended, HappenError::Integrity { reason, .. } if reason.contains("not sealed")),
        "{ended}"
    );
}

/// Errors, streamed items and a stream's end reach a requester that
/// requires signatures when the node it asked sent them (they are sealed
/// with its key). Forged ones, published first on the overheard reply
/// subject, are refused and counted, and do not end the request: the
/// genuine outcome, coming later, is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_and_streams_are_believed_only_from_the_node_asked() {
    use crate::StreamItem::{Done, Item};
    use futures::StreamExt;
    let server = NatsServer::start().unwrap();
    // How many forged replies the server has taken: the ledger answers
    // only after them, so they come first.
    let (forged_tx, forged) = tokio::sync::watch::channel(0usize);
    let after = move |count: usize| {
        let mut forged = forged.clone();
        async move {
            let _ = forged.wait_for(|n| *n >= count).await;
        }
    };
    let (_genuine, victim, payments) = signing_ledger_and_strict_payments(&server, |ledger| {
        let after_one = after.clone();
        ledger
            .on("close", move |_e: Event, _cx: Context| {
                let forged = after_one(1);
                async move {
                    forged.await;
                    Err::<serde_json::Value, HappenError>(HappenError::Config(
                        "the books are closed".into(),
                    ))
                }
            })
            .unwrap();
        ledger
            .on("entries", move |_e: Event, cx: Context| {
                let forged = after(3);
                async move {
                    forged.await;
                    for n in 0..3 {
                        cx.emit(json!(n)).await?;
                    }
                    Ok::<_, HappenError>(json!("listed"))
                }
            })
            .unwrap();
    })
    .await;

    // A raw client overhears every request to the ledger and answers first.
    let raw = async_nats::connect(server.url()).await.unwrap();
    let mut overheard = raw.subscribe("happen.node.ledger").await.unwrap();
    happen_test::round_trip(&raw).await.unwrap();
    let forger = raw.clone();
    tokio::spawn(async move {
        while let Some(m) = overheard.next().await {
            let Some(reply_to) = m.reply else { continue };
            let forged = || HappenError::Config("forged".into());
            let event = wire::decode_event(&m.payload).unwrap();
            let replies = match event.event_type() {
                "close" => vec![Reply::Err(forged())],
                _ => vec![
                    Reply::Item {
                        seq: 0,
                        value: json!("forged"),
                        credit: None,
                    },
                    Reply::End {
                        seq: 1,
                        outcome: Box::new(Reply::Err(forged())),
                    },
                ],
            };
            let count = replies.len();
            for reply in replies {
                let bytes = wire::encode_reply(&reply).unwrap();
                forger
                    .publish(reply_to.clone(), bytes.into())
                    .await
                    .unwrap();
            }
            happen_test::round_trip(&forger).await.unwrap();
            forged_tx.send_modify(|n| *n += count);
        }
    });
    let closed = payments
        .send("ledger", Event::new("close", json!(null)))
        .await
        .unwrap_err();
    assert!(
        closed.to_string().contains("the books are closed"),
        "{closed}"
    );
    let streamed = payments
        .send("ledger", Event::new("entries", json!(null)))
        .stream()
        .collect::<Vec<_>>();
    let streamed: Vec<_> = within("the stream", 10, streamed)
        .await
        .into_iter()
        .map(|item| item.unwrap())
        .collect();
    assert_eq!(
        streamed,
        [
            Item(json!(0)),
            Item(json!(1)),
            Item(json!(2)),
            Done(json!("listed"))
        ]
    );
    assert_eq!(victim.counters().rejected, 3, "the forged replies");
}

//! A forger on the server (a raw client that overhears a request's reply
//! subject, or every inbox) against a requester that requires signatures:
//! none of its replies is believed, none ends the request early, and the
//! genuine node cannot be made to seal one for it.

use std::time::Duration;

use futures::StreamExt;
use happen_test::NatsServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use super::tests::{signing_ledger_and_strict_payments, within};
use super::wire::{self, Credit, Reply};
use crate::StreamItem::{Done, Item};
use crate::prelude::*;

/// Resolves once the forger has done `count` things (the genuine node
/// waits for it, so the forgery comes first).
fn after(done: &watch::Receiver<usize>, count: usize) -> impl Future<Output = ()> + use<> {
    let mut done = done.clone();
    async move {
        let _ = done.wait_for(|n| *n >= count).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A raw client subscribed to `subject` (the forger's ears and mouth).
async fn overhear(
    server: &NatsServer,
    subject: &'static str,
) -> (async_nats::Client, async_nats::Subscriber) {
    let raw = async_nats::connect(server.url()).await.unwrap();
    let heard = raw.subscribe(subject).await.unwrap();
    happen_test::round_trip(&raw).await.unwrap();
    (raw, heard)
}

/// A connection speaking the protocol by hand: it can publish what no
/// client library would (a "no responders" status, broken headers).
async fn raw_protocol(server: &NatsServer) -> tokio::net::TcpStream {
    let address = server.url().trim_start_matches("nats://").to_owned();
    let mut tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let mut info = [0u8; 4096];
    let _ = tcp.read(&mut info).await.unwrap();
    tcp.write_all(b"CONNECT {\"verbose\":false,\"headers\":true,\"protocol\":1}\r\n")
        .await
        .unwrap();
    tcp
}

async fn hpub(tcp: &mut tokio::net::TcpStream, subject: &str, headers: &[u8], body: &[u8]) {
    let total = headers.len() + body.len();
    let line = format!("HPUB {subject} {} {total}\r\n", headers.len());
    tcp.write_all(line.as_bytes()).await.unwrap();
    tcp.write_all(headers).await.unwrap();
    tcp.write_all(body).await.unwrap();
    tcp.write_all(b"\r\nPING\r\n").await.unwrap();
    let mut pong = [0u8; 64];
    let _ = tcp.read(&mut pong).await.unwrap();
}

/// The forger relays to the genuine node, with the victim's reply subject,
/// bytes it cannot read and a request of its own: the node answers both,
/// signed and sealed, but for requests that are not the victim's, so
/// neither is believed and the genuine answer is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_cannot_be_made_to_seal_a_reply_to_another_request() {
    let server = NatsServer::start().unwrap();
    let (done_tx, done) = watch::channel(0usize);
    let (_genuine, victim, payments) = signing_ledger_and_strict_payments(&server, |ledger| {
        ledger
            .on("entries", move |e: Event, cx: Context| {
                let account = e.payload()["account"].clone();
                let wait = after(&done, 2);
                async move {
                    if account == "A" {
                        wait.await;
                    }
                    cx.emit(account.clone()).await?;
                    Ok::<_, HappenError>(json!({ "of": account }))
                }
            })
            .unwrap();
    })
    .await;
    let (forger, mut overheard) = overhear(&server, "happen.node.ledger").await;
    tokio::spawn(async move {
        while let Some(m) = overheard.next().await {
            let Ok(event) = wire::decode_event(&m.payload) else {
                continue;
            };
            let (Some(reply_to), true) = (m.reply, event.payload()["account"] == "A") else {
                continue;
            };
            let mut evil = Event::new("entries", json!({ "account": "EVIL" }));
            crate::event::stamp(&mut evil, &crate::Id::from("payments"), None);
            let evil = wire::encode_event(&evil).unwrap();
            for bytes in [bytes::Bytes::from_static(b"\xc1"), evil.into()] {
                let relayed =
                    forger.publish_with_reply("happen.node.ledger", reply_to.clone(), bytes);
                relayed.await.unwrap();
                happen_test::round_trip(&forger).await.unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
                done_tx.send_modify(|n| *n += 1);
            }
        }
    });
    let streamed = payments
        .send("ledger", Event::new("entries", json!({ "account": "A" })))
        .stream()
        .collect::<Vec<_>>();
    let streamed: Vec<_> = within("the stream", 10, streamed).await;
    let streamed: Vec<_> = streamed
        .into_iter()
        .map(|i| i.unwrap_or_else(|e| panic!("{e}")))
        .collect();
    assert_eq!(streamed, [Item(json!("A")), Done(json!({ "of": "A" }))]);
    // The refusal of the unreadable bytes (not sealed), and the forger's
    // stream: its item and its end.
    assert_eq!(victim.counters().rejected, 3);
}

/// A "no responders" status forged on the reply subject neither ends the
/// request nor makes it offered again (the handler runs once), even when
/// the node answered recently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_no_responders_neither_ends_nor_repeats_a_verified_request() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let server = NatsServer::start().unwrap();
    let runs = std::sync::Arc::new(AtomicUsize::new(0));
    let (done_tx, done) = watch::channel(0usize);
    let counted = runs.clone();
    let (_genuine, _victim, payments) = signing_ledger_and_strict_payments(&server, |ledger| {
        ledger
            .on("charge", move |_e: Event, _cx: Context| {
                let run = counted.fetch_add(1, Ordering::SeqCst);
                let wait = after(&done, 3);
                async move {
                    wait.await;
                    json!({ "run": run })
                }
            })
            .unwrap();
        ledger
            .on("ping", |_e: Event, _cx: Context| async { json!("pong") })
            .unwrap();
    })
    .await;
    let pong = payments.send("ledger", Event::new("ping", json!(null)));
    assert_eq!(pong.await.unwrap(), "pong"); // it answered recently
    let (_raw, mut overheard) = overhear(&server, "happen.node.ledger").await;
    let mut tcp = raw_protocol(&server).await;
    tokio::spawn(async move {
        let m = overheard.next().await.unwrap();
        for _ in 0..3 {
            hpub(
                &mut tcp,
                m.reply.as_ref().unwrap(),
                b"NATS/1.0 503\r\n\r\n",
                b"",
            )
            .await;
            done_tx.send_modify(|n| *n += 1);
        }
    });
    let charged = payments
        .send("ledger", Event::new("charge", json!({ "cents": 100 })))
        .timeout(Duration::from_secs(5))
        .await;
    assert_eq!(charged.unwrap(), json!({ "run": 0 }));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 1, "run once");
}

/// A genuine sealed item published again is dropped, and a forged
/// "unwanted" credit (sent to the credit subject the first item names)
/// cannot cut the stream short unseen: its end counts every item.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_items_are_dropped_and_a_forged_credit_cannot_cut_a_stream_short_unseen() {
    let server = NatsServer::start().unwrap();
    let (done_tx, done) = watch::channel(0usize);
    let (_genuine, _victim, payments) = signing_ledger_and_strict_payments(&server, |ledger| {
        ledger
            .on("entries", move |e: Event, cx: Context| {
                let wait = after(&done, 1);
                let count = e.payload().as_u64().unwrap_or(0);
                async move {
                    cx.emit(json!(0)).await?;
                    wait.await;
                    for n in 1..3 {
                        cx.emit(json!(n)).await?;
                    }
                    Ok::<_, HappenError>(json!(count))
                }
            })
            .unwrap();
    })
    .await;
    let (forger, mut inboxes) = overhear(&server, "_INBOX.>").await;
    tokio::spawn(async move {
        let mut done_tx = Some(done_tx);
        let mut seen = std::collections::HashSet::new();
        while let Some(m) = inboxes.next().await {
            let Ok(Reply::Item { seq: 0, credit, .. }) = wire::decode_reply(&m.payload) else {
                continue;
            };
            if !seen.insert(m.subject.to_string()) {
                continue; // the replay itself
            }
            let (subject, headers) = (m.subject.clone(), m.headers.clone().unwrap());
            // The first request: its item replayed. The second: its
            // producer told the items are unwanted.
            match done_tx.take() {
                Some(tx) => {
                    let again = forger.publish_with_headers(subject, headers, m.payload.clone());
                    again.await.unwrap();
                    happen_test::round_trip(&forger).await.unwrap();
                    tx.send_modify(|n| *n += 1);
                }
                None => {
                    let unwanted = wire::encode_credit(&Credit::Unwanted).unwrap();
                    forger
                        .publish(credit.unwrap(), unwanted.into())
                        .await
                        .unwrap();
                    happen_test::round_trip(&forger).await.unwrap();
                }
            }
        }
    });
    let stream = |n: u64| {
        let sent = payments.send("ledger", Event::new("entries", json!(n)));
        within("the stream", 10, sent.stream().collect::<Vec<_>>())
    };
    let replayed: Vec<_> = stream(1).await.into_iter().map(|i| i.unwrap()).collect();
    assert_eq!(
        replayed,
        [
            Item(json!(0)),
            Item(json!(1)),
            Item(json!(2)),
            Done(json!(1))
        ]
    );
    let cut = stream(2).await;
    assert!(
        matches!(cut.last(), Some(Err(HappenError::StreamBroken { .. }))),
        "{cut:?}"
    );
}

/// Hostile seal headers (not UTF-8, not hex, empty, with an odd status)
/// are refused without a panic, and the genuine answer is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_seal_headers_are_refused_and_the_genuine_answer_taken() {
    let server = NatsServer::start().unwrap();
    let (done_tx, done) = watch::channel(0usize);
    let (_genuine, victim, payments) = signing_ledger_and_strict_payments(&server, |ledger| {
        ledger
            .on("balance", move |_e: Event, _cx: Context| {
                let wait = after(&done, 1);
                async move {
                    wait.await;
                    json!({ "cents": 100 })
                }
            })
            .unwrap();
    })
    .await;
    let (_raw, mut overheard) = overhear(&server, "happen.node.ledger").await;
    let mut tcp = raw_protocol(&server).await;
    tokio::spawn(async move {
        let m = overheard.next().await.unwrap();
        let forged = wire::encode_reply(&Reply::Err(HappenError::Config("forged".into()))).unwrap();
        for headers in [
            &b"NATS/1.0\r\nHappen-Seal: abc\r\n\r\n"[..],
            b"NATS/1.0\r\nHappen-Seal: \xff\xfe\x00zz\r\n\r\n",
            b"NATS/1.0\r\nHappen-Seal:\r\n\r\n",
            b"NATS/1.0 999 weird\r\nHappen-Seal: 00\r\n\r\n",
        ] {
            hpub(&mut tcp, m.reply.as_ref().unwrap(), headers, &forged).await;
        }
        done_tx.send_modify(|n| *n += 1);
    });
    let answer = payments
        .send("ledger", Event::new("balance", json!({})))
        .timeout(Duration::from_secs(5))
        .await;
    assert_eq!(answer.unwrap(), json!({ "cents": 100 }));
    assert!(victim.counters().rejected >= 1);
}

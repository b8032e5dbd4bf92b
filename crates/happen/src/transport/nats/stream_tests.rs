//! A stream's consumer asked by its producer (a raw client in the
//! producer's place, speaking the wire protocol): the answer that makes
//! good credits lost on the way.

use std::time::Duration;

use futures::StreamExt;
use happen_test::NatsServer;

use super::tests::within;
use super::wire::{self, Credit, Reply};
use crate::NatsConfig;
use crate::prelude::*;
use crate::stream::{STREAM_WINDOW, StreamItem};

/// Probes a stream's consumer as its producer does: `(client, probe
/// subject, credit subject)`; its answer on the credit subject, if any.
async fn probe(
    (raw, subject, credit): (&async_nats::Client, &str, &str),
    credits: &mut async_nats::Subscriber,
) -> Option<Credit> {
    raw.publish_with_reply(subject.to_owned(), credit.to_owned(), "".into())
        .await
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(2), credits.next()).await;
    answer
        .ok()
        .map(|m| wire::decode_credit(&m.unwrap().payload).unwrap())
}

async fn next(stream: &mut BoxStream) -> StreamItem {
    within("an item", 10, stream.next()).await.unwrap().unwrap()
}

/// A raw client in the place of node "ticker", a stream's producer, asked
/// by `reader` of a new runtime: it has the request and sent nothing yet.
struct RawProducer {
    happen: Happen,
    raw: async_nats::Client,
    /// Its credit subject, and the subscription to it.
    credit_subject: String,
    credits: async_nats::Subscriber,
    /// Where the stream's items go.
    items: async_nats::Subject,
    /// The reader's first item, and its stream (polled once already, so
    /// that the request went out).
    first: tokio::task::JoinHandle<(BoxStream, StreamItem)>,
}

type BoxStream = futures::stream::BoxStream<'static, crate::Result<StreamItem>>;

impl RawProducer {
    async fn asked(server: &NatsServer) -> RawProducer {
        let raw = async_nats::connect(server.url()).await.unwrap();
        let mut requests = raw
            .queue_subscribe("happen.node.ticker", "happen".into())
            .await
            .unwrap();
        let credit_subject = format!("{}.c7", raw.new_inbox());
        let credits = raw.subscribe(credit_subject.clone()).await.unwrap();
        happen_test::round_trip(&raw).await.unwrap();
        let happen = Happen::connect(NatsConfig::new(server.url()))
            .await
            .unwrap();
        let mut stream = happen
            .node("reader")
            .unwrap()
            .send("ticker", Event::new("ticks", json!(null)))
            .timeout(Duration::from_secs(60))
            .stream();
        let first = tokio::spawn(async move {
            let item = next(&mut stream).await;
            (stream, item)
        });
        let request = within("the request", 10, requests.next()).await.unwrap();
        let items = request.reply.expect("a request names where to answer");
        RawProducer {
            happen,
            raw,
            credit_subject,
            credits,
            items,
            first,
        }
    }
}

/// A reader that took every item it was sent, whose credits were all
/// lost (the raw producer reads and drops them, as an outage would), never
/// reports again: only the answer to the producer's probe tells how far it
/// got. That count leaves out the items that arrived but wait unread, and
/// follows the reader as it takes more; once the stream is dropped, the
/// answer is a cancel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_whose_credits_were_lost_tells_a_probe_how_many_items_it_took() {
    const W: u64 = STREAM_WINDOW as u64;
    let server = NatsServer::start().unwrap();
    let RawProducer {
        happen,
        raw,
        credit_subject,
        mut credits,
        items,
        first,
    } = RawProducer::asked(&server).await;
    let (inbox, token) = items.rsplit_once('.').unwrap();
    let probe_subject = format!("{inbox}.s{token}");
    let send = |seq: u64| {
        let reply = Reply::Item {
            seq,
            value: json!(seq),
            credit: (seq == 0).then(|| credit_subject.clone()),
        };
        raw.publish(items.to_owned(), wire::encode_reply(&reply).unwrap().into())
    };
    let asked = (&raw, probe_subject.as_str(), credit_subject.as_str());
    // A whole window sent and taken.
    for seq in 0..W {
        send(seq).await.unwrap();
    }
    let (mut stream, item) = within("the first item", 10, first).await.unwrap();
    assert_eq!(item, StreamItem::Item(json!(0)));
    for seq in 1..W {
        assert_eq!(next(&mut stream).await, StreamItem::Item(json!(seq)));
    }
    // Its credits are lost: the two the reader sent (after half a window
    // and after the whole one) are read here and dropped.
    for expected in [W / 2, W] {
        let lost = within("a credit", 10, credits.next()).await.unwrap();
        assert_eq!(
            wire::decode_credit(&lost.payload).unwrap(),
            Credit::Acked(expected)
        );
    }

    // Asked, the reader says how many it took.
    assert_eq!(probe(asked, &mut credits).await, Some(Credit::Acked(W)));
    // Asked by anyone with another credit subject, it says nothing (a
    // forged probe cannot lift this stream's window).
    let elsewhere = format!("{}.c8", raw.new_inbox());
    let mut other = raw.subscribe(elsewhere.clone()).await.unwrap();
    happen_test::round_trip(&raw).await.unwrap();
    let forged = (&raw, probe_subject.as_str(), elsewhere.as_str());
    assert_eq!(probe(forged, &mut other).await, None);

    // Items that arrived but wait unread are not counted as taken (they
    // travel on the same connection as the probe, so they are there first).
    for seq in W..W + W / 2 {
        send(seq).await.unwrap();
    }
    assert_eq!(probe(asked, &mut credits).await, Some(Credit::Acked(W)));
    for seq in W..W + 3 {
        assert_eq!(next(&mut stream).await, StreamItem::Item(json!(seq)));
    }
    assert_eq!(probe(asked, &mut credits).await, Some(Credit::Acked(W + 3)));

    // Dropped: the reader's cancel, then the same to a probe.
    drop(stream);
    let cancel = within("the cancel", 10, credits.next()).await.unwrap();
    assert_eq!(
        wire::decode_credit(&cancel.payload).unwrap(),
        Credit::Cancel
    );
    assert_eq!(probe(asked, &mut credits).await, Some(Credit::Cancel));
    happen.shutdown().await;
}

/// A stream from a raw producer ([`RawProducer`]) whose first item, naming
/// its credit subject, the reader has taken. Gives the runtime, the
/// stream, the client, its subscription to the credit subject and where
/// the items go.
async fn one_item_read(
    server: &NatsServer,
) -> (
    Happen,
    BoxStream,
    async_nats::Client,
    async_nats::Subscriber,
    String,
) {
    let producer = RawProducer::asked(server).await;
    let item = Reply::Item {
        seq: 0,
        value: json!(0),
        credit: Some(producer.credit_subject),
    };
    let raw = producer.raw;
    let items = producer.items.to_string();
    raw.publish(items.clone(), wire::encode_reply(&item).unwrap().into())
        .await
        .unwrap();
    let (stream, item) = within("the first item", 10, producer.first).await.unwrap();
    assert_eq!(item, StreamItem::Item(json!(0)));
    (producer.happen, stream, raw, producer.credits, items)
}

/// The reader of a stream quiet for two seconds asks its producer: the
/// count it took, on the credit subject, with a reply subject of its own.
async fn asked(credits: &mut async_nats::Subscriber) -> async_nats::Message {
    let asking = within("the reader asks", 10, credits.next()).await.unwrap();
    assert_eq!(
        wire::decode_credit(&asking.payload).unwrap(),
        Credit::Acked(1)
    );
    asking
}

/// A producer that no longer knows the stream (its end was lost on the
/// way) answers `Cancel`: the reader's stream ends as broken instead of
/// waiting for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_end_was_lost_ends_as_broken_once_its_producer_is_asked() {
    let server = NatsServer::start().unwrap();
    let (happen, mut stream, raw, mut credits, _) = one_item_read(&server).await;
    let asking = asked(&mut credits).await;
    let reply = asking.reply.expect("asked with a reply subject");
    let cancel = wire::encode_credit(&Credit::Cancel).unwrap();
    raw.publish(reply, cancel.into()).await.unwrap();
    let end = within("the stream's end", 10, stream.next()).await.unwrap();
    assert!(
        matches!(&end, Err(HappenError::StreamBroken { reason }) if reason.contains("no longer sends it")),
        "{end:?}"
    );
    assert!(stream.next().await.is_none());
    happen.shutdown().await;
}

/// A producer whose process is gone (nobody takes its credit subject):
/// "no responders" twice in a row ends the reader's stream as broken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_producer_is_gone_ends_as_broken() {
    let server = NatsServer::start().unwrap();
    let (happen, mut stream, raw, credits, _) = one_item_read(&server).await;
    drop(credits);
    happen_test::round_trip(&raw).await.unwrap();
    let gone_at = tokio::time::Instant::now();
    let end = within("the stream's end", 15, stream.next()).await.unwrap();
    println!(
        "faults: stream-producer-gone items=1 ended={:?} after-ms={}",
        end.as_ref().err(),
        gone_at.elapsed().as_millis()
    );
    assert!(
        matches!(&end, Err(HappenError::StreamBroken { reason }) if reason.contains("process is gone")),
        "{end:?}"
    );
    happen.shutdown().await;
}

/// A live producer that is only slow says nothing when asked: its reader
/// asks again and again and still takes the items that come later, and
/// the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_producer_asked_after_its_stream_keeps_it() {
    let server = NatsServer::start().unwrap();
    let (happen, mut stream, raw, mut credits, items) = one_item_read(&server).await;
    for _ in 0..3 {
        asked(&mut credits).await;
    }
    let later = [
        Reply::Item {
            seq: 1,
            value: json!(1),
            credit: None,
        },
        Reply::End {
            seq: 2,
            outcome: Box::new(Reply::Ok(Event::new("happen.response", json!("done")))),
        },
    ];
    for reply in later {
        raw.publish(items.clone(), wire::encode_reply(&reply).unwrap().into())
            .await
            .unwrap();
    }
    assert_eq!(next(&mut stream).await, StreamItem::Item(json!(1)));
    assert_eq!(next(&mut stream).await, StreamItem::Done(json!("done")));
    happen.shutdown().await;
}

/// The producer's side of being asked after a stream (a raw client in the
/// requester's place): while its flow streams it says nothing (the asking
/// only counts as credit); once the stream is over, it answers `Cancel`,
/// so that a requester whose end was lost hears it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_asked_after_a_stream_it_no_longer_sends_answers_cancel() {
    let server = NatsServer::start().unwrap();
    let happen = Happen::connect(NatsConfig::new(server.url()))
        .await
        .unwrap();
    let go = std::sync::Arc::new(tokio::sync::Notify::new());
    let held = go.clone();
    happen
        .node("producer")
        .unwrap()
        .on("export", move |_e: Event, cx: Context| {
            let held = held.clone();
            async move {
                cx.emit(json!(0)).await?;
                held.notified().await;
                Ok::<_, HappenError>(json!("done"))
            }
        })
        .unwrap();
    happen.flush().await.unwrap();

    let raw = async_nats::connect(server.url()).await.unwrap();
    let asking_reply = format!("{}.l5", raw.new_inbox());
    let mut answers = raw.subscribe(asking_reply.clone()).await.unwrap();
    happen_test::round_trip(&raw).await.unwrap();
    let mut replies = super::tests::raw_request(&raw, "producer", "export").await;
    let first = within("the first item", 10, replies.next()).await.unwrap();
    let Reply::Item { credit, .. } = wire::decode_reply(&first.payload).unwrap() else {
        panic!("not an item");
    };
    let credit = credit.expect("the first item names the credit subject");
    let ask = || {
        let payload = wire::encode_credit(&Credit::Acked(1)).unwrap();
        raw.publish_with_reply(credit.clone(), asking_reply.clone(), payload.into())
    };
    // Streaming: no answer.
    ask().await.unwrap();
    let silent = tokio::time::timeout(Duration::from_secs(1), answers.next()).await;
    assert!(silent.is_err(), "a live stream's producer answered");
    // Over: `Cancel`.
    go.notify_one();
    let end = within("the end", 10, replies.next()).await.unwrap();
    assert!(matches!(
        wire::decode_reply(&end.payload).unwrap(),
        Reply::End { seq: 1, .. }
    ));
    ask().await.unwrap();
    let answer = within("the answer", 10, answers.next()).await.unwrap();
    assert_eq!(
        wire::decode_credit(&answer.payload).unwrap(),
        Credit::Cancel
    );
    happen.shutdown().await;
}

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

async fn next(
    stream: &mut futures::stream::BoxStream<'static, crate::Result<StreamItem>>,
) -> StreamItem {
    within("an item", 10, stream.next()).await.unwrap().unwrap()
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
    let raw = async_nats::connect(server.url()).await.unwrap();
    let mut requests = raw
        .queue_subscribe("happen.node.ticker", "happen".into())
        .await
        .unwrap();
    let credit_subject = format!("{}.c7", raw.new_inbox());
    let mut credits = raw.subscribe(credit_subject.clone()).await.unwrap();
    happen_test::round_trip(&raw).await.unwrap();

    let happen = Happen::connect(NatsConfig::new(server.url()))
        .await
        .unwrap();
    let reader = happen.node("reader").unwrap();
    let mut stream = reader
        .send("ticker", Event::new("ticks", json!(null)))
        .timeout(Duration::from_secs(60))
        .stream();
    // Polled once so that the request goes out.
    let first = tokio::spawn(async move {
        let item = next(&mut stream).await;
        (stream, item)
    });
    let request = within("the request", 10, requests.next()).await.unwrap();
    let items = request.reply.expect("a request names where to answer");
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

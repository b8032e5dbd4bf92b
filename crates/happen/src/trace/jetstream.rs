//! The JetStream trace store: every process of a NATS system writes its
//! records to one stream, so a transaction's records from all of them are
//! read back together, from any process.
//!
//! A record is a JSON message on `<prefix>.trace.<correlation>.<event>`
//! (both ids escaped as in the key-value store), in the stream
//! `<PREFIX>_TRACE`, kept for the configured age and size. Records are
//! published without waiting for JetStream's acknowledgement (a trace is
//! an observation, not a delivery): a bounded queue feeds one task, and a
//! record that finds the queue full is counted as dropped.
//!
//! A drop is also said in the trace itself, since its readers are usually
//! other processes, which cannot see this one's count: the dropped records
//! are counted per transaction, and once the queue has room again (the
//! next record that fits, or a flush) each such transaction gets one
//! [`What::Dropped`] record with its count, on the subject of its first
//! dropped event. [`Transaction::dropped`](super::Transaction::dropped)
//! adds them up.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use futures::StreamExt;
use futures::future::BoxFuture;
use tokio::sync::{broadcast, mpsc, oneshot};

use super::lost::Lost;
use super::{Record, Recorder, TraceStore};
use crate::error::{HappenError, Result};
use crate::store::jetstream::{escape_key, read_all};

/// Records waiting to be published before new ones are dropped.
const QUEUE: usize = 65_536;

/// How long a JetStream trace keeps its records; see
/// [`Recorder::jetstream`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceRetention {
    /// Records older than this are removed (default: one day).
    pub max_age: Duration,
    /// The stream's size limit in bytes; the oldest records go first
    /// (default: 1 GiB).
    pub max_bytes: i64,
    /// Stream replicas in a cluster (default 1).
    pub replicas: usize,
}

impl Default for TraceRetention {
    fn default() -> Self {
        TraceRetention {
            max_age: Duration::from_secs(24 * 60 * 60),
            max_bytes: 1 << 30,
            replicas: 1,
        }
    }
}

enum Queued {
    Record(Box<Record>),
    /// Answered once everything queued before it is with the server.
    Flush(oneshot::Sender<()>),
}

struct JetStreamTrace {
    client: async_nats::Client,
    stream: stream::Stream,
    prefix: String,
    queue: mpsc::Sender<Queued>,
    dropped: Arc<AtomicU64>,
    lost: Lost,
    watchers: broadcast::Sender<Record>,
    watching: OnceLock<()>,
    /// Whether the watching subscription is with the server.
    subscribed: tokio::sync::watch::Sender<bool>,
}

fn error(what: &str, e: impl std::fmt::Display) -> HappenError {
    HappenError::transport_msg(format!("trace: {what}: {e}"))
}

impl Recorder {
    /// A recorder writing to (and reading from) a JetStream stream shared by
    /// every process connected with the same `prefix` (see
    /// [`NatsConfig::record`](crate::NatsConfig::record), which sets one
    /// up for a runtime).
    pub async fn jetstream(
        client: &async_nats::Client,
        prefix: &str,
        retention: TraceRetention,
    ) -> Result<Recorder> {
        open(client, prefix, retention, QUEUE).await
    }
}

/// A JetStream recorder whose queue holds `queue` records.
async fn open(
    client: &async_nats::Client,
    prefix: &str,
    retention: TraceRetention,
    queue: usize,
) -> Result<Recorder> {
    let js = jetstream::new(client.clone());
    let part: String = prefix
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let subject = format!("{prefix}.trace.>");
    let stream = js
        .get_or_create_stream(stream::Config {
            name: format!("{}_TRACE", part.to_uppercase()),
            subjects: vec![subject.clone()],
            max_age: retention.max_age,
            max_bytes: retention.max_bytes,
            storage: stream::StorageType::File,
            num_replicas: retention.replicas,
            ..Default::default()
        })
        .await
        .map_err(|e| error("cannot create the trace stream", e))?;
    crate::store::jetstream::check_stream_subject(&stream, &subject)?;
    let (queue, rx) = mpsc::channel(queue.max(1));
    let dropped = Arc::new(AtomicU64::new(0));
    tokio::spawn(publish(
        client.clone(),
        prefix.to_owned(),
        rx,
        dropped.clone(),
    ));
    Ok(Recorder::with_store(Arc::new(JetStreamTrace {
        client: client.clone(),
        stream,
        prefix: prefix.to_owned(),
        queue,
        dropped,
        lost: Lost::default(),
        watchers: broadcast::channel(4096).0,
        watching: OnceLock::new(),
        subscribed: tokio::sync::watch::channel(false).0,
    })))
}

fn subject(prefix: &str, correlation: &str, event: &str) -> String {
    format!(
        "{prefix}.trace.{}.{}",
        escape_key(correlation),
        escape_key(event)
    )
}

/// Publishes queued records until every sender is gone.
async fn publish(
    client: async_nats::Client,
    prefix: String,
    mut rx: mpsc::Receiver<Queued>,
    dropped: Arc<AtomicU64>,
) {
    while let Some(queued) = rx.recv().await {
        match queued {
            Queued::Record(record) => {
                let Ok(bytes) = serde_json::to_vec(&record) else {
                    continue;
                };
                let subject = subject(&prefix, &record.causal.correlation_id, &record.causal.id);
                if let Err(e) = client.publish(subject, bytes.into()).await {
                    // The client is closed: no mark would get through.
                    dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(error = %e, "trace record not published");
                }
            }
            Queued::Flush(done) => {
                let _ = client.flush().await;
                let _ = done.send(());
            }
        }
    }
}

impl JetStreamTrace {
    /// Every record on subjects matching `filter`.
    async fn read(&self, filter: String, limit: Option<u64>) -> Result<Vec<Record>> {
        self.flushed().await;
        let payloads = read_all(&self.stream, filter, limit)
            .await
            .map_err(|e| error("cannot read the trace", e))?;
        // Somebody else's bytes on our subjects are skipped, not fatal to
        // the whole answer.
        let records = payloads
            .iter()
            .filter_map(|payload| serde_json::from_slice::<Record>(payload).ok())
            .collect();
        Ok(records)
    }
}

impl JetStreamTrace {
    async fn flushed(&self) {
        // The marks of what was dropped go first, waiting for room. A mark
        // leaves the guard only once the queue has a place for it, so a
        // flush given up while it waits puts the rest back.
        let mut marks = Unsent(&self.lost, self.lost.take());
        while !marks.1.is_empty() {
            let Ok(place) = self.queue.reserve().await else {
                break;
            };
            place.send(Queued::Record(Box::new(marks.1.remove(0))));
        }
        let (tx, rx) = oneshot::channel();
        if self.queue.send(Queued::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// Marks taken for sending and not sent yet: kept again when dropped.
struct Unsent<'a>(&'a Lost, Vec<Record>);

impl Drop for Unsent<'_> {
    fn drop(&mut self) {
        for mark in self.1.drain(..) {
            self.0.put_back(mark);
        }
    }
}

impl TraceStore for JetStreamTrace {
    fn flush(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.flushed())
    }

    fn append(&self, record: Record) {
        match self.queue.try_send(Queued::Record(Box::new(record))) {
            Ok(()) if self.lost.pending() => {
                // There is room again: say what was dropped.
                self.lost.send_marks(|mark| {
                    self.queue.try_send(Queued::Record(mark)).map_err(|full| {
                        match full.into_inner() {
                            Queued::Record(mark) => Some(mark),
                            Queued::Flush(_) => None,
                        }
                    })
                });
            }
            Ok(()) => {}
            Err(full) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                if let Queued::Record(record) = full.into_inner() {
                    self.lost.add(*record, 1);
                }
            }
        }
    }

    fn transaction(&self, correlation_id: &str) -> BoxFuture<'_, Result<Vec<Record>>> {
        let filter = format!("{}.trace.{}.*", self.prefix, escape_key(correlation_id));
        Box::pin(self.read(filter, None))
    }

    fn correlation_of(&self, event_id: &str) -> BoxFuture<'_, Result<Option<String>>> {
        let filter = format!("{}.trace.*.{}", self.prefix, escape_key(event_id));
        Box::pin(async move {
            let found = self.read(filter, Some(1)).await?;
            Ok(found
                .into_iter()
                .next()
                .map(|r| r.causal.correlation_id.to_string()))
        })
    }

    fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn watching(&self) -> BoxFuture<'_, ()> {
        let mut subscribed = self.subscribed.subscribe();
        Box::pin(async move {
            let _ = subscribed.wait_for(|s| *s).await;
        })
    }

    fn watch(&self) -> broadcast::Receiver<Record> {
        let receiver = self.watchers.subscribe();
        self.watching.get_or_init(|| {
            // One subscription per process, made when first watched: the
            // records of every process, as the server passes them on.
            let (client, watchers) = (self.client.clone(), self.watchers.clone());
            let subscribed = self.subscribed.clone();
            let subject = format!("{}.trace.>", self.prefix);
            tokio::spawn(async move {
                let Ok(mut subscription) = client.subscribe(subject).await else {
                    return;
                };
                if client.flush().await.is_ok() {
                    subscribed.send_replace(true);
                }
                while let Some(message) = subscription.next().await {
                    if let Ok(record) = serde_json::from_slice::<Record>(&message.payload) {
                        let _ = watchers.send(record);
                    }
                }
            });
        });
        receiver
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::test_record as record;

    /// A queue of four: ten records made without a pause (the publishing
    /// task runs on this thread, so it publishes none meanwhile) are four
    /// kept and six dropped, and the trace says so, to any reader.
    /// A flush (or a read) given up while it waits for room keeps the marks
    /// it had not sent: the next flush sends them.
    #[tokio::test(flavor = "current_thread")]
    async fn a_flush_given_up_while_it_waits_keeps_its_marks() {
        let server = happen_test::NatsServer::start().unwrap();
        let client = async_nats::connect(server.url()).await.unwrap();
        let recorder = open(&client, "cancel", TraceRetention::default(), 4)
            .await
            .unwrap();
        for _ in 0..10 {
            recorder.keep(record("busy"));
        }
        assert_eq!(recorder.dropped(), 6);
        {
            let mut flush = Box::pin(recorder.flush());
            let polled = futures::poll!(flush.as_mut());
            assert!(polled.is_pending(), "the flush did not have to wait");
        }
        recorder.flush().await;
        let reader = Recorder::jetstream(&client, "cancel", TraceRetention::default())
            .await
            .unwrap();
        let tx = reader.transaction("busy").await.unwrap();
        assert_eq!(tx.events().len(), 4);
        assert_eq!(tx.dropped(), 6, "{tx}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn records_dropped_under_load_are_marked_in_the_trace() {
        let server = happen_test::NatsServer::start().unwrap();
        let client = async_nats::connect(server.url()).await.unwrap();
        let recorder = open(&client, "drops", TraceRetention::default(), 4)
            .await
            .unwrap();
        let records: Vec<Record> = (0..10).map(|_| record("busy")).collect();
        let first_dropped = records[4].causal.id.to_string();
        for record in records {
            recorder.keep(record);
        }
        assert_eq!(recorder.dropped(), 6);
        recorder.flush().await;

        // Read by another recorder, which dropped nothing itself.
        let reader = Recorder::jetstream(&client, "drops", TraceRetention::default())
            .await
            .unwrap();
        let tx = reader.transaction("busy").await.unwrap();
        assert_eq!(tx.events().len(), 4);
        assert_eq!(tx.dropped(), 6);
        assert!(
            tx.to_string().contains("INCOMPLETE: 6 records dropped"),
            "{tx}"
        );
        // The mark is filed under the first dropped event.
        let found = reader.transaction_of(&first_dropped).await.unwrap();
        assert_eq!(found.map(|tx| tx.dropped()), Some(6));

        // Later drops: once the publisher has made room (it runs when this
        // test yields), the next record that fits brings their mark along,
        // with no flush.
        for _ in 0..6 {
            recorder.keep(record("busy"));
        }
        assert_eq!(recorder.dropped(), 8);
        loop {
            tokio::task::yield_now().await;
            let before = recorder.dropped();
            recorder.keep(record("busy"));
            if recorder.dropped() == before {
                break;
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let tx = reader.transaction("busy").await.unwrap();
            if tx.dropped() == recorder.dropped() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the later drops were not marked within 10 s:\n{tx}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(reader.transaction("quiet").await.unwrap().dropped(), 0);
    }
}

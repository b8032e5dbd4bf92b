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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use futures::StreamExt;
use futures::future::BoxFuture;
use tokio::sync::{broadcast, mpsc, oneshot};

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
    dropped: AtomicU64,
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
        let (queue, rx) = mpsc::channel(QUEUE);
        tokio::spawn(publish(client.clone(), prefix.to_owned(), rx));
        Ok(Recorder::with_store(Arc::new(JetStreamTrace {
            client: client.clone(),
            stream,
            prefix: prefix.to_owned(),
            queue,
            dropped: AtomicU64::new(0),
            watchers: broadcast::channel(4096).0,
            watching: OnceLock::new(),
            subscribed: tokio::sync::watch::channel(false).0,
        })))
    }
}

fn subject(prefix: &str, correlation: &str, event: &str) -> String {
    format!(
        "{prefix}.trace.{}.{}",
        escape_key(correlation),
        escape_key(event)
    )
}

/// Publishes queued records until every sender is gone.
async fn publish(client: async_nats::Client, prefix: String, mut rx: mpsc::Receiver<Queued>) {
    while let Some(queued) = rx.recv().await {
        match queued {
            Queued::Record(record) => {
                let Ok(bytes) = serde_json::to_vec(&record) else {
                    continue;
                };
                let subject = subject(&prefix, &record.causal.correlation_id, &record.causal.id);
                if let Err(e) = client.publish(subject, bytes.into()).await {
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
        let (tx, rx) = oneshot::channel();
        if self.queue.send(Queued::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

impl TraceStore for JetStreamTrace {
    fn flush(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.flushed())
    }

    fn append(&self, record: Record) {
        if self
            .queue
            .try_send(Queued::Record(Box::new(record)))
            .is_err()
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
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

//! The on-disk trace store (feature `redb`): records in a redb file, kept
//! across restarts, bounded by a number of records (the oldest go first).
//!
//! Records are written by a thread of their own in batches (one commit for
//! everything that arrived since the last), so recording never waits for the
//! disk; a record that finds the queue full is counted as dropped.
//!
//! Tables: `records` maps `<correlation>\0<seq>` to the record's JSON (so one
//! transaction is one key range), `events` maps an event id to its
//! correlation id, and `order` maps the sequence number to the record's key
//! and event id, oldest first, for eviction and for listing recent
//! transactions.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use tokio::sync::{broadcast, oneshot};

use super::{Record, Recorder, TraceStore};
use crate::error::{HappenError, Result};

const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("records");
const EVENTS: TableDefinition<&str, &str> = TableDefinition::new("events");
const ORDER: TableDefinition<u64, (&str, &str)> = TableDefinition::new("order");

/// Records waiting to be written before new ones are dropped.
const QUEUE: usize = 65_536;
/// The most records written in one commit.
const BATCH: usize = 4096;

enum Queued {
    Record(Box<Record>),
    Flush(oneshot::Sender<()>),
}

struct DiskTrace {
    db: Arc<Database>,
    queue: Mutex<SyncSender<Queued>>,
    dropped: AtomicU64,
    watchers: broadcast::Sender<Record>,
}

fn error(e: impl Into<crate::error::BoxError>) -> HappenError {
    HappenError::store("trace database", e)
}

/// The key of a record: its transaction, then its number.
fn key(correlation: &str, seq: u64) -> String {
    format!("{correlation}\0{seq:020}")
}

impl Recorder {
    /// A recorder keeping up to `capacity` records in the redb file at
    /// `path` (created if needed), so that traces survive a restart; the
    /// oldest records are removed first (feature `redb`).
    pub fn on_disk(path: impl AsRef<Path>, capacity: usize) -> Result<Recorder> {
        let path = path.as_ref();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                HappenError::Config(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let db = Database::create(path).map_err(|e| {
            HappenError::Config(format!(
                "cannot open trace database {}: {e}",
                path.display()
            ))
        })?;
        let write = db.begin_write().map_err(error)?;
        write.open_table(RECORDS).map_err(error)?;
        write.open_table(EVENTS).map_err(error)?;
        write.open_table(ORDER).map_err(error)?;
        write.commit().map_err(error)?;
        let (next, len) = {
            let read = db.begin_read().map_err(error)?;
            let order = read.open_table(ORDER).map_err(error)?;
            let last = order.last().map_err(error)?.map(|(k, _)| k.value());
            (last.map_or(0, |k| k + 1), order.len().map_err(error)?)
        };
        let db = Arc::new(db);
        let (queue, rx) = sync_channel(QUEUE);
        let writer = Writer {
            db: db.clone(),
            capacity: u64::try_from(capacity.max(1)).unwrap_or(u64::MAX),
            next,
            len,
        };
        std::thread::Builder::new()
            .name("happen-trace-disk".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| HappenError::Config(format!("cannot start the trace writer: {e}")))?;
        Ok(Recorder::with_store(Arc::new(DiskTrace {
            db,
            queue: Mutex::new(queue),
            dropped: AtomicU64::new(0),
            watchers: broadcast::channel(4096).0,
        })))
    }
}

/// The thread that writes records.
struct Writer {
    db: Arc<Database>,
    capacity: u64,
    /// The next record's number.
    next: u64,
    /// Records kept.
    len: u64,
}

impl Writer {
    fn run(mut self, rx: Receiver<Queued>) {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(more) => batch.push(more),
                    Err(_) => break,
                }
            }
            let mut flushed = Vec::new();
            let records: Vec<Box<Record>> = batch
                .into_iter()
                .filter_map(|q| match q {
                    Queued::Record(r) => Some(r),
                    Queued::Flush(done) => {
                        flushed.push(done);
                        None
                    }
                })
                .collect();
            if let Err(e) = self.write(&records) {
                tracing::warn!(error = %e, records = records.len(), "trace records not written");
            }
            for done in flushed {
                let _ = done.send(());
            }
        }
    }

    fn write(&mut self, records: &[Box<Record>]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let write = self.db.begin_write().map_err(error)?;
        {
            let mut table = write.open_table(RECORDS).map_err(error)?;
            let mut events = write.open_table(EVENTS).map_err(error)?;
            let mut order = write.open_table(ORDER).map_err(error)?;
            for record in records {
                let Ok(bytes) = serde_json::to_vec(record) else {
                    continue;
                };
                let key = key(&record.causal.correlation_id, self.next);
                table
                    .insert(key.as_str(), bytes.as_slice())
                    .map_err(error)?;
                events
                    .insert(&*record.causal.id, &*record.causal.correlation_id)
                    .map_err(error)?;
                order
                    .insert(self.next, (key.as_str(), &*record.causal.id))
                    .map_err(error)?;
                self.next += 1;
                self.len += 1;
            }
            while self.len > self.capacity {
                let Some((_, oldest)) = order.pop_first().map_err(error)? else {
                    break;
                };
                let (key, event) = oldest.value();
                table.remove(key).map_err(error)?;
                events.remove(event).map_err(error)?;
                self.len -= 1;
            }
        }
        write.commit().map_err(error)
    }
}

impl DiskTrace {
    fn send(&self, queued: Queued) -> std::result::Result<(), TrySendError<Queued>> {
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .try_send(queued)
    }

    fn read(&self, correlation_id: &str) -> Result<Vec<Record>> {
        let read = self.db.begin_read().map_err(error)?;
        let table = read.open_table(RECORDS).map_err(error)?;
        let (from, to) = (
            format!("{correlation_id}\0"),
            format!("{correlation_id}\u{1}"),
        );
        let mut records = Vec::new();
        for row in table.range(from.as_str()..to.as_str()).map_err(error)? {
            let (_, bytes) = row.map_err(error)?;
            if let Ok(record) = serde_json::from_slice(bytes.value()) {
                records.push(record);
            }
        }
        Ok(records)
    }
}

impl TraceStore for DiskTrace {
    fn append(&self, record: Record) {
        if self.watchers.receiver_count() > 0 {
            let _ = self.watchers.send(record.clone());
        }
        if self.send(Queued::Record(Box::new(record))).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn transaction(&self, correlation_id: &str) -> BoxFuture<'_, Result<Vec<Record>>> {
        let correlation_id = correlation_id.to_owned();
        Box::pin(async move {
            self.flushed().await;
            self.read(&correlation_id)
        })
    }

    fn correlation_of(&self, event_id: &str) -> BoxFuture<'_, Result<Option<String>>> {
        let event_id = event_id.to_owned();
        Box::pin(async move {
            self.flushed().await;
            let read = self.db.begin_read().map_err(error)?;
            let events = read.open_table(EVENTS).map_err(error)?;
            Ok(events
                .get(event_id.as_str())
                .map_err(error)?
                .map(|c| c.value().to_owned()))
        })
    }

    fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn watch(&self) -> broadcast::Receiver<Record> {
        self.watchers.subscribe()
    }

    fn flush(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.flushed())
    }

    fn recent(&self, limit: usize) -> Vec<String> {
        let Ok(read) = self.db.begin_read() else {
            return Vec::new();
        };
        let Ok(order) = read.open_table(ORDER) else {
            return Vec::new();
        };
        let Ok(rows) = order.iter() else {
            return Vec::new();
        };
        let mut recent: Vec<String> = Vec::new();
        for row in rows.rev().flatten() {
            let (key, _) = row.1.value();
            let correlation = key.split('\0').next().unwrap_or("").to_owned();
            if !recent.contains(&correlation) {
                recent.push(correlation);
                if recent.len() == limit {
                    break;
                }
            }
        }
        recent
    }
}

impl DiskTrace {
    async fn flushed(&self) {
        let (tx, rx) = oneshot::channel();
        if self.send(Queued::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::trace::Recorder;
    use crate::trace::test_record as record;

    #[tokio::test]
    async fn records_survive_a_restart_and_the_oldest_go_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trace.redb");
        let first_id;
        {
            let recorder = Recorder::on_disk(&path, 3).unwrap();
            let a = record("a");
            first_id = a.causal.id.to_string();
            recorder.keep(a);
            recorder.keep(record("b"));
            recorder.keep(record("b"));
            recorder.flush().await;
            assert_eq!(recorder.transaction("b").await.unwrap().events().len(), 2);
            assert_eq!(
                recorder
                    .transaction_of(&first_id)
                    .await
                    .unwrap()
                    .unwrap()
                    .events()
                    .len(),
                1
            );
        }
        // Reopened: what was written is there, and numbering goes on.
        let recorder = loop {
            match Recorder::on_disk(&path, 3) {
                Ok(r) => break r,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        };
        assert_eq!(recorder.transaction("a").await.unwrap().events().len(), 1);
        recorder.keep(record("c"));
        recorder.flush().await;
        // Four records for three places: the oldest ("a") went.
        assert!(recorder.transaction("a").await.unwrap().is_empty());
        assert!(recorder.transaction_of(&first_id).await.unwrap().is_none());
        assert_eq!(recorder.transaction("b").await.unwrap().events().len(), 2);
        assert_eq!(recorder.recent(10), ["c", "b"]);
    }
}

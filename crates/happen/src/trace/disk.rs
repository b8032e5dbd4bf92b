//! The on-disk trace store (feature `redb`): records in a redb file, kept
//! across restarts, bounded by a number of records (the oldest go first).
//!
//! Records are written by a thread of their own in batches (one commit for
//! everything that arrived since the last), so recording never waits for the
//! disk; a record that finds the queue full is counted as dropped, and its
//! transaction gets a [`What::Dropped`](super::What::Dropped) mark once
//! there is room (see `lost`).
//!
//! Tables: `records` maps `<correlation>\0<seq>` to the record's JSON (so one
//! transaction is one key range), `events` maps an event id to its
//! correlation id, `event_records` counts the records kept of each event
//! (its `events` entry goes with its last record, not its first), and
//! `order` maps the sequence number to the record's key and event id,
//! oldest first, for eviction and for listing recent transactions.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use tokio::sync::{broadcast, oneshot};

use super::lost::Lost;
use super::{Record, Recorder, TraceStore};
use crate::error::{HappenError, Result};

const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("records");
const EVENTS: TableDefinition<&str, &str> = TableDefinition::new("events");
const ORDER: TableDefinition<u64, (&str, &str)> = TableDefinition::new("order");
const COUNTS: TableDefinition<&str, u64> = TableDefinition::new("event_records");

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
    lost: Lost,
    watchers: broadcast::Sender<Record>,
}

fn error(e: impl Into<crate::error::BoxError>) -> HappenError {
    HappenError::store("trace database", e)
}

/// The key of a record: its transaction (escaped), then its number.
fn key(correlation: &str, seq: u64) -> String {
    format!("{}\0{seq:020}", escape(correlation))
}

/// A correlation id as a key's first part: NUL, which ends that part,
/// becomes U+0001 U+0002, and U+0001, the escape, U+0001 U+0001. The
/// escaped id holds no NUL, so one transaction's key range holds no record
/// of another (unescaped, reading `a` also read `a\0b`), and [`unescape`]
/// gives the id back. An id with neither (every id Happen makes) is its
/// own key, as in files written before.
fn escape(correlation: &str) -> std::borrow::Cow<'_, str> {
    if !correlation.contains(['\0', '\u{1}']) {
        return correlation.into();
    }
    let mut escaped = String::with_capacity(correlation.len() + 2);
    for c in correlation.chars() {
        match c {
            '\0' => escaped.push_str("\u{1}\u{2}"),
            '\u{1}' => escaped.push_str("\u{1}\u{1}"),
            c => escaped.push(c),
        }
    }
    escaped.into()
}

/// The correlation id [`escape`] made `escaped` from.
fn unescape(escaped: &str) -> String {
    let mut correlation = String::with_capacity(escaped.len());
    let mut chars = escaped.chars();
    while let Some(c) = chars.next() {
        match c {
            '\u{1}' => match chars.next() {
                Some('\u{2}') => correlation.push('\0'),
                Some('\u{1}') => correlation.push('\u{1}'),
                // No escape (a key written before keys were escaped): as
                // it was.
                Some(other) => {
                    correlation.push('\u{1}');
                    correlation.push(other);
                }
                None => correlation.push('\u{1}'),
            },
            c => correlation.push(c),
        }
    }
    correlation
}

impl Recorder {
    /// A recorder keeping up to `capacity` records in the redb file at
    /// `path` (created if needed), so that traces survive a restart; the
    /// oldest records are removed first (feature `redb`).
    pub fn on_disk(path: impl AsRef<Path>, capacity: usize) -> Result<Recorder> {
        Ok(Recorder::with_store(open(path.as_ref(), capacity, QUEUE)?))
    }
}

/// The store of [`Recorder::on_disk`], its queue holding `queue` records.
fn open(path: &Path, capacity: usize, queue: usize) -> Result<Arc<DiskTrace>> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| HappenError::Config(format!("cannot create {}: {e}", dir.display())))?;
    }
    let db = Database::create(path).map_err(|e| {
        HappenError::Config(format!(
            "cannot open trace database {}: {e}",
            path.display()
        ))
    })?;
    let write = db.begin_write().map_err(error)?;
    write.open_table(RECORDS).map_err(error)?;
    {
        let mut events = write.open_table(EVENTS).map_err(error)?;
        let order = write.open_table(ORDER).map_err(error)?;
        let mut counts = write.open_table(COUNTS).map_err(error)?;
        if counts.is_empty().map_err(error)? {
            // A file written before records were counted: count them,
            // and index again the events whose first record went.
            for row in order.iter().map_err(error)? {
                let (_, kept) = row.map_err(error)?;
                let (key, event) = kept.value();
                if count(&mut counts, event, 1).map_err(error)? == 1
                    && events.get(event).map_err(error)?.is_none()
                {
                    let correlation = unescape(key.split('\0').next().unwrap_or(""));
                    events.insert(event, correlation.as_str()).map_err(error)?;
                }
            }
        }
    }
    write.commit().map_err(error)?;
    let (next, len) = {
        let read = db.begin_read().map_err(error)?;
        let order = read.open_table(ORDER).map_err(error)?;
        let last = order.last().map_err(error)?.map(|(k, _)| k.value());
        (last.map_or(0, |k| k + 1), order.len().map_err(error)?)
    };
    let db = Arc::new(db);
    let (queue, rx) = sync_channel(queue);
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
    Ok(Arc::new(DiskTrace {
        db,
        queue: Mutex::new(queue),
        dropped: AtomicU64::new(0),
        lost: Lost::default(),
        watchers: broadcast::channel(4096).0,
    }))
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
            let mut counts = write.open_table(COUNTS).map_err(error)?;
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
                count(&mut counts, &record.causal.id, 1).map_err(error)?;
                self.next += 1;
                self.len += 1;
            }
            while self.len > self.capacity {
                let Some((_, oldest)) = order.pop_first().map_err(error)? else {
                    break;
                };
                let (key, event) = oldest.value();
                table.remove(key).map_err(error)?;
                // The event's other records may still be kept (a flow's end
                // is recorded after its start): its index goes with the last.
                if count(&mut counts, event, -1).map_err(error)? == 0 {
                    events.remove(event).map_err(error)?;
                }
                self.len -= 1;
            }
        }
        write.commit().map_err(error)
    }
}

/// Adds `by` to the number of records kept of `event`, removing the count
/// at zero; gives the new number.
fn count(
    counts: &mut redb::Table<'_, &str, u64>,
    event: &str,
    by: i64,
) -> std::result::Result<u64, redb::StorageError> {
    let now = counts.get(event)?.map_or(0, |n| n.value());
    let next = now.saturating_add_signed(by);
    if next == 0 {
        counts.remove(event)?;
    } else {
        counts.insert(event, next)?;
    }
    Ok(next)
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
        let escaped = escape(correlation_id);
        let (from, to) = (format!("{escaped}\0"), format!("{escaped}\u{1}"));
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
        match self.send(Queued::Record(Box::new(record))) {
            Ok(()) if self.lost.pending() => self.send_marks(),
            Ok(()) => {}
            Err(TrySendError::Full(queued) | TrySendError::Disconnected(queued)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                if let Queued::Record(record) = queued {
                    self.lost.add(*record, 1);
                }
            }
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
            let correlation = unescape(key.split('\0').next().unwrap_or(""));
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
    /// Queues the marks of what was dropped, those that fit.
    fn send_marks(&self) {
        self.lost.send_marks(|mark| {
            self.send(Queued::Record(mark)).map_err(|e| match e {
                TrySendError::Full(Queued::Record(mark)) => Some(mark),
                _ => None,
            })
        });
    }

    async fn flushed(&self) {
        self.send_marks();
        let (tx, rx) = oneshot::channel();
        if self.send(Queued::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::trace::test_record as record;
    use crate::trace::{Recorder, What};

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

    /// An event's records kept beyond its first: evicting the first leaves
    /// its index entry, which goes with the last.
    #[tokio::test]
    async fn an_event_stays_findable_while_any_of_its_records_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let recorder = Recorder::on_disk(dir.path().join("trace.redb"), 3).unwrap();
        let stamped = record("a");
        let event = stamped.causal.id.to_string();
        let mut delivered = stamped.clone();
        delivered.what = What::Delivered { node: "n".into() };
        recorder.keep(stamped);
        recorder.keep(delivered);
        recorder.keep(record("b"));
        recorder.keep(record("b"));
        recorder.flush().await;
        // Four records for three places: the event's first record went, its
        // second is kept, and the event is still found by its id.
        let tx = recorder.transaction_of(&event).await.unwrap();
        let tx = tx.expect("the event's remaining record is indexed");
        assert_eq!(tx.events()[0].delivered_to, ["n"]);
        recorder.keep(record("b"));
        recorder.flush().await;
        assert!(recorder.transaction_of(&event).await.unwrap().is_none());
    }

    /// Correlation ids that differ after a NUL (or hold the escape) are
    /// different transactions on disk, listed as themselves.
    #[test]
    fn keys_read_back_as_the_ids_they_were_made_from() {
        for id in ["a", "a\0b", "a\u{1}", "a\u{1}\u{2}", "\0\u{1}\0", "plain"] {
            assert_eq!(super::unescape(&super::escape(id)), id);
        }
        // A key written before keys were escaped reads as it was.
        assert_eq!(super::unescape("a\u{1}x"), "a\u{1}x");
        assert_eq!(super::unescape("a\u{1}"), "a\u{1}");
    }

    #[tokio::test]
    async fn correlation_ids_with_a_nul_are_kept_apart() {
        let dir = tempfile::tempdir().unwrap();
        let recorder = Recorder::on_disk(dir.path().join("trace.redb"), 100).unwrap();
        let ids = ["a", "a\0b", "a\0", "a\u{1}", "a\u{1}\u{2}", "\0"];
        for id in ids {
            recorder.keep(record(id));
        }
        recorder.flush().await;
        for id in ids {
            let tx = recorder.transaction(id).await.unwrap();
            assert_eq!(tx.events().len(), 1, "{id:?}");
            assert_eq!(tx.events()[0].causal.correlation_id, id);
        }
        let mut recent = recorder.recent(10);
        recent.sort();
        let mut expected = ids.map(String::from).to_vec();
        expected.sort();
        assert_eq!(recent, expected);
    }

    /// A file written before records were counted: opened, its records are
    /// counted (an event's first eviction keeps its index entry) and an
    /// event whose entry went with its first record is indexed again.
    #[tokio::test]
    async fn a_file_written_before_counting_is_counted_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trace.redb");
        let stamped = record("a");
        let event = stamped.causal.id.to_string();
        let mut delivered = stamped.clone();
        delivered.what = What::Delivered { node: "n".into() };
        {
            let recorder = Recorder::on_disk(&path, 3).unwrap();
            recorder.keep(stamped);
            recorder.keep(delivered);
            recorder.flush().await;
        }
        // Made old: no counts, and the event's index entry gone.
        let db = loop {
            match redb::Database::create(&path) {
                Ok(db) => break db,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        };
        let write = db.begin_write().unwrap();
        assert!(write.delete_table(super::COUNTS).unwrap());
        write
            .open_table(super::EVENTS)
            .unwrap()
            .remove(event.as_str())
            .unwrap();
        write.commit().unwrap();
        drop(db);
        let recorder = Recorder::on_disk(&path, 3).unwrap();
        assert!(recorder.transaction_of(&event).await.unwrap().is_some());
        recorder.keep(record("b"));
        recorder.keep(record("b"));
        recorder.flush().await;
        // The event's first record went; its second keeps it indexed.
        let tx = recorder.transaction_of(&event).await.unwrap();
        assert_eq!(tx.expect("still indexed").events()[0].delivered_to, ["n"]);
    }

    /// A queue of two and a writer held up (it waits for a write
    /// transaction of the test's): records are dropped, and once the
    /// writer goes on, the transaction's mark says how many.
    #[tokio::test]
    async fn records_dropped_under_load_are_marked_in_the_trace() {
        let dir = tempfile::tempdir().unwrap();
        let trace = super::open(&dir.path().join("trace.redb"), 1000, 2).unwrap();
        let recorder = Recorder::with_store(trace.clone());
        let held = trace.db.begin_write().unwrap();
        // The writer takes at most one batch before it waits: then the
        // queue fills and the next records are dropped.
        let mut sent: u64 = 0;
        while recorder.dropped() < 3 {
            recorder.keep(record("busy"));
            sent += 1;
        }
        held.abort().unwrap();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let tx = recorder.transaction("busy").await.unwrap();
            if tx.dropped() == recorder.dropped() {
                assert_eq!(tx.events().len() as u64, sent - tx.dropped());
                assert!(tx.to_string().contains("INCOMPLETE"), "{tx}");
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the drops were not marked within 10 s:\n{tx}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

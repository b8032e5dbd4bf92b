//! The embedded runtime's store: state, global state and history in memory,
//! optionally written through to a database file ([`super::disk`]) so that
//! they survive a restart of the process.
//!
//! With a disk, every change is written and committed there first and only
//! then made visible in memory, one change at a time: a failed write leaves
//! nothing changed, and the file always holds the newest value a reader
//! could have seen.

use std::collections::{BTreeMap, HashMap, VecDeque};
#[cfg(feature = "redb")]
use std::sync::Arc;
use std::sync::Mutex;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::applied::Applied;
use super::disk::{Disk, Table};
use super::{Saved, Store, Versioned};
use crate::error::{HappenError, Result};
use crate::event::now_millis;
use crate::state::global::GlobalChange;
use crate::state::temporal::{Snapshot, TemporalConfig, retain};

#[derive(Default)]
pub(crate) struct Data {
    pub(crate) state: HashMap<String, Versioned>,
    pub(crate) global: BTreeMap<String, Value>,
    pub(crate) history: HashMap<String, VecDeque<Snapshot>>,
    /// Events that waited for durable nodes when the disk was last open.
    #[cfg_attr(not(feature = "redb"), allow(dead_code))]
    pub(crate) spool: BTreeMap<String, Vec<u8>>,
}

pub(crate) struct MemoryStore {
    data: Mutex<Data>,
    disk: Option<Disk>,
    /// Held across "check, write to disk, publish in memory" so that changes
    /// reach the disk in the order they become visible.
    writer: tokio::sync::Mutex<()>,
    temporal: TemporalConfig,
    /// Who watches global keys: each gets the changes to its key (or to
    /// every key), in the order they were applied, none skipped.
    watchers: Mutex<Vec<Watcher>>,
    /// How many watchers there may be before dropped ones are let go.
    prune_watchers_at: std::sync::atomic::AtomicUsize,
    /// Events for durable nodes, on the disk (when there is one).
    #[cfg(feature = "redb")]
    spool: Option<Arc<crate::spool::Spool>>,
}

/// A watcher of global keys ([`Store::global_watch`]).
struct Watcher {
    /// The key watched; `None` for every key.
    key: Option<String>,
    tx: mpsc::UnboundedSender<GlobalChange>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl MemoryStore {
    pub(crate) fn in_memory(temporal: TemporalConfig) -> Self {
        Self::with(Data::default(), None, temporal)
    }

    fn with(data: Data, disk: Option<Disk>, temporal: TemporalConfig) -> Self {
        MemoryStore {
            data: Mutex::new(data),
            disk,
            writer: tokio::sync::Mutex::new(()),
            temporal,
            watchers: Mutex::default(),
            prune_watchers_at: std::sync::atomic::AtomicUsize::new(16),
            #[cfg(feature = "redb")]
            spool: None,
        }
    }

    /// Opens (or creates) `dir/happen.redb` and loads what it holds.
    #[cfg(feature = "redb")]
    pub(crate) fn persistent(dir: &std::path::Path, temporal: TemporalConfig) -> Result<Self> {
        let (disk, mut data) = Disk::open(dir)?;
        let pending = std::mem::take(&mut data.spool);
        let spool = Arc::new(crate::spool::Spool::new(disk.clone(), pending));
        let mut store = Self::with(data, Some(disk), temporal);
        store.spool = Some(spool);
        Ok(store)
    }

    /// Writes one row to the disk, if there is one.
    async fn write_through(&self, table: Table, key: &str, bytes: Option<Vec<u8>>) -> Result<()> {
        match &self.disk {
            Some(disk) => disk.write(table, key, bytes).await,
            None => Ok(()),
        }
    }

    /// Hands a change of `key` to the watchers that want it (and forgets
    /// those that are gone). Called with the data locked.
    fn tell_watchers(&self, key: &str, value: Option<&Value>) {
        lock(&self.watchers).retain(|watcher| {
            if watcher.key.as_deref().is_some_and(|k| k != key) {
                return !watcher.tx.is_closed();
            }
            let change = GlobalChange {
                key: key.to_owned(),
                value: value.cloned(),
            };
            watcher.tx.send(change).is_ok()
        });
    }

    /// The writer's turn, when changes must reach a disk in order.
    async fn turn(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match self.disk {
            Some(_) => Some(self.writer.lock().await),
            None => None,
        }
    }
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>> {
    Ok(serde_json::to_vec(value)?)
}

/// A state row on disk: `[value, revision]`, or with the marks of
/// exactly-once updates `[value, revision, marks]`.
fn encode_state(value: &Value, revision: u64, applied: &Applied) -> Result<Vec<u8>> {
    if applied.is_empty() {
        encode(&(value, revision))
    } else {
        encode(&(value, revision, applied))
    }
}

/// Reads what [`encode_state`] wrote.
#[cfg_attr(not(feature = "redb"), allow(dead_code))]
pub(crate) fn decode_state(bytes: &[u8]) -> Result<Versioned> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Row {
        Marked(Value, u64, Applied),
        Plain(Value, u64),
    }
    Ok(match decode(bytes)? {
        Row::Marked(value, revision, applied) => Versioned {
            value,
            revision,
            applied,
        },
        Row::Plain(value, revision) => Versioned {
            value,
            revision,
            applied: Applied::default(),
        },
    })
}

#[cfg_attr(not(feature = "redb"), allow(dead_code))]
pub(crate) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| HappenError::store("the state database holds an unreadable value", e))
}

impl Store for MemoryStore {
    #[cfg(feature = "redb")]
    fn spool(&self) -> Option<Arc<crate::spool::Spool>> {
        self.spool.clone()
    }

    fn load<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<Option<Versioned>>> {
        let found = lock(&self.data).state.get(node).cloned();
        Box::pin(std::future::ready(Ok(found)))
    }

    fn save<'a>(
        &'a self,
        node: &'a str,
        value: &'a Value,
        applied: &'a Applied,
        expected: Option<u64>,
    ) -> BoxFuture<'a, Result<Saved>> {
        Box::pin(async move {
            let _turn = self.turn().await;
            let current = lock(&self.data).state.get(node).map(|v| v.revision);
            if current != expected {
                return Ok(Saved::Conflict);
            }
            let revision = current.unwrap_or(0) + 1;
            if self.disk.is_some() {
                let bytes = encode_state(value, revision, applied)?;
                self.write_through(Table::State, node, Some(bytes)).await?;
            }
            let mut data = lock(&self.data);
            // Without a disk there is no writer's turn: check again under
            // the lock that makes the change visible.
            if data.state.get(node).map(|v| v.revision) != expected {
                return Ok(Saved::Conflict);
            }
            data.state.insert(
                node.to_owned(),
                Versioned {
                    value: value.clone(),
                    revision,
                    applied: applied.clone(),
                },
            );
            Ok(Saved::Done(revision))
        })
    }

    // In revision order already: a node's updates here take turns, and
    // record after their save.
    fn record<'a>(
        &'a self,
        node: &'a str,
        snapshot: Snapshot,
        _: u64,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let _turn = self.turn().await;
            if self.disk.is_none() {
                let mut data = lock(&self.data);
                let history = data.history.entry(node.to_owned()).or_default();
                history.push_back(snapshot);
                retain(history, &self.temporal, now_millis());
                return Ok(());
            }
            let mut history = lock(&self.data)
                .history
                .get(node)
                .cloned()
                .unwrap_or_default();
            history.push_back(snapshot);
            retain(&mut history, &self.temporal, now_millis());
            self.write_through(Table::History, node, Some(encode(&history)?))
                .await?;
            lock(&self.data).history.insert(node.to_owned(), history);
            Ok(())
        })
    }

    fn history<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<Vec<Snapshot>>> {
        let mut data = lock(&self.data);
        let snapshots = match data.history.get_mut(node) {
            Some(history) => {
                retain(history, &self.temporal, now_millis());
                history.iter().cloned().collect()
            }
            None => Vec::new(),
        };
        Box::pin(std::future::ready(Ok(snapshots)))
    }

    fn global_get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Value>>> {
        let found = lock(&self.data).global.get(key).cloned();
        Box::pin(std::future::ready(Ok(found)))
    }

    fn global_set<'a>(&'a self, key: &'a str, value: &'a Value) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let _turn = self.turn().await;
            if self.disk.is_some() {
                self.write_through(Table::Global, key, Some(encode(value)?))
                    .await?;
            }
            let mut data = lock(&self.data);
            data.global.insert(key.to_owned(), value.clone());
            // Told while the change is applied: watchers see changes in
            // the order of the map's.
            self.tell_watchers(key, Some(value));
            drop(data);
            Ok(())
        })
    }

    fn global_delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let _turn = self.turn().await;
            if !lock(&self.data).global.contains_key(key) {
                return Ok(());
            }
            self.write_through(Table::Global, key, None).await?;
            let mut data = lock(&self.data);
            data.global.remove(key);
            self.tell_watchers(key, None);
            drop(data);
            Ok(())
        })
    }

    fn global_keys(&self) -> BoxFuture<'_, Result<Vec<String>>> {
        let keys = lock(&self.data).global.keys().cloned().collect();
        Box::pin(std::future::ready(Ok(keys)))
    }

    fn global_watch<'a>(
        &'a self,
        key: Option<&'a str>,
    ) -> BoxFuture<'a, Result<BoxStream<'static, GlobalChange>>> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut watchers = lock(&self.watchers);
        // Watchers whose stream was dropped go at the next write; with no
        // write they would pile up (a leak audit: 2.4 KB per dropped watch,
        // 238 MB over 100,000). Checked each time the list has doubled
        // since the last check, so the check costs one look per watch on
        // average.
        let prune_at = &self.prune_watchers_at;
        if watchers.len() >= prune_at.load(std::sync::atomic::Ordering::Relaxed) {
            watchers.retain(|watcher| !watcher.tx.is_closed());
            let next = (2 * watchers.len()).max(16);
            prune_at.store(next, std::sync::atomic::Ordering::Relaxed);
        }
        watchers.push(Watcher {
            key: key.map(str::to_owned),
            tx,
        });
        let changes = UnboundedReceiverStream::new(rx);
        Box::pin(std::future::ready(Ok(changes.boxed())))
    }
}

#[cfg(all(test, feature = "redb"))]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::atomic::Ordering;

    fn fail_next_write(store: &MemoryStore) {
        if let Some(disk) = &store.disk {
            disk.fail_next.store(true, Ordering::SeqCst);
        }
    }

    /// A write the disk refuses is an error and changes nothing: not the
    /// state, not global state, not the history, in memory or on disk.
    #[tokio::test(flavor = "current_thread")]
    async fn a_failed_disk_write_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = MemoryStore::persistent(dir.path(), TemporalConfig::default()).unwrap();
        let Saved::Done(revision) = store
            .save("n", &json!(1), &Applied::default(), None)
            .await
            .unwrap()
        else {
            panic!("first save conflicts");
        };
        store.global_set("k", &json!("old")).await.unwrap();

        fail_next_write(&store);
        let err = store
            .save("n", &json!(2), &Applied::default(), Some(revision))
            .await
            .unwrap_err();
        assert!(matches!(err, HappenError::Store { .. }), "{err:?}");
        assert_eq!(store.load("n").await.unwrap().unwrap().value, json!(1));

        fail_next_write(&store);
        assert!(store.global_set("k", &json!("new")).await.is_err());
        assert_eq!(store.global_get("k").await.unwrap(), Some(json!("old")));

        fail_next_write(&store);
        assert!(store.global_delete("k").await.is_err());
        assert_eq!(store.global_get("k").await.unwrap(), Some(json!("old")));

        drop(store);
        let again = MemoryStore::persistent(dir.path(), TemporalConfig::default()).unwrap();
        assert_eq!(again.load("n").await.unwrap().unwrap().value, json!(1));
        assert_eq!(again.global_get("k").await.unwrap(), Some(json!("old")));
        // Updates go on from the stored revision.
        assert_eq!(
            again
                .save("n", &json!(3), &Applied::default(), Some(revision))
                .await
                .unwrap(),
            Saved::Done(revision + 1)
        );
    }
}

#[cfg(test)]
mod watch_tests {
    use super::*;

    /// Watches dropped while nothing is written do not pile up: 100,000
    /// watched and dropped leave fewer than 32 entries (a leak audit saw
    /// 238 MB held by them, freed only by the next write).
    #[tokio::test(flavor = "current_thread")]
    async fn dropped_watches_are_let_go_without_a_write() {
        let store = MemoryStore::in_memory(TemporalConfig::default());
        let mut kept = Vec::new();
        for _ in 0..31 {
            kept.push(store.global_watch(Some("kept")).await.unwrap());
        }
        for _ in 0..100_000 {
            drop(store.global_watch(Some("config")).await.unwrap());
        }
        let left = lock(&store.watchers).len();
        assert!(left < 2 * 32, "{left} watchers left");
        // The live ones are looked at once per doubling, not at every watch.
        assert!(
            store
                .prune_watchers_at
                .load(std::sync::atomic::Ordering::Relaxed)
                >= 62
        );
        assert!(
            lock(&store.watchers).iter().any(|w| !w.tx.is_closed()),
            "the live watch stays"
        );
        drop(kept);
    }
}

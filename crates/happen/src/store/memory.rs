//! The embedded runtime's store: state, global state and history in memory,
//! optionally written through to a redb database file so that they survive a
//! restart of the process.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde_json::Value;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;

use super::{Saved, Store, Versioned};
use crate::error::{HappenError, Result};
use crate::event::now_millis;
use crate::state::global::GlobalChange;
use crate::state::temporal::{Snapshot, TemporalConfig, retain};

const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");
const GLOBAL: TableDefinition<&str, &[u8]> = TableDefinition::new("global");
const HISTORY: TableDefinition<&str, &[u8]> = TableDefinition::new("history");

#[derive(Default)]
struct Data {
    state: HashMap<String, Versioned>,
    global: BTreeMap<String, Value>,
    history: HashMap<String, VecDeque<Snapshot>>,
}

pub(crate) struct MemoryStore {
    data: Mutex<Data>,
    disk: Option<Arc<Database>>,
    temporal: TemporalConfig,
    changes: broadcast::Sender<GlobalChange>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn disk_error(e: impl std::fmt::Display) -> HappenError {
    HappenError::Transport(format!("state database: {e}"))
}

impl MemoryStore {
    pub(crate) fn in_memory(temporal: TemporalConfig) -> Self {
        MemoryStore {
            data: Mutex::new(Data::default()),
            disk: None,
            temporal,
            changes: broadcast::channel(1024).0,
        }
    }

    /// Opens (or creates) `dir/happen.redb` and loads what it holds.
    pub(crate) fn persistent(dir: &Path, temporal: TemporalConfig) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| {
            HappenError::Config(format!(
                "cannot create state directory {}: {e}",
                dir.display()
            ))
        })?;
        let db = Database::create(dir.join("happen.redb")).map_err(|e| {
            HappenError::Config(format!(
                "cannot open state database in {}: {e}",
                dir.display()
            ))
        })?;
        let mut data = Data::default();
        {
            let write = db.begin_write().map_err(disk_error)?;
            // Make sure the tables exist before reading them.
            write.open_table(STATE).map_err(disk_error)?;
            write.open_table(GLOBAL).map_err(disk_error)?;
            write.open_table(HISTORY).map_err(disk_error)?;
            write.commit().map_err(disk_error)?;
            let read = db.begin_read().map_err(disk_error)?;
            for row in read
                .open_table(STATE)
                .map_err(disk_error)?
                .iter()
                .map_err(disk_error)?
            {
                let (k, v) = row.map_err(disk_error)?;
                let (value, revision): (Value, u64) = decode(v.value())?;
                data.state
                    .insert(k.value().to_owned(), Versioned { value, revision });
            }
            for row in read
                .open_table(GLOBAL)
                .map_err(disk_error)?
                .iter()
                .map_err(disk_error)?
            {
                let (k, v) = row.map_err(disk_error)?;
                data.global.insert(k.value().to_owned(), decode(v.value())?);
            }
            for row in read
                .open_table(HISTORY)
                .map_err(disk_error)?
                .iter()
                .map_err(disk_error)?
            {
                let (k, v) = row.map_err(disk_error)?;
                data.history
                    .insert(k.value().to_owned(), decode(v.value())?);
            }
        }
        Ok(MemoryStore {
            data: Mutex::new(data),
            disk: Some(Arc::new(db)),
            temporal,
            changes: broadcast::channel(1024).0,
        })
    }

    /// Writes one row (or removes it, for `None`) to the database file.
    async fn write_through(
        &self,
        table: TableDefinition<'static, &'static str, &'static [u8]>,
        key: &str,
        bytes: Option<Vec<u8>>,
    ) -> Result<()> {
        let Some(db) = self.disk.clone() else {
            return Ok(());
        };
        let key = key.to_owned();
        tokio::task::spawn_blocking(move || -> Result<()> {
            let write = db.begin_write().map_err(disk_error)?;
            {
                let mut t = write.open_table(table).map_err(disk_error)?;
                match bytes {
                    Some(bytes) => {
                        t.insert(key.as_str(), bytes.as_slice())
                            .map_err(disk_error)?;
                    }
                    None => {
                        t.remove(key.as_str()).map_err(disk_error)?;
                    }
                }
            }
            write.commit().map_err(disk_error)
        })
        .await
        .map_err(disk_error)?
    }
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| HappenError::Codec(e.to_string()))
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| HappenError::Codec(format!("state database holds an unreadable value: {e}")))
}

impl Store for MemoryStore {
    fn load<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<Option<Versioned>>> {
        let found = lock(&self.data).state.get(node).cloned();
        Box::pin(std::future::ready(Ok(found)))
    }

    fn save<'a>(
        &'a self,
        node: &'a str,
        value: &'a Value,
        expected: Option<u64>,
    ) -> BoxFuture<'a, Result<Saved>> {
        Box::pin(async move {
            let revision = {
                let mut data = lock(&self.data);
                let current = data.state.get(node).map(|v| v.revision);
                if current != expected {
                    return Ok(Saved::Conflict);
                }
                let revision = current.unwrap_or(0) + 1;
                data.state.insert(
                    node.to_owned(),
                    Versioned {
                        value: value.clone(),
                        revision,
                    },
                );
                revision
            };
            if self.disk.is_some() {
                self.write_through(STATE, node, Some(encode(&(value, revision))?))
                    .await?;
            }
            Ok(Saved::Done(revision))
        })
    }

    fn record<'a>(&'a self, node: &'a str, snapshot: Snapshot) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let bytes = {
                let mut data = lock(&self.data);
                let history = data.history.entry(node.to_owned()).or_default();
                history.push_back(snapshot);
                retain(history, &self.temporal, now_millis());
                if self.disk.is_some() {
                    Some(encode(&*history)?)
                } else {
                    None
                }
            };
            if let Some(bytes) = bytes {
                self.write_through(HISTORY, node, Some(bytes)).await?;
            }
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
            lock(&self.data)
                .global
                .insert(key.to_owned(), value.clone());
            if self.disk.is_some() {
                self.write_through(GLOBAL, key, Some(encode(value)?))
                    .await?;
            }
            let _ = self.changes.send(GlobalChange {
                key: key.to_owned(),
                value: Some(value.clone()),
            });
            Ok(())
        })
    }

    fn global_delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let existed = lock(&self.data).global.remove(key).is_some();
            if existed {
                self.write_through(GLOBAL, key, None).await?;
                let _ = self.changes.send(GlobalChange {
                    key: key.to_owned(),
                    value: None,
                });
            }
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
        let key = key.map(str::to_owned);
        let changes = BroadcastStream::new(self.changes.subscribe()).filter_map(move |change| {
            let wanted = match change {
                Ok(change) => Some(change).filter(|c| key.as_deref().is_none_or(|k| k == c.key)),
                Err(lagged) => {
                    // A watcher more than 1024 changes behind misses some;
                    // say so rather than pretend it saw everything.
                    tracing::warn!(%lagged, "a global state watcher fell behind and skipped changes");
                    None
                }
            };
            std::future::ready(wanted)
        });
        Box::pin(std::future::ready(Ok(changes.boxed())))
    }
}

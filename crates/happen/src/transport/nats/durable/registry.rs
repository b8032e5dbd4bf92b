//! Which nodes are durable, system-wide: a KV bucket keyed by node id whose
//! values say the node's mode and the broadcast filters of its handlers.
//! Every runtime loads it at connect and watches it, so that events (and
//! matching broadcasts) to a durable node go through the stream from every
//! process, also while the node's own process is down.

use std::collections::HashMap;
use std::sync::RwLock;

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::unavailable;
use crate::error::Result;
use crate::store::jetstream::{escape_key, unescape_key};
use crate::transport::nats::subjects::subject_matches;

/// What the registry says of one durable node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Record {
    /// `at-least-once` or `exactly-once`.
    pub(super) mode: String,
    /// The broadcast filters of its handlers (event-type subject filters:
    /// `order.*`, `audit.>`, `>` for a function matcher).
    #[serde(default)]
    pub(super) filters: Vec<String>,
}

pub(super) struct Registry {
    kv: kv::Store,
    nodes: RwLock<HashMap<String, Record>>,
}

impl Registry {
    /// Loads every durable node the bucket names.
    pub(super) async fn load(kv: kv::Store) -> Registry {
        let registry = Registry {
            kv,
            nodes: RwLock::new(HashMap::new()),
        };
        if let Ok(mut keys) = registry.kv.keys().await {
            while let Some(Ok(key)) = keys.next().await {
                if let Ok(Some(value)) = registry.kv.get(key.clone()).await {
                    registry.learn(&key, Some(&value));
                }
            }
        }
        registry
    }

    /// Follows the bucket until the runtime ends (a task of its own).
    pub(super) async fn watch(self: std::sync::Arc<Self>) {
        let Ok(mut entries) = self.kv.watch_all().await else {
            tracing::warn!("durable nodes registered later are not followed");
            return;
        };
        while let Some(entry) = entries.next().await {
            let Ok(entry) = entry else { continue };
            let value = (entry.operation == kv::Operation::Put).then_some(&entry.value);
            self.learn(&entry.key, value);
        }
    }

    fn learn(&self, key: &str, value: Option<&Bytes>) {
        let Some(node) = unescape_key(key) else {
            return;
        };
        let mut nodes = self.nodes.write().unwrap_or_else(|p| p.into_inner());
        match value.map(|v| serde_json::from_slice::<Record>(v)) {
            // Filters only grow (a handler's removal leaves its filter:
            // the consumer acknowledges what no handler takes), so a late
            // copy of an older record cannot take one away.
            Some(Ok(record)) => {
                let known = nodes.entry(node).or_default();
                known.mode = record.mode;
                for filter in record.filters {
                    if !known.filters.contains(&filter) {
                        known.filters.push(filter);
                    }
                }
            }
            Some(Err(error)) => {
                tracing::warn!(node, %error, "unreadable durable node record ignored")
            }
            None => {
                nodes.remove(&node);
            }
        }
    }

    /// Every durable node's id.
    pub(super) fn nodes(&self) -> Vec<String> {
        self.nodes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// Whether `node` is durable.
    pub(super) fn contains(&self, node: &str) -> bool {
        self.nodes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(node)
    }

    /// Whether some durable node's handlers take broadcasts of `event_type`.
    pub(super) fn wants_broadcast(&self, event_type: &str) -> bool {
        self.nodes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .any(|r| r.filters.iter().any(|f| subject_matches(f, event_type)))
    }

    /// This process's record of `node`.
    pub(super) fn record(&self, node: &str) -> Option<Record> {
        self.nodes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(node)
            .cloned()
    }

    /// Notes `node` as durable here at once (the bucket follows with
    /// [`Registry::publish`]), adding `filters` to what it had.
    pub(super) fn note(&self, node: &str, mode: &str, filters: &[String]) {
        let mut nodes = self.nodes.write().unwrap_or_else(|p| p.into_inner());
        let record = nodes.entry(node.to_owned()).or_default();
        record.mode = mode.to_owned();
        for filter in filters {
            if !record.filters.contains(filter) {
                record.filters.push(filter.clone());
            }
        }
    }

    /// Deletes the record of `node`, here at once and in the bucket (which
    /// every process follows).
    pub(super) async fn forget(&self, node: &str) -> Result<()> {
        self.nodes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(node);
        self.kv
            .delete(escape_key(node))
            .await
            .map_err(|e| unavailable("cannot forget the node's registration", e))
    }

    /// Writes this process's record of `node` to the bucket.
    pub(super) async fn publish(&self, node: &str) -> Result<()> {
        let Some(record) = self.record(node) else {
            return Ok(());
        };
        let value = serde_json::to_vec(&record).unwrap_or_default();
        self.kv
            .put(escape_key(node), Bytes::from(value))
            .await
            .map(|_| ())
            .map_err(|e| unavailable("cannot register the node", e))
    }
}

//! Global state: one key-value namespace shared by every node of a system, in
//! every process. Use it for data many events refer to (pass the key instead
//! of a copy) and for system-wide settings. Over NATS a value is a message
//! in a JetStream bucket; one larger than the server's `max_payload` (1 MiB
//! by default, which bounds events and node state) is written in chunks to
//! a JetStream object store, the bucket keeping a pointer to it, so large
//! data can travel by key as the documentation suggests. In one process
//! there is no limit.
//!
//! ```
//! use happen::prelude::*;
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> happen::Result<()> {
//! let happen = Happen::embedded();
//! let producer = happen.node("producer")?;
//! let consumer = happen.node("consumer")?;
//!
//! consumer.on("dataset-ready", |event: Event, cx: Context| async move {
//!     let key = event.payload()["key"].as_str().unwrap_or_default().to_owned();
//!     let data = cx.node().global().get(&key).await?.unwrap_or_default();
//!     Ok::<_, HappenError>(json!({ "rows": data["rows"].as_array().map_or(0, Vec::len) }))
//! })?;
//!
//! // A large payload travels by key, not inside the event.
//! producer.global().set("dataset:2026-11", json!({ "rows": [1, 2, 3] })).await?;
//! let reply = producer.send(&consumer, Event::new("dataset-ready", json!({ "key": "dataset:2026-11" }))).await?;
//! assert_eq!(reply["rows"], 3);
//! assert_eq!(producer.global().keys().await?, vec!["dataset:2026-11"]);
//! # Ok(()) }
//! ```

use std::sync::Arc;

use futures::stream::BoxStream;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{HappenError, Result};
use crate::store::Store;

/// The longest global key accepted, in bytes.
pub const MAX_KEY_LEN: usize = 1024;

/// One change to a global key: its new value, or `None` when it was deleted.
#[derive(Debug, Clone, PartialEq)]
pub struct GlobalChange {
    /// The key that changed.
    pub key: String,
    /// The new value; `None` after a delete.
    pub value: Option<Value>,
}

/// The global namespace, as seen from a node; see the [module docs](self).
#[derive(Clone)]
pub struct Global {
    store: Arc<dyn Store>,
}

impl std::fmt::Debug for Global {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Global")
    }
}

fn check_key(key: &str) -> Result<()> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(HappenError::Config(format!(
            "global key {key:?} must be 1 to {MAX_KEY_LEN} bytes long"
        )));
    }
    Ok(())
}

impl Global {
    pub(crate) fn new(store: Arc<dyn Store>) -> Self {
        Global { store }
    }

    /// Stores `value` under `key` (any non-empty text up to [`MAX_KEY_LEN`]
    /// bytes), replacing what was there.
    pub async fn set(&self, key: &str, value: impl Serialize) -> Result<()> {
        check_key(key)?;
        let value = serde_json::to_value(value)?;
        crate::depth::check(&value, || format!("the global value {key}"))?;
        self.store.global_set(key, &value).await
    }

    /// The value under `key`, if any.
    pub async fn get(&self, key: &str) -> Result<Option<Value>> {
        check_key(key)?;
        self.store.global_get(key).await
    }

    /// The value under `key` deserialized as `T`, if any.
    pub async fn get_as<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        match self.get(key).await? {
            Some(value) => Ok(Some(T::deserialize(value)?)),
            None => Ok(None),
        }
    }

    /// Removes `key` (nothing happens if it is absent).
    pub async fn delete(&self, key: &str) -> Result<()> {
        check_key(key)?;
        self.store.global_delete(key).await
    }

    /// Every key, sorted.
    pub async fn keys(&self) -> Result<Vec<String>> {
        self.store.global_keys().await
    }

    /// Changes to `key` from now on (sets and deletes), as a stream, in the
    /// order they were applied: the last change a watcher gets is the
    /// value stored. Writes to other keys never make it miss one. In one
    /// process it gets every change (those not yet read wait for it, in
    /// memory); over NATS, where the bucket keeps one value per key, a
    /// value replaced before the watcher read it may be skipped.
    pub async fn watch(&self, key: &str) -> Result<BoxStream<'static, GlobalChange>> {
        check_key(key)?;
        self.store.global_watch(Some(key)).await
    }

    /// Changes to every key from now on, as [`Global::watch`] gives them
    /// for one.
    pub async fn watch_all(&self) -> Result<BoxStream<'static, GlobalChange>> {
        self.store.global_watch(None).await
    }
}

//! Node public keys, system-wide: the KV bucket `<part>_identity`, keyed by
//! node id, whose values are nkeys public keys. A signing node's runtime
//! writes its key when the node is made; every runtime loads the bucket at
//! connect and follows it, and looks a sender up directly when an event
//! arrives from a node it does not know yet.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::oneshot;

use super::{bucket, unavailable};
use crate::error::Result;
use crate::identity::Keys;
use crate::store::jetstream::{escape_key, unescape_key};
use crate::transport::nats::lock;

pub(in crate::transport::nats) struct KeyRegistry {
    kv: kv::Store,
    /// Keys being written, awaited by the next flush.
    writes: Mutex<Vec<oneshot::Receiver<Result<()>>>>,
}

impl KeyRegistry {
    pub(super) async fn open(
        js: &jetstream::Context,
        part: &str,
        replicas: usize,
    ) -> Result<KeyRegistry> {
        let kv = bucket(js, format!("{part}_identity"), Duration::ZERO, replicas).await?;
        Ok(KeyRegistry {
            kv,
            writes: Mutex::new(Vec::new()),
        })
    }

    /// Learns every key in the bucket, then follows it until the runtime
    /// ends (a task of its own).
    pub(in crate::transport::nats) async fn follow(self: Arc<Self>, keys: Weak<Keys>) {
        let Ok(mut entries) = self.kv.watch_all_from_revision(1).await else {
            tracing::warn!("node keys registered elsewhere are looked up one by one");
            return;
        };
        while let Some(entry) = entries.next().await {
            let Ok(entry) = entry else { continue };
            let Some(keys) = keys.upgrade() else { return };
            if entry.operation == kv::Operation::Put
                && let (Some(node), Ok(key)) =
                    (unescape_key(&entry.key), std::str::from_utf8(&entry.value))
            {
                keys.learn(&node, key.to_owned());
            }
        }
    }

    /// Writes `node`'s public key (in a task; the next flush waits for it).
    pub(in crate::transport::nats) fn register(&self, node: &str, public_key: &str) {
        let (tx, rx) = oneshot::channel();
        lock(&self.writes).push(rx);
        let (kv, key, value) = (
            self.kv.clone(),
            escape_key(node),
            Bytes::from(public_key.to_owned()),
        );
        tokio::spawn(async move {
            let written = kv
                .put(key, value)
                .await
                .map(drop)
                .map_err(|e| unavailable("cannot register a node's key", e));
            let _ = tx.send(written);
        });
    }

    /// `node`'s registered public key, read from the bucket now.
    pub(in crate::transport::nats) async fn fetch(&self, node: &str) -> Option<String> {
        let value = self.kv.get(escape_key(node)).await.ok()??;
        String::from_utf8(value.to_vec()).ok()
    }

    /// Resolves once every key registered so far is written.
    pub(in crate::transport::nats) async fn flush(&self) -> Result<()> {
        let writes: Vec<_> = lock(&self.writes).drain(..).collect();
        for write in writes {
            write.await.unwrap_or(Ok(()))?;
        }
        Ok(())
    }
}

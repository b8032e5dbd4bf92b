//! Node public keys, system-wide: the KV bucket `<part>_identity`, keyed by
//! node id, whose values are nkeys public keys. A signing node's runtime
//! writes its key when the node is made; every runtime loads the bucket at
//! connect and follows it, and looks a sender up directly when an event
//! arrives from a node it does not know yet.
//!
//! The watch and a direct lookup can overlap: a lookup that read a key
//! just before an operator deleted it could learn it after the watch had
//! forgotten it, trusting a revoked key again (a review suspected it). So
//! what either learns is ordered by the record's revision ([`Revisions`]):
//! a read older than what the watch has applied for that node is dropped.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::oneshot;

use super::{bucket, unavailable};
use crate::error::{HappenError, Result};
use crate::identity::Keys;
use crate::store::jetstream::{escape_key, unescape_key};
use crate::transport::nats::lock;

pub(in crate::transport::nats) struct KeyRegistry {
    kv: kv::Store,
    /// Keys being written, awaited by the next flush.
    writes: Mutex<Vec<oneshot::Receiver<Result<()>>>>,
    revisions: Revisions,
}

/// The newest revision of each node's record applied to the runtime's
/// keys (by the watch or a lookup); the lock also orders the changes.
#[derive(Default)]
struct Revisions(Mutex<std::collections::HashMap<String, u64>>);

impl Revisions {
    /// Applies revision `revision` of `node`'s record (`Some`: a key;
    /// `None`: deleted or purged) unless a newer one was applied already.
    fn apply(&self, keys: &Keys, node: &str, revision: u64, key: Option<&str>) {
        let mut applied = lock(&self.0);
        if applied.get(node).is_some_and(|&newer| newer > revision) {
            return;
        }
        applied.insert(node.to_owned(), revision);
        match key {
            Some(key) => keys.learn(node, key.to_owned()),
            None => keys.forget(node),
        }
    }
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
            revisions: Revisions::default(),
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
            let Some(node) = unescape_key(&entry.key) else {
                continue;
            };
            match entry.operation {
                kv::Operation::Put => {
                    if let Ok(key) = std::str::from_utf8(&entry.value) {
                        self.revisions
                            .apply(&keys, &node, entry.revision, Some(key));
                    }
                }
                // Deleted or purged by an operator: revoked everywhere, not
                // only for runtimes that start afterwards.
                kv::Operation::Delete | kv::Operation::Purge => {
                    self.revisions.apply(&keys, &node, entry.revision, None);
                }
            }
        }
    }

    /// Claims `node`'s record for `public_key` (in a task; the next flush
    /// waits for it and returns a conflict). A record with another key is
    /// taken over only when no live process answers for the node on
    /// `probe` (the subject its owner's runtime answers with its key).
    pub(in crate::transport::nats) fn register(
        &self,
        client: async_nats::Client,
        probe: String,
        node: &str,
        public_key: &str,
    ) {
        let (tx, rx) = oneshot::channel();
        lock(&self.writes).push(rx);
        let (kv, node, key) = (self.kv.clone(), node.to_owned(), public_key.to_owned());
        tokio::spawn(async move {
            let claimed = claim(&kv, &client, &probe, &node, &key).await;
            if let Err(error) = &claimed {
                tracing::error!(node, %error, "the node's key was not registered");
            }
            let _ = tx.send(claimed);
        });
    }

    /// Reads `node`'s record from the bucket now and applies it to `keys`
    /// (unless the watch applied a newer one meanwhile); whether `keys`
    /// then holds a key for the node, or why the bucket could not be read
    /// (within [`LOOKUP_WAIT`]).
    pub(in crate::transport::nats) async fn look_up(
        &self,
        node: &str,
        keys: &Keys,
    ) -> std::result::Result<bool, String> {
        let read = tokio::time::timeout(LOOKUP_WAIT, self.kv.entry(escape_key(node))).await;
        match read {
            Ok(Ok(Some(entry))) => {
                let key = match entry.operation {
                    kv::Operation::Put => std::str::from_utf8(&entry.value).ok(),
                    kv::Operation::Delete | kv::Operation::Purge => None,
                };
                self.revisions.apply(keys, node, entry.revision, key);
            }
            Ok(Ok(None)) => {}
            Ok(Err(error)) => return Err(error.to_string()),
            Err(_) => return Err(format!("no answer within {LOOKUP_WAIT:?}")),
        }
        Ok(keys.public_key(node).is_some())
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

/// How long one read of a sender's record may take before it counts as
/// failed (and is tried again, see `key_lookups`).
const LOOKUP_WAIT: Duration = Duration::from_secs(1);

/// How long a probed owner has to answer before its record counts as stale.
const PROBE_WAIT: Duration = Duration::from_secs(1);

/// Makes the record of `node` say `key`: creates it, finds it already
/// saying so (another instance of the node, with the same key), or takes
/// over a record whose key no live process holds (a probe naming that key
/// gets no answer within [`PROBE_WAIT`]).
async fn claim(
    kv: &kv::Store,
    client: &async_nats::Client,
    probe: &str,
    node: &str,
    key: &str,
) -> Result<()> {
    let entry = escape_key(node);
    for _ in 0..10 {
        match kv.create(&entry, Bytes::from(key.to_owned())).await {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
            Err(e) => return Err(unavailable("cannot register a node's key", e)),
        }
        let Some(current) = kv
            .entry(&entry)
            .await
            .map_err(|e| unavailable("cannot read a node's key", e))?
        else {
            continue; // deleted meanwhile: create again
        };
        if current.value.as_ref() == key.as_bytes() {
            return Ok(());
        }
        // Another key: is a process holding it alive? (Only a holder of
        // that key answers; nobody, or no answer in time: it is gone.)
        let ask = client.request(probe.to_owned(), current.value.clone());
        if let Ok(Ok(_)) = tokio::time::timeout(PROBE_WAIT, ask).await {
            return Err(HappenError::IdentityConflict {
                node: node.to_owned(),
                registered: String::from_utf8_lossy(&current.value).into_owned(),
            });
        }
        // Take over, unless someone else changed the record first.
        match kv
            .update(&entry, Bytes::from(key.to_owned()), current.revision)
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
            Err(e) => return Err(unavailable("cannot register a node's key", e)),
        }
    }
    Err(unavailable(
        "cannot register a node's key",
        "the record kept changing",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_read_before_its_revocation_is_not_learned_after_it() {
        let (keys, revisions) = (Keys::default(), Revisions::default());
        revisions.apply(&keys, "payments", 3, Some("KEY-3"));
        // The watch applies the deletion (revision 4) while a lookup that
        // read revision 3 is on its way; the lookup ends after it.
        revisions.apply(&keys, "payments", 4, None);
        revisions.apply(&keys, "payments", 3, Some("KEY-3"));
        assert_eq!(keys.public_key("payments"), None);
        // A newer key is learned, from either side, and the watch's older
        // events replayed do not undo it.
        revisions.apply(&keys, "payments", 6, Some("KEY-6"));
        revisions.apply(&keys, "payments", 4, None);
        revisions.apply(&keys, "payments", 5, Some("KEY-5"));
        assert_eq!(keys.public_key("payments").as_deref(), Some("KEY-6"));
        // Nodes are ordered apart.
        revisions.apply(&keys, "ledger", 1, Some("KEY-L"));
        assert_eq!(keys.public_key("ledger").as_deref(), Some("KEY-L"));
    }
}

//! The NATS runtime's store: JetStream key-value buckets for node state and
//! global state, and a stream with per-node retention for state history.
//!
//! Names derive from the subject prefix (`happen` by default): buckets
//! `happen-state` and `happen-global`, stream `happen-temporal` on subjects
//! `happen.temporal.<node>`. Node ids and global keys may hold characters
//! that bucket keys cannot; see [`escape_key`] for the rule. A global value
//! too large for one message goes to the object store
//! `happen-global-large`, the bucket holding a pointer ([`super::large`]).

use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, stream};
use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use serde_json::Value;

use super::applied::{self, Applied};
use super::large::Large;
use super::{Saved, Store, Versioned};
use crate::error::{HappenError, Result};
use crate::state::global::GlobalChange;
use crate::state::temporal::{Snapshot, TemporalConfig};

/// Bucket keys allow only `[-/_=.a-zA-Z0-9]`. Letters, digits, `-`, `_` and
/// `/` are kept; every other byte of the UTF-8 text is written `=XX` (two
/// upper-case hex digits), `=` included, so the mapping is reversible.
pub(crate) fn escape_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for byte in key.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'/') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("={byte:02X}"));
        }
    }
    out
}

/// Reverses [`escape_key`]; `None` for text it could not have produced.
pub(crate) fn unescape_key(escaped: &str) -> Option<String> {
    let bytes = escaped.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' {
            let hex = escaped.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `Ok` when the stream `get_or_create_stream` gave takes `subject`: stream
/// names are made from the subject prefix with case and punctuation
/// folded, so two prefixes (`shop.eu`, `shop_eu`) can name one stream, and
/// the second system's messages would be captured by no stream at all.
pub(crate) fn check_stream_subject(stream: &stream::Stream, subject: &str) -> Result<()> {
    let config = &stream.cached_info().config;
    if config.subjects.iter().any(|s| s == subject) {
        return Ok(());
    }
    Err(HappenError::Config(format!(
        "the JetStream stream {} holds {:?}, not {subject:?}: another system's subject prefix \
         names the same stream; choose prefixes that differ in more than case and punctuation",
        config.name, config.subjects
    )))
}

fn store_error(what: &str, e: impl Into<crate::error::BoxError>) -> HappenError {
    HappenError::store(what, e)
}

pub(crate) struct JetStreamStore {
    js: jetstream::Context,
    state: kv::Store,
    global: kv::Store,
    temporal: Option<stream::Stream>,
    temporal_prefix: String,
    large: std::sync::Arc<Large>,
}

impl JetStreamStore {
    pub(crate) async fn open(
        client: async_nats::Client,
        prefix: &str,
        temporal: TemporalConfig,
        replicas: usize,
    ) -> Result<Self> {
        let js = jetstream::new(client);
        let base = prefix.replace('.', "_");
        let bucket = |name: String| kv::Config {
            bucket: name,
            history: 1,
            num_replicas: replicas,
            ..Default::default()
        };
        let state = js
            .create_or_update_key_value(bucket(format!("{base}-state")))
            .await
            .map_err(|e| store_error("cannot open the state bucket", e))?;
        let global = js
            .create_or_update_key_value(bucket(format!("{base}-global")))
            .await
            .map_err(|e| store_error("cannot open the global bucket", e))?;
        let temporal_prefix = format!("{prefix}.temporal");
        let temporal = if temporal.enabled {
            let history = i64::try_from(temporal.history.max(1)).unwrap_or(i64::MAX);
            let wanted = stream::Config {
                name: format!("{base}-temporal"),
                subjects: vec![format!("{temporal_prefix}.>")],
                max_messages_per_subject: history,
                max_age: temporal.max_age,
                num_replicas: replicas,
                ..Default::default()
            };
            // One stream holds every process's history: a runtime asking
            // for less retention than it has leaves it (another process
            // keeps more); one asking for more grows it.
            let config = match js.get_stream(&wanted.name).await {
                Ok(mut existing) => {
                    let have = existing
                        .info()
                        .await
                        .map_err(|e| store_error("cannot open the state history stream", e))?
                        .config
                        .clone();
                    kept_longer(have, &wanted)
                }
                Err(_) => wanted,
            };
            js.create_or_update_stream(config)
                .await
                .map_err(|e| store_error("cannot open the state history stream", e))?;
            Some(
                js.get_stream(format!("{base}-temporal"))
                    .await
                    .map_err(|e| store_error("cannot open the state history stream", e))?,
            )
        } else {
            None
        };
        let large = std::sync::Arc::new(Large::new(js.clone(), &base, replicas));
        Ok(JetStreamStore {
            js,
            state,
            global,
            temporal,
            temporal_prefix,
            large,
        })
    }
}

fn to_bytes(value: &Value) -> Result<Bytes> {
    Ok(Bytes::from(serde_json::to_vec(value)?))
}

/// Room kept in a message for what the client adds to a global value (the
/// bucket's subject, the publish's headers): a value larger than the
/// server's `max_payload` less this goes to the object store.
const LARGE_ROOM: usize = 1024;

/// Room kept in a stored message for the headers a conditional save adds
/// (`Nats-Expected-Last-Subject-Sequence: <n>`), which the client counts
/// against `max_payload` too.
const HEADER_ROOM: usize = 128;

impl JetStreamStore {
    /// `bytes` as a value to store (with `headers` bytes of headers): the
    /// server takes no message larger than its `max_payload`.
    fn fits(&self, bytes: Bytes, headers: usize) -> Result<Bytes> {
        let limit = self.js.client().max_payload();
        let size = bytes.len() + headers;
        if size > limit {
            return Err(HappenError::PayloadTooLarge { size, limit });
        }
        Ok(bytes)
    }

    /// Writes `stored` to the escaped global key `key` (`None`: deletes
    /// it), on condition that the key still holds what was read just
    /// before, then deletes the large value's object the replaced entry
    /// pointed to. A concurrent write makes the condition fail and the
    /// write is tried again on what it wrote, so each replaced pointer's
    /// object is deleted by exactly the write that replaced it (two
    /// unconditional writes that read the same pointer left the first
    /// one's object with nothing pointing to it).
    async fn replace_global(&self, key: &str, stored: Option<Bytes>) -> Result<()> {
        use async_nats::jetstream::kv::{Operation, UpdateErrorKind};
        let mut attempts = 0u32;
        loop {
            let entry = (self.global.entry(key).await)
                .map_err(|e| store_error("cannot write global state", e))?;
            let (revision, previous) = match entry {
                Some(e) if e.operation == Operation::Put => (e.revision, Some(e.value)),
                Some(e) => (e.revision, None),
                None => (0, None),
            };
            let written = match (&stored, &previous) {
                (Some(stored), _) => {
                    (self.global.update(key, stored.clone(), revision).await).map(|_| ())
                }
                // Deleting an absent key would still leave a delete marker.
                (None, None) => return Ok(()),
                (None, Some(_)) => {
                    (self.global)
                        .delete_expect_revision(key, Some(revision))
                        .await
                }
            };
            match written {
                Ok(()) => {
                    // Written: a replaced object that cannot be deleted
                    // now is left over, not a failed write.
                    if let Some(previous) = previous
                        && let Err(error) = self.large.forget(&previous).await
                    {
                        tracing::warn!(key, %error, "a replaced large global value was not deleted");
                    }
                    return Ok(());
                }
                // Bounded only against a server that keeps refusing:
                // each refusal means another write landed. A short pause,
                // longer each time, lets a lagging replica catch up.
                Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision && attempts < 1000 => {
                    attempts += 1;
                    let pause = u64::from(attempts.min(20)) * (crate::uuid7::random() % 500 + 1);
                    tokio::time::sleep(Duration::from_micros(pause)).await;
                }
                Err(e) => return Err(store_error("cannot write global state", e)),
            }
        }
    }
}

fn from_bytes<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| HappenError::store("a stored value is not readable", e))
}

impl Store for JetStreamStore {
    fn load<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<Option<Versioned>>> {
        Box::pin(async move {
            let entry = self
                .state
                .entry(escape_key(node))
                .await
                .map_err(|e| store_error("cannot read state", e))?;
            match entry {
                Some(entry) if entry.operation == kv::Operation::Put => {
                    let (value, applied) = applied::decode(&entry.value)?;
                    Ok(Some(Versioned {
                        value,
                        revision: entry.revision,
                        applied,
                    }))
                }
                _ => Ok(None),
            }
        })
    }

    fn save<'a>(
        &'a self,
        node: &'a str,
        value: &'a Value,
        applied: &'a Applied,
        expected: Option<u64>,
    ) -> BoxFuture<'a, Result<Saved>> {
        Box::pin(async move {
            let key = escape_key(node);
            let bytes = self.fits(Bytes::from(applied::encode(value, applied)?), HEADER_ROOM)?;
            match expected {
                None => match self.state.create(&key, bytes).await {
                    Ok(revision) => Ok(Saved::Done(revision)),
                    Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(Saved::Conflict),
                    Err(e) => Err(store_error("cannot save state", e)),
                },
                Some(revision) => match self.state.update(&key, bytes, revision).await {
                    Ok(revision) => Ok(Saved::Done(revision)),
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                        Ok(Saved::Conflict)
                    }
                    Err(e) => Err(store_error("cannot save state", e)),
                },
            }
        })
    }

    fn record<'a>(
        &'a self,
        node: &'a str,
        snapshot: Snapshot,
        revision: u64,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            if self.temporal.is_none() {
                return Ok(());
            }
            let recorded = Recorded { revision, snapshot };
            let bytes = self.fits(Bytes::from(serde_json::to_vec(&recorded)?), 0)?;
            let subject = format!("{}.{}", self.temporal_prefix, escape_key(node));
            self.js
                .publish(subject, bytes)
                .await
                .map_err(|e| store_error("cannot record state history", e))?
                .await
                .map_err(|e| store_error("state history was not stored", e))?;
            Ok(())
        })
    }

    fn check_record(&self, snapshot: &Snapshot) -> Result<()> {
        if self.temporal.is_some() {
            let recorded = RecordedRef {
                revision: u64::MAX,
                snapshot,
            };
            self.fits(Bytes::from(serde_json::to_vec(&recorded)?), 0)?;
        }
        Ok(())
    }

    fn history<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<Vec<Snapshot>>> {
        Box::pin(async move {
            let Some(stream) = &self.temporal else {
                return Ok(Vec::new());
            };
            let subject = format!("{}.{}", self.temporal_prefix, escape_key(node));
            let payloads = read_all(stream, subject, None)
                .await
                .map_err(|e| store_error("cannot read state history", e))?;
            let mut snapshots = Vec::with_capacity(payloads.len());
            for payload in payloads {
                // Recorded before revisions were: first, in stream order.
                snapshots.push(match from_bytes::<Recorded>(&payload) {
                    Ok(recorded) => recorded,
                    Err(_) => Recorded {
                        revision: 0,
                        snapshot: from_bytes(&payload)?,
                    },
                });
            }
            // The stream keeps the order snapshots were published in, which
            // two processes updating one node may not keep; the revisions
            // their states were saved at are the order of the changes.
            snapshots.sort_by_key(|recorded| recorded.revision);
            Ok(snapshots.into_iter().map(|r| r.snapshot).collect())
        })
    }

    fn global_get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Value>>> {
        Box::pin(async move {
            let bytes = read_global(&self.global, &self.large, &escape_key(key), None).await?;
            bytes.map(|bytes| from_bytes(&bytes)).transpose()
        })
    }

    fn global_set<'a>(&'a self, key: &'a str, value: &'a Value) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let key = escape_key(key);
            let bytes = to_bytes(value)?;
            // Too large for one message: the value goes to the object
            // store, the bucket keeps a pointer.
            let limit = self.js.client().max_payload().saturating_sub(LARGE_ROOM);
            let large = bytes.len() > limit;
            let stored = match large {
                true => self.large.put(&key, &bytes).await?,
                false => bytes,
            };
            let stored = self.fits(stored, HEADER_ROOM)?;
            let written = self.replace_global(&key, Some(stored.clone())).await;
            if written.is_err() && large {
                // Unless the write landed after all (its acknowledgement
                // lost), nothing points to the object just written.
                let landed = matches!(self.global.get(&key).await, Ok(Some(now)) if now == stored);
                if !landed {
                    let _ = self.large.forget(&stored).await;
                }
            }
            written
        })
    }

    fn global_delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { self.replace_global(&escape_key(key), None).await })
    }

    fn global_keys(&self) -> BoxFuture<'_, Result<Vec<String>>> {
        Box::pin(async move {
            let mut keys = match self.global.keys().await {
                Ok(keys) => {
                    keys.filter_map(|k| std::future::ready(k.ok().and_then(|k| unescape_key(&k))))
                        .collect::<Vec<_>>()
                        .await
                }
                Err(e) => return Err(store_error("cannot list global keys", e)),
            };
            keys.sort();
            Ok(keys)
        })
    }

    fn global_watch<'a>(
        &'a self,
        key: Option<&'a str>,
    ) -> BoxFuture<'a, Result<BoxStream<'static, GlobalChange>>> {
        Box::pin(async move {
            let watch = match key {
                Some(key) => self.global.watch(escape_key(key)).await,
                None => self.global.watch_all().await,
            }
            .map_err(|e| store_error("cannot watch global state", e))?;
            let (global, large) = (self.global.clone(), self.large.clone());
            let changes = watch.filter_map(move |entry| {
                let (global, large) = (global.clone(), large.clone());
                async move {
                    let entry = entry.ok()?;
                    let key = unescape_key(&entry.key)?;
                    let value = match entry.operation {
                        kv::Operation::Put => {
                            let first = Some(entry.value);
                            let bytes = read_global(&global, &large, &entry.key, first)
                                .await
                                .ok()??;
                            Some(serde_json::from_slice(&bytes).ok()?)
                        }
                        kv::Operation::Delete | kv::Operation::Purge => None,
                    };
                    Some(GlobalChange { key, value })
                }
            });
            Ok(changes.boxed())
        })
    }
}

/// The value of the global key `key` (escaped), starting from `first` when
/// it was read already: a large value's object may have gone under a
/// pointer read a moment before (a newer write took it), and then the key
/// is read again, a few times at most.
async fn read_global(
    global: &kv::Store,
    large: &Large,
    key: &str,
    mut first: Option<Bytes>,
) -> Result<Option<Bytes>> {
    let mut tries = 0;
    loop {
        let stored = match first.take() {
            Some(bytes) => bytes,
            None => match global.get(key).await {
                Ok(Some(bytes)) => bytes,
                Ok(None) => return Ok(None),
                Err(e) => return Err(store_error("cannot read global state", e)),
            },
        };
        match large.resolve(stored).await {
            Ok(bytes) => return Ok(Some(bytes)),
            Err(error) if tries >= 3 => return Err(error),
            Err(_) => tries += 1,
        }
    }
}

/// The payloads of every message of `stream` on subjects matching `filter`
/// (at most `limit`), read through a consumer made for the purpose and
/// removed after.
pub(crate) async fn read_all(
    stream: &stream::Stream,
    filter: String,
    limit: Option<u64>,
) -> std::result::Result<Vec<Bytes>, Box<dyn std::error::Error + Send + Sync>> {
    let mut consumer: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            filter_subject: filter,
            deliver_policy: consumer::DeliverPolicy::All,
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(10),
            ..Default::default()
        })
        .await?;
    let pending = consumer.info().await?.num_pending;
    let wanted = limit.map_or(pending, |l| l.min(pending));
    let mut payloads = Vec::with_capacity(usize::try_from(wanted).unwrap_or(0));
    if wanted > 0 {
        let mut messages = consumer
            .fetch()
            .max_messages(usize::try_from(wanted).unwrap_or(usize::MAX))
            .expires(Duration::from_secs(5))
            .messages()
            .await?;
        while let Some(message) = messages.next().await {
            payloads.push(message?.message.payload);
        }
    }
    let name = consumer.cached_info().name.clone();
    let _ = stream.delete_consumer(&name).await;
    Ok(payloads)
}

/// The temporal stream's configuration `have`, with the retention of
/// `wanted` where that is longer (JetStream reads -1 messages and a zero
/// age as no limit).
fn kept_longer(have: stream::Config, wanted: &stream::Config) -> stream::Config {
    let messages = match (
        have.max_messages_per_subject,
        wanted.max_messages_per_subject,
    ) {
        (a, b) if a < 0 || b < 0 => -1,
        (a, b) => a.max(b),
    };
    let age = match (have.max_age, wanted.max_age) {
        (a, b) if a.is_zero() || b.is_zero() => Duration::ZERO,
        (a, b) => a.max(b),
    };
    stream::Config {
        max_messages_per_subject: messages,
        max_age: age,
        ..have
    }
}

/// A snapshot as the temporal stream keeps it, with the revision its state
/// was saved at.
#[derive(serde::Deserialize, serde::Serialize)]
struct Recorded {
    revision: u64,
    snapshot: Snapshot,
}

/// [`Recorded`], borrowed (to weigh one before the change is saved).
#[derive(serde::Serialize)]
struct RecordedRef<'a> {
    revision: u64,
    snapshot: &'a Snapshot,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_escape_reversibly() {
        for key in [
            "user:profile:123",
            "a.b",
            "plain-key_1/x",
            "=",
            "ünï",
            "sp ace",
            "",
        ] {
            let escaped = escape_key(key);
            assert!(
                escaped
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_/=".contains(&b)),
                "{escaped}"
            );
            assert_eq!(unescape_key(&escaped).as_deref(), Some(key));
        }
        assert_eq!(escape_key("user:1"), "user=3A1");
        assert_eq!(unescape_key("bad=Z"), None);
    }
}

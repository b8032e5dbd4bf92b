//! Global values too large for one message, over NATS.
//!
//! The documentation's way to pass large data between nodes is to put it in
//! global state and send its key. A key-value bucket holds each value in one
//! message, which the server's `max_payload` bounds (1 MiB by default), so
//! the data the pattern is for was refused (`PayloadTooLarge`; a spec audit
//! found it). A value that does not fit is now written to the JetStream
//! object store `<base>-global-large` (in chunks), as an object of its own
//! (the escaped key and a random suffix), and the bucket holds a pointer to
//! it: [`MARK`] then the object's name, which no JSON text can start with.
//! Reads, watches and deletes follow the pointer. Each write replaces the
//! pointer and then deletes the object the bucket pointed to before, so a
//! pointer never names an object taken away under it by another write; a
//! reader whose object went (a newer write took it) reads the key again.
//! The bucket's writes are conditional on the revision read before them
//! (`JetStreamStore::replace_global`), so of two writers at once each
//! deletes only the object of the pointer it replaced, and none is left
//! without a pointer.

use async_nats::jetstream::{self, object_store};
use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio::sync::OnceCell;

use crate::error::{HappenError, Result};

/// How a pointer starts: a zero byte, which no JSON text begins with.
const MARK: &[u8] = b"\0happen-large-v1\0";

/// The largest chunk of an object (the client's default).
const CHUNK: usize = 128 * 1024;

/// What a chunk's message needs besides its bytes (subject, headers).
const CHUNK_ROOM: usize = 1024;

/// The object store of one runtime's large global values, made on first use.
pub(crate) struct Large {
    js: jetstream::Context,
    bucket: String,
    replicas: usize,
    store: OnceCell<object_store::ObjectStore>,
}

fn store_error(what: &str, e: impl Into<crate::error::BoxError>) -> HappenError {
    HappenError::store(what, e)
}

impl Large {
    pub(crate) fn new(js: jetstream::Context, base: &str, replicas: usize) -> Large {
        Large {
            js,
            bucket: format!("{base}-global-large"),
            replicas,
            store: OnceCell::new(),
        }
    }

    async fn store(&self) -> Result<&object_store::ObjectStore> {
        self.store
            .get_or_try_init(|| async {
                if let Ok(store) = self.js.get_object_store(&self.bucket).await {
                    return Ok(store);
                }
                self.js
                    .create_object_store(object_store::Config {
                        bucket: self.bucket.clone(),
                        num_replicas: self.replicas,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| store_error("cannot open the store of large global values", e))
            })
            .await
    }

    /// Writes `bytes` as a new object for the escaped key `key`; the
    /// pointer to keep in the bucket instead of the value.
    pub(crate) async fn put(&self, key: &str, bytes: &Bytes) -> Result<Bytes> {
        let name = format!("{}.{:016x}", object_stem(key), crate::uuid7::random());
        let mut data: &[u8] = bytes;
        // Chunks the server takes: the client's default (128 KiB) is
        // refused by a server whose `max_payload` is lower.
        let room = self.js.client().max_payload().saturating_sub(CHUNK_ROOM);
        let meta = object_store::ObjectMetadata {
            name: name.clone(),
            chunk_size: Some(room.clamp(1024, CHUNK)),
            ..Default::default()
        };
        self.store()
            .await?
            .put(meta, &mut data)
            .await
            .map_err(|e| store_error("cannot write a large global value", e))?;
        let mut pointer = Vec::with_capacity(MARK.len() + name.len());
        pointer.extend_from_slice(MARK);
        pointer.extend_from_slice(name.as_bytes());
        Ok(Bytes::from(pointer))
    }

    /// The value `stored` in the bucket: itself, or the object it points to.
    pub(crate) async fn resolve(&self, stored: Bytes) -> Result<Bytes> {
        let Some(name) = pointed(&stored) else {
            return Ok(stored);
        };
        let mut object = self
            .store()
            .await?
            .get(name)
            .await
            .map_err(|e| store_error("cannot read a large global value", e))?;
        let mut bytes = Vec::new();
        object
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| store_error("cannot read a large global value", e))?;
        Ok(Bytes::from(bytes))
    }

    /// Deletes the object `stored` points to, if it is a pointer (one
    /// already gone is no error).
    pub(crate) async fn forget(&self, stored: &[u8]) -> Result<()> {
        let Some(name) = pointed(stored) else {
            return Ok(());
        };
        match self.store().await?.delete(name).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == object_store::DeleteErrorKind::NotFound => Ok(()),
            Err(e) => Err(store_error("cannot delete a large global value", e)),
        }
    }
}

/// The longest escaped key an object is named after; a longer one (up to
/// three times `MAX_KEY_LEN`, escaped) is named by its hash: the object
/// store's subjects carry the name in base64, and one over the server's
/// control line limit (4 KiB) made it close the whole connection.
const NAMED_KEY_LEN: usize = 256;

/// What the objects of the escaped key `key` are named after.
fn object_stem(key: &str) -> std::borrow::Cow<'_, str> {
    if key.len() <= NAMED_KEY_LEN {
        return key.into();
    }
    let hash = blake3::hash(key.as_bytes());
    format!("h{}", crate::identity::hex(&hash.as_bytes()[..16])).into()
}

/// The object a stored value points to, if it is a pointer.
fn pointed(stored: &[u8]) -> Option<&str> {
    std::str::from_utf8(stored.strip_prefix(MARK)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_pointer_points() {
        let mut pointer = MARK.to_vec();
        pointer.extend_from_slice(b"blob=2E1");
        assert_eq!(pointed(&pointer), Some("blob=2E1"));
        assert_eq!(pointed(b"{\"a\":1}"), None);
        assert_eq!(pointed(b"\0happen-large-v1"), None, "cut short");
        assert_eq!(pointed(b""), None);
    }
}

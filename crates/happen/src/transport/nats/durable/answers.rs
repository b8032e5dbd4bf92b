//! Answers to requests to durable nodes, kept in JetStream until their
//! requesters have them.
//!
//! An answer goes to its requester's inbox through the server, as every
//! answer does. When it is published while the server is unreachable, the
//! answering process sends it on reconnecting, and the requester's process,
//! reconnecting on its own schedule, may not have subscribed to its inbox
//! again yet: the server drops the answer, and the requester waits out its
//! timeout although the flow ran (a distributed audit lost ten of ten that
//! way). So the final answer of every durable request is also put in the
//! KV bucket `<prefix>_answers` under its reply subject, kept for
//! [`KEEP_FOR`] (the bucket holds at most [`MAX_BYTES`]; an answer that does
//! not fit is not kept, and goes to the inbox only), and a process that sent durable requests follows the
//! bucket's keys of its own inbox: an answer found there for a request still
//! waiting is taken as if it came to the inbox (the same checks), a copy of
//! one taken already is let go. Streamed answers are not kept (their items
//! go to the inbox only); a stream whose items were lost ends broken.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::kv;
use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;

use super::super::Shared;
use crate::store::jetstream::escape_key;

/// How long an answer is kept for its requester.
pub(in crate::transport::nats) const KEEP_FOR: Duration = Duration::from_secs(600);
/// How long the answering process tries to keep an answer while JetStream
/// does not take it (an outage).
const KEEP_TRYING: Duration = Duration::from_secs(120);
/// The first version of the kept form (see [`encode`]).
const VERSION: u8 = 1;
/// The most bytes of answers being kept at once (waiting for JetStream):
/// beyond it an answer is not kept (it still goes to the inbox).
const MAX_KEEPING: usize = 64 << 20;
/// The most bytes the bucket holds (the bucket refuses more, and an answer
/// is then not kept).
pub(in crate::transport::nats) const MAX_BYTES: i64 = 256 << 20;

/// The answers of one runtime's durable requests, and of its durable nodes.
pub(in crate::transport::nats) struct Answers {
    kv: kv::Store,
    /// Whether this runtime follows its own answers (started by its first
    /// durable request).
    following: AtomicBool,
    /// Bytes of answers being kept (see [`MAX_KEEPING`]).
    keeping: Arc<std::sync::atomic::AtomicUsize>,
    /// The largest kept form a message carries (the server's `max_payload`
    /// less room for the subject and headers).
    limit: usize,
}

impl Answers {
    pub(super) fn new(kv: kv::Store, max_payload: usize) -> Answers {
        Answers {
            kv,
            following: AtomicBool::new(false),
            keeping: Arc::default(),
            limit: max_payload.saturating_sub(1024),
        }
    }

    /// Keeps the answer `payload` (with its seal `headers`) to the request
    /// whose reply subject is `subject`, in a task that tries again while
    /// JetStream does not take it. A subject that names no request of a
    /// Happen runtime (`<inbox>.<number>`) is not kept.
    pub(in crate::transport::nats) fn keep(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
        subject: &str,
        payload: &Bytes,
        headers: Option<&HeaderMap>,
    ) {
        let Some(key) = key_of(subject) else {
            return;
        };
        let value = encode(payload, headers);
        // One that cannot fit a message is never kept; nor one past the
        // bytes kept at once.
        let size = value.len() + key.len() + 128;
        let kept = self.keeping.fetch_add(size, Ordering::AcqRel) + size;
        if size > self.limit || kept > MAX_KEEPING {
            self.keeping.fetch_sub(size, Ordering::AcqRel);
            tracing::warn!(key, size, "an answer to a durable request was not kept");
            return;
        }
        let (answers, shared) = (self.clone(), Arc::downgrade(shared));
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let mut pause = Duration::from_millis(100);
            loop {
                match answers.kv.put(&key, value.clone()).await {
                    Ok(_) => break,
                    Err(error)
                        if started.elapsed() >= KEEP_TRYING
                            || shared.upgrade().is_none_or(|s| s.is_closed()) =>
                    {
                        tracing::warn!(%error, key, "an answer to a durable request was not kept");
                        break;
                    }
                    Err(_) => {
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(2));
                    }
                }
            }
            answers.keeping.fetch_sub(size, Ordering::AcqRel);
        });
    }

    /// The answer kept for the request whose reply subject is `subject`,
    /// with its seal, if it still is (and can be read).
    pub(in crate::transport::nats) async fn kept(
        &self,
        subject: &str,
    ) -> Option<(Bytes, Option<HeaderMap>)> {
        let value = self.kv.get(key_of(subject)?).await.ok().flatten()?;
        decode(&value)
    }

    /// Follows the answers kept for this runtime's requests (once, from its
    /// first durable request until the runtime ends).
    pub(in crate::transport::nats) fn follow(self: &Arc<Self>, shared: &Arc<Shared>) {
        if self.following.load(Ordering::Acquire) || self.following.swap(true, Ordering::AcqRel) {
            return;
        }
        let filter = format!("{}.>", escape_key(&shared.inbox));
        let (answers, weak) = (self.clone(), Arc::downgrade(shared));
        let task = tokio::spawn(async move { answers.watch(filter, weak).await });
        // Ended with the runtime's other tasks.
        super::keep_task(shared, task);
    }

    async fn watch(self: Arc<Self>, filter: String, shared: Weak<Shared>) {
        // After the last entry seen, when the watch has to start again.
        let mut after = 0u64;
        let mut pause = Duration::from_millis(100);
        loop {
            let watch = if after == 0 {
                self.kv.watch_with_history(&filter).await
            } else {
                self.kv.watch_from_revision(&filter, after + 1).await
            };
            if let Ok(mut entries) = watch {
                pause = Duration::from_millis(100);
                while let Some(entry) = entries.next().await {
                    let Ok(entry) = entry else { continue };
                    let Some(shared) = shared.upgrade() else {
                        return;
                    };
                    if shared.is_closed() {
                        return;
                    }
                    after = entry.revision;
                    if entry.operation == kv::Operation::Put {
                        take(&shared, &entry.key, &entry.value);
                    }
                }
            }
            // The watch ended or could not start (the server unreachable):
            // again, from the entry after the last one seen.
            if shared.upgrade().is_none_or(|s| s.is_closed()) {
                return;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }
}

/// Takes the kept answer at `key` as a reply to this runtime's request, if
/// that request still waits (its token names it; another runtime's inbox
/// is not followed).
fn take(shared: &Arc<Shared>, key: &str, value: &[u8]) {
    let Some(token) = key.rsplit('.').next().and_then(|t| t.parse::<u64>().ok()) else {
        return;
    };
    if !super::super::requests::waits(shared, token) {
        return; // answered through the inbox already, or given up
    }
    let Some((payload, headers)) = decode(value) else {
        tracing::warn!(key, "a kept answer could not be read");
        return;
    };
    let subject = format!("{}.{token}", shared.inbox);
    let message = async_nats::Message {
        length: payload.len(),
        subject: subject.into(),
        reply: None,
        payload,
        headers,
        status: None,
        description: None,
    };
    super::super::requests::on_reply(shared, token, message);
}

/// The key of the answer to the request whose reply subject is `subject`:
/// the escaped inbox, then the request's number.
fn key_of(subject: &str) -> Option<String> {
    let (inbox, token) = subject.rsplit_once('.')?;
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(format!("{}.{token}", escape_key(inbox)))
}

/// The kept form: the version, the number of header lines, each header's
/// name and value (each a 4-byte little-endian length, then the bytes), then
/// the answer's bytes.
fn encode(payload: &Bytes, headers: Option<&HeaderMap>) -> Bytes {
    let lines: Vec<(&str, &str)> = headers
        .into_iter()
        .flat_map(|h| h.iter())
        .flat_map(|(name, values)| values.iter().map(move |v| (name.as_ref(), v.as_str())))
        .collect();
    let mut out = BytesMut::with_capacity(payload.len() + 8 + lines.len() * 64);
    out.put_u8(VERSION);
    out.put_u32_le(lines.len() as u32);
    for (name, value) in lines {
        for part in [name, value] {
            out.put_u32_le(part.len() as u32);
            out.put_slice(part.as_bytes());
        }
    }
    out.put_slice(payload);
    out.freeze()
}

/// Reads what [`encode`] wrote; `None` for anything else (never panics).
fn decode(kept: &[u8]) -> Option<(Bytes, Option<HeaderMap>)> {
    let (&version, mut rest) = kept.split_first()?;
    if version != VERSION {
        return None;
    }
    let mut take = |n: usize| -> Option<&[u8]> {
        let (head, tail) = rest.split_at_checked(n)?;
        rest = tail;
        Some(head)
    };
    let count = u32::from_le_bytes(take(4)?.try_into().ok()?);
    let mut headers = HeaderMap::new();
    for _ in 0..count {
        let mut part = || -> Option<&str> {
            let len = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
            std::str::from_utf8(take(len)?).ok()
        };
        // Parsed, not converted: the conversion from a `&str` panics on a
        // name no header may have (a space, a colon), and the bucket's
        // bytes are anyone's who may write to it.
        let name: async_nats::header::HeaderName = part()?.parse().ok()?;
        let value: async_nats::HeaderValue = part()?.parse().ok()?;
        headers.append(name, value);
    }
    let payload = Bytes::copy_from_slice(rest);
    Some((payload, (count > 0).then_some(headers)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_answer_with_a_header_no_message_may_have_is_not_read() {
        for name in ["a b", "x:y", "t\u{1}", "é"] {
            let mut kept = vec![VERSION];
            kept.extend_from_slice(&1u32.to_le_bytes());
            for part in [name, "v"] {
                kept.extend_from_slice(&(part.len() as u32).to_le_bytes());
                kept.extend_from_slice(part.as_bytes());
            }
            kept.extend_from_slice(b"answer");
            assert!(decode(&kept).is_none(), "{name:?}");
        }
    }

    #[test]
    fn a_kept_answer_reads_back_with_its_seal() {
        let mut headers = HeaderMap::new();
        headers.insert("Happen-Seal", "node.key.sig");
        let payload = Bytes::from_static(b"\x82answer");
        let (back, seal) = decode(&encode(&payload, Some(&headers))).unwrap();
        assert_eq!(back, payload);
        assert_eq!(
            seal.unwrap().get("Happen-Seal").unwrap().as_str(),
            "node.key.sig"
        );
        let (back, seal) = decode(&encode(&payload, None)).unwrap();
        assert_eq!((back, seal.is_none()), (payload, true));
    }

    #[test]
    fn hostile_kept_bytes_are_refused_without_panicking() {
        let good = encode(&Bytes::from_static(b"x"), None);
        for cut in 0..good.len() {
            let _ = decode(&good[..cut]);
        }
        assert!(decode(&[2, 0, 0, 0, 0]).is_none(), "another version");
        assert!(
            decode(&[1, 1, 0, 0, 0, 255, 255, 255, 255]).is_none(),
            "a length past the end"
        );
        assert!(
            decode(&[1, 255, 255, 255, 255]).is_none(),
            "more headers than bytes"
        );
        assert!(decode(&[]).is_none());
    }

    #[test]
    fn only_reply_subjects_of_requests_have_keys() {
        assert_eq!(key_of("_INBOX.abc.17").as_deref(), Some("_INBOX=2Eabc.17"));
        assert_eq!(key_of("_INBOX.abc.c17"), None, "a credit subject");
        assert_eq!(key_of("_INBOX.abc."), None);
        assert_eq!(key_of("nodot"), None);
    }
}

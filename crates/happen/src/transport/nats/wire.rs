//! The wire format: every message is a version byte ([`VERSION`]) and a
//! MessagePack value. An event is in the compact form of [`super::compact`]
//! (positional fields, ids as 16 bytes); replies and credits are maps with
//! named fields, their events in the compact form.
//!
//! A message of another version is refused with a [`HappenError::Codec`]
//! that names both versions, never misread.
//!
//! Decoding never panics: any byte string either decodes or gives
//! [`HappenError::Codec`]. Nesting is limited to [`MAX_DEPTH`] levels so that
//! hostile input cannot exhaust the stack.
//!
//! This is the crate's private protocol between Happen processes, not a
//! stable public API; docs/ARCHITECTURE.md describes it.

use serde::{Deserialize, Serialize};

#[cfg(test)]
use super::compact::Compact;
use super::compact::{self, CompactIn};
use super::msgpack::TooLong;
use crate::error::{HappenError, Result};
use crate::event::Event;
use crate::integrity::Uuids;

/// The deepest nesting of maps and arrays a decoder accepts.
pub(crate) const MAX_DEPTH: usize = 128;

/// The first byte of every message this build writes.
pub(crate) const VERSION: u8 = 2;

fn encode<T: Serialize + ?Sized>(
    value: &T,
) -> std::result::Result<Vec<u8>, rmp_serde::encode::Error> {
    // A small event with its causal context is under a hundred bytes.
    let mut buf = Vec::with_capacity(128);
    buf.push(VERSION);
    value.serialize(&mut rmp_serde::Serializer::new(&mut buf).with_struct_map())?;
    Ok(buf)
}

/// How `rmp-serde` starts `Reply::Ok`: a map of one entry, `"ok"`, whose
/// value is the event.
const REPLY_OK: [u8; 4] = [0x81, 0xa2, b'o', b'k'];

/// `prefix` and then `event` in the compact form, written directly (see
/// [`super::msgpack`]).
fn encode_direct(prefix: &[u8], event: &Event) -> std::result::Result<Vec<u8>, TooLong> {
    // A small event with its causal context is under a hundred and fifty
    // bytes.
    let mut buf = Vec::with_capacity(160);
    buf.push(VERSION);
    buf.extend_from_slice(prefix);
    compact::write(event, &mut buf)?;
    Ok(buf)
}

/// Encodes an event (compact form).
pub(crate) fn encode_event(event: &Event) -> Result<Vec<u8>> {
    // What the far side could not decode is refused here (crate::depth).
    crate::depth::check_event(event)?;
    encode_direct(&[], event).map_err(|e| HappenError::codec("cannot encode event", e))
}

/// The message after its version byte, or why there is none.
fn versioned(bytes: &[u8]) -> std::result::Result<&[u8], rmp_serde::decode::Error> {
    match bytes.split_first() {
        Some((&VERSION, rest)) => Ok(rest),
        Some((other, _)) => Err(rmp_serde::decode::Error::Syntax(format!(
            "wire version {other}, this build reads version {VERSION}"
        ))),
        None => Err(rmp_serde::decode::Error::Syntax("an empty message".into())),
    }
}

/// Decodes an event encoded by [`encode_event`] and checks its hash.
pub(crate) fn decode_event(bytes: &[u8]) -> Result<Event> {
    let direct = versioned(bytes).ok().and_then(compact::read);
    let (event, uuids) = match direct {
        Some(read) => read,
        None => decode::<CompactIn>(bytes)
            .map(|CompactIn(event)| (event, Uuids::default()))
            .map_err(|e| HappenError::codec("cannot decode event", e))?,
    };
    crate::integrity::verify_with(&event, uuids)?;
    not_the_system(&event)?;
    Ok(event)
}

/// Refuses an event from the network that claims the runtime's own sender
/// ([`SYSTEM_SENDER`](crate::SYSTEM_SENDER)), itself or in a batch member:
/// a runtime's reports never leave its process, so such an event is
/// forged, and a handler that trusts that sender (the runtime-level
/// handlers of `node.down` or `system.connection-status`) must not see it.
/// A security audit re-hashed a captured broadcast under that sender and
/// reached such a handler.
fn not_the_system(event: &Event) -> Result<()> {
    let members = event.batch_events().into_iter().flatten();
    match std::iter::once(event)
        .chain(members)
        .find(|e| e.causal().sender == crate::system::SYSTEM_SENDER)
    {
        Some(forged) => Err(HappenError::Integrity {
            event_id: forged.id().to_owned(),
            reason: format!(
                "it claims the sender \"{}\", whose events never leave their process",
                crate::system::SYSTEM_SENDER
            ),
        }),
        None => Ok(()),
    }
}

/// The outcome of a request as it travels back to the requester.
///
/// A flow that streams sends `Item`s numbered from 0, then one `End` whose
/// `seq` is the number of items: a missing, repeated or reordered message is
/// detected by its number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Reply {
    /// The flow completed; its result travels as a response event.
    Ok(#[serde(with = "super::compact")] Event),
    /// The request failed (refused, handler error, panic, ...).
    Err(HappenError),
    /// One streamed value.
    Item {
        /// Position in the stream, from 0.
        seq: u64,
        /// The value.
        value: serde_json::Value,
        /// On the first item: where the consumer sends [`Credit`]s.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        credit: Option<String>,
    },
    /// The end of a stream: its final outcome (`Ok` or `Err`).
    End {
        /// The number of items sent before.
        seq: u64,
        /// The final outcome.
        outcome: Box<Reply>,
    },
}

/// Flow control of a streamed response, from consumer to producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Credit {
    /// The consumer has taken this many items in all.
    Acked(u64),
    /// The consumer stopped: the producer should stop too.
    Cancel,
    /// The requester let go of its request before taking any item (it
    /// was sent fire-and-forget, or its timeout passed): the producer
    /// sends no more items and its flow runs on.
    Unwanted,
}

/// Encodes a credit message.
pub(crate) fn encode_credit(credit: &Credit) -> Result<Vec<u8>> {
    encode(credit).map_err(|e| HappenError::codec("cannot encode credit", e))
}

/// Decodes a credit message.
pub(crate) fn decode_credit(bytes: &[u8]) -> Result<Credit> {
    decode(bytes).map_err(|e| HappenError::codec("cannot decode credit", e))
}

impl From<Result<Event>> for Reply {
    fn from(outcome: Result<Event>) -> Self {
        match outcome {
            Ok(event) => Reply::Ok(event),
            Err(error) => Reply::Err(error),
        }
    }
}

impl From<Reply> for Result<Event> {
    fn from(reply: Reply) -> Self {
        match reply {
            Reply::Ok(event) => Ok(event),
            Reply::Err(error) => Err(error),
            Reply::End { outcome, .. } => Result::from(*outcome),
            Reply::Item { .. } => Err(HappenError::StreamBroken {
                reason: "a stream item where a final outcome was expected".into(),
            }),
        }
    }
}

/// Encodes a reply.
pub(crate) fn encode_reply(reply: &Reply) -> Result<Vec<u8>> {
    let mut last = reply;
    while let Reply::End { outcome, .. } = last {
        last = outcome;
    }
    match last {
        Reply::Ok(event) => crate::depth::check_event(event)?,
        Reply::Item { value, .. } => {
            crate::depth::check(value, || "a streamed item".to_owned())?;
        }
        Reply::Err(_) | Reply::End { .. } => {}
    }
    if let Reply::Ok(event) = reply {
        return encode_direct(&REPLY_OK, event)
            .map_err(|e| HappenError::codec("cannot encode reply", e));
    }
    encode(reply).map_err(|e| HappenError::codec("cannot encode reply", e))
}

/// A `Reply::Ok` read directly, if that is what `bytes` hold in the form
/// [`encode_reply`] writes.
fn decode_reply_direct(bytes: &[u8]) -> Option<(Event, Uuids)> {
    let event = versioned(bytes).ok()?.strip_prefix(&REPLY_OK)?;
    compact::read(event)
}

/// Decodes a reply encoded by [`encode_reply`].
pub(crate) fn decode_reply(bytes: &[u8]) -> Result<Reply> {
    if let Some((event, uuids)) = decode_reply_direct(bytes) {
        crate::integrity::verify_with(&event, uuids)?;
        return Ok(Reply::Ok(event));
    }
    let reply: Reply = decode(bytes).map_err(|e| HappenError::codec("cannot decode reply", e))?;
    let mut outcome = &reply;
    while let Reply::End { outcome: inner, .. } = outcome {
        outcome = inner;
    }
    if let Reply::Ok(event) = outcome {
        crate::integrity::verify(event)?;
    }
    Ok(reply)
}

fn decode<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
) -> std::result::Result<T, rmp_serde::decode::Error> {
    let bytes = versioned(bytes)?;
    // Reading from the slice itself hands strings straight to the decoder,
    // without a copy into a scratch buffer first.
    let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
    de.set_max_depth(MAX_DEPTH);
    let value = T::deserialize(&mut de)?;
    // Nothing may follow the value: a further read must hit the end.
    match serde::de::IgnoredAny::deserialize(&mut de) {
        Err(rmp_serde::decode::Error::InvalidMarkerRead(e))
            if e.kind() == std::io::ErrorKind::UnexpectedEof =>
        {
            Ok(value)
        }
        _ => Err(rmp_serde::decode::Error::Syntax(
            "trailing bytes after the value".into(),
        )),
    }
}

/// The serde encoder's bytes for `event`, `prefix` after the version byte:
/// what the direct encoder must match.
#[cfg(test)]
pub(super) fn encode_event_by_serde(event: &Event, ok_reply: bool) -> Vec<u8> {
    if ok_reply {
        encode(&Reply::Ok(event.clone())).unwrap()
    } else {
        encode(&Compact(event)).unwrap()
    }
}

/// The serde decoder's event (its hash not checked), for comparison with
/// the direct reader.
#[cfg(test)]
pub(super) fn decode_event_by_serde(bytes: &[u8]) -> Option<Event> {
    decode::<CompactIn>(bytes)
        .ok()
        .map(|CompactIn(event)| event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_small_event_is_small_and_versioned() {
        let happen_id = crate::Id::from("sensor");
        let mut event = Event::new("tick", json!({ "seq": 12345 }));
        crate::event::stamp(&mut event, &happen_id, None);
        let bytes = encode_event(&event).unwrap();
        assert_eq!(bytes[0], VERSION);
        // type, payload, 16-byte id, sender, path, timestamp, nils and
        // the 32-byte hash (and a nil signature).
        assert!(bytes.len() <= 107, "{} bytes", bytes.len());
        assert_eq!(
            decode_event(&bytes).unwrap(),
            crate::integrity::as_received(&event)
        );
        let json = serde_json::to_vec(&event).unwrap();
        assert!(
            bytes.len() * 2 < json.len(),
            "{} vs {} bytes of JSON",
            bytes.len(),
            json.len()
        );
    }

    #[test]
    fn another_version_is_refused_by_name() {
        let mut bytes = encode_event(&Event::new("x", json!(1))).unwrap();
        bytes[0] = 9;
        let err = decode_event(&bytes).unwrap_err();
        let cause = std::error::Error::source(&err).map(|s| s.to_string());
        assert!(
            cause
                .as_deref()
                .is_some_and(|c| c.contains("wire version 9")),
            "{err}: {cause:?}"
        );
        assert!(decode_event(&[]).is_err());
        assert!(decode_reply(&[]).is_err());
    }

    #[test]
    fn replies_round_trip() {
        let event = Event::new("happen.response", json!(42));
        let ok = Reply::Ok(event.clone());
        let back = Reply::Ok(crate::integrity::as_received(&event));
        assert_eq!(decode_reply(&encode_reply(&ok).unwrap()).unwrap(), back);
        let err = Reply::Err(HappenError::NoHandler {
            node: "n".into(),
            event_type: "t".into(),
        });
        assert_eq!(decode_reply(&encode_reply(&err).unwrap()).unwrap(), err);
    }

    /// A failure down a chain of requests crosses the wire typed, its
    /// nested sources bounded: the first [`SOURCES_ON_THE_WIRE`] travel,
    /// deeper ones only as text.
    #[test]
    fn a_chain_of_failures_keeps_its_first_sources_typed() {
        use crate::error::{Cause, SOURCES_ON_THE_WIRE};
        let mut error = HappenError::NoHandler {
            node: "end".into(),
            event_type: "t".into(),
        };
        for hop in 0..20 {
            error = HappenError::HandlerFailed {
                node: format!("n{hop}"),
                event_type: "t".into(),
                cause: error.to_string(),
                source: Some(Cause::new(error)),
            };
        }
        let bytes = encode_reply(&Reply::Err(error.clone())).unwrap();
        let Reply::Err(back) = decode_reply(&bytes).unwrap() else {
            panic!("not an error");
        };
        assert_eq!(back.to_string(), error.to_string());
        let mut typed = 0;
        let mut at = &back;
        while let Some(inner) = at.handler_error::<HappenError>() {
            assert!(
                matches!(inner, HappenError::HandlerFailed { node, .. } if *node == format!("n{}", 18 - typed))
            );
            typed += 1;
            at = inner;
        }
        assert_eq!(typed, SOURCES_ON_THE_WIRE);
        // An error that is not a HappenError travels as text.
        let io = HappenError::HandlerFailed {
            node: "n".into(),
            event_type: "t".into(),
            cause: "disk full".into(),
            source: Some(Cause::new(std::io::Error::other("disk full"))),
        };
        let Reply::Err(back) = decode_reply(&encode_reply(&Reply::Err(io)).unwrap()).unwrap()
        else {
            panic!("not an error");
        };
        assert!(std::error::Error::source(&back).is_none());
    }

    #[test]
    fn every_error_variant_crosses_the_wire() {
        use crate::name::validate_node_id;
        use crate::pattern::Pattern;
        // A new variant must be added here: this match has no catch-all.
        fn listed(e: &HappenError) {
            match e {
                HappenError::NoHandler { .. }
                | HappenError::UnknownNode { .. }
                | HappenError::NotAccepted { .. }
                | HappenError::Integrity { .. }
                | HappenError::IdentityConflict { .. }
                | HappenError::DuplicateNode { .. }
                | HappenError::Timeout { .. }
                | HappenError::QueueFull { .. }
                | HappenError::Deadlock { .. }
                | HappenError::CausalDepth { .. }
                | HappenError::BlockingInRuntime { .. }
                | HappenError::HandlerFailed { .. }
                | HappenError::HandlerPanicked { .. }
                | HappenError::NoResponse { .. }
                | HappenError::InvalidPattern(_)
                | HappenError::InvalidName(_)
                | HappenError::EmptyBatch
                | HappenError::InvalidBatch { .. }
                | HappenError::Cancelled
                | HappenError::StreamBroken { .. }
                | HappenError::Shutdown
                | HappenError::Config(_)
                | HappenError::Codec { .. }
                | HappenError::Transport { .. }
                | HappenError::PayloadTooLarge { .. }
                | HappenError::TooDeep { .. }
                | HappenError::Backpressure { .. }
                | HappenError::Unreachable { .. }
                | HappenError::Store { .. }
                | HappenError::Conflict { .. }
                | HappenError::AlreadyTaken { .. } => {}
            }
        }
        let errors = vec![
            HappenError::NoHandler {
                node: "n".into(),
                event_type: "t".into(),
            },
            HappenError::UnknownNode { node: "n".into() },
            HappenError::NotAccepted {
                node: "n".into(),
                sender: "s".into(),
                source_id: Some("tenant:a:u".into()),
                rules: "a-*".into(),
            },
            HappenError::Integrity {
                event_id: "e".into(),
                reason: "r".into(),
            },
            HappenError::IdentityConflict {
                node: "n".into(),
                registered: "M...".into(),
            },
            HappenError::DuplicateNode { node: "n".into() },
            HappenError::Timeout {
                node: "n".into(),
                event_type: "t".into(),
                after_ms: 5,
            },
            HappenError::QueueFull {
                node: "n".into(),
                active: 1,
                queue_limit: 2,
            },
            HappenError::Deadlock {
                node: "a".into(),
                event_type: "t".into(),
                chain: vec!["a".into(), "b".into(), "a".into()],
                max_concurrent: 1,
            },
            HappenError::BlockingInRuntime {
                call: "Node::send_sync".into(),
            },
            HappenError::CausalDepth {
                node: "a".into(),
                event_type: "t".into(),
                depth: 9,
                limit: 8,
                repeating: vec!["a".into(), "b".into()],
            },
            HappenError::HandlerFailed {
                node: "n".into(),
                event_type: "t".into(),
                cause: "c".into(),
                source: None,
            },
            HappenError::HandlerPanicked {
                node: "n".into(),
                event_type: "t".into(),
                message: "m".into(),
            },
            HappenError::NoResponse {
                node: "n".into(),
                event_type: "t".into(),
            },
            HappenError::InvalidPattern(Pattern::parse("a.{").unwrap_err()),
            HappenError::InvalidName(validate_node_id("a b").unwrap_err()),
            HappenError::Shutdown,
            HappenError::EmptyBatch,
            HappenError::Cancelled,
            HappenError::StreamBroken { reason: "r".into() },
            HappenError::InvalidBatch { reason: "r".into() },
            HappenError::Config("c".into()),
            HappenError::Codec {
                message: "c".into(),
                source: None,
            },
            HappenError::Transport {
                message: "t".into(),
                source: None,
            },
            HappenError::PayloadTooLarge { size: 2, limit: 1 },
            HappenError::TooDeep {
                what: "w".into(),
                limit: 1,
            },
            HappenError::Backpressure {
                pending: 2,
                limit: 1,
            },
            HappenError::Unreachable {
                node: "n".into(),
                event_type: "t".into(),
                attempts: 3,
                waited_ms: 4,
            },
            HappenError::Store {
                message: "s".into(),
                source: None,
            },
            HappenError::Conflict {
                node: "n".into(),
                attempts: 9,
            },
            HappenError::AlreadyTaken {
                node: "n".into(),
                event_id: "e".into(),
            },
        ];
        assert_eq!(errors.len(), 31, "one of each variant");
        for error in errors {
            listed(&error);
            let reply = Reply::Err(error);
            let bytes = encode_reply(&reply).unwrap_or_else(|e| panic!("{reply:?}: {e}"));
            assert_eq!(decode_reply(&bytes).unwrap(), reply);
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        // 100_000 nested one-element arrays: 0x91 is "array of length 1".
        let mut bytes = vec![VERSION];
        bytes.extend(std::iter::repeat_n(0x91u8, 100_000));
        bytes.push(0xc0);
        assert!(decode_event(&bytes).is_err());
        // A payload nested that deep inside an otherwise valid event.
        let mut deep = vec![VERSION, 0x9e, 0xa1, b'x'];
        deep.extend(std::iter::repeat_n(0x91u8, 100_000));
        deep.push(0xc0);
        assert!(decode_event(&deep).is_err());
    }

    #[test]
    fn the_waiting_chain_travels_only_when_there_is_one() {
        // An array of 16 elements (0xdc, then the count in two bytes)
        // without it, 17 with it; both read back whole.
        let mut event = Event::new("ask", json!(null));
        crate::event::stamp(&mut event, &crate::Id::from("b"), None);
        let plain = encode_event(&event).unwrap();
        assert_eq!(&plain[1..4], &[0xdc, 0, 16]);
        event.context_mut().causal.waiting = ["a", "b"].into_iter().map(crate::Id::from).collect();
        let waiting = encode_event(&event).unwrap();
        assert_eq!(&waiting[1..4], &[0xdc, 0, 17]);
        let read = decode_event(&waiting).unwrap();
        assert_eq!(read.causal().waiting, vec!["a", "b"]);
        assert_eq!(decode_event(&plain).unwrap().causal().waiting.len(), 0);
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = encode_event(&Event::new("x", json!(null))).unwrap();
        bytes.push(0xc0);
        assert!(decode_event(&bytes).is_err());
    }
}

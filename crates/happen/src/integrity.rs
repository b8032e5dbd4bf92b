//! Event integrity: the hash every event carries across the wire.
//!
//! [`Event::hash`] is a BLAKE3 hash of the event's canonical encoding: its
//! type, payload and whole context (causal record, origin, stream position,
//! application fields, batch members), everything but the hash itself.
//! Every event that leaves a process over NATS carries it in
//! `causal.hash`, and the receiving process recomputes and compares it
//! before the event reaches a node: an event changed on the way (or made
//! up without knowing the encoding) is rejected with
//! [`HappenError::Integrity`], and reported
//! (see [`system::REJECTED`]). In one process
//! nothing is on the way, so the hash is computed only when asked for.
//!
//! A hash proves that the event is whole, not who made it: anyone can
//! compute the hash of an event they forge. Verifying the sender takes a
//! signature over the hash, or a server that lets each client publish
//! only as its own nodes (docs/ARCHITECTURE.md, "Identity").
//!
//! **Why BLAKE3**: a 256-bit hash, collision resistant like SHA-256, whose
//! speed does not depend on CPU extensions: on this project's machine it
//! hashes a small event's canonical form in about 200 ns and a kilobyte in
//! about a microsecond, where SHA-256 is 0.7× that time with the CPU's SHA
//! instructions and several times slower without them (see BENCHMARKS.md,
//! "Integrity"). The crate already uses it for exactly-once ids.
//!
//! **The canonical encoding** is defined here, not by any wire or JSON
//! form, so the hash is the same however the event travelled: strings are
//! UTF-8 prefixed with their length (a LEB128 varint), ids that are UUIDs
//! are their 16 bytes, numbers keep their kind (unsigned, signed,
//! float, bit-exact), objects are written with their keys in sorted order,
//! absent optional fields are distinct from empty ones, and a batch
//! includes its members' hashes.
//!
//! ```
//! use happen::prelude::*;
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> happen::Result<()> {
//! let a = Event::new("order.created", json!({ "id": 1, "total": 9.5 }));
//! let b = Event::new("order.created", json!({ "total": 9.5, "id": 1 }));
//! assert_eq!(a.hash(), b.hash(), "key order does not matter");
//! let c = Event::new("order.created", json!({ "id": 1, "total": 9.6 }));
//! assert_ne!(a.hash(), c.hash());
//! assert_eq!(a.hash().to_string().len(), 64); // hex
//! # Ok(()) }
//! ```

use std::cell::RefCell;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::error::HappenError;
use crate::event::Event;
#[cfg(doc)]
use crate::system;

/// A BLAKE3 hash of an event's canonical encoding; see the
/// [module docs](self). Shown and serialized as 64 lower-case hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventHash([u8; 32]);

impl EventHash {
    /// The hash of `event`'s canonical encoding (ignoring any hash it
    /// carries).
    pub fn of(event: &Event) -> EventHash {
        EventHash::of_with(event, &mut Uuids::default())
    }

    /// [`EventHash::of`], with the event's own UUIDs as far as `uuids`
    /// knows them, and knowing them all afterwards.
    pub(crate) fn of_with(event: &Event, uuids: &mut Uuids) -> EventHash {
        CANON.with(|buf| {
            // A flow of one thread at a time: a nested call (a batch
            // member) gets a buffer of its own.
            match buf.try_borrow_mut() {
                Ok(mut buf) => {
                    buf.clear();
                    write_event(&mut buf, event, uuids);
                    EventHash(*blake3::hash(&buf).as_bytes())
                }
                Err(_) => {
                    let mut own = Vec::with_capacity(256);
                    write_event(&mut own, event, uuids);
                    EventHash(*blake3::hash(&own).as_bytes())
                }
            }
        })
    }

    /// The hash from its 32 bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> EventHash {
        EventHash(bytes)
    }

    /// The 32 bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

thread_local! {
    /// The canonical encoding is written here, then hashed in one call.
    static CANON: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
}

impl fmt::Display for EventHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::identity::hex(&self.0))
    }
}

impl fmt::Debug for EventHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventHash({self})")
    }
}

/// The text is not 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an event hash is 64 hex digits")]
pub struct InvalidHash;

impl FromStr for EventHash {
    type Err = InvalidHash;

    fn from_str(text: &str) -> Result<Self, InvalidHash> {
        let bytes = crate::identity::unhex(text).ok_or(InvalidHash)?;
        bytes.try_into().map(EventHash).map_err(|_| InvalidHash)
    }
}

impl Serialize for EventHash {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for EventHash {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// What is known of an event's own ids (its id, causation and
/// correlation) as the 16 bytes of a UUID: each `None` until worked out,
/// then `Some(None)` for an id that is not a UUID in the form Happen writes.
///
/// Hashing an event and writing it for the wire both need these bytes,
/// and reading them from the text takes ~180 instructions an id: the
/// writer takes them from the hash, the hash of a received event from the
/// reader. Whoever fills one in vouches that it is what [`uuid7::bytes_of`]
/// gives for the event's text.
///
/// [`uuid7::bytes_of`]: crate::uuid7::bytes_of
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Uuids {
    pub(crate) id: Option<Option<[u8; 16]>>,
    pub(crate) causation: Option<Option<[u8; 16]>>,
    pub(crate) correlation: Option<Option<[u8; 16]>>,
}

/// The UUID of `text`, from `known` or worked out and kept there.
#[inline]
pub(crate) fn uuid_of(known: &mut Option<Option<[u8; 16]>>, text: &str) -> Option<[u8; 16]> {
    *known.get_or_insert_with(|| crate::uuid7::bytes_of(text))
}

/// Checks the hash an event arrived with (and those of its batch members):
/// it must be there, and it must be the event's.
#[cfg_attr(not(feature = "nats"), allow(dead_code))]
pub(crate) fn verify(event: &Event) -> Result<(), HappenError> {
    verify_with(event, Uuids::default())
}

/// [`verify`], with what the reader already knows of the event's UUIDs.
#[cfg_attr(not(feature = "nats"), allow(dead_code))]
pub(crate) fn verify_with(event: &Event, mut uuids: Uuids) -> Result<(), HappenError> {
    let Some(carried) = event.causal().hash else {
        return Err(HappenError::Integrity {
            event_id: event.id().to_owned(),
            reason: "the event carries no hash".into(),
        });
    };
    let computed = EventHash::of_with(event, &mut uuids);
    if carried != computed {
        return Err(HappenError::Integrity {
            event_id: event.id().to_owned(),
            reason: format!(
                "its hash does not match its contents (carried {carried}, computed {computed}): it was changed on the way"
            ),
        });
    }
    event
        .batch_events()
        .into_iter()
        .flatten()
        .try_for_each(verify)
}

/// `event` as a receiver decodes it: with its hash (and its batch
/// members' hashes) filled in.
#[cfg(all(test, feature = "nats"))]
pub(crate) fn as_received(event: &Event) -> Event {
    let members = event
        .batch_events()
        .map(|members| members.iter().map(as_received).collect());
    let mut cx = event.context().clone();
    cx.causal.hash = Some(EventHash::of(event));
    Event::from_parts(
        crate::id::Id::from(event.event_type()),
        event.payload().clone(),
        cx,
        members,
    )
}

fn write_event(out: &mut Vec<u8>, event: &Event, uuids: &mut Uuids) {
    out.extend_from_slice(b"happen.event.v1\0");
    let cx = event.context();
    let causal = &cx.causal;
    write_str(out, event.event_type());
    write_value(out, event.payload());
    write_uuid(out, &causal.id, uuid_of(&mut uuids.id, &causal.id));
    write_id(out, &causal.sender);
    match causal.causation_id.as_deref() {
        None => out.push(0),
        Some(cause) => {
            out.push(1);
            write_uuid(out, cause, uuid_of(&mut uuids.causation, cause));
        }
    }
    // Most correlation ids are the event's own id (every root event).
    if causal.correlation_id == causal.id {
        out.push(b'=');
    } else {
        let correlation = &causal.correlation_id;
        write_uuid(
            out,
            correlation,
            uuid_of(&mut uuids.correlation, correlation),
        );
    }
    write_len(out, causal.path.len());
    for hop in causal.path.iter() {
        write_id(out, hop);
    }
    out.extend_from_slice(&causal.timestamp.to_be_bytes());
    write_id(out, &cx.origin.node_id);
    write_opt(out, cx.origin.source_id.as_deref());
    write_opt(out, cx.origin.source_type.as_deref());
    match &cx.stream {
        None => out.push(0),
        Some(stream) => {
            out.push(1);
            write_id(out, &stream.of);
            out.extend_from_slice(&stream.seq.to_be_bytes());
        }
    }
    write_object(out, &cx.extra);
    match event.batch_events() {
        None => out.push(0),
        Some(members) => {
            out.push(1);
            write_len(out, members.len());
            for member in members {
                out.extend_from_slice(EventHash::of(member).as_bytes());
            }
        }
    }
    // Last and only when present, so that the hash of every other event
    // is what it was before requests carried it.
    if !causal.waiting.is_empty() {
        out.push(b'w');
        write_len(out, causal.waiting.len());
        for hop in causal.waiting.iter() {
            write_id(out, hop);
        }
    }
}

/// A length or count, as an unsigned LEB128 varint (one byte below 128):
/// the hashed bytes stay few.
fn write_len(out: &mut Vec<u8>, len: usize) {
    let mut n = len as u64;
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn write_str(out: &mut Vec<u8>, text: &str) {
    write_len(out, text.len());
    out.extend_from_slice(text.as_bytes());
}

/// An id: the 16 bytes of a UUID in the form Happen writes, else its text
/// (tagged, so the two never collide).
fn write_id(out: &mut Vec<u8>, id: &str) {
    write_uuid(out, id, crate::uuid7::bytes_of(id));
}

/// An id whose UUID bytes (if it is one) are `uuid`: as [`write_id`].
fn write_uuid(out: &mut Vec<u8>, id: &str, uuid: Option<[u8; 16]>) {
    match uuid {
        Some(bytes) => {
            out.push(b'u');
            out.extend_from_slice(&bytes);
        }
        None => {
            out.push(b's');
            write_str(out, id);
        }
    }
}

fn write_opt(out: &mut Vec<u8>, text: Option<&str>) {
    match text {
        None => out.push(0),
        Some(text) => {
            out.push(1);
            write_str(out, text);
        }
    }
}

fn write_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.push(b'n'),
        Value::Bool(false) => out.push(b'f'),
        Value::Bool(true) => out.push(b't'),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                out.push(b'u');
                out.extend_from_slice(&u.to_be_bytes());
            } else if let Some(i) = n.as_i64() {
                out.push(b'i');
                out.extend_from_slice(&i.to_be_bytes());
            } else {
                out.push(b'd');
                let f = n.as_f64().unwrap_or(f64::NAN);
                out.extend_from_slice(&f.to_bits().to_be_bytes());
            }
        }
        Value::String(s) => {
            out.push(b's');
            write_str(out, s);
        }
        Value::Array(items) => {
            out.push(b'a');
            write_len(out, items.len());
            for item in items {
                write_value(out, item);
            }
        }
        Value::Object(map) => {
            out.push(b'o');
            write_object(out, map);
        }
    }
}

/// An object's entries in sorted key order (the order serde_json's map
/// keeps unless its `preserve_order` feature is on).
fn write_object(out: &mut Vec<u8>, map: &serde_json::Map<String, Value>) {
    write_entries(out, map.len(), map.iter());
}

/// `len` entries of an object, in sorted key order whatever order
/// `entries` gives them in: written in one pass, checking the order as it
/// goes, and again, sorted, only if they turn out not to be.
fn write_entries<'a, I>(out: &mut Vec<u8>, len: usize, entries: I)
where
    I: Iterator<Item = (&'a String, &'a Value)> + Clone,
{
    write_len(out, len);
    let start = out.len();
    let mut previous: Option<&String> = None;
    for (key, value) in entries.clone() {
        if previous.is_some_and(|previous| previous >= key) {
            out.truncate(start);
            let mut sorted: Vec<(&String, &Value)> = entries.collect();
            sorted.sort_by(|a, b| a.0.cmp(b.0));
            for (key, value) in sorted {
                write_str(out, key);
                write_value(out, value);
            }
            return;
        }
        write_str(out, key);
        write_value(out, value);
        previous = Some(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::Id;
    use serde_json::json;

    fn stamped(event: Event) -> Event {
        let mut event = event;
        crate::event::stamp(&mut event, &Id::from("n1"), None);
        event
    }

    /// The canonical encoding is part of the wire protocol (processes of
    /// two builds must agree on every hash): one event's hash, fixed.
    #[test]
    fn the_canonical_hash_does_not_change() {
        let mut event = Event::new(
            "order.created",
            json!({ "b": 1, "a": [1, -2, 2.5, "x", null, true], "c": { "z": 1, "y": { "k": "v" } } }),
        )
        .with_source("u1", "user")
        .with_context("tenant", json!("t1"))
        .with_context("attempt", json!(2));
        let cx = event.context_mut();
        cx.causal.id = Id::from("0190b4e2-7c1a-7000-8000-000000000001");
        cx.causal.sender = Id::from("orders");
        cx.causal.causation_id = Some(Id::from("0190b4e2-7c1a-7000-8000-000000000000"));
        cx.causal.correlation_id = Id::from("txn-7");
        cx.causal.path = ["web", "orders"].into_iter().map(Id::from).collect();
        cx.causal.timestamp = 1_720_000_000_000;
        cx.origin.node_id = Id::from("orders");
        assert_eq!(
            EventHash::of(&event).to_string(),
            "feb051785bed4e5a68c224e0c92b1098cc75e0e6895dfe8806c328f2d789d471",
        );
    }

    /// Entries out of order (a serde_json with `preserve_order`) are
    /// written as if sorted.
    #[test]
    fn entries_in_any_order_are_written_sorted() {
        let entries: Vec<(String, Value)> = ["d", "a", "c", "b", "e"]
            .iter()
            .zip([
                json!(1),
                json!("x"),
                json!({ "z": 1 }),
                json!(null),
                json!([2]),
            ])
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let mut sorted = entries.clone();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        let written = |entries: &[(String, Value)]| {
            let mut out = vec![7];
            write_entries(&mut out, entries.len(), entries.iter().map(|(k, v)| (k, v)));
            out
        };
        let expected = written(&sorted);
        assert_eq!(written(&entries), expected);
        let mut reversed = sorted.clone();
        reversed.reverse();
        assert_eq!(written(&reversed), expected);
        // Out of order only at the end.
        let mut late = sorted.clone();
        late.swap(3, 4);
        assert_eq!(written(&late), expected);
        let map: serde_json::Map<String, Value> = entries.into_iter().collect();
        let mut out = vec![7];
        write_object(&mut out, &map);
        assert_eq!(out, expected);
    }

    #[test]
    fn every_part_of_the_event_changes_the_hash() {
        let base = stamped(
            Event::new("t", json!({ "a": [1, -2, 3.5, "x", null, true] }))
                .with_source("u1", "user")
                .with_context("tenant", json!("t1")),
        );
        let h = base.hash();
        assert_eq!(h, EventHash::of(&base), "stable");
        let mut changed: Vec<Event> = Vec::new();
        changed.push(Event::from_parts(
            Id::from("t2"),
            base.payload().clone(),
            base.context().clone(),
            None,
        ));
        changed.push(Event::from_parts(
            Id::from("t"),
            json!({ "a": [1, -2, 3.5, "x", null, false] }),
            base.context().clone(),
            None,
        ));
        type Change = Box<dyn Fn(&mut crate::event::EventContext)>;
        let variants: Vec<Change> = vec![
            Box::new(|cx| cx.causal.sender = Id::from("n2")),
            Box::new(|cx| cx.causal.id = Id::from("other")),
            Box::new(|cx| cx.causal.causation_id = Some(Id::from("c"))),
            Box::new(|cx| cx.causal.correlation_id = Id::from("c")),
            Box::new(|cx| cx.causal.path.push(Id::from("n3"))),
            Box::new(|cx| cx.causal.waiting.push(Id::from("n1"))),
            Box::new(|cx| cx.causal.timestamp += 1),
            Box::new(|cx| cx.origin.node_id = Id::from("n9")),
            Box::new(|cx| cx.origin.source_id = None),
            Box::new(|cx| cx.origin.source_type = Some("admin".into())),
            Box::new(|cx| {
                cx.stream = Some(crate::event::StreamRef {
                    of: Id::from("s"),
                    seq: 0,
                })
            }),
            Box::new(|cx| {
                cx.extra.insert("tenant".into(), json!("t2"));
            }),
        ];
        for change in variants {
            let mut cx = base.context().clone();
            change(&mut cx);
            changed.push(Event::from_parts(
                Id::from("t"),
                base.payload().clone(),
                cx,
                None,
            ));
        }
        for (i, event) in changed.iter().enumerate() {
            assert_ne!(event.hash(), h, "change {i} kept the hash");
        }
    }

    #[test]
    fn numbers_keep_their_kind_and_keys_their_order_does_not_matter() {
        let one = |v: Value| Event::new("t", v).hash();
        assert_ne!(one(json!(1)), one(json!(1.0)));
        assert_ne!(one(json!(1)), one(json!(-1)));
        assert_ne!(one(json!("1")), one(json!(1)));
        assert_ne!(one(json!([])), one(json!({})));
        assert_ne!(one(json!(null)), one(json!([null])));
        assert_ne!(one(json!(["ab"])), one(json!(["a", "b"])));
        let parsed: Value = serde_json::from_str(r#"{"b": 1, "a": {"d": 2, "c": 3}}"#).unwrap();
        assert_eq!(one(parsed), one(json!({ "a": { "c": 3, "d": 2 }, "b": 1 })));
    }

    #[test]
    fn a_json_round_trip_keeps_the_hash() {
        let event = stamped(Event::new(
            "t",
            json!({ "x": 0.1, "y": u64::MAX, "z": i64::MIN }),
        ));
        let back: Event = serde_json::from_value(serde_json::to_value(&event).unwrap()).unwrap();
        assert_eq!(back.hash(), event.hash());
    }

    #[test]
    fn a_batch_hash_covers_its_members() {
        let batch = |v: i64| {
            stamped(Event::batch([Event::new("m", json!(1)), Event::new("m", json!(v))]).unwrap())
        };
        let (a, b) = (batch(2), batch(3));
        assert_ne!(a.hash(), b.hash());
    }

    #[test]
    fn verify_wants_the_right_hash() {
        let event = stamped(Event::new("t", json!(1)));
        assert!(matches!(verify(&event), Err(HappenError::Integrity { .. })));
        let mut carried = event.clone();
        carried.context_mut().causal.hash = Some(event.hash());
        verify(&carried).unwrap();
        let mut wrong = event.clone();
        wrong.context_mut().causal.hash = Some(EventHash::from_bytes([7; 32]));
        let error = verify(&wrong).unwrap_err().to_string();
        assert!(error.contains("changed on the way"), "{error}");
    }

    #[test]
    fn a_new_stamp_or_an_edit_drops_a_carried_hash() {
        let mut received = stamped(Event::new("t", json!(1)));
        received.context_mut().causal.hash = Some(EventHash::from_bytes([1; 32]));
        let edited = received.clone().with_context("k", json!(2));
        assert_eq!(edited.causal().hash, None);
        assert_eq!(edited.hash(), EventHash::of(&edited));
        let mut forwarded = received.clone();
        crate::event::stamp(&mut forwarded, &Id::from("n2"), Some(&received));
        assert_eq!(forwarded.causal().hash, None);
    }

    #[test]
    fn hashes_print_and_parse_as_hex() {
        let h = Event::new("t", json!(1)).hash();
        let text = h.to_string();
        assert_eq!(text.parse::<EventHash>().unwrap(), h);
        assert_eq!(serde_json::to_value(h).unwrap(), json!(text));
        assert!("zz".parse::<EventHash>().is_err());
        assert!("é".repeat(32).parse::<EventHash>().is_err());
    }
}

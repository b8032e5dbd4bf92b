//! The compact form of an event on the wire: a MessagePack array whose
//! positions are the fields, with ids that are UUIDs as their 16 bytes.
//!
//! ```text
//! [ type, payload, id, sender, causationId, correlationId, path, timestamp,
//!   origin.nodeId, origin.sourceId, origin.sourceType, stream, extra, batch,
//!   hash, signature, waiting ]
//! ```
//!
//! - An id (event, causation, correlation, stream, and every node id) is a
//!   16-byte binary when it is a UUID in the form Happen writes, a string
//!   otherwise, so any id survives unchanged.
//! - `correlationId` is nil when it equals the event's id (every root event)
//!   and `origin.nodeId` is nil when it equals the sender (every stamped
//!   event); `extra` (the application's context fields) is nil when empty;
//!   `stream` is `[of, seq]` or nil; `batch` is an array of members in this
//!   same form, or nil; `hash` is the 32 bytes of the event's hash
//!   ([`crate::integrity`]), computed as the event is written and checked
//!   by the reader's caller; `signature` is the sender's signature
//!   ([`crate::identity`]) as bytes, or nil.
//!
//! Compared with the documentation's field names (the JSON form of
//! [`Event`]), this saves about three quarters of a small event's bytes,
//! and writing it does not look up any name.

use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::event::{Causal, Event, EventContext, Origin, StreamRef};
use crate::id::Id;
use crate::identity::Integrity;
use crate::integrity::{EventHash, Uuids};
use crate::path::Path;
use crate::uuid7;

use super::msgpack::{self, Raw, Reader, TooLong};

type Written = Result<(), TooLong>;

/// An id as it is written: 16 bytes when it is a canonical UUID (which
/// the second field may already know: see [`Uuids`]).
struct IdOut<'a>(&'a str, Option<Option<[u8; 16]>>);

impl<'a> IdOut<'a> {
    fn new(text: &'a str) -> IdOut<'a> {
        IdOut(text, None)
    }

    #[inline]
    fn uuid(&self) -> Option<[u8; 16]> {
        self.1.unwrap_or_else(|| uuid7::bytes_of(self.0))
    }
}

impl Serialize for IdOut<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.uuid() {
            Some(bytes) => serializer.serialize_bytes(&bytes),
            None => serializer.serialize_str(self.0),
        }
    }
}

/// An id as it is read: 16 bytes (a UUID) or a string.
struct IdIn(Id);

impl<'de> Deserialize<'de> for IdIn {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IdVisitor;
        impl Visitor<'_> for IdVisitor {
            type Value = IdIn;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an id: 16 bytes or a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<IdIn, E> {
                Ok(IdIn(Id::from(v)))
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<IdIn, E> {
                let bytes: [u8; 16] = v
                    .try_into()
                    .map_err(|_| E::invalid_length(v.len(), &"16 bytes"))?;
                Ok(IdIn(uuid7::text_of(&bytes)))
            }
        }
        deserializer.deserialize_any(IdVisitor)
    }
}

/// A path: an array of ids.
struct PathOut<'a>(&'a Path);

impl Serialize for PathOut<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for id in self.0.iter() {
            seq.serialize_element(&IdOut::new(id))?;
        }
        seq.end()
    }
}

struct PathIn(Path);

impl<'de> Deserialize<'de> for PathIn {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PathVisitor;
        impl<'de> Visitor<'de> for PathVisitor {
            type Value = PathIn;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of ids")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<PathIn, A::Error> {
                let mut path = Path::default();
                while let Some(IdIn(id)) = seq.next_element()? {
                    path.push(id);
                }
                Ok(PathIn(path))
            }
        }
        deserializer.deserialize_seq(PathVisitor)
    }
}

/// A batch: an array of events in this form.
struct BatchOut<'a>(&'a [Event]);

impl Serialize for BatchOut<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for member in self.0 {
            seq.serialize_element(&Out::of(member))?;
        }
        seq.end()
    }
}

/// An event as it is written (borrowing from it). A tuple, so that it is
/// an array whatever the encoder does with named fields.
#[derive(Serialize)]
struct Out<'a>(
    &'a str,                                                               // type
    &'a Value,                                                             // payload
    IdOut<'a>,                                                             // id
    IdOut<'a>,                                                             // sender
    Option<IdOut<'a>>,                                                     // causationId
    Option<IdOut<'a>>,              // correlationId, nil: the id
    PathOut<'a>,                    // path
    u64,                            // timestamp
    Option<IdOut<'a>>,              // origin.nodeId, nil: the sender
    Option<&'a str>,                // origin.sourceId
    Option<&'a str>,                // origin.sourceType
    Option<(IdOut<'a>, u64)>,       // stream
    Option<&'a Map<String, Value>>, // extra, nil: none
    Option<BatchOut<'a>>,           // batch
    HashOut,                        // hash
    Option<SigOut<'a>>,             // integrity.signature
    #[serde(skip_serializing_if = "Option::is_none")] Option<PathOut<'a>>, // waiting, left out when empty
);

/// A signature as it is written: its bytes (hex text that is not hex, which
/// no receiver would accept, travels as text to be refused there).
struct SigOut<'a>(&'a str);

impl Serialize for SigOut<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match crate::identity::unhex(self.0) {
            Some(bytes) => serializer.serialize_bytes(&bytes),
            None => serializer.serialize_str(self.0),
        }
    }
}

/// A signature as it is read: bytes (or text), kept as hex text.
struct SigIn(String);

impl<'de> Deserialize<'de> for SigIn {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SigVisitor;
        impl Visitor<'_> for SigVisitor {
            type Value = SigIn;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a signature: bytes")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<SigIn, E> {
                if v.len() > 1024 {
                    return Err(E::invalid_length(
                        v.len(),
                        &"a signature of at most 1024 bytes",
                    ));
                }
                Ok(SigIn(crate::identity::hex(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SigIn, E> {
                Ok(SigIn(v.to_owned()))
            }
        }
        deserializer.deserialize_any(SigVisitor)
    }
}

/// A hash as it is written: its 32 bytes.
struct HashOut(EventHash);

impl Serialize for HashOut {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0.as_bytes())
    }
}

/// A hash as it is read.
struct HashIn(EventHash);

impl<'de> Deserialize<'de> for HashIn {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct HashVisitor;
        impl Visitor<'_> for HashVisitor {
            type Value = HashIn;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an event hash: 32 bytes")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<HashIn, E> {
                let bytes: [u8; 32] = v
                    .try_into()
                    .map_err(|_| E::invalid_length(v.len(), &"32 bytes"))?;
                Ok(HashIn(EventHash::from_bytes(bytes)))
            }
        }
        deserializer.deserialize_bytes(HashVisitor)
    }
}

impl<'a> Out<'a> {
    fn of(event: &'a Event) -> Out<'a> {
        let cx = event.context();
        let causal = &cx.causal;
        // The hash works out the event's UUIDs; the writer takes them from it.
        let mut uuids = Uuids::default();
        let hash = EventHash::of_with(event, &mut uuids);
        Out(
            event.event_type(),
            event.payload(),
            IdOut(&causal.id, uuids.id),
            IdOut::new(&causal.sender),
            causal
                .causation_id
                .as_deref()
                .map(|c| IdOut(c, uuids.causation)),
            (causal.correlation_id != causal.id)
                .then(|| IdOut(&causal.correlation_id, uuids.correlation)),
            PathOut(&causal.path),
            causal.timestamp,
            (cx.origin.node_id != causal.sender).then(|| IdOut::new(&cx.origin.node_id)),
            cx.origin.source_id.as_deref(),
            cx.origin.source_type.as_deref(),
            cx.stream.as_ref().map(|s| (IdOut::new(&s.of), s.seq)),
            (!cx.extra.is_empty()).then_some(&cx.extra),
            event.batch_events().map(BatchOut),
            HashOut(hash),
            cx.integrity.as_ref().map(|i| SigOut(&i.signature)),
            (!causal.waiting.is_empty()).then_some(PathOut(&causal.waiting)),
        )
    }
}

/// An event as it is read (the same positions as [`Out`]).
#[derive(Deserialize)]
struct In(
    IdIn,
    Value,
    IdIn,
    IdIn,
    Option<IdIn>,
    Option<IdIn>,
    PathIn,
    u64,
    Option<IdIn>,
    Option<String>,
    Option<String>,
    Option<(IdIn, u64)>,
    Option<Map<String, Value>>,
    Option<Vec<In>>,
    HashIn,
    Option<SigIn>,
    #[serde(default)] Option<PathIn>,
);

impl In {
    fn into_event(self) -> Event {
        let In(
            event_type,
            payload,
            IdIn(id),
            IdIn(sender),
            causation,
            correlation,
            PathIn(path),
            timestamp,
            node_id,
            source_id,
            source_type,
            stream,
            extra,
            batch,
            HashIn(hash),
            signature,
            waiting,
        ) = self;
        let context = EventContext {
            causal: Causal {
                correlation_id: correlation.map_or_else(|| id.clone(), |c| c.0),
                id,
                causation_id: causation.map(|c| c.0),
                path,
                timestamp,
                sender: sender.clone(),
                hash: Some(hash),
                waiting: waiting.map(|w| w.0).unwrap_or_default(),
            },
            origin: Origin {
                node_id: node_id.map_or(sender, |n| n.0),
                source_id,
                source_type,
            },
            stream: stream.map(|(of, seq)| StreamRef { of: of.0, seq }),
            extra: extra.unwrap_or_default(),
            integrity: signature.map(|SigIn(signature)| Integrity { signature }),
        };
        let batch = batch.map(|members| members.into_iter().map(In::into_event).collect());
        Event::from_parts(event_type.0, payload, context, batch)
    }
}

impl IdOut<'_> {
    #[inline]
    fn write(&self, out: &mut Vec<u8>) -> Written {
        match self.uuid() {
            Some(bytes) => msgpack::bin(out, &bytes),
            None => msgpack::str(out, self.0),
        }
    }
}

impl PathOut<'_> {
    fn write(&self, out: &mut Vec<u8>) -> Written {
        msgpack::array_len(out, self.0.len())?;
        self.0.iter().try_for_each(|id| IdOut::new(id).write(out))
    }
}

/// Writes `Some` through `write`, `None` as nil.
#[inline]
fn write_opt<T>(
    out: &mut Vec<u8>,
    value: &Option<T>,
    write: impl FnOnce(&mut Vec<u8>, &T) -> Written,
) -> Written {
    match value {
        Some(value) => write(out, value),
        None => {
            msgpack::nil(out);
            Ok(())
        }
    }
}

impl Out<'_> {
    /// Writes the event directly: the same bytes its `Serialize` gives
    /// `rmp-serde`, without going through serde.
    fn write(&self, out: &mut Vec<u8>) -> Written {
        let Out(
            event_type,
            payload,
            id,
            sender,
            causation,
            correlation,
            path,
            timestamp,
            node_id,
            source_id,
            source_type,
            stream,
            extra,
            batch,
            HashOut(hash),
            signature,
            waiting,
        ) = self;
        msgpack::array_len(out, if waiting.is_some() { 17 } else { 16 })?;
        msgpack::str(out, event_type)?;
        msgpack::value(out, payload)?;
        id.write(out)?;
        sender.write(out)?;
        write_opt(out, causation, |out, id| id.write(out))?;
        write_opt(out, correlation, |out, id| id.write(out))?;
        path.write(out)?;
        msgpack::uint(out, *timestamp);
        write_opt(out, node_id, |out, id| id.write(out))?;
        write_opt(out, source_id, |out, text| msgpack::str(out, text))?;
        write_opt(out, source_type, |out, text| msgpack::str(out, text))?;
        write_opt(out, stream, |out, (of, seq)| {
            msgpack::array_len(out, 2)?;
            of.write(out)?;
            msgpack::uint(out, *seq);
            Ok(())
        })?;
        write_opt(out, extra, |out, extra| msgpack::map(out, extra))?;
        write_opt(out, batch, |out, BatchOut(members)| {
            msgpack::array_len(out, members.len())?;
            members
                .iter()
                .try_for_each(|member| Out::of(member).write(out))
        })?;
        msgpack::bin(out, hash.as_bytes())?;
        write_opt(
            out,
            signature,
            |out, SigOut(signature)| match crate::identity::unhex(signature) {
                Some(bytes) => msgpack::bin(out, &bytes),
                None => msgpack::str(out, signature),
            },
        )?;
        if let Some(waiting) = waiting {
            waiting.write(out)?;
        }
        Ok(())
    }
}

/// An id read directly: 16 bytes (a UUID) or text.
#[inline]
fn read_id(reader: &mut Reader<'_>) -> Option<IdIn> {
    read_uuid(reader, &mut None)
}

/// [`read_id`], keeping the 16 bytes of a UUID in `known` (the text made
/// from them reads back as them: the `uuid7` tests go through every byte
/// at every position).
#[inline]
fn read_uuid(reader: &mut Reader<'_>, known: &mut Option<Option<[u8; 16]>>) -> Option<IdIn> {
    Some(IdIn(match reader.raw()? {
        Raw::Text(text) => Id::from(text),
        Raw::Bytes(bytes) => {
            let bytes: [u8; 16] = bytes.try_into().ok()?;
            *known = Some(Some(bytes));
            uuid7::text_of(&bytes)
        }
    }))
}

fn read_path(reader: &mut Reader<'_>, depth: usize) -> Option<PathIn> {
    msgpack::deeper(depth)?;
    let len = reader.array_len()?;
    let mut path = Path::default();
    for _ in 0..len {
        path.push(read_id(reader)?.0);
    }
    Some(PathIn(path))
}

/// Reads an event directly, at nesting `depth`, into a new event's own
/// allocation (field by field, with no intermediate record to copy); `None`
/// for anything but the forms [`Out::write`] and `rmp-serde` write (see
/// [`msgpack`]: the caller then lets serde decide, which reads through
/// [`In`]). What the bytes say of the event's own UUIDs goes to `uuids`.
fn read_event(reader: &mut Reader<'_>, depth: usize, uuids: &mut Uuids) -> Option<Event> {
    let inner = msgpack::deeper(depth)?;
    let fields = reader.array_len()?;
    if fields != 16 && fields != 17 {
        return None;
    }
    let text = |reader: &mut Reader<'_>| reader.text().map(str::to_owned);
    let IdIn(event_type) = read_id(reader)?;
    let payload = reader.value(inner)?;
    let mut event = Event::new(event_type, payload);
    let (cx, batch) = event.parts_mut();
    let causal = &mut cx.causal;
    causal.id = read_uuid(reader, &mut uuids.id)?.0;
    causal.sender = read_id(reader)?.0;
    causal.causation_id = reader
        .opt(|reader| read_uuid(reader, &mut uuids.causation))?
        .map(|c| c.0);
    causal.correlation_id = match reader.opt(|reader| read_uuid(reader, &mut uuids.correlation))? {
        Some(IdIn(correlation)) => correlation,
        None => causal.id.clone(),
    };
    causal.path = read_path(reader, inner)?.0;
    causal.timestamp = reader.uint()?;
    cx.origin.node_id = match reader.opt(read_id)? {
        Some(IdIn(node)) => node,
        None => causal.sender.clone(),
    };
    cx.origin.source_id = reader.opt(text)?;
    cx.origin.source_type = reader.opt(text)?;
    cx.stream = reader
        .opt(|reader| {
            msgpack::deeper(inner)?;
            (reader.array_len()? == 2).then_some(())?;
            Some((read_id(reader)?, reader.uint()?))
        })?
        .map(|(IdIn(of), seq)| StreamRef { of, seq });
    if let Some(extra) = reader.opt(|reader| reader.map(inner))? {
        cx.extra = extra;
    }
    *batch = reader.opt(|reader| {
        let members = reader.array_len()?;
        let deeper = msgpack::deeper(inner)?;
        let mut batch = Vec::new();
        for _ in 0..members {
            batch.push(read_event(reader, deeper, &mut Uuids::default())?);
        }
        Some(batch)
    })?;
    cx.causal.hash = Some(EventHash::from_bytes(reader.bytes()?.try_into().ok()?));
    cx.integrity = reader
        .opt(|reader| match reader.raw()? {
            Raw::Bytes(bytes) if bytes.len() <= 1024 => Some(crate::identity::hex(bytes)),
            Raw::Bytes(_) => None,
            Raw::Text(text) => Some(text.to_owned()),
        })?
        .map(|signature| Integrity { signature });
    if fields == 17
        && let Some(PathIn(waiting)) = reader.opt(|reader| read_path(reader, inner))?
    {
        cx.causal.waiting = waiting;
    }
    Some(event)
}

/// Writes `event` in the compact form directly into `out`.
pub(super) fn write(event: &Event, out: &mut Vec<u8>) -> Written {
    Out::of(event).write(out)
}

/// Reads an event in the compact form directly, all of `bytes`, with what
/// its bytes said of its own UUIDs (for checking its hash); `None`: not a
/// form read here, for the serde decoder to decide.
pub(super) fn read(bytes: &[u8]) -> Option<(Event, Uuids)> {
    let mut reader = Reader::new(bytes);
    let mut uuids = Uuids::default();
    let event = read_event(&mut reader, 0, &mut uuids)?;
    reader.is_done().then_some((event, uuids))
}

/// Writes `event` in the compact form (`#[serde(with = "compact")]`).
pub(super) fn serialize<S: Serializer>(event: &Event, serializer: S) -> Result<S::Ok, S::Error> {
    Out::of(event).serialize(serializer)
}

/// Reads an event in the compact form.
pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Event, D::Error> {
    In::deserialize(deserializer).map(In::into_event)
}

/// The compact form as a value of its own, for encoding an event alone
/// through serde (what the direct writer is compared with).
#[cfg(test)]
pub(super) struct Compact<'a>(pub(super) &'a Event);

#[cfg(test)]
impl Serialize for Compact<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize(self.0, serializer)
    }
}

/// The compact form read into an event.
pub(super) struct CompactIn(pub(super) Event);

impl<'de> Deserialize<'de> for CompactIn {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize(deserializer).map(CompactIn)
    }
}

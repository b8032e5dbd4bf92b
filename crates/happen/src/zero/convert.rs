//! Zero events and ordinary events, each into the other, with the causal
//! context kept: how zero handlers and ordinary ones interoperate.
//!
//! A JSON object payload becomes one field per value, nested objects
//! flattened with `.` (`{"location": {"lat": 1.5}}` is `location.lat`);
//! integers become `i64` (`u64` above `i64::MAX`), other numbers `f64`,
//! strings `Str`, `null` `Null`. What has no flat form (an array, an empty
//! object, an object with a key that is empty or contains `.`) is kept as
//! JSON text. A payload that is not an object is one field named `""`.
//! The way back gives the same JSON value.

use serde_json::{Map, Number, Value};

use super::writer::Stamp;
use super::{Kind, ZeroError, ZeroEvent, ZeroWriter};
use crate::event::Event;

impl ZeroEvent {
    /// The zero form of an ordinary event: its payload flattened (see the
    /// module docs of `convert.rs` in the source, or `docs/ARCHITECTURE.md`),
    /// its causal context kept (id, cause, correlation, sender, path,
    /// timestamp). Allocates; for the boundary, not the hot path.
    pub fn from_event(event: &Event) -> Result<ZeroEvent, ZeroError> {
        let mut writer = ZeroWriter::from_value(event.event_type(), event.payload());
        let causal = event.causal();
        let uuid = |id: &str| {
            crate::uuid7::bytes_of(id).ok_or(ZeroError::Unrepresentable(
                "an event id that is not a UUID in its usual form",
            ))
        };
        let causation = match &causal.causation_id {
            Some(id) => Some(uuid(id)?),
            None => None,
        };
        writer.seal(Stamp {
            id: uuid(&causal.id)?,
            timestamp: causal.timestamp,
            sender: &causal.sender,
            causation,
            correlation: Some(&causal.correlation_id),
            path: causal.path.iter().map(|hop| hop.as_str()),
        })
    }

    /// The ordinary form: an [`Event`] with the payload as JSON and the same
    /// causal context. Allocates.
    pub fn to_event(&self) -> Event {
        let mut event = Event::new(self.event_type(), self.payload());
        let causal = &mut event.context_mut().causal;
        causal.id = self.id().to_id();
        causal.causation_id = self.causation().map(|id| id.to_id());
        causal.correlation_id = crate::Id::from(self.correlation_id());
        causal.sender = crate::Id::from(self.sender());
        causal.timestamp = self.timestamp();
        let mut path = self.path();
        if let Some(first) = path.next() {
            let mut built = crate::Path::root(crate::Id::from(first));
            for hop in path {
                built.push(crate::Id::from(hop));
            }
            causal.path = built;
        }
        event.context_mut().origin.node_id = crate::Id::from(self.sender());
        event
    }

    /// The payload as JSON (nested names unflattened).
    pub fn payload(&self) -> Value {
        let mut root = Map::new();
        for (name, kind, at) in self.offsets().iter() {
            let value = self.value(kind, at);
            if name.is_empty() {
                return value;
            }
            insert(&mut root, name, value);
        }
        Value::Object(root)
    }

    fn value(&self, kind: Kind, at: usize) -> Value {
        let number = |n: Option<Number>| n.map_or(Value::Null, Value::Number);
        let read = || -> Result<Value, ZeroError> {
            Ok(match kind {
                Kind::I8 => Value::from(self.i8(at)?),
                Kind::I16 => Value::from(self.i16(at)?),
                Kind::I32 => Value::from(self.i32(at)?),
                Kind::I64 => Value::from(self.i64(at)?),
                Kind::U8 => Value::from(self.u8(at)?),
                Kind::U16 => Value::from(self.u16(at)?),
                Kind::U32 => Value::from(self.u32(at)?),
                Kind::U64 => Value::from(self.u64(at)?),
                Kind::F32 => number(Number::from_f64(f64::from(self.f32(at)?))),
                Kind::F64 => number(Number::from_f64(self.f64(at)?)),
                Kind::Bool => Value::Bool(self.bool(at)?),
                Kind::Str => Value::String(self.str(at)?.to_owned()),
                Kind::Bytes => Value::from(self.bytes(at)?.to_vec()),
                Kind::Json => {
                    let text = self.str(at)?;
                    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
                }
                Kind::Null => Value::Null,
            })
        };
        read().unwrap_or(Value::Null)
    }
}

impl ZeroWriter {
    /// A writer holding `value` as payload, flattened as an ordinary
    /// event's is (see [`ZeroEvent::from_event`]). Allocates.
    pub fn from_value(event_type: &str, value: &Value) -> ZeroWriter {
        let mut writer = ZeroWriter::new(event_type);
        match value {
            Value::Object(map) if flat(map) => flatten(&mut writer, "", map),
            other => put(&mut writer, "", other),
        }
        writer
    }
}

/// Whether every key of `map` can be a name part (non-empty, no `.`).
fn flat(map: &Map<String, Value>) -> bool {
    !map.is_empty() && map.keys().all(|k| !k.is_empty() && !k.contains('.'))
}

fn flatten(writer: &mut ZeroWriter, prefix: &str, map: &Map<String, Value>) {
    for (key, value) in map {
        let name = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            Value::Object(inner) if flat(inner) => flatten(writer, &name, inner),
            other => put(writer, &name, other),
        }
    }
}

fn put(writer: &mut ZeroWriter, name: &str, value: &Value) {
    match value {
        Value::Null => writer.null(name),
        Value::Bool(b) => writer.bool(name, *b),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => writer.i64(name, i),
            (None, Some(u), _) => writer.u64(name, u),
            (None, None, Some(f)) => writer.f64(name, f),
            _ => writer.json_text(name, &n.to_string()),
        },
        Value::String(s) => writer.str(name, s),
        other => writer.json_text(name, &other.to_string()),
    };
}

/// Puts `value` at the dotted `name` inside `root`, making the objects on
/// the way (a non-object in the way is replaced).
fn insert(root: &mut Map<String, Value>, name: &str, value: Value) {
    match name.split_once('.') {
        None => {
            root.insert(name.to_owned(), value);
        }
        Some((head, rest)) => {
            let slot = root
                .entry(head.to_owned())
                .or_insert_with(|| Value::Object(Map::new()));
            if !slot.is_object() {
                *slot = Value::Object(Map::new());
            }
            if let Value::Object(inner) = slot {
                insert(inner, rest, value);
            }
        }
    }
}

//! Property tests: every accessor kind reads back what was written, JSON
//! payloads survive the round trip through the flat form, and corrupted or
//! truncated buffers give errors, never panics.

use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;

#[derive(Debug, Clone)]
enum Field {
    I8(i8),
    I16(i16),
    I32(i32),
    I64(i64),
    U8(u8),
    U16(u16),
    U32(u32),
    U64(u64),
    F32(f32),
    F64(f64),
    Bool(bool),
    Str(String),
    Bytes(Vec<u8>),
}

fn field() -> impl Strategy<Value = Field> {
    prop_oneof![
        any::<i8>().prop_map(Field::I8),
        any::<i16>().prop_map(Field::I16),
        any::<i32>().prop_map(Field::I32),
        any::<i64>().prop_map(Field::I64),
        any::<u8>().prop_map(Field::U8),
        any::<u16>().prop_map(Field::U16),
        any::<u32>().prop_map(Field::U32),
        any::<u64>().prop_map(Field::U64),
        any::<f32>().prop_map(Field::F32),
        any::<f64>().prop_map(Field::F64),
        any::<bool>().prop_map(Field::Bool),
        ".{0,40}".prop_map(Field::Str),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(Field::Bytes),
    ]
}

fn write(fields: &[Field]) -> ZeroEvent {
    let mut w = ZeroWriter::new("prop-event");
    for (i, f) in fields.iter().enumerate() {
        let name = format!("f{i}.v");
        match f {
            Field::I8(v) => w.i8(&name, *v),
            Field::I16(v) => w.i16(&name, *v),
            Field::I32(v) => w.i32(&name, *v),
            Field::I64(v) => w.i64(&name, *v),
            Field::U8(v) => w.u8(&name, *v),
            Field::U16(v) => w.u16(&name, *v),
            Field::U32(v) => w.u32(&name, *v),
            Field::U64(v) => w.u64(&name, *v),
            Field::F32(v) => w.f32(&name, *v),
            Field::F64(v) => w.f64(&name, *v),
            Field::Bool(v) => w.bool(&name, *v),
            Field::Str(v) => w.str(&name, v),
            Field::Bytes(v) => w.bytes(&name, v),
        };
    }
    w.finish("prop-sender").expect("a valid event")
}

/// Reads everything a reader can reach; must not panic on any buffer.
fn read_everything(event: &ZeroEvent) {
    let _ = (event.event_type(), event.sender(), event.correlation_id());
    let _ = (event.id(), event.causation(), event.timestamp());
    let _ = event.path().count();
    let _ = event.payload();
    let _ = event.to_event();
    for (name, _kind, at) in event.offsets().iter() {
        let _ = (
            event.u64(at),
            event.str(at),
            event.bytes(at),
            event.bool(at),
        );
        let _ = event.get::<f64>(name);
    }
    for at in [0, 7, 95, 96, 200, usize::MAX - 3, usize::MAX] {
        let _ = (event.i64(at), event.f32(at), event.str(at), event.bytes(at));
    }
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e12f64..1e12).prop_map(Value::from),
        "[a-z .]{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map("[a-z.]{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn every_kind_reads_back(fields in proptest::collection::vec(field(), 0..12)) {
        let event = write(&fields);
        let again = ZeroEvent::from_bytes(event.as_bytes()).expect("its own bytes pass the check");
        prop_assert_eq!(again.offsets().len(), fields.len());
        for (i, f) in fields.iter().enumerate() {
            let name = format!("f{i}.v");
            let at = again.offsets().get(&name).expect("the field is named");
            match f {
                Field::I8(v) => { prop_assert_eq!(again.get::<i8>(&name)?, *v); prop_assert_eq!(again.i8(at)?, *v); }
                Field::I16(v) => prop_assert_eq!(again.get::<i16>(&name)?, *v),
                Field::I32(v) => prop_assert_eq!(again.get::<i32>(&name)?, *v),
                Field::I64(v) => prop_assert_eq!(again.get::<i64>(&name)?, *v),
                Field::U8(v) => prop_assert_eq!(again.get::<u8>(&name)?, *v),
                Field::U16(v) => prop_assert_eq!(again.get::<u16>(&name)?, *v),
                Field::U32(v) => prop_assert_eq!(again.get::<u32>(&name)?, *v),
                Field::U64(v) => prop_assert_eq!(again.get::<u64>(&name)?, *v),
                Field::F32(v) => prop_assert_eq!(again.get::<f32>(&name)?.to_bits(), v.to_bits()),
                Field::F64(v) => prop_assert_eq!(again.f64(at)?.to_bits(), v.to_bits()),
                Field::Bool(v) => prop_assert_eq!(again.get::<bool>(&name)?, *v),
                Field::Str(v) => prop_assert_eq!(again.get::<&str>(&name)?, v.as_str()),
                Field::Bytes(v) => prop_assert_eq!(again.get::<&[u8]>(&name)?, v.as_slice()),
            }
        }
    }

    #[test]
    fn json_payloads_survive_the_flat_form(payload in json_value()) {
        let mut event = crate::event::Event::new("prop-event", payload.clone());
        crate::event::stamp(&mut event, &crate::Id::from("prop-sender"), None);
        let zero = ZeroEvent::from_event(&event).expect("any JSON converts");
        prop_assert_eq!(zero.payload(), payload.clone());
        let back = zero.to_event();
        prop_assert_eq!(back.payload(), &payload);
        prop_assert_eq!(zero.id().to_id(), event.causal().id.clone());
    }

    #[test]
    fn corrupted_and_truncated_buffers_are_errors_not_panics(
        fields in proptest::collection::vec(field(), 0..6),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let event = write(&fields);
        let mut bytes = event.as_bytes().to_vec();
        for (at, value) in edits {
            let at = at.index(bytes.len());
            bytes[at] = value;
        }
        if let Ok(event) = ZeroEvent::from_bytes(&bytes) {
            read_everything(&event);
        }
        let cut = cut.index(bytes.len());
        prop_assert!(ZeroEvent::from_bytes(&event.as_bytes()[..cut]).is_err());
    }

    #[test]
    fn arbitrary_bytes_after_the_magic_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut bytes = b"HZ\x01\x00".to_vec();
        bytes.extend_from_slice(&tail);
        if let Ok(event) = ZeroEvent::from_bytes(&bytes) {
            read_everything(&event);
        }
    }
}

#[test]
fn a_non_object_payload_is_one_unnamed_field() {
    let mut event = crate::event::Event::new("x", json!([1, 2]));
    crate::event::stamp(&mut event, &crate::Id::from("n"), None);
    let zero = ZeroEvent::from_event(&event).unwrap();
    assert_eq!(
        zero.offsets().field(""),
        Some((Kind::Json, zero.offsets().get("").unwrap()))
    );
}

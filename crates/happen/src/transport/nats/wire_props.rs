//! Properties of the wire format: every event survives encode → decode, and
//! no byte string makes the decoder panic.

use proptest::prelude::*;
use serde_json::{Map, Value, json};

use super::wire::{self, Reply};
use crate::integrity::as_received;
use crate::{Event, HappenError};

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        // Finite floats only: JSON has no NaN or infinity.
        (-1.0e12f64..1.0e12).prop_map(Value::from),
        ".{0,24}".prop_map(Value::from),
        // Where MessagePack changes form: integer widths, text, array and
        // map lengths.
        prop::sample::select(vec![
            -33i64,
            -32,
            -31,
            -1,
            127,
            128,
            255,
            256,
            65535,
            65536,
            -128,
            -129,
            -32768,
            -32769,
            (1 << 32) - 1,
            1 << 32,
            i64::from(i32::MIN),
            i64::from(i32::MIN) - 1,
            i64::MIN,
        ])
        .prop_map(Value::from),
        Just(Value::from(u64::MAX)),
        prop::sample::select(vec![31usize, 32, 255, 256, 65535, 65536])
            .prop_map(|n| Value::from("x".repeat(n))),
        (14usize..18).prop_map(|n| Value::from(vec![Value::Null; n])),
        (14usize..18)
            .prop_map(|n| Value::Object((0..n).map(|i| (i.to_string(), Value::Null)).collect())),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map("[a-zA-Z0-9_]{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn token() -> impl Strategy<Value = String> {
    "[a-z0-9-]{1,10}"
}

/// Events as users make them, and as Happen stamps them (root or child,
/// single or a batch): the compact form must carry all of them unchanged.
fn event() -> impl Strategy<Value = Event> {
    (
        unstamped(),
        prop::option::of((token(), prop::option::of(token()))),
        0usize..3,
        prop::collection::vec(token(), 0..3),
    )
        .prop_map(|(event, stamp, members, waiting)| {
            let event = if members > 0 {
                let t = event.event_type().to_owned();
                Event::batch((0..members).map(|i| Event::new(t.clone(), json!(i)))).unwrap()
            } else {
                event
            };
            let Some((sender, parent)) = stamp else {
                return event;
            };
            let mut event = event;
            let parent = parent.map(|p| {
                let mut root = Event::new("root", json!(null));
                crate::event::stamp(&mut root, &crate::Id::from(p), None);
                root
            });
            crate::event::stamp(&mut event, &crate::Id::from(sender), parent.as_ref());
            // A request from a flow: the nodes waiting for it.
            event.context_mut().causal.waiting = waiting.into_iter().map(crate::Id::from).collect();
            event
        })
}

fn unstamped() -> impl Strategy<Value = Event> {
    (
        prop::collection::vec(token(), 1..4),
        json_value(),
        prop::option::of(token()),
        prop::option::of((token(), token())),
        prop::collection::btree_map("[a-z]{1,6}", json_value(), 0..3),
    )
        .prop_map(|(segments, payload, correlation, source, extra)| {
            let mut event = Event::new(segments.join("."), payload);
            if let Some(c) = correlation {
                event = event.with_correlation_id(c);
            }
            if let Some((id, kind)) = source {
                event = event.with_source(id, kind);
            }
            for (k, v) in extra {
                // "causal" and "origin" are the context's own fields.
                if k != "causal" && k != "origin" {
                    event = event.with_context(k, v);
                }
            }
            event
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn events_round_trip(event in event()) {
        let bytes = wire::encode_event(&event).unwrap();
        prop_assert_eq!(wire::decode_event(&bytes).unwrap(), as_received(&event));
    }

    #[test]
    fn replies_round_trip(event in event(), fail in any::<bool>(), text in ".{0,40}") {
        let reply = if fail {
            Reply::Err(HappenError::HandlerFailed { node: "n".into(), event_type: "t".into(), cause: text, source: None })
        } else {
            Reply::Ok(event)
        };
        let bytes = wire::encode_reply(&reply).unwrap();
        let expected = match reply {
            Reply::Ok(event) => Reply::Ok(as_received(&event)),
            other => other,
        };
        prop_assert_eq!(wire::decode_reply(&bytes).unwrap(), expected);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = wire::decode_event(&bytes);
        let _ = wire::decode_reply(&bytes);
    }

    #[test]
    fn corrupted_events_are_errors_or_events(event in event(), flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let mut bytes = wire::encode_event(&event).unwrap();
        for (index, byte) in flips {
            let i = index.index(bytes.len());
            bytes[i] = byte;
        }
        // A clean error, or an event with the original's contents (its
        // hash still matches): never a panic, never a changed event.
        match wire::decode_event(&bytes) {
            Ok(decoded) => prop_assert_eq!(decoded.hash(), event.hash()),
            Err(HappenError::Codec { .. } | HappenError::Integrity { .. }) => {}
            Err(other) => prop_assert!(false, "unexpected error kind {other:?}"),
        }
    }

    #[test]
    fn truncated_events_are_errors(event in event(), cut in any::<prop::sample::Index>()) {
        let bytes = wire::encode_event(&event).unwrap();
        let cut = cut.index(bytes.len());
        prop_assert!(wire::decode_event(&bytes[..cut]).is_err());
    }
}

/// Bytes with up to four of them changed (or cut short).
fn mutated(
    bytes: Vec<u8>,
    flips: &[(prop::sample::Index, u8)],
    cut: Option<prop::sample::Index>,
) -> Vec<u8> {
    let mut bytes = bytes;
    for (index, byte) in flips {
        let i = index.index(bytes.len());
        bytes[i] = *byte;
    }
    if let Some(cut) = cut {
        bytes.truncate(cut.index(bytes.len() + 1));
    }
    bytes
}

/// Every MessagePack marker a JSON value can be written with, by hand:
/// floats of both widths and not finite, integers in every width, long
/// texts, and what JSON has no form for (bytes, extensions).
fn msgpack_leaf() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        any::<f32>().prop_map(|f| [&[0xca][..], &f.to_be_bytes()].concat()),
        any::<f64>().prop_map(|f| [&[0xcb][..], &f.to_be_bytes()].concat()),
        (0xccu8..=0xd3, any::<[u8; 8]>()).prop_map(|(marker, raw)| {
            let width = [1, 2, 4, 8][usize::from(marker - 0xcc) % 4];
            [&[marker][..], &raw[..width]].concat()
        }),
        (0xc4u8..=0xc6, 0usize..40).prop_map(|(marker, len)| match marker {
            0xc4 => [vec![marker, len as u8], vec![b'a'; len]].concat(),
            0xc5 => [vec![marker, 0, len as u8], vec![b'a'; len]].concat(),
            _ => [vec![marker, 0, 0, 0, len as u8], vec![b'a'; len]].concat(),
        }),
        Just(vec![0xd4, 1, 2]),
        Just(vec![0xc1]),
        "[a-z]{0,300}".prop_map(|text| rmp_serde::to_vec(&text).unwrap()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The direct encoder writes the serde encoder's bytes, for events and
    /// for answers.
    #[test]
    fn direct_encoding_is_byte_for_byte_serdes(event in event()) {
        prop_assert_eq!(wire::encode_event(&event).unwrap(), wire::encode_event_by_serde(&event, false));
        let reply = wire::encode_reply(&Reply::Ok(event.clone())).unwrap();
        prop_assert_eq!(reply, wire::encode_event_by_serde(&event, true));
    }

    /// Every event the encoder writes is read directly (not left to serde),
    /// and what the direct reader makes of changed bytes, serde makes too.
    #[test]
    fn direct_reading_agrees_with_serde(
        event in event(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        cut in prop::option::of(any::<prop::sample::Index>()),
    ) {
        let bytes = wire::encode_event(&event).unwrap();
        let read = super::compact::read(&bytes[1..]);
        prop_assert_eq!(read.as_ref().map(|(e, _)| as_received(e)), Some(as_received(&event)));
        // What the reader learnt of the ids is what their text says.
        let (read, uuids) = read.unwrap();
        for (known, text) in [(uuids.id, Some(read.id())), (uuids.causation, read.causal().causation_id.as_deref()), (uuids.correlation, Some(read.causal().correlation_id.as_str()))] {
            if let (Some(known), Some(text)) = (known, text) {
                prop_assert_eq!(known, crate::uuid7::bytes_of(text));
            }
        }
        let changed = mutated(bytes, &flips, cut);
        let versioned = changed.split_first().filter(|(version, _)| **version == wire::VERSION);
        if let Some((direct, _)) = versioned.and_then(|(_, rest)| super::compact::read(rest)) {
            prop_assert_eq!(Some(direct), wire::decode_event_by_serde(&changed));
        }
    }

    /// JSON values: the same bytes as serde's, read back unchanged; any
    /// value read from changed bytes is the one serde reads.
    #[test]
    fn json_values_agree_with_serde(
        value in json_value(),
        leaf in msgpack_leaf(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
        cut in prop::option::of(any::<prop::sample::Index>()),
    ) {
        let mut bytes = Vec::new();
        super::msgpack::value(&mut bytes, &value).unwrap();
        prop_assert_eq!(&bytes, &rmp_serde::to_vec(&value).unwrap());
        let mut reader = super::msgpack::Reader::new(&bytes);
        let read = reader.value(0);
        prop_assert_eq!(read.as_ref(), Some(&value));
        prop_assert!(reader.is_done());
        // A one-entry map around a leaf of any form, then changed.
        let wrapped = [&[0x81, 0xa1, b'k'][..], &leaf].concat();
        for candidate in [wrapped.clone(), mutated(wrapped, &flips, cut), mutated(bytes, &flips, cut)] {
            let mut reader = super::msgpack::Reader::new(&candidate);
            if let Some(direct) = reader.value(0).filter(|_| reader.is_done()) {
                prop_assert_eq!(Some(direct), rmp_serde::from_slice::<Value>(&candidate).ok(), "{:x?}", candidate);
            }
        }
    }
}

#[test]
fn serde_json_reserved_keys_are_left_to_serde() {
    // With serde_json's `raw_value` feature (which a crate in the build may
    // turn on), this map is the JSON text "1", not an object: the direct
    // reader must not decide.
    let value = serde_json::json!({ "$serde_json::private::RawValue": "1" });
    let bytes = rmp_serde::to_vec(&value).unwrap();
    assert_eq!(super::msgpack::Reader::new(&bytes).value(0), None);
    let nested = rmp_serde::to_vec(&serde_json::json!({ "a": [value] })).unwrap();
    assert_eq!(super::msgpack::Reader::new(&nested).value(0), None);
}

#[test]
fn lengths_of_4_gib_are_refused_not_cut() {
    let mut out = Vec::new();
    assert_eq!(
        super::msgpack::array_len(&mut out, 1 << 32),
        Err(super::msgpack::TooLong)
    );
    assert!(out.is_empty());
}

#[test]
fn deep_values_are_left_to_serde() {
    let mut bytes = vec![0x91; super::msgpack::MAX_NESTING + 1];
    bytes.push(0xc0);
    assert_eq!(super::msgpack::Reader::new(&bytes).value(0), None);
    assert!(
        rmp_serde::from_slice::<Value>(&bytes).is_ok(),
        "serde reads it"
    );
    let shallow = &bytes[1..];
    assert!(super::msgpack::Reader::new(shallow).value(0).is_some());
}

#[test]
fn decode_error_is_codec_and_says_what() {
    let err = wire::decode_event(&[wire::VERSION, 0x93, 0x01]).unwrap_err();
    assert!(
        matches!(err, HappenError::Codec { ref message, .. } if message.contains("cannot decode event")),
        "{err}"
    );
    let mut not_an_event = vec![wire::VERSION];
    not_an_event.extend(rmp_serde::to_vec_named(&json!({ "payload": 1 })).unwrap());
    assert!(
        wire::decode_event(&not_an_event).is_err(),
        "an event needs a type"
    );
}

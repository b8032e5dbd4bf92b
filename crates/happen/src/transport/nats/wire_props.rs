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

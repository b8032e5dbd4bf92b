//! The layout, the writer and the conversions, read back.

use serde_json::json;

use super::*;
use crate::event::Event;

fn reading() -> ZeroEvent {
    let mut writer = ZeroWriter::new("sensor-reading");
    writer
        .str("sensorId", "s-17")
        .f64("temperature", 21.5)
        .u64("timestamp", 1_767_225_600_000)
        .f64("location.latitude", 52.52)
        .f64("location.longitude", 13.4)
        .bool("calibrated", true)
        .i16("offset", -3)
        .bytes("raw", &[1, 2, 3]);
    writer.finish("gateway").unwrap()
}

#[test]
fn fields_read_back_through_offsets_and_by_name() {
    let event = reading();
    let offsets = event.offsets();
    assert_eq!(offsets.len(), 8);
    assert_eq!(
        event.f64(offsets.get("temperature").unwrap()).unwrap(),
        21.5
    );
    assert_eq!(event.str(offsets.get("sensorId").unwrap()).unwrap(), "s-17");
    assert_eq!(event.get::<f64>("location.longitude").unwrap(), 13.4);
    assert!(event.get::<bool>("calibrated").unwrap());
    assert_eq!(event.get::<i16>("offset").unwrap(), -3);
    assert_eq!(event.get::<&[u8]>("raw").unwrap(), &[1, 2, 3]);
    assert!(matches!(
        event.get::<u32>("temperature"),
        Err(ZeroError::WrongKind {
            found: Kind::F64,
            ..
        })
    ));
    assert_eq!(
        event.get::<u8>("missing"),
        Err(ZeroError::NoField("missing".into()))
    );
    let len = event.as_bytes().len();
    assert!(matches!(
        event.u64(len - 4),
        Err(ZeroError::OutOfRange { width: 8, .. })
    ));
    assert!(event.u64(usize::MAX).is_err());
}

#[test]
fn the_causal_context_is_in_the_header() {
    let event = reading();
    assert_eq!(event.event_type(), "sensor-reading");
    assert_eq!(event.sender(), "gateway");
    assert_eq!(event.causation(), None);
    assert_eq!(event.correlation_id(), event.id().text().as_str());
    assert_eq!(event.path().collect::<Vec<_>>(), ["gateway"]);
    assert!(event.timestamp() > 0);

    let mut reply = ZeroWriter::new("reading-ok");
    reply.u8("ok", 1);
    let child = run::seal_child(&mut reply, "processor", &event).unwrap();
    assert_eq!(child.causation(), Some(event.id()));
    assert_eq!(child.correlation_id(), event.correlation_id());
    assert_eq!(child.path().collect::<Vec<_>>(), ["gateway", "processor"]);
    assert_ne!(child.id(), event.id());
}

#[test]
fn an_invalid_event_type_is_an_error_when_sealed() {
    let mut writer = ZeroWriter::new("not a type!");
    writer.u8("x", 1);
    assert!(matches!(
        writer.finish("n"),
        Err(ZeroError::BadString { .. })
    ));
}

#[test]
fn ordinary_events_convert_both_ways_with_their_causal_context() {
    let payload = json!({
        "sensorId": "s-1",
        "value": 3,
        "big": u64::MAX,
        "ratio": 0.25,
        "ok": false,
        "none": null,
        "location": { "lat": 1.5, "deep": { "x": -7 } },
        "readings": [1, 2, 3],
        "empty": {},
        "dotted": { "a.b": 1 },
    });
    let mut event = Event::new("reading", payload.clone());
    crate::event::stamp(&mut event, &crate::Id::from("gateway"), None);
    let zero = ZeroEvent::from_event(&event).unwrap();
    assert_eq!(zero.get::<i64>("location.deep.x").unwrap(), -7);
    assert_eq!(zero.get::<u64>("big").unwrap(), u64::MAX);
    assert_eq!(zero.payload(), payload);
    let back = zero.to_event();
    assert_eq!(back.payload(), &payload);
    let (a, b) = (event.causal(), back.causal());
    assert_eq!(a.id, b.id);
    assert_eq!(a.sender, b.sender);
    assert_eq!(a.correlation_id, b.correlation_id);
    assert_eq!(a.path, b.path);
    assert_eq!(a.timestamp, b.timestamp);
    assert_eq!(a.causation_id, b.causation_id);

    for scalar in [
        json!(42),
        json!("text"),
        json!([1, { "a": 2 }]),
        json!(null),
    ] {
        let mut event = Event::new("x", scalar.clone());
        crate::event::stamp(&mut event, &crate::Id::from("n"), None);
        assert_eq!(ZeroEvent::from_event(&event).unwrap().payload(), scalar);
    }
}

#[test]
fn hostile_bytes_are_errors() {
    let event = reading();
    let bytes = event.as_bytes();
    assert_eq!(
        ZeroEvent::from_bytes(&bytes[..10]).unwrap_err(),
        ZeroError::Truncated {
            needed: 96,
            len: 10
        }
    );
    assert!(ZeroEvent::from_bytes(&bytes[..bytes.len() - 1]).is_err());
    let mut bad = bytes.to_vec();
    bad[0] = b'X';
    assert_eq!(ZeroEvent::from_bytes(&bad).unwrap_err(), ZeroError::NotZero);
    let mut bad = bytes.to_vec();
    bad[2] = 9;
    assert_eq!(
        ZeroEvent::from_bytes(&bad).unwrap_err(),
        ZeroError::Version(9)
    );
    // A field's value offset pointed past the end.
    let fields = layout::pair(bytes, layout::AT_FIELDS).unwrap().0;
    let mut bad = bytes.to_vec();
    bad[fields + 12..fields + 16].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        ZeroEvent::from_bytes(&bad).unwrap_err(),
        ZeroError::OutOfRange { .. }
    ));
    // Every single-byte corruption is an error or a readable event.
    for at in 0..bytes.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut bad = bytes.to_vec();
            bad[at] ^= flip;
            if let Ok(event) = ZeroEvent::from_bytes(&bad) {
                let _ = event.payload();
                let _ = event.path().count();
            }
        }
    }
    assert_eq!(
        ZeroEvent::from_bytes(bytes).unwrap().payload(),
        event.payload()
    );
}

#[test]
fn strings_are_checked_as_utf8_to_their_boundaries() {
    let mut writer = ZeroWriter::new("sensor-reading");
    writer.str("label", "é-17");
    let event = writer.finish("gateway").unwrap();
    let bytes = event.as_bytes();
    let strings = layout::pair(bytes, layout::AT_STRINGS).unwrap().0;
    let value = event.offsets().get("label").unwrap();
    let (at, len) = layout::pair(bytes, value).unwrap();
    assert_eq!(&bytes[strings + at..strings + at + len], "é-17".as_bytes());

    // A reference that starts inside `é` (two bytes) names no string.
    let mut bad = bytes.to_vec();
    bad[value..value + 4].copy_from_slice(&(at as u32 + 1).to_le_bytes());
    bad[value + 4..value + 8].copy_from_slice(&(len as u32 - 1).to_le_bytes());
    assert_eq!(
        ZeroEvent::from_bytes(&bad).unwrap_err(),
        ZeroError::BadString { at: value }
    );
    // An empty string may start anywhere, as before.
    let mut bad = bytes.to_vec();
    bad[value..value + 4].copy_from_slice(&(at as u32 + 1).to_le_bytes());
    bad[value + 4..value + 8].copy_from_slice(&0u32.to_le_bytes());
    assert_eq!(ZeroEvent::from_bytes(&bad).unwrap().str(value).unwrap(), "");
    // One that ends inside it neither.
    let mut bad = bytes.to_vec();
    bad[value + 4..value + 8].copy_from_slice(&1u32.to_le_bytes());
    assert_eq!(
        ZeroEvent::from_bytes(&bad).unwrap_err(),
        ZeroError::BadString { at: value }
    );
    // Bad UTF-8 in a string is named by the reference that reads it.
    let mut bad = bytes.to_vec();
    bad[strings + at + 1] = 0xff;
    assert_eq!(
        ZeroEvent::from_bytes(&bad).unwrap_err(),
        ZeroError::BadString { at: value }
    );
    // Bytes of the table that no string refers to are not read: the
    // value's string made shorter leaves its tail unreferenced.
    let mut bad = bytes.to_vec();
    bad[value + 4..value + 8].copy_from_slice(&2u32.to_le_bytes());
    bad[strings + at + 3] = 0xff;
    let read = ZeroEvent::from_bytes(&bad).unwrap();
    assert_eq!(read.str(value).unwrap(), "é");
}

/// Events wait in the lane while handlers come and go: each still runs the
/// handler that matched it on arrival, the removed one included, and the
/// removed handler is dropped once nothing waits for it.
#[tokio::test(flavor = "current_thread")]
async fn waiting_events_keep_the_handler_that_matched_them() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    let happen = crate::Happen::embedded();
    let sender = happen.node("sender").unwrap();
    let sink = happen.node("sink").unwrap();
    let counts: Arc<[AtomicU64; 3]> = Arc::new(Default::default());
    let captured = Arc::new(());
    let ids: Vec<_> = ["a", "b", "c"]
        .into_iter()
        .enumerate()
        .map(|(i, event_type)| {
            let (counts, held) = (counts.clone(), captured.clone());
            sink.zero(event_type, move |_event, _cx| {
                let _held = &held;
                counts[i].fetch_add(1, Ordering::SeqCst);
                Ok(ZeroNext::Done)
            })
            .unwrap()
        })
        .collect();
    // Nothing runs until this task yields: all of these wait in the lane.
    for round in 0..3 {
        for event_type in ["a", "b", "c"] {
            let mut writer = ZeroWriter::new(event_type);
            writer.u64("round", round);
            sender.zero_tell(&sink, writer).unwrap();
        }
    }
    assert!(
        sink.off(ids[0]),
        "the first handler goes while its events wait"
    );
    assert_eq!(
        Arc::strong_count(&captured),
        4,
        "its waiting events keep it"
    );
    // Bounded: a wrong handler table would leave some count short.
    for _ in 0..10_000 {
        if counts.iter().map(|c| c.load(Ordering::SeqCst)).sum::<u64>() >= 9 {
            break;
        }
        tokio::task::yield_now().await;
    }
    let seen: Vec<u64> = counts.iter().map(|c| c.load(Ordering::SeqCst)).collect();
    assert_eq!(
        seen,
        [3, 3, 3],
        "each event ran the handler that matched it"
    );
    assert_eq!(
        Arc::strong_count(&captured),
        3,
        "the removed handler is dropped"
    );
    // The remaining handlers still take new events, the removed one none.
    sender.zero_tell(&sink, ZeroWriter::new("c")).unwrap();
    assert!(sender.zero_tell(&sink, ZeroWriter::new("a")).is_err());
    for _ in 0..10_000 {
        if counts[2].load(Ordering::SeqCst) >= 4 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(counts[2].load(Ordering::SeqCst), 4);
    assert_eq!(counts[0].load(Ordering::SeqCst), 3);
}

/// A durable node refuses zero handlers (an event stored for it could not
/// be settled by one, and would come back forever); its ordinary handlers
/// and a direct node's zero handlers are unaffected.
#[tokio::test(flavor = "current_thread")]
async fn a_durable_node_takes_no_zero_handler() {
    use crate::{DeliveryConfig, Happen, NodeConfig};
    let happen = Happen::embedded();
    for mode in [
        DeliveryConfig::at_least_once(),
        DeliveryConfig::exactly_once(),
    ] {
        let id = format!("ledger-{:?}", mode.mode).to_lowercase();
        let durable = happen
            .node_with(&id, NodeConfig::new().delivery(mode))
            .unwrap();
        let refused = durable.zero("reading", |_e, _cx| Ok(ZeroNext::Done));
        match refused {
            Err(crate::HappenError::Config(message)) => {
                assert!(
                    message.contains(&id) && message.contains("durable"),
                    "{message}"
                );
            }
            other => panic!("a zero handler on a durable node: {other:?}"),
        }
        durable
            .on("reading", |_e: Event, _cx: crate::Context| async {})
            .unwrap();
    }
    let direct = happen.node("sensor").unwrap();
    direct
        .zero("reading", |_e, _cx| Ok(ZeroNext::Done))
        .unwrap();
    happen.shutdown().await;
}

/// A dotted field name is a level of nesting per part once the event is
/// read as JSON: a name deeper than `MAX_DEPTH` is refused when written and
/// when received (read as JSON, one of 10,000 parts overflowed the stack of
/// the receiving process).
#[test]
fn field_names_nesting_too_deep_are_refused_written_and_received() {
    use crate::depth::MAX_DEPTH;
    let deepest = vec!["a"; MAX_DEPTH].join(".");
    let mut writer = ZeroWriter::new("reading");
    writer.u8(&deepest, 1);
    let event = writer.finish("gateway").unwrap();
    assert_eq!(event.get::<u8>(&deepest), Ok(1));
    let mut level = &event.payload();
    for _ in 0..MAX_DEPTH - 1 {
        level = &level["a"];
    }
    assert_eq!(level["a"], json!(1));

    let mut writer = ZeroWriter::new("reading");
    writer.u8(&".".repeat(10_000), 1);
    assert_eq!(
        writer.finish("gateway").unwrap_err(),
        ZeroError::TooDeep {
            at: 0,
            limit: MAX_DEPTH
        }
    );

    // Received: the same bytes as a name of 10,001 letters, dotted after.
    let mut writer = ZeroWriter::new("reading");
    let letters = "x".repeat(10_001);
    writer.u8(&letters, 1);
    let mut bytes = writer.finish("gateway").unwrap().as_bytes().to_vec();
    let start = bytes
        .windows(letters.len())
        .position(|w| w == letters.as_bytes())
        .unwrap();
    bytes[start..start + letters.len()].fill(b'.');
    assert!(matches!(
        ZeroEvent::from_bytes(&bytes),
        Err(ZeroError::TooDeep {
            limit: MAX_DEPTH,
            ..
        })
    ));
}

/// A shutdown that runs out of time runs none of the zero events waiting
/// in a lane (they are refused, as the ordinary events in a node's queue):
/// the handler running then finishes, the rest never start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_out_of_time_runs_no_waiting_zero_event() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    let happen = crate::Happen::embedded();
    let sender = happen.node("sender").unwrap();
    let sink = happen.node("sink").unwrap();
    let ran = Arc::new(AtomicU64::new(0));
    let counted = ran.clone();
    sink.zero("tick", move |_event, _cx| {
        counted.fetch_add(1, Ordering::SeqCst);
        // Zero handlers are synchronous: this one holds its lane.
        std::thread::sleep(Duration::from_millis(200));
        Ok(ZeroNext::Done)
    })
    .unwrap();
    for _ in 0..5 {
        sender.zero_tell(&sink, ZeroWriter::new("tick")).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!happen.shutdown_within(Duration::from_millis(20)).await);
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(ran.load(Ordering::SeqCst), 1);
}

#[test]
fn a_writer_is_spent_once_finished() {
    for extra in [1u64, 13] {
        let mut w = ZeroWriter::new("reading");
        w.u32("a", 1);
        let first = w.finish("s").unwrap();
        assert_eq!(first.get::<u32>("a").unwrap(), 1);
        // Written again (enough values to reach past the header, too):
        // an error, not a panic and not a corrupt event.
        for i in 0..extra {
            w.u64("f", i);
        }
        let again = w.finish("s");
        assert!(
            matches!(again, Err(ZeroError::Unrepresentable(_))),
            "{:?}",
            again.map(|e| e.payload())
        );
        // And stays spent, however often it is finished and written to.
        for i in 0..13u64 {
            w.u64("g", i);
        }
        assert!(matches!(w.finish("s"), Err(ZeroError::Unrepresentable(_))));
    }
}

#[tokio::test]
async fn an_invalid_event_type_is_refused_as_an_ordinary_send_refuses_it() {
    let happen = crate::Happen::embedded();
    let a = happen.node("a").unwrap();
    let b = happen.node("b").unwrap();
    b.zero("*", |_e, _cx| Ok(ZeroNext::Done)).unwrap();
    for bad in ["", "has space", ".lead"] {
        let zero = a.zero_tell(&b, ZeroWriter::new(bad)).unwrap_err();
        assert!(
            matches!(&zero, crate::HappenError::InvalidName(e) if e.name == bad),
            "{bad:?}: {zero:?}"
        );
        assert!(matches!(
            ZeroWriter::new(bad).finish("a"),
            Err(ZeroError::BadString { .. })
        ));
    }
}

/// The events of the lane task's batch that have not started count as
/// waiting: `queue_limit` bounds a zero node's waiting events as it does an
/// ordinary node's (one running, `queue_limit` waiting).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_limit_counts_the_batch_the_lane_took() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;
    let happen = crate::Happen::embedded();
    let sink = happen
        .node_with("sink", crate::NodeConfig::new().queue_limit(2))
        .unwrap();
    let (started, release) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let (s, r) = (started.clone(), release.clone());
    sink.zero("reading", move |_e, _cx| {
        s.store(true, Ordering::SeqCst);
        while !r.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(ZeroNext::Done)
    })
    .unwrap();
    let gateway = happen.node("gateway").unwrap();
    let tell = || gateway.zero_tell(&sink, ZeroWriter::new("reading")).is_ok();
    // Three at once, likely taken by the lane's task as one batch.
    let mut accepted = (0..3).filter(|_| tell()).count();
    while !started.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    accepted += (0..5).filter(|_| tell()).count();
    release.store(true, Ordering::SeqCst);
    assert_eq!(accepted, 3, "one running and queue_limit (2) waiting");
    happen.shutdown().await;
}

fn written(names: &[&str]) -> Result<ZeroEvent, ZeroError> {
    let mut writer = ZeroWriter::new("reading");
    for name in names {
        writer.u8(name, 1);
    }
    writer.finish("gateway")
}

/// Names the JSON form cannot hold both of (the same twice, one a dotted
/// prefix of another, the empty name beside another) are refused when
/// sealed, pair by pair and, past 16 fields, sorted; names that only share
/// letters are not.
#[test]
fn clashing_field_names_are_refused_when_written() {
    let many = |extra: &[&str]| {
        let mut names: Vec<String> = (0..40).map(|i| format!("f{i}")).collect();
        names.extend(extra.iter().map(|n| n.to_string()));
        names
    };
    let clashing: [&[&str]; 6] = [
        &["a", "a"],
        &["loc", "loc.lat"],
        &["loc.lat", "x", "loc"],
        &["a.b", "a.b.c"],
        &["", "a"],
        &["a", ""],
    ];
    for names in clashing {
        assert!(
            matches!(written(names), Err(ZeroError::NameClash { .. })),
            "{names:?}"
        );
        // The same among 40 others: the sorted path.
        let mut long = many(&[]);
        long.splice(7..7, names.iter().map(|n| n.to_string()));
        let long: Vec<&str> = long.iter().map(String::as_str).collect();
        assert!(
            matches!(written(&long), Err(ZeroError::NameClash { .. })),
            "{names:?} among others"
        );
    }
    assert_eq!(
        written(&["loc", "x", "loc.lat"]).unwrap_err(),
        ZeroError::NameClash {
            first: "loc".into(),
            second: "loc.lat".into()
        }
    );
    // `a-b` sorts between `a` and `a.b` bytewise: still found.
    let long = many(&["a", "a-b", "a.b"]);
    let long: Vec<&str> = long.iter().map(String::as_str).collect();
    assert!(matches!(written(&long), Err(ZeroError::NameClash { .. })));
    let fine: [&[&str]; 5] = [
        &["a", "ab"],
        &["a.b", "a.c"],
        &["loc", "location.lat"],
        &["a.b", "a.bc", "a-b"],
        &[""],
    ];
    for names in fine {
        let event = written(names).unwrap();
        assert_eq!(event.offsets().len(), names.len());
        if names.contains(&"") {
            continue; // the whole payload: alone
        }
        let long = many(names);
        let long: Vec<&str> = long.iter().map(String::as_str).collect();
        written(&long).unwrap();
    }
}

/// A received buffer with clashing names (made by another writer) is
/// refused as hostile bytes are, and a send of clashing names says why.
#[tokio::test(flavor = "current_thread")]
async fn clashing_field_names_are_refused_received_and_sent() {
    let mut bytes = written(&["ab", "ac"]).unwrap().as_bytes().to_vec();
    let at = bytes.windows(4).position(|w| w == b"abac").unwrap();
    bytes[at + 3] = b'b';
    assert_eq!(
        ZeroEvent::from_bytes(&bytes).unwrap_err(),
        ZeroError::NameClash {
            first: "ab".into(),
            second: "ab".into()
        }
    );

    let happen = crate::Happen::embedded();
    let node = happen.node("n").unwrap();
    node.zero("reading", |_e, _cx| Ok(ZeroNext::Done)).unwrap();
    let mut writer = ZeroWriter::new("reading");
    writer.f64("loc", 1.0).f64("loc.lat", 2.0);
    let error = node.zero_tell(&node, writer).unwrap_err();
    assert!(
        matches!(&error, crate::HappenError::Codec { message, .. }
            if message.contains(r#""loc" and "loc.lat" clash"#)),
        "{error:?}"
    );
}

//! Zero-allocation processing: flat zero events to zero handlers, their
//! answers, their causal context, and the boundary with ordinary events
//! and ordinary steps, the same on every runtime.

use happen::prelude::*;
use happen::zero::{ZeroAnswer, ZeroNext, ZeroWriter};
use happen::{AcceptRule, Step};
use tokio::sync::mpsc;

use super::{Backend, ev, start};

fn reading(celsius: f64) -> ZeroWriter {
    let mut writer = ZeroWriter::new("reading");
    writer
        .str("sensor", "s-1")
        .f64("celsius", celsius)
        .u32("seq", 7)
        .f64("location.latitude", 52.5);
    writer
}

/// What a zero handler saw, copied out.
#[derive(Debug, PartialEq)]
struct Seen {
    event_type: String,
    sender: String,
    path: Vec<String>,
    id: String,
    causation: Option<String>,
    correlation: String,
    celsius: f64,
    sensor: String,
    latitude: f64,
}

pub async fn a_zero_tell_reaches_the_zero_handler_with_its_causal_context(backend: &dyn Backend) {
    let h = start(backend).await;
    let sensors = h.node("zt-sensors").unwrap();
    let gateway = h.node("zt-gateway").unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    sensors
        .zero("reading", move |event, cx| {
            let offsets = event.offsets();
            let _ = tx.send(Seen {
                event_type: event.event_type().into(),
                sender: event.sender().into(),
                path: event.path().map(String::from).collect(),
                id: event.id().to_string(),
                causation: event.causation().map(|c| c.to_string()),
                correlation: event.correlation_id().into(),
                celsius: event.f64(offsets.get("celsius").unwrap())?,
                sensor: event.str(offsets.get("sensor").unwrap())?.into(),
                latitude: event.get("location.latitude")?,
            });
            assert!(!cx.expects_response());
            Ok(ZeroNext::Done)
        })
        .unwrap();
    h.flush().await.unwrap();

    gateway.zero_tell(&sensors, reading(21.5)).unwrap();
    gateway.zero_tell("zt-sensors", reading(22.0)).unwrap();
    let first = rx.recv().await.unwrap();
    let second = rx.recv().await.unwrap();
    assert_eq!(first.event_type, "reading");
    assert_eq!(first.sender, "zt-gateway");
    assert_eq!(first.path, ["zt-gateway"]);
    assert_eq!(first.causation, None);
    assert_eq!(first.correlation, first.id, "a root correlates with itself");
    assert_eq!(
        (first.celsius, first.sensor.as_str(), first.latitude),
        (21.5, "s-1", 52.5)
    );
    assert_eq!(second.celsius, 22.0);
    assert!(second.id > first.id, "ids are time-ordered");
}

pub async fn a_zero_request_is_answered_with_a_zero_event_a_value_or_an_error(
    backend: &dyn Backend,
) {
    let h = start(backend).await;
    let convert = h.node("zr-convert").unwrap();
    let client = h.node("zr-client").unwrap();
    convert
        .zero("reading", |event, cx| {
            assert!(cx.expects_response());
            let celsius: f64 = event.get("celsius")?;
            if celsius < -273.15 {
                return Err("below absolute zero".into());
            }
            if celsius > 1000.0 {
                panic!("sensor on fire");
            }
            if celsius == 0.0 {
                return Ok(ZeroNext::Value(json!({ "freezing": true })));
            }
            let mut reply = ZeroWriter::new("converted");
            reply.f64("fahrenheit", celsius * 9.0 / 5.0 + 32.0);
            Ok(ZeroNext::Reply(reply))
        })
        .unwrap();
    h.flush().await.unwrap();

    let answer = client.zero_send(&convert, reading(100.0)).await.unwrap();
    let reply = answer.zero().expect("a zero event");
    assert_eq!(reply.event_type(), "converted");
    assert_eq!(reply.get::<f64>("fahrenheit").unwrap(), 212.0);
    assert_eq!(reply.sender(), "zr-convert");
    assert_eq!(
        reply.path().collect::<Vec<_>>(),
        ["zr-client", "zr-convert"]
    );
    assert!(
        reply.causation().is_some(),
        "the reply is caused by the request"
    );

    let answer = client.zero_send("zr-convert", reading(0.0)).await.unwrap();
    assert!(matches!(answer, ZeroAnswer::Value(_)));
    assert_eq!(answer.into_value(), json!({ "freezing": true }));

    let failed_before = h.counters().failed;
    let error = client
        .zero_send(&convert, reading(-300.0))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, HappenError::HandlerFailed { cause, .. } if cause.contains("absolute zero")),
        "{error:?}"
    );
    let error = client
        .zero_send(&convert, reading(5000.0))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, HappenError::HandlerPanicked { message, .. } if message.contains("on fire")),
        "{error:?}"
    );
    // Both are counted where they ran, as an ordinary flow's are.
    assert_eq!(h.counters().failed - failed_before, 2);
    // The node keeps serving.
    let answer = client.zero_send(&convert, reading(10.0)).await.unwrap();
    assert_eq!(answer.into_value(), json!({ "fahrenheit": 50.0 }));

    let error = client
        .zero_send("zr-nobody", reading(1.0))
        .await
        .unwrap_err();
    assert!(
        matches!(error, HappenError::UnknownNode { .. }),
        "{error:?}"
    );
}

pub async fn zero_and_ordinary_handlers_meet_at_the_boundary(backend: &dyn Backend) {
    let h = start(backend).await;
    let zero_only = h.node("zb-zero").unwrap();
    let ordinary_only = h.node("zb-ordinary").unwrap();
    let client = h.node("zb-client").unwrap();
    zero_only
        .zero("reading", |event, _cx| {
            let mut reply = ZeroWriter::new("seen");
            reply
                .f64("celsius", event.get("celsius")?)
                .str("sender", event.sender());
            Ok(ZeroNext::Reply(reply))
        })
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    ordinary_only
        .on("reading", move |event: Event, _cx: Context| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(event.clone());
                json!({ "doubled": event.payload()["celsius"].as_f64().unwrap() * 2.0 })
            }
        })
        .unwrap();
    h.flush().await.unwrap();

    // An ordinary request to a zero handler: converted on the way in, the
    // zero reply's payload is the answer.
    let answer = client
        .send(
            &zero_only,
            ev("reading", json!({ "celsius": 4.5, "sensor": "s-9" })),
        )
        .await
        .unwrap();
    assert_eq!(answer, json!({ "celsius": 4.5, "sender": "zb-client" }));

    // A zero request to an ordinary handler: it sees an ordinary event
    // with the zero event's causal context and payload.
    let answer = client
        .zero_send(&ordinary_only, reading(3.0))
        .await
        .unwrap();
    assert_eq!(answer.into_value(), json!({ "doubled": 6.0 }));
    let seen = rx.recv().await.unwrap();
    assert_eq!(seen.causal().sender, "zb-client");
    assert_eq!(seen.causal().path.len(), 1);
    assert_eq!(
        seen.payload(),
        &json!({ "sensor": "s-1", "celsius": 3.0, "seq": 7, "location": { "latitude": 52.5 } })
    );
    assert_eq!(seen.causal().correlation_id, seen.causal().id);

    // A broadcast reaches a zero handler too.
    let (tx, mut rx) = mpsc::unbounded_channel();
    zero_only
        .zero("alarm", move |event, _cx| {
            let _ = tx.send(event.get::<i64>("level")?);
            Ok(ZeroNext::Done)
        })
        .unwrap();
    h.flush().await.unwrap();
    client
        .broadcast(ev("alarm", json!({ "level": 3 })))
        .unwrap();
    assert_eq!(rx.recv().await.unwrap(), 3);
}

pub async fn a_zero_handler_continues_in_ordinary_steps(backend: &dyn Backend) {
    let h = start(backend).await;
    let node = h.node("zc-node").unwrap();
    let client = h.node("zc-client").unwrap();
    node.zero("reading", |event, _cx| {
        if event.get::<f64>("celsius")? < 30.0 {
            return Ok(ZeroNext::Done);
        }
        // Unusual readings take the ordinary, allocating path.
        Ok(ZeroNext::Then(Step::new(
            |event: Event, cx: Context| async move {
                assert_eq!(cx.event().causal().sender, "zc-client");
                json!({ "alert": event.payload()["celsius"] })
            },
        )))
    })
    .unwrap();
    h.flush().await.unwrap();

    let calm = client.zero_send(&node, reading(20.0)).await.unwrap();
    assert_eq!(calm.into_value(), Value::Null);
    let hot = client.zero_send(&node, reading(45.0)).await.unwrap();
    assert_eq!(hot.into_value(), json!({ "alert": 45.0 }));
}

pub async fn events_a_zero_handler_sends_carry_its_event_as_cause(backend: &dyn Backend) {
    let h = start(backend).await;
    let relay = h.node("zk-relay").unwrap();
    let sink = h.node("zk-sink").unwrap();
    let source = h.node("zk-source").unwrap();
    relay
        .zero("reading", |event, cx| {
            let mut forward = ZeroWriter::new("forwarded");
            forward.f64("celsius", event.get("celsius")?);
            cx.tell("zk-sink", forward)?;
            Ok(ZeroNext::Done)
        })
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    sink.zero("forwarded", move |event, _cx| {
        let _ = tx.send((
            event.causation().map(|c| c.to_string()),
            event.correlation_id().to_owned(),
            event.path().map(String::from).collect::<Vec<_>>(),
            event.get::<f64>("celsius")?,
        ));
        Ok(ZeroNext::Done)
    })
    .unwrap();
    h.flush().await.unwrap();

    source.zero_tell(&relay, reading(8.0)).unwrap();
    let (causation, correlation, path, celsius) = rx.recv().await.unwrap();
    assert_eq!(path, ["zk-source", "zk-relay"]);
    assert_eq!(celsius, 8.0);
    // The root correlates with itself, so its id is the child's
    // correlation: the child names the root as its cause.
    assert_eq!(causation.as_deref(), Some(correlation.as_str()));
    assert_eq!(correlation.len(), 36);
}

pub async fn acceptance_controls_and_off_apply_to_zero_handlers(backend: &dyn Backend) {
    let h = start(backend).await;
    let vault = h
        .node_with(
            "za-vault",
            NodeConfig::new().accept_from([AcceptRule::node("za-trusted")]),
        )
        .unwrap();
    let trusted = h.node("za-trusted").unwrap();
    let stranger = h.node("za-stranger").unwrap();
    let id = vault
        .zero("reading", |_event, _cx| Ok(ZeroNext::Value(json!("kept"))))
        .unwrap();
    h.flush().await.unwrap();

    let answer = trusted.zero_send(&vault, reading(1.0)).await.unwrap();
    assert_eq!(answer.into_value(), json!("kept"));
    let error = stranger.zero_send(&vault, reading(1.0)).await.unwrap_err();
    assert!(
        matches!(&error, HappenError::NotAccepted { sender, source_id: None, .. } if sender == "za-stranger"),
        "{error:?}"
    );
    // Zero events are never signed: a node that requires signatures
    // refuses them, whoever sends.
    let strict = h
        .node_with("za-strict", NodeConfig::new().require_signed(true))
        .unwrap();
    strict
        .zero("reading", |_event, _cx| Ok(ZeroNext::Value(json!("kept"))))
        .unwrap();
    h.flush().await.unwrap();
    let error = trusted.zero_send(&strict, reading(1.0)).await.unwrap_err();
    assert!(matches!(error, HappenError::Integrity { .. }), "{error:?}");

    assert!(vault.off(id));
    let error = trusted.zero_send(&vault, reading(1.0)).await.unwrap_err();
    assert!(matches!(error, HappenError::NoHandler { .. }), "{error:?}");
}

pub async fn shutdown_waits_for_queued_zero_events(backend: &dyn Backend) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let h = start(backend).await;
    let sink = h.node("zs-sink").unwrap();
    let source = h.node("zs-source").unwrap();
    let handled = Arc::new(AtomicUsize::new(0));
    let n = handled.clone();
    sink.zero("reading", move |_event, _cx| {
        // A handler that takes a moment, so that events are still queued
        // when the shutdown begins.
        std::thread::sleep(std::time::Duration::from_micros(500));
        n.fetch_add(1, Ordering::SeqCst);
        Ok(ZeroNext::Done)
    })
    .unwrap();
    h.flush().await.unwrap();
    for i in 0..200 {
        let mut w = ZeroWriter::new("reading");
        w.u32("seq", i);
        source.zero_tell(&sink, w).unwrap();
    }
    h.shutdown().await;
    assert_eq!(
        handled.load(Ordering::SeqCst),
        200,
        "every queued event was handled"
    );
    // After the shutdown began, new zero events are refused.
    let error = source
        .zero_tell(&sink, ZeroWriter::new("reading"))
        .unwrap_err();
    assert!(matches!(error, HappenError::Shutdown), "{error:?}");
}

pub async fn a_zero_request_does_not_overtake_zero_events_sent_before_it(backend: &dyn Backend) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    let h = start(backend).await;
    let sink = h.node("zo-sink").unwrap();
    let source = h.node("zo-source").unwrap();
    let seen = Arc::new(AtomicU32::new(0));
    let counted = seen.clone();
    sink.zero("tick", move |_event, _cx| {
        counted.fetch_add(1, Ordering::SeqCst);
        Ok(ZeroNext::Done)
    })
    .unwrap();
    let counted = seen.clone();
    sink.zero("count", move |_event, _cx| {
        let mut answer = ZeroWriter::new("counted");
        answer.u32("n", counted.load(Ordering::SeqCst));
        Ok(ZeroNext::Reply(answer))
    })
    .unwrap();
    h.flush().await.unwrap();
    for _ in 0..3 {
        source.zero_tell(&sink, ZeroWriter::new("tick")).unwrap();
    }
    let answer = source
        .zero_send(&sink, ZeroWriter::new("count"))
        .await
        .unwrap();
    let n: u32 = answer.zero().expect("a zero answer").get("n").unwrap();
    assert_eq!(n, 3, "the three events sent first were handled first");
}

pub async fn a_batch_for_a_zero_handler_is_refused_not_flattened(backend: &dyn Backend) {
    let h = start(backend).await;
    let sink = h.node("zb-sink").unwrap();
    sink.zero("zb.reading", |_e, _cx| Ok(ZeroNext::Value(json!("taken"))))
        .unwrap();
    let gateway = h.node("zb-gateway").unwrap();
    h.flush().await.unwrap();
    let batch =
        Event::batch((1..=3).map(|i| Event::new("zb.reading", json!({ "value": i })))).unwrap();
    let refused = gateway.send(&sink, batch).await.unwrap_err();
    assert!(
        matches!(&refused, HappenError::InvalidBatch { reason } if reason.contains("one by one")),
        "{refused}"
    );
    // One event at a time is taken.
    assert_eq!(
        gateway
            .send(&sink, Event::new("zb.reading", json!({ "value": 1 })))
            .await
            .unwrap(),
        "taken"
    );
}

pub async fn a_zero_reply_of_a_reserved_type_is_refused(backend: &dyn Backend) {
    let h = start(backend).await;
    let svc = h.node("zr-svc").unwrap();
    svc.zero("zr.ask", |e, _cx| {
        let mut reply = ZeroWriter::new(e.get::<&str>("reply")?);
        reply.str("error", "disk full");
        Ok(ZeroNext::Reply(reply))
    })
    .unwrap();
    let client = h.node("zr-client").unwrap();
    h.flush().await.unwrap();
    let ask = |reply: &str| {
        let mut w = ZeroWriter::new("zr.ask");
        w.str("reply", reply);
        w
    };
    for reserved in ["happen.value", "happen.error"] {
        let refused = client.zero_send("zr-svc", ask(reserved)).await.unwrap_err();
        assert!(
            refused.to_string().contains("may not be of type"),
            "{reserved}: {refused}"
        );
    }
    let answer = client.zero_send("zr-svc", ask("zr.answer")).await.unwrap();
    let event = answer.zero().expect("a zero answer");
    assert_eq!(event.event_type(), "zr.answer");
    assert_eq!(event.get::<&str>("error").unwrap(), "disk full");
}

/// Zero events as observers see them (only when one is installed): each
/// one stamped by its sender, delivered to and finished by its zero
/// handler, with its causal context, so that a recorder's trace of the
/// transaction shows them.
pub async fn observers_see_zero_events_with_their_causal_context(backend: &dyn Backend) {
    let capture = happen::testkit::Capture::new();
    let recorder = happen::trace::Recorder::in_memory(10_000);
    let config = capture.install(HappenConfig::default().recorder(recorder.clone()));
    let h = backend.start(config).await;
    let sensors = h.node("zo-sensors").unwrap();
    let alarms = h.node("zo-alarms").unwrap();
    let gateway = h.node("zo-gateway").unwrap();
    sensors
        .zero("reading", |event, cx| {
            let mut alarm = ZeroWriter::new("alarm");
            alarm.f64("celsius", event.get("celsius")?);
            cx.tell("zo-alarms", alarm)?;
            let mut reply = ZeroWriter::new("reading.seen");
            reply.u32("seq", event.get("seq")?);
            Ok(ZeroNext::Reply(reply))
        })
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    alarms
        .zero("alarm", move |event, _cx| {
            let _ = tx.send(event.id().to_string());
            Err("no one on call".into())
        })
        .unwrap();
    h.flush().await.unwrap();

    let answer = gateway.zero_send(&sensors, reading(21.5)).await.unwrap();
    let reply = answer.zero().expect("a zero reply");
    let alarm_id = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
        .await
        .expect("the alarm within 10 s")
        .unwrap();
    let reply_id = reply.id().to_string();
    // Every lane is quiet, and every end reported, once the runtime is down.
    h.shutdown().await;

    // The capture: each zero event stamped, with its causal context.
    let readings = capture.of_type("reading");
    assert_eq!(readings.len(), 1, "{:?}", capture.events());
    let root = readings[0].causal().clone();
    assert_eq!(root.sender, "zo-gateway");
    assert_eq!(root.causation_id, None);
    assert_eq!(root.correlation_id, root.id);
    assert_eq!(readings[0].payload()["celsius"], json!(21.5));
    let alarm = capture.event(&alarm_id).expect("the alarm was captured");
    assert_eq!(alarm.event_type(), "alarm");
    super::assert_child_of(alarm.causal(), &root, "zo-sensors");
    let seen = capture
        .event(&reply_id)
        .expect("the zero reply was captured");
    assert_eq!(seen.event_type(), "reading.seen");
    super::assert_child_of(seen.causal(), &root, "zo-sensors");
    let flows = capture.flows();
    let flow = |id: &str| flows.iter().find(|f| f.event_id == id);
    let handled = flow(&root.id).expect("the reading's end was captured");
    assert_eq!(
        (handled.node.as_str(), &handled.error),
        ("zo-sensors", &None)
    );
    let failed = flow(&alarm_id).expect("the alarm's end was captured");
    assert_eq!(failed.node, "zo-alarms");
    assert!(
        failed.error.as_deref().unwrap().contains("no one on call"),
        "{failed:?}"
    );

    // The recorder's trace of the transaction.
    let tx = recorder.transaction(&root.correlation_id).await.unwrap();
    let traced = tx.event(&root.id).expect("the reading was recorded");
    assert_eq!(traced.event_type, "reading");
    assert_eq!(traced.delivered_to, ["zo-sensors"]);
    assert_eq!(traced.flows.len(), 1);
    assert!(traced.flows[0].answered && traced.flows[0].error.is_none());
    let why: Vec<&str> = tx
        .why(&alarm_id)
        .iter()
        .map(|e| e.event_type.as_str())
        .collect();
    assert_eq!(why, ["alarm", "reading"]);
    let failed: Vec<&str> = tx
        .failed()
        .iter()
        .map(|(_, run)| run.node.as_str())
        .collect();
    assert_eq!(failed, ["zo-alarms"]);
    let tree = tx.to_string();
    assert!(tree.contains("alarm from zo-sensors → zo-alarms"), "{tree}");
}

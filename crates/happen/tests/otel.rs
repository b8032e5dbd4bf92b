//! OpenTelemetry export: a transaction is one trace, each flow a span, and
//! each causation link a parent span; checked with the SDK's in-memory
//! exporter.

use std::sync::Arc;

use happen::otel::{OtelObserver, flow_span_id, span_id, trace_id};
use happen::prelude::*;
use opentelemetry::trace::{Status, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};

/// An embedded runtime whose flows are exported as spans to memory.
fn traced() -> (Happen, InMemorySpanExporter, SdkTracerProvider) {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let observer = OtelObserver::new(provider.tracer("happen-test"));
    let happen = Happen::embedded_with(HappenConfig::default().observer(Arc::new(observer)));
    (happen, exporter, provider)
}

#[tokio::test]
async fn a_transaction_is_one_trace_with_causation_as_parents() {
    let (happen, exporter, _provider) = traced();
    let shop = happen.node("shop").unwrap();
    let bank = happen.node("bank").unwrap();
    let audit = happen.node("audit").unwrap();
    bank.on("charge", |_e: Event, _cx: Context| async { json!("paid") })
        .unwrap();
    audit
        .on("charged", |_e: Event, _cx: Context| async {
            Err::<(), _>(std::io::Error::other("audit log full"))
        })
        .unwrap();
    shop.on("order", |_e: Event, cx: Context| async move {
        let paid = cx
            .node()
            .send("bank", Event::new("charge", json!(5)))
            .response()
            .await?;
        cx.node().tell("audit", Event::new("charged", json!(5)))?;
        Ok::<_, HappenError>(paid)
    })
    .unwrap();
    let sent = shop.send(&shop, Event::new("order", json!(null)));
    let order = sent.id().to_owned();
    sent.await.unwrap();
    happen.shutdown().await;

    let spans = exporter.get_finished_spans().unwrap();
    let named = |name: &str| -> &SpanData {
        spans.iter().find(|s| s.name == name).unwrap_or_else(|| {
            panic!(
                "no span {name} in {:?}",
                spans.iter().map(|s| &s.name).collect::<Vec<_>>()
            )
        })
    };
    let (order_span, charge, charged) = (
        named("shop order"),
        named("bank charge"),
        named("audit charged"),
    );
    assert_eq!(spans.len(), 3);
    // One trace: the transaction's, its id the correlation id's bytes.
    let trace = trace_id(&order);
    assert_eq!(trace.to_string(), order.replace('-', ""));
    for span in [order_span, charge, charged] {
        assert_eq!(span.span_context.trace_id(), trace);
    }
    // The root flow has no parent; the others' parent is the shop's flow,
    // which sent their events.
    assert_eq!(
        order_span.parent_span_id,
        opentelemetry::trace::SpanId::INVALID
    );
    assert_eq!(order_span.span_context.span_id(), span_id(&order, "shop"));
    assert_eq!(charge.parent_span_id, order_span.span_context.span_id());
    assert_eq!(charged.parent_span_id, order_span.span_context.span_id());
    // Timing: the order's flow waited for the charge.
    assert!(order_span.start_time <= charge.start_time && charge.end_time <= order_span.end_time);
    // The failure is the span's status; the attributes carry the ids.
    assert!(
        matches!(&charged.status, Status::Error { description } if description.contains("audit log full"))
    );
    assert_eq!(charge.status, Status::Unset);
    let attribute = |span: &SpanData, key: &str| {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.to_string())
    };
    assert_eq!(
        attribute(charge, "happen.causation_id"),
        Some(order.clone())
    );
    assert_eq!(
        attribute(charge, "happen.correlation_id"),
        Some(order.clone())
    );
    assert_eq!(attribute(charge, "happen.node").as_deref(), Some("bank"));
}

/// A node with two handlers for one event runs two flows: each is a span
/// of its own (distinct, stable ids; flow 0's the one `span_id` names), and
/// both are children of the flow that sent the event.
#[tokio::test]
async fn two_flows_of_one_node_for_one_event_are_two_spans() {
    let (happen, exporter, _provider) = traced();
    let shop = happen.node("shop").unwrap();
    let bank = happen.node("bank").unwrap();
    let (done, mut finished) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..2 {
        let done = done.clone();
        bank.on("charge", move |_e: Event, _cx: Context| {
            let done = done.clone();
            async move { done.send(()).unwrap() }
        })
        .unwrap();
    }
    shop.on("order", |_e: Event, cx: Context| async move {
        cx.node().tell("bank", Event::new("charge", json!(5)))?;
        Ok::<_, HappenError>(())
    })
    .unwrap();
    let sent = shop.send(&shop, Event::new("order", json!(null)));
    let order = sent.id().to_owned();
    sent.await.unwrap();
    finished.recv().await.unwrap();
    finished.recv().await.unwrap();
    happen.shutdown().await;

    let spans = exporter.get_finished_spans().unwrap();
    let charges: Vec<&SpanData> = spans.iter().filter(|s| s.name == "bank charge").collect();
    assert_eq!(charges.len(), 2, "one span per flow");
    let charge_id = charges[0]
        .attributes
        .iter()
        .find(|kv| kv.key.as_str() == "happen.event_id")
        .map(|kv| kv.value.to_string())
        .unwrap();
    let mut ids: Vec<String> = charges
        .iter()
        .map(|s| s.span_context.span_id().to_string())
        .collect();
    ids.sort();
    let mut expected = vec![
        span_id(&charge_id, "bank").to_string(),
        flow_span_id(&charge_id, "bank", 1).to_string(),
    ];
    expected.sort();
    assert_ne!(expected[0], expected[1]);
    assert_eq!(ids, expected, "each flow its own, stable span id");
    assert_eq!(
        span_id(&charge_id, "bank"),
        flow_span_id(&charge_id, "bank", 0)
    );
    // Both flows are children of the shop's flow, which told the charge.
    let order_span = spans.iter().find(|s| s.name == "shop order").unwrap();
    assert_eq!(order_span.span_context.span_id(), span_id(&order, "shop"));
    for charge in charges {
        assert_eq!(charge.parent_span_id, order_span.span_context.span_id());
        assert_eq!(charge.span_context.trace_id(), trace_id(&order));
    }
}

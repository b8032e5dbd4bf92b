//! OpenTelemetry export: a transaction is one trace, each flow a span, and
//! each causation link a parent span; checked with the SDK's in-memory
//! exporter.

use std::sync::Arc;

use happen::otel::{OtelObserver, span_id, trace_id};
use happen::prelude::*;
use opentelemetry::trace::{Status, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};

#[tokio::test]
async fn a_transaction_is_one_trace_with_causation_as_parents() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let observer = OtelObserver::new(provider.tracer("happen-test"));
    let happen = Happen::embedded_with(HappenConfig::default().observer(Arc::new(observer)));
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

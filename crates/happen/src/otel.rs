//! The causal web as OpenTelemetry traces (feature `otel`).
//!
//! [`OtelObserver`] turns every flow that ends into a span, so the tools of
//! the OpenTelemetry world (Jaeger, Tempo, Honeycomb, ...) draw Happen's
//! transactions:
//!
//! - a transaction (correlation id) is one trace: its trace id is the
//!   correlation id's 16 bytes when it is a UUID (every id Happen makes),
//!   else the first 16 bytes of its BLAKE3 hash;
//! - a flow is a span named `"<node> <event type>"`, from its first step to
//!   its end, with the attributes `happen.node`, `happen.event_type`,
//!   `happen.flow`, `happen.event_id`, `happen.correlation_id` and `happen.causation_id`,
//!   and an error status when it failed;
//! - each causation link is a parent: the span of the flow of node N
//!   handling event E is the child of the span of the flow that sent E (its
//!   sender handling E's cause). Span ids are derived from (event id, node,
//!   flow), so processes agree on them without talking: a trace spans every
//!   process that exports to the same collector. A node with several
//!   handlers for one event runs one flow per handler, each its own span
//!   ([`flow_span_id`]); an event carries no mark of which of its sender's
//!   flows emitted it, so its span's parent is the sender's first flow.
//!
//! Install it like any observer, with a tracer from your
//! `SdkTracerProvider` (an OTLP exporter to a collector, for instance):
//!
//! ```
//! use std::sync::Arc;
//! use happen::prelude::*;
//! use happen::otel::OtelObserver;
//! use opentelemetry::trace::TracerProvider as _;
//! # use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> happen::Result<()> {
//! # let exporter = InMemorySpanExporter::default();
//! // e.g. .with_batch_exporter(opentelemetry_otlp::SpanExporter::builder().with_tonic().build()?)
//! let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
//! let observer = OtelObserver::new(provider.tracer("happen"));
//! let happen = Happen::embedded_with(HappenConfig::default().observer(Arc::new(observer)));
//! let node = happen.node("greeter")?;
//! node.on("greet", |_e: Event, _cx: Context| async { json!("hi") })?;
//! node.send(&node, Event::new("greet", json!(null))).await?;
//! # happen.shutdown().await;
//! # assert_eq!(exporter.get_finished_spans().unwrap()[0].name, "greeter greet");
//! # Ok(()) }
//! ```
//!
//! To look at the traces, run a collector with a UI, for instance Jaeger
//! (`docker run -p 16686:16686 -p 4317:4317 jaegertracing/all-in-one`), and
//! export to it with `opentelemetry-otlp` at `http://127.0.0.1:4317`.

use std::time::SystemTime;

use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer,
};
use opentelemetry::{Context, KeyValue};

use crate::event::Event;
use crate::observe::{Finished, Observer};

/// Exports every flow that ends as an OpenTelemetry span; see the
/// [module docs](self).
#[derive(Debug)]
pub struct OtelObserver<T> {
    tracer: T,
}

impl<T> OtelObserver<T> {
    /// Exports with `tracer`.
    pub fn new(tracer: T) -> Self {
        OtelObserver { tracer }
    }
}

/// The trace id of a transaction.
pub fn trace_id(correlation_id: &str) -> TraceId {
    let bytes = crate::uuid7::bytes_of(correlation_id).unwrap_or_else(|| {
        let hash = blake3::hash(correlation_id.as_bytes());
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&hash.as_bytes()[..16]);
        bytes
    });
    TraceId::from_bytes(bytes)
}

/// The span id of the (first) flow of `node` handling `event_id`: the
/// same as [`flow_span_id`] with flow 0.
pub fn span_id(event_id: &str, node: &str) -> SpanId {
    flow_span_id(event_id, node, 0)
}

/// The span id of flow `flow` of `node` handling `event_id` (see
/// [`Finished::flow`]). Flow 0's id depends on the event and the node
/// alone, as it did before flows were told apart, so a trace of nodes
/// with one handler per event keeps its ids.
pub fn flow_span_id(event_id: &str, node: &str, flow: u32) -> SpanId {
    let mut hasher = blake3::Hasher::new();
    hasher.update(event_id.as_bytes());
    hasher.update(&[0]);
    hasher.update(node.as_bytes());
    if flow != 0 {
        // A node id holds no control character, so no other (node, flow)
        // hashes the same.
        hasher.update(&[0]);
        hasher.update(&flow.to_be_bytes());
    }
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&hasher.finalize().as_bytes()[..8]);
    SpanId::from_bytes(bytes)
}

impl<T> Observer for OtelObserver<T>
where
    T: Tracer + Send + Sync + 'static,
    T::Span: Send + Sync + 'static,
{
    fn finished(&self, node: &str, event: &Event, finished: &Finished<'_>) {
        let causal = event.causal();
        let trace = trace_id(&causal.correlation_id);
        let end = SystemTime::now();
        let start = end.checked_sub(finished.elapsed).unwrap_or(end);
        let parent = match causal.causation_id.as_deref() {
            Some(cause) => Context::new().with_remote_span_context(SpanContext::new(
                trace,
                span_id(cause, &causal.sender),
                TraceFlags::SAMPLED,
                true,
                TraceState::default(),
            )),
            None => Context::new(),
        };
        let mut span = self
            .tracer
            .span_builder(format!("{node} {}", event.event_type()))
            .with_kind(SpanKind::Consumer)
            .with_trace_id(trace)
            .with_span_id(flow_span_id(&causal.id, node, finished.flow))
            .with_start_time(start)
            .with_attributes(vec![
                KeyValue::new("happen.node", node.to_owned()),
                KeyValue::new("happen.event_type", event.event_type().to_owned()),
                KeyValue::new("happen.flow", i64::from(finished.flow)),
                KeyValue::new("happen.event_id", causal.id.to_string()),
                KeyValue::new("happen.correlation_id", causal.correlation_id.to_string()),
                KeyValue::new(
                    "happen.causation_id",
                    causal.causation_id.as_deref().unwrap_or("").to_owned(),
                ),
            ])
            .start_with_context(&self.tracer, &parent);
        if let Some(error) = finished.error {
            span.set_status(Status::error(error.to_string()));
        }
        span.end_with_timestamp(end);
    }
}

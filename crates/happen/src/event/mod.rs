//! Events: a type, a schema-free payload and a context that records where the
//! event came from and what caused it.
//!
//! An [`Event`] is plain data. Its serde form uses the documentation's field
//! names (`causationId`, `correlationId`, `nodeId`, ...), so the same value can
//! be written to the wire and read back in another process. Cloning an event is
//! cheap: the contents are shared until one of the clones is changed.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::id::Id;
use crate::identity::Integrity;
use crate::integrity::EventHash;
use crate::path::Path;

mod stamp;
pub(crate) use stamp::{derive_id, stamp};

/// A unique, time-ordered event identifier (a UUID v7 in its text form).
///
/// ```
/// let a = happen::new_event_id();
/// let b = happen::new_event_id();
/// assert!(a < b);
/// ```
pub fn new_event_id() -> Id {
    crate::uuid7::next().0
}

pub(crate) fn now_millis() -> u64 {
    if let Some(ms) = crate::testkit::clock::now_millis() {
        return ms;
    }
    crate::uuid7::wall_millis()
}

/// The causal record of an event: which event it is, who sent it, what caused
/// it and which larger process it belongs to.
///
/// Happen fills this in when an event is sent; handlers read it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Causal {
    /// The event's unique, time-ordered id.
    pub id: Id,
    /// The id of the node that sent the event.
    pub sender: Id,
    /// The id of the event being handled when this one was emitted; `None` for
    /// a root event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Id>,
    /// The id shared by every event of one transaction or process. A root
    /// event's correlation id is its own id unless the sender set one.
    pub correlation_id: Id,
    /// The ids of the nodes along the causal chain, ending with the sender.
    pub path: Path,
    /// When the event was sent, in milliseconds since the Unix epoch.
    pub timestamp: u64,
    /// For a request sent from a flow: the nodes whose flows wait, up the
    /// causal chain, for this request's answer (directly or through the
    /// requests between), ending with the sender. Empty for every other
    /// event, a request from a task the flow spawned included. A target
    /// that finds itself here, with every slot held by a flow that waits
    /// for an answer (none will free itself), refuses the request with
    /// [`HappenError::Deadlock`](crate::HappenError::Deadlock) instead of
    /// letting it wait forever.
    #[serde(default, skip_serializing_if = "no_hops")]
    pub waiting: Path,
    /// The hash the event carried when it arrived from another process,
    /// checked against its contents before it reached a node (see
    /// [`crate::integrity`]); `None` for an event made in this process,
    /// whose hash [`Event::hash`] computes when asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<EventHash>,
}

fn no_hops(path: &Path) -> bool {
    path.is_empty()
}

/// Where an event came from, for acceptance controls and authorization.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Origin {
    /// The node that immediately sent the event (set by Happen).
    pub node_id: Id,
    /// The original source, such as a user id (set by the application).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_id: Option<String>,
    /// The kind of the original source, such as `"user"` (set by the application).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_type: Option<String>,
}

/// Which streamed response an item event belongs to (see [`crate::stream`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamRef {
    /// The id of the event whose flow emitted the item.
    pub of: Id,
    /// The item's position in that flow's stream, from 0.
    pub seq: u64,
}

/// The context an event carries: its causal record, its origin and any
/// application fields.
///
/// The origin's `source_id`/`source_type` and the application fields flow
/// with the events: an event emitted while a flow runs inherits those of the
/// event being handled, unless it sets its own.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EventContext {
    /// Causality: id, sender, causation, correlation, path, timestamp.
    #[serde(default)]
    pub causal: Causal,
    /// Origin: the sending node and the application's source.
    #[serde(default)]
    pub origin: Origin,
    /// For an item of a broadcast stream: which stream, which position.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamRef>,
    /// The sender's signature, when it signs (see [`crate::identity`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integrity: Option<Integrity>,
    /// Application context fields, kept next to `causal` and `origin`.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl EventContext {
    /// The event changed: a hash or signature it carried no longer holds.
    fn unseal(&mut self) {
        self.causal.hash = None;
        self.integrity = None;
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct EventData {
    #[serde(rename = "type")]
    event_type: Id,
    #[serde(default)]
    payload: Value,
    #[serde(default)]
    context: EventContext,
    /// The member events of a batch (see [`Event::batch`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    batch: Option<Vec<Event>>,
}

/// A message between nodes: a type, a payload and a context.
///
/// Create one with [`Event::new`] (or [`Event::with_payload`] for a typed
/// payload); Happen fills in the causal context when it is sent.
///
/// ```
/// use happen::Event;
/// use serde_json::json;
///
/// let event = Event::new("order.created", json!({ "orderId": "ORD-1" }))
///     .with_correlation_id("txn-7")
///     .with_source("user-42", "user");
/// assert_eq!(event.event_type(), "order.created");
/// assert_eq!(event.payload()["orderId"], "ORD-1");
///
/// // The wire form uses the documentation's names.
/// let wire = serde_json::to_value(&event).unwrap();
/// assert_eq!(wire["context"]["causal"]["correlationId"], "txn-7");
/// assert_eq!(wire["context"]["origin"]["sourceType"], "user");
/// ```
#[derive(Clone, PartialEq)]
pub struct Event(Arc<EventData>);

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Event")
            .field("type", &self.0.event_type)
            .field("payload", &self.0.payload)
            .field("context", &self.0.context)
            .field("batch", &self.0.batch)
            .finish()
    }
}

impl Event {
    /// A new event of `event_type` with a JSON payload.
    pub fn new(event_type: impl Into<Id>, payload: Value) -> Self {
        // Built in its allocation (`Arc::default`), not copied from the stack.
        let mut data: Arc<EventData> = Arc::default();
        let fresh = Arc::make_mut(&mut data);
        fresh.event_type = event_type.into();
        fresh.payload = payload;
        Event(data)
    }

    /// A batch: several events of one type, delivered together to a single
    /// handler invocation (Confluence's fan-in). Send it like any event.
    ///
    /// The handler receives the batch as one event of the members' type whose
    /// [`Event::batch_events`] lists the members, each with its own causal context;
    /// [`Event::events`] gives the members of a batch or the event itself,
    /// so one loop handles both. The batch's own context (id, causation,
    /// correlation) is the batch-level context.
    ///
    /// ```
    /// use happen::prelude::*;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> happen::Result<()> {
    /// let happen = Happen::embedded();
    /// let sensors = happen.node("sensors")?;
    /// let telemetry = happen.node("telemetry")?;
    /// telemetry.on("sensor-reading", |event: Event, _cx: Context| async move {
    ///     let values: Vec<f64> = event.events().iter().filter_map(|e| e.payload()["value"].as_f64()).collect();
    ///     json!({ "batch": event.is_batch(), "count": values.len(), "sum": values.iter().sum::<f64>() })
    /// })?;
    ///
    /// let batch = Event::batch((1..=3).map(|i| Event::new("sensor-reading", json!({ "value": i as f64 }))))?;
    /// assert_eq!(sensors.send(&telemetry, batch).await?, json!({ "batch": true, "count": 3, "sum": 6.0 }));
    ///
    /// let single = Event::new("sensor-reading", json!({ "value": 2.5 }));
    /// assert_eq!(sensors.send(&telemetry, single).await?["count"], 1);
    ///
    /// assert!(matches!(Event::batch(Vec::new()), Err(HappenError::EmptyBatch)));
    /// # Ok(()) }
    /// ```
    pub fn batch(events: impl IntoIterator<Item = Event>) -> crate::Result<Event> {
        let events: Vec<Event> = events.into_iter().collect();
        let Some(first) = events.first() else {
            return Err(crate::HappenError::EmptyBatch);
        };
        let event_type = first.0.event_type.clone();
        if let Some(other) = events.iter().find(|e| e.event_type() != event_type) {
            return Err(crate::HappenError::InvalidBatch {
                reason: format!(
                    "a batch holds events of one type; found \"{}\" and \"{}\"",
                    event_type,
                    other.event_type()
                ),
            });
        }
        if events.iter().any(Event::is_batch) {
            return Err(crate::HappenError::InvalidBatch {
                reason: "a batch cannot contain another batch".into(),
            });
        }
        Ok(Event(Arc::new(EventData {
            event_type,
            payload: Value::Null,
            context: EventContext::default(),
            batch: Some(events),
        })))
    }

    /// Whether this event is a batch made by [`Event::batch`].
    pub fn is_batch(&self) -> bool {
        self.0.batch.is_some()
    }

    /// The members of a batch, or `None` for a single event.
    pub fn batch_events(&self) -> Option<&[Event]> {
        self.0.batch.as_deref()
    }

    /// The members of a batch, or this event alone: one loop handles both.
    pub fn events(&self) -> &[Event] {
        match &self.0.batch {
            Some(members) => members,
            None => std::slice::from_ref(self),
        }
    }

    /// A new event whose payload is `payload` serialized to JSON.
    ///
    /// ```
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct Payment { amount: f64 }
    ///
    /// let event = happen::Event::with_payload("process-payment", &Payment { amount: 10.5 }).unwrap();
    /// let back: Payment = event.payload_as().unwrap();
    /// assert_eq!(back.amount, 10.5);
    /// ```
    pub fn with_payload<T: Serialize + ?Sized>(
        event_type: impl Into<Id>,
        payload: &T,
    ) -> crate::Result<Self> {
        Ok(Self::new(event_type, serde_json::to_value(payload)?))
    }

    /// The event type, such as `"order.created"`.
    pub fn event_type(&self) -> &str {
        &self.0.event_type
    }

    /// The payload.
    pub fn payload(&self) -> &Value {
        &self.0.payload
    }

    /// Takes the payload out of the event (in place, without copying it
    /// or the event, when this is the only handle to the event).
    pub fn into_payload(mut self) -> Value {
        match Arc::get_mut(&mut self.0) {
            Some(data) => std::mem::take(&mut data.payload),
            None => self.0.payload.clone(),
        }
    }

    /// The payload deserialized into `T`.
    pub fn payload_as<T: DeserializeOwned>(&self) -> crate::Result<T> {
        Ok(T::deserialize(&self.0.payload)?)
    }

    /// The whole context.
    pub fn context(&self) -> &EventContext {
        &self.0.context
    }

    /// The causal record (id, sender, causation, correlation, path, timestamp).
    pub fn causal(&self) -> &Causal {
        &self.0.context.causal
    }

    /// The origin record.
    pub fn origin(&self) -> &Origin {
        &self.0.context.origin
    }

    /// The event's id (empty until the event is sent).
    pub fn id(&self) -> &str {
        &self.0.context.causal.id
    }

    /// Whether `other` is this event (a clone of it) or one with its id.
    pub(crate) fn is(&self, other: &Event) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.id() == other.id()
    }

    /// The hash of the event's contents (see [`crate::integrity`]): the
    /// one it arrived with, already checked, or computed now.
    pub fn hash(&self) -> EventHash {
        self.0
            .context
            .causal
            .hash
            .unwrap_or_else(|| EventHash::of(self))
    }

    /// Sets the correlation id, grouping this event with others of the same
    /// transaction. Without it, a root event's correlation id is its own id.
    pub fn with_correlation_id(mut self, id: impl Into<String>) -> Self {
        let cx = &mut Arc::make_mut(&mut self.0).context;
        cx.causal.correlation_id = Id::from(id.into());
        cx.unseal();
        self
    }

    /// Records the application-level source of the event (a user, a service).
    /// Events emitted while handling it inherit the source unless they set
    /// their own.
    pub fn with_source(
        mut self,
        source_id: impl Into<String>,
        source_type: impl Into<String>,
    ) -> Self {
        let cx = &mut Arc::make_mut(&mut self.0).context;
        cx.origin.source_id = Some(source_id.into());
        cx.origin.source_type = Some(source_type.into());
        cx.unseal();
        self
    }

    /// Adds an application field to the context (beside `causal` and
    /// `origin`). Events emitted while handling this one inherit it unless
    /// they set the same key.
    pub fn with_context(mut self, key: impl Into<String>, value: Value) -> Self {
        let cx = &mut Arc::make_mut(&mut self.0).context;
        cx.extra.insert(key.into(), value);
        cx.unseal();
        self
    }

    /// An application context field, if set.
    pub fn context_value(&self, key: &str) -> Option<&Value> {
        self.0.context.extra.get(key)
    }

    /// The stream item this event is (see [`crate::stream`]).
    pub fn stream(&self) -> Option<&StreamRef> {
        self.0.context.stream.as_ref()
    }

    pub(crate) fn with_stream(mut self, stream: StreamRef) -> Self {
        Arc::make_mut(&mut self.0).context.stream = Some(stream);
        self
    }

    /// An event from its parts (the wire decoder's way in).
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    pub(crate) fn from_parts(
        event_type: Id,
        payload: Value,
        context: EventContext,
        batch: Option<Vec<Event>>,
    ) -> Event {
        Event(Arc::new(EventData {
            event_type,
            payload,
            context,
            batch,
        }))
    }

    /// The context and batch of an event being built (the wire decoder
    /// fills a new event in place).
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    pub(crate) fn parts_mut(&mut self) -> (&mut EventContext, &mut Option<Vec<Event>>) {
        let data = Arc::make_mut(&mut self.0);
        (&mut data.context, &mut data.batch)
    }

    pub(crate) fn context_mut(&mut self) -> &mut EventContext {
        &mut Arc::make_mut(&mut self.0).context
    }
}

impl Serialize for Event {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        EventData::deserialize(deserializer).map(|d| Event(Arc::new(d)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_are_unique_and_time_ordered() {
        let ids: Vec<Id> = (0..10_000).map(|_| new_event_id()).collect();
        for pair in ids.windows(2) {
            assert!(pair[0] < pair[1], "{} !< {}", pair[0], pair[1]);
        }
    }

    #[test]
    fn serde_round_trip_uses_documented_names() {
        let mut e = Event::new("order.created", json!({"x": 1}))
            .with_source("u1", "user")
            .with_context("tenant", json!("t1"));
        stamp(&mut e, &Id::from("checkout"), None);
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["type"], "order.created");
        for key in ["id", "sender", "correlationId", "path", "timestamp"] {
            assert!(v["context"]["causal"].get(key).is_some(), "missing {key}");
        }
        assert_eq!(v["context"]["origin"]["nodeId"], "checkout");
        assert_eq!(v["context"]["origin"]["sourceId"], "u1");
        assert_eq!(v["context"]["tenant"], "t1");
        let back: Event = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
    }
}

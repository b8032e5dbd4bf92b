//! The per-flow context: what every step of one flow shares.
//!
//! A [`Context`] is created when a flow starts and handed to each of its steps.
//! It tells the step which node runs it, which event started the flow, who sent
//! it and whether a response is expected, and it carries data from one step to
//! the next: JSON values by key ([`Context::set`], [`Context::get`]) and typed
//! Rust values by type ([`Context::insert`], [`Context::typed`]).
//! Cloning a context is cheap; clones share the same data.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::{HappenError, Result};
use crate::event::{Causal, Event};
use crate::node::Node;
use crate::transport::Responder;

/// The context of one flow, shared by all of its steps.
///
/// ```
/// use happen::prelude::*;
///
/// #[derive(Clone, Debug, PartialEq)]
/// struct Quote { cents: u64 }
///
/// async fn price(_e: Event, cx: Context) -> Flow {
///     cx.set("currency", "EUR");        // a JSON value, by key
///     cx.insert(Quote { cents: 1250 }); // a Rust value, by type
///     Flow::next(invoice)
/// }
///
/// async fn invoice(_e: Event, cx: Context) -> Value {
///     let quote: Quote = cx.typed().unwrap();
///     json!({ "total": quote.cents, "currency": cx.get("currency"), "by": cx.node().id() })
/// }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> happen::Result<()> {
/// let happen = Happen::embedded();
/// let billing = happen.node("billing")?;
/// billing.on("quote", price)?;
/// let out = billing.send(&billing, Event::new("quote", json!({}))).await?;
/// assert_eq!(out, json!({ "total": 1250, "currency": "EUR", "by": "billing" }));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Context(Arc<Inner>);

struct Inner {
    node: Node,
    event: Event,
    expects_response: bool,
    /// The requester's reply channel while the flow runs (taken at the end).
    responder: tokio::sync::Mutex<Option<Responder>>,
    /// Items emitted so far (numbering broadcast stream items).
    emitted: std::sync::atomic::AtomicU64,
    received_at: u64,
    values: Mutex<Map<String, Value>>,
    typed: Mutex<HashMap<TypeId, Box<dyn Any + Send>>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("node", &self.0.node.id())
            .field("event_type", &self.0.event.event_type())
            .field("expects_response", &self.0.expects_response)
            .field("values", &*lock(&self.0.values))
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A step that panicked while holding the lock has already failed its flow;
    // the data itself is still consistent (every update is a single call).
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Context {
    pub(crate) fn new(node: Node, event: Event, responder: Option<Responder>) -> Self {
        Context(Arc::new(Inner {
            node,
            event,
            expects_response: responder.is_some(),
            responder: tokio::sync::Mutex::new(responder),
            emitted: std::sync::atomic::AtomicU64::new(0),
            received_at: crate::event::now_millis(),
            values: Mutex::new(Map::new()),
            typed: Mutex::new(HashMap::new()),
        }))
    }

    /// A context for calling a step directly, outside any flow: the way to
    /// unit-test one step of a flow on its own.
    ///
    /// ```
    /// use happen::prelude::*;
    ///
    /// async fn greet(event: Event, cx: Context) -> Value {
    ///     json!(format!("hello {} from {}", event.payload()["name"].as_str().unwrap_or("?"), cx.node().id()))
    /// }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> happen::Result<()> {
    /// let happen = Happen::embedded();
    /// let node = happen.node("greeter")?;
    /// let event = Event::new("greet", json!({ "name": "Ada" }));
    /// let out = greet(event.clone(), Context::standalone(&node, event)).await;
    /// assert_eq!(out, json!("hello Ada from greeter"));
    /// # Ok(()) }
    /// ```
    pub fn standalone(node: &Node, event: Event) -> Self {
        Self::new(node.clone(), event, None)
    }

    /// The node running this flow.
    pub fn node(&self) -> &Node {
        &self.0.node
    }

    /// The event that started this flow.
    pub fn event(&self) -> &Event {
        &self.0.event
    }

    /// The id of the node that sent the event.
    pub fn sender(&self) -> &str {
        &self.0.event.causal().sender
    }

    /// The causal record of the event that started this flow.
    pub fn causal(&self) -> &Causal {
        self.0.event.causal()
    }

    /// Whether the sender waits for this flow's result (`true` for `send`,
    /// `false` for `broadcast`).
    pub fn expects_response(&self) -> bool {
        self.0.expects_response
    }

    pub(crate) async fn take_responder(&self) -> Option<Responder> {
        self.0.responder.lock().await.take()
    }

    /// Streams `value` to the requester before the flow's final value (see
    /// [`crate::stream`]). Waits while the requester is [`STREAM_WINDOW`]
    /// items behind; fails with [`HappenError::Cancelled`] once it stopped
    /// consuming, which should end the flow (`cx.emit(v).await?`).
    ///
    /// When nobody waits for this flow (it was started by a broadcast), the
    /// value is broadcast as an event of type `<handled type>.item`.
    ///
    /// [`STREAM_WINDOW`]: crate::stream::STREAM_WINDOW
    pub async fn emit(&self, value: impl Into<Value>) -> Result<()> {
        let value = value.into();
        let seq = self
            .0
            .emitted
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut responder = self.0.responder.lock().await;
        match responder.as_mut() {
            Some(responder) => responder.emit(value).await,
            None if self.0.expects_response => Err(HappenError::Cancelled),
            None => {
                drop(responder);
                let item = Event::new(format!("{}.item", self.0.event.event_type()), value)
                    .with_context(
                        "stream",
                        serde_json::json!({ "of": self.0.event.id(), "seq": seq }),
                    );
                self.0.node.broadcast(item)
            }
        }
    }

    /// When the node took the event (or batch) for this flow, in
    /// milliseconds since the Unix epoch.
    pub fn received_at(&self) -> u64 {
        self.0.received_at
    }

    /// The members of the batch this flow handles, or `None` for a single
    /// event (the same as `cx.event().batch_events()`).
    pub fn batch(&self) -> Option<&[Event]> {
        self.0.event.batch_events()
    }

    /// Stores a JSON value under `key`, replacing any earlier one.
    pub fn set(&self, key: impl Into<String>, value: impl Into<Value>) {
        lock(&self.0.values).insert(key.into(), value.into());
    }

    /// The JSON value stored under `key`.
    pub fn get(&self, key: &str) -> Option<Value> {
        lock(&self.0.values).get(key).cloned()
    }

    /// The value under `key` deserialized as `T`; `None` if absent or of
    /// another shape.
    pub fn get_as<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        let values = lock(&self.0.values);
        T::deserialize(values.get(key)?).ok()
    }

    /// Changes the value under `key` in place (it starts as `null` when
    /// absent) and returns what `f` returns.
    ///
    /// ```
    /// # let happen = happen::Happen::embedded();
    /// # let node = happen.node("n").unwrap();
    /// let cx = happen::Context::standalone(&node, happen::Event::new("t", serde_json::Value::Null));
    /// cx.update("seen", |v| *v = (v.as_u64().unwrap_or(0) + 1).into());
    /// cx.update("seen", |v| *v = (v.as_u64().unwrap_or(0) + 1).into());
    /// assert_eq!(cx.get("seen"), Some(2.into()));
    /// ```
    pub fn update<R>(&self, key: &str, f: impl FnOnce(&mut Value) -> R) -> R {
        let mut values = lock(&self.0.values);
        f(values.entry(key.to_owned()).or_insert(Value::Null))
    }

    /// Removes and returns the value under `key`.
    pub fn remove(&self, key: &str) -> Option<Value> {
        lock(&self.0.values).remove(key)
    }

    /// Stores a Rust value of type `T` (one per type), returning the previous one.
    pub fn insert<T: Send + 'static>(&self, value: T) -> Option<T> {
        lock(&self.0.typed)
            .insert(TypeId::of::<T>(), Box::new(value))
            .and_then(|old| old.downcast::<T>().ok().map(|b| *b))
    }

    /// A clone of the stored value of type `T`.
    pub fn typed<T: Clone + Send + 'static>(&self) -> Option<T> {
        lock(&self.0.typed)
            .get(&TypeId::of::<T>())
            .and_then(|b| b.downcast_ref::<T>())
            .cloned()
    }

    /// Runs `f` on the stored value of type `T`, if any.
    pub fn with_typed<T: Send + 'static, R>(&self, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        lock(&self.0.typed)
            .get_mut(&TypeId::of::<T>())
            .and_then(|b| b.downcast_mut::<T>())
            .map(f)
    }

    /// Removes and returns the stored value of type `T`.
    pub fn take<T: Send + 'static>(&self) -> Option<T> {
        lock(&self.0.typed)
            .remove(&TypeId::of::<T>())
            .and_then(|b| b.downcast::<T>().ok().map(|b| *b))
    }
}

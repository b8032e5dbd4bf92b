//! The per-flow context: what every step of one flow shares.
//!
//! A [`Context`] is created when a flow starts and handed to each of its steps.
//! It tells the step which node runs it, which event started the flow, who sent
//! it and whether a response is expected, and it carries data from one step to
//! the next: JSON values by key ([`Context::set`], [`Context::get`]) and typed
//! Rust values by type ([`Context::insert`], [`Context::typed`]).
//! Cloning a context is cheap; clones share the same data.
//!
//! On a node with a node-local value ([`Node::with_local`](crate::Node::with_local)),
//! the context is a `Context<S>` and [`Context::local`] gives the value.

use std::any::{Any, TypeId};
use std::sync::{Arc, Mutex};

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::delivery::Responder;
use crate::error::{HappenError, Result};
use crate::event::{Causal, Event};
use crate::node::Node;

mod shared;

pub(crate) use shared::Shared;
use shared::lock;

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
pub struct Context<S = ()> {
    shared: Arc<Shared>,
    local: S,
}

impl<S: Clone> Clone for Context<S> {
    fn clone(&self) -> Self {
        Context {
            shared: self.shared.clone(),
            local: self.local.clone(),
        }
    }
}

/// A flow's typed values, one per type: a handful at most, so a list
/// (nothing to allocate or hash until the first one is stored).
#[derive(Default)]
struct Typed(Vec<(TypeId, Box<dyn Any + Send>)>);

impl Typed {
    fn position(&self, id: TypeId) -> Option<usize> {
        self.0.iter().position(|(stored, _)| *stored == id)
    }

    /// Stores `value` under its own type, returning the previous one.
    fn insert(&mut self, value: Box<dyn Any + Send>) -> Option<Box<dyn Any + Send>> {
        let id = (*value).type_id();
        match self.position(id) {
            Some(at) => Some(std::mem::replace(&mut self.0[at].1, value)),
            None => {
                self.0.push((id, value));
                None
            }
        }
    }

    fn get(&self, id: TypeId) -> Option<&(dyn Any + Send)> {
        self.position(id).map(|at| &*self.0[at].1)
    }

    fn get_mut(&mut self, id: TypeId) -> Option<&mut (dyn Any + Send)> {
        self.position(id).map(|at| &mut *self.0[at].1)
    }

    fn remove(&mut self, id: TypeId) -> Option<Box<dyn Any + Send>> {
        self.position(id).map(|at| self.0.swap_remove(at).1)
    }
}

impl<S> std::fmt::Debug for Context<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("node", &self.shared.node().id())
            .field("event_type", &self.shared.event().event_type())
            .field("expects_response", &self.shared.expects_response)
            .field("values", &*lock(&self.shared.values))
            .finish_non_exhaustive()
    }
}

/// A responder taken out of its slot for one emit; back in the slot when
/// dropped.
struct Lent<'a> {
    slot: &'a Mutex<Option<Responder>>,
    responder: Option<Responder>,
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        if let Some(responder) = self.responder.take() {
            *lock(self.slot) = Some(responder);
        }
    }
}

impl<S: Clone> Context<S> {
    pub(crate) fn from_parts(shared: Arc<Shared>, local: S) -> Self {
        Context { shared, local }
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
    pub fn standalone(node: &Node<S>, event: Event) -> Self {
        Context {
            shared: Shared::new(
                node.untyped(),
                event,
                crate::event::now_millis(),
                None,
                None,
            ),
            local: node.local().clone(),
        }
    }
}

impl<S> Context<S> {
    /// The node-local value of the node running this flow (see
    /// [`Node::with_local`](crate::Node::with_local)).
    pub fn local(&self) -> &S {
        &self.local
    }

    /// The node running this flow.
    pub fn node(&self) -> &Node {
        self.shared.node()
    }

    /// The event that started this flow.
    pub fn event(&self) -> &Event {
        self.shared.event()
    }

    /// The id of the node that sent the event.
    pub fn sender(&self) -> &str {
        &self.shared.event().causal().sender
    }

    /// The causal record of the event that started this flow.
    pub fn causal(&self) -> &Causal {
        self.shared.event().causal()
    }

    /// Whether the sender waits for this flow's result (`true` for `send`,
    /// `false` for `broadcast`).
    pub fn expects_response(&self) -> bool {
        self.shared.expects_response
    }

    /// Streams `value` to the requester before the flow's final value (see
    /// [`crate::stream`]). Waits while the requester is [`STREAM_WINDOW`]
    /// items behind; fails with [`HappenError::Cancelled`] once it stopped
    /// consuming, which should end the flow (`cx.emit(v).await?`).
    ///
    /// When nobody waits for this flow (it was started by a broadcast or a
    /// tell), the value is broadcast as an event of type
    /// `<handled type>.item`; a subscriber whose queue is full misses that
    /// item (reported as undelivered) and the stream goes on for the
    /// others, on every runtime. When the requester waits for another flow
    /// (several handlers of the node matched its request, and it hears the
    /// first registered), the value is dropped. When the requester dropped
    /// its handle before taking any item (a request sent fire-and-forget,
    /// or one whose timeout passed first), the value is dropped and `emit`
    /// succeeds: the flow runs to its end, as the requester's
    /// fire-and-forget asked.
    ///
    /// [`STREAM_WINDOW`]: crate::stream::STREAM_WINDOW
    pub async fn emit(&self, value: impl Into<Value>) -> Result<()> {
        let value = value.into();
        let seq = self
            .shared
            .emitted
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if self.shared.expects_response {
            let _turn = self.shared.emitting.lock().await;
            // Lent to this emit; the guard puts it back even if the emit is
            // cancelled half-way.
            let mut lent = Lent {
                slot: &self.shared.responder,
                responder: lock(&self.shared.responder).take(),
            };
            return match lent.responder.as_mut() {
                Some(responder) => responder.emit(value).await,
                // The flow has ended.
                None => Err(HappenError::Cancelled),
            };
        }
        if let Some(Responder::Elsewhere) = &*lock(&self.shared.responder) {
            return Ok(()); // the requester hears another flow
        }
        let item = Event::new(format!("{}.item", self.shared.event().event_type()), value)
            .with_stream(crate::event::StreamRef {
                of: self.shared.event().causal().id.clone(),
                seq,
            });
        match self.shared.node().broadcast(item) {
            // One full subscriber refused its copy (reported); the others
            // have it, and one slow subscriber does not end the stream.
            Ok(_) | Err(HappenError::QueueFull { .. }) => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// When the node took the event (or batch) for this flow, in
    /// milliseconds since the Unix epoch.
    pub fn received_at(&self) -> u64 {
        self.shared.received_at
    }

    /// The members of the batch this flow handles, or `None` for a single
    /// event (the same as `cx.event().batch_events()`).
    pub fn batch(&self) -> Option<&[Event]> {
        self.shared.event().batch_events()
    }

    /// Stores a JSON value under `key`, replacing any earlier one.
    pub fn set(&self, key: impl Into<String>, value: impl Into<Value>) {
        lock(&self.shared.values).insert(key.into(), value.into());
    }

    /// The JSON value stored under `key`.
    pub fn get(&self, key: &str) -> Option<Value> {
        lock(&self.shared.values).get(key).cloned()
    }

    /// The value under `key` deserialized as `T`; `None` if absent or of
    /// another shape.
    pub fn get_as<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        let values = lock(&self.shared.values);
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
        let mut values = lock(&self.shared.values);
        f(values.entry(key.to_owned()).or_insert(Value::Null))
    }

    /// Removes and returns the value under `key`.
    pub fn remove(&self, key: &str) -> Option<Value> {
        lock(&self.shared.values).remove(key)
    }

    /// Stores a Rust value of type `T` (one per type), returning the previous one.
    pub fn insert<T: Send + 'static>(&self, value: T) -> Option<T> {
        lock(&self.shared.typed)
            .insert(Box::new(value))
            .and_then(|old| old.downcast::<T>().ok().map(|b| *b))
    }

    /// A clone of the stored value of type `T`.
    pub fn typed<T: Clone + Send + 'static>(&self) -> Option<T> {
        lock(&self.shared.typed)
            .get(TypeId::of::<T>())
            .and_then(|b| b.downcast_ref::<T>())
            .cloned()
    }

    /// Runs `f` on the stored value of type `T`, if any.
    pub fn with_typed<T: Send + 'static, R>(&self, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        lock(&self.shared.typed)
            .get_mut(TypeId::of::<T>())
            .and_then(|b| b.downcast_mut::<T>())
            .map(f)
    }

    /// Removes and returns the stored value of type `T`.
    pub fn take<T: Send + 'static>(&self) -> Option<T> {
        lock(&self.shared.typed)
            .remove(TypeId::of::<T>())
            .and_then(|b| b.downcast::<T>().ok().map(|b| *b))
    }
}

#[cfg(test)]
mod tests {
    use super::Typed;
    use std::any::TypeId;

    fn get<T: Clone + 'static>(typed: &Typed) -> Option<T> {
        typed
            .get(TypeId::of::<T>())
            .and_then(|v| v.downcast_ref::<T>())
            .cloned()
    }

    #[test]
    fn typed_values_are_kept_one_per_type() {
        let mut typed = Typed::default();
        assert!(typed.insert(Box::new(1_u32)).is_none());
        assert!(typed.insert(Box::new("one")).is_none());
        // A second value of a type replaces the first and gives it back.
        let old = typed.insert(Box::new(2_u32)).expect("the first u32");
        assert_eq!(old.downcast_ref::<u32>(), Some(&1));
        assert_eq!(get::<u32>(&typed), Some(2));
        assert_eq!(get::<&str>(&typed), Some("one"));
        assert_eq!(get::<u64>(&typed), None);
        if let Some(v) = typed
            .get_mut(TypeId::of::<u32>())
            .and_then(|v| v.downcast_mut::<u32>())
        {
            *v += 1;
        }
        assert_eq!(get::<u32>(&typed), Some(3));
        let taken = typed.remove(TypeId::of::<u32>()).expect("the u32");
        assert_eq!((*taken).type_id(), TypeId::of::<u32>());
        assert_eq!(get::<u32>(&typed), None);
        assert_eq!(get::<&str>(&typed), Some("one"));
    }
}

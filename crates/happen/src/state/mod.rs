//! The state system: what a node owns ([`State`]), windows into what other
//! nodes own ([`Views`], [`Node::view`](crate::Node::view),
//! [`Node::collect`](crate::Node::collect)), what the whole system shares
//! ([`global`]) and what state was after any event ([`temporal`]).
//!
//! State is a JSON value per node, changed only by transforms
//! (`set(|old| new)`). Updates to one node's state are atomic: within a
//! process they are serialized, and across processes (over NATS, where state
//! lives in a JetStream key-value bucket) a conflicting write makes the
//! transform run again on the newer state. Transforms may therefore run more
//! than once: keep them free of side effects.
//!
//! ```
//! use happen::prelude::*;
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> happen::Result<()> {
//! let happen = Happen::embedded();
//! let orders = happen.node("orders")?;
//! let customers = happen.node("customers")?;
//! customers.state().set(|_| json!({ "c1": { "name": "Ada", "city": "Paris" } })).await?;
//!
//! orders.on("place", |event: Event, cx: Context| async move {
//!     let order = event.payload().clone();
//!     // A transform that also sees the customers node's state.
//!     cx.node().state().set_with_views(["customers"], |mut state, views| {
//!         let city = views.get_with("customers", |c| c["c1"]["city"].clone()).unwrap_or_default();
//!         state["orders"][order["id"].as_str().unwrap()] = json!({ "shipTo": city });
//!         state
//!     }).await?;
//!     Ok::<_, HappenError>(())
//! })?;
//!
//! orders.send(&orders, Event::new("place", json!({ "id": "o-1" }))).await?;
//! let ship_to = orders.state().get_with(|s| s["orders"]["o-1"]["shipTo"].clone()).await?;
//! assert_eq!(ship_to, "Paris");
//!
//! // Every change a flow made is in the history, with the event that made it.
//! let history = orders.state().history().await?;
//! assert_eq!(history.len(), 1);
//! assert_eq!(history[0].context.event_type, "place");
//! # Ok(()) }
//! ```

pub mod global;
pub mod temporal;

use std::collections::HashMap;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::Value;

use std::time::Duration;

use crate::causality;
use crate::error::{HappenError, Result};
use crate::event::now_millis;
use crate::id::Id;
use crate::store::applied::{Applied, Settled};
use crate::store::{Saved, Store};
use temporal::{Snapshot, SnapshotContext, SnapshotFilter, Snapshots};

/// How many times a transform runs against conflicting writes from other
/// processes before the update gives up with [`HappenError::Conflict`].
/// With the backoff below that is well over a minute of losing every race.
const MAX_ATTEMPTS: u32 = 1000;
/// The first wait after a conflict; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_micros(200);
const MAX_BACKOFF: Duration = Duration::from_millis(100);

/// A node's own state; get it with [`Node::state`](crate::Node::state) or,
/// from outside the node, [`Happen::state_of`](crate::Happen::state_of).
#[derive(Clone)]
pub struct State {
    store: Arc<dyn Store>,
    /// Exactly-once events whose marks may go, and what they changed.
    settled: Arc<Settled>,
    node: Id,
    /// Which changes are kept as snapshots.
    snapshots: Snapshots,
    /// The node's lock when the node lives in this process: its updates
    /// then queue here rather than race through the store.
    lock: Option<Arc<tokio::sync::Mutex<()>>>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State").field("node", &self.node).finish()
    }
}

/// Read-only snapshots of other nodes' state, handed to
/// [`State::set_with_views`] transforms.
#[derive(Debug, Clone, Default)]
pub struct Views {
    states: HashMap<String, Option<Value>>,
}

impl Views {
    /// The state of `node`, if it has any (and was asked for).
    pub fn get(&self, node: &str) -> Option<&Value> {
        self.states.get(node).and_then(Option::as_ref)
    }

    /// A projection of `node`'s state, if it has any.
    pub fn get_with<T>(&self, node: &str, project: impl FnOnce(&Value) -> T) -> Option<T> {
        self.get(node).map(project)
    }
}

/// The state of `node`: `InvalidName` for what is no node id, on every
/// store (one returned `None`, another its own key error).
async fn load_value(store: &dyn Store, node: &str) -> Result<Option<Value>> {
    crate::name::validate_node_id(node)?;
    Ok(store.load(node).await?.map(|v| v.value))
}

async fn load_views(store: &dyn Store, nodes: &[String]) -> Result<Views> {
    let mut states = HashMap::with_capacity(nodes.len());
    for node in nodes {
        let value = load_value(store, node).await?;
        states.insert(node.clone(), value);
    }
    Ok(Views { states })
}

impl State {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        settled: Arc<Settled>,
        node: Id,
        snapshots: Snapshots,
        lock: Option<Arc<tokio::sync::Mutex<()>>>,
    ) -> Self {
        State {
            store,
            settled,
            node,
            snapshots,
            lock,
        }
    }

    fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The id of the node whose state this is.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The whole state (`null` if the node never set any).
    pub async fn get(&self) -> Result<Value> {
        Ok(self
            .store()
            .load(&self.node)
            .await?
            .map(|v| v.value)
            .unwrap_or(Value::Null))
    }

    /// A projection of the state.
    pub async fn get_with<T>(&self, project: impl FnOnce(&Value) -> T) -> Result<T> {
        Ok(project(&self.get().await?))
    }

    /// The state deserialized as `T` (`None` if the node has no state).
    pub async fn get_as<T: DeserializeOwned>(&self) -> Result<Option<T>> {
        match self.store().load(&self.node).await? {
            Some(v) => Ok(Some(T::deserialize(v.value)?)),
            None => Ok(None),
        }
    }

    /// Replaces the state with `transform(old)` atomically and returns the
    /// new state. `old` is `null` the first time.
    ///
    /// In a flow of a node in [exactly-once](crate::DeliveryMode::ExactlyOnce)
    /// mode, an update the state already holds from an earlier run of the
    /// same flow (the process died before the event was acknowledged, or
    /// the flow failed and is tried again) is not applied again: the flow's
    /// updates are numbered in the order it makes them, the state keeps the
    /// numbers of unfinished flows, and a repeated update returns the state
    /// as it is without running `transform`. See [`crate::durable`].
    pub async fn set(&self, mut transform: impl FnMut(Value) -> Value) -> Result<Value> {
        self.update(&[], move |state, _| transform(state)).await
    }

    /// Like [`State::set`], with snapshots of the named nodes' state (read just
    /// before the transform runs) as a second argument.
    pub async fn set_with_views<I, S>(
        &self,
        nodes: I,
        transform: impl FnMut(Value, &Views) -> Value,
    ) -> Result<Value>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let nodes: Vec<String> = nodes.into_iter().map(Into::into).collect();
        self.update(&nodes, transform).await
    }

    async fn update(
        &self,
        view_nodes: &[String],
        mut transform: impl FnMut(Value, &Views) -> Value,
    ) -> Result<Value> {
        let store = self.store().clone();
        let id = &self.node;
        // One update at a time from this process; other processes are
        // caught by the conditional save.
        let _turn = match &self.lock {
            Some(lock) => Some(lock.lock().await),
            None => None,
        };
        // Exactly-once: this update's number, and the settled events whose
        // marks this write drops.
        let update = causality::current_update();
        let mut droppable = self.settled.take_droppable(id);
        let mut backoff = FIRST_BACKOFF;
        for attempt in 1..=MAX_ATTEMPTS {
            let current = store.load(id).await?;
            let (old, expected, mut applied) = match current {
                Some(v) => (v.value, Some(v.revision), v.applied),
                None => (Value::Null, None, Applied::default()),
            };
            if let Some(update) = &update
                && applied.holds(update)
            {
                // Applied by an earlier run of this flow.
                return Ok(old);
            }
            let views = load_views(&*store, view_nodes).await?;
            let new = transform(old, &views);
            crate::depth::check(&new, || format!("the state of node {id}"))?;
            applied.drop_settled(&droppable.events);
            if let Some(update) = &update {
                applied.record(update, now_millis());
            }
            // Made before the save, so that one too large to record
            // refuses the change before anything is written.
            let snapshot = causality::current_event()
                .filter(|cause| self.snapshots.selects(cause))
                .map(|cause| Snapshot {
                    state: new.clone(),
                    context: SnapshotContext::of(&cause, now_millis()),
                });
            if let Some(snapshot) = &snapshot {
                store.check_record(snapshot)?;
            }
            if let Saved::Done(revision) = store.save(id, &new, &applied, expected).await? {
                droppable.saved = true;
                if let Some(update) = &update {
                    self.settled.changed(&update.event, id);
                }
                // The change is saved and stands: a snapshot that cannot
                // be stored now is missing from the history, not a failed
                // update (which a retry would apply again).
                if let Some(snapshot) = snapshot
                    && let Err(error) = store.record(id, snapshot, revision).await
                {
                    tracing::warn!(node = %id, %error, "a state change was saved, but its snapshot is missing from the history");
                }
                return Ok(new);
            }
            if attempt < MAX_ATTEMPTS {
                // Another writer won. Waiting a random part of a growing
                // window keeps competing processes from retrying in step,
                // so each gets its turn.
                tokio::time::sleep(jitter(backoff)).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
        Err(HappenError::Conflict {
            node: id.to_string(),
            attempts: MAX_ATTEMPTS,
        })
    }

    /// The snapshots recorded after the events `filter` selects, oldest
    /// first: pass an event id, or a `Fn(&SnapshotContext) -> bool` to match
    /// on causation, correlation, sender, event type or time.
    pub async fn when(&self, filter: impl SnapshotFilter) -> Result<Vec<Snapshot>> {
        let mut history = self.history().await?;
        history.retain(|s| filter.accepts(&s.context));
        Ok(history)
    }

    /// Every retained snapshot, oldest first: in the order the changes
    /// were saved (not by their timestamps, which two processes' clocks
    /// may not agree on). A snapshot that could not be stored after its
    /// change was saved is missing (the change stands; it is logged).
    pub async fn history(&self) -> Result<Vec<Snapshot>> {
        self.store().history(&self.node).await
    }
}

/// A random wait in `[0, window]` ("full jitter").
fn jitter(window: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    // A fresh RandomState is seeded differently each time: randomness
    // enough for spreading retries, without a dependency.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(now_millis());
    let nanos = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX).max(1);
    Duration::from_nanos(hasher.finish() % nanos)
}

/// A window into another node's state; see [`Node::view`](crate::Node::view).
#[derive(Clone)]
pub struct View {
    store: Arc<dyn Store>,
    node: String,
}

impl std::fmt::Debug for View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("View").field("node", &self.node).finish()
    }
}

impl View {
    pub(crate) fn new(store: Arc<dyn Store>, node: String) -> Self {
        View { store, node }
    }

    /// The viewed node's whole state; `None` if it has none (or no such node
    /// exists). A view of text that is no node id fails with
    /// [`HappenError::InvalidName`].
    pub async fn get(&self) -> Result<Option<Value>> {
        load_value(&*self.store, &self.node).await
    }

    /// A projection of the viewed node's state, if it has any.
    pub async fn get_with<T>(&self, project: impl FnOnce(&Value) -> T) -> Result<Option<T>> {
        Ok(self.get().await?.as_ref().map(project))
    }
}

type Projection = Box<dyn FnOnce(&Value) -> Value + Send>;

/// Collects projections of several nodes' state in one call; see
/// [`Node::collect`](crate::Node::collect). Await it for a map from the
/// requested keys to the projections (`None` for a node without state).
#[must_use = "a collection does nothing until awaited"]
pub struct Collect {
    store: Arc<dyn Store>,
    wanted: Vec<(String, String, Projection)>,
}

impl std::fmt::Debug for Collect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<(&str, &str)> = self
            .wanted
            .iter()
            .map(|(k, n, _)| (k.as_str(), n.as_str()))
            .collect();
        f.debug_struct("Collect").field("wanted", &keys).finish()
    }
}

impl Collect {
    pub(crate) fn new(store: Arc<dyn Store>) -> Self {
        Collect {
            store,
            wanted: Vec::new(),
        }
    }

    /// Adds `node`'s state, projected by `project`, under the key `node`.
    pub fn from(self, node: &str, project: impl FnOnce(&Value) -> Value + Send + 'static) -> Self {
        self.from_as(node, node, project)
    }

    /// Adds `node`'s state, projected by `project`, under `key`.
    pub fn from_as(
        mut self,
        key: &str,
        node: &str,
        project: impl FnOnce(&Value) -> Value + Send + 'static,
    ) -> Self {
        self.wanted
            .push((key.to_owned(), node.to_owned(), Box::new(project)));
        self
    }

    async fn run(self) -> Result<HashMap<String, Option<Value>>> {
        let mut out = HashMap::with_capacity(self.wanted.len());
        for (key, node, project) in self.wanted {
            let value = load_value(&*self.store, &node).await?.map(|v| project(&v));
            out.insert(key, value);
        }
        Ok(out)
    }
}

impl IntoFuture for Collect {
    type Output = Result<HashMap<String, Option<Value>>>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.run())
    }
}

#[cfg(test)]
mod tests {
    use crate::prelude::*;
    use crate::{DeliveryConfig, NodeConfig};

    /// The marks of exactly-once updates go once their events settle: a
    /// node's state record does not grow with the events it has handled.
    #[tokio::test(flavor = "current_thread")]
    async fn marks_of_settled_events_are_dropped() {
        let happen = Happen::embedded();
        let client = happen.node("client").unwrap();
        let counter = happen
            .node_with(
                "counter",
                NodeConfig::new().delivery(DeliveryConfig::exactly_once().max_attempts(1)),
            )
            .unwrap();
        counter
            .on("add", |_e: Event, cx: Context| async move {
                cx.node()
                    .state()
                    .set(|s| json!(s.as_u64().unwrap_or(0) + 1))
                    .await
            })
            .unwrap();
        counter
            .on("deep", |_e: Event, cx: Context| async move {
                let mut deep = json!(null);
                for _ in 0..crate::depth::MAX_DEPTH + 1 {
                    deep = json!([deep]);
                }
                cx.node().state().set(|_| deep.clone()).await
            })
            .unwrap();
        let marks = || async {
            let stored = counter.store().load("counter").await.unwrap().unwrap();
            stored.applied
        };
        client
            .send(&counter, Event::new("add", json!(null)))
            .await
            .unwrap();
        assert!(
            !marks().await.is_empty(),
            "an exactly-once update is marked"
        );
        for i in 0..49 {
            client
                .send(&counter, Event::new("add", json!(null)))
                .await
                .unwrap();
            if i % 10 == 0 {
                // An update that fails takes the settled events whose marks
                // it would have dropped: it must give them back.
                let refused = client.send(&counter, Event::new("deep", json!(null))).await;
                assert!(refused.is_err());
            }
        }
        assert_eq!(counter.state().get().await.unwrap(), json!(50));
        let applied = marks().await;
        assert_eq!(
            serde_json::to_value(&applied)
                .unwrap()
                .as_object()
                .unwrap()
                .len(),
            1,
            "only the last event's mark is left: {applied:?}"
        );
    }
}

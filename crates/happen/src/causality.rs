//! Automatic causality: the event a flow is handling is the parent of every
//! event the flow emits.
//!
//! The runner runs each flow inside a tokio task-local scope holding the event
//! being handled. [`Node::send`](crate::Node::send) and
//! [`Node::broadcast`](crate::Node::broadcast) read it, wherever in the flow
//! they are called and after any number of `.await`s, and stamp the new event
//! with `causationId` = the handled event's id, the same `correlationId`, and
//! the path extended by the sender.
//!
//! Requests also carry the chain of nodes waiting for them
//! ([`Causal::waiting`](crate::Causal::waiting)): a request whose target
//! waits for it up the chain and has no free slot fails at once with
//! [`HappenError::Deadlock`](crate::HappenError::Deadlock), and an event
//! deeper than [`HappenConfig::max_causal_depth`](crate::HappenConfig::max_causal_depth)
//! is not sent ([`HappenError::CausalDepth`](crate::HappenError::CausalDepth)).
//!
//! ```
//! use happen::prelude::*;
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> happen::Result<()> {
//! let happen = Happen::embedded();
//! let a = happen.node_with("a", NodeConfig::new().max_concurrent(1))?;
//! let b = happen.node("b")?;
//! a.on("start", |_e: Event, cx: Context| async move {
//!     cx.node().send("b", Event::new("ask", json!(null))).response().await
//! })?;
//! // b asks a back, but a's only slot is waiting for b.
//! b.on("ask", |_e: Event, cx: Context| async move {
//!     match cx.node().send("a", Event::new("back", json!(null))).response().await {
//!         Err(HappenError::Deadlock { chain, .. }) => json!(chain.join(" > ")),
//!         other => json!(format!("{other:?}")),
//!     }
//! })?;
//! a.on("back", |_e: Event, _cx: Context| async { json!("unreachable") })?;
//! assert_eq!(b.send(&a, Event::new("start", json!(null))).await?, json!("a > b > a"));
//! # Ok(()) }
//! ```
//!
//! A task-local does not follow work moved to another task with
//! `tokio::spawn`. Use [`happen::spawn`](spawn) instead: it carries the scope
//! along, so events emitted by the spawned task keep their cause.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::task::JoinHandle;

use crate::event::Event;
use crate::store::applied::Update;

/// What a flow's code runs inside: the event being handled and, for a node
/// in exactly-once mode, the flow's numbering of what it emits and changes
/// (shared with tasks the flow spawns).
#[derive(Clone)]
struct Scope {
    event: Event,
    once: Option<Arc<Once>>,
}

/// The exactly-once numbering of one flow: which of its event's flows it
/// is (the handler's position among those the event started), and how many
/// events and state updates it has made so far. A re-run of a flow that
/// does the same things in the same order numbers them the same, so its
/// events get the same ids and its state updates are recognised.
struct Once {
    flow: u32,
    emitted: AtomicU32,
    updates: AtomicU32,
}

tokio::task_local! {
    static CURRENT: Scope;
}

/// The event being handled by the flow this code runs in, if any.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// // Outside a flow there is no current event.
/// assert!(happen::causality::current_event().is_none());
/// # }
/// ```
pub fn current_event() -> Option<Event> {
    CURRENT.try_with(|scope| scope.event.clone()).ok()
}

/// The event being handled and, when the flow's emitted events get derived
/// ids, the flow's position and the position of the event about to be
/// emitted.
pub(crate) fn current_cause() -> Option<(Event, Option<(u32, u32)>)> {
    CURRENT
        .try_with(|scope| {
            let seq = scope
                .once
                .as_ref()
                .map(|once| (once.flow, once.emitted.fetch_add(1, Ordering::Relaxed)));
            (scope.event.clone(), seq)
        })
        .ok()
}

/// The state update about to be made, numbered, when the flow this code
/// runs in is exactly-once.
pub(crate) fn current_update() -> Option<Update> {
    CURRENT
        .try_with(|scope| {
            let once = scope.once.as_ref()?;
            let event = scope.event.causal().id.clone();
            Some(Update {
                flow: format!("{event}/{}", once.flow),
                event,
                seq: once.updates.fetch_add(1, Ordering::Relaxed),
            })
        })
        .ok()
        .flatten()
}

/// Runs `fut` with `event` as the cause of everything it emits; with
/// `exactly_once` (the flow's position among its event's flows), what it
/// emits and changes is numbered.
///
/// A plain function, not an `async fn`: the flow's future moves into the
/// scope once, rather than into a wrapper first and the scope later.
pub(crate) fn scoped<F: Future>(
    event: Event,
    exactly_once: Option<u32>,
    fut: F,
) -> impl Future<Output = F::Output> {
    let once = exactly_once.map(|flow| {
        Arc::new(Once {
            flow,
            emitted: AtomicU32::new(0),
            updates: AtomicU32::new(0),
        })
    });
    CURRENT.scope(Scope { event, once }, fut)
}

/// Like [`tokio::spawn`], but events emitted by the spawned task keep the
/// causal context of the flow that spawned it.
///
/// ```
/// use happen::prelude::*;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> happen::Result<()> {
/// let happen = Happen::embedded();
/// let a = happen.node("a")?;
/// let b = happen.node("b")?;
/// b.on("ping", |_e: Event, _cx: Context| async move {
///     // Work handed to another task still emits events caused by "ping".
///     let pong = happen::spawn(async move {
///         let cause = happen::causality::current_event().unwrap();
///         json!(cause.event_type())
///     });
///     pong.await.unwrap()
/// })?;
/// assert_eq!(a.send(&b, Event::new("ping", json!(null))).await?, json!("ping"));
/// # Ok(()) }
/// ```
pub fn spawn<F>(fut: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match CURRENT.try_with(Scope::clone) {
        Ok(scope) => tokio::spawn(CURRENT.scope(scope, fut)),
        Err(_) => tokio::spawn(fut),
    }
}

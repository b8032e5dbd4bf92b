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
//! A task-local does not follow work moved to another task with
//! `tokio::spawn`. Use [`happen::spawn`](spawn) instead: it carries the scope
//! along, so events emitted by the spawned task keep their cause.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::task::JoinHandle;

use crate::event::Event;

/// What a flow's code runs inside: the event being handled and, for a node
/// in exactly-once mode, the count of events the flow has emitted so far
/// (their ids derive from it; shared with tasks the flow spawns).
#[derive(Clone)]
struct Scope {
    event: Event,
    emitted: Option<Arc<AtomicU32>>,
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
/// ids, the position of the event about to be emitted.
pub(crate) fn current_cause() -> Option<(Event, Option<u32>)> {
    CURRENT
        .try_with(|scope| {
            let seq = scope
                .emitted
                .as_ref()
                .map(|count| count.fetch_add(1, Ordering::Relaxed));
            (scope.event.clone(), seq)
        })
        .ok()
}

/// Runs `fut` with `event` as the cause of everything it emits; with
/// `derive_ids`, the emitted events are numbered for their ids.
pub(crate) async fn scoped<F: Future>(event: Event, derive_ids: bool, fut: F) -> F::Output {
    let emitted = derive_ids.then(|| Arc::new(AtomicU32::new(0)));
    CURRENT.scope(Scope { event, emitted }, fut).await
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

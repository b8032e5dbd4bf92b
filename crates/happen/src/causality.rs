//! Automatic causality: the event a flow is handling is the parent of every
//! event the flow emits.
//!
//! The runner polls each flow with a scope holding the event being handled
//! (a thread-local value put in place for each poll of the flow's future and
//! taken back after it). [`Node::send`](crate::Node::send) and
//! [`Node::broadcast`](crate::Node::broadcast) read it, wherever in the flow
//! they are called and after any number of `.await`s, and stamp the new event
//! with `causationId` = the handled event's id, the same `correlationId`, and
//! the path extended by the sender.
//!
//! Requests also carry the chain of nodes waiting for them
//! ([`Causal::waiting`](crate::Causal::waiting)): a request whose target
//! waits for it up the chain, and whose every slot is held by a flow that
//! waits for an answer too (no slot will free itself), fails at once with
//! [`HappenError::Deadlock`](crate::HappenError::Deadlock); with a slot
//! busy with other work, it waits for that slot (a slot waiting for any
//! answer, even one that will come, counts as one that will not free
//! itself). An event
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
//! The scope does not follow work moved to another task with
//! `tokio::spawn`. Use [`happen::spawn`](spawn) instead: it carries the scope
//! along, so events emitted by the spawned task keep their cause. The
//! spawned task may outlive the flow and its answer, so its requests do not
//! carry the chain of nodes waiting for the flow: a deadlock through such a
//! task shows as the request's timeout, and a request that would run is
//! never refused.

use std::cell::RefCell;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::task::JoinHandle;

use crate::context::Shared;
use crate::event::Event;
use crate::store::applied::Update;

/// What a flow's code runs inside: the event being handled and, for a node
/// in exactly-once mode, the flow's numbering of what it emits and changes
/// (shared with tasks the flow spawns).
struct Scope {
    cause: Cause,
    once: Option<Arc<Once>>,
}

/// The event being handled, as the flow holds it or as a task it spawned
/// does.
enum Cause {
    /// The flow's own scope: its shared part (the event, the node, the
    /// flow's values), which the runner takes back when the steps end.
    Flow(Arc<Shared>),
    /// A task spawned by the flow ([`spawn`]): the event alone, so that a
    /// long-lived task does not keep the node or the flow's values.
    Event(Event),
}

impl Scope {
    fn event(&self) -> &Event {
        match &self.cause {
            Cause::Flow(flow) => flow.event(),
            Cause::Event(event) => event,
        }
    }

    /// This scope as a spawned task carries it.
    fn for_task(&self) -> Scope {
        Scope {
            cause: Cause::Event(self.event().clone()),
            once: self.once.clone(),
        }
    }
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

thread_local! {
    /// The scope of the flow being polled on this thread, if any: put in
    /// place for each poll of a flow's future by [`within`].
    static CURRENT: RefCell<Option<Scope>> = const { RefCell::new(None) };
}

/// Reads the scope of the flow this code runs in.
fn with_current<R>(read: impl FnOnce(&Scope) -> R) -> Option<R> {
    CURRENT
        .try_with(|current| current.borrow().as_ref().map(read))
        .ok()
        .flatten()
}

/// A scope put in place for one poll; dropping it (also when the poll
/// panics) puts back what was there and keeps the scope for the next poll.
struct Entered<'a> {
    slot: &'a mut Option<Scope>,
    previous: Option<Scope>,
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        let previous = self.previous.take();
        if let Ok(scope) = CURRENT.try_with(|current| current.replace(previous)) {
            *self.slot = scope;
        }
    }
}

fn enter(slot: &mut Option<Scope>) -> Entered<'_> {
    // Taken only if the thread's slot is still there (not at thread exit):
    // otherwise the scope stays where it is.
    let previous = CURRENT
        .try_with(|current| current.replace(slot.take()))
        .unwrap_or_default();
    Entered { slot, previous }
}

/// Runs `f` outside any flow's scope (a handler that the lane's task would
/// have run, run instead in a task that is polling a flow: what it sends
/// must not become that flow's children).
pub(crate) fn outside<R>(f: impl FnOnce() -> R) -> R {
    let mut none = None;
    let _entered = enter(&mut none);
    f()
}

/// Polls `fut` with `scope` as the current scope. Nested scopes (a flow
/// run inline from another's poll) put back the outer one when they end.
async fn within<F: Future>(scope: Scope, fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let mut scope = FlowScope(Some(scope));
    std::future::poll_fn(|cx| scope.poll(fut.as_mut(), cx)).await
}

/// The scope of one flow, put in place for each poll of its future (see
/// [`FlowScope::poll`]). The flow's future stays where it is, pinned by its
/// owner: nothing of it is moved into a wrapper.
pub(crate) struct FlowScope(Option<Scope>);

impl FlowScope {
    /// The scope of the flow `flow` (which it keeps until
    /// [`FlowScope::into_flow`]); with `exactly_once` (the flow's position
    /// among its event's flows), what it emits and changes is numbered.
    pub(crate) fn new(flow: Arc<Shared>, exactly_once: Option<u32>) -> FlowScope {
        let once = exactly_once.map(|flow| {
            Arc::new(Once {
                flow,
                emitted: AtomicU32::new(0),
                updates: AtomicU32::new(0),
            })
        });
        FlowScope(Some(Scope {
            cause: Cause::Flow(flow),
            once,
        }))
    }

    /// The flow's shared part, back when the flow has ended (`None` only
    /// if the thread's scope slot was torn down during a poll, at the
    /// thread's exit).
    pub(crate) fn into_flow(self) -> Option<Arc<Shared>> {
        match self.0?.cause {
            Cause::Flow(flow) => Some(flow),
            Cause::Event(_) => None,
        }
    }

    /// Polls `fut` with this scope as the current one.
    pub(crate) fn poll<F: Future + ?Sized>(
        &mut self,
        fut: std::pin::Pin<&mut F>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let _entered = enter(&mut self.0);
        fut.poll(cx)
    }
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
    with_current(|scope| scope.event().clone())
}

/// The shared part of the flow this code runs in (for the runner's next
/// step).
pub(crate) fn current_flow() -> Option<Arc<Shared>> {
    with_current(|scope| match &scope.cause {
        Cause::Flow(flow) => Some(flow.clone()),
        Cause::Event(_) => None,
    })
    .flatten()
}

/// What an event sent from a flow (or a task it spawned) is caused by.
pub(crate) struct Parent {
    /// The event being handled.
    pub(crate) event: Event,
    /// When the flow's emitted events get derived ids: the flow's position
    /// and the position of the event about to be emitted.
    pub(crate) numbered: Option<(u32, u32)>,
    /// Sent from a task the flow spawned ([`spawn`]), which may outlive
    /// the flow and its answer.
    pub(crate) spawned: bool,
}

/// The cause of an event sent from here, if this code runs in a flow.
pub(crate) fn current_cause() -> Option<Parent> {
    with_current(|scope| Parent {
        event: scope.event().clone(),
        numbered: scope
            .once
            .as_ref()
            .map(|once| (once.flow, once.emitted.fetch_add(1, Ordering::Relaxed))),
        spawned: matches!(scope.cause, Cause::Event(_)),
    })
}

/// The state update about to be made, numbered, when the flow this code
/// runs in is exactly-once.
pub(crate) fn current_update() -> Option<Update> {
    with_current(|scope| {
        let once = scope.once.as_ref()?;
        let event = scope.event().causal().id.clone();
        Some(Update {
            flow: format!("{event}/{}", once.flow),
            event,
            seq: once.updates.fetch_add(1, Ordering::Relaxed),
        })
    })
    .flatten()
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
    match with_current(Scope::for_task) {
        Some(scope) => tokio::spawn(within(scope, fut)),
        None => tokio::spawn(fut),
    }
}

#[cfg(test)]
mod tests {
    use super::{Scope, current_event, within};
    use crate::context::Shared;
    use crate::event::Event;
    use serde_json::json;

    fn scope(event_type: &str) -> Scope {
        let happen = crate::Happen::embedded();
        let node = happen.node("n").expect("a node");
        Scope {
            cause: super::Cause::Flow(Shared::new(
                node,
                Event::new(event_type, json!(null)),
                0,
                None,
                None,
            )),
            once: None,
        }
    }

    fn current_type() -> Option<String> {
        current_event().map(|e| e.event_type().to_owned())
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_scope_holds_across_awaits_and_nested_scopes_restore_the_outer() {
        let seen = within(scope("outer"), async {
            let before = current_type();
            tokio::task::yield_now().await;
            let inner = within(scope("inner"), async {
                tokio::task::yield_now().await;
                current_type()
            })
            .await;
            (before, inner, current_type())
        })
        .await;
        assert_eq!(
            seen,
            (
                Some("outer".to_owned()),
                Some("inner".to_owned()),
                Some("outer".to_owned())
            )
        );
        assert_eq!(current_type(), None, "nothing is current outside a flow");
    }

    #[test]
    fn a_poll_that_panics_leaves_no_scope_behind() {
        let flow = within(scope("doomed"), async {
            assert_eq!(current_type().as_deref(), Some("doomed"));
            panic!("the handler fails");
        });
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            futures::executor::block_on(flow)
        }));
        assert!(result.is_err());
        assert_eq!(current_type(), None);
    }
}

#[cfg(test)]
mod spawned {
    use std::sync::Arc;

    use serde_json::json;

    use crate::{Context, Event, Happen};

    /// A task a flow spawns carries the flow's cause, not the flow itself:
    /// it does not keep the node alive after the node shuts down.
    #[tokio::test(flavor = "current_thread")]
    async fn a_spawned_task_does_not_keep_its_node() {
        let happen = Happen::embedded();
        let node = happen.node("spawner").unwrap();
        let (hold, held) = tokio::sync::oneshot::channel::<()>();
        let held = Arc::new(std::sync::Mutex::new(Some(held)));
        let (cause, mut seen) = tokio::sync::mpsc::unbounded_channel();
        node.on("go", move |_e: Event, _cx: Context| {
            let (held, cause) = (held.clone(), cause.clone());
            async move {
                let held = held.lock().unwrap().take();
                super::spawn(async move {
                    let _ = cause.send(super::current_event().map(|e| e.event_type().to_owned()));
                    if let Some(held) = held {
                        let _ = held.await;
                    }
                });
            }
        })
        .unwrap();
        node.send(&node, Event::new("go", json!(null)))
            .await
            .unwrap();
        assert_eq!(seen.recv().await.unwrap().as_deref(), Some("go"));
        let core = Arc::downgrade(node.core());
        node.shutdown().await;
        drop(node);
        assert!(
            crate::testkit::dropped_soon(&core).await,
            "the spawned task kept the node"
        );
        let _ = hold.send(());
        happen.shutdown().await;
    }
}

//! A registered handler, its types erased.
//!
//! A node holds handlers registered through differently typed handles (each
//! with its own node-local value type `S`), so the table stores them as
//! [`Entry`]s: the handler and its value behind one `Arc<dyn Any>`, and a
//! plain function, made for their types, that starts a flow. The flow
//! still calls its handler directly, without boxing the handler's future.
//!
//! A flow keeps its own entry (one reference count), not the node's
//! handler table: a handler removed with [`Node::off`](crate::Node::off)
//! while another handler's flow runs is dropped at once, with what it
//! captured.
//!
//! # A flow's allocation, kept for the next
//!
//! A flow's future is boxed, so that it can move to a task of its own if it
//! suspends. A flow that ends where it started gives its box to the thread
//! ([`keep`]); the thread's next flow of the same handler starts in that
//! box ([`RunFlow::restart`], which replaces the ended future in place)
//! instead of allocating one. A node handling a stream of one event type
//! then allocates nothing for its flows' futures. The box is matched to its
//! handler by a key no other handler ever gets (not by address, which a
//! later handler could reuse), and holds nothing of the handler: a removed
//! handler is dropped at once as before.

use std::any::Any;
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::delivery::{Failure, Responder};
use crate::event::Event;
use crate::flow::Handler;
use crate::node::NodeCore;

/// A registered handler with its node-local value; see the [module
/// docs](self).
#[derive(Clone)]
pub(crate) struct Entry {
    /// The handler and its local value (a [`Typed`]).
    typed: Arc<dyn Any + Send + Sync>,
    /// Starts a flow of this handler (made for its types).
    start: StartFlow,
    /// This entry's own key (see [`HandlerRef`]).
    key: HandlerRef,
}

/// Starts a handler's flow, in a new box or in `kept`, an ended flow's of
/// the same handler.
type StartFlow = fn(FlowStart, Option<FlowFuture>) -> FlowFuture;

/// What a flow starts from: the handler's entry, the node, the event, when
/// it was received, who waits for the outcome, the flow's position among
/// the flows the event started at the node, and what those flows share
/// when there are several.
pub(crate) struct FlowStart {
    pub(crate) entry: Entry,
    pub(crate) node: Arc<NodeCore>,
    pub(crate) event: Event,
    pub(crate) received_at: u64,
    pub(crate) responder: Option<Responder>,
    pub(crate) flow: u32,
    pub(crate) slot: Option<Arc<crate::node::SlotWaits>>,
}

/// The future of one flow, from its first step to the reply: what a
/// node's scheduler polls (inline first, in a task of its own if it waits).
pub(crate) type FlowFuture = Pin<Box<dyn RunFlow>>;

/// A flow's future that can run another flow of its handler once it has
/// ended.
pub(crate) trait RunFlow: Future<Output = Option<Failure>> + Send {
    /// Replaces this flow, which has ended, with the one `start` describes
    /// (a flow of the same handler), in the same allocation.
    fn restart(self: Pin<&mut Self>, start: FlowStart);
}

pin_project_lite::pin_project! {
    /// A flow's future with the function that makes the next one.
    struct Slot<F, M> {
        #[pin]
        flow: F,
        make: M,
    }
}

impl<F: Future, M> Future for Slot<F, M> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<F::Output> {
        self.project().flow.poll(cx)
    }
}

impl<F, M> RunFlow for Slot<F, M>
where
    F: Future<Output = Option<Failure>> + Send,
    M: Fn(FlowStart) -> F + Send,
{
    fn restart(self: Pin<&mut Self>, start: FlowStart) {
        let mut slot = self.project();
        let next = (slot.make)(start);
        slot.flow.set(next);
    }
}

/// The handler a flow's box was made for: a key given to one entry only,
/// never again in the process (see the [module docs](self)).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct HandlerRef(u64);

impl HandlerRef {
    fn next() -> HandlerRef {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        HandlerRef(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// An ended flow's box and the handler it was made for.
struct Kept {
    handler: HandlerRef,
    flow: FlowFuture,
}

thread_local! {
    /// The box of the last flow that ended on this thread.
    static KEPT: Cell<Option<Kept>> = const { Cell::new(None) };
}

/// Keeps `flow`, which has ended, for the thread's next flow of `handler`
/// (replacing the box kept before, if any).
pub(crate) fn keep(flow: FlowFuture, handler: HandlerRef) {
    // The previous box is dropped outside the thread's slot.
    let _previous = KEPT.try_with(|kept| kept.replace(Some(Kept { handler, flow })));
}

/// A handler and the node-local value its steps see.
pub(crate) struct Typed<S, H> {
    pub(crate) handler: H,
    pub(crate) local: S,
}

impl Entry {
    pub(crate) fn new<S, H>(handler: H, local: S) -> Entry
    where
        S: Clone + Send + Sync + 'static,
        H: Handler<S>,
    {
        Entry {
            typed: Arc::new(Typed { handler, local }),
            start: start_typed::<S, H>,
            key: HandlerRef::next(),
        }
    }

    /// The handler and local value, if they are of these types (they
    /// always are for the flow this entry started).
    pub(crate) fn typed<S: 'static, H: 'static>(&self) -> Option<&Typed<S, H>> {
        self.typed.downcast_ref()
    }

    /// Starts the flow of this handler for `event` (the flow keeps the
    /// entry); `flow` is its position among the flows the event starts at
    /// the node, `slot` what it shares with the others when there are
    /// several. Gives the flow's future and the handler to [`keep`] its box
    /// for when it has ended.
    pub(crate) fn start(
        self,
        node: Arc<NodeCore>,
        event: Event,
        received_at: u64,
        responder: Option<Responder>,
        flow: u32,
        slot: Option<Arc<crate::node::SlotWaits>>,
    ) -> (FlowFuture, HandlerRef) {
        let handler = self.key;
        let kept = match KEPT.try_with(Cell::take).ok().flatten() {
            Some(kept) if kept.handler == handler => Some(kept.flow),
            other => {
                if other.is_some() {
                    let _ = KEPT.try_with(|kept| kept.set(other));
                }
                None
            }
        };
        let start_flow = self.start;
        let start = FlowStart {
            entry: self,
            node,
            event,
            received_at,
            responder,
            flow,
            slot,
        };
        (start_flow(start, kept), handler)
    }
}

fn start_typed<S, H>(start: FlowStart, kept: Option<FlowFuture>) -> FlowFuture
where
    S: Clone + Send + Sync + 'static,
    H: Handler<S>,
{
    match kept {
        Some(mut flow) => {
            flow.as_mut().restart(start);
            flow
        }
        None => Box::pin(Slot {
            flow: crate::flow::run::<S, H>(start),
            make: crate::flow::run::<S, H>,
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::{Value, json};

    use crate::prelude::*;

    /// Flows of handlers of different types, one after another on one
    /// thread: each runs its own handler, never the box another left.
    #[tokio::test(flavor = "current_thread")]
    async fn alternating_handlers_each_run_their_own() {
        let happen = Happen::embedded();
        let client = happen.node("client").unwrap();
        let words = happen.node("words").unwrap().with_local("word");
        words
            .on("ask", |_e: Event, cx: Context<&'static str>| async move {
                json!(*cx.local())
            })
            .unwrap();
        let numbers = happen.node("numbers").unwrap().with_local(7_u64);
        numbers
            .on("ask", |e: Event, cx: Context<u64>| async move {
                json!(cx.local() + e.payload().as_u64().unwrap_or(0))
            })
            .unwrap();
        for i in 0..20_u64 {
            let word = client
                .send(&words, Event::new("ask", json!(i)))
                .await
                .unwrap();
            assert_eq!(word, json!("word"));
            let number = client
                .send(&numbers, Event::new("ask", json!(i)))
                .await
                .unwrap();
            assert_eq!(number, json!(7 + i));
        }
        happen.shutdown().await;
    }

    /// A thread keeps the box of a handler's last flow, but not the
    /// handler: removing it drops what it captured at once.
    #[tokio::test(flavor = "current_thread")]
    async fn a_removed_handler_is_dropped_while_its_box_is_kept() {
        let happen = Happen::embedded();
        let client = happen.node("client").unwrap();
        let echo = happen.node("echo").unwrap();
        let captured = Arc::new(());
        let held = captured.clone();
        let id = echo
            .on("ping", move |e: Event, _cx: Context| {
                let _held = held.clone();
                async move { e.payload().clone() }
            })
            .unwrap();
        let answer: Value = client
            .send(&echo, Event::new("ping", json!(1)))
            .await
            .unwrap();
        assert_eq!(answer, json!(1));
        assert!(echo.off(id));
        assert_eq!(
            Arc::strong_count(&captured),
            1,
            "the removed handler is still alive"
        );
        happen.shutdown().await;
    }
}

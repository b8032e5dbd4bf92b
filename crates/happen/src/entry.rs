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

use std::any::Any;
use std::sync::Arc;

use crate::delivery::Responder;
use crate::event::Event;
use crate::flow::{FlowFuture, Handler};
use crate::node::NodeCore;

/// A registered handler with its node-local value; see the [module
/// docs](self).
#[derive(Clone)]
pub(crate) struct Entry {
    /// The handler and its local value (a [`Typed`]).
    typed: Arc<dyn Any + Send + Sync>,
    /// Starts a flow of this handler (made for its types).
    start: StartFlow,
}

/// Starts a handler's flow: the handler's entry, the node, the event,
/// when it was received, who waits for the outcome, and the flow's
/// position among the flows the event started at the node.
type StartFlow = fn(Entry, Arc<NodeCore>, Event, u64, Option<Responder>, u32) -> FlowFuture;

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
        }
    }

    /// The handler and local value, if they are of these types (they
    /// always are for the flow this entry started).
    pub(crate) fn typed<S: 'static, H: 'static>(&self) -> Option<&Typed<S, H>> {
        self.typed.downcast_ref()
    }

    /// Starts the flow of this handler for `event` (the flow keeps the
    /// entry); `flow` is its position among the flows the event starts at
    /// the node.
    pub(crate) fn start(
        self,
        node: Arc<NodeCore>,
        event: Event,
        received_at: u64,
        responder: Option<Responder>,
        flow: u32,
    ) -> FlowFuture {
        (self.start)(self, node, event, received_at, responder, flow)
    }
}

fn start_typed<S, H>(
    entry: Entry,
    node: Arc<NodeCore>,
    event: Event,
    received_at: u64,
    responder: Option<Responder>,
    flow: u32,
) -> FlowFuture
where
    S: Clone + Send + Sync + 'static,
    H: Handler<S>,
{
    Box::pin(crate::flow::run::<S, H>(
        entry,
        node,
        event,
        received_at,
        responder,
        flow,
    ))
}

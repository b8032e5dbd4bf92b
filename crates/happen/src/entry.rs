//! A registered handler, its types erased, and what keeps it alive while
//! its flows run.
//!
//! A node holds handlers registered through differently typed handles (each
//! with its own node-local value type `S`), so the table stores them as
//! [`Entry`]s. A flow still calls its handler directly, without boxing the
//! handler's future: the entry keeps a function, made for the handler's
//! types, that starts the flow.
//!
//! The flow does not take a reference count of its own on the handler: it
//! owns the node's handler table its match came from (the delivery carried
//! that table already), and finds the handler there.

use std::any::Any;
use std::sync::Arc;

use crate::delivery::Responder;
use crate::event::Event;
use crate::flow::{FlowFuture, Handler};
use crate::node::{NodeCore, Registration};

/// A registered handler with its node-local value; see the [module
/// docs](self).
#[derive(Clone)]
pub(crate) struct Entry {
    /// The handler and its local value (a [`Typed`]).
    typed: Arc<dyn Any + Send + Sync>,
    /// Starts a flow of this handler (made for its types).
    start: StartFlow,
}

/// Starts a handler's flow: what keeps the handler, the node, the event,
/// when it was received, who waits for the outcome, and the flow's position
/// among the flows the event started at the node.
type StartFlow = fn(Keep, Arc<NodeCore>, Event, u64, Option<Responder>, u32) -> FlowFuture;

/// A handler and the node-local value its steps see.
pub(crate) struct Typed<S, H> {
    pub(crate) handler: H,
    pub(crate) local: S,
}

/// What keeps a flow's handler alive while the flow runs.
pub(crate) enum Keep {
    /// The node's handler table the flow's match came from, and the
    /// handler's position in it.
    Table(Arc<Vec<Registration>>, usize),
    /// The entry alone (a step started outside any node's table, such as
    /// the ordinary step a zero handler continues with).
    Alone(Entry),
}

impl Keep {
    fn entry(&self) -> &Entry {
        match self {
            Keep::Table(table, at) => &table[*at].entry,
            Keep::Alone(entry) => entry,
        }
    }

    /// The handler and local value kept, if they are of these types (they
    /// always are for the flow its entry started).
    pub(crate) fn typed<S: 'static, H: 'static>(&self) -> Option<&Typed<S, H>> {
        self.entry().typed.downcast_ref()
    }

    /// Starts the flow of the handler kept.
    pub(crate) fn start(
        self,
        node: Arc<NodeCore>,
        event: Event,
        received_at: u64,
        responder: Option<Responder>,
        flow: u32,
    ) -> FlowFuture {
        // Copied out first: `self` moves into the call.
        let start = self.entry().start;
        start(self, node, event, received_at, responder, flow)
    }
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
}

fn start_typed<S, H>(
    keep: Keep,
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
        keep,
        node,
        event,
        received_at,
        responder,
        flow,
    ))
}

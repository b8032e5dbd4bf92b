//! Transports move events between nodes: in one process ([`local`]) or, later,
//! across processes. Everything above this module (nodes, flows, causality,
//! concurrency) is the same whatever the transport.

pub(crate) mod local;

use tokio::sync::oneshot;

use crate::error::Result;
use crate::event::Event;
use crate::node::Node;

/// Where a flow's outcome goes: the requester's end of a reply channel.
pub(crate) trait ReplySink: Send + 'static {
    fn reply(self: Box<Self>, outcome: Result<Event>);
}

impl ReplySink for oneshot::Sender<Result<Event>> {
    fn reply(self: Box<Self>, outcome: Result<Event>) {
        // The requester may have stopped waiting (fire-and-forget, timeout):
        // then the outcome has nowhere to go, which is fine.
        let _ = (*self).send(outcome);
    }
}

/// The reply half of a request, handed with the event to the target node.
pub(crate) struct Responder(Box<dyn ReplySink>);

impl Responder {
    pub(crate) fn new(sink: impl ReplySink) -> Self {
        Responder(Box::new(sink))
    }

    pub(crate) fn reply(self, outcome: Result<Event>) {
        self.0.reply(outcome);
    }
}

/// Moves stamped events to the nodes that should handle them.
pub(crate) trait Transport: Send + Sync + 'static {
    /// Makes a new node reachable. Fails if the id is taken.
    fn attach(&self, node: &Node) -> Result<()>;
    /// Delivers `event` to every node with a matching handler.
    fn broadcast(&self, event: Event) -> Result<()>;
    /// Delivers `event` to the node `target`; the outcome (including routing
    /// errors) goes to `responder`.
    fn send(&self, target: &str, event: Event, responder: Responder);
    /// Forgets every node (at shutdown).
    fn detach_all(&self);
}

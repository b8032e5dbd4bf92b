//! What a zero handler returns.

use serde_json::Value;

use super::{ZeroEvent, ZeroWriter};
use crate::error::Result;
use crate::flow::Step;
use crate::node::Node;

/// What a zero handler returns: how its event's flow goes on.
pub enum ZeroNext {
    /// The flow is complete; a requester gets `null`.
    Done,
    /// Answers with a zero event (sealed as a child of the handled event;
    /// its type is the writer's). An ordinary requester gets its payload as
    /// JSON.
    Reply(ZeroWriter),
    /// Answers with a JSON value (allocates).
    Value(Value),
    /// Continues in an ordinary continuum step, with the event converted to
    /// an ordinary [`Event`](crate::Event) (allocates; the step's flow answers the
    /// requester).
    Then(Step),
}

impl std::fmt::Debug for ZeroNext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ZeroNext::Done => f.write_str("Done"),
            ZeroNext::Reply(writer) => f.debug_tuple("Reply").field(writer).finish(),
            ZeroNext::Value(value) => f.debug_tuple("Value").field(value).finish(),
            ZeroNext::Then(step) => f.debug_tuple("Then").field(step).finish(),
        }
    }
}

/// What a zero handler sees besides its event: its node, and sends that
/// carry the handled event as their cause.
pub struct ZeroContext<'a> {
    pub(super) node: &'a Node,
    pub(super) event: &'a ZeroEvent,
    pub(super) expects_response: bool,
}

impl ZeroContext<'_> {
    /// The node handling the event.
    pub fn node(&self) -> &Node {
        self.node
    }

    /// Whether a requester waits for the answer.
    pub fn expects_response(&self) -> bool {
        self.expects_response
    }

    /// Sends a zero event to `target` with nobody waiting, as a child of the
    /// handled event (its cause, correlation and path follow from it).
    pub fn tell(&self, target: impl crate::node::Target, writer: ZeroWriter) -> Result<()> {
        super::send::tell(self.node, target.target_id(), writer, Some(self.event))
    }
}

//! The errors of Happen: every way a call can fail is a named variant.
//!
//! Errors are plain data so that they can cross the wire: a flow that fails in
//! another process reaches its requester as the same variant it would have been
//! in-process.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::name::NameError;
use crate::pattern::PatternError;

/// The result type of Happen's fallible operations.
pub type Result<T, E = HappenError> = std::result::Result<T, E>;

/// A boxed error, the form any handler error is converted to.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong when using Happen.
///
/// Each variant names what failed and where, and its message says what to do
/// about it. The enum is `#[non_exhaustive]`: match the variants you act on and
/// keep a catch-all arm.
///
/// ```
/// use happen::HappenError;
///
/// let err = HappenError::NoHandler { node: "payments".into(), event_type: "refund".into() };
/// assert!(err.to_string().contains("payments"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "kind", content = "details", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum HappenError {
    /// The target node exists but none of its handlers matches the event type.
    #[error(
        "node \"{node}\" has no handler for event type \"{event_type}\"; register one with node.on(..) before sending"
    )]
    NoHandler {
        /// The node the event was sent to.
        node: String,
        /// The event type nobody handles.
        event_type: String,
    },

    /// No node with this id is known to the runtime (or reachable over the transport).
    #[error(
        "no node \"{node}\" is known; create it with happen.node(\"{node}\") (in this or a connected process) before sending to it"
    )]
    UnknownNode {
        /// The requested node id.
        node: String,
    },

    /// A node with this id already exists in this runtime.
    #[error(
        "a node \"{node}\" already exists in this runtime; node ids are unique, reuse the existing handle"
    )]
    DuplicateNode {
        /// The node id that is taken.
        node: String,
    },

    /// No response arrived within the request timeout.
    #[error(
        "node \"{node}\" did not answer \"{event_type}\" within {}ms; raise the timeout with .timeout(..) or NodeConfig::timeout if the flow is expected to be slow",
        .after_ms
    )]
    Timeout {
        /// The node that was asked.
        node: String,
        /// The event type of the request.
        event_type: String,
        /// How long the requester waited, in milliseconds.
        after_ms: u64,
    },

    /// The target node is at its concurrency limit and its queue is full.
    #[error(
        "node \"{node}\" is overloaded: {active} flows running and its queue of {queue_limit} events is full; retry later or raise max_concurrent / queue_limit"
    )]
    QueueFull {
        /// The overloaded node.
        node: String,
        /// Flows running when the event arrived.
        active: usize,
        /// The node's queue limit.
        queue_limit: usize,
    },

    /// A step of the flow returned an error.
    #[error("handler for \"{event_type}\" on node \"{node}\" failed: {cause}")]
    HandlerFailed {
        /// The node whose flow failed.
        node: String,
        /// The event type being handled.
        event_type: String,
        /// The error the step returned, as text.
        cause: String,
    },

    /// A step of the flow panicked. The node keeps serving other events.
    #[error("handler for \"{event_type}\" on node \"{node}\" panicked: {message}")]
    HandlerPanicked {
        /// The node whose flow panicked.
        node: String,
        /// The event type being handled.
        event_type: String,
        /// The panic message.
        message: String,
    },

    /// The flow finished without sending a response (for example, the node
    /// shut down before it completed).
    #[error(
        "node \"{node}\" dropped the request \"{event_type}\" without answering (the node or runtime shut down)"
    )]
    NoResponse {
        /// The node that was asked.
        node: String,
        /// The event type of the request.
        event_type: String,
    },

    /// A pattern string is not valid.
    #[error(transparent)]
    InvalidPattern(#[from] PatternError),

    /// An event type or node id cannot be used.
    #[error(transparent)]
    InvalidName(#[from] NameError),

    /// [`Event::batch`](crate::Event::batch) was given no events.
    #[error("a batch needs at least one event")]
    EmptyBatch,

    /// The events given to [`Event::batch`](crate::Event::batch) cannot form a batch.
    #[error("invalid batch: {reason}")]
    InvalidBatch {
        /// What is wrong.
        reason: String,
    },

    /// The requester stopped consuming a streamed response.
    #[error("the requester cancelled the stream")]
    Cancelled,

    /// A streamed response lost or reordered a chunk, or ended without its
    /// final message.
    #[error("the response stream is broken: {reason}")]
    StreamBroken {
        /// What went wrong.
        reason: String,
    },

    /// The runtime is shutting down and accepts no new events.
    #[error("the Happen runtime is shut down; no new events are accepted")]
    Shutdown,

    /// The runtime configuration is not valid.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// A payload or event could not be encoded or decoded.
    #[error("codec error: {0}")]
    Codec(String),

    /// The transport failed (connection lost, server error).
    #[error("transport error: {0}")]
    Transport(String),
}

impl HappenError {
    pub(crate) fn timeout(node: &str, event_type: &str, after: Duration) -> Self {
        HappenError::Timeout {
            node: node.to_owned(),
            event_type: event_type.to_owned(),
            after_ms: u64::try_from(after.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

impl From<serde_json::Error> for HappenError {
    fn from(e: serde_json::Error) -> Self {
        HappenError::Codec(e.to_string())
    }
}

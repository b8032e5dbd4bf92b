//! The errors of Happen: every way a call can fail is a named variant.
//!
//! Errors are plain data so that they can cross the wire: a flow that fails in
//! another process reaches its requester as the same variant it would have been
//! in-process, and a failure it passed on from a request of its own (a
//! `HappenError` returned by a step) stays typed too, up to
//! [`SOURCES_ON_THE_WIRE`] hops down.

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
        "no node \"{node}\" is known: none was created with happen.node(\"{node}\") in this or a connected process, or it was shut down, or its process is gone; a node another process creates is reachable once its node.ready() (or that runtime's flush()) has returned there"
    )]
    UnknownNode {
        /// The requested node id.
        node: String,
    },

    /// The target node's acceptance controls
    /// ([`NodeConfig::accept_from`](crate::NodeConfig::accept_from)) refuse
    /// events from this sender and origin.
    #[error(
        "node \"{node}\" does not accept events from sender \"{sender}\"{}: none of its acceptFrom rules matches ({rules})",
        source_id.as_ref().map(|s| format!(" with source \"{s}\"")).unwrap_or_default()
    )]
    NotAccepted {
        /// The node that refused the event.
        node: String,
        /// The event's sender (`causal.sender`).
        sender: String,
        /// The event's origin source id, if it had one.
        source_id: Option<String>,
        /// The node's rules, as configured.
        rules: String,
    },

    /// An event from another process failed its integrity check (see
    /// [`crate::integrity`]): it was changed on the way, or it was not
    /// made by Happen. It reached no node.
    #[error("event \"{event_id}\" was rejected: {reason}")]
    Integrity {
        /// The id the event claims.
        event_id: String,
        /// What failed.
        reason: String,
    },

    /// Another live process runs a node with this id under another key
    /// (see [`crate::identity`]): two different nodes claim one id. Give
    /// the instances of one node the same key
    /// ([`NodeIdentity::from_seed`](crate::NodeIdentity::from_seed)), or
    /// different nodes different ids.
    #[error(
        "another live process runs node \"{node}\" with another key ({registered}); instances of one node share its key (NodeIdentity::from_seed), different nodes need different ids"
    )]
    IdentityConflict {
        /// The node id claimed twice.
        node: String,
        /// The public key the other process holds.
        registered: String,
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

    /// The target node holds as many events as it takes: its flow slots
    /// (`max_concurrent`) and its queue (`queue_limit`) together. Events not
    /// started yet count against both, so a burst sent before the node's
    /// worker has run can be refused with fewer than `max_concurrent`
    /// flows running.
    #[error(
        "node \"{node}\" is overloaded: it holds as many events as max_concurrent and queue_limit ({queue_limit}) allow, {active} of them running and the rest waiting; retry later or raise max_concurrent / queue_limit"
    )]
    QueueFull {
        /// The overloaded node.
        node: String,
        /// Flows running when the event arrived.
        active: usize,
        /// The node's queue limit.
        queue_limit: usize,
    },

    /// The request would wait forever: its target is itself waiting, higher
    /// in the same causal chain, for the answer this request would give,
    /// and every slot of the target is taken by a flow that itself waits
    /// for an answer, so the request could never start. Refused at once
    /// instead of timing out (see [`crate::causality`]).
    #[error(
        "request \"{event_type}\" to node \"{node}\" would deadlock: {node} waits for its answer through {} and each of its slots (max_concurrent {max_concurrent}) waits for an answer too; answer without asking back, tell instead of send, or raise max_concurrent",
        .chain.join(" > ")
    )]
    Deadlock {
        /// The target node, which is waiting up the chain.
        node: String,
        /// The event type of the refused request.
        event_type: String,
        /// The cycle of waiting nodes, from the target back to the target.
        chain: Vec<String>,
        /// The target's concurrency limit.
        max_concurrent: usize,
    },

    /// A blocking call ([`Node::send_sync`](crate::Node::send_sync),
    /// [`Node::process_sync`](crate::Node::process_sync)) was made on the
    /// thread that drives a current-thread runtime, where waiting would
    /// stop the very tasks it waits for. Nothing was sent.
    #[error(
        "{call} blocks, and was called on the thread that drives a current-thread async runtime, which waiting would stop: await the async form instead (send(..).await), or call it from another thread (std::thread::spawn, tokio::task::spawn_blocking)"
    )]
    BlockingInRuntime {
        /// The call that was refused.
        call: String,
    },

    /// An event would be deeper in its causal chain than the configured
    /// limit ([`HappenConfig::max_causal_depth`](crate::HappenConfig::max_causal_depth)),
    /// the mark of a runaway loop of events. It was not sent.
    #[error(
        "event \"{event_type}\" from node \"{node}\" would be {depth} hops deep in its causal chain (limit {limit}); the chain ends by repeating {}; stop the loop, or start a new chain for work that is meant to go on",
        .repeating.join(" > ")
    )]
    CausalDepth {
        /// The node that tried to send the event.
        node: String,
        /// The event type.
        event_type: String,
        /// How deep the event would have been (its path's length).
        depth: usize,
        /// The limit.
        limit: usize,
        /// The nodes that repeat at the end of the chain (the loop), or its
        /// last few nodes when nothing repeats.
        repeating: Vec<String>,
    },

    /// A step of the flow returned an error.
    ///
    /// [`source`](std::error::Error::source) (and
    /// [`HappenError::handler_error`]) gives the step's own error value. In
    /// the process where the flow ran that is whatever the step returned;
    /// across the wire it travels when it is a `HappenError` (a request the
    /// step made failed: `Timeout`, `NoHandler`, another `HandlerFailed`
    /// …), up to [`SOURCES_ON_THE_WIRE`] nested, so a requester reacts to a
    /// downstream failure the same way whether the nodes share a process or
    /// not. Other error types travel as their text only.
    #[error("handler for \"{event_type}\" on node \"{node}\" failed: {cause}")]
    HandlerFailed {
        /// The node whose flow failed.
        node: String,
        /// The event type being handled.
        event_type: String,
        /// The error the step returned, as text.
        cause: String,
        /// The error value itself (see the variant's description).
        #[serde(
            default,
            skip_serializing_if = "wire_source::stays",
            with = "wire_source"
        )]
        #[source]
        source: Option<Cause>,
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

    /// The events given to [`Event::batch`](crate::Event::batch) cannot form
    /// a batch, or a batch went to a node that cannot take one (a node
    /// whose only handler for its type is a zero handler).
    #[error("invalid batch: {reason}")]
    InvalidBatch {
        /// What is wrong.
        reason: String,
    },

    /// A streamed response cannot go on: its requester stopped consuming
    /// it, or (for an `emit` from a task that outlived it) its flow has
    /// ended.
    #[error("the stream is over: its requester stopped reading, or its flow has ended")]
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
    #[error("codec error: {message}")]
    Codec {
        /// What could not be encoded or decoded, and why.
        message: String,
        /// The encoder's or decoder's error (in-process only).
        #[serde(skip)]
        #[source]
        source: Option<Cause>,
    },

    /// The transport failed (connection lost, server error).
    #[error("transport error: {message}")]
    Transport {
        /// What failed.
        message: String,
        /// The client library's error (in-process only).
        #[serde(skip)]
        #[source]
        source: Option<Cause>,
    },

    /// A message is larger than the server accepts (its `max_payload`).
    #[error(
        "a message of {size} bytes exceeds the server's limit of {limit} bytes (max_payload, which bounds events and node state alike); raise the server's max_payload, or put large data in global state (node.global(), which takes any size) and pass its key"
    )]
    PayloadTooLarge {
        /// The message's size in bytes.
        size: usize,
        /// The server's limit in bytes.
        limit: usize,
    },

    /// A JSON value nests deeper than Happen writes to the wire or to disk
    /// (see [`crate::depth`]); nothing was written.
    #[error(
        "{what} nests deeper than {limit} levels, more than Happen writes to the wire or to disk; flatten it, or keep the deep part elsewhere and pass a reference"
    )]
    TooDeep {
        /// What was refused (an event's payload, a node's state, ...).
        what: String,
        /// [`crate::depth::MAX_DEPTH`].
        limit: usize,
    },

    /// Too many messages wait to be written to the server (it is unreachable
    /// or slower than the senders); nothing more is queued until some leave.
    #[error(
        "{pending} messages are waiting for the NATS server (the limit is {limit}); the server may be unreachable: retry later, or raise NatsConfig::outgoing_limit"
    )]
    Backpressure {
        /// Messages waiting to be written.
        pending: usize,
        /// The configured limit.
        limit: usize,
    },

    /// The node answered before (or the connection was just restored), but
    /// no instance of it was reachable until the request's deadline.
    #[error(
        "no instance of node \"{node}\" was reachable for \"{event_type}\": the server had no subscriber for it in {attempts} attempts over {waited_ms}ms; the node may be restarting, or gone"
    )]
    Unreachable {
        /// The node that was asked.
        node: String,
        /// The event type of the request.
        event_type: String,
        /// How many times the event was offered.
        attempts: u32,
        /// How long the sender kept trying, in milliseconds.
        waited_ms: u64,
    },

    /// State could not be read or written (the store failed).
    #[error("state store error: {message}")]
    Store {
        /// What failed.
        message: String,
        /// The store's error (in-process only).
        #[serde(skip)]
        #[source]
        source: Option<Cause>,
    },

    /// A request to an exactly-once node that took this event already, and
    /// keeps no answer to give again: it was answered in another process
    /// (another instance, or before a restart), or its answer left the
    /// de-duplication window.
    #[error(
        "node \"{node}\" took event {event_id} already (exactly-once) and keeps no answer to give again"
    )]
    AlreadyTaken {
        /// The exactly-once node.
        node: String,
        /// The event taken before.
        event_id: String,
    },

    /// A state update lost every race against writers in other processes.
    #[error(
        "the state of node \"{node}\" kept changing under concurrent writers; gave up after {attempts} attempts"
    )]
    Conflict {
        /// The node whose state was being updated.
        node: String,
        /// How many times the transform ran.
        attempts: u32,
    },
}

impl HappenError {
    pub(crate) fn timeout(node: &str, event_type: &str, after: Duration) -> Self {
        HappenError::Timeout {
            node: node.to_owned(),
            event_type: event_type.to_owned(),
            after_ms: millis(after),
        }
    }

    /// A transport failure caused by `source`.
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    pub(crate) fn transport(
        message: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> HappenError {
        HappenError::Transport {
            message: message.into(),
            source: Some(Cause::new(source)),
        }
    }

    /// A transport failure with no underlying error value.
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    pub(crate) fn transport_msg(message: impl Into<String>) -> HappenError {
        HappenError::Transport {
            message: message.into(),
            source: None,
        }
    }

    /// A store failure caused by `source`.
    #[cfg_attr(not(any(feature = "nats", feature = "redb")), allow(dead_code))]
    pub(crate) fn store(message: impl Into<String>, source: impl Into<BoxError>) -> HappenError {
        HappenError::Store {
            message: message.into(),
            source: Some(Cause::new(source)),
        }
    }

    /// An encoding or decoding failure caused by `source`. The message
    /// ends with the source's own (what was wrong, where): shown by `{}`
    /// and kept across the wire, where the source itself does not travel.
    /// A decoder's text can quote what a peer sent, so it is cut to
    /// [`QUOTED_CHARS`] characters with control characters escaped (no
    /// forged log lines, no megabyte errors).
    pub(crate) fn codec(message: impl Into<String>, source: impl Into<BoxError>) -> HappenError {
        let source = Cause::new(source);
        HappenError::Codec {
            message: format!("{}: {}", message.into(), quoted(&source.to_string())),
            source: Some(source),
        }
    }

    /// The error a handler's step returned, as its own type: `Some` when
    /// this is [`HappenError::HandlerFailed`] from a flow whose step failed
    /// with an `E`, the flow in this process, or in another when `E` is
    /// `HappenError` (see the variant).
    ///
    /// ```
    /// use happen::prelude::*;
    ///
    /// #[derive(Debug, thiserror::Error)]
    /// #[error("card declined: {reason}")]
    /// struct Declined { reason: String }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> happen::Result<()> {
    /// let happen = Happen::embedded();
    /// let payments = happen.node("payments")?;
    /// payments.on("charge", |_e: Event, _cx: Context| async {
    ///     Err::<Value, _>(Declined { reason: "insufficient funds".into() })
    /// })?;
    /// let err = payments.send(&payments, Event::new("charge", json!({}))).await.unwrap_err();
    /// let declined: &Declined = err.handler_error().expect("the handler's own error");
    /// assert_eq!(declined.reason, "insufficient funds");
    /// # Ok(()) }
    /// ```
    pub fn handler_error<E: std::error::Error + 'static>(&self) -> Option<&E> {
        match self {
            HappenError::HandlerFailed {
                source: Some(cause),
                ..
            } => cause.downcast_ref::<E>(),
            _ => None,
        }
    }
}

/// How much of a decoder's own message a [`HappenError::Codec`] quotes.
const QUOTED_CHARS: usize = 200;

/// A decoder's message as a codec error quotes it: at most
/// [`QUOTED_CHARS`] characters, control characters escaped.
fn quoted(said: &str) -> String {
    let mut text = String::with_capacity(said.len().min(QUOTED_CHARS + 3));
    for (n, c) in said.chars().enumerate() {
        if n == QUOTED_CHARS {
            text.push('…');
            break;
        }
        if c.is_control() {
            text.extend(c.escape_default());
        } else {
            text.push(c);
        }
    }
    text
}

/// How many nested [`HappenError`] sources of a
/// [`HappenError::HandlerFailed`] travel with it across the wire (the rest
/// travel as text, in `cause`): a failure several requests down a chain
/// stays typed, and a long chain stays small.
pub const SOURCES_ON_THE_WIRE: usize = 8;

mod cause;
mod wire_source;

pub use cause::Cause;
pub(crate) use cause::panic_message;

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl From<serde_json::Error> for HappenError {
    fn from(e: serde_json::Error) -> Self {
        HappenError::Codec {
            message: quoted(&e.to_string()),
            source: Some(Cause::new(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_codec_error_quotes_a_little_of_the_decoder_and_no_line_breaks() {
        let said = format!("unknown field `x\nINFO forged line {}`", "A".repeat(5_000));
        let error = HappenError::codec("cannot decode reply", said);
        let HappenError::Codec { message, .. } = &error else {
            unreachable!()
        };
        assert!(message.starts_with("cannot decode reply: unknown field `x\\nINFO forged"));
        assert!(!message.contains('\n'), "{message}");
        assert!(message.ends_with('…'));
        assert!(
            message.chars().count() < 250,
            "{} chars",
            message.chars().count()
        );
    }
}

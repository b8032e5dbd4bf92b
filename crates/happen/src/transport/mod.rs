//! Transports move events between nodes: in one process ([`local`]) or across
//! processes over NATS ([`nats`]). Everything above this module (nodes, flows,
//! causality, concurrency) is the same whatever the transport.

pub(crate) mod local;
pub(crate) mod nats;

use futures::future::BoxFuture;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::error::{HappenError, Result};
use crate::event::Event;
use crate::node::Node;
use crate::pattern::Pattern;
use crate::stream::{Outcome, STREAM_WINDOW, StreamMsg, StreamRx};

/// The requester's end of a reply: the sending side of the channel its
/// [`Sent`](crate::Sent) waits on.
pub(crate) type ReplyTx = oneshot::Sender<Outcome>;

/// Where a flow's outcome goes when it leaves the process (a NATS inbox).
pub(crate) trait ReplySink: Send + 'static {
    /// Sends one streamed item (waiting for the consumer if it is behind).
    fn emit(&mut self, value: Value) -> BoxFuture<'_, Result<()>>;
    /// Sends the final outcome (ending the stream if one was started).
    fn reply(self: Box<Self>, outcome: Result<Event>);
}

/// The reply half of a request, handed with the event to the target node.
pub(crate) enum Responder {
    /// The requester is in this process and has not been streamed to.
    Local(ReplyTx),
    /// The requester is in this process and consumes a stream.
    LocalStream(mpsc::Sender<StreamMsg>),
    /// The requester is elsewhere.
    Remote(Box<dyn ReplySink>),
}

impl Responder {
    pub(crate) fn remote(sink: impl ReplySink) -> Self {
        Responder::Remote(Box::new(sink))
    }

    /// Whether nobody waits for the outcome any more (a local requester that
    /// dropped its handle). A remote requester is always assumed to wait.
    pub(crate) fn is_abandoned(&self) -> bool {
        match self {
            Responder::Local(tx) => tx.is_closed(),
            Responder::LocalStream(tx) => tx.is_closed(),
            Responder::Remote(_) => false,
        }
    }

    /// Streams one value to the requester; `Cancelled` once it stopped
    /// consuming.
    pub(crate) async fn emit(&mut self, value: Value) -> Result<()> {
        if let Responder::Local(_) = self {
            let (tx, rx) = mpsc::channel(STREAM_WINDOW);
            let Responder::Local(reply) = std::mem::replace(self, Responder::LocalStream(tx))
            else {
                unreachable!("checked above");
            };
            if reply
                .send(Outcome::Stream(StreamRx::new(rx, None)))
                .is_err()
            {
                return Err(HappenError::Cancelled);
            }
        }
        match self {
            Responder::LocalStream(tx) => tx
                .send(StreamMsg::Item(value))
                .await
                .map_err(|_| HappenError::Cancelled),
            Responder::Remote(sink) => sink.emit(value).await,
            Responder::Local(_) => Err(HappenError::Cancelled),
        }
    }

    /// Sends the final outcome; waits for room if a stream is behind.
    pub(crate) async fn finish(self, outcome: Result<Event>) {
        match self {
            Responder::LocalStream(tx) => {
                let _ = tx.send(StreamMsg::End(outcome)).await;
            }
            other => other.reply(outcome),
        }
    }

    /// Sends the final outcome at once (refusals, before any stream).
    pub(crate) fn reply(self, outcome: Result<Event>) {
        match self {
            // The requester may have stopped waiting (fire-and-forget,
            // timeout): then the outcome has nowhere to go, which is fine.
            Responder::Local(tx) => {
                let _ = tx.send(Outcome::Done(outcome));
            }
            Responder::LocalStream(tx) => {
                let _ = tx.try_send(StreamMsg::End(outcome));
            }
            Responder::Remote(sink) => sink.reply(outcome),
        }
    }
}

/// Moves stamped events to the nodes that should handle them.
pub(crate) trait Transport: Send + Sync + 'static {
    /// Makes a new node reachable. Fails if the id is taken.
    fn attach(&self, node: &Node) -> Result<()>;
    /// A local handler now takes the events `pattern` matches: make sure
    /// broadcasts of those types reach this process.
    fn interest(&self, pattern: &Pattern);
    /// Delivers `event` to every node with a matching handler.
    fn broadcast(&self, event: Event) -> Result<()>;
    /// Delivers `event` to the node `target`; the outcome (including routing
    /// errors) goes to `reply`. The requester waits until `deadline` unless
    /// it changes its mind.
    fn send(&self, target: &str, event: Event, reply: ReplyTx, deadline: tokio::time::Instant);
    /// Resolves once everything dispatched so far has reached the transport's
    /// server (at once for the in-process transport).
    fn flush(&self) -> BoxFuture<'static, Result<()>>;
    /// Starts draining: from now on only events caused by running flows are
    /// accepted from elsewhere. Resolves once no request sent through this
    /// transport is still on its way while its requester waits (at once for
    /// the in-process transport, where nothing is ever in transit).
    fn settle(&self) -> BoxFuture<'static, ()>;
    /// Releases nodes and connections, after the last flow has ended.
    fn close(&self) -> BoxFuture<'static, ()>;
    /// Stops at once, without draining (the runtime was dropped, or a
    /// bounded shutdown ran out of time).
    fn abort(&self);
}

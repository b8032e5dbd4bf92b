//! Transports move events between nodes: in one process ([`local`]) or across
//! processes over NATS (`nats`). Everything above this module (nodes, flows,
//! causality, concurrency) is the same whatever the transport; what a
//! transport hands to a node goes through [`crate::delivery`].
//!
//! # Maps looked up per event
//!
//! The tables consulted for every event (routes by event type, subjects by
//! node id or type, the nodes of the process by id, when a node last
//! answered) hash with foldhash instead of the standard library's SipHash:
//! for the short keys they hold it costs a few dozen instructions where
//! SipHash cost about 150 per lookup, and a broadcast over NATS made three.
//! The routes' keys may come from the wire (a remote event's type), so the
//! hash still matters against crafted keys: foldhash seeds every map from a
//! per-process random value, and the routes, like the subjects, start over
//! past a few thousand entries besides.

pub(crate) mod local;
#[cfg(feature = "nats")]
pub(crate) mod nats;
pub(crate) mod reports;
pub(crate) mod routes;

use futures::future::BoxFuture;

use crate::balance::Lag;
use local::LocalTransport;

use crate::delivery::{Arrival, ReplyTx};
use crate::error::HappenError;
use crate::error::Result;
use crate::event::Event;
use crate::node::Node;
use crate::pattern::Pattern;
use crate::receipt::Receipt;
use crate::system::Counters;
use crate::zero::{ReplyTo, ZeroEvent};

/// What a transport subscribed for one handler, released by
/// [`Transport::unsubscribe`] when the handler goes (over NATS: the keys of
/// its subject filters; nothing in one process).
#[derive(Debug, Clone, Default)]
pub(crate) struct Interest(
    #[cfg_attr(not(feature = "nats"), allow(dead_code))] pub(crate) Vec<String>,
);

/// Moves stamped events to the nodes that should handle them.
pub(crate) trait Transport: Send + Sync + 'static {
    /// Makes a new node reachable. Fails if the id is taken.
    fn attach(&self, node: &Node) -> Result<()>;
    /// Makes the node `id` unreachable (it shuts down).
    fn detach(&self, id: &str);
    /// A handler with `pattern` was registered on `node`: make sure
    /// broadcasts it matches reach it.
    fn subscribe(&self, node: &Node, pattern: &Pattern) -> Result<Interest>;
    /// A handler went: release what it alone needed.
    fn unsubscribe(&self, interest: &Interest);
    /// Delivers `event` to every node with a matching handler; the receipt
    /// says when it is kept for them.
    fn broadcast(&self, event: Event) -> Result<Receipt>;
    /// Delivers `event` to the node `target`; the outcome (including routing
    /// errors) goes to `reply`. The requester waits until `deadline` unless
    /// it changes its mind. The receipt says when the event is kept.
    fn send(
        &self,
        target: &str,
        event: Event,
        reply: ReplyTx,
        deadline: crate::response::Deadline,
    ) -> Receipt;

    /// Whether events to this runtime's own nodes are delivered in the
    /// process, so that a live node handle may be handed an event directly,
    /// without a lookup by id.
    fn in_process(&self) -> bool {
        false
    }
    /// Delivers `event` to the node `target` with nobody waiting for an
    /// answer; errors known at once are returned, and the receipt says when
    /// the event is kept.
    fn tell(&self, target: &str, event: Event) -> Result<Receipt>;
    /// Resolves once everything dispatched so far has been processed by the
    /// transport's server (a round trip; at once for the in-process
    /// transport).
    fn flush(&self) -> BoxFuture<'static, Result<()>>;
    /// Resolves once the server has processed the subscriptions released so
    /// far, unless the connection is down (a bounded round trip; at once for
    /// the in-process transport).
    fn released(&self) -> BoxFuture<'static, ()> {
        Box::pin(std::future::ready(()))
    }
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
    /// How many events went undelivered or were refused.
    fn counters(&self) -> Counters;
    /// A sample of how events flow into the nodes this transport can see
    /// (flow balance); `None` for a node that could not be read this time.
    fn lag(&self) -> BoxFuture<'static, Vec<(String, Option<Lag>)>>;
    /// This process's table of nodes, which reports to them what happens to
    /// the system.
    fn local(&self) -> &LocalTransport;
    /// Whether the transport stores events for durable nodes itself (NATS:
    /// JetStream) rather than leaving retries to the process.
    fn stores_durable_events(&self) -> bool {
        false
    }
    /// Forgets that the node `id` is durable, system-wide, and drops the
    /// events stored for it (see [`Happen::forget_durable`](crate::Happen::forget_durable));
    /// nothing to forget where durable events stay in the process.
    fn forget_durable(&self, _id: &str) -> BoxFuture<'static, Result<()>> {
        Box::pin(std::future::ready(Ok(())))
    }
    /// Publishes `node`'s public key where other processes find it (in one
    /// process, the local table is all there is).
    fn register_key(&self, _node: &str, _public_key: &str) {}
    /// The live node `id` of this process, if any.
    fn node(&self, id: &str) -> Option<Node>;

    /// Delivers a zero event to the node `target` (in one process: the
    /// buffer is handed over; the answer, if `reply` wants one, goes there).
    fn send_zero(
        &self,
        target: &str,
        event: ZeroEvent,
        reply: ReplyTo,
        _timeout: std::time::Duration,
    ) -> Result<()> {
        match self.local().lookup(target) {
            Some(node) => crate::zero::deliver(node.core(), event, reply, Arrival::Local),
            None => {
                let error = HappenError::UnknownNode {
                    node: target.to_owned(),
                };
                reply.refuse(error.clone());
                Err(error)
            }
        }
    }
}

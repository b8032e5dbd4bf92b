//! Sending zero events: stamping, routing, and waiting for an answer.

use std::future::Future;
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::oneshot;

use super::lane::{self, ZeroContext, ZeroFn, ZeroNext};
use super::reply::ReplyTo;
use super::writer::Stamp;
use super::{ZeroEvent, ZeroWriter};
use crate::delivery::Arrival;
use crate::error::{BoxError, HappenError, Result};
use crate::node::{HandlerId, Node, NodeCore, Target};
use crate::pattern::IntoPattern;

/// The answer to a zero request: a zero event, or a JSON value (from an
/// ordinary step, or a handler that answered with one).
#[derive(Debug)]
pub enum ZeroAnswer {
    /// A zero event ([`ZeroNext::Reply`]).
    Zero(ZeroEvent),
    /// A JSON value.
    Value(Value),
}

impl ZeroAnswer {
    /// The zero event, if the answer is one.
    pub fn zero(&self) -> Option<&ZeroEvent> {
        match self {
            ZeroAnswer::Zero(event) => Some(event),
            ZeroAnswer::Value(_) => None,
        }
    }

    /// The answer as JSON: a zero event's payload, or the value.
    pub fn into_value(self) -> Value {
        match self {
            ZeroAnswer::Zero(event) => event.payload(),
            ZeroAnswer::Value(value) => value,
        }
    }
}

impl<S: Clone + Send + Sync + 'static> Node<S> {
    /// Registers a zero-allocation handler for events matching `pattern`:
    /// a synchronous function of the event (a flat buffer, read through
    /// offsets) and a [`ZeroContext`], returning a [`ZeroNext`]. See
    /// [`crate::zero`].
    ///
    /// Zero events matching it go to it; ordinary events go to it (converted)
    /// only when no ordinary handler of the node matches. The node runs its
    /// zero handlers one event at a time, in its own task.
    ///
    /// A node with durable delivery ([`DeliveryConfig`](crate::DeliveryConfig)
    /// at-least-once or exactly-once) takes no zero handler:
    /// [`HappenError::Config`]. Its events are stored and settled at the end
    /// of an ordinary flow, which a zero handler does not have.
    pub fn zero<F>(&self, pattern: impl IntoPattern, handler: F) -> Result<HandlerId>
    where
        F: Fn(&ZeroEvent, &ZeroContext<'_>) -> std::result::Result<ZeroNext, BoxError>
            + Send
            + Sync
            + 'static,
    {
        let core = self.core();
        if core.limits().delivery.mode.is_durable() {
            // A zero handler has no end of flow to settle a stored event
            // with: the event would be handed out again and again.
            return Err(not_durable(core.id()));
        }
        let handler: Arc<ZeroFn> = Arc::new(handler);
        lane::register(&self.untyped(), pattern.into_pattern(), handler)
    }

    /// Sends a zero event built by `writer` to `target`, nobody waiting for
    /// an answer: a root event of this node. In one process the buffer is
    /// handed over as it is; over NATS its bytes are the message.
    ///
    /// Errors known at once are returned: an invalid event type, an unknown
    /// node in this process, a full queue.
    pub fn zero_tell(&self, target: impl Target, writer: ZeroWriter) -> Result<()> {
        send(self.core(), &target, writer, None, None).map(drop)
    }

    /// Sends a zero event to `target` and waits for its answer (at most the
    /// node's timeout).
    ///
    /// To a node of this process, a request that is next in the target's
    /// zero lane while none of its handlers runs is handled in the awaiting
    /// task itself, when awaited; otherwise the lane's task handles it in
    /// turn. Await it inside a tokio runtime: the wait for an answer that
    /// is not there at once uses tokio's timer (outside one, only a claimed
    /// request is answered; any other panics, as tokio's timers do).
    pub fn zero_send(
        &self,
        target: impl Target,
        writer: ZeroWriter,
    ) -> impl Future<Output = Result<ZeroAnswer>> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let timeout = self.core().limits().timeout;
        let target_id = target.target_id().to_owned();
        let sent = send(self.core(), &target, writer, None, Some(tx));
        async move {
            if let Some(claim) = sent? {
                // Other tasks get their turn between claimed requests, as
                // between answers that come through a channel.
                tokio::task::coop::consume_budget().await;
                claim.run();
            }
            let mut rx = rx;
            if let Ok(answer) = rx.try_recv() {
                return answer;
            }
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(answer)) => answer,
                Ok(Err(_)) => Err(HappenError::NoResponse {
                    node: target_id,
                    event_type: "(zero event)".into(),
                }),
                Err(_) => Err(HappenError::Timeout {
                    node: target_id,
                    event_type: "(zero event)".into(),
                    after_ms: crate::error::millis(timeout),
                }),
            }
        }
    }
}

/// Why a durable node takes no zero handler and no zero event: its events
/// are stored and settled at the end of an ordinary flow.
pub(crate) fn not_durable(node: &str) -> HappenError {
    HappenError::Config(format!(
        "node {node} takes durable delivery, which zero events do not have: register ordinary handlers (node.on) and send it ordinary events (tell, send)"
    ))
}

/// Sends from a zero handler: the handled event is the cause.
pub(crate) fn tell(
    node: &Node,
    target: &str,
    writer: ZeroWriter,
    parent: Option<&ZeroEvent>,
) -> Result<()> {
    send(node.core(), &target, writer, parent, None).map(drop)
}

/// Stamps `writer` as `core`'s event (a child of `parent`, if any) and
/// hands it to `target`; for a request to a node of this process, how the
/// requester may run it itself.
fn send(
    core: &Arc<NodeCore>,
    target: &impl Target,
    mut writer: ZeroWriter,
    parent: Option<&ZeroEvent>,
    reply: Option<oneshot::Sender<Result<ZeroAnswer>>>,
) -> Result<Option<Claim>> {
    if core.is_closed() || (parent.is_none() && core.draining()) {
        return Err(HappenError::Shutdown);
    }
    if let Some(error) = writer.type_error() {
        return Err(error);
    }
    let event = match parent {
        None => {
            let (id, timestamp) = crate::uuid7::next_bytes();
            writer.seal(Stamp {
                id,
                timestamp,
                sender: core.id(),
                causation: None,
                correlation: None,
                path: std::iter::once(core.id().as_str()),
            })?
        }
        Some(parent) => {
            let depth = parent.path().len() + 1;
            let limit = core.limits().max_causal_depth;
            if depth > limit {
                return Err(HappenError::CausalDepth {
                    node: core.id().to_string(),
                    event_type: parent.event_type().to_owned(),
                    depth,
                    limit,
                    repeating: parent.path().rev().take(4).map(str::to_owned).collect(),
                });
            }
            super::run::seal_child(&mut writer, core.id(), parent)?
        }
    };
    if core.observers().is_active() {
        super::observed::stamped(core, &event);
    }
    let reply = reply.map_or(ReplyTo::Nobody, ReplyTo::Zero);
    // A live node of this runtime, in a runtime whose nodes all live here:
    // handed over without a lookup.
    if let Some(node) = core.in_process_target(target) {
        if node.limits().delivery.mode.is_durable() {
            return Err(not_durable(node.id()));
        }
        let claim = matches!(reply, ReplyTo::Zero(_)).then(|| Claim {
            node: Arc::downgrade(node),
            id: event.id().0,
        });
        return lane::deliver(node, event, reply, Arrival::Local).map(|()| claim);
    }
    let runtime = core.runtime_inner().ok_or(HappenError::Shutdown)?;
    runtime
        .transport()
        .send_zero(target.target_id(), event, reply, core.limits().timeout)
        .map(|()| None)
}

/// A zero request queued for a node of this process, which the requester
/// may run in its own task (see [`lane::Lane::claim`]).
struct Claim {
    node: std::sync::Weak<NodeCore>,
    id: [u8; 16],
}

impl Claim {
    fn run(self) {
        if let Some(node) = self.node.upgrade()
            && let Some(lane) = node.zero_lane()
        {
            lane.claim(&node, &self.id);
        }
    }
}

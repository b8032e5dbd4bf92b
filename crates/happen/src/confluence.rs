//! Confluence: one handler on several nodes, one event to several nodes, and
//! (with [`Event::batch`](crate::Event::batch)) several events to one
//! handler.
//!
//! Sending to a group gives each node its own flow with its own
//! [`Context`](crate::Context): divergent flows. Their results come back
//! keyed by node id, each with its own outcome, so one failing or slow node
//! does not hide the others.
//!
//! ```
//! use happen::prelude::*;
//! use happen::NodeGroup;
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> happen::Result<()> {
//! let happen = Happen::embedded();
//! let monitor = happen.node("system-monitor")?;
//! let group = NodeGroup::new([happen.node("alert-service")?, happen.node("logging-service")?]);
//!
//! // One registration, one flow per node; the context says which node runs it.
//! group.on("critical-alert", |_event: Event, cx: Context| async move {
//!     json!({ "handledBy": cx.node().id() })
//! })?;
//!
//! let results = monitor.send_to_all(&group, Event::new("critical-alert", json!({ "issue": "disk" }))).await;
//! assert_eq!(results["alert-service"].as_ref().unwrap()["handledBy"], "alert-service");
//! assert_eq!(results["logging-service"].as_ref().unwrap()["handledBy"], "logging-service");
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::time::Duration;

use serde_json::Value;

use crate::error::Result;
use crate::event::Event;
use crate::flow::{Handler, Step};
use crate::id::Id;
use crate::node::{Addressee, HandlerId, Node, Target};
use crate::pattern::IntoPattern;
use crate::response::Sent;

impl<S> Node<S> {
    /// Sends `event` to every node of `targets` (a [`NodeGroup`], nodes or
    /// ids; a node named twice gets it once). The event is stamped once (one
    /// id, like a broadcast that names its receivers); each target runs its
    /// own flow. Await the handle for
    /// the results keyed by node id, each with its own outcome.
    pub fn send_to_all<T: Target>(
        &self,
        targets: impl IntoIterator<Item = T>,
        event: Event,
    ) -> SentToAll {
        // Each node once (its result is keyed by its id).
        let mut targets: Vec<Id> = targets.into_iter().map(|t| t.target_shared_id()).collect();
        let mut seen = std::collections::HashSet::with_capacity(targets.len());
        targets.retain(|id| seen.insert(id.clone()));
        let timeout = self.limits().timeout;
        let prepared = self.runtime().and_then(|runtime| {
            match self.prepare(event.clone(), true, Addressee::EachOfGroup) {
                Ok(event) => Ok((runtime, event)),
                Err((e, _)) => Err(e),
            }
        });
        let sent = targets
            .into_iter()
            .map(|target| {
                let sent = match &prepared {
                    // Not claimed: awaiting the group must not run its
                    // flows one after another in the requester's task.
                    Ok((runtime, event)) => match self.signed_for(&target, event) {
                        Ok(event) => self
                            .send_stamped(runtime, target.clone(), event)
                            .unclaimed(),
                        Err(e) => Sent::refused(target.clone(), event.clone(), timeout, e),
                    },
                    Err(e) => Sent::refused(target.clone(), event.clone(), timeout, e.clone()),
                };
                (target, sent)
            })
            .collect();
        SentToAll::new(sent)
    }
}

/// Several nodes addressed together.
#[derive(Debug, Clone, Default)]
pub struct NodeGroup {
    nodes: Vec<Node>,
}

impl NodeGroup {
    /// A group of `nodes`. A node given twice is in the group once (as
    /// [`Node::send_to_all`] sends once to a node named twice), so that a
    /// handler registered on the group runs once per event.
    pub fn new(nodes: impl IntoIterator<Item = Node>) -> Self {
        let mut group: Vec<Node> = Vec::new();
        for node in nodes {
            if !group
                .iter()
                .any(|n| std::sync::Arc::ptr_eq(n.core(), node.core()))
            {
                group.push(node);
            }
        }
        NodeGroup { nodes: group }
    }

    /// The nodes, in the order first given.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Registers `handler` on every node of the group (each runs its own
    /// flows). Returns the registration on each node, in order; on an error
    /// nothing stays registered.
    pub fn on(&self, pattern: impl IntoPattern, handler: impl Handler) -> Result<Vec<HandlerId>> {
        let pattern = pattern.into_pattern();
        let step = Step::new(handler);
        let mut ids = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            match node.on_handler(pattern.clone(), step.clone()) {
                Ok(id) => ids.push(id),
                Err(e) => {
                    for (node, id) in self.nodes.iter().zip(&ids) {
                        node.off(*id);
                    }
                    return Err(e);
                }
            }
        }
        Ok(ids)
    }
}

impl FromIterator<Node> for NodeGroup {
    fn from_iter<I: IntoIterator<Item = Node>>(iter: I) -> Self {
        NodeGroup::new(iter)
    }
}

impl<'a> IntoIterator for &'a NodeGroup {
    type Item = &'a Node;
    type IntoIter = std::slice::Iter<'a, Node>;
    fn into_iter(self) -> Self::IntoIter {
        self.nodes.iter()
    }
}

/// The results of a group send, keyed by node id.
pub type GroupResults = HashMap<String, Result<Value>>;

/// The handle of an event sent to several nodes; see
/// [`Node::send_to_all`](crate::Node::send_to_all). Await it (or call
/// [`SentToAll::response`]) for every node's result; drop it to forget them.
#[derive(Debug)]
pub struct SentToAll {
    sent: Vec<(Id, Sent)>,
}

impl SentToAll {
    pub(crate) fn new(sent: Vec<(Id, Sent)>) -> Self {
        SentToAll { sent }
    }

    /// The id of the sent event (the same for every node).
    pub fn id(&self) -> &str {
        self.sent.first().map_or("", |(_, s)| s.id())
    }

    /// Sets how long to wait for each node, counted from the send.
    pub fn timeout(self, timeout: Duration) -> Self {
        SentToAll {
            sent: self
                .sent
                .into_iter()
                .map(|(id, s)| (id, s.timeout(timeout)))
                .collect(),
        }
    }

    /// Waits for every node's result (each within the timeout).
    pub async fn response(self) -> GroupResults {
        let waits = self
            .sent
            .into_iter()
            .map(|(id, sent)| async move { (id.to_string(), sent.response().await) });
        futures::future::join_all(waits).await.into_iter().collect()
    }
}

impl IntoFuture for SentToAll {
    type Output = GroupResults;
    type IntoFuture = Pin<Box<dyn Future<Output = GroupResults> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.response())
    }
}

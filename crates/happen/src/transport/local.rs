//! The in-process transport: events go straight from the sender to the
//! receiving node's scheduler, without serialization.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use futures::future::BoxFuture;

use super::{ReplyTx, Responder, Transport};
use crate::error::{HappenError, Result};
use crate::event::Event;
use crate::node::Node;
use crate::pattern::Pattern;

/// Routes events between the nodes of one process.
#[derive(Default)]
pub(crate) struct LocalTransport {
    nodes: RwLock<HashMap<Arc<str>, Node>>,
}

impl LocalTransport {
    /// Forgets every node (breaking the node ↔ runtime reference cycle).
    pub(crate) fn detach_all(&self) {
        self.nodes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    fn node(&self, id: &str) -> Option<Node> {
        self.nodes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// Hands `event` to every local node with a matching handler. A full
    /// queue at one receiver does not keep the event from the others; the
    /// first refusal is returned afterwards.
    pub(crate) fn deliver_broadcast(&self, event: &Event) -> Result<()> {
        let nodes = self.nodes.read().unwrap_or_else(|p| p.into_inner());
        let mut first_error = None;
        for node in nodes.values() {
            if node.core().handles(event.event_type()) {
                if let Err(e) = node.core().deliver(event.clone(), None) {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Hands `event` to the local node `target`; every outcome, refusals
    /// included, goes to `responder`.
    pub(crate) fn deliver_to(&self, target: &str, event: Event, responder: Responder) {
        match self.node(target) {
            Some(node) => {
                // On failure `deliver` has already answered the responder.
                let _ = node.core().deliver(event, Some(responder));
            }
            None => responder.reply(Err(HappenError::UnknownNode {
                node: target.to_owned(),
            })),
        }
    }
}

impl Transport for LocalTransport {
    fn attach(&self, node: &Node) -> Result<()> {
        let mut nodes = self.nodes.write().unwrap_or_else(|p| p.into_inner());
        if nodes.contains_key(node.id()) {
            return Err(HappenError::DuplicateNode {
                node: node.id().to_owned(),
            });
        }
        nodes.insert(Arc::from(node.id()), node.clone());
        Ok(())
    }

    fn broadcast(&self, event: Event) -> Result<()> {
        self.deliver_broadcast(&event)
    }

    fn send(&self, target: &str, event: Event, reply: ReplyTx, _deadline: tokio::time::Instant) {
        self.deliver_to(target, event, Responder::Local(reply));
    }

    fn interest(&self, _pattern: &Pattern) {
        // Every local node is consulted on each broadcast: nothing to set up.
    }

    fn flush(&self) -> BoxFuture<'static, Result<()>> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn settle(&self) -> BoxFuture<'static, ()> {
        Box::pin(std::future::ready(()))
    }

    fn close(&self) -> BoxFuture<'static, ()> {
        self.detach_all();
        Box::pin(std::future::ready(()))
    }

    fn abort(&self) {
        self.detach_all();
    }
}

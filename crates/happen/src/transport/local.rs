//! The in-process transport: events go straight from the sender to the
//! receiving node's scheduler, without serialization.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use super::{Responder, Transport};
use crate::error::{HappenError, Result};
use crate::event::Event;
use crate::node::Node;

/// Routes events between the nodes of one process.
#[derive(Default)]
pub(crate) struct LocalTransport {
    nodes: RwLock<HashMap<Arc<str>, Node>>,
}

impl LocalTransport {
    fn node(&self, id: &str) -> Option<Node> {
        self.nodes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
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
        let nodes = self.nodes.read().unwrap_or_else(|p| p.into_inner());
        let mut first_error = None;
        for node in nodes.values() {
            if node.core().handles(event.event_type()) {
                // A full queue at one receiver must not keep the event from
                // the others; the sender learns of it afterwards.
                if let Err(e) = node.core().deliver(event.clone(), None) {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn send(&self, target: &str, event: Event, responder: Responder) {
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

    fn detach_all(&self) {
        self.nodes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

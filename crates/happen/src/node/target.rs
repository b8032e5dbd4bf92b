//! What a send is addressed to: a node handle or a node id.

use std::sync::Arc;

use super::{Node, NodeCore};
use crate::id::Id;

/// Something that names the node an event is sent to: a [`Node`] or a node id.
pub trait Target {
    /// The id of the target node.
    fn target_id(&self) -> &str;

    /// The id as a shared [`Id`] (a node hands out its own without copying).
    fn target_shared_id(&self) -> Id {
        Id::from(self.target_id())
    }

    /// The node itself, when the target is a handle: lets an in-process
    /// send skip the lookup by id. Not meant to be implemented outside
    /// Happen.
    #[doc(hidden)]
    fn target_node(&self) -> Option<NodeRef<'_>> {
        None
    }
}

/// A borrowed node, as [`Target::target_node`] hands it out (opaque).
#[doc(hidden)]
#[derive(Clone, Copy)]
pub struct NodeRef<'a>(pub(crate) &'a Arc<NodeCore>);

impl<S> Target for Node<S> {
    fn target_id(&self) -> &str {
        self.id()
    }

    fn target_shared_id(&self) -> Id {
        self.core.id.clone()
    }

    fn target_node(&self) -> Option<NodeRef<'_>> {
        Some(NodeRef(&self.core))
    }
}

impl Target for str {
    fn target_id(&self) -> &str {
        self
    }
}

impl Target for Id {
    fn target_id(&self) -> &str {
        self
    }

    fn target_shared_id(&self) -> Id {
        self.clone()
    }
}

impl Target for String {
    fn target_id(&self) -> &str {
        self
    }
}

impl<T: Target + ?Sized> Target for &T {
    fn target_id(&self) -> &str {
        (**self).target_id()
    }

    fn target_shared_id(&self) -> Id {
        (**self).target_shared_id()
    }

    fn target_node(&self) -> Option<NodeRef<'_>> {
        (**self).target_node()
    }
}

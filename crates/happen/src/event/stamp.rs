//! Stamping: the causal context and origin an event gets when it is sent.

use std::sync::Arc;

use super::{Event, EventContext};
use crate::id::Id;
use crate::path::Path;

/// Fills in the causal context and origin of an event about to be sent by
/// `sender`, as a child of `parent` (the event being handled) when one is
/// given: causation, correlation and path follow from it, and so do the
/// origin's source and the application context, unless the event set its own.
pub(crate) fn stamp(event: &mut Event, sender: &Id, parent: Option<&Event>) {
    // One uniqueness check (an atomic operation) for the whole stamp.
    let data = Arc::make_mut(&mut event.0);
    let cx = &mut data.context;
    let causal = &mut cx.causal;
    // One clock read serves both the id and the timestamp.
    let (id, timestamp) = crate::uuid7::next();
    causal.id = id;
    // A new stamp makes a new event: a hash or a signature it arrived with
    // is not its own.
    causal.hash = None;
    cx.integrity = None;
    causal.sender = sender.clone();
    causal.timestamp = timestamp;
    if !causal.waiting.is_empty() {
        // Set again by the sender when this is a request (see `waiting`).
        causal.waiting = Path::default();
    }
    match parent {
        Some(parent) => {
            let p = parent.causal();
            causal.causation_id = Some(p.id.clone());
            if causal.correlation_id.is_empty() {
                causal.correlation_id = p.correlation_id.clone();
            }
            causal.path = p.path.then(sender.clone());
            inherit(cx, parent.context());
        }
        None => {
            causal.causation_id = None;
            if causal.correlation_id.is_empty() {
                causal.correlation_id = causal.id.clone();
            }
            causal.path = Path::root(sender.clone());
        }
    }
    cx.origin.node_id = sender.clone();
    // The members of a batch are events too: each gets its own id, the same
    // cause, and (unless set) the batch's correlation and source.
    if let Some(members) = &mut data.batch {
        let correlation = &data.context.causal.correlation_id;
        let origin = &data.context.origin;
        for member in members {
            let cx = member.context_mut();
            if cx.causal.correlation_id.is_empty() {
                cx.causal.correlation_id = correlation.clone();
            }
            if cx.origin.source_id.is_none() && cx.origin.source_type.is_none() {
                cx.origin.source_id.clone_from(&origin.source_id);
                cx.origin.source_type.clone_from(&origin.source_type);
            }
            stamp(member, sender, parent);
        }
    }
}

/// Gives a stamped event the id derived from its cause, its sender and its
/// position among the events the sender's flow (the `flow`-th handler the
/// cause started there) emitted (see [`crate::durable`]).
pub(crate) fn derive_id(event: &mut Event, cause: &Event, sender: &Id, flow: u32, seq: u32) {
    let id = crate::uuid7::derived(cause.id(), sender, flow, seq, cause.causal().timestamp);
    event.context_mut().causal.id = id;
}

/// The origin's source and the application fields pass from the handled
/// event to the events its flow emits; what the child set itself wins.
fn inherit(child: &mut EventContext, parent: &EventContext) {
    if child.origin.source_id.is_none() && child.origin.source_type.is_none() {
        child.origin.source_id.clone_from(&parent.origin.source_id);
        child
            .origin
            .source_type
            .clone_from(&parent.origin.source_type);
    }
    for (key, value) in &parent.extra {
        if !child.extra.contains_key(key) {
            child.extra.insert(key.clone(), value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn root_event_correlates_to_itself() {
        let mut e = Event::new("a", json!(null));
        stamp(&mut e, &Id::from("n1"), None);
        assert_eq!(e.causal().correlation_id, e.id());
        assert_eq!(e.causal().causation_id, None);
        assert_eq!(e.causal().path, vec!["n1"]);
        assert_eq!(e.origin().node_id, "n1");
    }

    #[test]
    fn user_correlation_id_is_kept() {
        let mut e = Event::new("a", json!(null)).with_correlation_id("order-123");
        stamp(&mut e, &Id::from("n1"), None);
        assert_eq!(e.causal().correlation_id, "order-123");
    }

    #[test]
    fn child_event_inherits_and_extends() {
        let mut root = Event::new("a", json!(1));
        stamp(&mut root, &Id::from("n1"), None);
        let mut child = Event::new("b", json!(2));
        stamp(&mut child, &Id::from("n2"), Some(&root));
        assert_eq!(child.causal().causation_id.as_deref(), Some(root.id()));
        assert_eq!(child.causal().correlation_id, root.causal().correlation_id);
        assert_eq!(
            child.causal().path,
            vec!["n1".to_string(), "n2".to_string()]
        );
    }

    #[test]
    fn origin_source_and_application_context_are_inherited_unless_set() {
        let mut root = Event::new("a", json!(1))
            .with_source("user-42", "user")
            .with_context("tenant", json!("t1"))
            .with_context("trace", json!("x"));
        stamp(&mut root, &Id::from("n1"), None);
        let mut child = Event::new("b", json!(2)).with_context("trace", json!("y"));
        stamp(&mut child, &Id::from("n2"), Some(&root));
        assert_eq!(child.origin().source_id.as_deref(), Some("user-42"));
        assert_eq!(child.origin().source_type.as_deref(), Some("user"));
        assert_eq!(child.origin().node_id, "n2");
        assert_eq!(child.context_value("tenant"), Some(&json!("t1")));
        assert_eq!(
            child.context_value("trace"),
            Some(&json!("y")),
            "own value wins"
        );
        let mut own = Event::new("c", json!(3)).with_source("svc-1", "service");
        stamp(&mut own, &Id::from("n3"), Some(&child));
        assert_eq!(own.origin().source_id.as_deref(), Some("svc-1"));
        assert_eq!(own.origin().source_type.as_deref(), Some("service"));
    }
}

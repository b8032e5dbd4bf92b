//! What arrives on this process's subscriptions: events for its nodes,
//! broadcasts through its filters, and messages on its inbox.

use std::sync::Arc;

use super::durable::keys::KeyRegistry;
use super::{CLOSED, DRAINING, Shared, envelope, key_lookups, lock, requests, streams, subjects};
use crate::delivery::{Arrival, Responder};
use crate::error::HappenError;
use crate::event::Event;
use streams::NatsReply;

/// An event sent to one of this process's nodes.
pub(super) fn on_direct(shared: &Arc<Shared>, message: async_nats::Message) {
    let prefix_len = shared.prefix.len() + ".node.".len();
    if super::zero::is_zero(&message.payload) {
        return super::zero::on_direct(shared, prefix_len, message);
    }
    let Some(target) = message.subject.get(prefix_len..).map(str::to_owned) else {
        return;
    };
    let reply_subject = message.reply.as_ref().map(|s| s.to_string());
    if let Some(reply) = reply_subject
        .as_deref()
        .filter(|r| !subjects::answerable(r))
    {
        let event_id = envelope::open(&message).map(|o| o.event.id().to_owned());
        let error = subjects::not_answerable(reply, &event_id.unwrap_or_default());
        return shared.local.rejected(&message.subject, &error);
    }
    match envelope::open(&message) {
        Ok(opened) => {
            let (event, then) = (opened.event.clone(), shared.clone());
            key_lookups::after_key(shared, &event, move || {
                direct(&then, target, reply_subject, opened);
            });
        }
        Err(error) => {
            shared.local.rejected(&message.subject, &error);
            if reply_subject.is_some() {
                let node = message.subject.get(prefix_len..).unwrap_or_default();
                Responder::remote(NatsReply::new(shared.clone(), reply_subject, node, None))
                    .reply(Err(error));
            }
        }
    }
}

/// When `event` is signed by a sender whose key this process does not know
/// yet: where to look it up.
pub(super) fn needs_key(shared: &Shared, event: &Event) -> Option<Arc<KeyRegistry>> {
    event.context().integrity.as_ref()?;
    key_lookups::registry_for(shared, &event.causal().sender)
}

/// Hands a decoded direct event to its node.
fn direct(
    shared: &Arc<Shared>,
    target: String,
    reply_subject: Option<String>,
    opened: envelope::Opened,
) {
    let responder = opened.wants_reply.then(|| {
        let request = Some(&opened.event.causal().id);
        Responder::remote(NatsReply::new(
            shared.clone(),
            reply_subject.clone(),
            &target,
            request,
        ))
    });
    // While shutting down, take what this runtime sent before the
    // shutdown began and what running flows caused (as the
    // in-process runtime does); new work from elsewhere is refused.
    let phase = shared.phase();
    let ours = reply_subject
        .as_deref()
        .is_some_and(|r| r.starts_with(shared.inbox.as_str()));
    let new_work = opened.event.causal().causation_id.is_none() && !ours;
    if phase == CLOSED || (phase == DRAINING && new_work) {
        if let Some(responder) = responder {
            responder.reply(Err(HappenError::Shutdown));
        }
        return;
    }
    // A refusal has gone to the responder; a tell's sender cannot
    // be told, so it is reported here.
    let event = (!opened.wants_reply).then(|| opened.event.clone());
    if let (Err(error), Some(event)) = (
        shared
            .local
            .deliver_to(&target, opened.event, responder, Arrival::Remote),
        event,
    ) {
        shared.local.refused(&target, &event, &error);
    }
}

/// A broadcast that came through one of this process's filters.
pub(super) fn on_broadcast(shared: &Arc<Shared>, message: async_nats::Message) {
    match envelope::open(&message) {
        Ok(opened) => {
            // Overlapping filters deliver a message once per filter.
            if !shared
                .filters
                .take(&message.subject, &opened.event.causal().id)
            {
                return;
            }
            // Refusals are logged, counted and reported by the local table.
            let then = shared.clone();
            key_lookups::after_key(shared, &opened.event.clone(), move || {
                let _ = then.local.deliver_broadcast(&opened.event, Arrival::Remote);
            });
        }
        Err(error) => shared.local.rejected(&message.subject, &error),
    }
}

/// A message on this runtime's inbox: an answer, a credit, a round trip, or
/// the server's report that a tell found no node.
pub(super) fn on_inbox(shared: &Arc<Shared>, message: async_nats::Message) {
    let Some(rest) = message
        .subject
        .strip_prefix(shared.inbox.as_str())
        .and_then(|r| r.strip_prefix('.'))
    else {
        return;
    };
    if let Some(tell) = rest.strip_prefix("t.") {
        if message.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
            let mut parts = tell.splitn(3, '.');
            let (node, event_id, event_type) = (
                parts.next().unwrap_or_default(),
                parts.next().unwrap_or_default(),
                parts.next().unwrap_or_default(),
            );
            if shared.requests.tells.refused(shared, &message.subject) {
                return; // offered again: its receiver may be resubscribing
            }
            shared.local.undelivered(
                node,
                event_type,
                event_id,
                "no instance of the node was subscribed when the tell reached the server",
            );
        }
        return;
    }
    if let Some(credit) = rest.strip_prefix('c') {
        return streams::on_credit(shared, credit, &message);
    }
    if let Some(asking) = rest.strip_prefix('l') {
        return requests::producer_answered(shared, asking, message.status, &message.payload);
    }
    if let Some(probe) = rest.strip_prefix('s') {
        return streams::on_probe(shared, probe, message.reply.as_deref());
    }
    if let Some(ping) = rest.strip_prefix('p') {
        if let Some(back) = ping
            .parse::<u64>()
            .ok()
            .and_then(|id| lock(&shared.pings).remove(&id))
        {
            let _ = back.send(());
        }
        return;
    }
    if let Ok(token) = rest.parse::<u64>() {
        requests::on_reply(shared, token, message);
    }
}

/// A probe for one of this process's signing nodes, naming a public key:
/// answered when the node holds that key here, so that another process
/// does not take its record over.
pub(super) fn on_identity(shared: &Arc<Shared>, message: async_nats::Message) {
    let Some(reply) = message.reply.clone() else {
        return;
    };
    if !subjects::answerable(&reply) {
        // The key would be published there under this process's
        // credentials (a review wrote it into the node's state record).
        let error = subjects::not_answerable(&reply, "");
        return shared.local.rejected(&message.subject, &error);
    }
    let prefix_len = shared.prefix.len() + ".identity.".len();
    let Some(node) = message.subject.get(prefix_len..) else {
        return;
    };
    let Some(key) = lock(&shared.own_keys).get(node).map(|(key, _)| key.clone()) else {
        return;
    };
    if key.as_bytes() != message.payload.as_ref() {
        return; // not the key asked about: its holder, if alive, answers
    }
    let _ = shared.commands.publish(super::commands::Publish {
        subject: reply,
        reply: None,
        headers: None,
        payload: bytes::Bytes::from(key),
        token: None,
    });
}

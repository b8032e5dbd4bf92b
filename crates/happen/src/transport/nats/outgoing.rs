//! What leaves this process: broadcasts, requests and tells, to the server,
//! to the durable stream, or (co-located) straight to a node here.

use std::sync::Arc;

use super::commands::Publish;
use super::{Shared, envelope};
use crate::delivery::{self, Arrival, Delivery, ReplyTx, Responder};
use crate::error::Result;
use crate::event::Event;
use crate::receipt::Receipt;
use crate::stream::Outcome;
use crate::transport::Transport;

/// Publishes a broadcast (stored too when a durable node wants it).
pub(super) fn broadcast(shared: &Arc<Shared>, event: Event) -> Result<Receipt> {
    let sealed = envelope::seal(&event, true)?;
    sealed.check_size(shared.max_payload())?;
    let mut receipt = Receipt::kept();
    if let Some(durable) = &shared.durable
        && durable.wants_broadcast(event.event_type())
    {
        receipt = durable.broadcast(&event, sealed.payload.clone())?;
    }
    // With co-location the server's copy is for the other processes
    // only; a full outgoing queue is reported before anything is
    // delivered here.
    shared.commands.publish(Publish {
        subject: shared.subjects.broadcast(event.event_type()),
        reply: None,
        headers: sealed.headers,
        payload: sealed.payload,
        token: None,
    })?;
    if shared.co_located {
        shared.local.deliver_broadcast(&event, Arrival::Local)?;
    }
    Ok(receipt)
}

/// Sends a request to `target`, whose outcome goes to `reply`.
pub(super) fn send(
    shared: &Arc<Shared>,
    target: &str,
    event: Event,
    reply: ReplyTx,
    deadline: crate::response::Deadline,
) -> Receipt {
    let stored = shared.durable.as_ref().filter(|d| d.is_target(target));
    if stored.is_none()
        && shared.co_located
        && let Some(node) = shared.local.node(target)
    {
        let responder = Some(Responder::Local(reply));
        let delivered =
            delivery::deliver(node.core(), Delivery::new(event, responder, Arrival::Local));
        return delivered.map_or_else(Receipt::failed, |()| Receipt::kept());
    }
    let sealed = match envelope::seal(&event, true)
        .and_then(|s| s.check_size(shared.max_payload()).map(|()| s))
    {
        Ok(sealed) => sealed,
        Err(error) => {
            let _ = reply.send(Outcome::Done(Err(error.clone())));
            return Receipt::failed(error);
        }
    };
    let subject = shared.subjects.direct(target);
    if let Some(durable) = stored {
        let publish = shared.requests.register(
            &shared.inbox,
            subject,
            target,
            &event,
            bytes::Bytes::new(),
            reply,
            deadline.clone(),
            verifying(shared, &event),
        );
        let (Some(token), Some(reply_to)) = (publish.token, publish.reply) else {
            return Receipt::kept(); // not reached: a registered request has both
        };
        durable.answers.follow(shared);
        return durable
            .request(target, &event, sealed.payload, token, &reply_to, deadline)
            .unwrap_or_else(|error| {
                shared.requests.fail(token, error.clone());
                Receipt::failed(error)
            });
    }
    let publish = shared.requests.register(
        &shared.inbox,
        subject,
        target,
        &event,
        sealed.payload,
        reply,
        deadline,
        verifying(shared, &event),
    );
    let token = publish.token;
    match shared.commands.publish(publish) {
        Ok(()) => Receipt::kept(),
        Err(error) => {
            if let Some(token) = token {
                shared.requests.fail(token, error.clone());
            }
            Receipt::failed(error)
        }
    }
}

/// Sends a tell to `target`.
pub(super) fn tell(shared: &Arc<Shared>, target: &str, event: Event) -> Result<Receipt> {
    if let Some(durable) = shared.durable.as_ref().filter(|d| d.is_target(target)) {
        let sealed = envelope::seal(&event, false)?;
        sealed.check_size(shared.max_payload())?;
        return durable.tell(target, event, sealed.payload);
    }
    if shared.co_located
        && let Some(node) = shared.local.node(target)
    {
        delivery::deliver(node.core(), Delivery::new(event, None, Arrival::Local))?;
        return Ok(Receipt::kept());
    }
    let sealed = envelope::seal(&event, false)?;
    sealed.check_size(shared.max_payload())?;
    let publish = Publish {
        subject: shared.subjects.direct(target),
        // Only for the server's "no responders" (which names the tell):
        // the receiver sees the header and does not answer.
        reply: Some(
            format!(
                "{}.t.{target}.{}.{}",
                shared.inbox,
                event.id(),
                event.event_type()
            )
            .into(),
        ),
        headers: sealed.headers,
        payload: sealed.payload,
        token: None,
    };
    // Kept only while the connection is unsettled (an atomic load otherwise).
    let kept = shared.requests.tells.keep(shared, &publish);
    if let Err(error) = shared.commands.publish(publish) {
        if let Some(reply) = kept {
            shared.requests.tells.forget(&reply);
        }
        return Err(error);
    }
    Ok(Receipt::kept())
}

/// The requesting node (the request's sender), when it requires signed
/// events: every reply is then checked (see `requests::checks`).
fn verifying(shared: &Shared, event: &Event) -> Option<crate::id::Id> {
    let requester = &event.causal().sender;
    shared
        .local
        .node(requester)
        .filter(|node| node.core().limits().require_signed)
        .map(|_| requester.clone())
}

//! Answering a request's *copy* to an exactly-once node: the same request
//! stored again under `<event id>@<node>+<inbox>` (a flow that asked,
//! failed and runs again asks again; see `publish`). A copy never runs: it
//! gets the first delivery's answer (kept in this process, or kept for the
//! first requester in the answers bucket), `AlreadyTaken` when no answer
//! is kept, or a later try while the first delivery still runs elsewhere.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::AckKind;

use super::consume::ack;
use super::{Durable, REPLY_TO};
use crate::config::DeliveryConfig;
use crate::delivery::Responder;
use crate::error::HappenError;
use crate::event::Event;
use crate::node::Node;
use crate::store::jetstream::escape_key;
use crate::transport::nats::commands::Publish;
use crate::transport::nats::{Shared, subjects};

/// Answers a request's copy to an exactly-once node ([`super::copy_id`])
/// and settles its message; the copy never runs. With the node's
/// acceptance first: a copy must not fetch an answer its sender could not
/// have asked for.
#[allow(clippy::too_many_arguments)]
pub(super) async fn answer(
    durable: &Arc<Durable>,
    shared: &Arc<Shared>,
    node: &Node,
    message: async_nats::Message,
    event: Event,
    attempt: u32,
    config: &DeliveryConfig,
    responder: Responder,
) {
    if let Err(error) = node.core().accepts(&event, false) {
        responder.reply(Err(error));
        ack(shared, &message, AckKind::Term);
        return;
    }
    // Answered here (kept, or when it is given) ...
    let Err(responder) = node.core().seen.answers().copy_if_known(&event, responder) else {
        ack(shared, &message, AckKind::Ack);
        return;
    };
    let key = format!("{}.{}", escape_key(node.id()), escape_key(event.id()));
    let record = durable.done.get(key).await.ok().flatten();
    // ... completed elsewhere (another instance, or before a restart): the
    // record names where the first delivery was answered, and the answer
    // kept there for its requester (see `answers`) is this copy's too.
    let first = record.as_deref().and_then(|r| std::str::from_utf8(r).ok());
    let copy_reply = message.headers.as_ref().and_then(|h| h.get(REPLY_TO));
    if let (Some(first), Some(reply)) = (first.filter(|f| subjects::answerable(f)), copy_reply)
        && let Some((payload, headers)) = durable.answers.kept(first).await
    {
        let publish = Publish {
            subject: reply.as_str().to_owned().into(),
            reply: None,
            headers,
            payload,
            token: None,
        };
        if let Err(error) = Shared::answer(shared, publish) {
            tracing::warn!(%error, "a request copy's answer not published");
        }
        ack(shared, &message, AckKind::Ack);
        return;
    }
    // A request's record with no answer kept yet: the answer may still be
    // on its way into the bucket (it is kept by a task of its own), so the
    // copy is asked again, as below, until its attempts are used up.
    let answer_due = first.is_some_and(subjects::answerable);
    if (record.is_some() && !answer_due) || attempt >= config.max_attempts {
        // No answer kept (a tell's record, an answer too large or past the
        // time answers are kept): the copy is told it was taken.
        responder.reply(Err(HappenError::AlreadyTaken {
            node: node.id().to_owned(),
            event_id: event.id().to_owned(),
        }));
        ack(shared, &message, AckKind::Term);
        return;
    }
    // ... or still running elsewhere: asked again once it may be done.
    let delay = crate::durable::jittered_delay(config, attempt).max(Duration::from_millis(200));
    ack(shared, &message, AckKind::Nak(Some(delay)));
}

//! Zero events over NATS: the flat buffer is the message payload, as it is
//! (no MessagePack, no header), followed by its BLAKE3 hash (32 bytes), as
//! an ordinary event's hash ends its message; told apart from the ordinary
//! wire form by its first bytes (`HZ`; an ordinary message starts with its
//! version byte). A message whose hash is not its buffer's is refused as an
//! integrity failure before anything reads it.
//!
//! A request goes out with a reply subject (the client's request inbox);
//! the answer is a zero event too: the handler's reply, a JSON value as a
//! `happen.value` event, or an error as a `happen.error` event carrying the
//! error as JSON text. Every received buffer passes the same check as one
//! made here (`ZeroEvent::from_bytes`): hostile bytes are an error.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::commands::Publish;
use super::{CLOSED, Shared, subjects};
use crate::delivery::Arrival;
use crate::error::{HappenError, Result};
use crate::transport::Transport;
use crate::zero::{ReplyTo, ZeroAnswer, ZeroEvent, ZeroWriter};

/// The type of an answer that was a JSON value.
const VALUE: &str = "happen.value";
/// The type of an answer that was an error.
const ERROR: &str = "happen.error";

/// The message for `event`: its bytes, then their hash.
fn sealed(event: &ZeroEvent) -> Bytes {
    let bytes = event.as_bytes();
    let mut payload = Vec::with_capacity(bytes.len() + 32);
    payload.extend_from_slice(bytes);
    payload.extend_from_slice(blake3::hash(bytes).as_bytes());
    Bytes::from(payload)
}

/// The zero event in a received message, its hash checked.
fn opened(payload: &[u8]) -> Result<ZeroEvent> {
    let Some(split) = payload.len().checked_sub(32) else {
        return Err(crate::zero::ZeroError::Truncated {
            needed: 32,
            len: payload.len(),
        }
        .into());
    };
    let (bytes, hash) = payload.split_at(split);
    if blake3::hash(bytes).as_bytes() != hash {
        // The id, if the header is readable, names what was forged.
        let event_id = bytes
            .get(8..24)
            .and_then(|id| <[u8; 16]>::try_from(id).ok())
            .map(|id| crate::zero::ZeroId(id).to_string())
            .unwrap_or_default();
        return Err(HappenError::Integrity {
            event_id,
            reason: "the zero event's bytes do not match its hash".into(),
        });
    }
    Ok(ZeroEvent::from_bytes(bytes)?)
}

/// Whether a received payload is a zero event rather than an ordinary one.
pub(super) fn is_zero(payload: &[u8]) -> bool {
    payload.starts_with(b"HZ")
}

/// Sends a zero event to `target`: handed over in this process when the
/// node is here (co-located), else published.
pub(super) fn send(
    shared: &Arc<Shared>,
    target: &str,
    event: ZeroEvent,
    reply: ReplyTo,
    timeout: Duration,
) -> Result<()> {
    if shared.co_located
        && let Some(node) = shared.local.node(target)
    {
        return crate::zero::deliver(node.core(), event, reply, Arrival::Local);
    }
    let size = event.as_bytes().len() + 32;
    if size > shared.max_payload() {
        let error = HappenError::PayloadTooLarge {
            size,
            limit: shared.max_payload(),
        };
        reply.refuse(error.clone());
        return Err(error);
    }
    let payload = sealed(&event);
    drop(event);
    let subject = subjects::direct_subject(&shared.prefix, target);
    let ReplyTo::Zero(tx) = reply else {
        return shared.commands.publish(Publish {
            subject: subject.into(),
            reply: None,
            headers: None,
            payload,
            token: None,
        });
    };
    let client = shared.client.clone();
    let target = target.to_owned();
    tokio::spawn(async move {
        let request = async_nats::Request::new()
            .payload(payload)
            .timeout(Some(timeout));
        let answer = match client.send_request(subject, request).await {
            Ok(message) => open_answer(&message.payload),
            Err(error) => Err(match error.kind() {
                async_nats::RequestErrorKind::NoResponders => {
                    HappenError::UnknownNode { node: target }
                }
                async_nats::RequestErrorKind::TimedOut => HappenError::Timeout {
                    node: target,
                    event_type: "(zero event)".into(),
                    after_ms: timeout.as_millis() as u64,
                },
                _ => HappenError::transport("zero request failed", error),
            }),
        };
        let _ = tx.send(answer);
    });
    Ok(())
}

/// The answer a requester receives.
fn open_answer(payload: &[u8]) -> Result<ZeroAnswer> {
    let event = opened(payload)?;
    match event.event_type() {
        ERROR => {
            let text = event.get::<&str>("error")?;
            Err(
                serde_json::from_str(text).unwrap_or_else(|_| HappenError::Codec {
                    message: format!("an unreadable error answered a zero request: {text}"),
                    source: None,
                }),
            )
        }
        VALUE => Ok(ZeroAnswer::Value(event.payload())),
        _ => Ok(ZeroAnswer::Zero(event)),
    }
}

/// The bytes that answer a zero request from elsewhere.
fn seal_answer(node: &str, answer: Result<ZeroAnswer>) -> Result<Bytes> {
    let event = match answer {
        Ok(ZeroAnswer::Zero(event)) => event,
        Ok(ZeroAnswer::Value(value)) => ZeroWriter::from_value(VALUE, &value).finish(node)?,
        Err(error) => {
            let text = serde_json::to_string(&error).unwrap_or_else(|_| error.to_string());
            let mut writer = ZeroWriter::new(ERROR);
            writer.str("error", &text);
            writer.finish(node)?
        }
    };
    Ok(sealed(&event))
}

/// A zero event sent to one of this process's nodes.
pub(super) fn on_direct(shared: &Arc<Shared>, prefix_len: usize, message: async_nats::Message) {
    let Some(target) = message.subject.get(prefix_len..) else {
        return;
    };
    let reply = match message.reply.clone() {
        None => ReplyTo::Nobody,
        Some(subject) => {
            let shared = shared.clone();
            let node = target.to_owned();
            ReplyTo::Wire(Box::new(move |answer| {
                let payload = match seal_answer(&node, answer) {
                    Ok(payload) => payload,
                    Err(error) => {
                        tracing::warn!(%node, %error, "cannot answer a zero request");
                        return;
                    }
                };
                let _ = shared.commands.publish(Publish {
                    subject,
                    reply: None,
                    headers: None,
                    payload,
                    token: None,
                });
            }))
        }
    };
    let event = match opened(&message.payload) {
        Ok(event) => event,
        Err(error) => {
            shared.local.rejected(&message.subject, &error);
            return reply.refuse(error);
        }
    };
    if shared.phase() == CLOSED {
        return reply.refuse(HappenError::Shutdown);
    }
    match shared.local.lookup(target) {
        Some(node) => {
            let _ = crate::zero::deliver(node.core(), event, reply, Arrival::Remote);
        }
        None => reply.refuse(HappenError::UnknownNode {
            node: target.to_owned(),
        }),
    }
}

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
use super::{CLOSED, Shared};
use crate::delivery::Arrival;
use crate::error::{HappenError, Result};
use crate::transport::Transport;
use crate::zero::{ReplyTo, ZeroAnswer, ZeroEvent, ZeroWriter};

use crate::zero::{ERROR_ANSWER as ERROR, VALUE_ANSWER as VALUE};

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
    let event = ZeroEvent::from_bytes(bytes)?;
    if event.sender() == crate::system::SYSTEM_SENDER {
        // As for an ordinary event (`wire::decode_event`): forged.
        return Err(HappenError::Integrity {
            event_id: event.id().to_string(),
            reason: "it claims the runtime's own sender, whose events never leave their process"
                .into(),
        });
    }
    Ok(event)
}

/// Whether a received payload is a zero event rather than an ordinary one.
pub(super) fn is_zero(payload: &[u8]) -> bool {
    payload.starts_with(b"HZ")
}

/// Sends a zero event to `target`: handed over in this process when the
/// node is here (co-located), else published; refused for a durable node.
pub(super) fn send(
    shared: &Arc<Shared>,
    target: &str,
    event: ZeroEvent,
    reply: ReplyTo,
    timeout: Duration,
) -> Result<()> {
    if shared.durable.as_ref().is_some_and(|d| d.is_target(target)) {
        // Its events are stored and settled through the stream; a zero
        // event goes around it and would be handled at most once.
        let error = crate::zero::not_durable(target);
        reply.refuse(error.clone());
        return Err(error);
    }
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
    let ReplyTo::Zero(tx) = reply else {
        return shared.commands.publish(Publish {
            subject: shared.subjects.direct(target),
            reply: None,
            headers: None,
            payload,
            token: None,
        });
    };
    let subject = shared.subjects.direct(target);
    let client = shared.client.clone();
    let target = target.to_owned();
    // Handed to the client itself (it awaits the answer there), after what
    // the queue holds: a request overtook the zero tells sent before it.
    let queued = shared.commands.after_queued();
    tokio::spawn(async move {
        if let Some(queued) = queued {
            let _ = queued.await;
        }
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
                    after_ms: crate::error::millis(timeout),
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
    if let Some(reply) = message
        .reply
        .as_deref()
        .filter(|r| !super::subjects::answerable(r))
    {
        let event_id = opened(&message.payload).map(|e| e.id().to_string());
        let error = super::subjects::not_answerable(reply, &event_id.unwrap_or_default());
        return shared.local.rejected(&message.subject, &error);
    }
    let reply = match message.reply.clone() {
        None => ReplyTo::Nobody,
        Some(subject) => {
            let shared = shared.clone();
            let node = target.to_owned();
            ReplyTo::Wire(Box::new(move |answer| {
                // An answer that cannot travel (too deep to encode, larger
                // than the server takes) is answered with why, not dropped:
                // the requester would wait out its timeout.
                let payload = seal_answer(&node, answer)
                    .and_then(|payload| {
                        let limit = shared.max_payload();
                        match payload.len() {
                            size if size > limit => {
                                Err(HappenError::PayloadTooLarge { size, limit })
                            }
                            _ => Ok(payload),
                        }
                    })
                    .or_else(|error| seal_answer(&node, Err(error)));
                let payload = match payload {
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
    if shared.durable.as_ref().is_some_and(|d| d.is_target(target)) {
        // Refused here too, not only by senders that know the node is
        // durable (a raw client, a runtime without JetStream).
        return reply.refuse(crate::zero::not_durable(target));
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

/// Hostile zero messages, many times (as `fuzz.rs` does for ordinary
/// events): arbitrary bytes after the magic, and genuine messages with
/// bytes flipped, cut, repeated or inserted (some hashed again, as a forger
/// would, so that only the layout check stands). Nothing may panic, and a
/// message accepted with its original hash must be the genuine one.
#[cfg(test)]
mod fuzz {
    use std::panic::{AssertUnwindSafe, catch_unwind};

    use super::*;
    use crate::transport::nats::fuzz::{Rng, mutate};

    fn genuine() -> Vec<Vec<u8>> {
        let mut messages = Vec::new();
        for i in 0..4u8 {
            let mut w = ZeroWriter::new("reading");
            w.u64("seq", u64::from(i))
                .f64("celsius", 21.5)
                .str("sensor", "s-17")
                .bytes("records", &[i; 32])
                .bool("ok", i % 2 == 0);
            let event = w.finish("gateway").expect("a zero event");
            messages.push(sealed(&event).to_vec());
        }
        messages
    }

    #[test]
    fn hostile_zero_messages_never_panic_and_never_pass_as_another() {
        let cases: u64 = std::env::var("HAPPEN_FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20_000);
        let genuine = genuine();
        let mut rng = Rng(0x2e20_5eed_0bad_f00d);
        let (mut panics, mut accepted, mut by_hash, mut by_layout) = (0u64, 0u64, 0u64, 0u64);
        let mut changed_but_accepted = 0u64;
        for case in 0..cases {
            let (original, input) = if case % 4 == 0 {
                let mut bytes = b"HZ".to_vec();
                bytes.extend((0..rng.below(300)).map(|_| rng.next() as u8));
                (None, bytes)
            } else if case % 4 == 1 {
                // A forger who hashes again: only the layout check stands.
                let message = &genuine[rng.below(genuine.len())];
                let buffer = mutate(&mut rng, &message[..message.len() - 32]);
                let mut forged = buffer.clone();
                forged.extend_from_slice(blake3::hash(&buffer).as_bytes());
                (Some(message), forged)
            } else {
                let message = &genuine[rng.below(genuine.len())];
                (Some(message), mutate(&mut rng, message))
            };
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                let opened = opened(&input);
                if let Ok(event) = &opened {
                    let _ = (event.payload(), event.to_event(), event.path().count());
                }
                opened.is_ok()
            }));
            match outcome {
                Err(_) => panics += 1,
                Ok(true) => {
                    accepted += 1;
                    // A re-hashed forgery that passes the layout check is a
                    // well-formed event: what the hash cannot stop. Any
                    // other change that passes is a failure.
                    if case % 4 != 1 && original.is_some_and(|o| *o != input) {
                        changed_but_accepted += 1;
                    }
                }
                Ok(false)
                    if opened(&input)
                        .is_err_and(|e| matches!(e, HappenError::Integrity { .. })) =>
                {
                    by_hash += 1
                }
                Ok(false) => by_layout += 1,
            }
        }
        println!(
            "fuzz zero: inputs={cases} panics={panics} accepted={accepted} rejected-by-hash={by_hash} rejected-by-layout={by_layout} changed-but-accepted={changed_but_accepted}"
        );
        assert_eq!(panics, 0);
        assert_eq!(changed_but_accepted, 0);
        assert!(by_hash > 0 && by_layout > 0, "the inputs reach both checks");
    }
}

//! The envelope: the one place where an event becomes NATS message bytes and
//! message bytes become an event again.
//!
//! Everything the transport receives from the network passes through
//! [`open`] before it reaches a node, and everything it publishes is made by
//! [`seal`]. This is the seam for integrity: checks on the bytes and their
//! headers (an event hash, a signature) belong in `open`, before the body is
//! decoded; what they need travels as headers set by `seal`.
//!
//! Today an envelope is the MessagePack event (see [`super::wire`]) and, for
//! a [`tell`](crate::Node::tell), the header `Happen-Reply: none`, which tells
//! the receiver that nobody waits for an answer.

use async_nats::HeaderMap;
use bytes::Bytes;

use super::wire;
use crate::error::{HappenError, Result};
use crate::event::Event;

/// The header that marks a message whose sender wants no answer.
const REPLY_HEADER: &str = "Happen-Reply";
const NO_REPLY: &str = "none";

/// An event ready to publish.
pub(super) struct Envelope {
    pub(super) payload: Bytes,
    pub(super) headers: Option<HeaderMap>,
}

impl Envelope {
    /// Fails with [`HappenError::PayloadTooLarge`] if the server would
    /// refuse the message.
    pub(super) fn check_size(&self, limit: usize) -> Result<()> {
        check_size(&self.payload, self.headers.as_ref(), limit)
    }
}

/// Fails with [`HappenError::PayloadTooLarge`] if the server would refuse
/// a message of `payload` and `headers`: it counts both against its
/// `max_payload` (the header block as `NATS/1.0\r\n`, `key: value\r\n`
/// each, `\r\n`).
pub(super) fn check_size(payload: &[u8], headers: Option<&HeaderMap>, limit: usize) -> Result<()> {
    let headers = headers.map_or(0, |headers| {
        let mut len = "NATS/1.0\r\n\r\n".len();
        for (key, values) in headers.iter() {
            for value in values {
                len += AsRef::<str>::as_ref(key).len() + ": \r\n".len() + value.as_str().len();
            }
        }
        len
    });
    let size = payload.len() + headers;
    if size > limit {
        return Err(HappenError::PayloadTooLarge { size, limit });
    }
    Ok(())
}

/// The headers that mark a message as a tell (no answer wanted).
pub(super) fn tell_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(REPLY_HEADER, NO_REPLY);
    headers
}

/// Seals `event` for the wire; `wants_reply: false` marks a tell.
pub(super) fn seal(event: &Event, wants_reply: bool) -> Result<Envelope> {
    let payload = Bytes::from(wire::encode_event(event)?);
    let headers = (!wants_reply).then(tell_headers);
    Ok(Envelope { payload, headers })
}

/// What arrived: the event, and whether its sender waits for an answer.
pub(super) struct Opened {
    pub(super) event: Event,
    pub(super) wants_reply: bool,
}

/// Opens a received message: checks, then decodes. Hostile bytes give an
/// error, never a panic.
pub(super) fn open(message: &async_nats::Message) -> Result<Opened> {
    let no_reply = message
        .headers
        .as_ref()
        .and_then(|h| h.get(REPLY_HEADER))
        .is_some_and(|v| v.as_str() == NO_REPLY);
    let wants_reply = message.reply.is_some() && !no_reply;
    let event = wire::decode_event(&message.payload)?;
    Ok(Opened { event, wants_reply })
}

/// Decodes a reply's bytes (the requester's side).
pub(super) fn open_reply(payload: &[u8]) -> Result<wire::Reply> {
    wire::decode_reply(payload)
}

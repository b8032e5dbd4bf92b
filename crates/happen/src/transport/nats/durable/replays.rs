//! Telling a stored event's delivery from a replay of one that already ran.
//!
//! Anyone who may publish to the event stream can store the bytes of an
//! event captured on the wire a second time. An exactly-once node must not
//! run it again, also after its process restarted (the in-memory record of
//! what it took is gone) and when another instance of the node took the
//! first copy. Two checks close that, without a read of the completion
//! records for each fresh event:
//!
//! - A stored event's message id must be its event id
//!   ([`stored_as_itself`]), as every Happen publisher sets it. The server
//!   then drops a second copy stored within its duplicate window, so a
//!   replay under another message id is refused here, and one under the
//!   right id is not stored at all while the window lasts.
//! - An event that may be older than that window ([`may_have_run_before`],
//!   by its own timestamp, which its hash and signature cover) is looked up
//!   in the completion records even on its first delivery; they are kept
//!   for twice the window.
//!
//! A replay after the completion records expire runs again: choose the
//! duplicate window (`DeliveryConfig::dedup_window`) to cover it.

use std::time::Duration;

use crate::error::HappenError;
use crate::event::Event;

/// The header JetStream de-duplicates stored messages by.
pub(super) const MESSAGE_ID: &str = "Nats-Msg-Id";

/// Whether `message` was stored under its event's id, as Happen stores
/// every event to a durable node; an error naming the event otherwise.
pub(super) fn stored_as_itself(
    message: &async_nats::Message,
    event: &Event,
) -> Result<(), HappenError> {
    let stored_as = (message.headers.as_ref())
        .and_then(|h| h.get(MESSAGE_ID))
        .map(|v| v.as_str());
    if stored_as == Some(event.id()) {
        return Ok(());
    }
    Err(HappenError::Integrity {
        event_id: event.id().to_owned(),
        reason: match stored_as {
            Some(other) => format!(
                "stored under the message id {other:?}, not its event id: a copy stored again"
            ),
            None => "stored without a message id: a copy stored again".to_owned(),
        },
    })
}

/// Whether an event stamped at `stamped` (ms since the Unix epoch) may have
/// been stored before the server's duplicate `window`, as seen at `now`:
/// older than half the window, or more than half of it in the future.
/// The other half allows for the sender's clock running ahead of the
/// server's. Such an event's first delivery may be a copy of one that ran.
pub(super) fn may_have_run_before(stamped: u64, now: u64, window: Duration) -> bool {
    let half = u64::try_from(window.as_millis() / 2).unwrap_or(u64::MAX);
    now.saturating_sub(stamped) >= half || stamped.saturating_sub(now) > half
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: Option<&str>) -> async_nats::Message {
        let headers = id.map(|id| {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(MESSAGE_ID, id);
            headers
        });
        async_nats::Message {
            subject: "happen.durable.node.ledger".into(),
            reply: None,
            payload: bytes::Bytes::new(),
            headers,
            status: None,
            description: None,
            length: 0,
        }
    }

    #[test]
    fn only_an_event_stored_under_its_own_id_is_itself() {
        let mut event = Event::new("entry", serde_json::json!(1));
        crate::event::stamp(&mut event, &crate::id::Id::from("shop"), None);
        assert!(!event.id().is_empty());
        assert!(stored_as_itself(&message(Some(event.id())), &event).is_ok());
        for other in [Some("a-copy"), Some(""), None] {
            let error = stored_as_itself(&message(other), &event).unwrap_err();
            assert!(
                matches!(&error, HappenError::Integrity { event_id, .. } if event_id == event.id()),
                "{error}"
            );
        }
    }

    #[test]
    fn events_older_than_half_the_window_or_far_ahead_may_have_run() {
        let window = Duration::from_secs(120);
        let now = 1_000_000_000;
        assert!(!may_have_run_before(now, now, window));
        assert!(!may_have_run_before(now - 59_999, now, window));
        assert!(may_have_run_before(now - 60_000, now, window));
        assert!(may_have_run_before(0, now, window));
        assert!(!may_have_run_before(now + 60_000, now, window));
        assert!(may_have_run_before(now + 60_001, now, window));
        assert!(may_have_run_before(now, now, Duration::ZERO));
    }
}

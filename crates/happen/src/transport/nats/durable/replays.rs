//! The message id each stored event carries, and telling a stored event's
//! delivery from a copy of one that already ran.
//!
//! JetStream drops a message whose `Nats-Msg-Id` it stored within the
//! stream's duplicate window. A broadcast is stored once, under its event
//! id. An event to a durable node is stored under its event id and the
//! node's ([`message_id`]): an event sent to a group is stamped once, so
//! under the event id alone every copy after the first was dropped as a
//! duplicate, and only the first node of a group got it.
//!
//! Anyone who may publish to the event stream can store the bytes of an
//! event captured on the wire a second time. An exactly-once node must not
//! run it again, also after its process restarted (the in-memory record of
//! what it took is gone) and when another instance of the node took the
//! first copy. Two checks close that, without a read of the completion
//! records for each fresh event:
//!
//! - A stored event's message id must be the one Happen stores it under
//!   ([`stored_as`]). The server then drops a second copy stored within its
//!   duplicate window, so a copy under another message id is refused here,
//!   and one under the right id is not stored at all while the window
//!   lasts. An event to a node under its bare event id (as Happen stored it
//!   before per-node ids) is taken, but looked up in the completion records
//!   first.
//! - An event that may be older than that window ([`may_have_run_before`],
//!   by its own timestamp, which its hash and signature cover) is looked up
//!   in the completion records even on its first delivery; they are kept
//!   for twice the window.
//!
//! A copy stored after the completion records expire runs again: choose
//! the duplicate window (`DeliveryConfig::dedup_window`) to cover it.

use std::time::Duration;

use crate::error::HappenError;
use crate::event::Event;

/// The header JetStream de-duplicates stored messages by.
pub(super) const MESSAGE_ID: &str = "Nats-Msg-Id";

/// The message id of `event` stored for the durable node `target`, or, for
/// a broadcast (`None`), for every durable node that takes it.
pub(super) fn message_id(event: &str, target: Option<&str>) -> String {
    match target {
        Some(node) => format!("{event}@{node}"),
        None => event.to_owned(),
    }
}

/// The message id of a request stored again as a copy, asking for the
/// first one's answer at `reply`: a flow that runs again asks again with
/// the same event (numbered alike) from a new inbox, and the server drops
/// it under the first one's id. A copy is never run: it is answered with
/// the kept answer ([`crate::kept`]).
pub(super) fn copy_id(event: &str, target: &str, reply: &str) -> String {
    format!("{event}@{target}+{reply}")
}

/// How a stored event's message id vouches for it.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Stored {
    /// Under the id Happen stores it with: a copy within the window was
    /// dropped by the server.
    AsItself,
    /// An event to a node under its bare event id: stored by a Happen of
    /// before per-node ids, or a copy stored again under that id.
    Unsure,
    /// A request's copy ([`copy_id`]): answered, never run.
    Copy,
}

/// How `message`, delivered from the subject of the durable node `target`
/// (`None`: a broadcast subject) with the answer subject `reply` (a
/// request's), was stored; an error naming the event when under an id
/// Happen never stores it with.
pub(super) fn stored_as(
    message: &async_nats::Message,
    target: Option<&str>,
    reply: Option<&str>,
    event: &Event,
) -> Result<Stored, HappenError> {
    let stored_as = (message.headers.as_ref())
        .and_then(|h| h.get(MESSAGE_ID))
        .map(|v| v.as_str());
    let rest = stored_as.and_then(|id| id.strip_prefix(event.id()));
    match (rest, target) {
        (Some(""), None) => return Ok(Stored::AsItself),
        (Some(""), Some(_)) => return Ok(Stored::Unsure),
        (Some(rest), Some(node)) => {
            let rest = rest.strip_prefix('@').and_then(|r| r.strip_prefix(node));
            match (rest, reply) {
                (Some(""), _) => return Ok(Stored::AsItself),
                (Some(rest), Some(reply)) if rest.strip_prefix('+') == Some(reply) => {
                    return Ok(Stored::Copy);
                }
                _ => {}
            }
        }
        _ => {}
    }
    let expected = message_id(event.id(), target);
    Err(HappenError::Integrity {
        event_id: event.id().to_owned(),
        reason: match stored_as {
            Some(other) => format!(
                "stored under the message id {:?}, not {expected:?}: a copy stored again",
                crate::transport::nats::subjects::shortened(other)
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
        let id = event.id().to_owned();
        let to_ledger = message_id(&id, Some("ledger"));
        let asked = copy_id(&id, "ledger", "_INBOX.a.1");
        let inbox = Some("_INBOX.a.1");
        type Case<'a> = (
            Option<&'a str>,
            Option<&'a str>,
            Option<&'a str>,
            Option<Stored>,
        );
        let cases: [Case; 15] = [
            (
                Some(&to_ledger),
                Some("ledger"),
                None,
                Some(Stored::AsItself),
            ),
            (
                Some(&to_ledger),
                Some("ledger"),
                inbox,
                Some(Stored::AsItself),
            ),
            (Some(&asked), Some("ledger"), inbox, Some(Stored::Copy)),
            (Some(&asked), Some("ledger"), Some("_INBOX.b.2"), None),
            (Some(&asked), Some("ledger"), None, None),
            (Some(&id), None, None, Some(Stored::AsItself)),
            (Some(&id), Some("ledger"), None, Some(Stored::Unsure)),
            (Some(&to_ledger), Some("audit"), None, None),
            (Some(&to_ledger), Some("ledge"), None, None),
            (Some(&to_ledger), None, None, None),
            (Some("a-copy"), Some("ledger"), None, None),
            (Some("a-copy"), None, None, None),
            (Some(""), None, None, None),
            (None, Some("ledger"), None, None),
            (None, None, None, None),
        ];
        for (stored, target, reply, expected) in cases {
            let got = stored_as(&message(stored), target, reply, &event);
            match expected {
                Some(expected) => {
                    assert_eq!(got.unwrap(), expected, "{stored:?} {target:?} {reply:?}")
                }
                None => assert!(
                    matches!(&got, Err(HappenError::Integrity { event_id, .. }) if *event_id == id),
                    "{stored:?} {target:?} {reply:?}: {got:?}"
                ),
            }
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

//! Whether the producer of a stream read here still lives. A requester
//! reading a stream hears nothing from a producer whose process died, nor
//! from one whose stream's end was lost on the way; it would wait for good
//! (the request's timeout covers only the first item). So the runtime's
//! sweep asks the producer's credit subject about every stream that has
//! been quiet for [`QUIET`]: the message is the count of items taken (as a
//! credit would say), with a reply subject of this runtime's inbox. A live
//! producer still streaming says nothing; one that no longer knows the
//! stream answers `Cancel`; a dead one's inbox has no subscriber, and the
//! server answers "no responders". The stream then ends with
//! [`HappenError::StreamBroken`]; "no responders" only twice in a row, as
//! once may be a producer resubscribing after a reconnection. A producer
//! in this very process (a durable node answering through the server) is
//! looked up here: the connection does not echo its own messages, so the
//! server would answer "no responders". A requester that requires signed
//! events does not ask: the answers are not signed, and a forged one could
//! break its stream; it waits for the producer's signed end, as before.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::super::commands::Publish;
use super::super::wire::{self, Credit};
use super::{Shared, lock};
use crate::error::HappenError;
use crate::stream::StreamMsg;

/// How long a stream is quiet before its producer is asked, and how long
/// between two askings.
pub(super) const QUIET: Duration = Duration::from_secs(2);

/// What a requester knows of a stream's producer.
#[derive(Debug)]
pub(super) struct Producer {
    /// When the last item came.
    heard: Instant,
    /// When the producer was last asked.
    asked: Option<Instant>,
    /// "No responders" answers since the producer was last heard.
    unanswered: u8,
    /// `unanswered` when the producer was last asked.
    at_ask: u8,
}

impl Producer {
    pub(super) fn new() -> Producer {
        Producer {
            heard: Instant::now(),
            asked: None,
            unanswered: 0,
            at_ask: 0,
        }
    }

    /// An item came: the producer lives.
    pub(super) fn heard(&mut self) {
        self.heard = Instant::now();
        self.unanswered = 0;
    }

    /// Whether to ask the producer now (and notes that it is asked).
    fn due(&mut self, now: Instant) -> bool {
        let quiet = |since: Instant| now.saturating_duration_since(since) >= QUIET;
        if !quiet(self.heard) || !self.asked.is_none_or(quiet) {
            return false;
        }
        // No "no responders" since the last asking: that one was silence
        // (a live producer), and an earlier one is forgiven.
        if self.unanswered == self.at_ask {
            self.unanswered = 0;
        }
        self.at_ask = self.unanswered;
        self.asked = Some(now);
        true
    }
}

/// Asks the producers of the streams read here that have been quiet for
/// [`QUIET`] (called by the runtime's sweep, every second).
pub(in crate::transport::nats) fn ask(shared: &Arc<Shared>) {
    let now = Instant::now();
    let asks: Vec<(String, u64, u64)> = lock(&shared.requests.pending)
        .iter_mut()
        .filter(|(_, waiting)| waiting.alive() && waiting.verify.is_none())
        .filter_map(|(token, waiting)| {
            let incoming = waiting.stream.as_mut()?;
            let credit = incoming.credit.clone()?;
            let taken = incoming.taken();
            incoming
                .producer
                .due(now)
                .then_some((credit, *token, taken))
        })
        .collect();
    let own = format!("{}.c", shared.inbox);
    for (credit, token, taken) in asks {
        if let Some(stream) = credit.strip_prefix(own.as_str()) {
            let producing = stream
                .parse::<u64>()
                .is_ok_and(|n| shared.credits.producing(n));
            if !producing {
                broken(shared, token, NO_LONGER_SENT);
            }
            continue;
        }
        let Ok(payload) = wire::encode_credit(&Credit::Acked(taken)) else {
            continue;
        };
        let publish = Publish {
            subject: credit.into(),
            reply: Some(format!("{}.l{token}", shared.inbox).into()),
            headers: None,
            payload: Bytes::from(payload),
            token: None,
        };
        if let Err(error) = shared.commands.publish(publish) {
            tracing::debug!(%error, "a stream's producer could not be asked");
        }
    }
}

/// The answer to asking after request `token`'s stream: the server's "no
/// responders" (`status`), or the producer's `Cancel` (it has no such
/// stream any more). Either ends the stream as broken; "no responders"
/// only the second time in a row.
pub(in crate::transport::nats) fn answered(
    shared: &Arc<Shared>,
    token: &str,
    status: Option<async_nats::StatusCode>,
    payload: &[u8],
) {
    let Ok(token) = token.parse::<u64>() else {
        return;
    };
    let mut pending = lock(&shared.requests.pending);
    let Some(incoming) = pending
        .get_mut(&token)
        .filter(|w| w.verify.is_none())
        .and_then(|w| w.stream.as_mut())
    else {
        return;
    };
    let reason = if status == Some(async_nats::StatusCode::NO_RESPONDERS) {
        let producer = &mut incoming.producer;
        producer.unanswered = producer.unanswered.saturating_add(1);
        if producer.unanswered < 2 {
            return;
        }
        "its producer's process is gone: nobody has taken the stream's credit subject \
         for two askings in a row"
    } else if matches!(wire::decode_credit(payload), Ok(Credit::Cancel)) {
        NO_LONGER_SENT
    } else {
        return;
    };
    end_broken(incoming, reason);
    pending.remove(&token);
}

const NO_LONGER_SENT: &str =
    "its producer no longer sends it: the producer's flow ended, and its end was lost on the way";

/// Ends request `token`'s stream as broken, for `reason`.
fn broken(shared: &Arc<Shared>, token: u64, reason: &str) {
    let mut pending = lock(&shared.requests.pending);
    if let Some(incoming) = pending.get_mut(&token).and_then(|w| w.stream.as_mut()) {
        end_broken(incoming, reason);
        pending.remove(&token);
    }
}

fn end_broken(incoming: &mut super::Incoming, reason: &str) {
    let broken = HappenError::StreamBroken {
        reason: reason.to_owned(),
    };
    let _ = incoming.tx.try_send(StreamMsg::End(Err(broken)));
}

/// Whether `reply` is where a requester asks after a stream's producer
/// (`<inbox>.l<token>`): the one kind of subject a producer answers about
/// a stream it does not know.
pub(in crate::transport::nats) fn is_asking(reply: &str) -> bool {
    reply
        .rsplit_once(".l")
        .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

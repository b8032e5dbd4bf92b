//! Tells that meet "no responders" while their receiver is plausibly
//! resubscribing, offered again.
//!
//! A tell keeps nothing once published: "no responders" for it (the server
//! says so on the tell's reply subject) is reported as undelivered. That is
//! right for a node that does not exist, and wrong just after an outage,
//! when the receiver's process has not subscribed again yet: a runtime that
//! reconnected (or an edge runtime that connects for the first time, with
//! the events it held offline) would lose every tell sent before the
//! receiver came back (a distributed audit lost all 300 held by an edge).
//! So while the connection is down, and for [`RECONNECTED_RECENTLY`] after
//! it came back, each tell is kept (up to [`MAX_KEPT`] tells and
//! [`MAX_KEPT_BYTES`] at once) and, on "no responders" within that window,
//! offered again after pauses that double from 10 ms to 2 s, at most
//! [`MAX_OFFERS`] times (so a tell to a node that does not exist costs
//! about twenty publishes, not one every few milliseconds); once the window
//! has passed, what is kept is let go, and a refusal is reported as before.
//! Offered again, a tell may arrive after tells sent later. Anyone who can
//! see a tell's reply subject can forge its "no responders": the tell is
//! then published again, at most [`MAX_OFFERS`] times.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_nats::{HeaderMap, Subject};
use bytes::Bytes;
use tokio::time::Instant;

use super::super::commands::{Command, Publish};
use super::super::{Shared, lock};
use super::RECONNECTED_RECENTLY;

/// The most tells kept at once (beyond it, a tell is not offered again).
const MAX_KEPT: usize = 20_000;
/// The most bytes of tells kept at once.
const MAX_KEPT_BYTES: usize = 64 << 20;
/// The most times one tell is offered again.
const MAX_OFFERS: u32 = 22;

/// A tell kept for offering again.
struct Kept {
    subject: Subject,
    reply: Subject,
    headers: Option<HeaderMap>,
    payload: Bytes,
    refusals: u32,
}

/// The tells of one runtime kept for offering again, by reply subject
/// (which names the event), and their bytes.
#[derive(Default)]
pub(in crate::transport::nats) struct Tells(Mutex<(HashMap<String, Kept>, usize)>);

impl Tells {
    /// Keeps the tell about to be published, when its receiver may not be
    /// subscribed yet: the connection is down or just came back.
    /// The reply subject it is kept under, if kept (for [`Tells::forget`]).
    pub(in crate::transport::nats) fn keep(
        &self,
        shared: &Shared,
        publish: &Publish,
    ) -> Option<Subject> {
        if !risky(shared) {
            return None;
        }
        let reply = publish.reply.clone()?;
        let mut kept = lock(&self.0);
        let (tells, bytes) = &mut *kept;
        let size = publish.payload.len();
        if tells.len() < MAX_KEPT && *bytes + size <= MAX_KEPT_BYTES {
            *bytes += size;
            let tell = Kept {
                subject: publish.subject.clone(),
                reply: reply.clone(),
                headers: publish.headers.clone(),
                payload: publish.payload.clone(),
                refusals: 0,
            };
            if let Some(old) = tells.insert(reply.to_string(), tell) {
                *bytes -= old.payload.len();
            }
            return Some(reply);
        }
        None
    }

    /// Lets go of the tell whose reply subject is `reply` (its publish
    /// failed: it was not sent).
    pub(in crate::transport::nats) fn forget(&self, reply: &str) {
        let mut kept = lock(&self.0);
        let (tells, bytes) = &mut *kept;
        if let Some(old) = tells.remove(reply) {
            *bytes -= old.payload.len();
        }
    }

    /// "No responders" on the tell's reply subject `reply`: whether it is
    /// offered again (else the caller reports it undelivered).
    pub(in crate::transport::nats) fn refused(&self, shared: &Arc<Shared>, reply: &str) -> bool {
        let mut table = lock(&self.0);
        let (tells, bytes) = &mut *table;
        let Some(mut kept) = tells.remove(reply) else {
            return false;
        };
        *bytes -= kept.payload.len();
        drop(table);
        let until = shared
            .status
            .reconnected_at()
            .map(|at| at + RECONNECTED_RECENTLY);
        kept.refusals += 1;
        let pause = offer_pause(kept.refusals);
        if shared.is_closed()
            || kept.refusals > MAX_OFFERS
            || until.is_none_or(|until| Instant::now() + pause >= until)
        {
            return false;
        }
        let publish = Publish {
            subject: kept.subject.clone(),
            reply: Some(kept.reply.clone()),
            headers: kept.headers.clone(),
            payload: kept.payload.clone(),
            token: None,
        };
        let mut table = lock(&self.0);
        let (tells, bytes) = &mut *table;
        *bytes += kept.payload.len();
        tells.insert(reply.to_owned(), kept);
        drop(table);
        let shared = shared.clone();
        tokio::spawn(async move {
            tokio::time::sleep(pause).await;
            if !shared.is_closed() {
                let _ = shared.commands.send(Command::Publish(publish));
            }
        });
        true
    }

    /// Lets go of every kept tell once the connection is up and came back
    /// long enough ago that any refusal of them has arrived.
    pub(in crate::transport::nats) fn sweep(&self, shared: &Shared) {
        if !risky(shared) {
            let mut kept = lock(&self.0);
            let (tells, bytes) = &mut *kept;
            if !tells.is_empty() {
                tells.clear();
                tells.shrink_to(64);
                *bytes = 0;
            }
        }
    }
}

/// The pause before offering a tell again for the `refusals`-th time: from
/// 10 ms, doubling, at most 2 s.
fn offer_pause(refusals: u32) -> std::time::Duration {
    let doublings = refusals.saturating_sub(1).min(8);
    (std::time::Duration::from_millis(10) * (1 << doublings)).min(std::time::Duration::from_secs(2))
}

/// Whether a tell published now may meet a receiver not subscribed again:
/// the connection is down (or was never up), or came back a moment ago.
fn risky(shared: &Shared) -> bool {
    shared.status.unsettled(RECONNECTED_RECENTLY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn offers_slow_down_to_two_seconds_and_span_the_window_in_about_twenty() {
        assert_eq!(offer_pause(1), Duration::from_millis(10));
        assert_eq!(offer_pause(2), Duration::from_millis(20));
        assert_eq!(offer_pause(8), Duration::from_millis(1_280));
        assert_eq!(offer_pause(9), Duration::from_secs(2));
        assert_eq!(offer_pause(u32::MAX), Duration::from_secs(2));
        let total: Duration = (1..=MAX_OFFERS).map(offer_pause).sum();
        assert!(
            total >= RECONNECTED_RECENTLY,
            "offers span the window: {total:?}"
        );
    }
}

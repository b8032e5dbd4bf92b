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
//! it came back, each tell is kept (up to [`MAX_KEPT`] at once) and, on "no
//! responders" within that window, offered again with the requests' growing
//! pauses; once the window has passed, what is kept is let go, and a
//! refusal is reported as before. Offered again, a tell may arrive after
//! tells sent later.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_nats::{HeaderMap, Subject};
use bytes::Bytes;
use tokio::time::Instant;

use super::super::commands::{Command, Publish};
use super::super::{Shared, lock};
use super::{RECONNECTED_RECENTLY, retry_pause};

/// The most tells kept at once (beyond it, a tell is not offered again).
const MAX_KEPT: usize = 20_000;

/// A tell kept for offering again.
struct Kept {
    subject: Subject,
    reply: Subject,
    headers: Option<HeaderMap>,
    payload: Bytes,
    refusals: u32,
}

/// The tells of one runtime kept for offering again, by reply subject
/// (which names the event).
#[derive(Default)]
pub(in crate::transport::nats) struct Tells(Mutex<HashMap<String, Kept>>);

impl Tells {
    /// Keeps the tell about to be published, when its receiver may not be
    /// subscribed yet: the connection is down or just came back.
    pub(in crate::transport::nats) fn keep(&self, shared: &Shared, publish: &Publish) {
        if !risky(shared) {
            return;
        }
        let Some(reply) = publish.reply.clone() else {
            return;
        };
        let mut kept = lock(&self.0);
        if kept.len() < MAX_KEPT {
            kept.insert(
                reply.to_string(),
                Kept {
                    subject: publish.subject.clone(),
                    reply,
                    headers: publish.headers.clone(),
                    payload: publish.payload.clone(),
                    refusals: 0,
                },
            );
        }
    }

    /// "No responders" on the tell's reply subject `reply`: whether it is
    /// offered again (else the caller reports it undelivered).
    pub(in crate::transport::nats) fn refused(&self, shared: &Arc<Shared>, reply: &str) -> bool {
        let Some(mut kept) = lock(&self.0).remove(reply) else {
            return false;
        };
        let until = shared
            .status
            .reconnected_at()
            .map(|at| at + RECONNECTED_RECENTLY);
        kept.refusals += 1;
        let pause = retry_pause(kept.refusals);
        if shared.is_closed() || until.is_none_or(|until| Instant::now() + pause >= until) {
            return false;
        }
        let publish = Publish {
            subject: kept.subject.clone(),
            reply: Some(kept.reply.clone()),
            headers: kept.headers.clone(),
            payload: kept.payload.clone(),
            token: None,
        };
        lock(&self.0).insert(reply.to_owned(), kept);
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
            if !kept.is_empty() {
                kept.clear();
                kept.shrink_to(64);
            }
        }
    }
}

/// Whether a tell published now may meet a receiver not subscribed again:
/// the connection is down (or was never up), or came back a moment ago.
fn risky(shared: &Shared) -> bool {
    shared.status.unsettled(RECONNECTED_RECENTLY)
}

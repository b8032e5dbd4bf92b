//! What a producer asking after a stream it sends here is told: whether
//! its requester still waits, and how many items it took (see
//! `streams::on_probe`).

use tokio::sync::mpsc;

use super::Shared;
use crate::stream::StreamMsg;

/// A stream this process consumes.
pub(super) struct Incoming {
    pub(super) tx: mpsc::Sender<StreamMsg>,
    /// The number of the next item expected.
    pub(super) next: u64,
    /// Where the producer takes credit (named by the first item): the one
    /// subject a probe's answer about this stream may go to.
    pub(super) credit: Option<String>,
    /// Whether the producer still lives, asked when the stream is quiet.
    pub(super) producer: super::producer::Producer,
}

impl Incoming {
    /// The items taken in all: received less those still buffered.
    pub(super) fn taken(&self) -> u64 {
        let buffered = self.tx.max_capacity() - self.tx.capacity();
        self.next.saturating_sub(buffered as u64)
    }
}

/// What a producer asking after request `token`'s stream is told (see
/// `streams::on_probe`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::transport::nats) enum Asked {
    /// Nobody waits for it any more.
    Gone,
    /// Its requester waits, and has no item yet.
    Waiting,
    /// Its stream is read: this many items taken in all (received less
    /// those still buffered), the count its credit last reported or more.
    /// Only to the stream's own credit subject.
    Reading(u64),
}

/// How request `token`'s requester stands (see [`Asked`]), told to the
/// producer whose credit subject is `credit`: another subject learns no
/// count (a forged probe cannot lift another stream's window).
pub(in crate::transport::nats) fn asked(shared: &Shared, token: u64, credit: &str) -> Asked {
    let pending = super::lock(&shared.requests.pending);
    match pending.get(&token) {
        Some(waiting) if waiting.alive() => match &waiting.stream {
            // Only items go through the channel while the request is
            // pending (its end or a break removes it first).
            Some(incoming) if incoming.credit.as_deref() != Some(credit) => Asked::Waiting,
            Some(incoming) => Asked::Reading(incoming.taken()),
            None => Asked::Waiting,
        },
        _ => Asked::Gone,
    }
}

//! Drops said in the trace: a recorder whose queue to its store is full
//! counts the records it drops per transaction, and once there is room
//! again writes one [`What::Dropped`] record for each such transaction,
//! so that a reader anywhere sees the transaction is incomplete
//! ([`Transaction::dropped`](super::Transaction::dropped)).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{Record, What};
use crate::id::Id;

/// Transactions whose drops are counted, waiting for their marks (beyond
/// that, drops are only counted in [`Recorder::dropped`](super::Recorder::dropped)).
const LOST: usize = 4096;

/// The drops not yet marked in the trace: for each transaction, its
/// [`What::Dropped`] record (about its first dropped event) with the count
/// so far.
#[derive(Default)]
pub(super) struct Lost {
    /// Whether `marks` holds any (so that a record that fits checks one
    /// flag, not a lock).
    pending: AtomicBool,
    marks: Mutex<HashMap<Id, Record>>,
}

impl Lost {
    fn marks(&self) -> std::sync::MutexGuard<'_, HashMap<Id, Record>> {
        self.marks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts `records` dropped records of `record`'s transaction.
    pub(super) fn add(&self, mut record: Record, records: u64) {
        let mut marks = self.marks();
        let correlation = record.causal.correlation_id.clone();
        let room = marks.len() < LOST;
        match marks.get_mut(&correlation) {
            Some(mark) => {
                if let What::Dropped { records: n } = &mut mark.what {
                    *n = n.saturating_add(records);
                }
            }
            None if room => {
                record.what = What::Dropped { records };
                record.at = crate::event::now_millis();
                marks.insert(correlation, record);
            }
            None => return,
        }
        self.pending.store(true, Ordering::Release);
    }

    /// The marks waiting, now taken (none if none wait).
    pub(super) fn take(&self) -> Vec<Record> {
        if !self.pending.swap(false, Ordering::AcqRel) {
            return Vec::new();
        }
        self.marks().drain().map(|(_, mark)| mark).collect()
    }

    /// Keeps `mark` again (it did not fit in the queue either).
    pub(super) fn put_back(&self, mark: Record) {
        if let What::Dropped { records } = mark.what {
            self.add(mark, records);
        }
    }

    /// Whether marks wait (one load: checked after every record that fits).
    pub(super) fn pending(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }

    /// Offers every waiting mark to `send`, which gives back a mark that
    /// did not fit (kept for the next time) or `None` for one it lost.
    pub(super) fn send_marks(
        &self,
        mut send: impl FnMut(Box<Record>) -> Result<(), Option<Box<Record>>>,
    ) {
        for mark in self.take() {
            if let Err(Some(mark)) = send(Box::new(mark)) {
                self.put_back(*mark);
            }
        }
    }
}

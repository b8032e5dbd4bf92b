//! How far the subscriptions' readers have read, so that a shutdown can
//! wait until every message the client received before a point has been
//! handed to its node.
//!
//! The client puts each subscription's messages in a channel of their own,
//! read by a task of their own (`commands::read`). A round trip to the
//! server (a ping to this runtime's inbox, coming back after everything
//! published before it) proves that the earlier messages are in their
//! channels, not that their readers have taken them: the inbox's reader may
//! see the ping while another reader still has a backlog. So after the round
//! trip the shutdown raises a *barrier* and waits until every reader has
//! found its channel empty since (it then has handed over everything that
//! was there when the ping arrived).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{Notify, watch};

use super::lock;

/// The barrier and each reader's last caught-up barrier.
pub(super) struct Readers {
    barrier: watch::Sender<u64>,
    /// By subscription id: the last barrier its reader saw with nothing
    /// left to read.
    progress: std::sync::Mutex<HashMap<u64, Arc<AtomicU64>>>,
    caught_up: Notify,
}

impl Default for Readers {
    fn default() -> Self {
        Readers {
            barrier: watch::Sender::new(0),
            progress: std::sync::Mutex::new(HashMap::new()),
            caught_up: Notify::new(),
        }
    }
}

/// One reader's side: what it watches and where it reports.
pub(super) struct Progress {
    pub(super) barrier: watch::Receiver<u64>,
    progress: Arc<AtomicU64>,
}

impl Progress {
    /// The reader found its channel empty after the barrier moved.
    pub(super) fn caught_up(&mut self, readers: &Readers) {
        let at = *self.barrier.borrow_and_update();
        self.progress.store(at, Ordering::Release);
        readers.caught_up.notify_waiters();
    }
}

impl Readers {
    /// A reader for subscription `id` starts: it has nothing from before.
    pub(super) fn start(&self, id: u64) -> Progress {
        let barrier = self.barrier.subscribe();
        let progress = Arc::new(AtomicU64::new(*barrier.borrow()));
        lock(&self.progress).insert(id, progress.clone());
        Progress { barrier, progress }
    }

    /// The reader of subscription `id` ended.
    pub(super) fn end(&self, id: u64) {
        lock(&self.progress).remove(&id);
        self.caught_up.notify_waiters();
    }

    /// Raises the barrier and waits until every reader has read all it had
    /// when it was raised.
    pub(super) async fn drain(&self) {
        let mut at = 0;
        self.barrier.send_modify(|barrier| {
            *barrier += 1;
            at = *barrier;
        });
        loop {
            let notified = self.caught_up.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let behind = lock(&self.progress)
                .values()
                .any(|progress| progress.load(Ordering::Acquire) < at);
            if !behind {
                return;
            }
            notified.await;
        }
    }
}

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
//!
//! A message whose delivery must wait (for a sender's key) is handed to a
//! task of its own; such a task *holds* the barrier until it has delivered.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use futures::{Stream, StreamExt};
use tokio::sync::{Notify, watch};

use super::lock;

/// The barrier, and what the readers and holders report.
pub(super) struct Readers {
    barrier: watch::Sender<u64>,
    reports: Arc<Reports>,
}

#[derive(Default)]
struct Reports {
    /// By subscription id: the last barrier its reader saw with nothing
    /// left to read.
    progress: std::sync::Mutex<HashMap<u64, Arc<AtomicU64>>>,
    /// Deliveries handed to tasks of their own and not done yet.
    held: AtomicUsize,
    /// Some reader caught up, ended, or a holder let go.
    moved: Notify,
}

impl Default for Readers {
    fn default() -> Self {
        Readers {
            barrier: watch::Sender::new(0),
            reports: Arc::default(),
        }
    }
}

/// One reader's side: what it watches and where it reports. Dropping it
/// (the reader ended, returned early, panicked or was aborted) takes the
/// reader out of what a drain waits for.
pub(super) struct Progress {
    barrier: watch::Receiver<u64>,
    id: u64,
    progress: Arc<AtomicU64>,
    reports: Arc<Reports>,
}

impl Progress {
    /// The barrier as it is now; marks it seen, so that
    /// [`raised`](Self::raised) waits for a newer one.
    pub(super) fn current(&mut self) -> u64 {
        *self.barrier.borrow_and_update()
    }

    /// Whether `at` is newer than the last barrier reported.
    pub(super) fn behind(&self, at: u64) -> bool {
        self.progress.load(Ordering::Acquire) < at
    }

    /// Ends when the barrier is raised past the last [`current`]
    /// (Self::current); `false` once nobody can raise it any more.
    pub(super) async fn raised(&mut self) -> bool {
        self.barrier.changed().await.is_ok()
    }

    /// The reader found its channel empty after reading the barrier as
    /// `at`: everything it held when the barrier was raised is handed over.
    pub(super) fn caught_up(&self, at: u64) {
        self.progress.fetch_max(at, Ordering::AcqRel);
        self.reports.moved.notify_waiters();
    }
}

impl Progress {
    /// Hands every message of `messages` to `handle` until the stream ends
    /// (`None`) or `stop` fires (its outcome), reporting each barrier once
    /// everything the stream held when it was raised is handed over.
    pub(super) async fn read<M, T>(
        &mut self,
        messages: &mut (impl Stream<Item = M> + Unpin),
        stop: &mut (impl Future<Output = T> + Unpin),
        mut handle: impl FnMut(M),
    ) -> Option<T> {
        let mut barrier_open = true;
        loop {
            // Read before the channel is looked at: if the channel is then
            // empty, everything it held when this barrier was raised is
            // handed over.
            let at = self.current();
            tokio::select! {
                biased;
                stopped = &mut *stop => return Some(stopped),
                // Outside the budget: pending here means the channel is
                // empty, whatever the budget (tokio's `select!` checks it
                // before polling, but a branch polled earlier could spend
                // the last unit); the task yields below instead.
                message = tokio::task::unconstrained(messages.next()) => match message {
                    Some(message) => {
                        handle(message);
                        tokio::task::coop::consume_budget().await;
                    }
                    None => return None,
                },

                () = std::future::ready(()), if self.behind(at) => self.caught_up(at),
                raised = self.raised(), if barrier_open => barrier_open = raised,
            }
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        lock(&self.reports.progress).remove(&self.id);
        self.reports.moved.notify_waiters();
    }
}

/// A delivery that must finish before a drain may end.
pub(super) struct Held(Arc<Reports>);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::AcqRel);
        self.0.moved.notify_waiters();
    }
}

impl Readers {
    /// A reader for subscription `id` starts: it has nothing from before.
    pub(super) fn start(&self, id: u64) -> Progress {
        let barrier = self.barrier.subscribe();
        let progress = Arc::new(AtomicU64::new(*barrier.borrow()));
        lock(&self.reports.progress).insert(id, progress.clone());
        Progress {
            barrier,
            id,
            progress,
            reports: self.reports.clone(),
        }
    }

    /// A reader hands a message to a task of its own: drains wait for it
    /// until the returned guard is dropped.
    pub(super) fn hold(&self) -> Held {
        self.reports.held.fetch_add(1, Ordering::AcqRel);
        Held(self.reports.clone())
    }

    /// Raises the barrier and waits until every reader has read all it had
    /// when it was raised, and every delivery held by then has finished.
    pub(super) async fn drain(&self) {
        let mut at = 0;
        self.barrier.send_modify(|barrier| {
            *barrier += 1;
            at = *barrier;
        });
        loop {
            let moved = self.reports.moved.notified();
            tokio::pin!(moved);
            moved.as_mut().enable();
            let behind = lock(&self.reports.progress)
                .values()
                .any(|progress| progress.load(Ordering::Acquire) < at);
            if !behind && self.reports.held.load(Ordering::Acquire) == 0 {
                return;
            }
            moved.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Whether `drain` ends within a while (it waits on notifications,
    /// not on time: a drain that should end does so at once).
    async fn drains(readers: &Readers) -> bool {
        tokio::time::timeout(Duration::from_millis(200), readers.drain())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_drain_waits_for_each_reader_to_catch_up() {
        let readers = Readers::default();
        let mut reader = readers.start(1);
        assert!(!drains(&readers).await, "the reader has not looked since");
        // The reader reads the barrier, then finds its channel empty.
        let at = reader.current();
        assert!(reader.behind(at));
        reader.caught_up(at);
        assert!(!reader.behind(at));
        // A barrier read before the last raise does not count for it.
        let stale = reader.current();
        let waiting = tokio::spawn(async move {
            let readers = readers;
            let ended = drains(&readers).await;
            (readers, ended)
        });
        tokio::task::yield_now().await;
        reader.caught_up(stale);
        let (readers, ended) = waiting.await.unwrap();
        assert!(!ended, "caught up with an older barrier");
        let at = reader.current();
        reader.caught_up(at);
        assert!(
            !drains(&readers).await,
            "each drain raises the barrier again"
        );
    }

    /// A reader with a backlog longer than tokio's cooperative budget (128
    /// polls), which makes it yield several times, reports a barrier only
    /// once the whole backlog is handed over.
    #[tokio::test(flavor = "current_thread")]
    async fn a_reader_reports_a_barrier_only_after_its_whole_backlog() {
        use std::sync::atomic::AtomicUsize;

        const BACKLOG: usize = 1000;
        let readers = Arc::new(Readers::default());
        let mut reader = readers.start(1);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        for i in 0..BACKLOG {
            tx.send(i).unwrap();
        }
        let handled = Arc::new(AtomicUsize::new(0));
        // The drain raises the barrier first, then waits for the reader.
        let drain = tokio::spawn({
            let (readers, handled) = (readers.clone(), handled.clone());
            async move {
                readers.drain().await;
                handled.load(Ordering::SeqCst)
            }
        });
        tokio::task::yield_now().await;
        let (stop_tx, mut stop) = tokio::sync::oneshot::channel::<()>();
        let read = tokio::spawn({
            let handled = handled.clone();
            async move {
                let mut messages = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
                reader
                    .read(&mut messages, &mut stop, |_| {
                        handled.fetch_add(1, Ordering::SeqCst);
                    })
                    .await
            }
        });
        let seen = tokio::time::timeout(Duration::from_secs(10), drain)
            .await
            .expect("the drain ended")
            .unwrap();
        assert_eq!(
            seen, BACKLOG,
            "the barrier was reported before the backlog was read"
        );
        stop_tx.send(()).unwrap();
        assert_eq!(read.await.unwrap(), Some(Ok(())), "stopped when told");
        drop(tx);
    }

    #[tokio::test]
    async fn a_reader_that_is_gone_is_not_waited_for() {
        let readers = Readers::default();
        let reader = readers.start(7);
        assert!(!drains(&readers).await);
        // Ended, panicked or aborted: its progress is dropped.
        drop(reader);
        assert!(drains(&readers).await);
    }

    #[tokio::test]
    async fn a_drain_waits_for_held_deliveries() {
        let readers = Arc::new(Readers::default());
        let held = readers.hold();
        assert!(!drains(&readers).await, "a delivery is still held");
        let drain = tokio::spawn({
            let readers = readers.clone();
            async move { readers.drain().await }
        });
        tokio::task::yield_now().await;
        drop(held);
        tokio::time::timeout(Duration::from_secs(5), drain)
            .await
            .expect("the drain ended once the delivery was let go")
            .unwrap();
    }
}

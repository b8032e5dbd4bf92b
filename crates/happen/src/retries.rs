//! The retries of a node's events that wait for their backoff, when the
//! node is durable in this process (the embedded runtime; over NATS,
//! JetStream redelivers). The node's shutdown runs them at once and waits
//! until they are handed over, as it waits for the events in its queue;
//! the runtime's shutdown does the same for every node (each node's token
//! is a child of the runtime's).

use std::future::Future;
use std::sync::{Mutex, OnceLock};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TrackedFuture;

/// A node's waiting retries; the parts are made on first use (most nodes
/// never retry, and an idle node's memory counts).
#[derive(Default)]
pub(crate) struct Retries(OnceLock<Box<Waiting>>);

struct Waiting {
    /// Cancelled when the node (or the runtime) shuts down: the waiting
    /// retries stop waiting.
    now: CancellationToken,
    tracker: TaskTracker,
    /// Set under the lock by the node's shutdown: no retry waits after it.
    closed: Mutex<bool>,
}

impl Retries {
    fn waiting(&self, stopping: &CancellationToken) -> &Waiting {
        self.0.get_or_init(|| {
            Box::new(Waiting {
                now: stopping.child_token(),
                tracker: TaskTracker::new(),
                closed: Mutex::new(false),
            })
        })
    }

    /// A retry that waits: `make` builds it from the token that ends its
    /// wait early, and it is counted until it ends. `None` once the
    /// node's shutdown began (the failure is then final). `stopping` is
    /// the runtime's token.
    pub(crate) fn wait<F: Future>(
        &self,
        stopping: &CancellationToken,
        make: impl FnOnce(CancellationToken) -> F,
    ) -> Option<TrackedFuture<F>> {
        let waiting = self.waiting(stopping);
        let closed = waiting.closed.lock().unwrap_or_else(|p| p.into_inner());
        if *closed {
            return None;
        }
        // Tracked under the lock: a shutdown that follows waits for it.
        Some(waiting.tracker.track_future(make(waiting.now.clone())))
    }

    /// The node shuts down: its waiting retries run now, and this returns
    /// once each has been handed to the node (or given up).
    pub(crate) async fn run_now(&self, stopping: &CancellationToken) {
        let waiting = self.waiting(stopping);
        *waiting.closed.lock().unwrap_or_else(|p| p.into_inner()) = true;
        waiting.now.cancel();
        waiting.tracker.close();
        waiting.tracker.wait().await;
    }
}

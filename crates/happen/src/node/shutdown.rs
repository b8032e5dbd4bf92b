//! Taking a node out of the system ([`Node::shutdown`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{Node, NodeCore};
#[cfg(doc)]
use crate::error::HappenError;

impl<S> Node<S> {
    /// Takes this node out of the system: no new event reaches it, the
    /// flows it is running and the events in its queue finish, then its
    /// handlers and subscriptions are released. An event of a durable node
    /// of the embedded runtime that waits for its retry's backoff is tried
    /// once more now, and dead-lettered if that fails too (on disk, it is
    /// not tried: it stays for the next run, and its requester gets
    /// [`HappenError::Shutdown`]). Over NATS such an event stays in the
    /// stream with its attempts left, for another instance or a restart. The id may then be used for
    /// a new node. Senders in this process get [`HappenError::UnknownNode`];
    /// over NATS, a sender the node answered recently offers its request
    /// again until its timeout (the node may be on its way back) and then
    /// gets [`HappenError::Unreachable`].
    ///
    /// Called from one of the node's own flows (a "stop" handler), it
    /// cannot wait for that flow to end: it returns at once, and the
    /// shutdown goes on in a task of its own, ending after the flow does.
    ///
    /// ```
    /// use happen::prelude::*;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> happen::Result<()> {
    /// let happen = Happen::embedded();
    /// let client = happen.node("client")?;
    /// let temp = happen.node("temp")?;
    /// temp.on("ping", |_e: Event, _cx: Context| async { json!("pong") })?;
    /// temp.shutdown().await;
    /// let err = client.send("temp", Event::new("ping", json!(null))).await.unwrap_err();
    /// assert!(matches!(err, HappenError::UnknownNode { .. }));
    /// assert!(happen.node("temp").is_ok(), "the id is free again");
    /// # Ok(()) }
    /// ```
    pub async fn shutdown(&self) {
        let core = self.core.clone();
        let own_flow =
            crate::causality::current_flow().is_some_and(|f| Arc::ptr_eq(f.core(), &core));
        if own_flow {
            // Awaited here, it would wait for this very flow to end (a
            // cancellation audit's handler waited for good).
            tokio::spawn(async move { core.shut_down().await });
            return;
        }
        core.shut_down().await;
    }
}

impl NodeCore {
    /// Whether the node belongs to `runtime`.
    pub(crate) fn runtime_is(&self, runtime: &Arc<crate::runtime::RuntimeInner>) -> bool {
        std::ptr::eq(self.runtime.as_ptr(), Arc::as_ptr(runtime))
    }

    async fn shut_down(self: &Arc<Self>) {
        if self.closed.swap(true, Ordering::AcqRel) {
            // Shutting down already: done when the first caller's drain is.
            if let Some(runtime) = self.runtime.upgrade()
                && self.retried_here()
            {
                self.retries.run_now(&runtime.stopping).await;
            }
            return self.scheduler.idle().await;
        }
        let runtime = self.runtime.upgrade();
        if let Some(runtime) = &runtime {
            runtime.transport().detach(&self.id);
            if self.retried_here() {
                // Accepted events waiting to be tried again are tried now,
                // like those in the queue.
                self.retries.run_now(&runtime.stopping).await;
            }
        }
        self.scheduler.idle().await;
        let registrations = self.registry.clear();
        let Some(runtime) = runtime else { return };
        for registration in registrations {
            runtime.transport().unsubscribe(&registration.interest);
        }
        // Over NATS, a round trip after the releases: when this returns, the
        // server routes nothing more to this node.
        runtime.transport().released().await;
    }
}

//! Events the runtime itself emits, and the counts behind them.
//!
//! Happen reports what happens to the system (a connection lost and restored,
//! an event that reached nobody, a broadcast a node refused) as ordinary
//! events, so that nodes can react with ordinary handlers. Their sender is
//! [`SYSTEM_SENDER`], which is not a valid node id and so is never confused
//! with one. They are delivered to the nodes of the process where they
//! happened, not through the network (which may be what failed; only a
//! node's [`BACKPRESSURE`] report crosses it, sent by that node), and an
//! event from the network that claims that sender is rejected as forged
//! (see [`REJECTED`]). A node may still send or broadcast an event of one
//! of these types: where it matters who reported it, check the sender.
//!
//! | event type | when | payload |
//! |---|---|---|
//! | [`CONNECTION_STATUS`] | the NATS connection changed | `status` (`connected`, `disconnected`, `reconnected`, `lame-duck`, `slow-consumer`, `error`, `closed`: the client is closed, or gave up reconnecting after `Reconnect::max_attempts`), `reason` |
//! | [`UNDELIVERED`] | a sent event reached no node and nobody waited for the answer | `node`, `eventType`, `eventId`, `reason` |
//! | [`REFUSED`] | a node refused a broadcast or a remote tell (its queue was full, it has no handler for the tell's event type, or its acceptance controls refused the sender) | `node`, `eventType`, `eventId`, `reason`, `suppressed` (see below) |
//! | [`REJECTED`] | a message from another process was not a valid event: undecodable, or its integrity check failed (see [`crate::integrity`]); no node saw it | `subject`, `eventId` (when it could be read), `reason`, `suppressed` (see below) |
//! | [`DEAD_LETTER`] | a durable event failed its last attempt (see [`crate::durable`]) | `node`, `eventType`, `eventId`, `attempts`, `error`, `event` (the whole event) |
//! | `node.down`, `node.up`, `system.down`, `system.up` | flow balance found a node (or most nodes) behind, or recovered: see [`crate::balance`] | `nodeId`, `lagMetrics`, `pattern`, `affectedNodes`; `level` |
//!
//! Every undelivered, refused, rejected and dead-lettered event is also
//! counted (see [`Happen::counters`](crate::Happen::counters)) and logged
//! (`tracing::warn`). Refusals and rejections are what another process can
//! cause at will (a flood of bad or unwelcome messages), so while each is
//! counted, at most 100 of each kind a second are logged and reported; a
//! report after some were left out says how many in `suppressed` (absent
//! when none were).
//!
//! ```
//! use happen::prelude::*;
//! use happen::system;
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> happen::Result<()> {
//! let happen = Happen::embedded();
//! let busy = happen.node_with("busy", NodeConfig::new().max_concurrent(1).queue_limit(0))?;
//! let monitor = happen.node("monitor")?;
//! busy.on("tick", |_e: Event, _cx: Context| async {
//!     tokio::time::sleep(std::time::Duration::from_millis(50)).await;
//! })?;
//! let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
//! monitor.on(system::REFUSED, move |e: Event, _cx: Context| {
//!     let tx = tx.clone();
//!     async move { tx.send(e.payload()["node"].clone()).unwrap(); }
//! })?;
//! monitor.broadcast(Event::new("tick", json!(1)))?; // takes busy's only slot
//! assert!(monitor.broadcast(Event::new("tick", json!(2))).is_err());
//! assert_eq!(rx.recv().await.unwrap(), "busy");
//! assert_eq!(happen.counters().refused, 1);
//! # Ok(()) }
//! ```

use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::NodeConfig;
use crate::error::Result;
use crate::runtime::Happen;

/// The id of the node that runs [`Happen::on`]'s handlers.
pub const RUNTIME_NODE: &str = "happen-runtime";

impl Happen {
    /// Registers a runtime-level handler: the documentation's
    /// `happen.on("node.down", ..)`, for system events (flow balance, dead
    /// letters, connection status) and any broadcast, without a node of your
    /// own. The handlers run on a node the runtime makes on first use, with
    /// the id [`RUNTIME_NODE`], which [`Happen::node`] refuses.
    ///
    /// ```
    /// use std::time::Duration;
    /// use happen::prelude::*;
    /// use happen::balance::FlowBalanceConfig;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> happen::Result<()> {
    /// let happen = Happen::embedded_with(HappenConfig::default().flow_balance(
    ///     FlowBalanceConfig::default().interval(Duration::from_millis(20)).lag_threshold(2),
    /// ));
    /// let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    /// happen.on("node.down", move |event: Event, _cx: Context| {
    ///     let tx = tx.clone();
    ///     async move { tx.send(event.payload()["nodeId"].clone()).unwrap(); }
    /// })?;
    /// let stuck = happen.node_with("stuck", NodeConfig::new().max_concurrent(1))?;
    /// stuck.on("work", |_e: Event, _cx: Context| std::future::pending::<()>())?;
    /// for i in 0..4 {
    ///     stuck.tell(&stuck, Event::new("work", json!(i)))?;
    /// }
    /// assert_eq!(rx.recv().await.unwrap(), "stuck");
    /// # Ok(()) }
    /// ```
    pub fn on(
        &self,
        pattern: impl crate::pattern::IntoPattern,
        handler: impl crate::flow::Handler<()>,
    ) -> Result<crate::node::HandlerId> {
        let node = {
            let mut slot = self
                .0
                .runtime_node
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            match &*slot {
                Some(node) => node.clone(),
                None => slot
                    .insert(self.make_node(RUNTIME_NODE, NodeConfig::default())?)
                    .clone(),
            }
        };
        node.on(pattern, handler)
    }
}

/// The sender of the runtime's own reports (all the system events here but
/// [`BACKPRESSURE`], which its node sends). No event from another process
/// can carry it: one that claims it is rejected.
pub const SYSTEM_SENDER: &str = "happen.system";
/// The NATS connection changed state.
pub const CONNECTION_STATUS: &str = "system.connection-status";
/// A sent event reached no node (and nobody waited to be told).
pub const UNDELIVERED: &str = "system.undelivered";
/// A node refused a broadcast.
pub const REFUSED: &str = "system.refused";
/// A message from another process was not a valid event (undecodable, or
/// its integrity check failed).
pub const REJECTED: &str = "system.rejected";
/// A durable event failed its last attempt and went to the dead letters.
pub const DEAD_LETTER: &str = "system.dead-letter";
/// A node's queue passed its backpressure threshold (`"pressure": true`) or
/// emptied again (`false`); see
/// [`NodeConfig::backpressure_threshold`](crate::NodeConfig::backpressure_threshold).
/// The one report that goes to every process: its sender is the node whose
/// queue it reports, not [`SYSTEM_SENDER`], and it is signed when that
/// node signs (a node that requires signatures takes it only then).
pub const BACKPRESSURE: &str = "system.backpressure";

/// How many events went undelivered, were refused or rejected, and how
/// many flows failed, since the runtime started; see
/// [`Happen::counters`](crate::Happen::counters).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Counters {
    /// Sent events that reached no node while nobody waited for an answer
    /// (a fire-and-forget `send` or a `tell`); each was logged and reported
    /// as an [`UNDELIVERED`] event.
    pub undelivered: u64,
    /// Events refused by a node of this process that no sender could be
    /// told of (a broadcast, or a tell from another process: queue full,
    /// not accepted, not signed). They are logged and, unless one was the
    /// runtime's own report, reported as [`REFUSED`] events, at most 100 a
    /// second (see the module's introduction).
    pub refused: u64,
    /// Durable events that failed their last attempt in this process; each
    /// was logged and reported as a [`DEAD_LETTER`] event.
    pub dead_lettered: u64,
    /// Messages from other processes that were not valid events
    /// (undecodable, or their integrity check failed). They are logged and
    /// reported as [`REJECTED`] events, at most 100 a second (see the
    /// module's introduction); a request's sender is also told of each.
    pub rejected: u64,
    /// Flows of this process's nodes, zero handlers included, that ended
    /// with an error or a panic (each also logged); a requester, if one
    /// waited, got the error as well. A failed tell or broadcast has no
    /// requester, so this count (or a `tracing` subscriber) is where it
    /// shows. Each attempt counts: a durable event that fails twice and
    /// then succeeds counts 2, and so does a streaming flow that its
    /// consumer cancelled when it returns `emit`'s `Cancelled` error.
    pub failed: u64,
}

/// The live counters behind [`Counters`].
#[derive(Debug, Default)]
pub(crate) struct Tally {
    undelivered: AtomicU64,
    refused: AtomicU64,
    dead_lettered: AtomicU64,
    rejected: AtomicU64,
    failed: AtomicU64,
}

impl Tally {
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    pub(crate) fn undelivered(&self) {
        self.undelivered.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn dead_lettered(&self) {
        self.dead_lettered.fetch_add(1, Ordering::Relaxed);
    }

    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    pub(crate) fn rejected(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Counters {
        Counters {
            undelivered: self.undelivered.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

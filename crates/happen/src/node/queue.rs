//! The order in which a node's waiting events start ([`QueueStrategy`]),
//! and backpressure: the report a node makes when its queue fills past
//! its threshold, before `queue_limit` refuses anything.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use serde_json::json;

use super::{Node, NodeCore};
use crate::config::QueueStrategy;
use crate::delivery::Delivery;
use crate::event::Event;
use crate::system;

/// The application context field that holds an event's priority.
pub const PRIORITY_FIELD: &str = "priority";

impl Event {
    /// Sets the event's priority: where it goes in the queue of a node
    /// whose [`QueueStrategy`] is `Priority` (higher first; equal ones in
    /// arrival order). It travels as the application context field
    /// `priority`, so every runtime and process sees it.
    ///
    /// ```
    /// use happen::prelude::*;
    /// use happen::{NodeConfig, QueueStrategy};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> happen::Result<()> {
    /// let happen = Happen::embedded();
    /// let triage = happen.node_with(
    ///     "triage",
    ///     NodeConfig::new().max_concurrent(1).queue_strategy(QueueStrategy::Priority),
    /// )?;
    /// triage.on("ticket", |e: Event, _cx: Context| async move { e.payload().clone() })?;
    /// let urgent = Event::new("ticket", json!("server down")).with_priority(10);
    /// assert_eq!(urgent.priority(), 10);
    /// triage.send(&triage, urgent).await?;
    /// # Ok(()) }
    /// ```
    pub fn with_priority(self, priority: i64) -> Event {
        self.with_context(PRIORITY_FIELD, json!(priority))
    }

    /// The event's priority (0 unless set with [`Event::with_priority`]).
    pub fn priority(&self) -> i64 {
        self.context_value(PRIORITY_FIELD)
            .and_then(serde_json::Value::as_i64)
            .unwrap_or(0)
    }
}

/// Puts `delivery` in `queue`: at the end, or (by priority) before the
/// first waiting event of lower priority.
pub(super) fn enqueue(queue: &mut VecDeque<Delivery>, delivery: Delivery, strategy: QueueStrategy) {
    match strategy {
        QueueStrategy::Fifo => queue.push_back(delivery),
        QueueStrategy::Priority => {
            let priority = delivery.event.priority();
            // Waiting events are in priority order: the place is after the
            // last one of this priority or higher.
            let at = queue.partition_point(|waiting| waiting.event.priority() >= priority);
            queue.insert(at, delivery);
        }
    }
}

impl NodeCore {
    /// Whether `queued` waiting events take the node over its backpressure
    /// threshold now (it was not over before).
    pub(super) fn pressed(&self, queued: usize) -> bool {
        self.limits
            .backpressure_at()
            .is_some_and(|at| queued >= at.max(1))
            && !self.scheduler.pressure.swap(true, Ordering::AcqRel)
    }

    /// Whether the queue just emptied after backpressure was reported.
    pub(super) fn relieved(&self, queued: usize) -> bool {
        queued == 0 && self.scheduler.pressure.swap(false, Ordering::AcqRel)
    }

    /// Tells every node (in every process) that this node's queue is over
    /// its threshold, or empty again: a [`system::BACKPRESSURE`] broadcast.
    pub(super) fn report_pressure(&self, pressure: bool, queued: usize) {
        let Some(runtime) = self.runtime.upgrade() else {
            return;
        };
        let payload = json!({
            "node": self.id.as_str(),
            "queued": queued,
            "queueLimit": self.limits.queue_limit,
            "threshold": f64::from(self.limits.backpressure_permille) / 1000.0,
            "pressure": pressure,
        });
        if pressure {
            tracing::warn!(node = %self.id, queued, "backpressure: the node's queue is over its threshold");
        }
        // Sent by the node itself: it crosses processes, where no event may
        // claim the runtime's own sender (`system::SYSTEM_SENDER`).
        // Signed when the node signs what it sends, so that nodes requiring
        // signatures take it too.
        let mut event = Event::new(system::BACKPRESSURE, payload);
        crate::event::stamp(&mut event, &self.id, None);
        if self.limits.sign
            && let Err(error) = crate::identity::sign(&mut event, &**self.signer(), None)
        {
            tracing::warn!(node = %self.id, %error, "backpressure report not signed");
        }
        if let Err(error) = runtime.transport().broadcast(event) {
            tracing::warn!(node = %self.id, %error, "backpressure report not sent");
        }
    }
}

impl<S> Node<S> {
    /// How many events wait in this node's queue in this process (started
    /// flows not counted).
    pub fn queued(&self) -> usize {
        self.core.load().0
    }
}

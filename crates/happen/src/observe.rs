//! Observing the event flow: a hook called where events are stamped,
//! delivered to a node, and where their flows finish.
//!
//! Recording the causal web, tracing spans, metrics and live views are all
//! built on this one interface rather than on special cases in the core.
//! Install observers with [`HappenConfig::observer`](crate::HappenConfig::observer);
//! with none installed the hot path pays one branch per point.
//!
//! Every flow also runs inside a `tracing` span named `happen.flow` (level
//! DEBUG, target `happen::flow`) with the fields `node`, `event_type`,
//! `event_id`, `correlation_id` and `causation_id`, so that log lines of a
//! handler carry the causal context and span-based tools see one span per
//! flow. With no subscriber interested, the span is never built.
//!
//! Zero events ([`crate::zero`]) are reported at the same points, as the
//! ordinary [`Event`]s they convert to (same causal context and payload):
//! stamped where they are sent (a zero reply where it is sealed), delivered
//! when their zero handler takes them, finished when it returns (one that
//! goes on in an ordinary step finishes in that flow). The conversion is
//! made only when an observer is installed; without one, the zero path pays
//! one branch where an event is sent and one where it is handled.
//!
//! Observers are called synchronously on the thread doing the work, so they
//! must be quick: hand anything slow to a channel. A panicking observer is a
//! bug in the observer; it is not caught.
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use happen::observe::{Observer, Finished};
//! use happen::prelude::*;
//!
//! #[derive(Default)]
//! struct Log(Mutex<Vec<String>>);
//!
//! impl Observer for Log {
//!     fn stamped(&self, event: &Event) {
//!         self.0.lock().unwrap().push(format!("stamped {}", event.event_type()));
//!     }
//!     fn finished(&self, node: &str, event: &Event, finished: &Finished<'_>) {
//!         let outcome = if finished.error.is_none() { "ok" } else { "failed" };
//!         self.0.lock().unwrap().push(format!("{node} finished {} {outcome}", event.event_type()));
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> happen::Result<()> {
//! let log = Arc::new(Log::default());
//! let happen = Happen::embedded_with(HappenConfig::default().observer(log.clone()));
//! let node = happen.node("greeter")?;
//! node.on("greet", |_e: Event, _cx: Context| async { json!("hi") })?;
//! node.send(&node, Event::new("greet", json!(null))).await?;
//! let log = log.0.lock().unwrap().clone();
//! assert_eq!(log[0], "stamped greet");
//! assert!(log.contains(&"greeter finished greet ok".to_owned()));
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::time::Duration;

use crate::error::HappenError;
use crate::event::Event;

/// How a flow ended, as reported to [`Observer::finished`].
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Finished<'a> {
    /// `None` when the flow completed; the error when it failed or panicked.
    pub error: Option<&'a HappenError>,
    /// How long the flow ran, from its first step to its end.
    pub elapsed: Duration,
    /// Whether the flow's result went to a waiting requester.
    pub answered: bool,
    /// Which of the flows `event` started at the node this is: the
    /// position of its handler among those the event matched, from 0 (a
    /// node with one matching handler runs flow 0 only).
    pub flow: u32,
}

/// Called as events move through a runtime; every method has an empty
/// default, so implement only the points you need.
pub trait Observer: Send + Sync + 'static {
    /// `event` received its causal context and is about to leave its sender
    /// (a send, tell, broadcast, or a flow's response event).
    fn stamped(&self, event: &Event) {
        let _ = event;
    }

    /// The node `node` accepted `event` for handling (it runs or waits in the
    /// node's queue).
    fn delivered(&self, node: &str, event: &Event) {
        let _ = (node, event);
    }

    /// A flow of `node` started by `event` ended.
    fn finished(&self, node: &str, event: &Event, finished: &Finished<'_>) {
        let _ = (node, event, finished);
    }
}

/// The span a flow runs in (see the module docs).
pub(crate) fn flow_span(shared: &crate::context::Shared) -> tracing::Span {
    let event = shared.event();
    let causal = event.causal();
    tracing::debug_span!(
        target: "happen::flow",
        "happen.flow",
        node = %shared.core().id(),
        event_type = event.event_type(),
        event_id = %causal.id,
        correlation_id = %causal.correlation_id,
        causation_id = causal.causation_id.as_deref().unwrap_or(""),
    )
}

/// The observers of a runtime (usually none).
#[derive(Clone, Default)]
pub(crate) struct Observers(Option<Arc<[Arc<dyn Observer>]>>);

impl std::fmt::Debug for Observers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} observer(s)", self.0.as_ref().map_or(0, |o| o.len()))
    }
}

impl Observers {
    /// These observers and `observer` after them.
    pub(crate) fn with(&self, observer: Arc<dyn Observer>) -> Self {
        let mut list: Vec<Arc<dyn Observer>> =
            self.0.iter().flat_map(|o| o.iter().cloned()).collect();
        list.push(observer);
        Observers(Some(list.into()))
    }

    /// Whether any observer is registered.
    #[inline]
    pub(crate) fn is_active(&self) -> bool {
        self.0.is_some()
    }

    #[inline]
    pub(crate) fn stamped(&self, event: &Event) {
        if let Some(all) = &self.0 {
            for observer in all.iter() {
                observer.stamped(event);
            }
        }
    }

    #[inline]
    pub(crate) fn delivered(&self, node: &str, event: &Event) {
        if let Some(all) = &self.0 {
            for observer in all.iter() {
                observer.delivered(node, event);
            }
        }
    }

    #[inline]
    pub(crate) fn finished(&self, node: &str, event: &Event, finished: &Finished<'_>) {
        if let Some(all) = &self.0 {
            for observer in all.iter() {
                observer.finished(node, event, finished);
            }
        }
    }
}

//! A deterministic test kit for Happen systems.
//!
//! - **Time**: run the test on tokio's paused clock
//!   (`#[tokio::test(start_paused = true)]`): timeouts, retries, backoff and
//!   sleeps in handlers advance instantly and always the same way.
//! - **Ids and timestamps**: [`deterministic`] makes this thread's event
//!   ids and timestamps a function of a seed and of that clock, so two runs
//!   of the same test produce the same ids.
//! - **Capture**: a [`Capture`] installed in the runtime keeps every event
//!   of a run (type, payload, causal context) and every flow's outcome, and
//!   asserts on the causal web: [`Capture::assert_caused`],
//!   [`Capture::assert_none`].
//! - **Replay**: [`Capture::replay`] sends a captured run's root events
//!   into a fresh runtime, the way they were sent, and returns that run's
//!   capture, to compare outcomes ([`Capture::outline`]).
//!
//! ```
//! use happen::prelude::*;
//! use happen::testkit::{self, Capture};
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> happen::Result<()> {
//! let _ids = testkit::deterministic(7);
//! let capture = Capture::new();
//! let happen = Happen::embedded_with(capture.install(HappenConfig::default()));
//! let shop = happen.node("shop")?;
//! happen.node("bank")?.on("charge", |_e: Event, _cx: Context| async {
//!     tokio::time::sleep(std::time::Duration::from_secs(3)).await; // instant on the paused clock
//!     json!("paid")
//! })?;
//! shop.on("order", |_e: Event, cx: Context| async move {
//!     cx.node().send("bank", Event::new("charge", json!(5))).response().await
//! })?;
//! shop.send(&shop, Event::new("order", json!({ "id": 1 }))).await?;
//! happen.shutdown().await;
//!
//! capture.assert_caused("order", "charge");
//! capture.assert_none("refund");
//! // Times come from the paused clock: the order at the start, the bank's
//! // answer 3 s (of paused time) later. Ids come from the seed.
//! assert_eq!(capture.events()[0].causal().timestamp, 1_767_225_600_000);
//! let answer = &capture.of_type("happen.response")[0];
//! assert_eq!(answer.causal().timestamp, 1_767_225_603_000);
//! # Ok(()) }
//! ```

pub(crate) mod clock;

use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::config::HappenConfig;
use crate::error::Result;
use crate::event::Event;
use crate::observe::{Finished, Observer};
use crate::runtime::Happen;

/// While alive, this thread's event ids and timestamps are deterministic;
/// see [`deterministic`].
#[must_use = "ids are deterministic only while the guard lives"]
#[derive(Debug)]
pub struct Deterministic {
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Drop for Deterministic {
    fn drop(&mut self) {
        clock::remove();
    }
}

/// Makes this thread's event ids and timestamps deterministic until the
/// returned guard is dropped: ids come from `seed` and a count, times from
/// 2026-01-01T00:00:00Z plus tokio's clock since this call (so on a paused
/// clock they move only when the test advances it), and Happen's own
/// random choices (the jitter of [`Retry`](crate::resilience::Retry) and of
/// retried deliveries) from the seed too.
///
/// The source is per thread: use it with a current-thread runtime (the
/// default of `#[tokio::test]`); events made on other threads get ordinary
/// ids.
pub fn deterministic(seed: u64) -> Deterministic {
    clock::install(seed);
    Deterministic {
        _not_send: std::marker::PhantomData,
    }
}

/// How one flow ended, as captured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowOutcome {
    /// The node that ran it.
    pub node: String,
    /// The id of the event it handled.
    pub event_id: String,
    /// The error, if it failed.
    pub error: Option<String>,
}

#[derive(Default)]
struct Captured {
    events: Vec<Event>,
    /// Per event id: the nodes it was delivered to.
    delivered: Vec<(String, String)>,
    flows: Vec<FlowOutcome>,
}

/// Keeps every event of a run and every flow's outcome; see the
/// [module docs](self). Install it with [`Capture::install`].
#[derive(Default)]
pub struct Capture {
    captured: Mutex<Captured>,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture")
            .field("events", &self.captured().events.len())
            .finish()
    }
}

impl Observer for Capture {
    fn stamped(&self, event: &Event) {
        self.captured().events.push(event.clone());
    }

    fn delivered(&self, node: &str, event: &Event) {
        self.captured()
            .delivered
            .push((event.id().to_owned(), node.to_owned()));
    }

    fn finished(&self, node: &str, event: &Event, finished: &Finished<'_>) {
        self.captured().flows.push(FlowOutcome {
            node: node.to_owned(),
            event_id: event.id().to_owned(),
            error: finished.error.map(|e| e.to_string()),
        });
    }
}

impl Capture {
    /// A new, empty capture.
    pub fn new() -> Arc<Capture> {
        Arc::new(Capture::default())
    }

    fn captured(&self) -> std::sync::MutexGuard<'_, Captured> {
        self.captured.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `config` with this capture installed as an observer.
    pub fn install(self: &Arc<Self>, config: HappenConfig) -> HappenConfig {
        config.observer(self.clone())
    }

    /// Every event sent so far, in the order sent.
    pub fn events(&self) -> Vec<Event> {
        self.captured().events.clone()
    }

    /// The events of type `event_type`, in the order sent.
    pub fn of_type(&self, event_type: &str) -> Vec<Event> {
        self.captured()
            .events
            .iter()
            .filter(|e| e.event_type() == event_type)
            .cloned()
            .collect()
    }

    /// Every flow that ended, in the order they ended.
    pub fn flows(&self) -> Vec<FlowOutcome> {
        self.captured().flows.clone()
    }

    /// The captured event `id`.
    pub fn event(&self, id: &str) -> Option<Event> {
        self.captured()
            .events
            .iter()
            .find(|e| e.id() == id)
            .cloned()
    }

    /// The chain of causes of `event`, from it up to its root (as far as
    /// they were captured).
    pub fn why(&self, event: &Event) -> Vec<Event> {
        let captured = self.captured();
        let mut chain = vec![event.clone()];
        let mut next = event.causal().causation_id.clone();
        while let Some(cause) = next {
            let Some(found) = captured.events.iter().find(|e| e.id() == &*cause) else {
                break;
            };
            if chain.len() > captured.events.len() {
                break;
            }
            next = found.causal().causation_id.clone();
            chain.push(found.clone());
        }
        chain
    }

    /// Whether some event of type `effect` has an event of type `cause`
    /// among its causes (directly or further up).
    pub fn caused(&self, cause: &str, effect: &str) -> bool {
        self.of_type(effect)
            .iter()
            .any(|e| self.why(e).iter().skip(1).any(|c| c.event_type() == cause))
    }

    /// Panics unless an event of type `cause` caused one of type `effect`
    /// (see [`Capture::caused`]), showing what was captured.
    #[track_caller]
    pub fn assert_caused(&self, cause: &str, effect: &str) {
        if !self.caused(cause, effect) {
            panic!(
                "no \"{effect}\" event was caused by a \"{cause}\" event; captured:\n{}",
                self.describe()
            );
        }
    }

    /// Panics if any event of type `event_type` was sent.
    #[track_caller]
    pub fn assert_none(&self, event_type: &str) {
        let found = self.of_type(event_type);
        if let Some(first) = found.first() {
            let chain: Vec<String> = self
                .why(first)
                .iter()
                .map(|e| e.event_type().to_owned())
                .collect();
            panic!(
                "{} \"{event_type}\" event(s) were sent; the first caused by {}",
                found.len(),
                chain.join(" < ")
            );
        }
    }

    /// The run in a form two runs can be compared by, independent of ids
    /// and times: each event's type, payload, sender and the type of its
    /// cause, in the order sent.
    pub fn outline(&self) -> Vec<(String, Value, String, Option<String>)> {
        let events = self.events();
        events
            .iter()
            .map(|e| {
                let cause = e.causal().causation_id.as_deref().and_then(|c| {
                    events
                        .iter()
                        .find(|x| x.id() == c)
                        .map(|x| x.event_type().to_owned())
                });
                (
                    e.event_type().to_owned(),
                    e.payload().clone(),
                    e.causal().sender.to_string(),
                    cause,
                )
            })
            .collect()
    }

    fn describe(&self) -> String {
        self.events()
            .iter()
            .map(|e| {
                let why: Vec<String> = self
                    .why(e)
                    .iter()
                    .map(|c| c.event_type().to_owned())
                    .collect();
                format!(
                    "  {} (sent by {}): {}",
                    e.event_type(),
                    e.causal().sender,
                    why.join(" < ")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Sends this run's root events (those sent from outside any flow) into
    /// `into`, as they were sent: each from a node with its sender's id
    /// (made here: those nodes must not exist in `into`), to the nodes it
    /// was delivered to, as a request whose answer is awaited (whatever it
    /// is) if it was answered, else as a tell; in the captured order. `into`
    /// should have the same nodes and handlers as the captured run and be
    /// captured itself ([`Capture::install`]); compare the two with
    /// [`Capture::outline`] once `into` is idle (after its shutdown, say).
    pub async fn replay(&self, into: &Happen) -> Result<()> {
        let (roots, delivered, answered) = {
            let captured = self.captured();
            let roots: Vec<Event> = captured
                .events
                .iter()
                .filter(|e| e.causal().causation_id.is_none())
                .cloned()
                .collect();
            let answered: Vec<String> = captured
                .events
                .iter()
                .filter(|e| e.event_type() == crate::flow::RESPONSE_EVENT_TYPE)
                .filter_map(|e| e.causal().causation_id.as_ref().map(|c| c.to_string()))
                .collect();
            (roots, captured.delivered.clone(), answered)
        };
        let mut senders: std::collections::HashMap<String, crate::node::Node> = Default::default();
        for root in roots {
            let sender = root.causal().sender.to_string();
            if !senders.contains_key(&sender) {
                senders.insert(sender.clone(), into.node(&sender)?);
            }
            let from = &senders[&sender];
            let targets: Vec<&String> = delivered
                .iter()
                .filter(|(id, _)| id == root.id())
                .map(|(_, node)| node)
                .collect();
            let fresh = || {
                let mut event = Event::new(root.event_type(), root.payload().clone());
                let origin = &root.origin();
                if let (Some(id), Some(kind)) = (&origin.source_id, &origin.source_type) {
                    event = event.with_source(id.clone(), kind.clone());
                }
                event
            };
            if answered.iter().any(|a| a == root.id()) {
                for target in targets {
                    // A failed flow is part of the outcome, not of the replay.
                    let _ = from.send(target.as_str(), fresh()).await;
                }
            } else {
                for target in targets {
                    from.tell(target.as_str(), fresh())?.await?;
                }
            }
        }
        Ok(())
    }
}

/// Whether whatever `weak` points at is dropped within two seconds (flows
/// that ran may still be ending).
#[cfg(test)]
pub(crate) async fn dropped_soon<T>(weak: &std::sync::Weak<T>) -> bool {
    for _ in 0..400 {
        if weak.upgrade().is_none() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    false
}

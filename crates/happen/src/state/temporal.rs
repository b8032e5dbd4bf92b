//! Temporal state: every change a flow makes to a node's state is kept as a
//! snapshot together with the context of the event that caused it, so that a
//! node can ask what its state was after any event.
//!
//! Snapshots are recorded for changes made inside a flow (where there is a
//! causing event); changes made outside any flow have no cause to record.
//! History is bounded by [`TemporalConfig`]: at most `history` snapshots per
//! node, none older than `max_age`.

use std::collections::VecDeque;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::event::Event;
use crate::id::Id;

/// How much state history is kept.
///
/// Over NATS every process of a system keeps its nodes' history in one
/// stream: a runtime asking for more than the stream keeps grows it, and
/// one asking for less leaves it as it is (it would cut the others').
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TemporalConfig {
    /// Whether snapshots are recorded at all.
    pub enabled: bool,
    /// Snapshots kept per node (the oldest go first).
    pub history: usize,
    /// Snapshots older than this are dropped.
    pub max_age: Duration,
}

impl Default for TemporalConfig {
    /// 100 snapshots per node, for at most 30 days.
    fn default() -> Self {
        TemporalConfig {
            enabled: true,
            history: 100,
            max_age: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// Which state changes a node keeps as snapshots: the documentation's
/// "which events should create temporal snapshots". Set for the whole
/// system with [`HappenConfig::snapshots`](crate::HappenConfig::snapshots),
/// for nodes by id pattern or one node with
/// [`NodeConfig::snapshots`](crate::NodeConfig::snapshots) (the node's own
/// setting wins, then the last matching pattern, then the system's).
///
/// A snapshot is taken when a flow changes the node's state; the selection
/// looks at the event that flow is handling.
///
/// ```
/// use happen::prelude::*;
/// use happen::Snapshots;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> happen::Result<()> {
/// let config = HappenConfig::default()
///     .snapshots(Snapshots::matching("order.*")) // the system: order events only
///     .for_nodes("cache-*", NodeConfig::new().snapshots(Snapshots::Off));
/// let happen = Happen::embedded_with(config);
/// let orders = happen.node("orders")?;
/// orders.on(happen::pattern::Pattern::any(), |e: Event, cx: Context| async move {
///     cx.node().state().set(|_| e.payload().clone()).await
/// })?;
/// orders.send(&orders, Event::new("order.placed", json!({ "id": 1 }))).await?;
/// orders.send(&orders, Event::new("audit.read", json!({ "id": 1 }))).await?;
/// let history = orders.state().history().await?;
/// assert_eq!(history.len(), 1, "only the order event made a snapshot");
/// assert_eq!(history[0].context.event_type, "order.placed");
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum Snapshots {
    /// Every change made inside a flow (the default).
    #[default]
    All,
    /// None: the node keeps no history.
    Off,
    /// Changes made by flows of events whose type matches the pattern.
    Matching(crate::pattern::Pattern),
    /// Changes made by flows of events the predicate selects.
    When(std::sync::Arc<dyn Fn(&Event) -> bool + Send + Sync>),
}

impl Snapshots {
    /// Changes made by flows of events whose type matches `pattern`.
    pub fn matching(pattern: impl crate::pattern::IntoPattern) -> Snapshots {
        Snapshots::Matching(pattern.into_pattern())
    }

    /// Changes made by flows of events `select` picks (it sees the whole
    /// event: type, payload, causal context, origin).
    pub fn when(select: impl Fn(&Event) -> bool + Send + Sync + 'static) -> Snapshots {
        Snapshots::When(std::sync::Arc::new(select))
    }

    /// Whether a change made while handling `event` is kept.
    pub(crate) fn selects(&self, event: &Event) -> bool {
        match self {
            Snapshots::All => true,
            Snapshots::Off => false,
            Snapshots::Matching(pattern) => pattern.matches(event.event_type()),
            Snapshots::When(select) => select(event),
        }
    }
}

impl std::fmt::Debug for Snapshots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Snapshots::All => f.write_str("All"),
            Snapshots::Off => f.write_str("Off"),
            Snapshots::Matching(_) => f.write_str("Matching(..)"),
            Snapshots::When(_) => f.write_str("When(..)"),
        }
    }
}

/// Two selections are equal when they are the same variant and, for a
/// pattern or a predicate, the very same one (a clone).
impl PartialEq for Snapshots {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Snapshots::All, Snapshots::All) | (Snapshots::Off, Snapshots::Off) => true,
            (Snapshots::Matching(a), Snapshots::Matching(b)) => same_pattern(a, b),
            (Snapshots::When(a), Snapshots::When(b)) => std::sync::Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for Snapshots {}

/// Whether two patterns are the same: equal text for exact and domain
/// patterns, the very same compiled pattern otherwise.
fn same_pattern(a: &crate::pattern::Pattern, b: &crate::pattern::Pattern) -> bool {
    use crate::pattern::Repr;
    use std::sync::Arc;
    match (a.repr(), b.repr()) {
        (Repr::Any, Repr::Any) => true,
        (Repr::Exact(x), Repr::Exact(y)) | (Repr::Domain(x), Repr::Domain(y)) => x == y,
        (Repr::Compiled(x), Repr::Compiled(y)) => Arc::ptr_eq(x, y),
        (Repr::Glob(x), Repr::Glob(y)) => Arc::ptr_eq(x, y),
        (Repr::Func(x), Repr::Func(y)) => Arc::ptr_eq(x, y),
        (Repr::Not(x), Repr::Not(y)) => Arc::ptr_eq(x, y),
        (Repr::And(x), Repr::And(y)) | (Repr::Or(x), Repr::Or(y)) => Arc::ptr_eq(x, y),
        (Repr::Invalid(x), Repr::Invalid(y)) => Arc::ptr_eq(x, y),
        _ => false,
    }
}

/// The context of the event that produced a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct SnapshotContext {
    /// The id of the event whose flow changed the state.
    pub id: Id,
    /// What caused that event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Id>,
    /// The transaction it belongs to.
    pub correlation_id: Id,
    /// The node that sent it.
    pub sender: Id,
    /// Its type.
    pub event_type: String,
    /// When the state changed, in milliseconds since the Unix epoch.
    pub timestamp: u64,
    /// When the event is a batch: its members' ids (the change is the one
    /// that followed each of them; [`State::when`](crate::state::State::when)
    /// finds it by any of them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<Id>,
}

impl SnapshotContext {
    pub(crate) fn of(event: &Event, timestamp: u64) -> Self {
        let causal = event.causal();
        SnapshotContext {
            id: causal.id.clone(),
            causation_id: causal.causation_id.clone(),
            correlation_id: causal.correlation_id.clone(),
            sender: causal.sender.clone(),
            event_type: event.event_type().to_owned(),
            timestamp,
            members: event
                .batch_events()
                .map(|members| members.iter().map(|m| m.causal().id.clone()).collect())
                .unwrap_or_default(),
        }
    }

    /// Whether the snapshot followed the event `id`: the changing event, or
    /// a member of that batch.
    pub fn follows(&self, id: &str) -> bool {
        self.id == id || self.members.iter().any(|m| m == id)
    }
}

/// A node's state right after one change, and what caused the change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The whole state after the change.
    pub state: Value,
    /// The causing event's context.
    pub context: SnapshotContext,
}

/// Selects snapshots for [`State::when`](crate::state::State::when): an event
/// id (`&str`, `String`, [`Id`]) or any `Fn(&SnapshotContext) -> bool`.
pub trait SnapshotFilter {
    /// Whether the snapshot with this context is wanted.
    fn accepts(&self, context: &SnapshotContext) -> bool;
}

impl SnapshotFilter for &str {
    fn accepts(&self, context: &SnapshotContext) -> bool {
        context.follows(self)
    }
}

impl SnapshotFilter for String {
    fn accepts(&self, context: &SnapshotContext) -> bool {
        context.follows(self)
    }
}

impl SnapshotFilter for &String {
    fn accepts(&self, context: &SnapshotContext) -> bool {
        context.follows(self)
    }
}

impl SnapshotFilter for Id {
    fn accepts(&self, context: &SnapshotContext) -> bool {
        context.follows(self)
    }
}

impl<F: Fn(&SnapshotContext) -> bool> SnapshotFilter for F {
    fn accepts(&self, context: &SnapshotContext) -> bool {
        self(context)
    }
}

/// Drops what retention no longer allows: beyond `history` entries, or older
/// than `max_age` at `now` (milliseconds).
pub(crate) fn retain(history: &mut VecDeque<Snapshot>, config: &TemporalConfig, now: u64) {
    while history.len() > config.history {
        history.pop_front();
    }
    let max_age = u64::try_from(config.max_age.as_millis()).unwrap_or(u64::MAX);
    let oldest_allowed = now.saturating_sub(max_age);
    while history
        .front()
        .is_some_and(|s| s.context.timestamp < oldest_allowed)
    {
        history.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn snap(i: u64, t: u64) -> Snapshot {
        Snapshot {
            state: json!(i),
            context: SnapshotContext {
                id: Id::from(format!("e{i}")),
                causation_id: None,
                correlation_id: Id::from("c"),
                sender: Id::from("s"),
                event_type: "t".into(),
                timestamp: t,
                members: Vec::new(),
            },
        }
    }

    #[test]
    fn retention_by_count_and_age() {
        let config = TemporalConfig {
            enabled: true,
            history: 3,
            max_age: Duration::from_millis(100),
        };
        let mut h: VecDeque<Snapshot> = (0..5).map(|i| snap(i, 1000 + i)).collect();
        retain(&mut h, &config, 1004);
        assert_eq!(
            h.iter()
                .map(|s| s.state.as_u64().unwrap())
                .collect::<Vec<_>>(),
            vec![2, 3, 4]
        );
        retain(&mut h, &config, 1103);
        assert_eq!(
            h.iter()
                .map(|s| s.state.as_u64().unwrap())
                .collect::<Vec<_>>(),
            vec![3, 4]
        );
    }

    #[test]
    fn filters() {
        let s = snap(1, 0);
        assert!("e1".accepts(&s.context));
        assert!(!"e2".accepts(&s.context));
        assert!((|c: &SnapshotContext| c.correlation_id == "c").accepts(&s.context));
    }
}

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

/// The context of the event that produced a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
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
        }
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
        context.id == **self
    }
}

impl SnapshotFilter for String {
    fn accepts(&self, context: &SnapshotContext) -> bool {
        context.id == *self
    }
}

impl SnapshotFilter for &String {
    fn accepts(&self, context: &SnapshotContext) -> bool {
        context.id == **self
    }
}

impl SnapshotFilter for Id {
    fn accepts(&self, context: &SnapshotContext) -> bool {
        context.id == *self
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

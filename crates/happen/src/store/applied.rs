//! Exactly-once state changes: which updates of unfinished exactly-once
//! flows a node's state already holds.
//!
//! A flow of a node in exactly-once mode numbers its state updates (its
//! `k`-th `set`, whatever node's state it changes). Each update saves,
//! with the new value and in the same conditional write, a mark "flow `f`
//! of event `E` applied its updates up to `k`". When the event's flow runs
//! again (its process died before the event was acknowledged, or it failed
//! and is retried), an update the state already holds is not applied a
//! second time: the `set` returns the state as it is.
//!
//! Marks are dropped once the event is settled for good (its completion
//! recorded, or dead-lettered): [`Settled`] lists, per node whose state an
//! event changed, the events whose marks the next write of that state may
//! drop. A record keeps at most [`MAX_MARKS`] marks, the oldest going first.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{HappenError, Result};
use crate::id::Id;

/// The most marks one state record keeps. Beyond it the oldest mark goes:
/// the update it stands for would apply again if its flow re-ran, so this
/// is the bound on exactly-once flows changing one node's state that can
/// be unfinished at once (a node hands out at most `max_pending` events).
pub(crate) const MAX_MARKS: usize = 4096;

/// One update of an unfinished exactly-once flow: which flow (`event id`
/// and handler position) and what it had applied.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Update {
    /// `<event id>/<flow>`: the key of the flow's mark.
    pub(crate) flow: String,
    /// The event, for settling.
    pub(crate) event: Id,
    /// The update's position among the flow's updates, from 0.
    pub(crate) seq: u32,
}

/// The marks a state record carries (empty for a state no exactly-once
/// flow changed, or whose flows all settled).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub(crate) struct Applied(BTreeMap<String, Mark>);

/// How far one flow got: the number of its updates applied (the highest
/// position plus one) and when the mark was last written (ms since the
/// epoch; the oldest goes first past [`MAX_MARKS`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Mark(u32, u64);

impl Applied {
    /// No marks.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether the state already holds `update`.
    pub(crate) fn holds(&self, update: &Update) -> bool {
        self.0.get(&update.flow).is_some_and(|m| m.0 > update.seq)
    }

    /// Records `update` as applied at `now`.
    pub(crate) fn record(&mut self, update: &Update, now: u64) {
        let mark = self.0.entry(update.flow.clone()).or_default();
        mark.0 = mark.0.max(update.seq + 1);
        mark.1 = now;
        if self.0.len() > MAX_MARKS {
            let oldest = self
                .0
                .iter()
                .min_by_key(|(_, m)| m.1)
                .map(|(k, _)| k.clone());
            if let Some(key) = oldest {
                tracing::warn!(
                    mark = %key,
                    "more than {MAX_MARKS} unfinished exactly-once flows changed one state; the oldest mark is dropped"
                );
                self.0.remove(&key);
            }
        }
    }

    /// Drops the marks of the settled `events`.
    pub(crate) fn drop_settled(&mut self, events: &[Id]) {
        if events.is_empty() || self.0.is_empty() {
            return;
        }
        self.0.retain(|flow, _| {
            let event = flow.rsplit_once('/').map_or(flow.as_str(), |(e, _)| e);
            !events.iter().any(|settled| settled.as_str() == event)
        });
    }
}

/// A state record's stored form: the value alone while it has no marks
/// (plain JSON, as before marks existed), else a zero byte and then the
/// value with its marks. JSON never starts with a zero byte.
#[cfg_attr(not(feature = "nats"), allow(dead_code))]
pub(crate) fn encode(value: &Value, applied: &Applied) -> Result<Vec<u8>> {
    if applied.is_empty() {
        return Ok(serde_json::to_vec(value)?);
    }
    let mut bytes = vec![0u8];
    serde_json::to_writer(
        &mut bytes,
        &Marked {
            value: value.clone(),
            applied: applied.clone(),
        },
    )?;
    Ok(bytes)
}

/// Reads what [`encode`] wrote.
#[cfg_attr(not(feature = "nats"), allow(dead_code))]
pub(crate) fn decode(bytes: &[u8]) -> Result<(Value, Applied)> {
    let unreadable = |e| HappenError::store("a stored state is not readable", e);
    match bytes.split_first() {
        Some((0, rest)) => {
            let marked: Marked = serde_json::from_slice(rest).map_err(unreadable)?;
            Ok((marked.value, marked.applied))
        }
        _ => Ok((
            serde_json::from_slice(bytes).map_err(unreadable)?,
            Applied::default(),
        )),
    }
}

#[cfg_attr(not(feature = "nats"), allow(dead_code))]
#[derive(Serialize, Deserialize)]
struct Marked {
    value: Value,
    applied: Applied,
}

/// The settled events whose marks the next write of a node's state may
/// drop, by node; and, until an event settles, which states it changed.
#[derive(Default)]
pub(crate) struct Settled {
    inner: Mutex<SettledInner>,
}

#[derive(Default)]
struct SettledInner {
    /// Unsettled events and the nodes whose state they changed.
    changed: HashMap<Id, Vec<Id>>,
    /// Per node: settled events whose marks may go.
    droppable: HashMap<Id, Vec<Id>>,
}

impl Settled {
    fn lock(&self) -> std::sync::MutexGuard<'_, SettledInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `event` changed `node`'s state (a mark was written).
    pub(crate) fn changed(&self, event: &Id, node: &Id) {
        let mut inner = self.lock();
        let nodes = inner.changed.entry(event.clone()).or_default();
        if !nodes.contains(node) {
            nodes.push(node.clone());
        }
    }

    /// `event` will not run again here: its completion is recorded where a
    /// redelivery looks, or it was dead-lettered. Its marks may go.
    pub(crate) fn settle(&self, event: &str) {
        let mut inner = self.lock();
        let Some((event, nodes)) = inner.changed.remove_entry(event) else {
            return;
        };
        for node in nodes {
            inner.droppable.entry(node).or_default().push(event.clone());
        }
    }

    /// Takes the settled events whose marks `node`'s next write drops:
    /// given back when dropped, unless that write was saved
    /// ([`Droppable::saved`]).
    pub(crate) fn take_droppable<'a>(&'a self, node: &'a Id) -> Droppable<'a> {
        let events = self.lock().droppable.remove(node).unwrap_or_default();
        Droppable {
            settled: self,
            node,
            events,
            saved: false,
        }
    }
}

/// Settled events taken for one write of a node's state: their marks go
/// with that write. An update that ends without saving (it was applied
/// already, or failed) gives them back for the next write, where they
/// were lost and their marks stayed until the cap.
pub(crate) struct Droppable<'a> {
    settled: &'a Settled,
    node: &'a Id,
    pub(crate) events: Vec<Id>,
    /// The write dropping their marks was saved.
    pub(crate) saved: bool,
}

impl Drop for Droppable<'_> {
    fn drop(&mut self) {
        if !self.saved && !self.events.is_empty() {
            let events = std::mem::take(&mut self.events);
            let mut inner = self.settled.lock();
            inner
                .droppable
                .entry(self.node.clone())
                .or_default()
                .extend(events);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn update(event: &str, seq: u32) -> Update {
        Update {
            flow: format!("{event}/0"),
            event: Id::from(event),
            seq,
        }
    }

    #[test]
    fn an_applied_update_is_held_and_later_ones_are_not() {
        let mut applied = Applied::default();
        assert!(!applied.holds(&update("e1", 0)));
        applied.record(&update("e1", 0), 1);
        applied.record(&update("e1", 2), 2);
        assert!(applied.holds(&update("e1", 0)));
        assert!(
            applied.holds(&update("e1", 1)),
            "a skipped position is below the highest"
        );
        assert!(applied.holds(&update("e1", 2)));
        assert!(!applied.holds(&update("e1", 3)));
        assert!(!applied.holds(&update("e2", 0)));
    }

    #[test]
    fn plain_values_stay_plain_and_marked_ones_round_trip() {
        let value = json!({ "count": 3 });
        let plain = encode(&value, &Applied::default()).unwrap();
        assert_eq!(plain, serde_json::to_vec(&value).unwrap());
        assert_eq!(decode(&plain).unwrap(), (value.clone(), Applied::default()));

        let mut applied = Applied::default();
        applied.record(&update("e1", 0), 7);
        let marked = encode(&value, &applied).unwrap();
        assert_eq!(marked[0], 0);
        assert_eq!(decode(&marked).unwrap(), (value, applied));
    }

    #[test]
    fn unreadable_bytes_are_an_error_not_a_panic() {
        for bytes in [&b"\0"[..], b"\0{", b"{\"a\":", b"\0{\"value\":1}", b""] {
            assert!(decode(bytes).is_err(), "{bytes:?}");
        }
    }

    #[test]
    fn settled_events_lose_their_marks_at_the_next_write() {
        let settled = Settled::default();
        let (e1, e2, node) = (Id::from("e1"), Id::from("e2"), Id::from("n"));
        settled.changed(&e1, &node);
        settled.changed(&e2, &node);
        assert!(
            settled.take_droppable(&node).events.is_empty(),
            "nothing settled yet"
        );
        settled.settle("e1");
        settled.settle("unknown");
        // Taken for a write that is not saved: given back.
        assert_eq!(settled.take_droppable(&node).events, vec![e1.clone()]);
        let mut droppable = settled.take_droppable(&node);
        assert_eq!(droppable.events, vec![e1.clone()]);
        droppable.saved = true;
        let events = std::mem::take(&mut droppable.events);
        drop(droppable);
        assert!(
            settled.take_droppable(&node).events.is_empty(),
            "taken once by a saved write"
        );

        let mut applied = Applied::default();
        applied.record(&update("e1", 0), 1);
        applied.record(&update("e2", 0), 1);
        applied.drop_settled(&events);
        assert!(!applied.holds(&update("e1", 0)));
        assert!(applied.holds(&update("e2", 0)));
    }

    #[test]
    fn past_the_bound_the_oldest_mark_goes() {
        let mut applied = Applied::default();
        for i in 0..=MAX_MARKS as u64 {
            applied.record(&update(&format!("e{i}"), 0), i);
        }
        assert_eq!(applied.0.len(), MAX_MARKS);
        assert!(!applied.holds(&update("e0", 0)));
        assert!(applied.holds(&update("e1", 0)));
    }
}

//! One transaction's causal web, assembled from its records: the tree, and
//! the questions asked of it.

use std::collections::HashMap;
use std::fmt;
use std::sync::OnceLock;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Record, What, micros};
use crate::event::Causal;

/// One recorded flow: which node ran it, how long, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRun {
    /// The node that ran the flow.
    pub node: String,
    /// How long the flow ran.
    pub elapsed: Duration,
    /// The error, when the flow failed.
    pub error: Option<String>,
    /// Whether the result went to a waiting requester.
    pub answered: bool,
}

/// One event of a transaction and what happened to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Traced {
    /// The event's type.
    pub event_type: String,
    /// Its causal context: id, sender, cause, transaction, path, time.
    pub causal: Causal,
    /// The nodes that accepted it for handling.
    pub delivered_to: Vec<String>,
    /// The flows it started that have ended.
    pub flows: Vec<FlowRun>,
}

impl Traced {
    /// Whether any of the event's flows failed.
    pub fn failed(&self) -> bool {
        self.flows.iter().any(|f| f.error.is_some())
    }

    /// Nodes it was delivered to whose flows have not ended (as recorded).
    pub fn running(&self) -> Vec<&str> {
        let mut running: Vec<&str> = self.delivered_to.iter().map(String::as_str).collect();
        for flow in &self.flows {
            if let Some(at) = running.iter().position(|n| *n == flow.node) {
                running.remove(at);
            }
        }
        running
    }
}

/// The recorded events of one transaction (one correlation id): each after
/// its cause, and otherwise in the order their ids were made (time order
/// within a process); see [`crate::trace`].
///
/// Its `Display` is the causal tree: each event under its cause, with its
/// sender, the nodes that handled it, how long their flows ran and how they
/// ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Transaction {
    correlation_id: String,
    events: Vec<Traced>,
    /// Records of this transaction its recorders said they dropped.
    #[serde(default, skip_serializing_if = "is_zero")]
    dropped: u64,
    /// Where each event is, and what each caused (made when first asked).
    #[serde(skip)]
    index: OnceLock<Index>,
}

impl PartialEq for Transaction {
    fn eq(&self, other: &Transaction) -> bool {
        self.correlation_id == other.correlation_id
            && self.events == other.events
            && self.dropped == other.dropped
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The events by id, and the events each one caused, as positions in
/// `events` (lookups in constant time: a tree of 20,000 events printed in
/// quadratic time before).
#[derive(Debug, Clone, Default)]
struct Index {
    at: HashMap<String, usize>,
    caused: HashMap<String, Vec<usize>>,
}

impl Index {
    fn of(events: &[Traced]) -> Index {
        let mut index = Index::default();
        for (i, event) in events.iter().enumerate() {
            index.at.entry(event.causal.id.to_string()).or_insert(i);
            if let Some(cause) = &event.causal.causation_id {
                index.caused.entry(cause.to_string()).or_default().push(i);
            }
        }
        index
    }
}

/// Orders `events` by id (time order within one process), then moves every
/// event after its cause: ids made by two processes in one millisecond do
/// not say which came first, and a response listed before its request
/// reads wrong. Events in a cycle of causes (hostile records) go last.
fn causal_order(events: &mut Vec<Traced>) {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    events.sort_by(|a, b| a.causal.id.cmp(&b.causal.id));
    let at: HashMap<&str, usize> = events
        .iter()
        .enumerate()
        .map(|(i, e)| (e.causal.id.as_str(), i))
        .collect();
    let mut waiting: HashMap<usize, Vec<usize>> = HashMap::new();
    let mut ready = BinaryHeap::new();
    for (i, event) in events.iter().enumerate() {
        let cause = event.causal.causation_id.as_deref().and_then(|c| at.get(c));
        match cause {
            Some(&c) if c != i => waiting.entry(c).or_default().push(i),
            _ => ready.push(Reverse(i)),
        }
    }
    let mut order = Vec::with_capacity(events.len());
    let mut placed = vec![false; events.len()];
    while let Some(Reverse(i)) = ready.pop() {
        order.push(i);
        placed[i] = true;
        for effect in waiting.remove(&i).unwrap_or_default() {
            ready.push(Reverse(effect));
        }
    }
    order.extend((0..events.len()).filter(|&i| !placed[i]));
    let mut taken: Vec<Option<Traced>> = std::mem::take(events).into_iter().map(Some).collect();
    events.extend(order.into_iter().filter_map(|i| taken[i].take()));
}

impl Transaction {
    pub(super) fn from_records(correlation_id: &str, records: Vec<Record>) -> Transaction {
        let mut at: HashMap<String, usize> = HashMap::new();
        let mut events: Vec<Traced> = Vec::new();
        let mut dropped: u64 = 0;
        for record in records {
            if let What::Dropped { records } = record.what {
                // A mark, not a record of the event it names.
                dropped = dropped.saturating_add(records);
                continue;
            }
            let index = *at.entry(record.causal.id.to_string()).or_insert_with(|| {
                events.push(Traced {
                    event_type: record.event_type.clone(),
                    causal: record.causal.clone(),
                    delivered_to: Vec::new(),
                    flows: Vec::new(),
                });
                events.len() - 1
            });
            let event = &mut events[index];
            match record.what {
                What::Stamped | What::Dropped { .. } => {}
                What::Delivered { node } => event.delivered_to.push(node),
                What::Finished {
                    node,
                    elapsed_us,
                    error,
                    answered,
                } => event.flows.push(FlowRun {
                    node,
                    elapsed: micros(elapsed_us),
                    error,
                    answered,
                }),
            }
        }
        causal_order(&mut events);
        Transaction {
            correlation_id: correlation_id.to_owned(),
            events,
            dropped,
            index: OnceLock::new(),
        }
    }

    fn index(&self) -> &Index {
        self.index.get_or_init(|| Index::of(&self.events))
    }

    /// The transaction's correlation id.
    pub fn correlation_id(&self) -> &str {
        &self.correlation_id
    }

    /// Every recorded event: each after its cause, otherwise in time order.
    pub fn events(&self) -> &[Traced] {
        &self.events
    }

    /// How many records of this transaction its recorders dropped (their
    /// queue to the store was full) and said so: when not 0, the
    /// transaction is incomplete (events, deliveries or ends of flows are
    /// missing from it). 0 does not promise it is whole: a recorder that
    /// could not even say so (its process ended first) leaves no mark.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The recorded event `event_id`.
    pub fn event(&self, event_id: &str) -> Option<&Traced> {
        self.index().at.get(event_id).map(|&i| &self.events[i])
    }

    /// The events with no recorded cause: the root, and the first recorded
    /// event of any branch whose cause was not recorded.
    pub fn roots(&self) -> Vec<&Traced> {
        self.events
            .iter()
            .filter(|e| {
                e.causal
                    .causation_id
                    .as_deref()
                    .is_none_or(|cause| self.event(cause).is_none())
            })
            .collect()
    }

    /// The events `event_id` caused directly, in the order of
    /// [`Transaction::events`].
    pub fn children(&self, event_id: &str) -> Vec<&Traced> {
        self.index()
            .caused
            .get(event_id)
            .map(|at| at.iter().map(|&i| &self.events[i]).collect())
            .unwrap_or_default()
    }

    /// Why `event_id` happened: the event, its cause, its cause's cause, ...
    /// up to the first event whose cause was not recorded (the root).
    pub fn why(&self, event_id: &str) -> Vec<&Traced> {
        let mut chain = Vec::new();
        let mut next = self.event(event_id);
        while let Some(event) = next {
            if chain.len() > self.events.len() {
                break; // a cycle of ids: hostile records, not Happen's
            }
            chain.push(event);
            next = event
                .causal
                .causation_id
                .as_deref()
                .and_then(|c| self.event(c));
        }
        chain
    }

    /// Everything `event_id` caused, directly or not: parents before their
    /// children, siblings in time order.
    pub fn effects(&self, event_id: &str) -> Vec<&Traced> {
        let mut found = Vec::new();
        let mut stack: Vec<&Traced> = self.children(event_id).into_iter().rev().collect();
        while let Some(event) = stack.pop() {
            if found.len() > self.events.len() {
                break;
            }
            found.push(event);
            stack.extend(self.children(&event.causal.id).into_iter().rev());
        }
        found
    }

    /// The `n` longest flows of the transaction, longest first.
    pub fn slowest(&self, n: usize) -> Vec<(&Traced, &FlowRun)> {
        let mut flows: Vec<(&Traced, &FlowRun)> = self
            .events
            .iter()
            .flat_map(|e| e.flows.iter().map(move |f| (e, f)))
            .collect();
        flows.sort_by_key(|(_, flow)| std::cmp::Reverse(flow.elapsed));
        flows.truncate(n);
        flows
    }

    /// The flows that failed, in time order of their events.
    pub fn failed(&self) -> Vec<(&Traced, &FlowRun)> {
        self.events
            .iter()
            .flat_map(|e| e.flows.iter().map(move |f| (e, f)))
            .filter(|(_, f)| f.error.is_some())
            .collect()
    }

    fn write_tree(
        &self,
        f: &mut fmt::Formatter<'_>,
        event: &Traced,
        prefix: &str,
        last: bool,
        depth: usize,
    ) -> fmt::Result {
        let (branch, more) = match (depth, last) {
            (0, _) => ("", ""),
            (_, true) => ("└─ ", "   "),
            (_, false) => ("├─ ", "│  "),
        };
        write!(
            f,
            "{prefix}{branch}{} from {}",
            event.event_type, event.causal.sender
        )?;
        for flow in &event.flows {
            let outcome = match &flow.error {
                None => "ok".to_owned(),
                Some(error) => format!("FAILED: {error}"),
            };
            write!(f, " → {} {:.1?} {outcome}", flow.node, flow.elapsed)?;
        }
        for node in event.running() {
            write!(f, " → {node} (running)")?;
        }
        writeln!(f, "  [{}]", event.causal.id)?;
        let children = self.children(&event.causal.id);
        let inner = format!("{prefix}{more}");
        for (i, child) in children.iter().enumerate() {
            if depth > self.events.len() {
                break;
            }
            self.write_tree(f, child, &inner, i + 1 == children.len(), depth + 1)?;
        }
        Ok(())
    }
}

impl fmt::Display for Transaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "transaction {} ({} events",
            self.correlation_id,
            self.events.len()
        )?;
        if self.dropped > 0 {
            write!(
                f,
                "; INCOMPLETE: {} records dropped by the recorder",
                self.dropped
            )?;
        }
        writeln!(f, ")")?;
        for root in self.roots() {
            self.write_tree(f, root, "", true, 0)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::Id;

    fn traced(id: &str, cause: Option<&str>) -> Record {
        Record {
            event_type: format!("t-{id}"),
            causal: Causal {
                id: Id::from(id),
                sender: Id::from("n"),
                causation_id: cause.map(Id::from),
                correlation_id: Id::from("c"),
                ..Causal::default()
            },
            what: What::Stamped,
            at: 0,
        }
    }

    #[test]
    fn causes_that_loop_do_not_hang_the_queries() {
        // Records no Happen runtime would make: a causes b causes a.
        let tx =
            Transaction::from_records("c", vec![traced("a", Some("b")), traced("b", Some("a"))]);
        assert!(tx.why("a").len() <= 3);
        assert!(tx.effects("a").len() <= 3);
        assert!(tx.roots().is_empty());
        let _ = tx.to_string();
    }

    #[test]
    fn a_branch_whose_cause_was_not_recorded_is_a_root() {
        let tx = Transaction::from_records(
            "c",
            vec![
                traced("r", None),
                traced("x", Some("r")),
                traced("y", Some("elsewhere")),
            ],
        );
        let roots: Vec<&str> = tx.roots().iter().map(|e| &*e.causal.id).collect();
        assert_eq!(roots, ["r", "y"]);
        assert_eq!(tx.why("x").len(), 2);
        assert_eq!(tx.effects("r").len(), 1);
    }

    #[test]
    fn every_event_comes_after_its_cause_whatever_its_id() {
        // Ids of two processes in one millisecond: the answer ("a1") sorts
        // before the request it answers ("b1"), the request's own effect
        // ("c2") after the request; "z" is unrelated.
        let tx = Transaction::from_records(
            "c",
            vec![
                traced("b1", Some("r")),
                traced("a1", Some("b1")),
                traced("r", None),
                traced("c2", Some("b1")),
                traced("z", Some("elsewhere")),
            ],
        );
        let order: Vec<&str> = tx.events().iter().map(|e| &*e.causal.id).collect();
        assert_eq!(order, ["r", "b1", "a1", "c2", "z"]);
        let caused: Vec<&str> = tx.children("b1").iter().map(|e| &*e.causal.id).collect();
        assert_eq!(caused, ["a1", "c2"]);
        // Read back from its JSON form, it answers the same.
        let back: Transaction = serde_json::from_value(serde_json::to_value(&tx).unwrap()).unwrap();
        assert_eq!(back, tx);
        assert_eq!(back.children("b1").len(), 2);
        assert_eq!(back.event("z").map(|e| &*e.causal.id), Some("z"));
    }

    #[test]
    fn a_wide_transaction_prints_every_event_once() {
        let mut records = vec![traced("root", None)];
        records.extend((0..20_000).map(|i| traced(&format!("e{i:05}"), Some("root"))));
        let tx = Transaction::from_records("c", records);
        let text = tx.to_string();
        assert_eq!(text.lines().count(), 20_002);
        assert_eq!(tx.effects("root").len(), 20_000);
    }

    #[test]
    fn a_dropped_mark_makes_the_transaction_incomplete_not_an_event() {
        let mut mark = traced("d", Some("r"));
        mark.what = What::Dropped { records: 3 };
        let mut again = mark.clone();
        again.what = What::Dropped { records: 2 };
        let tx = Transaction::from_records("c", vec![traced("r", None), mark, again]);
        assert_eq!(tx.events().len(), 1);
        assert_eq!(tx.dropped(), 5);
        assert!(tx.to_string().contains("INCOMPLETE: 5 records dropped"));
        let back: Transaction = serde_json::from_value(serde_json::to_value(&tx).unwrap()).unwrap();
        assert_eq!(back.dropped(), 5);
        let whole = Transaction::from_records("c", vec![traced("r", None)]);
        assert_eq!(whole.dropped(), 0);
        assert!(!whole.to_string().contains("INCOMPLETE"));
    }
}

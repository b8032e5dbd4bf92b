//! The in-memory trace store: the records of the most recent transactions,
//! bounded by a number of records (a transaction alone larger than that
//! keeps its newest).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use futures::future::BoxFuture;
use tokio::sync::broadcast;

use super::{Record, TraceStore};
use crate::error::Result;
use crate::id::Id;

/// How many records a slow watcher may fall behind before it misses some.
const WATCH_BUFFER: usize = 4096;

pub(super) struct MemoryTrace {
    kept: Mutex<Kept>,
    capacity: usize,
    watchers: broadcast::Sender<Record>,
}

#[derive(Default)]
struct Kept {
    /// Records by transaction.
    transactions: HashMap<Id, Vec<Record>>,
    /// Transactions in the order they were first seen (the oldest goes
    /// first when the store is full).
    order: VecDeque<Id>,
    /// The transaction of every recorded event.
    events: HashMap<Id, Id>,
    /// Records kept in all.
    len: usize,
}

impl Kept {
    /// Forgets the `n` oldest records of `correlation`, and the index of
    /// the events none of its remaining records are about.
    fn trim(&mut self, correlation: &Id, n: usize) {
        let Some(records) = self.transactions.get_mut(correlation) else {
            return;
        };
        let n = n.min(records.len());
        let gone: Vec<Record> = records.drain(..n).collect();
        let remaining: std::collections::HashSet<&Id> =
            records.iter().map(|r| &r.causal.id).collect();
        for record in &gone {
            if !remaining.contains(&record.causal.id) {
                self.events.remove(&record.causal.id);
            }
        }
        self.len -= n;
    }
}

impl MemoryTrace {
    pub(super) fn new(capacity: usize) -> MemoryTrace {
        MemoryTrace {
            kept: Mutex::default(),
            capacity: capacity.max(1),
            watchers: broadcast::channel(WATCH_BUFFER).0,
        }
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl TraceStore for MemoryTrace {
    fn append(&self, record: Record) {
        if self.watchers.receiver_count() > 0 {
            let _ = self.watchers.send(record.clone());
        }
        let mut kept = self.kept();
        let correlation = record.causal.correlation_id.clone();
        kept.events
            .entry(record.causal.id.clone())
            .or_insert_with(|| correlation.clone());
        match kept.transactions.get_mut(&correlation) {
            Some(records) => records.push(record),
            None => {
                kept.order.push_back(correlation.clone());
                // Room for a request's records (stamped, delivered,
                // finished, its answer) without growing.
                let mut records = Vec::with_capacity(8);
                records.push(record);
                kept.transactions.insert(correlation.clone(), records);
            }
        }
        kept.len += 1;
        // Forget whole transactions, oldest first, but not the one just
        // written to...
        while kept.len > self.capacity && kept.order.len() > 1 {
            let Some(oldest) = kept.order.pop_front() else {
                break;
            };
            if let Some(records) = kept.transactions.remove(&oldest) {
                kept.len -= records.len();
                for record in &records {
                    kept.events.remove(&record.causal.id);
                }
            }
        }
        // ...which, alone larger than the store (a long import, a loop),
        // keeps its newest records: a quarter of the store goes at once, so
        // that trimming costs little per record.
        if kept.len > self.capacity {
            let excess = kept.len - self.capacity + self.capacity / 4;
            kept.trim(&correlation, excess);
        }
    }

    fn transaction(&self, correlation_id: &str) -> BoxFuture<'_, Result<Vec<Record>>> {
        let records = self
            .kept()
            .transactions
            .get(correlation_id)
            .cloned()
            .unwrap_or_default();
        Box::pin(async move { Ok(records) })
    }

    fn correlation_of(&self, event_id: &str) -> BoxFuture<'_, Result<Option<String>>> {
        let correlation = self.kept().events.get(event_id).map(|c| c.to_string());
        Box::pin(async move { Ok(correlation) })
    }

    fn watch(&self) -> broadcast::Receiver<Record> {
        self.watchers.subscribe()
    }

    fn recent(&self, limit: usize) -> Vec<String> {
        let kept = self.kept();
        kept.order
            .iter()
            .rev()
            .take(limit)
            .map(|c| c.to_string())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::test_record as record;

    #[tokio::test]
    async fn the_oldest_transactions_are_forgotten_whole() {
        let store = MemoryTrace::new(4);
        for correlation in ["a", "a", "b", "b", "c"] {
            store.append(record(correlation));
        }
        // Five records for a capacity of four: "a" (the oldest) went whole.
        assert!(store.transaction("a").await.unwrap().is_empty());
        assert_eq!(store.transaction("b").await.unwrap().len(), 2);
        assert_eq!(store.transaction("c").await.unwrap().len(), 1);
        assert_eq!(store.recent(5), ["c", "b"]);
        assert_eq!(store.recent(1), ["c"]);
        let kept = store.kept();
        assert_eq!(kept.len, 3);
        assert_eq!(kept.events.len(), 3, "the forgotten events' index went too");
    }

    #[tokio::test]
    async fn one_transaction_larger_than_the_store_keeps_its_newest_records() {
        let store = MemoryTrace::new(100);
        let mut ids = Vec::new();
        for _ in 0..20_000 {
            let r = record("big");
            ids.push(r.causal.id.clone());
            store.append(r);
        }
        let kept = store.transaction("big").await.unwrap();
        assert!(kept.len() <= 100, "{} records kept", kept.len());
        assert_eq!(kept.last().unwrap().causal.id, *ids.last().unwrap());
        {
            let kept = store.kept();
            assert!(kept.len <= 100);
            assert_eq!(kept.events.len(), kept.len, "the index follows the records");
        }
        store.append(record("next"));
        assert_eq!(store.transaction("next").await.unwrap().len(), 1);
        assert!(store.kept().len <= 100);
    }
}

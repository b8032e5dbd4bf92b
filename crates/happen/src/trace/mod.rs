//! Recording the causal web and asking it questions.
//!
//! Every event knows its sender, its cause and its transaction. A
//! [`Recorder`] keeps those records as events move, an
//! [`Observer`] like any other, and answers from
//! them: the tree of one transaction ([`Recorder::transaction`]), why an
//! event happened ([`Recorder::why`]: its chain of causes back to the root),
//! what it caused ([`Recorder::effects`]), and which branches were slowest
//! or failed ([`Transaction::slowest`], [`Transaction::failed`]).
//!
//! Recording is off unless a recorder is installed
//! ([`HappenConfig::recorder`](crate::HappenConfig::recorder)); with none, the
//! runtime pays one branch per event. Where the records are kept:
//!
//! - [`Recorder::in_memory`]: the last transactions, bounded by a number of
//!   records (the oldest transactions go first). It sees what happens in
//!   this process.
//! - `Recorder::on_disk` (feature `redb`): the same, in a redb file that
//!   outlives the process, bounded by a number of records (the oldest go
//!   first).
//! - `Recorder::jetstream` (feature `nats`): a JetStream stream with a
//!   retention, written by every process of a NATS system, so the records of
//!   one transaction from all of them are read back together, from any
//!   process (this is what `happen trace --nats URL` reads). Set it up with
//!   `NatsConfig::record`.
//!
//! Payloads are not recorded: a record is the event's type, its causal
//! context, and what happened to it (stamped by its sender, delivered to a
//! node, a flow finished there, how long it ran and how it ended).
//!
//! ```
//! use happen::prelude::*;
//! use happen::trace::Recorder;
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> happen::Result<()> {
//! let recorder = Recorder::in_memory(10_000);
//! let happen = Happen::embedded_with(HappenConfig::default().recorder(recorder.clone()));
//! let shop = happen.node("shop")?;
//! let bank = happen.node("bank")?;
//! bank.on("charge", |_e: Event, _cx: Context| async { json!("ok") })?;
//! shop.on("order", |_e: Event, cx: Context| async move {
//!     cx.node().send("bank", Event::new("charge", json!(10))).response().await
//! })?;
//! let sent = shop.send(&shop, Event::new("order", json!({})));
//! let order = sent.id().to_owned();
//! sent.response().await?;
//!
//! let tx = recorder.transaction(&order).await?;
//! let charge = tx.events().iter().find(|e| e.event_type == "charge").unwrap();
//! // Why was the bank charged? Because of the order.
//! let why: Vec<&str> = tx.why(&charge.causal.id).iter().map(|e| e.event_type.as_str()).collect();
//! assert_eq!(why, ["charge", "order"]);
//! println!("{tx}"); // the causal tree, with nodes, durations and outcomes
//! # Ok(()) }
//! ```

#[cfg(feature = "redb")]
mod disk;
#[cfg(feature = "nats")]
mod jetstream;
#[cfg(any(feature = "nats", feature = "redb"))]
mod lost;
mod memory;
mod transaction;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::event::{Causal, Event};
use crate::observe::{Finished, Observer};

#[cfg(feature = "nats")]
pub use jetstream::TraceRetention;
pub use transaction::{FlowRun, Traced, Transaction};

/// One fact about one event, as a recorder keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// The event's type.
    pub event_type: String,
    /// The event's causal context (without its hash).
    pub causal: Causal,
    /// What happened to the event.
    pub what: What,
    /// When it was recorded, in milliseconds since the Unix epoch.
    pub at: u64,
}

/// What a [`Record`] says happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
#[non_exhaustive]
pub enum What {
    /// The event was stamped by its sender and left it.
    Stamped,
    /// The event was accepted for handling by `node`.
    #[serde(rename_all = "camelCase")]
    Delivered {
        /// The receiving node.
        node: String,
    },
    /// A flow of `node` that the event started ended.
    #[serde(rename_all = "camelCase")]
    Finished {
        /// The node whose flow ended.
        node: String,
        /// How long the flow ran, in microseconds.
        elapsed_us: u64,
        /// The error, when the flow failed.
        error: Option<String>,
        /// Whether the result went to a waiting requester.
        answered: bool,
    },
    /// Not a fact about the event: `records` records of its transaction,
    /// starting with one about this event, could not be kept (the
    /// recorder's queue to its store was full). Written by the recorder
    /// once it has room again, so that the trace says it is incomplete
    /// ([`Transaction::dropped`]).
    #[serde(rename_all = "camelCase")]
    Dropped {
        /// How many records were dropped.
        records: u64,
    },
}

impl Record {
    fn of(event: &Event, what: What) -> Record {
        let mut causal = event.causal().clone();
        causal.hash = None;
        Record {
            event_type: event.event_type().to_owned(),
            causal,
            what,
            at: crate::event::now_millis(),
        }
    }
}

/// Where a recorder keeps its records.
pub(crate) trait TraceStore: Send + Sync + 'static {
    /// Keeps `record` (quickly: this runs on the thread handling events).
    fn append(&self, record: Record);
    /// Every record of the transaction `correlation_id`, in the order kept.
    fn transaction(&self, correlation_id: &str) -> BoxFuture<'_, Result<Vec<Record>>>;
    /// The transaction an event belongs to, if the event was recorded.
    fn correlation_of(&self, event_id: &str) -> BoxFuture<'_, Result<Option<String>>>;
    /// Records that could not be kept (a full queue to the store).
    fn dropped(&self) -> u64 {
        0
    }
    /// Every record kept from now on, as it is kept.
    fn watch(&self) -> tokio::sync::broadcast::Receiver<Record>;
    /// Waits until every record appended so far is kept.
    fn flush(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
    /// Waits until watchers see every record kept from now on.
    fn watching(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
    /// The correlation ids of the most recent transactions, newest first
    /// (only where the store can list them cheaply).
    fn recent(&self, limit: usize) -> Vec<String> {
        let _ = limit;
        Vec::new()
    }
}

/// Keeps the causal web of a runtime and answers questions about it; see
/// the [module docs](self). Cloning is cheap (the clones share the records).
#[derive(Clone)]
pub struct Recorder {
    store: Arc<dyn TraceStore>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}

impl Recorder {
    /// A recorder that keeps up to `capacity` records in memory; when full,
    /// the oldest transactions are forgotten whole, and a transaction that
    /// alone outgrows it keeps its newest records.
    pub fn in_memory(capacity: usize) -> Recorder {
        Recorder {
            store: Arc::new(memory::MemoryTrace::new(capacity)),
        }
    }

    #[cfg(any(feature = "nats", feature = "redb"))]
    pub(crate) fn with_store(store: Arc<dyn TraceStore>) -> Recorder {
        Recorder { store }
    }

    /// Everything recorded of the transaction `correlation_id` (empty if
    /// nothing was).
    pub async fn transaction(&self, correlation_id: &str) -> Result<Transaction> {
        let records = self.store.transaction(correlation_id).await?;
        Ok(Transaction::from_records(correlation_id, records))
    }

    /// The transaction `event_id` belongs to, if the event was recorded.
    pub async fn transaction_of(&self, event_id: &str) -> Result<Option<Transaction>> {
        match self.store.correlation_of(event_id).await? {
            Some(correlation) => Ok(Some(self.transaction(&correlation).await?)),
            None => Ok(None),
        }
    }

    /// Why `event_id` happened: the event, then its cause, its cause's cause,
    /// ... up to the root of its transaction (as far as it was recorded).
    /// Empty if the event was not recorded.
    pub async fn why(&self, event_id: &str) -> Result<Vec<Traced>> {
        Ok(self
            .transaction_of(event_id)
            .await?
            .map(|tx| tx.why(event_id).into_iter().cloned().collect())
            .unwrap_or_default())
    }

    /// What `event_id` caused: every event descending from it, parents
    /// before children. Empty if the event was not recorded or caused
    /// nothing.
    pub async fn effects(&self, event_id: &str) -> Result<Vec<Traced>> {
        Ok(self
            .transaction_of(event_id)
            .await?
            .map(|tx| tx.effects(event_id).into_iter().cloned().collect())
            .unwrap_or_default())
    }

    /// Every record from now on, as it is kept (a lagging receiver misses
    /// records rather than slowing the runtime down).
    pub fn watch(&self) -> tokio::sync::broadcast::Receiver<Record> {
        self.store.watch()
    }

    /// Waits until [`Recorder::watch`]'s receivers get every record kept
    /// from now on (for a JetStream recorder, whose watch follows every
    /// process through a subscription: until the server has that
    /// subscription). Call it after `watch`.
    pub async fn watching(&self) {
        self.store.watching().await;
    }

    /// Waits until every record made so far in this process is kept (for a
    /// JetStream recorder: with the server), so that a reader anywhere
    /// sees it.
    pub async fn flush(&self) {
        self.store.flush().await;
    }

    /// Keeps `record` as if this recorder had observed it: records read
    /// elsewhere (another recorder's [`watch`](Recorder::watch), a file)
    /// become queryable here.
    pub fn keep(&self, record: Record) {
        self.store.append(record);
    }

    /// The most recent transactions this recorder keeps, newest first, as
    /// correlation ids (by the time each was first seen). An in-memory
    /// recorder lists what it keeps; a JetStream recorder lists nothing
    /// (follow [`Recorder::watch`] instead).
    pub fn recent(&self, limit: usize) -> Vec<String> {
        self.store.recent(limit)
    }

    /// How many records could not be kept (the store fell behind). The
    /// JetStream and on-disk recorders also say so in the trace, for its
    /// readers (in other processes too): see [`Transaction::dropped`].
    pub fn dropped(&self) -> u64 {
        self.store.dropped()
    }
}

impl Observer for Recorder {
    fn stamped(&self, event: &Event) {
        self.store.append(Record::of(event, What::Stamped));
    }

    fn delivered(&self, node: &str, event: &Event) {
        self.store.append(Record::of(
            event,
            What::Delivered {
                node: node.to_owned(),
            },
        ));
    }

    fn finished(&self, node: &str, event: &Event, finished: &Finished<'_>) {
        self.store.append(Record::of(
            event,
            What::Finished {
                node: node.to_owned(),
                elapsed_us: u64::try_from(finished.elapsed.as_micros()).unwrap_or(u64::MAX),
                error: finished.error.map(|e| e.to_string()),
                answered: finished.answered,
            },
        ));
    }
}

/// A stamped root event's record, in transaction `correlation` (tests).
#[cfg(test)]
pub(crate) fn test_record(correlation: &str) -> Record {
    let mut event = Event::new("t", serde_json::Value::Null).with_correlation_id(correlation);
    crate::event::stamp(&mut event, &crate::id::Id::from("n"), None);
    Record::of(&event, What::Stamped)
}

/// How long a flow ran, from a record's microseconds.
pub(crate) fn micros(us: u64) -> Duration {
    Duration::from_micros(us)
}

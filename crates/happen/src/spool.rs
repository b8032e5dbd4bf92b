//! The embedded runtime's spool: with [`Happen::embedded_on_disk`], an event
//! for a durable node is written to the redb file before the node gets it
//! and removed when its flow completes (or it is dead-lettered), so that
//! events waiting, running or being retried when the process stops are
//! handed to the node again after a restart.
//!
//! One writer task takes events in the order they were sent, writes every
//! event waiting at that moment in one commit, then hands them to their
//! nodes in the same order. A commit that fails is written again with the
//! next one, so an event is never removed on disk before the events queued
//! ahead of it (those its flow emitted) are written. After a restart, a durable node gets its
//! spooled events (in the order of their ids, which is the order they were
//! made) as soon as a handler that takes them is registered.
//!
//! [`Happen::embedded_on_disk`]: crate::Happen::embedded_on_disk

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use tokio::runtime::Handle;
use tokio::sync::mpsc;

use crate::delivery::{self, Delivery};
use crate::error::{HappenError, Result};
use crate::event::Event;
use crate::node::NodeCore;
use crate::receipt::{Receipt, ReceiptTx};
use crate::store::disk::{Disk, Table};

/// What the writer does, in order.
enum Op {
    Put {
        key: String,
        bytes: Vec<u8>,
        node: Arc<NodeCore>,
        delivery: Delivery,
    },
    /// Forgets an event; `then` runs once that is on disk.
    Remove {
        key: String,
        then: Box<dyn FnOnce() + Send>,
    },
    /// Answered once everything before it is written: `Ok`, or the error
    /// of a commit since the last marker.
    Marker(ReceiptTx),
}

/// Events for durable nodes, on disk.
pub(crate) struct Spool {
    disk: Disk,
    /// What the file held when it was opened, not yet handed out.
    pending: Mutex<BTreeMap<String, Vec<u8>>>,
    writer: OnceLock<mpsc::UnboundedSender<Op>>,
}

fn key(node: &str, event_id: &str) -> String {
    format!("{node}\u{0}{event_id}")
}

/// The most operations written in one commit.
const BATCH: usize = 512;

impl Spool {
    pub(crate) fn new(disk: Disk, pending: BTreeMap<String, Vec<u8>>) -> Spool {
        Spool {
            disk,
            pending: Mutex::new(pending),
            writer: OnceLock::new(),
        }
    }

    /// The writer task's queue, starting the task on `handle` (or the
    /// current tokio runtime) the first time.
    fn writer(self: &Arc<Self>, handle: Option<&Handle>) -> &mpsc::UnboundedSender<Op> {
        self.writer.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            // Weak: the database file is released as soon as the runtime
            // and its nodes are gone, not when this task next runs.
            let task = write(Arc::downgrade(self), rx);
            match handle.cloned().or_else(|| Handle::try_current().ok()) {
                Some(handle) => drop(handle.spawn(task)),
                None => tracing::error!("no tokio runtime to write the spool from"),
            }
            tx
        })
    }

    /// Writes the event of `delivery` to disk, then hands it to `node`.
    pub(crate) fn store(self: &Arc<Self>, node: &Arc<NodeCore>, delivery: Delivery) -> Result<()> {
        let runtime = node.runtime_inner();
        let handle = runtime.as_ref().and_then(|r| r.handle());
        let bytes = serde_json::to_vec(&delivery.event)
            .map_err(|e| HappenError::codec("cannot spool an event", e))?;
        let key = key(node.id(), delivery.event.id());
        let op = Op::Put {
            key,
            bytes,
            node: node.clone(),
            delivery,
        };
        self.writer(handle)
            .send(op)
            .map_err(|_| HappenError::Shutdown)
    }

    /// Forgets the event `event_id` of `node` (its flow completed, or it
    /// was dead-lettered), then runs `then`.
    pub(crate) fn remove(
        self: &Arc<Self>,
        node: &str,
        event_id: &str,
        then: impl FnOnce() + Send + 'static,
    ) {
        let op = Op::Remove {
            key: key(node, event_id),
            then: Box::new(then),
        };
        let _ = self.writer(None).send(op);
    }

    /// Resolves once everything handed to the spool so far is on disk.
    pub(crate) async fn flush(self: &Arc<Self>) {
        let _ = self.receipt().await;
    }

    /// A receipt for everything handed to the spool so far: resolved once
    /// it is on disk, or with the error of a failed commit.
    pub(crate) fn receipt(self: &Arc<Self>) -> Receipt {
        let (tx, receipt) = Receipt::waiting();
        match self.writer(None).send(Op::Marker(tx)) {
            Ok(()) => receipt,
            Err(_) => Receipt::failed(HappenError::Shutdown),
        }
    }

    /// Takes the events of `node` left from the last run that `takes`
    /// accepts (by event type), oldest first.
    pub(crate) fn take_pending(&self, node: &str, takes: impl Fn(&str) -> bool) -> Vec<Event> {
        let prefix = key(node, "");
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let keys: Vec<String> = pending
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect();
        let mut events = Vec::new();
        let mut unreadable = Vec::new();
        for k in keys {
            match serde_json::from_slice::<Event>(&pending[&k]) {
                Ok(event) if takes(event.event_type()) => {
                    pending.remove(&k);
                    events.push(event);
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(node, %error, "an unreadable spooled event is set aside in the table spool_unreadable");
                    if let Some(bytes) = pending.remove(&k) {
                        unreadable.push((k, bytes));
                    }
                }
            }
        }
        if !unreadable.is_empty() {
            self.set_aside(unreadable);
        }
        events
    }

    /// Moves rows that cannot be read back out of the spool, so that they
    /// are reported once, not at every start (kept in `spool_unreadable`).
    fn set_aside(&self, rows: Vec<(String, Vec<u8>)>) {
        let Ok(handle) = Handle::try_current() else {
            return; // left where they are: reported again next time
        };
        let disk = self.disk.clone();
        handle.spawn(async move {
            let keys: Rows = rows.iter().map(|(k, _)| (k.clone(), None)).collect();
            let kept: Rows = rows.into_iter().map(|(k, v)| (k, Some(v))).collect();
            // Kept first: a crash between the two leaves the row in both
            // tables, and the next start moves it again.
            if disk.write_rows(Table::SpoolUnreadable, kept).await.is_ok()
                && let Err((error, _)) = disk.write_rows(Table::Spool, keys).await
            {
                tracing::warn!(%error, "unreadable spooled events could not be removed");
            }
        });
    }
}

/// How long the writer waits before writing again the rows of a failed
/// commit when nothing new arrives.
const RETRY_AFTER: std::time::Duration = std::time::Duration::from_millis(500);

/// Rows to write, in order.
type Rows = Vec<(String, Option<Vec<u8>>)>;

/// The rows of a failed commit, each key once, with its last value: one
/// commit applies its rows in order, so the outcome is the same, and what
/// is kept while the disk keeps failing grows with the keys touched, not
/// with every write and removal (an event written and then removed is kept
/// as its removal alone, without its bytes).
fn squash(rows: Rows) -> Rows {
    let mut seen = std::collections::HashSet::with_capacity(rows.len());
    let mut kept: Rows = rows
        .into_iter()
        .rev()
        .filter(|(key, _)| seen.insert(key.clone()))
        .collect();
    kept.reverse();
    kept
}

/// Writes what arrives in batches (one commit each), then hands the
/// written events to their nodes in order. The rows of a failed commit are
/// written again first in the next one (and on a timer while nothing new
/// arrives), and the removals' follow-ups wait for it: a removal is never
/// on disk without the writes queued before it, so an event whose cause
/// was forgotten is on disk.
async fn write(spool: Weak<Spool>, mut rx: mpsc::UnboundedReceiver<Op>) {
    // A failed commit, until a marker has reported it.
    let mut failed: Option<HappenError> = None;
    // The rows of failed commits, and the follow-ups of their removals.
    let mut carried: Rows = Vec::new();
    let mut carried_then: Vec<Box<dyn FnOnce() + Send>> = Vec::new();
    loop {
        let mut batch = Vec::new();
        let next = if carried.is_empty() {
            rx.recv().await
        } else {
            tokio::select! {
                op = rx.recv() => op,
                () = tokio::time::sleep(RETRY_AFTER) => None,
            }
        };
        match next {
            Some(op) => batch.push(op),
            None if carried.is_empty() => return,
            None => {}
        }
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let mut rows = std::mem::take(&mut carried);
        rows.extend(batch.iter_mut().filter_map(|op| match op {
            Op::Put { key, bytes, .. } => Some((key.clone(), Some(std::mem::take(bytes)))),
            Op::Remove { key, .. } => Some((std::mem::take(key), None)),
            Op::Marker(_) => None,
        }));
        let written = match (rows.is_empty(), spool.upgrade()) {
            (true, _) => Ok(()),
            (false, Some(spool)) => spool.disk.write_rows(Table::Spool, rows).await,
            (false, None) => return,
        };
        let written = match written {
            Ok(()) => {
                for then in carried_then.drain(..) {
                    then();
                }
                true
            }
            Err((error, rows)) => {
                tracing::error!(%error, rows = rows.len(), "spool not written; written again with the next commit");
                failed = Some(error);
                carried = squash(rows);
                false
            }
        };
        let mut reported = false;
        for op in batch {
            match op {
                // Handed over either way: a failed write costs durability
                // across a restart until a later commit holds it, not the
                // event.
                Op::Put { node, delivery, .. } => {
                    let _ = delivery::deliver(&node, delivery);
                }
                Op::Marker(done) => {
                    let _ = done.send(failed.clone().map_or(Ok(()), Err));
                    reported = true;
                }
                Op::Remove { then, .. } if written => then(),
                Op::Remove { then, .. } => carried_then.push(then),
            }
        }
        if reported {
            failed = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use serde_json::json;

    use crate::store::disk::Table;
    use crate::{Context, DeliveryConfig, Event, Happen, HappenConfig, HappenError, NodeConfig};

    #[test]
    fn carried_rows_keep_each_key_once_with_its_last_value() {
        let row = |k: &str, v: Option<&str>| (k.to_owned(), v.map(|v| v.as_bytes().to_vec()));
        let rows = vec![
            row("a", Some("1")),
            row("b", Some("2")),
            row("a", None),
            row("c", Some("3")),
            row("b", Some("4")),
        ];
        assert_eq!(
            super::squash(rows),
            vec![row("a", None), row("c", Some("3")), row("b", Some("4"))]
        );
    }

    /// A durable node's events reach its queue only once on disk, after the
    /// requester may have started to wait: waiting for one that would
    /// deadlock is still refused at once, not left to time out.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_awaited_request_that_would_deadlock_a_spooled_node_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let config = HappenConfig::default().request_timeout(Duration::from_secs(30));
        let happen = Happen::embedded_on_disk(dir.path(), config).unwrap();
        let durable = NodeConfig::new()
            .max_concurrent(1)
            .delivery(DeliveryConfig::at_least_once());
        let node = happen.node_with("self-asker", durable).unwrap();
        node.on("inner", |_e: Event, _cx: Context| async { json!("inner") })
            .unwrap();
        node.on("outer", |_e: Event, cx: Context| async move {
            match cx
                .node()
                .send("self-asker", Event::new("inner", json!(null)))
                .await
            {
                Err(HappenError::Deadlock { chain, .. }) => json!({ "deadlock": chain }),
                other => json!({ "other": format!("{other:?}") }),
            }
        })
        .unwrap();
        let client = happen.node("client").unwrap();
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            client.send(&node, Event::new("outer", json!(null))),
        )
        .await
        .expect("answered well before the request's timeout")
        .unwrap();
        assert_eq!(answer, json!({ "deadlock": ["self-asker", "self-asker"] }));
        happen.shutdown().await;
    }

    fn deep_context() -> serde_json::Value {
        (0..=crate::depth::MAX_DEPTH).fold(json!(1), |inner, _| json!({ "k": inner }))
    }

    /// An event whose payload could not be read back from disk is refused
    /// when sent, not spooled (it was acknowledged, then never handed back
    /// after a restart).
    #[tokio::test]
    async fn a_payload_nesting_too_deep_is_refused_and_not_spooled() {
        let dir = tempfile::tempdir().unwrap();
        let happen = Happen::embedded_on_disk(dir.path(), HappenConfig::default()).unwrap();
        let durable = NodeConfig::new().delivery(DeliveryConfig::at_least_once());
        let sink = happen.node_with("sink", durable).unwrap();
        sink.on("item", |_e: Event, _cx: Context| async {}).unwrap();
        let spool = sink.core().spool().unwrap().clone();
        let shop = happen.node("shop").unwrap();
        let deep = (0..=crate::depth::MAX_DEPTH).fold(json!(1), |inner, _| json!([inner]));
        let refused = shop.tell("sink", Event::new("item", deep));
        assert!(
            matches!(refused, Err(HappenError::TooDeep { limit: 100, .. })),
            "{refused:?}"
        );
        // A request hears why; so does a deep application context value.
        let asked = shop
            .send(
                "sink",
                Event::new("item", json!(null)).with_context("deep", deep_context()),
            )
            .await;
        assert!(
            matches!(asked, Err(HappenError::TooDeep { .. })),
            "{asked:?}"
        );
        let deepest = (0..crate::depth::MAX_DEPTH).fold(json!(1), |inner, _| json!([inner]));
        shop.tell("sink", Event::new("item", deepest))
            .unwrap()
            .await
            .unwrap();
        spool.flush().await;
        happen.shutdown().await;
    }

    /// A commit that fails is written again with the next one, so a flow's
    /// completion (its event's removal) never reaches the disk without the
    /// event the flow emitted before it: here the relay's emitted event
    /// fails to be written, the relay's flow ends, and the disk must still
    /// hold the emitted event once the relay's event is gone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_commit_is_written_again_before_a_later_removal() {
        let dir = tempfile::tempdir().unwrap();
        let happen = Happen::embedded_on_disk(dir.path(), HappenConfig::default()).unwrap();
        let durable = || NodeConfig::new().delivery(DeliveryConfig::at_least_once());
        let relay = happen.node_with("relay", durable()).unwrap();
        let sink = happen.node_with("sink", durable()).unwrap();
        let spool = relay.core().spool().unwrap().clone();
        // The sink holds its event (on disk) until the gate opens.
        let (gate, gate_rx) = tokio::sync::watch::channel(false);
        sink.on("item", move |_e: Event, _cx: Context| {
            let mut gate = gate_rx.clone();
            async move {
                let _ = gate.wait_for(|open| *open).await;
            }
        })
        .unwrap();
        let (ended, mut relay_ended) = tokio::sync::mpsc::unbounded_channel();
        let s = spool.clone();
        relay
            .on("item", move |e: Event, cx: Context| {
                let (spool, ended) = (s.clone(), ended.clone());
                async move {
                    // The commit holding what this flow emits fails.
                    spool.disk.fail_next.store(true, Ordering::SeqCst);
                    let stored = cx
                        .node()
                        .tell("sink", Event::new("item", e.payload().clone()))?
                        .await;
                    let _ = ended.send(stored.is_err());
                    Ok::<_, HappenError>(())
                }
            })
            .unwrap();
        let shop = happen.node("shop").unwrap();
        shop.tell("relay", Event::new("item", json!(1)))
            .unwrap()
            .await
            .unwrap();
        let write_failed = tokio::time::timeout(Duration::from_secs(5), relay_ended.recv())
            .await
            .expect("the relay's flow ended")
            .unwrap();
        assert!(write_failed, "the emitted event's commit failed");
        // The relay's event is removed once its flow ended: wait for that
        // commit (the relay's flow has ended; its removal follows).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            spool.flush().await;
            let keys = spool.disk.keys(Table::Spool);
            if !keys.iter().any(|k| k.starts_with("relay\u{0}")) {
                assert_eq!(keys.len(), 1, "{keys:?}");
                assert!(
                    keys[0].starts_with("sink\u{0}"),
                    "the emitted event is on disk: {keys:?}"
                );
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the relay's event was not removed: {keys:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        gate.send(true).unwrap();
        happen.shutdown().await;
    }

    /// A spooled row that cannot be read back is reported once: set aside
    /// in its own table, not left to be warned about at every start.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unreadable_spooled_row_is_set_aside_once() {
        let dir = tempfile::tempdir().unwrap();
        let durable = || NodeConfig::new().delivery(DeliveryConfig::at_least_once());
        let bogus = super::key("n", "bogus");
        {
            let happen = Happen::embedded_on_disk(dir.path(), HappenConfig::default()).unwrap();
            let node = happen.node_with("n", durable()).unwrap();
            let spool = node.core().spool().unwrap().clone();
            spool
                .disk
                .write_rows(
                    Table::Spool,
                    vec![(bogus.clone(), Some(b"not an event".to_vec()))],
                )
                .await
                .map_err(|(e, _)| e)
                .unwrap();
            happen.shutdown().await;
        }
        for start in 0..2 {
            let happen = Happen::embedded_on_disk(dir.path(), HappenConfig::default()).unwrap();
            let node = happen.node_with("n", durable()).unwrap();
            let spool = node.core().spool().unwrap().clone();
            node.on("item", |_e: Event, _cx: Context| async {}).unwrap();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while spool.disk.keys(Table::Spool).contains(&bogus) {
                assert!(start == 0, "still in the spool at the second start");
                assert!(tokio::time::Instant::now() < deadline, "never set aside");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert_eq!(spool.disk.keys(Table::SpoolUnreadable), vec![bogus.clone()]);
            happen.shutdown().await;
        }
    }
}

//! The embedded runtime's spool: with [`Happen::embedded_on_disk`], an event
//! for a durable node is written to the redb file before the node gets it
//! and removed when its flow completes (or it is dead-lettered), so that
//! events waiting, running or being retried when the process stops are
//! handed to the node again after a restart.
//!
//! One writer task takes events in the order they were sent, writes every
//! event waiting at that moment in one commit, then hands them to their
//! nodes in the same order. After a restart, a durable node gets its
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
        for k in keys {
            match serde_json::from_slice::<Event>(&pending[&k]) {
                Ok(event) if takes(event.event_type()) => {
                    pending.remove(&k);
                    events.push(event);
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(node, %error, "an unreadable spooled event is left on disk");
                    pending.remove(&k);
                }
            }
        }
        events
    }
}

/// Writes what arrives in batches (one commit each), then hands the
/// written events to their nodes in order.
async fn write(spool: Weak<Spool>, mut rx: mpsc::UnboundedReceiver<Op>) {
    // A failed commit, until a marker has reported it.
    let mut failed: Option<HappenError> = None;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let rows: Vec<(String, Option<Vec<u8>>)> = batch
            .iter_mut()
            .filter_map(|op| match op {
                Op::Put { key, bytes, .. } => Some((key.clone(), Some(std::mem::take(bytes)))),
                Op::Remove { key, .. } => Some((std::mem::take(key), None)),
                Op::Marker(_) => None,
            })
            .collect();
        let written = match (rows.is_empty(), spool.upgrade()) {
            (true, _) => Ok(()),
            (false, Some(spool)) => {
                let disk = spool.disk.clone();
                drop(spool);
                disk.write_many(Table::Spool, rows).await
            }
            (false, None) => return,
        };
        if let Err(error) = &written {
            tracing::error!(%error, "spool not written; these events are not kept across a restart");
            failed = Some(error.clone());
        }
        let mut reported = false;
        for op in batch {
            match op {
                // Handed over either way: a failed write costs durability
                // across a restart, not the event.
                Op::Put { node, delivery, .. } => {
                    let _ = delivery::deliver(&node, delivery);
                }
                Op::Marker(done) => {
                    let _ = done.send(failed.clone().map_or(Ok(()), Err));
                    reported = true;
                }
                Op::Remove { then, .. } => {
                    if written.is_ok() {
                        then();
                    }
                }
            }
        }
        if reported {
            failed = None;
        }
    }
}

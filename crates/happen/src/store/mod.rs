//! Where state lives: node state, global state and state history, behind one
//! trait so that the state API is the same whatever the backend.
//!
//! - [`memory`]: in this process, optionally written through to a redb file
//!   so that it survives a restart (the embedded runtime);
//! - [`jetstream`]: NATS JetStream key-value buckets and a history stream
//!   (the NATS runtime).

pub(crate) mod applied;
pub(crate) mod disk;
#[cfg(feature = "nats")]
pub(crate) mod jetstream;
#[cfg(feature = "nats")]
pub(crate) mod large;
pub(crate) mod memory;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use serde_json::Value;

use crate::error::Result;
use crate::state::global::GlobalChange;
use crate::state::temporal::Snapshot;
use applied::Applied;

/// A stored value and its revision (revisions start at 1 and grow).
#[derive(Debug, Clone)]
pub(crate) struct Versioned {
    pub(crate) value: Value,
    pub(crate) revision: u64,
    /// Updates of unfinished exactly-once flows the value holds.
    pub(crate) applied: Applied,
}

/// The outcome of a conditional save.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Saved {
    /// Saved; the new revision.
    Done(u64),
    /// Someone else saved first; reload and retry.
    Conflict,
}

pub(crate) trait Store: Send + Sync + 'static {
    /// Where events for durable nodes are kept across a restart (the
    /// embedded runtime on disk).
    #[cfg(feature = "redb")]
    fn spool(&self) -> Option<std::sync::Arc<crate::spool::Spool>> {
        None
    }

    /// A node's state, if it has any.
    fn load<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<Option<Versioned>>>;
    /// Saves a node's state, with the marks of the exactly-once updates it
    /// holds, if its revision is still `expected` (`None`: the node has no
    /// state yet).
    fn save<'a>(
        &'a self,
        node: &'a str,
        value: &'a Value,
        applied: &'a Applied,
        expected: Option<u64>,
    ) -> BoxFuture<'a, Result<Saved>>;
    /// Appends a snapshot to a node's history (retention applies): the
    /// state saved at `revision`, by which the history is ordered.
    fn record<'a>(
        &'a self,
        node: &'a str,
        snapshot: Snapshot,
        revision: u64,
    ) -> BoxFuture<'a, Result<()>>;
    /// Fails with [`HappenError::PayloadTooLarge`](crate::HappenError::PayloadTooLarge)
    /// if `snapshot` could not be recorded for its size, so that a state
    /// change whose snapshot would fail is refused before it is saved.
    fn check_record(&self, _snapshot: &Snapshot) -> Result<()> {
        Ok(())
    }
    /// A node's history, oldest first (in the order of the revisions its
    /// snapshots were saved at).
    fn history<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<Vec<Snapshot>>>;
    /// A global value.
    fn global_get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Value>>>;
    /// Sets a global value.
    fn global_set<'a>(&'a self, key: &'a str, value: &'a Value) -> BoxFuture<'a, Result<()>>;
    /// Deletes a global value (no error if absent).
    fn global_delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<()>>;
    /// Every global key, sorted.
    fn global_keys(&self) -> BoxFuture<'_, Result<Vec<String>>>;
    /// Changes to one global key (or all keys), from now on.
    fn global_watch<'a>(
        &'a self,
        key: Option<&'a str>,
    ) -> BoxFuture<'a, Result<BoxStream<'static, GlobalChange>>>;
}

/// The store of a NATS runtime connected without JetStream: every state
/// operation says what is missing.
#[cfg(feature = "nats")]
pub(crate) struct Unavailable;

#[cfg(feature = "nats")]
fn unavailable<T: Send + 'static>() -> BoxFuture<'static, Result<T>> {
    Box::pin(std::future::ready(Err(crate::HappenError::Config(
        "state and global state need JetStream; connect with NatsConfig::jetstream(true) to a server started with -js".into(),
    ))))
}

#[cfg(feature = "nats")]
impl Store for Unavailable {
    fn load<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Option<Versioned>>> {
        unavailable()
    }
    fn save<'a>(
        &'a self,
        _: &'a str,
        _: &'a Value,
        _: &'a Applied,
        _: Option<u64>,
    ) -> BoxFuture<'a, Result<Saved>> {
        unavailable()
    }
    fn record<'a>(&'a self, _: &'a str, _: Snapshot, _: u64) -> BoxFuture<'a, Result<()>> {
        unavailable()
    }
    fn history<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Vec<Snapshot>>> {
        unavailable()
    }
    fn global_get<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Option<Value>>> {
        unavailable()
    }
    fn global_set<'a>(&'a self, _: &'a str, _: &'a Value) -> BoxFuture<'a, Result<()>> {
        unavailable()
    }
    fn global_delete<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<()>> {
        unavailable()
    }
    fn global_keys(&self) -> BoxFuture<'_, Result<Vec<String>>> {
        unavailable()
    }
    fn global_watch<'a>(
        &'a self,
        _: Option<&'a str>,
    ) -> BoxFuture<'a, Result<BoxStream<'static, GlobalChange>>> {
        unavailable()
    }
}

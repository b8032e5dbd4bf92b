//! Durable delivery over JetStream.
//!
//! - One stream per prefix, `<PREFIX>_DURABLE`, over `<prefix>.durable.>`,
//!   with interest retention: an event stays until the consumer of its node
//!   acknowledges it. Events to the durable node `n` are published to
//!   `<prefix>.durable.node.<n>` with `Nats-Msg-Id` = `<event id>@<n>`
//!   (a broadcast: the event id), so a repeated publish within the
//!   duplicate window is dropped by the server ([`replays`]).
//! - One durable pull consumer per node id (shared by every instance of the
//!   node), acknowledging explicitly at the end of the flow (once the
//!   events the flow emitted to durable nodes are stored: see below), negatively
//!   with the backoff delay after a failure, and terminating after the last
//!   attempt, when the event goes to `<PREFIX>_DEAD` (`<prefix>.dead.<n>`).
//! - Broadcasts that a durable node's handlers take are stored once, on
//!   `<prefix>.durable.bcast.<event type>`; each durable node's consumer
//!   filters the broadcast subjects of its handlers' patterns besides its
//!   own, and durable nodes do not take the core (direct) copy.
//! - The KV bucket `<prefix>_durable` ([`registry`]) names the durable
//!   nodes and their broadcast filters, so that every process sends their
//!   events through the stream, also while the node's own process is down.
//! - Exactly-once nodes record each completed event in the KV bucket
//!   `<prefix>_done` (kept for twice the duplicate window) before
//!   acknowledging it; a redelivered event found there is acknowledged
//!   without running, and so is a copy stored again ([`replays`]).
//! - The final answer of a durable request is also kept in the KV bucket
//!   `<prefix>_answers` until its requester has it ([`answers`]): published
//!   during an outage, it may reach the server before the requester has
//!   subscribed again.
//!
//! Publishing goes through one task, in order, with acknowledgements
//! awaited in a pipeline; a publish that fails (the server unreachable) is
//! tried again with the same message id until it is stored, or, for a
//! request, until its requester stops waiting. A finished flow's event is
//! acknowledged (and, exactly-once, its completion recorded) only once the
//! events it caused (told or broadcast to durable nodes) have left that
//! queue ([`unstored`]): acknowledged earlier, a process killed before
//! they were stored would lose them for good (the event is not handed out
//! again).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::commands::Bound;
use super::{Shared, envelope, lock};
use crate::error::{HappenError, Result};
use crate::event::Event;
use crate::id::Id;
use crate::node::Node;
use crate::receipt::{Receipt, ReceiptTx};

pub(super) mod answers;
mod buckets;
mod consume;
mod copies;
pub(super) mod keys;
mod publish;
mod registry;
mod replays;
#[cfg(test)]
mod tests;
mod unstored;

use buckets::{answers_bucket, bucket};
use consume::{consume, reconfigure};
pub(super) use publish::{DurableOutbox, publish};
use registry::Registry;
use replays::copy_id;

/// The header naming the inbox subject a request's answer goes to.
const REPLY_TO: &str = "Happen-Reply-To";
/// How many publishes may await the stream's acknowledgement (the client
/// lends each a permit and makes the next wait when none is left).
const ACK_PERMITS: usize = 4_096;

/// Set by a test to run with fewer permits (0: [`ACK_PERMITS`]).
#[cfg(test)]
pub(super) static TEST_ACK_PERMITS: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

fn ack_permits() -> usize {
    #[cfg(test)]
    {
        let permits = TEST_ACK_PERMITS.load(std::sync::atomic::Ordering::Relaxed);
        if permits > 0 {
            return permits;
        }
    }
    ACK_PERMITS
}

/// How long a publish waits for the stream's acknowledgement before it is
/// sent again.
const PUBLISH_ACK_WAIT: Duration = Duration::from_secs(2);

fn unavailable(what: &str, error: impl std::fmt::Display) -> HappenError {
    HappenError::transport_msg(format!("durable delivery: {what}: {error}"))
}

/// A name JetStream accepts for streams and buckets, from the prefix.
fn name_part(prefix: &str) -> String {
    prefix
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// What happens once an event is stored (or could not be).
enum Then {
    /// A request: on failure, its requester hears the error.
    Request(u64),
    /// A tell: on failure, reported as undelivered.
    Tell { target: Id, event: Event },
    /// A broadcast to durable nodes: on failure, reported as undelivered.
    Broadcast(Event),
}

/// One thing for the publishing task: an event to store, or a flush marker
/// resolved once everything queued before it is stored.
#[expect(
    clippy::large_enum_variant,
    reason = "nearly every item is an event; boxing it would add an allocation per publish"
)]
enum Outgoing {
    Event {
        subject: String,
        headers: HeaderMap,
        payload: Bytes,
        then: Then,
        /// A request gives up at its deadline; a tell never does.
        until: Option<crate::response::Deadline>,
        /// Told whether the event was stored.
        receipt: ReceiptTx,
        /// The event whose flow emitted this one, which waits for it.
        cause: Option<Id>,
    },
    Marker(oneshot::Sender<()>),
}

/// The durable side of the NATS transport.
pub(super) struct Durable {
    js: jetstream::Context,
    prefix: String,
    stream: String,
    /// The durable nodes anywhere in the system.
    registry: Arc<Registry>,
    /// The public keys of signing nodes, system-wide.
    pub(super) keys: Arc<keys::KeyRegistry>,
    /// Answers to durable requests, kept until their requesters have them.
    pub(super) answers: Arc<answers::Answers>,
    done: kv::Store,
    /// The event stream's duplicate window, as the server keeps it.
    window: Duration,
    /// Serializes the changes of this process's consumers and records.
    configuring: tokio::sync::Mutex<()>,
    outgoing: mpsc::UnboundedSender<Outgoing>,
    /// Node setups under way, awaited by the next flush.
    setups: Mutex<Vec<oneshot::Receiver<Result<()>>>>,
    /// Exactly-once events this process is running or completed (node and
    /// event id), so that a redelivery while the flow runs, or before its
    /// completion is recorded, does not run it again.
    taken: crate::durable::Seen,
    /// Events in the publishing queue (which holds what is not stored
    /// yet: everything, while the server is unreachable), bounded by the
    /// outgoing limit.
    queued: Bound,
    /// Queued events by the event whose flow emitted them: a finished
    /// flow's event is acknowledged once they are stored.
    unstored: unstored::Unstored,
    /// The acknowledgements that wait (for what their flows emitted, for a
    /// completion record, for a dead letter), awaited by a closing runtime.
    acks: tokio_util::task::TaskTracker,
    /// Stops the consuming task of each durable node of this process.
    consuming: Mutex<std::collections::HashMap<String, CancellationToken>>,
    /// The consuming tasks, awaited when the runtime stops taking events.
    consumers: tokio_util::task::TaskTracker,
    /// Publishes the publishing task lets await their acknowledgement:
    /// half the client's permits, so that it never waits for one.
    in_flight: usize,
}

impl Durable {
    /// Creates (or finds) the streams and buckets, and loads the durable
    /// nodes. Returns the receiver the publishing task runs on.
    pub(super) async fn open(
        client: async_nats::Client,
        prefix: &str,
        window: Duration,
        limit: usize,
        replicas: usize,
    ) -> Result<(Durable, DurableOutbox)> {
        let permits = ack_permits();
        let js = jetstream::ContextBuilder::new()
            .max_ack_inflight(permits)
            .build(client);
        let part = name_part(prefix);
        let stream = format!("{}_DURABLE", part.to_uppercase());
        let events = format!("{prefix}.durable.>");
        let made = js
            .get_or_create_stream(stream::Config {
                name: stream.clone(),
                subjects: vec![events.clone()],
                retention: stream::RetentionPolicy::Interest,
                storage: stream::StorageType::File,
                duplicate_window: window,
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable("cannot create the event stream", e))?;
        crate::store::jetstream::check_stream_subject(&made, &events)?;
        // The stream's own window: one found made may have another.
        let window = made.cached_info().config.duplicate_window;
        let dead = format!("{prefix}.dead.>");
        let made = js
            .get_or_create_stream(stream::Config {
                name: format!("{}_DEAD", part.to_uppercase()),
                subjects: vec![dead.clone()],
                storage: stream::StorageType::File,
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable("cannot create the dead-letter stream", e))?;
        crate::store::jetstream::check_stream_subject(&made, &dead)?;
        let registry = bucket(&js, format!("{part}_durable"), Duration::ZERO, replicas).await?;
        let registry = Arc::new(Registry::load(registry).await);
        // Kept for twice the window: see `replays`.
        let done = bucket(&js, format!("{part}_done"), window * 2, replicas).await?;
        buckets::keep_at_least(&js, &done, window * 2).await;
        let keys = Arc::new(keys::KeyRegistry::open(&js, &part, replicas).await?);
        let kept = answers_bucket(&js, &part, replicas).await?;
        let answers = Arc::new(answers::Answers::new(kept, js.client().max_payload()));
        let (outgoing, rx) = mpsc::unbounded_channel();
        Ok((
            Durable {
                js,
                prefix: prefix.to_owned(),
                stream,
                registry,
                keys,
                answers,
                done,
                window,
                configuring: tokio::sync::Mutex::new(()),
                outgoing,
                setups: Mutex::new(Vec::new()),
                taken: Default::default(),
                queued: Bound::new(limit),
                unstored: Default::default(),
                acks: tokio_util::task::TaskTracker::new(),
                consuming: Mutex::new(std::collections::HashMap::new()),
                consumers: tokio_util::task::TaskTracker::new(),
                in_flight: (permits / 2).max(1),
            },
            DurableOutbox(rx),
        ))
    }

    /// Follows the registry of durable nodes (a task of its own).
    pub(super) fn follow(&self) -> impl std::future::Future<Output = ()> + use<> {
        self.registry.clone().watch()
    }

    /// How every durable node's consumer stands, wherever the node runs
    /// (flow balance); `None` for a consumer that cannot be read within
    /// `within` (the server out of reach: the node is judged as before, not
    /// forgotten, and the sample does not wait for the client's timeouts).
    pub(super) async fn consumer_lags(
        &self,
        within: std::time::Duration,
    ) -> Vec<(String, Option<crate::balance::Lag>)> {
        let nodes = self.registry.nodes();
        if nodes.is_empty() {
            return Vec::new();
        }
        let Ok(Ok(stream)) = tokio::time::timeout(within, self.js.get_stream(&self.stream)).await
        else {
            return nodes.into_iter().map(|node| (node, None)).collect();
        };
        // Side by side, each within the bound: with many nodes, reading them
        // one after another would leave the same last ones unread at every
        // sample, and never judged.
        let reads = nodes.into_iter().map(|node| {
            let stream = &stream;
            async move {
                let info = tokio::time::timeout(
                    within,
                    stream.consumer_info(crate::store::jetstream::escape_key(&node)),
                )
                .await;
                let lag = match info {
                    Ok(Ok(info)) => Some(crate::balance::Lag {
                        waiting: info.num_pending,
                        in_flight: u64::try_from(info.num_ack_pending).unwrap_or(0),
                        redelivered: u64::try_from(info.num_redelivered).unwrap_or(0),
                        // Moves when an event is acknowledged below all
                        // others (the ack floor), or when a new one is
                        // handed out, which the node's limit of pending
                        // events allows only as others are acknowledged.
                        // The floor alone stands still behind one slow
                        // event while the others are acknowledged; counting
                        // deliveries would count a hung node's redeliveries.
                        progress: info
                            .ack_floor
                            .stream_sequence
                            .saturating_add(info.delivered.stream_sequence),
                    }),
                    _ => None,
                };
                (node, lag)
            }
        });
        futures::future::join_all(reads).await
    }

    /// Refuses to make `node` a direct node while the system has it as a
    /// durable one: every process would go on storing its events, which
    /// a direct node never takes (a distributed audit found a node
    /// redeployed as direct taking none of them, silently).
    pub(super) fn refuse_direct(&self, node: &str) -> Result<()> {
        match self.registry.record(node) {
            Some(record) => Err(HappenError::Config(format!(
                "node {node}: registered as a durable node ({}) in this system, so every process stores its events in JetStream, where a node with direct delivery never takes them; create it with durable delivery, or let the registration and its stored events go first with Happen::forget_durable(\"{node}\")",
                record.mode
            ))),
            None => Ok(()),
        }
    }

    /// Whether events to `node` go through the stream.
    pub(super) fn is_target(&self, node: &str) -> bool {
        self.registry.contains(node)
    }

    /// Whether a broadcast of `event_type` must be stored for some durable
    /// node.
    pub(super) fn wants_broadcast(&self, event_type: &str) -> bool {
        self.registry.wants_broadcast(event_type)
    }

    /// Stores a broadcast for the durable nodes whose handlers take it.
    pub(super) fn broadcast(&self, event: &Event, payload: Bytes) -> Result<Receipt> {
        let subject = format!("{}.durable.bcast.{}", self.prefix, event.event_type());
        let then = Then::Broadcast(event.clone());
        let cause = event.causal().causation_id.as_ref();
        self.store(
            cause,
            subject,
            message_headers(event, None, None),
            payload,
            then,
            None,
        )
    }

    /// Queues an event for the publishing task (within the outgoing bound);
    /// `cause` (the event whose flow emitted it) waits for it to be stored.
    fn store(
        &self,
        cause: Option<&Id>,
        subject: String,
        headers: HeaderMap,
        payload: Bytes,
        then: Then,
        until: Option<crate::response::Deadline>,
    ) -> Result<Receipt> {
        // Measured with the headers it is stored with: the server would
        // refuse it on every attempt.
        envelope::check_size(&payload, Some(&headers), self.js.client().max_payload())?;
        self.queued.reserve()?;
        let (receipt_tx, receipt) = Receipt::waiting();
        let cause = cause.cloned();
        if let Some(cause) = &cause {
            self.unstored.queued(cause);
        }
        let _ = self.outgoing.send(Outgoing::Event {
            subject,
            headers,
            payload,
            then,
            until,
            receipt: receipt_tx,
            cause,
        });
        Ok(receipt)
    }

    fn subject(&self, node: &str) -> String {
        format!("{}.durable.node.{node}", self.prefix)
    }

    /// Stores a tell to the durable node `target`.
    pub(super) fn tell(&self, target: &str, event: Event, payload: Bytes) -> Result<Receipt> {
        let headers = message_headers(&event, Some(target), None);
        let cause = event.causal().causation_id.clone();
        let then = Then::Tell {
            target: Id::from(target),
            event,
        };
        let subject = self.subject(target);
        self.store(cause.as_ref(), subject, headers, payload, then, None)
    }

    /// Stores the request `token` to the durable node `target`; its answer
    /// goes to `reply_to`.
    pub(super) fn request(
        &self,
        target: &str,
        event: &Event,
        payload: Bytes,
        token: u64,
        reply_to: &str,
        deadline: crate::response::Deadline,
    ) -> Result<Receipt> {
        let headers = message_headers(event, Some(target), Some(reply_to));
        let then = Then::Request(token);
        let cause = event.causal().causation_id.as_ref();
        let subject = self.subject(target);
        self.store(cause, subject, headers, payload, then, Some(deadline))
    }

    /// Resolves once every event queued so far has left the publishing
    /// queue and the acknowledgements that wait for them (or for anything
    /// else) are sent: a closing runtime settles what its flows finished.
    pub(super) async fn drain(&self) {
        let (tx, rx) = oneshot::channel();
        if self.outgoing.send(Outgoing::Marker(tx)).is_ok() {
            let _ = rx.await;
        }
        self.acks.close();
        self.acks.wait().await;
    }

    /// Resolves once every event queued so far is stored and every node set
    /// up so far consumes; the first setup error is returned.
    pub(super) async fn flush(&self) -> Result<()> {
        self.keys.flush().await?;
        let setups: Vec<_> = lock(&self.setups).drain(..).collect();
        for setup in setups {
            setup.await.unwrap_or(Ok(()))?;
        }
        let (tx, rx) = oneshot::channel();
        if self.outgoing.send(Outgoing::Marker(tx)).is_ok() {
            let _ = rx.await;
        }
        Ok(())
    }

    /// Makes `node` durable: registers it, and starts consuming its events
    /// (in a task of its own, which ends with the node).
    pub(super) fn attach(self: &Arc<Self>, shared: &Arc<Shared>, node: &Node) {
        self.registry.note(node.id(), mode_name(node), &[]);
        let (ready, setup) = oneshot::channel();
        lock(&self.setups).push(setup);
        let stop = CancellationToken::new();
        if let Some(before) = lock(&self.consuming).insert(node.id().to_owned(), stop.clone()) {
            before.cancel();
        }
        let consuming = consume(self.clone(), shared.clone(), node.clone(), ready, stop);
        let task = self.consumers.spawn(consuming);
        keep_task(shared, task);
    }

    /// The durable node `node` shut down: its consuming task hands back
    /// what it has and ends (it used to run, holding the node, for good).
    pub(super) fn detach(&self, node: &str) {
        if let Some(stop) = lock(&self.consuming).remove(node) {
            stop.cancel();
        }
    }

    /// The runtime stops taking stored events: every consuming task hands
    /// back what it has and ends (waited for two seconds at most).
    pub(super) async fn stop_taking(&self) {
        for (_, stop) in lock(&self.consuming).drain() {
            stop.cancel();
        }
        self.consumers.close();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.consumers.wait()).await;
    }

    /// A handler of the durable `node` takes broadcasts through `filters`:
    /// its record and its consumer learn them (awaited by the next flush).
    pub(super) fn add_filters(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
        node: &Node,
        filters: &[String],
    ) {
        let known = self.registry.record(node.id()).unwrap_or_default();
        if filters.iter().all(|f| known.filters.contains(f)) {
            return;
        }
        self.registry.note(node.id(), mode_name(node), filters);
        let (ready, setup) = oneshot::channel();
        lock(&self.setups).push(setup);
        let durable = self.clone();
        let id = node.id().to_owned();
        let limits = node.limits();
        let task = tokio::spawn(async move {
            let _ = ready.send(reconfigure(&durable, &id, &limits).await.map(|_| ()));
        });
        keep_task(shared, task);
    }
}

fn mode_name(node: &Node) -> &'static str {
    match node.limits().delivery.mode {
        crate::DeliveryMode::ExactlyOnce => "exactly-once",
        _ => "at-least-once",
    }
}

/// The headers of `event` stored for the durable node `target`, or for
/// every one that takes it (`None`, a broadcast); a request's name the
/// subject its answer goes to.
fn message_headers(event: &Event, target: Option<&str>, reply: Option<&str>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let id = replays::message_id(event.id(), target);
    headers.insert(replays::MESSAGE_ID, id);
    if let Some(reply) = reply {
        headers.insert(REPLY_TO, reply);
    }
    headers
}

/// [`Happen::forget_durable`](crate::Happen::forget_durable) over NATS:
/// the node's consumer (and with it the events stored for it) and its
/// record go; every process learns it from the registry's watch.
pub(super) fn forget(
    shared: Arc<Shared>,
    node: String,
) -> futures::future::BoxFuture<'static, Result<()>> {
    Box::pin(async move {
        let Some(durable) = shared.durable.clone() else {
            return Err(HappenError::Config(format!(
                "forget_durable(\"{node}\"): durable registrations live in JetStream, which this runtime does not use (NatsConfig::jetstream(false))"
            )));
        };
        if shared
            .local
            .lookup(&node)
            .is_some_and(|n| n.limits().delivery.mode.is_durable())
        {
            return Err(HappenError::Config(format!(
                "forget_durable(\"{node}\"): the node is durable in this process; shut it down first"
            )));
        }
        // The record first: every process stops storing the node's events
        // once its registry watch learns it (within moments); what was
        // stored until then goes with the consumer.
        durable.registry.forget(&node).await?;
        tokio::time::sleep(FORGET_GRACE).await;
        let stream = durable
            .js
            .get_stream(&durable.stream)
            .await
            .map_err(|e| unavailable("cannot find the event stream", e))?;
        match stream
            .delete_consumer(&crate::store::jetstream::escape_key(&node))
            .await
        {
            Ok(_) => Ok(()),
            // Never consumed, or forgotten before: nothing to drop.
            Err(e) if matches!(e.kind(), async_nats::jetstream::stream::ConsumerErrorKind::JetStream(ref js) if js.error_code() == async_nats::jetstream::ErrorCode::CONSUMER_NOT_FOUND) => {
                Ok(())
            }
            Err(e) => Err(unavailable("cannot delete the node's consumer", e)),
        }
    })
}

/// How long [`forget`] waits between deleting a node's record and its
/// consumer, for other processes' registry watches to learn it.
const FORGET_GRACE: Duration = Duration::from_millis(500);

/// Keeps `task` to abort when the runtime ends, letting go of the handles
/// of tasks that ended already (kept, they grew the list for good).
fn keep_task(shared: &Shared, task: tokio::task::JoinHandle<()>) {
    let mut tasks = lock(&shared.tasks);
    tasks.retain(|task| !task.is_finished());
    tasks.push(task);
}

//! The NATS transport: the same nodes and flows, with events carried between
//! processes by a NATS server.
//!
//! - [`subjects`]: where events travel and which broadcast filters this
//!   process holds; [`filters`]: patterns as subject filters;
//! - [`commands`]: the one ordered queue every subscribe and publish goes
//!   through, bounded for new events;
//! - [`requests`]: requests waiting for their replies, "no responders" and
//!   its retries;
//! - [`streams`]: answers and streamed answers going back, with credits;
//! - [`durable`]: events to durable nodes, stored in JetStream;
//! - [`envelope`]: events into message bytes and back, the place for
//!   integrity checks;
//! - [`outgoing`]: broadcasts, requests and tells leaving this process;
//! - [`receive`]: what arrives on this process's subscriptions;
//! - [`status`]: the connection's state as system events;
//! - [`connection`]: the client's options from the configuration;
//! - [`wire`]: the MessagePack encoding.
//!
//! Replies, credits and round trips come to one inbox per runtime:
//! `<inbox>.<n>` answers request `n`, `<inbox>.c<n>` carries credits for the
//! stream `n` this process produces, `<inbox>.p<n>` is round trip `n` coming
//! back, and `<inbox>.t.<node>.<event id>.<event type>` is where the server
//! says that a tell found no node.

mod commands;
mod compact;
mod connection;
mod durable;
mod envelope;
pub(crate) mod filters;
#[cfg(test)]
mod forgery_tests;
#[cfg(test)]
mod fuzz;
pub(super) mod key_lookups;
mod msgpack;
mod outgoing;
mod readers;
mod receive;
mod requests;
mod seal;
mod status;
#[cfg(test)]
mod stream_tests;
mod streams;
mod subjects;
#[cfg(test)]
mod tests;
mod wire;
#[cfg(test)]
mod wire_props;
mod zero;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::local::LocalTransport;
use super::{Interest, Transport};
use crate::delivery::ReplyTx;
use crate::error::{HappenError, Result};
use crate::event::Event;
use crate::nats::{NatsConfig, check_server_version};
use crate::node::Node;
use crate::pattern::Pattern;
use crate::receipt::Receipt;
use crate::system::Counters;
use commands::{Command, Commands, Kind, Publish};
use requests::Requests;
use status::Status;
use streams::Credits;
use subjects::Filters;

/// How long shutdown waits for the server to take the last messages (it may
/// be unreachable: the client would otherwise wait for a reconnection).
const CLOSE_FLUSH_LIMIT: Duration = Duration::from_secs(2);
/// How long a flow-balance sample waits for the durable consumers' state.
const LAG_READ_LIMIT: Duration = Duration::from_secs(1);

const OPEN: u8 = 0;
const DRAINING: u8 = 1;
const CLOSED: u8 = 2;

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the transport's tasks share.
pub(super) struct Shared {
    local: Arc<LocalTransport>,
    client: async_nats::Client,
    prefix: String,
    /// Subjects published to, made once (see [`subjects::Made`]).
    subjects: subjects::Made,
    inbox: String,
    commands: Commands,
    /// How far the subscriptions' readers have read (for a shutdown).
    readers: readers::Readers,
    /// Signed senders' keys being looked up (see `key_lookups`).
    key_lookups: key_lookups::KeyLookups,
    requests: Requests,
    credits: Credits,
    filters: Filters,
    status: Status,
    /// Round trips waiting for their message to come back.
    pings: Mutex<HashMap<u64, oneshot::Sender<()>>>,
    /// Ids for subscriptions and round trips.
    next_id: AtomicU64,
    /// Node id → its direct subscription.
    direct: Mutex<HashMap<String, u64>>,
    /// This process's signing nodes: their public keys, and the
    /// subscriptions that answer for them (see `durable::keys`).
    own_keys: Mutex<HashMap<String, (String, u64)>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// OPEN, DRAINING (only events caused by running flows are taken from
    /// other processes) or CLOSED (nothing is taken).
    phase: AtomicU8,
    /// Events between this runtime's nodes stay in the process, and the
    /// server does not echo this connection's messages back to it.
    co_located: bool,
    /// Durable delivery, when JetStream is on.
    durable: Option<Arc<durable::Durable>>,
}

pub(crate) struct NatsTransport {
    shared: Arc<Shared>,
}

impl NatsTransport {
    /// Connects; `dedup_window` is the durable stream's duplicate window.
    pub(crate) async fn connect(
        config: &NatsConfig,
        dedup_window: Duration,
    ) -> Result<(NatsTransport, async_nats::Client)> {
        config.validate()?;
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let client = connection::options(config, events_tx)
            .await?
            .connect(config.servers.clone())
            .await
            .map_err(|e| {
                HappenError::transport(
                    format!(
                        "cannot connect to NATS at {}: {e}; is nats-server running there?",
                        config.servers.join(", ")
                    ),
                    e,
                )
            })?;
        let info = client.server_info();
        if !config.intermittent {
            // (Offline, nothing is known of the server yet.)
            check_server_version(&info.version, &config.servers.join(", "))?;
        }
        if config.jetstream {
            async_nats::jetstream::new(client.clone())
                .query_account()
                .await
                .map_err(|e| {
                    HappenError::Config(format!(
                        "JetStream is not available on the NATS server ({e}); start nats-server with -js, or set NatsConfig::jetstream(false)"
                    ))
                })?;
        }

        let durable = if config.jetstream {
            Some(
                durable::Durable::open(
                    client.clone(),
                    &config.prefix,
                    dedup_window,
                    config.outgoing_limit,
                    config.replicas,
                )
                .await?,
            )
        } else {
            None
        };
        let (durable, outbox) = durable.map(|(d, o)| (Arc::new(d), o)).unzip();
        let (commands, commands_rx) = Commands::new(config.outgoing_limit, client.clone());
        let shared = Arc::new(Shared {
            local: Arc::new(LocalTransport::default()),
            client: client.clone(),
            prefix: config.prefix.clone(),
            subjects: subjects::Made::new(&config.prefix),
            inbox: client.new_inbox(),
            commands,
            readers: readers::Readers::default(),
            key_lookups: key_lookups::KeyLookups::default(),
            requests: Requests::default(),
            credits: Credits::default(),
            filters: Filters::default(),
            status: Status::new(
                config.intermittent
                    && client.connection_state() != async_nats::connection::State::Connected,
            ),
            pings: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            direct: Mutex::new(HashMap::new()),
            own_keys: Mutex::new(HashMap::new()),
            tasks: Mutex::new(Vec::new()),
            phase: AtomicU8::new(OPEN),
            co_located: config.co_located,
            durable,
        });
        let command_loop = tokio::spawn(commands::run(shared.clone(), client.clone(), commands_rx));
        let status_loop = tokio::spawn(status::report(shared.clone(), events_rx));
        let sweeper = tokio::spawn(sweep(shared.clone()));
        lock(&shared.tasks).extend([command_loop, status_loop, sweeper]);
        if let (Some(durable), Some(outbox)) = (shared.durable.clone(), outbox) {
            let follower = tokio::spawn(durable.follow());
            let keys = Arc::downgrade(shared.local.keys());
            let key_follower = tokio::spawn(durable.keys.clone().follow(keys));
            lock(&shared.tasks).push(key_follower);
            let publisher = tokio::spawn(durable::publish(shared.clone(), durable, outbox));
            lock(&shared.tasks).extend([follower, publisher]);
        }
        shared.commands.control(Command::Subscribe {
            id: shared.next_id(),
            subject: format!("{}.>", shared.inbox),
            kind: Kind::Inbox,
        });
        let transport = NatsTransport { shared };
        if !config.intermittent {
            transport.flush().await?;
        }
        Ok((transport, client))
    }
}

impl Shared {
    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The unique last token of this runtime's inbox.
    fn inbox_token(&self) -> &str {
        self.inbox.rsplit('.').next().unwrap_or(&self.inbox)
    }

    fn phase(&self) -> u8 {
        self.phase.load(Ordering::Acquire)
    }

    fn is_closed(&self) -> bool {
        self.phase() == CLOSED
    }

    /// The largest message the server takes.
    fn max_payload(&self) -> usize {
        self.client.max_payload()
    }

    /// A round trip through the server: resolves when a message published
    /// now has come back, so the server has processed everything before it.
    /// With co-location the connection does not receive its own messages,
    /// so the message goes to a subject nobody subscribes to, with this
    /// runtime's inbox as its reply subject, and the server itself answers
    /// "no responders".
    fn round_trip(self: &Arc<Self>) -> BoxFuture<'static, Result<()>> {
        let id = self.next_id();
        let (back, came_back) = oneshot::channel();
        lock(&self.pings).insert(id, back);
        // Without co-location the message comes back to our own inbox;
        // with it (no echo) the server's "no responders" answers instead.
        let (subject, reply) = if self.co_located {
            (
                format!("{}.ping.{}", self.prefix, self.inbox_token()),
                Some(format!("{}.p{id}", self.inbox).into()),
            )
        } else {
            (format!("{}.p{id}", self.inbox), None)
        };
        let sent = self.commands.send(Command::Publish(Publish {
            subject: subject.into(),
            reply,
            headers: None,
            payload: bytes::Bytes::new(),
            token: None,
        }));
        let (written, flushed) = oneshot::channel();
        self.commands.control(Command::Flush(written));
        Box::pin(async move {
            sent?;
            flushed.await.unwrap_or_else(|_| Err(closed()))?;
            came_back.await.map_err(|_| closed())
        })
    }

    /// Sends an answer or a credit. One for this runtime's own inbox is
    /// handed over here when the server would not echo it back (a durable
    /// node answering a request from its own process).
    fn answer(self: &Arc<Self>, publish: Publish) -> Result<()> {
        if self.co_located
            && publish
                .subject
                .strip_prefix(self.inbox.as_str())
                .is_some_and(|rest| rest.starts_with('.'))
        {
            let message = async_nats::Message {
                length: publish.payload.len(),
                subject: publish.subject,
                reply: None,
                payload: publish.payload,
                headers: None,
                status: None,
                description: None,
            };
            receive::on_inbox(self, message);
            return Ok(());
        }
        self.commands.send(Command::Publish(publish))
    }

    fn abort(&self) {
        self.phase.store(CLOSED, Ordering::Release);
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
        self.local.detach_all();
        self.requests.clear();
        lock(&self.pings).clear();
    }
}

fn closed() -> HappenError {
    HappenError::transport_msg("the NATS connection is closed")
}

/// Forgets requests whose requester stopped waiting and whose answer will
/// never come (the target died), so the table does not grow.
async fn sweep(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        shared.requests.sweep();
        requests::ask_producers(&shared);
        shared.requests.tells.sweep(&shared);
    }
}

impl Transport for NatsTransport {
    fn attach(&self, node: &Node) -> Result<()> {
        let shared = &self.shared;
        let durable = node.limits().delivery.mode.is_durable();
        if durable && shared.durable.is_none() {
            return Err(HappenError::Config(format!(
                "node {}: durable delivery stores events in JetStream, which this runtime does not use (NatsConfig::jetstream(false))",
                node.id()
            )));
        }
        if node.limits().sign && shared.durable.is_none() {
            return Err(HappenError::Config(format!(
                "node {}: a signing node's public key is registered in JetStream, where other processes look it up, which this runtime does not use (NatsConfig::jetstream(false)); without it every process would refuse its events",
                node.id()
            )));
        }
        if !durable && let Some(store) = &shared.durable {
            store.refuse_direct(node.id())?;
        }
        shared.local.attach(node)?;
        if durable && let Some(store) = &shared.durable {
            store.attach(shared, node);
        }
        let id = shared.next_id();
        lock(&shared.direct).insert(node.id().to_owned(), id);
        shared.commands.control(Command::Subscribe {
            id,
            subject: subjects::direct_subject(&shared.prefix, node.id()),
            kind: Kind::Direct,
        });
        Ok(())
    }

    fn forget_durable(&self, id: &str) -> BoxFuture<'static, Result<()>> {
        durable::forget(self.shared.clone(), id.to_owned())
    }

    fn detach(&self, id: &str) {
        let shared = &self.shared;
        // The consumer first: once the id is free, a node of the same id
        // made meanwhile has a consumer of its own to keep.
        if let Some(durable) = &shared.durable {
            durable.detach(id);
        }
        shared.local.detach(id);
        if let Some(subscription) = lock(&shared.direct).remove(id) {
            shared
                .commands
                .control(Command::Unsubscribe { id: subscription });
        }
        if let Some((_, subscription)) = lock(&shared.own_keys).remove(id) {
            shared
                .commands
                .control(Command::Unsubscribe { id: subscription });
        }
    }

    fn subscribe(&self, node: &Node, pattern: &Pattern) -> Result<Interest> {
        let shared = &self.shared;
        if node.core().stored_by_transport()
            && let Some(durable) = &shared.durable
        {
            // Its broadcasts come from the stream, through its consumer.
            durable.add_filters(shared, node, &subjects::filters_for(pattern));
            return Ok(Interest::default());
        }
        let wanted: Vec<String> = subjects::filters_for(pattern)
            .iter()
            .map(|s| subjects::broadcast_subject(&shared.prefix, s))
            .collect();
        let changes = shared.filters.hold(&wanted, || shared.next_id());
        for (id, subject) in changes.subscribe {
            shared.commands.control(Command::Subscribe {
                id,
                subject,
                kind: Kind::Broadcast,
            });
        }
        Ok(Interest(wanted))
    }

    fn unsubscribe(&self, interest: &Interest) {
        let changes = self.shared.filters.release(&interest.0);
        for id in changes.release {
            self.shared.commands.control(Command::Unsubscribe { id });
        }
    }

    fn broadcast(&self, event: Event) -> Result<Receipt> {
        outgoing::broadcast(&self.shared, event)
    }

    fn send(
        &self,
        target: &str,
        event: Event,
        reply: ReplyTx,
        deadline: crate::response::Deadline,
    ) -> Receipt {
        outgoing::send(&self.shared, target, event, reply, deadline)
    }

    fn in_process(&self) -> bool {
        self.shared.co_located
    }

    fn tell(&self, target: &str, event: Event) -> Result<Receipt> {
        outgoing::tell(&self.shared, target, event)
    }

    fn send_zero(
        &self,
        target: &str,
        event: crate::zero::ZeroEvent,
        reply: crate::zero::ReplyTo,
        timeout: std::time::Duration,
    ) -> Result<()> {
        zero::send(&self.shared, target, event, reply, timeout)
    }

    fn flush(&self) -> BoxFuture<'static, Result<()>> {
        let round_trip = self.shared.round_trip();
        let shared = self.shared.clone();
        Box::pin(async move {
            if let Some(durable) = &shared.durable {
                durable.flush().await?;
            }
            round_trip.await
        })
    }

    fn released(&self) -> BoxFuture<'static, ()> {
        let shared = self.shared.clone();
        Box::pin(async move {
            // Down, the server routes nothing here, and the released
            // subscriptions are not made again on reconnecting.
            if shared.client.connection_state() == async_nats::connection::State::Connected {
                let _ = tokio::time::timeout(CLOSE_FLUSH_LIMIT, shared.round_trip()).await;
            }
        })
    }

    fn register_key(&self, node: &str, public_key: &str) {
        let shared = &self.shared;
        let Some(durable) = &shared.durable else {
            return;
        };
        // Answer for the node first: another process claiming its id
        // probes here before it may take the record over.
        let (id, probe) = (
            shared.next_id(),
            subjects::identity_subject(&shared.prefix, node),
        );
        lock(&shared.own_keys).insert(node.to_owned(), (public_key.to_owned(), id));
        shared.commands.control(Command::Subscribe {
            id,
            subject: probe.clone(),
            kind: Kind::Identity,
        });
        durable
            .keys
            .register(shared.client.clone(), probe, node, public_key);
    }

    fn stores_durable_events(&self) -> bool {
        self.shared.durable.is_some()
    }

    fn settle(&self) -> BoxFuture<'static, ()> {
        let shared = self.shared.clone();
        let _ = shared
            .phase
            .compare_exchange(OPEN, DRAINING, Ordering::AcqRel, Ordering::Acquire);
        let round_trip = shared.round_trip();
        Box::pin(async move {
            // Everything sent before has come back from the server, and
            // every subscription's reader has handed over what it received.
            let _ = tokio::time::timeout(CLOSE_FLUSH_LIMIT, async {
                let _ = round_trip.await;
                shared.readers.drain().await;
            })
            .await;
            // Wait for answers someone still waits for, up to their deadline.
            while shared.requests.any_waiting() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // Stored events not received yet are for another instance, or
            // for this node's next run.
            if let Some(durable) = &shared.durable {
                durable.stop_taking().await;
            }
        })
    }

    fn close(&self) -> BoxFuture<'static, ()> {
        let shared = self.shared.clone();
        shared.phase.store(CLOSED, Ordering::Release);
        // Release every subscription but the inbox, so that the server
        // stops routing events here before this returns; then the durable
        // events still queued are stored and the acknowledgements waiting
        // for them sent; then a round trip: the releases, the replies of
        // the last flows and everything sent before have reached the
        // server, unless it is unreachable.
        let mut ids: Vec<u64> = lock(&shared.direct).drain().map(|(_, id)| id).collect();
        ids.extend(shared.filters.release_all());
        for id in ids {
            shared.commands.control(Command::Unsubscribe { id });
        }
        Box::pin(async move {
            let _ = tokio::time::timeout(CLOSE_FLUSH_LIMIT, async {
                // What the last flows emitted to durable nodes is stored and
                // their events acknowledged before the connection goes.
                if let Some(durable) = &shared.durable {
                    durable.drain().await;
                }
                let _ = shared.round_trip().await;
            })
            .await;
            shared.abort();
        })
    }

    fn abort(&self) {
        self.shared.abort();
    }

    fn counters(&self) -> Counters {
        self.shared.local.tally().snapshot()
    }

    fn local(&self) -> &LocalTransport {
        &self.shared.local
    }

    fn lag(&self) -> BoxFuture<'static, Vec<(String, Option<crate::balance::Lag>)>> {
        let shared = self.shared.clone();
        Box::pin(async move {
            let mut samples = shared.local.queues();
            if let Some(durable) = &shared.durable {
                // Bounded: the local nodes' sample must not wait out an
                // outage.
                samples.extend(durable.consumer_lags(LAG_READ_LIMIT).await);
            }
            samples
        })
    }

    fn node(&self, id: &str) -> Option<Node> {
        self.shared.local.node(id)
    }
}

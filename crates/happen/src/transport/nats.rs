//! The NATS transport: the same nodes and flows, with events carried between
//! processes by a NATS server.
//!
//! Subjects (with the configured prefix, `happen` by default):
//!
//! - `happen.node.<node id>`: events sent to one node. Each node subscribes in
//!   the queue group `happen`, so instances of one node id in several
//!   processes share its work.
//! - `happen.bcast.<event type>`: broadcasts. A string pattern becomes server
//!   side subject filters (`order.*` → `happen.bcast.order.*`); a function
//!   matcher subscribes to `happen.bcast.>` and filters locally. Each process
//!   takes a broadcast once, however many of its filters overlap, and hands it
//!   to every local node with a matching handler.
//! - replies go to a per-runtime inbox, `_INBOX.<id>.<token>`.
//!
//! Every outgoing operation (subscribe, publish, flush) passes through one
//! ordered command queue, so a handler registered before a broadcast is
//! subscribed before that broadcast is published.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::local::LocalTransport;
use super::{ReplySink, ReplyTx, Responder, Transport};
use crate::error::{HappenError, Result};
use crate::event::{Event, stamp};
use crate::nats::{Auth, NatsConfig, check_server_version};
use crate::node::Node;
use crate::pattern::Pattern;
use crate::stream::{CreditSink, Outcome, STREAM_WINDOW, StreamMsg, StreamRx};
use crate::wire::{self, Credit, Reply};

/// The event type of connection changes delivered to local nodes.
pub const CONNECTION_STATUS: &str = "system.connection-status";
/// The sender of system events (not a valid node id, so never confused with one).
pub const SYSTEM_SENDER: &str = "happen.system";
/// Queue group of direct subscriptions.
const QUEUE_GROUP: &str = "happen";

enum Command {
    Subscribe {
        subject: String,
        kind: Kind,
    },
    Publish {
        subject: String,
        reply: Option<String>,
        payload: Bytes,
        token: Option<u64>,
    },
    Flush(oneshot::Sender<Result<()>>),
}

#[derive(Clone, Copy)]
enum Kind {
    Direct,
    Broadcast(usize),
    Inbox,
}

/// A request waiting for its reply.
struct Waiting {
    /// Until the first reply arrives.
    reply: Option<ReplyTx>,
    /// Once the reply turned out to be a stream.
    stream: Option<Incoming>,
    target: String,
    /// Until when the requester waits (unless it extends its timeout).
    deadline: tokio::time::Instant,
}

/// A stream this process consumes.
struct Incoming {
    tx: mpsc::Sender<StreamMsg>,
    /// The number of the next item expected.
    next: u64,
}

impl Waiting {
    /// Whether someone still waits for more of this request.
    fn alive(&self) -> bool {
        self.reply.as_ref().is_some_and(|r| !r.is_closed())
            || self.stream.as_ref().is_some_and(|s| !s.tx.is_closed())
    }
}

type Pending = Mutex<HashMap<u64, Waiting>>;

/// How long shutdown waits for the server to take the last messages (it may
/// be unreachable: the client would otherwise wait for a reconnection).
const CLOSE_FLUSH_LIMIT: Duration = Duration::from_secs(2);

const OPEN: u8 = 0;
const DRAINING: u8 = 1;
const CLOSED: u8 = 2;

struct Shared {
    local: Arc<LocalTransport>,
    prefix: String,
    inbox: String,
    commands: mpsc::UnboundedSender<Command>,
    pending: Pending,
    /// Broadcast subject filters, in subscription order.
    filters: Mutex<Vec<String>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Streams this process produces, by credit token.
    credits: Mutex<HashMap<u64, Arc<CreditState>>>,
    next_credit: AtomicU64,
    /// OPEN, DRAINING (only events caused by running flows are taken from
    /// other processes) or CLOSED (nothing is taken).
    phase: std::sync::atomic::AtomicU8,
}

pub(crate) struct NatsTransport {
    shared: Arc<Shared>,
    next_token: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl NatsTransport {
    pub(crate) async fn connect(
        config: &NatsConfig,
    ) -> Result<(NatsTransport, async_nats::Client)> {
        config.validate()?;
        let local = Arc::new(LocalTransport::default());
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let client = options(config, events_tx)
            .await?
            .connect(config.servers.clone())
            .await
            .map_err(|e| {
                HappenError::Transport(format!(
                    "cannot connect to NATS at {}: {e}; is nats-server running there?",
                    config.servers.join(", ")
                ))
            })?;
        let info = client.server_info();
        check_server_version(&info.version, &config.servers.join(", "))?;
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

        let (commands, commands_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            local,
            prefix: config.prefix.clone(),
            inbox: client.new_inbox(),
            commands,
            pending: Mutex::new(HashMap::new()),
            filters: Mutex::new(Vec::new()),
            tasks: Mutex::new(Vec::new()),
            credits: Mutex::new(HashMap::new()),
            next_credit: AtomicU64::new(1),
            phase: std::sync::atomic::AtomicU8::new(OPEN),
        });
        let command_loop = tokio::spawn(run_commands(shared.clone(), client.clone(), commands_rx));
        let status_loop = tokio::spawn(connection_events(shared.clone(), events_rx));
        let sweeper = tokio::spawn(sweep_abandoned(shared.clone()));
        lock(&shared.tasks).extend([command_loop, status_loop, sweeper]);
        shared.command(Command::Subscribe {
            subject: format!("{}.*", shared.inbox),
            kind: Kind::Inbox,
        });
        let transport = NatsTransport {
            shared,
            next_token: AtomicU64::new(1),
        };
        transport.flush().await?;
        Ok((transport, client))
    }
}

async fn options(
    config: &NatsConfig,
    events: mpsc::UnboundedSender<async_nats::Event>,
) -> Result<async_nats::ConnectOptions> {
    let mut options = match &config.auth {
        Auth::None => async_nats::ConnectOptions::new(),
        Auth::UserPassword { user, password } => {
            async_nats::ConnectOptions::with_user_and_password(user.clone(), password.clone())
        }
        Auth::Token(token) => async_nats::ConnectOptions::with_token(token.clone()),
        Auth::CredentialsFile(path) => {
            async_nats::ConnectOptions::with_credentials_file(path.clone())
                .await
                .map_err(|e| {
                    HappenError::Config(format!(
                        "cannot read credentials file {}: {e}",
                        path.display()
                    ))
                })?
        }
        Auth::NkeySeed(seed) => async_nats::ConnectOptions::with_nkey(seed.clone()),
    };
    if let Some(tls) = &config.tls {
        options = options.require_tls(tls.required);
        for root in &tls.root_certificates {
            options = options.add_root_certificates(root.clone());
        }
        if let Some((cert, key)) = &tls.client_certificate {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
    }
    if let Some(name) = &config.name {
        options = options.name(name);
    }
    let reconnect = config.reconnect;
    Ok(options
        .connection_timeout(config.connect_timeout)
        .max_reconnects(reconnect.max_attempts)
        .reconnect_delay_callback(move |attempt| reconnect.delay(attempt))
        .event_callback(move |event| {
            let _ = events.send(event);
            async {}
        }))
}

impl Shared {
    fn command(&self, command: Command) {
        // The loop only ends at shutdown, when nothing is sent any more.
        let _ = self.commands.send(command);
    }

    fn direct_subject(&self, node: &str) -> String {
        format!("{}.node.{node}", self.prefix)
    }

    fn broadcast_subject(&self, event_type: &str) -> String {
        format!("{}.bcast.{event_type}", self.prefix)
    }

    fn fail_pending(&self, token: u64, error: HappenError) {
        let waiting = lock(&self.pending).remove(&token);
        deliver_final(waiting, Err(error));
    }

    fn phase(&self) -> u8 {
        self.phase.load(Ordering::Acquire)
    }

    fn abort(&self) {
        self.phase.store(CLOSED, Ordering::Release);
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
        self.local.detach_all();
        lock(&self.pending).clear();
    }
}

async fn run_commands(
    shared: Arc<Shared>,
    client: async_nats::Client,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    while let Some(command) = commands.recv().await {
        match command {
            Command::Publish {
                subject,
                reply,
                payload,
                token,
            } => {
                let published = match reply {
                    Some(reply) => {
                        client
                            .publish_with_reply(subject.clone(), reply, payload)
                            .await
                    }
                    None => client.publish(subject.clone(), payload).await,
                };
                if let Err(e) = published {
                    let error = HappenError::Transport(format!("cannot publish to {subject}: {e}"));
                    match token {
                        Some(token) => shared.fail_pending(token, error),
                        None => tracing::warn!(%error, "message not published"),
                    }
                }
            }
            Command::Subscribe { subject, kind } => {
                let subscribed = match kind {
                    Kind::Direct => {
                        client
                            .queue_subscribe(subject.clone(), QUEUE_GROUP.to_owned())
                            .await
                    }
                    Kind::Broadcast(_) | Kind::Inbox => client.subscribe(subject.clone()).await,
                };
                match subscribed {
                    Ok(subscriber) => {
                        let reader = tokio::spawn(read(shared.clone(), subscriber, kind));
                        lock(&shared.tasks).push(reader);
                    }
                    Err(e) => tracing::error!(subject, error = %e, "cannot subscribe"),
                }
            }
            Command::Flush(done) => {
                let flushed = client
                    .flush()
                    .await
                    .map_err(|e| HappenError::Transport(format!("flush failed: {e}")));
                let _ = done.send(flushed);
            }
        }
    }
}

async fn read(shared: Arc<Shared>, mut subscriber: async_nats::Subscriber, kind: Kind) {
    while let Some(message) = subscriber.next().await {
        match kind {
            Kind::Direct => on_direct(&shared, message),
            Kind::Broadcast(index) => on_broadcast(&shared, message, index),
            Kind::Inbox => on_reply(&shared, message),
        }
    }
}

/// Producer side of a streamed response: how far the consumer got.
#[derive(Default)]
struct CreditState {
    acked: AtomicU64,
    cancelled: std::sync::atomic::AtomicBool,
    changed: tokio::sync::Notify,
}

/// A stream this process produces.
struct Producing {
    seq: u64,
    token: u64,
    credit: Arc<CreditState>,
}

/// Sends a flow's outcome (and streamed items) back over NATS to the
/// requester's inbox.
struct NatsReply {
    shared: Arc<Shared>,
    subject: Option<String>,
    stream: Option<Producing>,
}

impl NatsReply {
    fn publish(&self, subject: String, reply: &Reply) {
        let payload = match wire::encode_reply(reply) {
            Ok(bytes) => bytes,
            // Every error encodes; a result that does not (a payload serde
            // cannot write as MessagePack) is answered with that failure.
            Err(error) => match wire::encode_reply(&Reply::Err(error)) {
                Ok(bytes) => bytes,
                Err(error) => {
                    tracing::error!(%error, "cannot encode a reply");
                    return;
                }
            },
        };
        self.shared.command(Command::Publish {
            subject,
            reply: None,
            payload: Bytes::from(payload),
            token: None,
        });
    }
}

impl ReplySink for NatsReply {
    fn emit(&mut self, value: serde_json::Value) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let Some(subject) = self.subject.clone() else {
                return Err(HappenError::Cancelled); // nobody to stream to
            };
            let mut first_credit = None;
            if self.stream.is_none() {
                let token = self.shared.next_credit.fetch_add(1, Ordering::Relaxed);
                let credit = Arc::new(CreditState::default());
                lock(&self.shared.credits).insert(token, credit.clone());
                first_credit = Some(format!("{}.c{token}", self.shared.inbox));
                self.stream = Some(Producing {
                    seq: 0,
                    token,
                    credit,
                });
            }
            let producing = self.stream.as_mut().expect("set above");
            // Flow control: at most STREAM_WINDOW items beyond what the
            // consumer acknowledged.
            loop {
                let changed = producing.credit.changed.notified();
                if producing.credit.cancelled.load(Ordering::Acquire) {
                    return Err(HappenError::Cancelled);
                }
                if producing.seq
                    < producing.credit.acked.load(Ordering::Acquire) + STREAM_WINDOW as u64
                {
                    break;
                }
                changed.await;
            }
            let seq = producing.seq;
            producing.seq += 1;
            self.publish(
                subject,
                &Reply::Item {
                    seq,
                    value,
                    credit: first_credit,
                },
            );
            Ok(())
        })
    }

    fn reply(self: Box<Self>, outcome: Result<Event>) {
        let Some(subject) = self.subject.clone() else {
            return;
        };
        let reply = match &self.stream {
            Some(producing) => {
                lock(&self.shared.credits).remove(&producing.token);
                Reply::End {
                    seq: producing.seq,
                    outcome: Box::new(Reply::from(outcome)),
                }
            }
            None => Reply::from(outcome),
        };
        self.publish(subject, &reply);
    }
}

/// Consumer side: tells the producer how far this process got.
struct NatsCredit {
    shared: Arc<Shared>,
    subject: String,
    consumed: u64,
    reported: u64,
}

impl NatsCredit {
    fn send(&self, credit: Credit) {
        if let Ok(payload) = wire::encode_credit(&credit) {
            self.shared.command(Command::Publish {
                subject: self.subject.clone(),
                reply: None,
                payload: Bytes::from(payload),
                token: None,
            });
        }
    }
}

impl CreditSink for NatsCredit {
    fn consumed(&mut self, count: u64) {
        self.consumed += count;
        if self.consumed - self.reported >= (STREAM_WINDOW / 2) as u64 {
            self.reported = self.consumed;
            self.send(Credit::Acked(self.consumed));
        }
    }

    fn cancel(&mut self) {
        self.send(Credit::Cancel);
    }
}

fn on_direct(shared: &Arc<Shared>, message: async_nats::Message) {
    let responder = Responder::remote(NatsReply {
        shared: shared.clone(),
        subject: message.reply.as_ref().map(|s| s.to_string()),
        stream: None,
    });
    let prefix_len = shared.prefix.len() + ".node.".len();
    let Some(target) = message.subject.get(prefix_len..) else {
        return;
    };
    match wire::decode_event(&message.payload) {
        Ok(event) => {
            // While shutting down, take what this runtime sent before the
            // shutdown began and what running flows caused (as the
            // in-process runtime does); new work from elsewhere is refused.
            let phase = shared.phase();
            let ours = message
                .reply
                .as_ref()
                .is_some_and(|r| r.starts_with(shared.inbox.as_str()));
            let new_work = event.causal().causation_id.is_none() && !ours;
            if phase == CLOSED || (phase == DRAINING && new_work) {
                responder.reply(Err(HappenError::Shutdown));
                return;
            }
            shared.local.deliver_to(target, event, responder);
        }
        Err(error) => {
            tracing::warn!(subject = %message.subject, %error, "undecodable event refused");
            responder.reply(Err(error));
        }
    }
}

fn on_broadcast(shared: &Arc<Shared>, message: async_nats::Message, index: usize) {
    // Overlapping filters deliver a message once per filter: only the first
    // filter that matches the subject takes it.
    let first = lock(&shared.filters)
        .iter()
        .position(|filter| subject_matches(filter, &message.subject));
    if first != Some(index) {
        return;
    }
    match wire::decode_event(&message.payload) {
        Ok(event) => {
            if let Err(error) = shared.local.deliver_broadcast(&event) {
                tracing::warn!(event_type = event.event_type(), event_id = event.id(), %error, "broadcast refused by a local node");
            }
        }
        Err(error) => {
            tracing::warn!(subject = %message.subject, %error, "undecodable broadcast ignored")
        }
    }
}

fn on_reply(shared: &Arc<Shared>, message: async_nats::Message) {
    let Some(last) = message.subject.rsplit('.').next() else {
        return;
    };
    if let Some(credit_token) = last.strip_prefix('c') {
        on_credit(shared, credit_token, &message.payload);
        return;
    }
    let Ok(token) = last.parse::<u64>() else {
        return;
    };
    let reply = if message.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
        None
    } else {
        match wire::decode_reply(&message.payload) {
            Ok(reply) => Some(reply),
            Err(error) => Some(Reply::Err(error)),
        }
    };
    let mut pending = lock(&shared.pending);
    let Some(waiting) = pending.get_mut(&token) else {
        return; // the requester gave up (timeout, dropped handle)
    };
    let broken = |reason: String| StreamMsg::End(Err(HappenError::StreamBroken { reason }));
    match reply {
        Some(Reply::Item { seq, value, credit }) => {
            if waiting.stream.is_none() {
                if seq != 0 {
                    let _ = deliver_final(
                        pending.remove(&token),
                        Err(HappenError::StreamBroken {
                            reason: format!(
                                "the stream began at item {seq}, not 0 (items were lost)"
                            ),
                        }),
                    );
                    return;
                }
                let (tx, rx) = mpsc::channel(STREAM_WINDOW + 1);
                let credit = credit.map(|subject| {
                    Box::new(NatsCredit {
                        shared: shared.clone(),
                        subject,
                        consumed: 0,
                        reported: 0,
                    }) as Box<dyn CreditSink>
                });
                let started = waiting.reply.take().is_some_and(|reply| {
                    reply
                        .send(Outcome::Stream(StreamRx::new(rx, credit)))
                        .is_ok()
                });
                if !started {
                    // The requester is gone; dropping the stream cancelled it.
                    pending.remove(&token);
                    return;
                }
                waiting.stream = Some(Incoming { tx, next: 0 });
            }
            let incoming = waiting.stream.as_mut().expect("set above");
            if seq != incoming.next {
                let _ = incoming.tx.try_send(broken(format!(
                    "expected item {}, got item {seq}",
                    incoming.next
                )));
                pending.remove(&token);
                return;
            }
            incoming.next += 1;
            if incoming.tx.try_send(StreamMsg::Item(value)).is_err() {
                // Full (the producer ignored flow control) or closed.
                pending.remove(&token);
            }
        }
        Some(Reply::End { seq, outcome }) => {
            let waiting = pending.remove(&token).expect("present");
            match waiting.stream {
                Some(incoming) if incoming.next == seq => {
                    let _ = incoming.tx.try_send(StreamMsg::End(Result::from(*outcome)));
                }
                Some(incoming) => {
                    let _ = incoming.tx.try_send(broken(format!(
                        "the stream ended after {seq} items but {} arrived",
                        incoming.next
                    )));
                }
                // A stream that ends without items is a plain outcome.
                None if seq == 0 => {
                    let _ = deliver_final(Some(waiting), Result::from(*outcome));
                }
                None => {
                    let _ = deliver_final(
                        Some(waiting),
                        Err(HappenError::StreamBroken {
                            reason: format!("the stream ended after {seq} items but none arrived"),
                        }),
                    );
                }
            }
        }
        Some(other) => {
            let _ = deliver_final(pending.remove(&token), Result::from(other));
        }
        None => {
            let waiting = pending.remove(&token);
            let target = waiting
                .as_ref()
                .map(|w| w.target.clone())
                .unwrap_or_default();
            let _ = deliver_final(waiting, Err(HappenError::UnknownNode { node: target }));
        }
    }
}

/// Hands a final outcome to a requester, whether it waits for a plain
/// result or consumes a stream.
fn deliver_final(waiting: Option<Waiting>, outcome: Result<Event>) -> bool {
    let Some(waiting) = waiting else { return false };
    if let Some(reply) = waiting.reply {
        return reply.send(Outcome::Done(outcome)).is_ok();
    }
    match waiting.stream {
        Some(incoming) => incoming.tx.try_send(StreamMsg::End(outcome)).is_ok(),
        None => false,
    }
}

/// A consumer's credit for a stream this process produces.
fn on_credit(shared: &Arc<Shared>, token: &str, payload: &[u8]) {
    let Ok(token) = token.parse::<u64>() else {
        return;
    };
    let Some(state) = lock(&shared.credits).get(&token).cloned() else {
        return;
    };
    match wire::decode_credit(payload) {
        Ok(Credit::Acked(count)) => {
            state.acked.fetch_max(count, Ordering::AcqRel);
        }
        Ok(Credit::Cancel) => state.cancelled.store(true, Ordering::Release),
        Err(error) => {
            tracing::warn!(%error, "undecodable stream credit ignored");
            return;
        }
    }
    state.changed.notify_waiters();
}

/// Turns the client's connection events into `system.connection-status`
/// events for the local nodes.
async fn connection_events(
    shared: Arc<Shared>,
    mut events: mpsc::UnboundedReceiver<async_nats::Event>,
) {
    while let Some(event) = events.recv().await {
        let status = match &event {
            async_nats::Event::Connected => "connected",
            async_nats::Event::Disconnected => "disconnected",
            async_nats::Event::LameDuckMode => "lame-duck",
            async_nats::Event::Draining => "draining",
            async_nats::Event::Closed => "closed",
            async_nats::Event::SlowConsumer(_) => "slow-consumer",
            async_nats::Event::ServerError(_) | async_nats::Event::ClientError(_) => "error",
        };
        tracing::info!(status, detail = %event, "NATS connection");
        let mut system = Event::new(
            CONNECTION_STATUS,
            serde_json::json!({ "status": status, "detail": event.to_string() }),
        );
        stamp(&mut system, &crate::Id::from(SYSTEM_SENDER), None);
        if let Err(error) = shared.local.deliver_broadcast(&system) {
            tracing::warn!(%error, "connection status refused by a local node");
        }
    }
}

/// Forgets requests whose requester stopped waiting and whose reply will
/// never come (the target died), so the table does not grow.
async fn sweep_abandoned(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        lock(&shared.pending).retain(|_, waiting| waiting.alive());
    }
}

/// NATS subject matching: `*` is one token, `>` one or more trailing tokens.
fn subject_matches(filter: &str, subject: &str) -> bool {
    let mut subject = subject.split('.');
    for token in filter.split('.') {
        match (token, subject.next()) {
            (">", Some(_)) => return true,
            (_, None) => return false,
            ("*", Some(_)) => {}
            (t, Some(s)) if t == s => {}
            _ => return false,
        }
    }
    subject.next().is_none()
}

impl Transport for NatsTransport {
    fn attach(&self, node: &Node) -> Result<()> {
        self.shared.local.attach(node)?;
        self.shared.command(Command::Subscribe {
            subject: self.shared.direct_subject(node.id()),
            kind: Kind::Direct,
        });
        Ok(())
    }

    fn interest(&self, pattern: &Pattern) {
        let wanted: Vec<String> = match pattern.subjects() {
            Some(subjects) => subjects
                .iter()
                .map(|s| self.shared.broadcast_subject(s))
                .collect(),
            None => vec![self.shared.broadcast_subject(">")],
        };
        let mut filters = lock(&self.shared.filters);
        for subject in wanted {
            if filters.contains(&subject) {
                continue;
            }
            filters.push(subject.clone());
            self.shared.command(Command::Subscribe {
                subject,
                kind: Kind::Broadcast(filters.len() - 1),
            });
        }
    }

    fn broadcast(&self, event: Event) -> Result<()> {
        let payload = wire::encode_event(&event)?;
        self.shared.command(Command::Publish {
            subject: self.shared.broadcast_subject(event.event_type()),
            reply: None,
            payload: Bytes::from(payload),
            token: None,
        });
        Ok(())
    }

    fn send(&self, target: &str, event: Event, reply: ReplyTx, deadline: tokio::time::Instant) {
        let payload = match wire::encode_event(&event) {
            Ok(payload) => payload,
            Err(error) => {
                let _ = reply.send(Outcome::Done(Err(error)));
                return;
            }
        };
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        lock(&self.shared.pending).insert(
            token,
            Waiting {
                reply: Some(reply),
                stream: None,
                target: target.to_owned(),
                deadline,
            },
        );
        self.shared.command(Command::Publish {
            subject: self.shared.direct_subject(target),
            reply: Some(format!("{}.{token}", self.shared.inbox)),
            payload: Bytes::from(payload),
            token: Some(token),
        });
    }

    fn flush(&self) -> BoxFuture<'static, Result<()>> {
        let (done, flushed) = oneshot::channel();
        self.shared.command(Command::Flush(done));
        Box::pin(async move {
            flushed.await.unwrap_or_else(|_| {
                Err(HappenError::Transport(
                    "the NATS connection is closed".into(),
                ))
            })
        })
    }

    fn settle(&self) -> BoxFuture<'static, ()> {
        let shared = self.shared.clone();
        let _ = shared
            .phase
            .compare_exchange(OPEN, DRAINING, Ordering::AcqRel, Ordering::Acquire);
        let (done, flushed) = oneshot::channel();
        shared.command(Command::Flush(done));
        Box::pin(async move {
            let _ = tokio::time::timeout(CLOSE_FLUSH_LIMIT, flushed).await;
            // Wait for answers someone still waits for, up to their deadline.
            loop {
                let now = tokio::time::Instant::now();
                let waiting = lock(&shared.pending)
                    .values()
                    .any(|w| w.alive() && w.deadline > now);
                if !waiting {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    }

    fn close(&self) -> BoxFuture<'static, ()> {
        self.shared.phase.store(CLOSED, Ordering::Release);
        let flushed = self.flush();
        let shared = self.shared.clone();
        Box::pin(async move {
            // Replies of the last flows must leave before the connection
            // goes, unless the server is unreachable.
            let _ = tokio::time::timeout(CLOSE_FLUSH_LIMIT, flushed).await;
            shared.abort();
        })
    }

    fn abort(&self) {
        self.shared.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::subject_matches;

    #[test]
    fn nats_subject_semantics() {
        assert!(subject_matches("a.b", "a.b"));
        assert!(!subject_matches("a.b", "a.b.c"));
        assert!(subject_matches("a.*", "a.b"));
        assert!(!subject_matches("a.*", "a.b.c"));
        assert!(subject_matches("a.>", "a.b.c"));
        assert!(!subject_matches("a.>", "a"));
        assert!(subject_matches(">", "x"));
        assert!(!subject_matches("a.b.c", "a.b"));
    }
}

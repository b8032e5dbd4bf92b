//! The ordered command queue: every subscribe, unsubscribe and publish of a
//! runtime goes through one task, in order, so that a handler registered
//! before a broadcast is subscribed before that broadcast is published.
//!
//! The queue is unbounded for control commands (their number follows the
//! application's registrations) and for replies (bounded by the flows a node
//! accepted), but new events wait in it only up to
//! [`NatsConfig::outgoing_limit`](crate::nats::NatsConfig::outgoing_limit):
//! during an outage the client stops taking messages, and the senders of new
//! events get [`HappenError::Backpressure`] instead of memory growing without
//! limit.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;

use async_nats::{HeaderMap, Subject};
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::Shared;
use super::readers::Progress;
use crate::error::{HappenError, Result};

/// Queue group of direct subscriptions.
const QUEUE_GROUP: &str = "happen";

/// What a subscription's messages are.
#[derive(Clone, Copy, Debug)]
pub(super) enum Kind {
    /// Events sent to one node.
    Direct,
    /// Broadcasts through one filter.
    Broadcast,
    /// Replies, credits and round trips to this runtime.
    Inbox,
    /// Probes for one of this process's signing nodes.
    Identity,
}

pub(super) struct Publish {
    pub(super) subject: Subject,
    pub(super) reply: Option<Subject>,
    pub(super) headers: Option<HeaderMap>,
    pub(super) payload: Bytes,
    /// The request to fail if the publish fails.
    pub(super) token: Option<u64>,
}

pub(super) enum Command {
    Subscribe {
        id: u64,
        subject: String,
        kind: Kind,
    },
    Unsubscribe {
        id: u64,
    },
    Publish(Publish),
    /// Write what is buffered to the socket.
    Flush(oneshot::Sender<Result<()>>),
    /// Tells when every command queued before it is carried out.
    Reached(oneshot::Sender<()>),
}

/// How many messages wait to go out, with a limit on new ones: past it a
/// sender gets `Backpressure` (and nothing is dropped).
pub(super) struct Bound {
    pending: AtomicUsize,
    limit: usize,
}

impl Bound {
    pub(super) fn new(limit: usize) -> Self {
        Bound {
            pending: AtomicUsize::new(0),
            limit,
        }
    }

    /// Takes a place for a new message, if there is room.
    pub(super) fn reserve(&self) -> Result<()> {
        let pending = self.pending.fetch_add(1, Ordering::AcqRel);
        if pending >= self.limit {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return Err(HappenError::Backpressure {
                pending,
                limit: self.limit,
            });
        }
        Ok(())
    }

    /// Takes a place whatever the limit (replies, retries).
    fn force(&self) {
        self.pending.fetch_add(1, Ordering::AcqRel);
    }

    /// A message went out (or failed): its place is free.
    pub(super) fn release(&self) {
        self.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The sending side of the queue.
pub(super) struct Commands {
    tx: mpsc::UnboundedSender<Command>,
    /// Publishes in the queue or being handed to the client.
    publishing: Bound,
    /// Commands of any kind in the queue or being carried out.
    queued: AtomicUsize,
    client: async_nats::Client,
    /// Set when the client gave up reconnecting: nothing is sent any more.
    gave_up: std::sync::atomic::AtomicBool,
}

impl Commands {
    pub(super) fn new(
        limit: usize,
        client: async_nats::Client,
    ) -> (Commands, mpsc::UnboundedReceiver<Command>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let commands = Commands {
            tx,
            publishing: Bound::new(limit),
            queued: AtomicUsize::new(0),
            client,
            gave_up: std::sync::atomic::AtomicBool::new(false),
        };
        (commands, rx)
    }

    /// Queues a subscribe, unsubscribe or flush.
    pub(super) fn control(&self, command: Command) {
        self.queue(command);
    }

    /// Carries out or queues a control command, a reply or a retry (never
    /// refused for want of room). A publish the client refuses at once
    /// (an invalid subject) is returned as an error.
    pub(super) fn send(&self, command: Command) -> Result<()> {
        self.check_given_up()?;
        let command = match command {
            Command::Publish(publish) => match self.publish_now(publish)? {
                None => return Ok(()),
                Some(publish) => {
                    self.publishing.force();
                    Command::Publish(publish)
                }
            },
            other => other,
        };
        self.queue(command);
        Ok(())
    }

    /// For a message handed to the client some other way than this queue
    /// (a zero request, which awaits its answer from the client): what to
    /// wait for before handing it over, so that it does not overtake the
    /// messages queued before it. `None` when nothing is queued.
    pub(super) fn after_queued(&self) -> Option<oneshot::Receiver<()>> {
        if self.queued.load(Ordering::Acquire) == 0 {
            return None;
        }
        let (reached, rx) = oneshot::channel();
        self.queue(Command::Reached(reached));
        Some(rx)
    }

    /// Publishes a new event, or queues it unless the outgoing limit is
    /// reached.
    pub(super) fn publish(&self, publish: Publish) -> Result<()> {
        self.check_given_up()?;
        let Some(publish) = self.publish_now(publish)? else {
            return Ok(());
        };
        self.publishing.reserve()?;
        self.queue(Command::Publish(publish));
        Ok(())
    }

    /// The client gave up reconnecting (`Reconnect::max_attempts`): every
    /// later send fails at once, before the status is reported.
    pub(super) fn give_up(&self) {
        self.gave_up.store(true, Ordering::Release);
    }

    fn check_given_up(&self) -> Result<()> {
        match self.gave_up.load(Ordering::Acquire) {
            true => Err(HappenError::transport_msg(
                "the NATS client gave up reconnecting (Reconnect::max_attempts): nothing more is sent",
            )),
            false => Ok(()),
        }
    }

    fn queue(&self, command: Command) {
        self.queued.fetch_add(1, Ordering::AcqRel);
        // The loop only ends at shutdown, when nothing is sent any more.
        let _ = self.tx.send(command);
    }

    /// Hands `publish` to the client at once when nothing waits in the
    /// queue before it (so order is kept) and the client takes it without
    /// waiting: no trip through the queue's task. Gives it back otherwise.
    fn publish_now(&self, publish: Publish) -> Result<Option<Publish>> {
        if self.queued.load(Ordering::Acquire) != 0 {
            return Ok(Some(publish));
        }
        // Subjects and payload are shared bytes: these clones copy nothing.
        // Outside tokio's cooperative budget: this is a try, not a wait, and
        // a budget spent by the caller's task (a loop of sends in one poll
        // spends it after 128) would make the client look full when it is
        // not, sending every later message through the queue's task.
        // Polled where it is made (`now_or_never` would move it twice).
        let handing = std::pin::pin!(tokio::task::unconstrained(hand_over(
            &self.client,
            publish.subject.clone(),
            publish.reply.clone(),
            publish.headers.clone(),
            publish.payload.clone(),
        )));
        let mut cx = std::task::Context::from_waker(futures::task::noop_waker_ref());
        match handing.poll(&mut cx) {
            // The client is full (an outage, or a burst): queue it.
            Poll::Pending => Ok(Some(publish)),
            Poll::Ready(Ok(())) => Ok(None),
            Poll::Ready(Err(e)) => Err(HappenError::transport(
                format!("cannot publish to {}", publish.subject),
                e,
            )),
        }
    }

    fn published(&self) {
        self.publishing.release();
    }

    fn carried_out(&self) {
        self.queued.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A subscription's reader and the way to stop it.
struct Reader {
    stop: oneshot::Sender<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

/// Executes the commands in order until the queue closes.
pub(super) async fn run(
    shared: Arc<Shared>,
    client: async_nats::Client,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let mut readers: HashMap<u64, Reader> = HashMap::new();
    while let Some(command) = commands.recv().await {
        let _carried_out = CarriedOut(&shared);
        match command {
            Command::Publish(publish) => {
                let Publish {
                    subject,
                    reply,
                    headers,
                    payload,
                    token,
                } = publish;
                let published = hand_over(&client, subject.clone(), reply, headers, payload).await;
                shared.commands.published();
                if let Err(e) = published {
                    let error = HappenError::transport(format!("cannot publish to {subject}"), e);
                    match token {
                        Some(token) => shared.requests.fail(token, error),
                        None => tracing::warn!(%error, "message not published"),
                    }
                }
            }
            Command::Subscribe { id, subject, kind } => {
                let subscribed = match kind {
                    Kind::Direct => {
                        client
                            .queue_subscribe(subject.clone(), QUEUE_GROUP.to_owned())
                            .await
                    }
                    // Every holder of an identity hears a probe: the one
                    // with the key asked about answers.
                    Kind::Broadcast | Kind::Inbox | Kind::Identity => {
                        client.subscribe(subject.clone()).await
                    }
                };
                match subscribed {
                    Ok(subscriber) => {
                        let (stop, stopped) = oneshot::channel();
                        let reader = shared.readers.start(id);
                        let task =
                            tokio::spawn(read(shared.clone(), subscriber, kind, stopped, reader));
                        readers.insert(id, Reader { stop, task });
                    }
                    Err(e) => tracing::error!(subject, error = %e, "cannot subscribe"),
                }
            }
            Command::Unsubscribe { id } => {
                if let Some(reader) = readers.remove(&id) {
                    let (done, unsubscribed) = oneshot::channel();
                    if reader.stop.send(done).is_ok() {
                        // The UNSUB is queued in the client before any later
                        // command of ours (a node's reader then goes on
                        // with what was routed to it before the server
                        // saw the UNSUB, on its own).
                        let _ = unsubscribed.await;
                    }
                }
            }
            Command::Reached(reached) => {
                let _ = reached.send(());
            }
            Command::Flush(done) => {
                let flushed = client
                    .flush()
                    .await
                    .map_err(|e| HappenError::transport("flush failed", e));
                let _ = done.send(flushed);
            }
        }
    }
    for (_, reader) in readers {
        reader.task.abort();
    }
}

/// Gives a message (with its reply subject and headers, if any) to the
/// client; the future ends when the client has taken it.
async fn hand_over(
    client: &async_nats::Client,
    subject: Subject,
    reply: Option<Subject>,
    headers: Option<HeaderMap>,
    payload: Bytes,
) -> std::result::Result<(), async_nats::PublishError> {
    match (reply, headers) {
        (Some(reply), Some(headers)) => {
            client
                .publish_with_reply_and_headers(subject, reply, headers, payload)
                .await
        }
        (Some(reply), None) => client.publish_with_reply(subject, reply, payload).await,
        (None, Some(headers)) => client.publish_with_headers(subject, headers, payload).await,
        (None, None) => client.publish(subject, payload).await,
    }
}

/// Counts a command as carried out when its turn in the loop ends.
struct CarriedOut<'a>(&'a Shared);

impl Drop for CarriedOut<'_> {
    fn drop(&mut self) {
        self.0.commands.carried_out();
    }
}

/// Reads one subscription until it ends or is told to unsubscribe; tells
/// `readers` when it has read everything it had when a barrier was raised.
async fn read(
    shared: Arc<Shared>,
    mut subscriber: async_nats::Subscriber,
    kind: Kind,
    mut stop: oneshot::Receiver<oneshot::Sender<()>>,
    mut reader: Progress,
) {
    let stopped = reader
        .read(&mut subscriber, &mut stop, |message| match kind {
            Kind::Direct => super::receive::on_direct(&shared, message),
            Kind::Broadcast => super::receive::on_broadcast(&shared, message),
            Kind::Inbox => super::receive::on_inbox(&shared, message),
            Kind::Identity => super::receive::on_identity(&shared, message),
        })
        .await;
    let Some(stopped) = stopped else {
        return;
    };
    // A node's subscription is drained: what the server routed here before
    // it saw the UNSUB and has arrived is still handed over (to a node that
    // is gone now: its requester hears `UnknownNode` at once instead of
    // waiting for its timeout). async-nats 0.51 ends the stream at its
    // connection task's next turn after writing the UNSUB, not when the
    // server answers the ping sent with it: a message still on the wire
    // then is dropped in the client, and its requester waits for its
    // timeout (narrower than before: every message in flight was).
    let draining = matches!(kind, Kind::Direct) && subscriber.drain().await.is_ok();
    if !draining {
        let _ = subscriber.unsubscribe().await;
    }
    if let Ok(done) = stopped {
        let _ = done.send(());
    }
    if draining {
        let _ = tokio::time::timeout(super::CLOSE_FLUSH_LIMIT, async {
            while let Some(message) = futures::StreamExt::next(&mut subscriber).await {
                super::receive::on_direct(&shared, message);
            }
        })
        .await;
    }
}

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
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::Shared;
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
}

pub(super) struct Publish {
    pub(super) subject: String,
    pub(super) reply: Option<String>,
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
}

/// The sending side of the queue.
pub(super) struct Commands {
    tx: mpsc::UnboundedSender<Command>,
    /// Publishes in the queue or being handed to the client.
    publishing: AtomicUsize,
    limit: usize,
}

impl Commands {
    pub(super) fn new(limit: usize) -> (Commands, mpsc::UnboundedReceiver<Command>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let commands = Commands {
            tx,
            publishing: AtomicUsize::new(0),
            limit,
        };
        (commands, rx)
    }

    /// Queues a control command or a reply (never refused).
    pub(super) fn send(&self, command: Command) {
        if let Command::Publish(_) = command {
            self.publishing.fetch_add(1, Ordering::AcqRel);
        }
        // The loop only ends at shutdown, when nothing is sent any more.
        let _ = self.tx.send(command);
    }

    /// Queues a new event, unless the outgoing limit is reached.
    pub(super) fn publish(&self, publish: Publish) -> Result<()> {
        let pending = self.publishing.fetch_add(1, Ordering::AcqRel);
        if pending >= self.limit {
            self.publishing.fetch_sub(1, Ordering::AcqRel);
            return Err(HappenError::Backpressure {
                pending,
                limit: self.limit,
            });
        }
        let _ = self.tx.send(Command::Publish(publish));
        Ok(())
    }

    fn published(&self) {
        self.publishing.fetch_sub(1, Ordering::AcqRel);
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
        match command {
            Command::Publish(publish) => {
                let Publish {
                    subject,
                    reply,
                    headers,
                    payload,
                    token,
                } = publish;
                let published = match (reply, headers) {
                    (Some(reply), Some(headers)) => {
                        client
                            .publish_with_reply_and_headers(
                                subject.clone(),
                                reply,
                                headers,
                                payload,
                            )
                            .await
                    }
                    (Some(reply), None) => {
                        client
                            .publish_with_reply(subject.clone(), reply, payload)
                            .await
                    }
                    (None, Some(headers)) => {
                        client
                            .publish_with_headers(subject.clone(), headers, payload)
                            .await
                    }
                    (None, None) => client.publish(subject.clone(), payload).await,
                };
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
                    Kind::Broadcast | Kind::Inbox => client.subscribe(subject.clone()).await,
                };
                match subscribed {
                    Ok(subscriber) => {
                        let (stop, stopped) = oneshot::channel();
                        let task = tokio::spawn(read(shared.clone(), subscriber, kind, stopped));
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
                        // command of ours.
                        let _ = unsubscribed.await;
                    }
                    let _ = reader.task.await;
                }
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

/// Reads one subscription until it ends or is told to unsubscribe.
async fn read(
    shared: Arc<Shared>,
    mut subscriber: async_nats::Subscriber,
    kind: Kind,
    mut stop: oneshot::Receiver<oneshot::Sender<()>>,
) {
    loop {
        tokio::select! {
            biased;
            stopped = &mut stop => {
                let _ = subscriber.unsubscribe().await;
                if let Ok(done) = stopped {
                    let _ = done.send(());
                }
                return;
            }
            message = subscriber.next() => match message {
                Some(message) => match kind {
                    Kind::Direct => super::on_direct(&shared, message),
                    Kind::Broadcast => super::on_broadcast(&shared, message),
                    Kind::Inbox => super::on_inbox(&shared, message),
                },
                None => return,
            },
        }
    }
}

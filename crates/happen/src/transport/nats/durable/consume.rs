//! Consuming: each durable node's events from its consumer, settled when
//! their flows end.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, consumer};
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use tokio::sync::oneshot;

use super::{Durable, REPLY_TO, unavailable};
use crate::config::{DeliveryConfig, DeliveryMode, NodeLimits};
use crate::delivery::{self, Acknowledge, Arrival, Delivery, Failure, Responder};
use crate::error::{HappenError, Result};
use crate::event::Event;
use crate::id::Id;
use crate::node::Node;
use crate::store::applied::Settled;
use crate::store::jetstream::escape_key;
use crate::transport::nats::commands::{Command, Publish};
use crate::transport::nats::streams::NatsReply;
use crate::transport::nats::{Shared, subjects, wire};

/// Consumes the events of one durable node until it shuts down.
pub(super) async fn consume(
    durable: Arc<Durable>,
    shared: Arc<Shared>,
    node: Node,
    ready: oneshot::Sender<Result<()>>,
    stop: tokio_util::sync::CancellationToken,
) {
    let limits = node.limits();
    let setup = async {
        reconfigure(&durable, node.id(), &limits)
            .await?
            .messages()
            .await
            .map_err(|e| unavailable("cannot consume", e))
    };
    let mut messages = match setup.await {
        Ok(messages) => {
            let _ = ready.send(Ok(()));
            messages
        }
        Err(error) => {
            tracing::error!(node = node.id(), %error, "durable node not consuming");
            let _ = ready.send(Err(error));
            return;
        }
    };
    loop {
        let message = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            message = messages.next() => message,
        };
        let Some(message) = message else { break };
        let Ok(message) = message else { continue };
        if !delivered(&durable, node.id(), &message.message, &shared) {
            continue;
        }
        if node.core().is_closed() {
            ack(&shared, &message.message, AckKind::Nak(None));
            break;
        }
        take(&durable, &shared, &node, message, &limits.delivery).await;
    }
    hand_back(&durable, &shared, node.id(), messages).await;
}

/// Whether `message`, on the pull inbox of the durable node `node`, is a
/// delivery of the node's consumer: its reply subject is that consumer's
/// acknowledgement subject (`$JS.ACK.[<domain>.<account>.]<stream>.<node>.
/// ...`). Anything else was published there by someone who found the
/// inbox; acknowledging it would publish `+TERM` or `-NAK` wherever its
/// reply subject says, under this process's credentials (a review wrote
/// it into the node's identity record that way). It is rejected, and
/// nothing is sent.
fn delivered(
    durable: &Durable,
    node: &str,
    message: &async_nats::Message,
    shared: &Shared,
) -> bool {
    let consumer = escape_key(node);
    let ours = (message.reply.as_deref())
        .is_some_and(|reply| acknowledges(reply, &durable.stream, &consumer));
    if !ours {
        let error = HappenError::Integrity {
            event_id: String::new(),
            reason: format!(
                "a message on the pull inbox of durable node {node} that its consumer did not deliver"
            ),
        };
        shared.local.rejected(&message.subject, &error);
    }
    ours
}

/// Whether `reply` is an acknowledgement subject of `consumer` on
/// `stream`.
fn acknowledges(reply: &str, stream: &str, consumer: &str) -> bool {
    let Some(rest) = reply.strip_prefix("$JS.ACK.") else {
        return false;
    };
    let tokens: Vec<&str> = rest.split('.').collect();
    // Without a domain: <stream>.<consumer>.<5 numbers>; with one:
    // <domain>.<account hash>.<stream>.<consumer>.<6 or more tokens>.
    let at = match tokens.len() {
        7 => 0,
        n if n >= 10 => 2,
        _ => return false,
    };
    tokens[at] == stream && tokens[at + 1] == consumer
}

/// Gives back what this consumer's stream holds, so that another instance
/// (or this node after a restart) gets it now rather than after
/// `ack_wait`, and unsubscribes it. The node's consumer is paused first,
/// for two seconds at most (other instances wait that long if this
/// process dies meanwhile): the server then hands nothing more to this
/// stream, the pause's answer comes after what it handed before, and every
/// message received is given back. Without the pause, a message on its
/// way when the stream unsubscribed was lost to everyone until `ack_wait`
/// passed (a distributed audit saw about one per graceful restart arrive
/// some 30 s late). Then the consumer is resumed.
async fn hand_back(
    durable: &Durable,
    shared: &Shared,
    node: &str,
    mut messages: consumer::pull::Stream,
) {
    let stream = durable.js.get_stream(&durable.stream).await;
    let name = escape_key(node);
    let until =
        async_nats::datetime::add_std_duration(async_nats::datetime::now(), Duration::from_secs(2));
    let paused = match (&stream, until) {
        (Ok(stream), Ok(until)) => {
            tokio::time::timeout(Duration::from_secs(2), stream.pause_consumer(&name, until))
                .await
                .is_ok_and(|paused| paused.is_ok())
        }
        _ => false,
    };
    while let Some(Some(message)) = messages.next().now_or_never() {
        if let Ok(message) = message
            && delivered(durable, node, &message.message, shared)
        {
            ack(shared, &message.message, AckKind::Nak(None));
        }
    }
    drop(messages);
    if let (true, Ok(stream)) = (paused, &stream) {
        // The unsubscription went first, on the same connection.
        let resumed = tokio::time::timeout(Duration::from_secs(2), stream.resume_consumer(&name));
        if !matches!(resumed.await, Ok(Ok(_))) {
            tracing::warn!(
                node,
                "the durable node's consumer resumes when its pause ends"
            );
        }
    }
}

/// Writes the record of the durable node `id` and creates or updates its
/// consumer to match: its own subject and its handlers' broadcast filters.
pub(super) async fn reconfigure(
    durable: &Durable,
    id: &str,
    limits: &NodeLimits,
) -> Result<consumer::Consumer<consumer::pull::Config>> {
    let _one_at_a_time = durable.configuring.lock().await;
    durable.registry.publish(id).await?;
    let stream = durable
        .js
        .get_stream(&durable.stream)
        .await
        .map_err(|e| unavailable("cannot find the event stream", e))?;
    let filters = durable.registry.record(id).unwrap_or_default().filters;
    let mut subjects = vec![durable.subject(id)];
    subjects.extend(
        filters
            .iter()
            .map(|f| format!("{}.durable.bcast.{f}", durable.prefix)),
    );
    let name = escape_key(id);
    let mut config = consumer_config(&name, subjects, limits);
    let mut wide = false;
    loop {
        let made = match stream.create_consumer(config.clone()).await {
            Ok(consumer) => Ok(consumer),
            Err(_) => stream.update_consumer(config.clone()).await,
        };
        match made {
            Ok(consumer) => return Ok(consumer),
            // Filters that overlap without one covering the other are
            // refused by the server: take every broadcast instead, and let
            // the handlers' patterns choose (what none takes is acked).
            Err(_) if !wide && filters.len() > 1 => {
                wide = true;
                config.filter_subjects = vec![
                    durable.subject(id),
                    format!("{}.durable.bcast.>", durable.prefix),
                ];
            }
            Err(e) => return Err(unavailable("cannot create the node's consumer", e)),
        }
    }
}

fn consumer_config(
    name: &str,
    subjects: Vec<String>,
    limits: &NodeLimits,
) -> consumer::pull::Config {
    // Never hand the node more than it can run and queue: saturation would
    // only cost attempts.
    let room = limits
        .max_concurrent
        .saturating_add(limits.queue_limit)
        .max(1);
    consumer::pull::Config {
        durable_name: Some(name.to_owned()),
        filter_subjects: subjects,
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: limits.delivery.ack_wait,
        max_ack_pending: i64::try_from(limits.delivery.max_pending.min(room)).unwrap_or(i64::MAX),
        max_deliver: -1,
        ..Default::default()
    }
}

pub(super) fn ack(shared: &Shared, message: &async_nats::Message, kind: AckKind) {
    if let Some(subject) = &message.reply {
        let _ = shared.commands.send(Command::Publish(Publish {
            subject: subject.clone(),
            reply: None,
            headers: None,
            payload: Bytes::from(kind),
            token: None,
        }));
    }
}

/// Hands one stored event to the node, with the acknowledgement that
/// settles it when its flows end.
async fn take(
    durable: &Arc<Durable>,
    shared: &Arc<Shared>,
    node: &Node,
    message: jetstream::Message,
    config: &DeliveryConfig,
) {
    let attempt = message
        .info()
        .map(|info| u32::try_from(info.delivered).unwrap_or(u32::MAX))
        .unwrap_or(1);
    let message = message.message;
    let event = match wire::decode_event(&message.payload) {
        Ok(event) => event,
        Err(error) => {
            // Stored, but not a valid event: it will never be, so it is
            // terminated rather than redelivered.
            shared.local.rejected(&message.subject, &error);
            ack(shared, &message, AckKind::Term);
            return;
        }
    };
    let reply_to = message
        .headers
        .as_ref()
        .and_then(|h| h.get(REPLY_TO))
        .map(|v| v.as_str().to_owned());
    if let Some(reply) = reply_to.as_deref().filter(|r| !subjects::answerable(r)) {
        // Stored by someone who may publish to the stream, with an answer
        // subject no requester has: never run, never answered.
        shared.local.rejected(
            &message.subject,
            &subjects::not_answerable(reply, event.id()),
        );
        ack(shared, &message, AckKind::Term);
        return;
    }
    let target = (message.subject.strip_prefix(durable.prefix.as_str()))
        .and_then(|s| s.strip_prefix(".durable.node."));
    let stored = match super::replays::stored_as(&message, target, reply_to.as_deref(), &event) {
        Ok(stored) => stored,
        Err(error) => {
            shared.local.rejected(&message.subject, &error);
            ack(shared, &message, AckKind::Term);
            return;
        }
    };
    crate::transport::nats::key_lookups::key_known(shared, &event).await;
    if message.subject.contains(".durable.bcast.")
        && node.core().matching(event.event_type()).is_none()
    {
        // A broadcast through a filter no handler needs any more.
        ack(shared, &message, AckKind::Ack);
        return;
    }
    let copy = stored == super::replays::Stored::Copy;
    let mut responder = reply_to.map(|r| {
        let request = Some(&event.causal().id);
        let reply = NatsReply::new(shared.clone(), Some(r), node.id(), request);
        // A copy's answer is not kept: an `AlreadyTaken` kept for an inbox
        // could replace the answer kept there.
        match copy {
            true => Responder::remote(reply),
            false => Responder::remote(reply.keeping(durable.answers.clone())),
        }
    });
    let exactly_once = config.mode == DeliveryMode::ExactlyOnce;
    if copy && exactly_once {
        if let Some(responder) = responder {
            super::copies::answer(
                durable, shared, node, message, event, attempt, config, responder,
            )
            .await;
        }
        return;
    }
    let done_key =
        exactly_once.then(|| format!("{}.{}", escape_key(node.id()), escape_key(event.id())));
    if let Some(key) = &done_key {
        if !durable.taken.first(key, config.dedup_window) {
            // Taken here before. Completed (its acknowledgement was lost):
            // acknowledged now. Still running, or its completion not yet
            // recorded: its own acknowledgement will come.
            if matches!(durable.done.get(key.clone()).await, Ok(Some(_))) {
                ack(shared, &message, AckKind::Ack);
            }
            return;
        }
        // Only a redelivery, a copy stored after the stream's duplicate
        // window, or one under the bare event id can have completed before
        // (the stream drops a copy under the same message id within the
        // window, and one under another id was refused above): a fresh
        // first delivery needs no round trip to the completion records.
        let stale = || {
            let now = crate::uuid7::wall_millis();
            super::replays::may_have_run_before(event.causal().timestamp, now, durable.window)
        };
        let unsure = stored == super::replays::Stored::Unsure;
        if (attempt > 1 || unsure || stale())
            && matches!(durable.done.get(key.clone()).await, Ok(Some(_)))
        {
            // Completed before (its acknowledgement was lost, or this is a
            // copy stored again): not run again.
            ack(shared, &message, AckKind::Ack);
            return;
        }
        if let Some(first) = responder.take() {
            let window = config.dedup_window;
            responder = Some(node.core().seen.answers().keep(&event, first, window));
        }
    }
    let mut delivery = Delivery::new(event.clone(), responder, Arrival::Remote);
    delivery.ack = Some(Box::new(JsAck {
        durable: durable.clone(),
        shared: shared.clone(),
        message,
        node: node.shared_id().clone(),
        event,
        attempt,
        config: *config,
        done_key,
        settled: node.core().settled().clone(),
    }));
    // A refusal comes back through the acknowledgement.
    let _ = delivery::deliver(node.core(), delivery);
}

/// Settles one stored event when its flows end.
struct JsAck {
    durable: Arc<Durable>,
    shared: Arc<Shared>,
    message: async_nats::Message,
    node: Id,
    event: Event,
    attempt: u32,
    config: DeliveryConfig,
    done_key: Option<String>,
    /// Where the event's state marks are let go once it is settled.
    settled: Arc<Settled>,
}

impl Acknowledge for JsAck {
    fn ack(self: Box<Self>) {
        // The events the flows emitted to durable nodes are stored first:
        // acknowledged before them, the event would be lost with them if
        // the process died in between.
        let stored = self.durable.unstored.wait(self.event.id());
        if stored.is_none() && self.done_key.is_none() {
            ack(&self.shared, &self.message, AckKind::Ack);
            return;
        }
        let acks = self.durable.acks.clone();
        acks.spawn(async move {
            let ack_wait = self.config.ack_wait;
            if !emitted_stored(stored, &self.shared, &self.message, ack_wait).await {
                // Not stored here (given up, or the runtime closing): the
                // event is handed out again, and its flows' events are
                // sent again.
                return;
            }
            // Exactly-once: the completion is recorded before the event is
            // acknowledged, so a redelivery finds it.
            if let Some(key) = &self.done_key {
                // Through an outage too; meanwhile a redelivery to this
                // process is recognised by `taken`.
                let mut failures = 0u64;
                // A request's record names where it was answered, for
                // its copies (see `copies::answer`).
                let answered = (self.message.headers.as_ref())
                    .and_then(|h| h.get(REPLY_TO))
                    .map(|r| Bytes::copy_from_slice(r.as_str().as_bytes()))
                    .unwrap_or_default();
                while let Err(error) = self.durable.done.put(key.clone(), answered.clone()).await {
                    failures += 1;
                    if self.shared.is_closed() {
                        return; // the redelivery's run will record it
                    }
                    tracing::debug!(%error, failures, "completion not recorded yet");
                    tokio::time::sleep(Duration::from_millis(50 * failures.min(20))).await;
                }
                // A redelivery now finds the completion: the marks of the
                // flow's state updates are not needed any more.
                self.settled.settle(self.event.id());
            }
            ack(&self.shared, &self.message, AckKind::Ack);
        });
    }

    fn nak(self: Box<Self>, failure: Failure) {
        if let Some(key) = &self.done_key {
            self.durable.taken.forget(key);
        }
        let closed = match &failure.error {
            HappenError::Shutdown => true,
            // Refused by the node itself: it shut down while the event was
            // on its way in (between the consumer's check and the
            // delivery). Dead-lettered as undeliverable before.
            HappenError::UnknownNode { node } => *node == *self.node,
            _ => false,
        };
        if closed {
            // Not this instance's to finish: handed out again at once.
            ack(&self.shared, &self.message, AckKind::Nak(None));
            return;
        }
        if self.attempt < self.config.max_attempts && crate::durable::worth_retrying(&failure.error)
        {
            // The requester waits for a later attempt's answer.
            let delay = crate::durable::jittered_delay(&self.config, self.attempt);
            ack(&self.shared, &self.message, AckKind::Nak(Some(delay)));
            return;
        }
        let this = *self;
        this.shared
            .local
            .dead_letter(&this.node, &this.event, this.attempt, &failure.error);
        let mut headers = HeaderMap::new();
        headers.insert(
            "Happen-Error",
            failure.error.to_string().replace(['\r', '\n'], " "),
        );
        headers.insert("Happen-Attempts", this.attempt.to_string());
        let subject = format!("{}.dead.{}", this.durable.prefix, this.node);
        let (js, payload) = (this.durable.js.clone(), this.message.payload.clone());
        let stored = this.durable.unstored.wait(this.event.id());
        let acks = this.durable.acks.clone();
        let (shared, message, settled) = (this.shared, this.message, this.settled);
        let event_id = this.event.causal().id.clone();
        let ack_wait = this.config.ack_wait;
        acks.spawn(async move {
            // What the last attempt emitted before failing is stored first,
            // as for a completed flow.
            if !emitted_stored(stored, &shared, &message, ack_wait).await {
                return;
            }
            match js.publish_with_headers(subject, headers, payload).await {
                Ok(stored) => {
                    if let Err(error) = stored.await {
                        tracing::warn!(%error, "dead letter not stored");
                    }
                }
                Err(error) => tracing::warn!(%error, "dead letter not stored"),
            }
            ack(&shared, &message, AckKind::Term);
            settled.settle(&event_id);
        });
        failure.answer();
    }
}

/// Waits until the events an event's flows emitted to durable nodes are
/// stored (`stored`, from [`Unstored::wait`](super::unstored::Unstored::wait);
/// `None`: nothing to wait for), telling the server every half `ack_wait`
/// meanwhile that the event is still being worked on, so that it is not
/// handed out again. `false` if they will not be stored here (one was
/// given up, or the runtime is closing): the event must stay unsettled.
async fn emitted_stored(
    stored: Option<tokio::sync::oneshot::Receiver<()>>,
    shared: &Shared,
    message: &async_nats::Message,
    ack_wait: Duration,
) -> bool {
    let Some(mut stored) = stored else {
        return true;
    };
    let every = (ack_wait / 2).max(Duration::from_millis(10));
    loop {
        tokio::select! {
            outcome = &mut stored => return outcome.is_ok(),
            () = tokio::time::sleep(every) => ack(shared, message, AckKind::Progress),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_the_consumers_own_acknowledgement_subjects_are_deliveries() {
        let ours = |reply| super::acknowledges(reply, "HAPPEN_DURABLE", "payments");
        assert!(ours(
            "$JS.ACK.HAPPEN_DURABLE.payments.1.3.3.1712345678901234567.0"
        ));
        assert!(ours(
            "$JS.ACK.hub.ACCHASH.HAPPEN_DURABLE.payments.1.3.3.1712345678901234567.0.token"
        ));
        assert!(!ours(
            "$JS.ACK.HAPPEN_DURABLE.orders.1.3.3.1712345678901234567.0"
        ));
        assert!(!ours(
            "$JS.ACK.ELSEWHERE.payments.1.3.3.1712345678901234567.0"
        ));
        assert!(
            !ours("$JS.ACK.x.HAPPEN_DURABLE.payments.1.3.3.17.0"),
            "shifted tokens"
        );
        assert!(!ours("$KV.happen_identity.payments"));
        assert!(!ours("_INBOX.abc"));
        assert!(!ours("$JS.ACK.HAPPEN_DURABLE.payments"));
    }
}

//! Storing events: one task publishes them in order and awaits the
//! stream's acknowledgements side by side.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::{mpsc, oneshot};

use super::{Durable, Outgoing, PUBLISH_ACK_WAIT, Then, unavailable};
use crate::error::{HappenError, Result};
use crate::receipt::ReceiptTx;
use crate::transport::nats::{Shared, envelope};

/// The receiving end of the publishing queue.
pub(in crate::transport::nats) struct DurableOutbox(pub(super) mpsc::UnboundedReceiver<Outgoing>);

/// Publishes queued events in order, awaiting their acknowledgements in a
/// pipeline, and sends again what the server did not acknowledge.
pub(in crate::transport::nats) async fn publish(
    shared: Arc<Shared>,
    durable: Arc<Durable>,
    outbox: DurableOutbox,
) {
    let DurableOutbox(mut rx) = outbox;
    // However the task ends (also aborted), the acknowledgements waiting
    // for its events learn that they will not be stored here.
    let _closing = Closing(durable.clone());
    let mut seq = 0u64;
    let mut outstanding = BTreeSet::new();
    // Markers in the order they came, so by position in the queue.
    let mut markers: VecDeque<(u64, oneshot::Sender<()>)> = VecDeque::new();
    let mut acks = FuturesUnordered::new();
    let mut open = true;
    loop {
        tokio::select! {
            // The client lends a permit to each unacknowledged publish and
            // waits for one when they are gone, here, where nothing would
            // poll the acknowledgements that return them: take a new event
            // only below the bound.
            item = rx.recv(), if open && acks.len() < durable.in_flight => match item {
                None => open = false,
                Some(Outgoing::Marker(tx)) => markers.push_back((seq, tx)),
                Some(Outgoing::Event { subject, headers, payload, then, until, receipt, cause }) => {
                    seq += 1;
                    outstanding.insert(seq);
                    // Handed to the client here, in the order sent; only
                    // the acknowledgements are awaited side by side.
                    let first = durable
                        .js
                        .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
                        .await;
                    let message = Message { subject, headers, payload };
                    let then = (then, receipt, cause);
                    acks.push(store(durable.js.clone(), seq, message, first, then, until));
                }
            },
            Some((seq, (then, receipt, cause), outcome)) = acks.next() => {
                outstanding.remove(&seq);
                durable.queued.release();
                if let Some(cause) = cause {
                    durable.unstored.left(&cause, outcome.is_ok());
                }
                let _ = receipt.send(outcome.clone());
                if let Err(error) = outcome {
                    match then {
                        Then::Request(token) => shared.requests.fail(token, error),
                        Then::Tell { target, event } => shared.local.undelivered(
                            &target,
                            event.event_type(),
                            event.id(),
                            &error.to_string(),
                        ),
                        Then::Broadcast(event) => shared.local.undelivered(
                            "(durable receivers)",
                            event.event_type(),
                            event.id(),
                            &error.to_string(),
                        ),
                    }
                }
            },
            else => break,
        }
        // A marker resolves once nothing queued before it is outstanding.
        let lowest = outstanding.first().copied().unwrap_or(u64::MAX);
        while let Some((_, tx)) = markers.pop_front_if(|(at, _)| *at < lowest) {
            let _ = tx.send(());
        }
    }
}

/// Closes the tracking of unstored events when dropped.
struct Closing(Arc<Durable>);

impl Drop for Closing {
    fn drop(&mut self) {
        self.0.unstored.close();
    }
}

/// What an event's outcome settles: its `Then`, its receipt, and the
/// cause waiting for it.
type Settles = (Then, ReceiptTx, Option<crate::id::Id>);

/// An event as published to the stream.
struct Message {
    subject: String,
    headers: HeaderMap,
    payload: Bytes,
}

/// Waits for the stream to acknowledge `first` (the event's first publish),
/// publishing the event again while it is not acknowledged (the same
/// message id each time, so a repeat is dropped), until `until` passes.
async fn store(
    js: jetstream::Context,
    seq: u64,
    message: Message,
    first: std::result::Result<
        jetstream::context::PublishAckFuture,
        jetstream::context::PublishError,
    >,
    then: Settles,
    until: Option<crate::response::Deadline>,
) -> (u64, Settles, Result<()>) {
    let mut published = Some(first);
    let mut failures = 0u32;
    let (mut message, mut copied) = (message, false);
    loop {
        let publish = match published.take() {
            Some(first) => first,
            None => {
                js.publish_with_headers(
                    message.subject.clone(),
                    message.headers.clone(),
                    message.payload.clone(),
                )
                .await
            }
        };
        if let Err(refused) = &publish
            && refused.kind() == jetstream::context::PublishErrorKind::MaxPayloadExceeded
        {
            // Refused for its size: no later attempt can store it.
            let limit = js.client().max_payload();
            let error = envelope::check_size(&message.payload, Some(&message.headers), limit)
                .err()
                .unwrap_or(HappenError::PayloadTooLarge {
                    size: limit.saturating_add(1),
                    limit,
                });
            return (seq, then, Err(error));
        }
        let attempt = async {
            let ack = publish.map_err(|e| unavailable("cannot publish", e))?;
            tokio::time::timeout(PUBLISH_ACK_WAIT, ack)
                .await
                .map_err(|_| unavailable("no acknowledgement", "timed out"))?
                .map_err(|e| unavailable("not stored", e))
        };
        match attempt.await {
            // Stored before, by another publish of the same event: a flow
            // that runs again asking again. Its copy asks for the answer.
            Ok(ack) if ack.duplicate && failures == 0 && !copied => {
                if let Some(headers) = copy_headers(&message) {
                    message.headers = headers;
                    copied = true;
                    continue;
                }
                return (seq, then, Ok(()));
            }
            Ok(_) => return (seq, then, Ok(())),
            Err(error) => {
                failures += 1;
                if until
                    .as_ref()
                    .is_some_and(|u| tokio::time::Instant::now() >= u.get())
                {
                    return (seq, then, Err(error));
                }
                tracing::debug!(subject = %message.subject, failures, %error, "durable publish retried");
                tokio::time::sleep(Duration::from_millis(50 * u64::from(failures.min(20)))).await;
            }
        }
    }
}

/// A stored request's headers as its copy ([`super::copy_id`]), or `None`
/// for a tell or a broadcast.
fn copy_headers(message: &Message) -> Option<HeaderMap> {
    let reply = message.headers.get(super::REPLY_TO)?.as_str();
    let id = message.headers.get(super::replays::MESSAGE_ID)?.as_str();
    let (event, target) = id.split_once('@')?;
    let mut headers = message.headers.clone();
    headers.insert(
        super::replays::MESSAGE_ID,
        super::copy_id(event, target, reply),
    );
    Some(headers)
}

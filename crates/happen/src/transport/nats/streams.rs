//! Answers over NATS: a flow's outcome (and its streamed items) travels to
//! the requester's inbox, with credit-based flow control for streams.
//!
//! The producer sends `Reply::Item { seq }` messages and a final
//! `Reply::End { seq = count }`; the first item names a credit subject in the
//! producer's own inbox, where the consumer reports how many items it has
//! taken (every half window) or `Cancel` when it drops the stream. The
//! producer never runs more than a window ahead of the acknowledged count.
//!
//! An answer larger than the server's `max_payload` would never arrive; the
//! requester gets [`HappenError::PayloadTooLarge`] in its place at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::sync::Notify;

use super::commands::Publish;
use super::durable::answers::Answers;
use super::requests::{self, Asked};
use super::seal::Sealer;
use super::wire::{self, Credit, Reply};
use super::{Shared, lock};
use crate::delivery::ReplySink;
use crate::error::{HappenError, Result};
use crate::event::Event;
use crate::id::Id;
use crate::stream::{CreditSink, STREAM_WINDOW};

/// Producer side of a streamed response: how far the consumer got.
#[derive(Default)]
pub(super) struct CreditState {
    acked: AtomicU64,
    cancelled: AtomicBool,
    unwanted: AtomicBool,
    /// "No responders" answers to probes since the consumer last spoke.
    unanswered: std::sync::atomic::AtomicU8,
    changed: Notify,
}

/// The streams this process produces, by credit token.
#[derive(Default)]
pub(super) struct Credits {
    next: AtomicU64,
    streams: std::sync::Mutex<HashMap<u64, Arc<CreditState>>>,
}

impl Credits {
    /// Whether this process still produces the stream of credit token
    /// `token` (its end not sent yet).
    pub(super) fn producing(&self, token: u64) -> bool {
        lock(&self.streams).contains_key(&token)
    }
}

/// A stream this process produces.
struct Producing {
    seq: u64,
    token: u64,
    credit: Arc<CreditState>,
    /// `credit.unanswered` when the last probe was sent.
    unanswered_at_probe: u8,
    /// Whether an item has gone out: the first one names the credit
    /// subject, which the consumer learns from it.
    sent: bool,
}

/// Sends a flow's outcome (and streamed items) back over NATS to the
/// requester's inbox, sealed when the answering node signs (see
/// [`super::seal`]).
pub(super) struct NatsReply {
    shared: Arc<Shared>,
    subject: Option<String>,
    stream: Option<Producing>,
    /// The answering node and the request, until a reply needs a seal.
    answering: Option<(Id, Id)>,
    /// Found the first time a reply needs a seal (most replies, answers,
    /// need none: no look-up of the node for them).
    sealer: std::sync::OnceLock<Option<Sealer>>,
    /// Where a final answer is also kept (a durable request's; see
    /// `durable::answers`).
    keep: Option<Arc<Answers>>,
}

/// A reply's bytes and the headers that seal it.
type Sealed = (Vec<u8>, Option<HeaderMap>);

impl NatsReply {
    /// The answer of `node` (one of this process's) to the request
    /// `request` (`None`: a message that could not be read), whose reply
    /// subject is `subject` (`None`: nobody to answer).
    pub(super) fn new(
        shared: Arc<Shared>,
        subject: Option<String>,
        node: &str,
        request: Option<&Id>,
    ) -> Self {
        let answering = match (&subject, request) {
            (Some(_), Some(request)) => Some((Id::from(node), request.clone())),
            _ => None,
        };
        NatsReply {
            shared,
            subject,
            stream: None,
            answering,
            sealer: std::sync::OnceLock::new(),
            keep: None,
        }
    }

    /// Keeps the final answer in `answers` too, unless it ends a stream.
    pub(super) fn keeping(mut self, answers: Arc<Answers>) -> Self {
        self.keep = Some(answers);
        self
    }

    /// `reply`'s bytes, and its seal when the node signs (an answer needs
    /// none: it is a signed event); an error when it cannot be encoded or
    /// sealed, or the server would refuse it as too large.
    fn sealed(&self, reply: &Reply) -> Result<Sealed> {
        let payload = wire::encode_reply(reply)?;
        let sealer = match reply {
            Reply::Ok(_) => None,
            _ => self
                .sealer
                .get_or_init(|| {
                    let (node, request) = self.answering.as_ref()?;
                    Sealer::for_node(&self.shared, node, request)
                })
                .as_ref(),
        };
        let headers = match sealer {
            Some(sealer) => Some(sealer.seal(&payload)?),
            None => None,
        };
        super::envelope::check_size(&payload, headers.as_ref(), self.shared.max_payload())?;
        Ok((payload, headers))
    }

    /// Publishes `reply`; one that cannot be encoded, sealed or sent
    /// whole is replaced by the error saying so (unsealed if even that
    /// cannot be sealed: a requester that requires signatures waits on).
    fn publish(&self, subject: String, reply: &Reply, keep: Option<&Arc<Answers>>) {
        let sealed = self.sealed(reply).or_else(|error| {
            tracing::warn!(%error, "answer replaced by its error");
            let substitute = match reply {
                Reply::End { seq, .. } => Reply::End {
                    seq: *seq,
                    outcome: Box::new(Reply::Err(error)),
                },
                _ => Reply::Err(error),
            };
            self.sealed(&substitute).or_else(|error| {
                tracing::error!(%error, "a reply's error sent unsealed");
                wire::encode_reply(&substitute).map(|payload| (payload, None))
            })
        });
        match sealed {
            Ok((payload, headers)) => {
                let payload = Bytes::from(payload);
                if let Some(answers) = keep {
                    answers.keep(&self.shared, &subject, &payload, headers.as_ref());
                }
                self.send(subject, payload, headers);
            }
            Err(error) => tracing::error!(%error, "cannot encode a reply"),
        }
    }

    fn send(&self, subject: String, payload: Bytes, headers: Option<HeaderMap>) {
        if let Err(error) = Shared::answer(
            &self.shared,
            Publish {
                subject: subject.into(),
                reply: None,
                headers,
                payload,
                token: None,
            },
        ) {
            tracing::warn!(%error, "reply not published");
        }
    }
}

impl ReplySink for NatsReply {
    fn emit(&mut self, value: serde_json::Value) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let Some(subject) = self.subject.clone() else {
                return Err(HappenError::Cancelled); // nobody to stream to
            };
            if self.stream.is_none() {
                let credits = &self.shared.credits;
                let token = credits.next.fetch_add(1, Ordering::Relaxed);
                let credit = Arc::new(CreditState::default());
                lock(&credits.streams).insert(token, credit.clone());
                self.stream = Some(Producing {
                    seq: 0,
                    token,
                    credit,
                    unanswered_at_probe: 0,
                    sent: false,
                });
            }
            let Some(producing) = self.stream.as_mut() else {
                return Err(HappenError::Cancelled);
            };
            // Flow control: at most STREAM_WINDOW items beyond what the
            // consumer acknowledged.
            loop {
                let changed = producing.credit.changed.notified();
                if producing.credit.cancelled.load(Ordering::Acquire) {
                    return Err(HappenError::Cancelled);
                }
                if producing.credit.unwanted.load(Ordering::Acquire) {
                    // Nobody takes the items: dropped, and the flow runs on.
                    // Still counted, so that the end names every item: a
                    // forged "unwanted" cannot cut a stream short unseen.
                    producing.seq += 1;
                    return Ok(());
                }
                // The count comes from the wire: saturating, so that no
                // count a consumer sends can overflow it.
                let allowed = producing
                    .credit
                    .acked
                    .load(Ordering::Acquire)
                    .saturating_add(STREAM_WINDOW as u64);
                if producing.seq < allowed {
                    break;
                }
                // A consumer that stops taking items without a word (its
                // process died, its `Cancel` was lost) would hold this flow
                // and its slot for good, and so would a reader whose credits
                // were lost: while no credit comes, its inbox is asked every
                // `PROBE_AFTER` whether it still wants them, and how many it
                // took.
                if tokio::time::timeout(PROBE_AFTER, changed).await.is_err() {
                    // A probe met with silence (a live consumer still
                    // waiting for its first item, or an older one) since
                    // the last one: the "no responders" before it is
                    // forgiven (a reader's answer forgives it on arrival).
                    let unanswered = producing.credit.unanswered.load(Ordering::Acquire);
                    if unanswered == producing.unanswered_at_probe {
                        producing.credit.unanswered.store(0, Ordering::Release);
                    }
                    producing.unanswered_at_probe =
                        producing.credit.unanswered.load(Ordering::Acquire);
                    probe(&self.shared, &subject, producing.token);
                }
            }
            // The first item that goes out names the credit subject (one
            // refused before it named it to nobody).
            let credit =
                (!producing.sent).then(|| format!("{}.c{}", self.shared.inbox, producing.token));
            let item = Reply::Item {
                seq: producing.seq,
                value,
                credit,
            };
            // An item too large (or that cannot be sealed) is the flow's
            // error, not a hole in the stream.
            let (payload, headers) = self.sealed(&item)?;
            if let Some(producing) = self.stream.as_mut() {
                producing.seq += 1;
                producing.sent = true;
            }
            self.send(subject, Bytes::from(payload), headers);
            Ok(())
        })
    }

    fn reply(self: Box<Self>, outcome: Result<Event>) {
        let Some(subject) = self.subject.clone() else {
            return;
        };
        let (reply, keep) = match &self.stream {
            Some(producing) => {
                let end = Reply::End {
                    seq: producing.seq,
                    outcome: Box::new(Reply::from(outcome)),
                };
                // A stream's end is not kept: it could overtake its items.
                (end, None)
            }
            None => (Reply::from(outcome), self.keep.as_ref()),
        };
        self.publish(subject, &reply, keep);
        // Forgotten once its end is on its way: a reader asking after the
        // stream before then would be told `Cancel` ahead of the end.
        if let Some(producing) = &self.stream {
            lock(&self.shared.credits.streams).remove(&producing.token);
        }
    }
}

/// How long a producer waits for credit before it asks the consumer's
/// inbox whether the stream is still wanted (and again as often while it
/// waits). A slow consumer costs one small message per period; a dead one
/// ends the stream within about two (two "no responders" in a row).
const PROBE_AFTER: Duration = Duration::from_secs(2);

/// The subject that asks the requester behind `items` (`<inbox>.<token>`,
/// where the stream's items go) whether it still takes them:
/// `<inbox>.s<token>`. `None` for a subject of another form (a requester
/// that is not a Happen runtime's inbox: nobody to ask).
fn probe_subject(items: &str) -> Option<String> {
    let (inbox, token) = items.rsplit_once('.')?;
    let digits = !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit());
    (digits && super::subjects::answerable(items)).then(|| format!("{inbox}.s{token}"))
}

/// Asks the consumer of stream `token` whether it still takes the items
/// (see [`on_probe`]), with this stream's credit subject as the reply
/// subject: with nobody subscribed to the consumer's inbox (its process
/// is gone) the server answers there "no responders" at once, which
/// [`on_credit`] counts: two in a row cancel the stream.
fn probe(shared: &Arc<Shared>, items: &str, token: u64) {
    let credit = format!("{}.c{token}", shared.inbox);
    if let Some(own) = items
        .strip_prefix(shared.inbox.as_str())
        .and_then(|rest| rest.strip_prefix('.'))
    {
        // The requester is this process (a durable node's answer comes
        // back through the stream even within one process): the server
        // would not echo the probe to this connection, and its "no
        // responders" would be wrong. Asked here instead.
        let Some(state) = lock(&shared.credits.streams).get(&token).cloned() else {
            return;
        };
        match own.parse().map(|t| requests::asked(shared, t, &credit)) {
            Ok(Asked::Waiting) => return,
            Ok(Asked::Reading(taken)) => {
                state.acked.fetch_max(taken, Ordering::AcqRel);
            }
            Ok(Asked::Gone) => state.cancelled.store(true, Ordering::Release),
            Err(_) => return,
        }
        state.changed.notify_waiters();
        return;
    }
    let Some(subject) = probe_subject(items) else {
        return;
    };
    let publish = Publish {
        subject: subject.into(),
        reply: Some(credit.into()),
        headers: None,
        payload: Bytes::new(),
        token: None,
    };
    if let Err(error) = shared.commands.publish(publish) {
        tracing::debug!(%error, "a stream's consumer could not be asked");
    }
}

/// A producer asks whether request `token`'s stream is still taken here.
/// When nobody waits for it any more (the stream was dropped and the
/// cancel did not reach the producer), the answer is `Cancel`. A stream
/// being read is answered, on its own credit subject, with the count of
/// items taken so far: the producer lifts its window to it, so that
/// credits lost on the way (two in a row would stall a reader that took
/// everything it was sent) are made good. A requester still waiting for the first item says nothing
/// (its producer is slow, or the item is on its way).
pub(super) fn on_probe(shared: &Arc<Shared>, token: &str, reply: Option<&str>) {
    let (Ok(token), Some(reply)) = (token.parse::<u64>(), reply) else {
        return;
    };
    // Only to a producer's credit subject (`<inbox>.c<n>`): a probe cannot
    // make this process write into another request's answers. A count goes
    // only to the stream's own credit subject (see `requests::asked`); a
    // cancel to any credit subject, as anyone could send one there.
    let credit = reply
        .rsplit_once(".c")
        .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    if !credit || !super::subjects::answerable(reply) {
        return;
    }
    let mut answer = NatsCredit::new(shared.clone(), reply.to_owned());
    match requests::asked(shared, token, reply) {
        Asked::Gone => answer.cancel(),
        Asked::Waiting => {}
        Asked::Reading(taken) => answer.send(Credit::Acked(taken)),
    }
}

/// A consumer's credit for a stream this process produces, or the
/// server's "no responders" for a probe of its consumer (see [`probe`]).
/// A requester asking after a stream this process no longer produces (its
/// end was lost on the way) is told `Cancel` (see `requests::producer`).
pub(super) fn on_credit(shared: &Arc<Shared>, token: &str, message: &async_nats::Message) {
    let (status, payload) = (message.status, &message.payload[..]);
    let Ok(token) = token.parse::<u64>() else {
        return;
    };
    let Some(state) = lock(&shared.credits.streams).get(&token).cloned() else {
        if let Some(reply) = message.reply.as_deref()
            && status.is_none()
            && requests::is_asking(reply)
            && super::subjects::answerable(reply)
        {
            NatsCredit::new(shared.clone(), reply.to_owned()).cancel();
        }
        return;
    };
    if status == Some(async_nats::StatusCode::NO_RESPONDERS) {
        // Nobody is subscribed to the consumer's inbox: its process is
        // gone, and so is anyone to take the items. Twice in a row (two
        // probes apart): once may be a consumer resubscribing after a
        // reconnection. (Anyone who knows the credit subject can say so,
        // as anyone can send `Cancel` there.)
        if state.unanswered.fetch_add(1, Ordering::AcqRel) >= 1 {
            state.cancelled.store(true, Ordering::Release);
            state.changed.notify_waiters();
        }
        return;
    }
    state.unanswered.store(0, Ordering::Release);
    match wire::decode_credit(payload) {
        Ok(Credit::Acked(count)) => {
            state.acked.fetch_max(count, Ordering::AcqRel);
        }
        Ok(Credit::Cancel) => state.cancelled.store(true, Ordering::Release),
        Ok(Credit::Unwanted) => state.unwanted.store(true, Ordering::Release),
        Err(error) => {
            tracing::warn!(%error, "undecodable stream credit ignored");
            return;
        }
    }
    state.changed.notify_waiters();
}

/// Consumer side: tells the producer how far this process got.
pub(super) struct NatsCredit {
    shared: Arc<Shared>,
    subject: String,
    consumed: u64,
    reported: u64,
}

impl NatsCredit {
    pub(super) fn new(shared: Arc<Shared>, subject: String) -> Self {
        NatsCredit {
            shared,
            subject,
            consumed: 0,
            reported: 0,
        }
    }

    fn send(&self, credit: Credit) {
        if let Ok(payload) = wire::encode_credit(&credit) {
            let _ = Shared::answer(
                &self.shared,
                Publish {
                    subject: self.subject.clone().into(),
                    reply: None,
                    headers: None,
                    payload: Bytes::from(payload),
                    token: None,
                },
            );
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

    fn unwanted(&mut self) {
        self.send(Credit::Unwanted);
    }
}

#[cfg(test)]
mod tests {
    use super::probe_subject;

    #[test]
    fn only_a_happen_inbox_is_asked_about_its_stream() {
        assert_eq!(
            probe_subject("_INBOX.a1b2.17").as_deref(),
            Some("_INBOX.a1b2.s17")
        );
        for other in [
            "",
            "_INBOX.",
            "_INBOX.a1b2.",
            "_INBOX.a1b2.x7",
            "happen.node.a.17",
            "17",
        ] {
            assert_eq!(probe_subject(other), None, "{other:?}");
        }
    }
}

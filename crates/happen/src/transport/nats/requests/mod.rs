//! Requests this runtime sent and is waiting for: their replies (plain or
//! streamed), and what happens when the server says nobody subscribes to
//! the target ("no responders").
//!
//! "No responders" does not always mean the node does not exist. After an
//! outage the sender's connection may be back before the receiver has
//! subscribed again (each reconnects on its own schedule), and a node's
//! process may be restarting. So when the target answered this runtime
//! recently, or this runtime itself just reconnected, the event is offered
//! again, with growing pauses, until the request's deadline; only then is it
//! a failure: [`HappenError::Unreachable`] (the node may be restarting or
//! gone). With neither reason to wait it is [`HappenError::UnknownNode`] at
//! once. When nobody waits for the answer (a fire-and-forget send), a
//! failure is logged, counted and reported as a
//! [`system::UNDELIVERED`](crate::system::UNDELIVERED) event.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_nats::Subject;
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::commands::{Command, Publish};
use super::streams::NatsCredit;
use super::wire::Reply;
use super::{Shared, lock};
use crate::delivery::ReplyTx;
use crate::error::{HappenError, Result, millis};
use crate::event::Event;
use crate::id::Id;
use crate::stream::{CreditSink, Outcome, STREAM_WINDOW, StreamMsg, StreamRx};

mod asked;
mod checks;
mod producer;
mod tells;

use asked::Incoming;
pub(super) use asked::{Asked, asked};
pub(super) use producer::{answered as producer_answered, ask as ask_producers, is_asking};

/// How long an answer from a node makes "no responders" from it look like a
/// restart rather than a missing node.
const ANSWERED_RECENTLY: Duration = Duration::from_secs(60);
/// How long after this runtime reconnected "no responders" is taken as the
/// target not having resubscribed yet.
const RECONNECTED_RECENTLY: Duration = Duration::from_secs(30);
/// The first pause before offering an event again; it doubles up to
/// [`MAX_RETRY_PAUSE`].
const FIRST_RETRY_PAUSE: Duration = Duration::from_millis(10);
const MAX_RETRY_PAUSE: Duration = Duration::from_millis(250);
/// Offering stops this much before the deadline (a fifth of the timeout, at
/// most this), so that the requester hears why rather than a bare timeout.
const MAX_GIVE_UP_MARGIN: Duration = Duration::from_millis(250);

/// A request waiting for its reply.
pub(super) struct Waiting {
    /// Until the first reply arrives.
    reply: Option<ReplyTx>,
    /// Once the reply turned out to be a stream.
    stream: Option<Incoming>,
    target: Id,
    event_type: Id,
    event_id: Id,
    /// Until when the request is offered and its requester waits (its
    /// handle's timeout, also when set after the send).
    deadline: crate::response::Deadline,
    /// The published message, to offer it again after "no responders".
    subject: Subject,
    payload: Bytes,
    /// How many times "no responders" came back.
    refusals: u32,
    sent_at: Instant,
    /// The requesting node, when it requires signed events: every reply
    /// must then come from the node it asked (see [`checks`]).
    verify: Option<Id>,
    /// Replies that came while the asked node's key was being looked up,
    /// in arrival order (judged when the lookup ends).
    held: Option<std::collections::VecDeque<(Reply, async_nats::Message)>>,
}

impl Waiting {
    /// How long before its deadline a request is given up, so that its
    /// requester hears why rather than a bare timeout: a fifth of its
    /// timeout, at most [`MAX_GIVE_UP_MARGIN`].
    fn give_up_margin(&self) -> Duration {
        let timeout = self.deadline.get().saturating_duration_since(self.sent_at);
        (timeout / 5).min(MAX_GIVE_UP_MARGIN)
    }

    /// Whether someone still waits for more of this request.
    fn alive(&self) -> bool {
        self.reply.as_ref().is_some_and(|r| !r.is_closed())
            || self.stream.as_ref().is_some_and(|s| !s.tx.is_closed())
    }
}

/// Hashes a request's token, a counter of this runtime's (a reply naming
/// another token finds nothing): one multiplication, where the standard
/// hasher's SipHash costs about a hundred instructions per lookup, and a
/// request looks its token up three times.
#[derive(Default)]
struct TokenHasher(u64);

impl std::hash::Hasher for TokenHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(self.0.rotate_left(8) ^ u64::from(byte));
        }
    }

    fn write_u64(&mut self, n: u64) {
        // Fibonacci hashing: the high bits, which the table uses to tell
        // entries apart, depend on every bit of the token.
        self.0 = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The requests waiting for replies, by token.
type PendingMap = HashMap<u64, Waiting, std::hash::BuildHasherDefault<TokenHasher>>;

/// The requests of one runtime.
#[derive(Default)]
pub(super) struct Requests {
    next: AtomicU64,
    pending: Mutex<PendingMap>,
    /// Tells kept while their receiver may be resubscribing.
    pub(super) tells: tells::Tells,
    /// When each node last answered this runtime.
    /// (Looked up for every request and reply: see "Maps looked
    /// up per event" in the transport module.)
    answered: Mutex<Answered>,
}

/// When each node last answered; entries older than [`ANSWERED_RECENTLY`]
/// say nothing and are let go whenever the map has doubled since the last
/// look (a leak audit saw it keep every node id that ever answered).
#[derive(Default)]
struct Answered {
    at: foldhash::HashMap<Id, Instant>,
    /// The size at which the old entries are let go next.
    prune_at: usize,
}

impl Requests {
    /// Registers a request for `event` to `target` and gives the message to
    /// publish (its reply subject names the request).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn register(
        &self,
        inbox: &str,
        subject: Subject,
        target: &str,
        event: &Event,
        payload: Bytes,
        reply: ReplyTx,
        deadline: crate::response::Deadline,
        verify: Option<Id>,
    ) -> Publish {
        let token = self.next.fetch_add(1, Ordering::Relaxed);
        lock(&self.pending).insert(
            token,
            Waiting {
                reply: Some(reply),
                stream: None,
                target: Id::from(target),
                event_type: Id::from(event.event_type()),
                event_id: event.causal().id.clone(),
                deadline,
                subject: subject.clone(),
                payload: payload.clone(),
                refusals: 0,
                sent_at: Instant::now(),
                verify,
                held: None,
            },
        );
        Publish {
            subject,
            reply: Some(reply_subject(inbox, token)),
            headers: None,
            payload,
            token: Some(token),
        }
    }

    /// Ends a request with `error` (its message could not be published).
    pub(super) fn fail(&self, token: u64, error: HappenError) {
        let waiting = lock(&self.pending).remove(&token);
        deliver_final(waiting, Err(error));
    }

    /// Whether a request whose requester still waits is on its way.
    pub(super) fn any_waiting(&self) -> bool {
        let now = Instant::now();
        lock(&self.pending)
            .values()
            .any(|w| w.alive() && w.deadline.get() > now)
    }

    /// Forgets requests nobody waits for any more and whose deadline passed
    /// (their answer, if it ever comes, has nowhere to go).
    pub(super) fn sweep(&self) {
        let now = Instant::now();
        lock(&self.pending).retain(|_, w| w.alive() || w.deadline.get() > now);
    }

    /// Ends every request with `Shutdown` (this runtime stopped taking
    /// work; their answers could not arrive any more).
    pub(super) fn clear(&self) {
        let pending: Vec<Waiting> = lock(&self.pending).drain().map(|(_, w)| w).collect();
        for waiting in pending {
            deliver_final(Some(waiting), Err(HappenError::Shutdown));
        }
    }

    fn answered_recently(&self, node: &Id) -> bool {
        lock(&self.answered)
            .at
            .get(node)
            .is_some_and(|at| at.elapsed() < ANSWERED_RECENTLY)
    }

    fn note_answer(&self, node: &Id) {
        let now = Instant::now();
        let mut answered = lock(&self.answered);
        match answered.at.get_mut(node) {
            Some(at) => *at = now,
            None => {
                if answered.at.len() >= answered.prune_at.max(1024) {
                    answered.at.retain(|_, at| at.elapsed() < ANSWERED_RECENTLY);
                    answered.prune_at = 2 * answered.at.len();
                }
                answered.at.insert(node.clone(), now);
            }
        }
    }
}

/// Whether request `token` still waits for its reply.
pub(super) fn waits(shared: &Shared, token: u64) -> bool {
    lock(&shared.requests.pending).contains_key(&token)
}

/// A reply on this runtime's inbox for request `token`.
pub(super) fn on_reply(shared: &Arc<Shared>, token: u64, message: async_nats::Message) {
    if message.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
        return no_responders(shared, token);
    }
    let reply = match super::envelope::open_reply(&message.payload) {
        Ok(reply) => reply,
        Err(error) => Reply::Err(error),
    };
    let pending = lock(&shared.requests.pending);
    let Some(waiting) = pending.get(&token) else {
        drop(pending);
        return unwanted(shared, reply);
    };
    if waiting.verify.is_some() {
        return checks::judge(shared, pending, token, reply, message);
    }
    take(shared, pending, token, reply);
}

/// Lets go of a reply to a request that was forgotten (its requester gave
/// up: timeout, dropped handle): a stream's first item names where to say
/// its items are unwanted (without that, a producer would wait for credit
/// for good).
fn unwanted(shared: &Arc<Shared>, reply: Reply) {
    if let Reply::Item {
        credit: Some(subject),
        ..
    } = reply
        && super::subjects::answerable(&subject)
    {
        NatsCredit::new(shared.clone(), subject).unwanted();
    }
}

/// Takes a reply to request `token` (found in `pending`, and believed):
/// an answer, a stream's item or its end.
fn take(shared: &Arc<Shared>, mut pending: MutexGuard<'_, PendingMap>, token: u64, reply: Reply) {
    let requests = &shared.requests;
    let Some(waiting) = pending.get_mut(&token) else {
        return;
    };
    requests.note_answer(&waiting.target);
    let broken = |reason: String| StreamMsg::End(Err(HappenError::StreamBroken { reason }));
    match reply {
        Reply::Item { seq, value, credit } => {
            if waiting.stream.is_none() {
                if seq != 0 {
                    deliver_final(
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
                // A credit subject that is no inbox is not written to:
                // the stream then runs without credit from here.
                let credit = credit.filter(|s| super::subjects::answerable(s));
                let credit_subject = credit.clone();
                let credit = credit.map(|subject| {
                    Box::new(NatsCredit::new(shared.clone(), subject)) as Box<dyn CreditSink>
                });
                let started = waiting.reply.take().is_some_and(|reply| {
                    reply
                        .send(Outcome::Stream(StreamRx::new(rx, credit)))
                        .is_ok()
                });
                if !started {
                    // The requester let go unread; the stream, dropped
                    // untaken, told the producer its items are unwanted.
                    pending.remove(&token);
                    return;
                }
                waiting.stream = Some(Incoming {
                    tx,
                    next: 0,
                    credit: credit_subject,
                    producer: producer::Producer::new(),
                });
            }
            let Some(incoming) = waiting.stream.as_mut() else {
                return;
            };
            if seq < incoming.next {
                // An item taken already, again (a replay): dropped.
                return;
            }
            if seq != incoming.next {
                let _ = incoming.tx.try_send(broken(format!(
                    "expected item {}, got item {seq}",
                    incoming.next
                )));
                pending.remove(&token);
                return;
            }
            incoming.next += 1;
            incoming.producer.heard();
            if incoming.tx.try_send(StreamMsg::Item(value)).is_err() {
                // Full (the producer ignored flow control) or closed.
                pending.remove(&token);
            }
        }
        Reply::End { seq, outcome } => {
            let Some(waiting) = pending.remove(&token) else {
                return;
            };
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
                    deliver_final(Some(waiting), Result::from(*outcome));
                }
                None => {
                    deliver_final(
                        Some(waiting),
                        Err(HappenError::StreamBroken {
                            reason: format!("the stream ended after {seq} items but none arrived"),
                        }),
                    );
                }
            }
        }
        other => {
            let waiting = pending.remove(&token);
            drop(pending);
            if let (Reply::Err(HappenError::Deadlock { .. }), Some(waiting)) = (&other, &waiting)
                && !waiting.alive()
                && !waiting.payload.is_empty()
                && waiting.deadline.get() > Instant::now()
            {
                return tell_again(shared, waiting);
            }
            deliver_final(waiting, Result::from(other));
        }
    }
}

/// A request refused as a deadlock whose handle was dropped (its requester
/// waits for nothing: fire-and-forget) is sent again as a tell, which waits
/// for a free slot instead. The event was not run; it keeps its id and
/// causal context. (A durable request is not: its refusal comes back to be
/// retried by the stream.)
fn tell_again(shared: &Arc<Shared>, waiting: &Waiting) {
    let publish = Publish {
        subject: waiting.subject.clone(),
        reply: None,
        headers: Some(super::envelope::tell_headers()),
        payload: waiting.payload.clone(),
        token: None,
    };
    if let Err(error) = shared.commands.publish(publish) {
        tracing::warn!(%error, node = %waiting.target, event_type = %waiting.event_type, "a dropped request could not be sent again as a tell");
    }
}

/// The server had no subscriber for request `token`'s target: offer it
/// again if the target is plausibly on its way back, or give up.
fn no_responders(shared: &Arc<Shared>, token: u64) {
    let requests = &shared.requests;
    let mut pending = lock(&requests.pending);
    let Some(waiting) = pending.get_mut(&token) else {
        return;
    };
    if waiting.verify.is_some() {
        // Anyone can publish a "no responders" status on an overheard reply
        // subject: a requester that requires signatures takes it only as
        // the reason to give should no signed answer come in time.
        waiting.deadline.note(HappenError::Unreachable {
            node: waiting.target.to_string(),
            event_type: waiting.event_type.to_string(),
            attempts: waiting.refusals + 1,
            waited_ms: millis(waiting.sent_at.elapsed()),
        });
        return;
    }
    waiting.refusals += 1;
    let plausible = requests.answered_recently(&waiting.target)
        || shared.status.reconnected_within(RECONNECTED_RECENTLY);
    let pause = retry_pause(waiting.refusals);
    if !waiting.alive()
        && let Some(at) = shared.status.reconnected_at()
    {
        // Nobody waits for it (a tell, a dropped handle): after the
        // connection came back it is offered while its receiver may be
        // resubscribing, however long it was held (an edge runtime's
        // events can be older than their timeout).
        waiting.deadline.extend_to(at + RECONNECTED_RECENTLY);
    }
    let deadline = waiting.deadline.get();
    let margin = waiting.give_up_margin();
    if plausible && Instant::now() + pause + margin < deadline && !shared.is_closed() {
        let publish = Publish {
            subject: waiting.subject.clone(),
            reply: Some(reply_subject(&shared.inbox, token)),
            headers: None,
            payload: waiting.payload.clone(),
            token: Some(token),
        };
        drop(pending);
        let shared = shared.clone();
        tokio::spawn(async move {
            tokio::time::sleep(pause).await;
            if !shared.is_closed()
                && lock(&shared.requests.pending).contains_key(&token)
                && let Err(error) = shared.commands.send(Command::Publish(publish))
            {
                shared.requests.fail(token, error);
            }
        });
        return;
    }
    let Some(waiting) = pending.remove(&token) else {
        return;
    };
    drop(pending);
    let error = if plausible || waiting.refusals > 1 {
        HappenError::Unreachable {
            node: waiting.target.to_string(),
            event_type: waiting.event_type.to_string(),
            attempts: waiting.refusals,
            waited_ms: millis(waiting.sent_at.elapsed()),
        }
    } else {
        HappenError::UnknownNode {
            node: waiting.target.to_string(),
        }
    };
    let (target, event_type, event_id) = (
        waiting.target.clone(),
        waiting.event_type.clone(),
        waiting.event_id.clone(),
    );
    if !deliver_final(Some(waiting), Err(error.clone())) {
        shared
            .local
            .undelivered(&target, &event_type, &event_id, &error.to_string());
    }
}

/// `<inbox>.<token>`, where the answer to request `token` comes back
/// (the token's digits written directly: `format!` costs more than the
/// rest of registering a request).
fn reply_subject(inbox: &str, token: u64) -> Subject {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = token;
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    let mut subject = String::with_capacity(inbox.len() + 1 + digits.len() - at);
    subject.push_str(inbox);
    subject.push('.');
    subject.extend(digits[at..].iter().map(|&d| char::from(d)));
    Subject::from(subject)
}

fn retry_pause(refusals: u32) -> Duration {
    let doublings = refusals.saturating_sub(1).min(8);
    (FIRST_RETRY_PAUSE * (1 << doublings)).min(MAX_RETRY_PAUSE)
}

/// Hands a final outcome to a requester, whether it waits for a plain
/// result or consumes a stream; `false` when nobody took it.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_subjects_name_the_inbox_and_the_token() {
        for token in [0, 7, 10, 99, 100, 12_345, u64::from(u32::MAX), u64::MAX] {
            assert_eq!(
                reply_subject("_INBOX.abc", token).as_str(),
                format!("_INBOX.abc.{token}")
            );
        }
    }

    #[test]
    fn retry_pauses_grow_to_a_cap() {
        assert_eq!(retry_pause(1), Duration::from_millis(10));
        assert_eq!(retry_pause(2), Duration::from_millis(20));
        assert_eq!(retry_pause(5), Duration::from_millis(160));
        assert_eq!(retry_pause(6), MAX_RETRY_PAUSE);
        assert_eq!(retry_pause(u32::MAX), MAX_RETRY_PAUSE);
    }
}

#[cfg(test)]
mod answered_tests {
    use super::*;

    /// Who answered long ago is let go as new nodes answer: 5,000 node ids
    /// that answered two minutes ago, then 5,000 that answer now, leave
    /// only the recent ones (and never more than twice what is recent).
    #[test]
    fn old_answers_are_let_go() {
        let requests = Requests::default();
        let long_ago = Instant::now()
            .checked_sub(ANSWERED_RECENTLY * 2)
            .expect("a clock two minutes old");
        for n in 0..5_000 {
            let id = Id::from(format!("old-{n}").as_str());
            lock(&requests.answered).at.insert(id, long_ago);
        }
        for n in 0..5_000 {
            requests.note_answer(&Id::from(format!("new-{n}").as_str()));
        }
        let answered = lock(&requests.answered);
        let old = answered
            .at
            .keys()
            .filter(|id| id.starts_with("old"))
            .count();
        assert_eq!(old, 0, "the old answers are gone");
        assert_eq!(answered.at.len(), 5_000);
        drop(answered);
        assert!(requests.answered_recently(&Id::from("new-4999")));
    }
}

//! Replies to a requester that requires signed events: believed only when
//! they come from the node it asked.
//!
//! An answer is an event: it must be sent by the node asked, signed with
//! that node's key, and caused by this request (a signed answer to an
//! earlier request, replayed, is genuine but not an answer to this one).
//! Any other reply (a refusal, a handler's error, a stream's item or its
//! end) must carry the node's seal ([`seal`]).
//!
//! A reply that fails is refused: reported as rejected (logged, counted, a
//! `system.rejected` event) and not taken. The request waits on for a
//! genuine reply, so that someone who can write to its reply subject cannot
//! make it fail by answering first; if none comes, the request ends with
//! the first refusal's reason shortly before its deadline (rather than a
//! bare timeout). When the asked node's key is not known here yet, its
//! replies wait, in the order they came, for one lookup of the registry.

use super::super::{key_lookups, seal};
use super::{
    Arc, HappenError, Instant, MutexGuard, PendingMap, Reply, Result, Shared, Waiting,
    deliver_final, lock, take,
};
use crate::event::Event;

/// Judges a reply to request `token` (in `pending`), whose requester
/// requires signed events: taken when it holds, refused when not, held when
/// the asked node's key must be looked up first.
pub(super) fn judge(
    shared: &Arc<Shared>,
    mut pending: MutexGuard<'_, PendingMap>,
    token: u64,
    reply: Reply,
    message: async_nats::Message,
) {
    let Some(waiting) = pending.get_mut(&token) else {
        return;
    };
    if let Some(held) = waiting.held.as_mut() {
        return held.push((reply, message));
    }
    if let Some(registry) = key_lookups::registry_for(shared, &waiting.target) {
        let target = waiting.target.clone();
        waiting.held = Some(vec![(reply, message)]);
        drop(pending);
        let then = shared.clone();
        return key_lookups::after_lookup(shared, registry, &target, move || {
            judge_held(&then, token);
        });
    }
    match check(shared, waiting, &reply, &message) {
        Ok(()) => take(shared, pending, token, reply),
        Err(error) => refuse(shared, pending, token, &message, error),
    }
}

/// Judges, in order, the replies held while the asked node's key was looked
/// up (and those that come meanwhile).
fn judge_held(shared: &Arc<Shared>, token: u64) {
    loop {
        let mut pending = lock(&shared.requests.pending);
        let Some(waiting) = pending.get_mut(&token) else {
            return;
        };
        let (reply, message) = match waiting.held.as_mut() {
            Some(held) if !held.is_empty() => held.remove(0),
            _ => {
                waiting.held = None;
                return;
            }
        };
        match check(shared, waiting, &reply, &message) {
            Ok(()) => take(shared, pending, token, reply),
            Err(error) => refuse(shared, pending, token, &message, error),
        }
    }
}

/// Whether `reply` (in `message`) comes from the node `waiting` asked.
fn check(
    shared: &Shared,
    waiting: &Waiting,
    reply: &Reply,
    message: &async_nats::Message,
) -> Result<()> {
    let requester = waiting.verify.as_deref().unwrap_or_default();
    match reply {
        Reply::Ok(answer) => checked_answer(shared, requester, waiting, answer),
        _ => seal::check(shared.local.keys(), requester, &waiting.target, message),
    }
}

fn checked_answer(
    shared: &Shared,
    requester: &str,
    waiting: &Waiting,
    answer: &Event,
) -> Result<()> {
    let sender = &answer.causal().sender;
    if answer.causal().causation_id.as_deref() != Some(&*waiting.event_id) {
        return Err(HappenError::Integrity {
            event_id: answer.id().to_owned(),
            reason: format!(
                "node \"{requester}\" refused it: the answer is not to this request (it answers {:?})",
                answer.causal().causation_id
            ),
        });
    }
    if *sender != waiting.target {
        return Err(HappenError::Integrity {
            event_id: answer.id().to_owned(),
            reason: format!(
                "node \"{requester}\" refused it: the answer came from \"{sender}\", not from \"{}\", the node asked",
                waiting.target
            ),
        });
    }
    shared.local.keys().check(requester, answer, true)
}

/// Refuses a reply to request `token`: reported, not taken. The first
/// refusal is kept as the request's outcome should no genuine reply come.
fn refuse(
    shared: &Arc<Shared>,
    mut pending: MutexGuard<'_, PendingMap>,
    token: u64,
    message: &async_nats::Message,
    error: HappenError,
) {
    let first = pending.get_mut(&token).is_some_and(|waiting| {
        // Once a genuine stream has begun, its requester has its answer:
        // a forged item or end is only dropped.
        let first = waiting.refused.is_none() && waiting.reply.is_some();
        if first {
            waiting.refused = Some(error.clone());
        }
        first
    });
    drop(pending);
    shared.local.rejected(message.subject.as_str(), &error);
    if first {
        give_up_later(shared, token);
    }
}

/// Ends request `token` with its refusal shortly before its deadline (see
/// [`Waiting::give_up_margin`]) if no genuine reply has come by then.
fn give_up_later(shared: &Arc<Shared>, token: u64) {
    let shared = Arc::downgrade(shared);
    tokio::spawn(async move {
        loop {
            // The deadline may move (`Sent::timeout` after the send).
            let at = {
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                let mut pending = lock(&shared.requests.pending);
                let Some(waiting) = pending.get(&token).filter(|w| w.reply.is_some()) else {
                    return;
                };
                let deadline = waiting.deadline.get();
                let at = deadline
                    .checked_sub(waiting.give_up_margin())
                    .unwrap_or(deadline);
                if at > Instant::now() {
                    at
                } else {
                    let mut waiting = pending.remove(&token);
                    drop(pending);
                    let refused = waiting.as_mut().and_then(|w| w.refused.take());
                    if let Some(error) = refused {
                        deliver_final(waiting, Err(error));
                    }
                    return;
                }
            };
            tokio::time::sleep_until(at).await;
        }
    });
}

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
//! make it fail by answering first; if none comes by its deadline, its
//! requester hears the first refusal's reason rather than a bare timeout
//! (noted on the deadline the handle shares). When the asked node's key is
//! not known here yet, its replies wait, in the order they came, for one
//! lookup of the registry ([`MAX_HELD`] at most; beyond, refused).

use std::collections::VecDeque;

use super::super::{key_lookups, seal};
use super::{
    Arc, HappenError, MutexGuard, PendingMap, Reply, Result, Shared, Waiting, lock, take, unwanted,
};
use crate::event::Event;
use crate::id::Id;

/// The most replies one request holds while its node's key is looked up.
const MAX_HELD: usize = 64;

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
        if held.len() < MAX_HELD {
            return held.push_back((reply, message));
        }
        let error = HappenError::Integrity {
            event_id: String::new(),
            reason: format!(
                "more than {MAX_HELD} replies came while the key of \"{}\" was looked up",
                waiting.target
            ),
        };
        return refuse(shared, pending, token, &message, error);
    }
    if let Some(registry) = key_lookups::registry_for(shared, &waiting.target) {
        let target = waiting.target.clone();
        waiting.held = Some(VecDeque::from([(reply, message)]));
        drop(pending);
        let then = shared.clone();
        return key_lookups::after_lookup(shared, registry, &target, move || {
            judge_held(&then, token);
        });
    }
    let asked = Asked::of(waiting);
    drop(pending);
    decide(shared, token, &asked, reply, &message);
}

/// Judges, in order, the replies held while the asked node's key was looked
/// up (and those that come meanwhile).
fn judge_held(shared: &Arc<Shared>, token: u64) {
    loop {
        let mut pending = lock(&shared.requests.pending);
        let Some(waiting) = pending.get_mut(&token) else {
            return;
        };
        let Some((reply, message)) = waiting.held.as_mut().and_then(VecDeque::pop_front) else {
            waiting.held = None;
            return;
        };
        // Replies that come while this one is checked join the held ones
        // (`held` stays set until it is empty), so the order holds.
        let asked = Asked::of(waiting);
        drop(pending);
        decide(shared, token, &asked, reply, &message);
    }
}

/// What a reply to one request is checked against, copied out of the table
/// of pending requests: the check (a signature's verification) runs
/// without that table's lock, which every request sent and every reply
/// received takes.
struct Asked {
    requester: Id,
    target: Id,
    event_id: Id,
}

impl Asked {
    fn of(waiting: &Waiting) -> Self {
        Asked {
            requester: waiting.verify.clone().unwrap_or_default(),
            target: waiting.target.clone(),
            event_id: waiting.event_id.clone(),
        }
    }
}

/// Checks `reply` to request `token`, then takes or refuses it (a request
/// ended meanwhile takes nothing more).
fn decide(
    shared: &Arc<Shared>,
    token: u64,
    asked: &Asked,
    reply: Reply,
    message: &async_nats::Message,
) {
    let verdict = check(shared, asked, &reply, message);
    let pending = lock(&shared.requests.pending);
    if !pending.contains_key(&token) {
        // The request ended while its reply was checked.
        drop(pending);
        if verdict.is_ok() {
            unwanted(shared, reply);
        }
        return;
    }
    match verdict {
        Ok(()) => take(shared, pending, token, reply),
        Err(error) => refuse(shared, pending, token, message, error),
    }
}

/// Whether `reply` (in `message`) comes from the node `asked` names.
fn check(
    shared: &Shared,
    asked: &Asked,
    reply: &Reply,
    message: &async_nats::Message,
) -> Result<()> {
    match reply {
        Reply::Ok(answer) => checked_answer(shared, asked, answer),
        _ => seal::check(
            shared.local.keys(),
            &asked.requester,
            &asked.target,
            &asked.event_id,
            message,
        ),
    }
}

fn checked_answer(shared: &Shared, asked: &Asked, answer: &Event) -> Result<()> {
    let requester = &*asked.requester;
    let sender = &answer.causal().sender;
    if answer.causal().causation_id.as_deref() != Some(&*asked.event_id) {
        return Err(HappenError::Integrity {
            event_id: answer.id().to_owned(),
            reason: format!(
                "node \"{requester}\" refused it: the answer is not to this request (it answers {:?})",
                answer.causal().causation_id
            ),
        });
    }
    if *sender != asked.target {
        return Err(HappenError::Integrity {
            event_id: answer.id().to_owned(),
            reason: format!(
                "node \"{requester}\" refused it: the answer came from \"{sender}\", not from \"{}\", the node asked",
                asked.target
            ),
        });
    }
    shared.local.keys().check(requester, answer, true)
}

/// Refuses a reply to request `token`: reported, not taken. The first
/// refusal's reason is what its requester hears should no genuine reply
/// come before the deadline.
fn refuse(
    shared: &Arc<Shared>,
    pending: MutexGuard<'_, PendingMap>,
    token: u64,
    message: &async_nats::Message,
    error: HappenError,
) {
    if let Some(waiting) = pending.get(&token) {
        waiting.deadline.note(error.clone());
    }
    drop(pending);
    shared.local.rejected(message.subject.as_str(), &error);
}

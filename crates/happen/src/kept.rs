//! The answers of an exactly-once node's requests, kept for their copies.
//!
//! An exactly-once node takes each event once: a copy is not run again.
//! A copy may still carry a requester, though: a flow that asked the node
//! and then failed runs again, and its request, numbered like every event
//! the flow emits, is the same event. Dropping that copy left the re-run
//! waiting for an answer that never came, and every retry failed the same
//! way. So the node keeps each request's final answer for the
//! de-duplication window, and a copy is answered with it, or, while the
//! first one still runs, when it comes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::delivery::Responder;
use crate::error::Result;
use crate::event::Event;
use crate::id::Id;

/// How many copies of one request may wait for its answer.
const MAX_WAITING: usize = 64;

/// The kept answers of one node, by request id.
#[derive(Default)]
pub(crate) struct Kept {
    answers: Mutex<HashMap<Id, Entry>>,
}

struct Entry {
    at: Instant,
    answer: Answer,
}

enum Answer {
    /// The first delivery still runs: the copies' requesters wait.
    Waiting(Vec<Responder>),
    /// The final answer.
    Given(Result<Event>),
}

impl Kept {
    /// The first delivery of the request `event`: `responder` comes back
    /// wrapped, so that the final answer it gives is kept for the copies.
    pub(crate) fn keep(
        self: &Arc<Self>,
        event: &Event,
        responder: Responder,
        window: Duration,
    ) -> Responder {
        let now = Instant::now();
        let id = event.causal().id.clone();
        let mut gone = Vec::new();
        {
            let mut answers = self.lock();
            // Forget the answers that left the window, at most once per
            // doubling of the table, so that keeping stays cheap. Copies
            // still waiting then (their first delivery went elsewhere, or
            // never ends) are let go, which ends their requesters' waits
            // (`NoResponse` in this process, their timeout over NATS).
            if answers.len() >= 1024 && answers.len().is_power_of_two() {
                let old: Vec<Entry> = answers
                    .extract_if(|_, entry| now - entry.at >= window)
                    .map(|(_, entry)| entry)
                    .collect();
                gone.push(old);
            }
            // An earlier attempt's copies (its responder went with its
            // failure, the event handed out again) wait for this one.
            let entry = answers.entry(id.clone()).or_insert(Entry {
                at: now,
                answer: Answer::Waiting(Vec::new()),
            });
            entry.at = now;
            if let Answer::Given(_) = entry.answer {
                entry.answer = Answer::Waiting(Vec::new());
            }
        }
        // Dropped outside the lock, and contained: a kept error is a
        // handler's own, whose `Drop` may panic.
        if !gone.is_empty() {
            let drop_all = std::panic::AssertUnwindSafe(move || drop(gone));
            let _ = std::panic::catch_unwind(drop_all);
        }
        let keeper = Keeper {
            kept: self.clone(),
            id,
        };
        Responder::Kept(Box::new((responder, keeper)))
    }

    /// A copy of the request `event`, taken already: `responder` gets the
    /// first one's answer, at once or when it is given. With no answer
    /// known here yet (the first delivery is about to be wrapped, or it
    /// was a tell), the copy waits for one, at most for the window.
    pub(crate) fn copy(&self, event: &Event, responder: Responder) {
        if let Err(responder) = self.copy_if_known(event, responder) {
            let mut answers = self.lock();
            let entry = answers.entry(event.causal().id.clone()).or_insert(Entry {
                at: Instant::now(),
                answer: Answer::Waiting(Vec::new()),
            });
            match &mut entry.answer {
                Answer::Waiting(copies) => copies.push(responder),
                Answer::Given(answer) => {
                    let answer = answer.clone();
                    drop(answers);
                    responder.reply(answer);
                }
            }
        }
    }

    /// [`Kept::copy`] when the request is known here; the responder back
    /// otherwise.
    pub(crate) fn copy_if_known(
        &self,
        event: &Event,
        responder: Responder,
    ) -> std::result::Result<(), Responder> {
        let mut answers = self.lock();
        match answers.get_mut(&event.causal().id).map(|e| &mut e.answer) {
            Some(Answer::Waiting(copies)) => {
                // Bounded: a copy beyond it gets no answer (its requester
                // times out), and nothing more is held for it.
                if copies.len() < MAX_WAITING {
                    copies.push(responder);
                }
                Ok(())
            }
            Some(Answer::Given(answer)) => {
                let answer = answer.clone();
                drop(answers);
                responder.reply(answer);
                Ok(())
            }
            None => Err(responder),
        }
    }

    /// Keeps `answer` as the request's; the copies waiting for it get it.
    fn give(&self, id: &Id, answer: &Result<Event>) {
        let waiting = {
            let mut answers = self.lock();
            let Some(entry) = answers.get_mut(id) else {
                return;
            };
            entry.at = Instant::now();
            match std::mem::replace(&mut entry.answer, Answer::Given(answer.clone())) {
                Answer::Waiting(copies) => copies,
                Answer::Given(_) => Vec::new(),
            }
        };
        for copy in waiting {
            copy.reply(answer.clone());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Id, Entry>> {
        self.answers.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What a first delivery's responder carries to keep its final answer.
/// Dropped unanswered (its failure is tried again, or the node shut down),
/// it keeps nothing: the copies wait for the next attempt's answer, or go
/// with the node.
pub(crate) struct Keeper {
    kept: Arc<Kept>,
    id: Id,
}

impl Keeper {
    /// Keeps the final `answer` (sent to the requester next).
    pub(crate) fn give(&self, answer: &Result<Event>) {
        self.kept.give(&self.id, answer);
    }
}

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
//!
//! What the answers weigh is bounded too ([`MAX_BYTES`] per node, by an
//! estimate of each answer's size): beyond it the oldest answers go first,
//! and a copy of their request is told it was taken
//! ([`HappenError::AlreadyTaken`]) as when no answer was kept. (Over NATS
//! the copy looks in the answers bucket first.) A node answering a steady
//! stream of requests would otherwise keep a window's worth of answers,
//! whatever their size.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::delivery::Responder;
use crate::error::{HappenError, Result};
use crate::event::Event;
use crate::id::Id;

/// How many copies of one request may wait for its answer.
const MAX_WAITING: usize = 64;

/// The most a node's kept answers may weigh, by [`weight`]'s estimate.
pub(crate) const MAX_BYTES: usize = 64 << 20;

/// The kept answers of one node, by request id.
pub(crate) struct Kept {
    answers: Mutex<Answers>,
    /// [`MAX_BYTES`], or less in a test.
    budget: usize,
}

impl Default for Kept {
    fn default() -> Self {
        Kept::with_budget(MAX_BYTES)
    }
}

#[derive(Default)]
struct Answers {
    by_id: HashMap<Id, Entry>,
    /// The answers given, oldest first, each with the number it was given
    /// under (a request answered again has a newer one).
    given: VecDeque<(Id, u64)>,
    /// The weight of the answers held now.
    bytes: usize,
    /// The number of the next answer given.
    next: u64,
}

struct Entry {
    at: Instant,
    answer: Answer,
}

enum Answer {
    /// The first delivery still runs: the copies' requesters wait.
    Waiting(Vec<Responder>),
    /// The final answer, its number and its weight.
    Given(Result<Event>, u64, usize),
    /// Given, and let go to keep within the budget: copies are told the
    /// request was taken.
    Dropped,
}

impl Answers {
    /// Forgets entry `id`'s answer from the weight (it is replaced or goes).
    fn unweigh(&mut self, answer: &Answer) {
        if let Answer::Given(_, _, weight) = answer {
            self.bytes -= weight;
        }
    }

    /// Lets the oldest answers go until those held weigh at most `budget`;
    /// returns them, to be dropped outside the lock.
    fn trim(&mut self, budget: usize) -> Vec<Answer> {
        let mut dropped = Vec::new();
        while self.bytes > budget {
            let Some((id, number)) = self.given.pop_front() else {
                break;
            };
            if let Some(entry) = self.by_id.get_mut(&id)
                && matches!(entry.answer, Answer::Given(_, n, _) if n == number)
            {
                let old = std::mem::replace(&mut entry.answer, Answer::Dropped);
                self.unweigh(&old);
                dropped.push(old);
            }
        }
        // The order of answers let go by other means (time, another
        // attempt) is dropped with them, so that it stays bounded too.
        if self.given.len() > 2 * self.by_id.len() + 64 {
            let by_id = &self.by_id;
            self.given.retain(|(id, number)| {
                by_id
                    .get(id)
                    .is_some_and(|e| matches!(e.answer, Answer::Given(_, n, _) if n == *number))
            });
        }
        dropped
    }
}

/// Drops `answers` one by one, each panic of a kept error's `Drop`
/// contained on its own (two in one drop of a list would abort).
fn contained_drop(answers: impl IntoIterator<Item = Answer>) {
    for answer in answers {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(answer)));
    }
}

/// An estimate of what keeping `answer` costs: the event, its payload's
/// values, strings and keys.
fn weight(answer: &Result<Event>) -> usize {
    const VALUE: usize = std::mem::size_of::<serde_json::Value>();
    let Ok(event) = answer else {
        return 512;
    };
    let mut bytes = 1024;
    let mut pending = vec![event.payload()];
    while let Some(value) = pending.pop() {
        bytes += VALUE;
        match value {
            serde_json::Value::String(text) => bytes += text.len(),
            serde_json::Value::Array(items) => pending.extend(items),
            serde_json::Value::Object(map) => {
                for (key, item) in map {
                    bytes += key.len() + 24;
                    pending.push(item);
                }
            }
            _ => {}
        }
    }
    bytes
}

impl Kept {
    /// Answers kept within `budget` bytes (see [`weight`]).
    pub(crate) fn with_budget(budget: usize) -> Kept {
        Kept {
            answers: Mutex::default(),
            budget,
        }
    }

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
            let count = answers.by_id.len();
            if count >= 1024 && count.is_power_of_two() {
                let old: Vec<Entry> = answers
                    .by_id
                    .extract_if(|_, entry| now - entry.at >= window)
                    .map(|(_, entry)| entry)
                    .collect();
                for entry in &old {
                    answers.unweigh(&entry.answer);
                }
                gone.push(old);
            }
            // An earlier attempt's copies (its responder went with its
            // failure, the event handed out again) wait for this one.
            let entry = answers.by_id.entry(id.clone()).or_insert(Entry {
                at: now,
                answer: Answer::Waiting(Vec::new()),
            });
            entry.at = now;
            if !matches!(entry.answer, Answer::Waiting(_)) {
                let old = std::mem::replace(&mut entry.answer, Answer::Waiting(Vec::new()));
                answers.unweigh(&old);
                gone.push(vec![Entry {
                    at: now,
                    answer: old,
                }]);
            }
        }
        // Dropped outside the lock, and contained: a kept error is a
        // handler's own, whose `Drop` may panic.
        contained_drop(gone.into_iter().flatten().map(|entry| entry.answer));
        let keeper = Keeper {
            kept: self.clone(),
            id,
        };
        Responder::Kept(Box::new((responder, keeper)))
    }

    /// A copy of the request `event` to node `node`, taken already:
    /// `responder` gets the first one's answer, at once or when it is
    /// given. With no answer known here yet (the first delivery is about
    /// to be wrapped, or it was a tell), the copy waits for one, at most
    /// for the window.
    pub(crate) fn copy(&self, node: &str, event: &Event, responder: Responder) {
        let Err(responder) = self.copy_if_known(event, responder) else {
            return;
        };
        let mut answers = self.lock();
        let entry = answers
            .by_id
            .entry(event.causal().id.clone())
            .or_insert(Entry {
                at: Instant::now(),
                answer: Answer::Waiting(Vec::new()),
            });
        match &mut entry.answer {
            Answer::Waiting(copies) => copies.push(responder),
            Answer::Given(answer, ..) => {
                let answer = answer.clone();
                drop(answers);
                responder.reply(answer);
            }
            Answer::Dropped => {
                drop(answers);
                responder.reply(Err(HappenError::AlreadyTaken {
                    node: node.to_owned(),
                    event_id: event.id().to_owned(),
                }));
            }
        }
    }

    /// [`Kept::copy`] when the request's answer is known here (or will
    /// be); the responder back otherwise, an answer let go included.
    pub(crate) fn copy_if_known(
        &self,
        event: &Event,
        responder: Responder,
    ) -> std::result::Result<(), Responder> {
        let mut answers = self.lock();
        match answers
            .by_id
            .get_mut(&event.causal().id)
            .map(|e| &mut e.answer)
        {
            Some(Answer::Waiting(copies)) => {
                // Bounded: a copy beyond it gets no answer (its requester
                // times out), and nothing more is held for it.
                if copies.len() < MAX_WAITING {
                    copies.push(responder);
                }
                Ok(())
            }
            Some(Answer::Given(answer, ..)) => {
                let answer = answer.clone();
                drop(answers);
                responder.reply(answer);
                Ok(())
            }
            Some(Answer::Dropped) | None => Err(responder),
        }
    }

    /// Keeps `answer` as the request's; the copies waiting for it get it.
    fn give(&self, id: &Id, answer: &Result<Event>) {
        let weight = weight(answer);
        let (waiting, old) = {
            let mut answers = self.lock();
            let number = answers.next;
            let Some(entry) = answers.by_id.get_mut(id) else {
                return;
            };
            entry.at = Instant::now();
            let old = std::mem::replace(
                &mut entry.answer,
                Answer::Given(answer.clone(), number, weight),
            );
            answers.next += 1;
            answers.unweigh(&old);
            answers.bytes += weight;
            answers.given.push_back((id.clone(), number));
            let mut dropped = answers.trim(self.budget);
            match old {
                Answer::Waiting(copies) => (copies, dropped),
                other => {
                    dropped.push(other);
                    (Vec::new(), dropped)
                }
            }
        };
        // Outside the lock, and contained (see `keep`).
        contained_drop(old);
        for copy in waiting {
            copy.reply(answer.clone());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Answers> {
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use serde_json::json;
    use tokio::sync::oneshot;

    use super::{Kept, weight};
    use crate::delivery::Responder;
    use crate::error::{HappenError, Result};
    use crate::event::Event;
    use crate::stream::Outcome;

    const WINDOW: Duration = Duration::from_secs(120);

    fn request(n: u64) -> Event {
        let mut event = Event::new("ask", json!(n));
        crate::event::stamp(&mut event, &crate::Id::from("asker"), None);
        event
    }

    fn answer(n: u64) -> Result<Event> {
        Ok(Event::new(
            "happen.response",
            json!({ "n": n, "pad": "x".repeat(4000) }),
        ))
    }

    /// The first delivery of `event` answered with `answer`, as a node does.
    fn answered(kept: &Arc<Kept>, event: &Event, answer: Result<Event>) {
        let (tx, _rx) = oneshot::channel();
        kept.keep(event, Responder::Local(tx), WINDOW).reply(answer);
    }

    /// What a copy of `event` is told.
    fn copy(kept: &Kept, event: &Event) -> Result<Event> {
        let (tx, mut rx) = oneshot::channel();
        kept.copy("node", event, Responder::Local(tx));
        match rx.try_recv().expect("a copy is answered at once") {
            Outcome::Done(outcome) => outcome,
            _ => panic!("a copy gets the answer"),
        }
    }

    #[test]
    fn answers_beyond_the_budget_go_oldest_first() {
        let one = weight(&answer(0));
        let kept = Arc::new(Kept::with_budget(3 * one + one / 2));
        let requests: Vec<Event> = (0..10).map(request).collect();
        for (n, event) in requests.iter().enumerate() {
            answered(&kept, event, answer(n as u64));
            assert!(kept.lock().bytes <= kept.budget, "after answer {n}");
        }
        // The three newest are kept; the others were let go, and a copy of
        // theirs is told its request was taken.
        for (n, event) in requests.iter().enumerate() {
            match copy(&kept, event) {
                Ok(answer) if n >= 7 => assert_eq!(answer.payload()["n"], json!(n)),
                Err(HappenError::AlreadyTaken { node, event_id }) if n < 7 => {
                    assert_eq!((node.as_str(), event_id.as_str()), ("node", event.id()));
                }
                other => panic!("copy of answer {n}: {other:?}"),
            }
        }
        assert_eq!(kept.lock().bytes, 3 * one);
    }

    #[test]
    fn the_order_of_answers_stays_bounded_when_requests_are_answered_again() {
        let kept = Arc::new(Kept::default());
        let event = request(1);
        for n in 0..10_000 {
            answered(&kept, &event, answer(n));
        }
        let answers = kept.lock();
        assert_eq!(answers.by_id.len(), 1);
        assert!(
            answers.given.len() <= 2 * answers.by_id.len() + 65,
            "{}",
            answers.given.len()
        );
        assert_eq!(answers.bytes, weight(&answer(0)));
    }

    #[test]
    fn a_copy_waiting_for_its_answer_is_never_let_go_for_the_budget() {
        let kept = Arc::new(Kept::with_budget(weight(&answer(0))));
        let first = request(1);
        let (tx, _rx) = oneshot::channel();
        let pending = kept.keep(&first, Responder::Local(tx), WINDOW);
        let (copy_tx, mut copy_rx) = oneshot::channel();
        kept.copy("node", &first, Responder::Local(copy_tx));
        // Others answered meanwhile fill the budget many times over.
        for n in 2..20 {
            answered(&kept, &request(n), answer(n));
        }
        assert!(copy_rx.try_recv().is_err(), "the copy still waits");
        pending.reply(answer(1));
        match copy_rx.try_recv() {
            Ok(Outcome::Done(Ok(answer))) => assert_eq!(answer.payload()["n"], json!(1)),
            _ => panic!("the copy gets the first delivery's answer"),
        }
    }
}

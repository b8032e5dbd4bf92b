//! Looking up the keys of signed senders this process does not know yet,
//! once per sender however many of its messages arrive meanwhile.
//!
//! A signed event from a sender whose key is not in the runtime's table
//! waits for a direct read of the registry (the registry's watch may lag the
//! sender's first event by milliseconds). A security review found each such
//! message costing a task and a registry read of its own, and a lookup that
//! found nothing forgotten at once: one captured event from an unregistered
//! sender, published again and again, became as many JetStream API
//! requests. Now the messages of one sender wait together for one lookup,
//! a sender found missing is not looked up again for [`MISS_MEMORY`], and
//! what waits is bounded ([`MAX_WAITING`] messages, [`MAX_SENDERS`] senders
//! looked up or remembered): beyond that a message is judged at once, with
//! what the table holds (an unknown sender's signature fails, as it would
//! after a lookup that found nothing).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::durable::keys::KeyRegistry;
use super::{Shared, lock};
use crate::event::Event;

/// How long a sender found missing from the registry is not looked up
/// again (its messages are judged at once: unknown key).
const MISS_MEMORY: Duration = Duration::from_secs(1);
/// The most messages waiting for lookups, all senders together.
const MAX_WAITING: usize = 10_000;
/// The most senders looked up or remembered as missing at once.
const MAX_SENDERS: usize = 4_096;
/// The waits before each new try of a lookup that failed (the registry
/// unreachable for a moment, as while JetStream elects a leader): with
/// each try bounded by a second, a lookup gives up within about 5.5 s.
const RETRY_AFTER: [Duration; 3] = [
    Duration::from_millis(100),
    Duration::from_millis(400),
    Duration::from_millis(1_000),
];

type Waiter = Box<dyn FnOnce() + Send>;

enum Lookup {
    /// A read of the registry is on its way; these run when it ends.
    InFlight(Vec<Waiter>),
    /// The registry had no key for the sender at this time.
    Missed(Instant),
}

/// The lookups of one runtime.
#[derive(Default)]
pub(super) struct KeyLookups(Mutex<State>);

#[derive(Default)]
struct State {
    senders: HashMap<String, Lookup>,
    /// Messages waiting in `InFlight` lists.
    waiting: usize,
}

/// Runs `then` once `event` can be judged: at once when it is unsigned, its
/// sender's key is known, or no registry is there to ask; else when the
/// sender's lookup (shared with its other messages) has ended.
pub(super) fn after_key(shared: &Arc<Shared>, event: &Event, then: impl FnOnce() + Send + 'static) {
    match super::receive::needs_key(shared, event) {
        Some(registry) => after_lookup(shared, registry, &event.causal().sender, then),
        None => then(),
    }
}

/// The registry to ask for `sender`'s key, when this process does not know
/// it (and has a registry).
pub(super) fn registry_for(shared: &Shared, sender: &str) -> Option<Arc<KeyRegistry>> {
    if shared.local.keys().public_key(sender).is_some() {
        return None;
    }
    shared.durable.as_ref().map(|d| d.keys.clone())
}

/// Runs `then` once `sender`'s lookup in `registry` (shared with its other
/// messages) has ended, or at once when there is no room to wait.
pub(super) fn after_lookup(
    shared: &Arc<Shared>,
    registry: Arc<KeyRegistry>,
    sender: &str,
    then: impl FnOnce() + Send + 'static,
) {
    // Decided under the lock; `then` runs after it is released (it hands
    // the event to a node).
    let mut then = Some(then);
    let start = {
        let mut state = lock(&shared.key_lookups.0);
        let state = &mut *state;
        match state.senders.get_mut(sender) {
            Some(Lookup::Missed(at)) if at.elapsed() < MISS_MEMORY => false,
            Some(Lookup::InFlight(waiters)) => {
                if state.waiting < MAX_WAITING
                    && let Some(then) = then.take()
                {
                    state.waiting += 1;
                    waiters.push(Box::new(then));
                }
                false
            }
            _ => {
                if state.senders.len() >= MAX_SENDERS {
                    state.senders.retain(
                        |_, l| !matches!(l, Lookup::Missed(at) if at.elapsed() >= MISS_MEMORY),
                    );
                }
                let room = state.senders.len() < MAX_SENDERS && state.waiting < MAX_WAITING;
                if room && let Some(then) = then.take() {
                    state.waiting += 1;
                    state
                        .senders
                        .insert(sender.to_owned(), Lookup::InFlight(vec![Box::new(then)]));
                }
                room
            }
        }
    };
    if let Some(then) = then {
        return then(); // judged at once
    }
    if !start {
        return; // waits for a lookup on its way
    }
    let sender = sender.to_owned();
    let shared = shared.clone();
    let held = shared.readers.hold();
    tokio::spawn(async move {
        let keys = shared.local.keys();
        let found = retrying(|| registry.look_up(&sender, keys)).await;
        let waiters = {
            let mut state = lock(&shared.key_lookups.0);
            let ended = match found {
                Ok(true) => state.senders.remove(&sender),
                Ok(false) => state.senders.insert(sender, Lookup::Missed(Instant::now())),
                Err(error) => {
                    // Remembered for a moment as if missing (a review: a
                    // hostile sender must not keep thousands of retrying
                    // lookups going while the registry is out of reach).
                    tracing::warn!(
                        sender,
                        %error,
                        "the key registry could not be read; the sender's waiting messages are judged without its key"
                    );
                    state.senders.insert(sender, Lookup::Missed(Instant::now()))
                }
            };
            let waiters = match ended {
                Some(Lookup::InFlight(waiters)) => waiters,
                _ => Vec::new(),
            };
            state.waiting -= waiters.len();
            waiters
        };
        for waiter in waiters {
            waiter();
        }
        drop(held);
    });
}

/// Runs `look` until it gives an answer, trying again after each wait of
/// [`RETRY_AFTER`] while it fails; the last failure if every try failed.
async fn retrying<F, Fut, E>(mut look: F) -> Result<bool, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, E>>,
{
    let mut waits = RETRY_AFTER.iter();
    loop {
        match look().await {
            Err(error) => match waits.next() {
                Some(&wait) => tokio::time::sleep(wait).await,
                None => return Err(error),
            },
            answer => return answer,
        }
    }
}

/// [`after_key`] for code that can wait: resolves once `event` can be
/// judged.
pub(super) async fn key_known(shared: &Arc<Shared>, event: &Event) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    after_key(shared, event, move || {
        let _ = tx.send(());
    });
    let _ = rx.await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A lookup that fails `failures` times, then finds the key.
    async fn tries_for(failures: usize) -> (Result<bool, String>, usize, Duration) {
        let tries = AtomicUsize::new(0);
        let start = tokio::time::Instant::now();
        let answer = retrying(|| {
            let tried = tries.fetch_add(1, Ordering::SeqCst);
            async move {
                if tried < failures {
                    Err(format!("unreachable ({tried})"))
                } else {
                    Ok(true)
                }
            }
        })
        .await;
        (answer, tries.load(Ordering::SeqCst), start.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn a_lookup_that_fails_is_tried_again_then_given_up() {
        // Answered at once: one try, no wait.
        assert_eq!(tries_for(0).await, (Ok(true), 1, Duration::ZERO));
        // A blip of two failures: found on the third try, after 100 + 400 ms.
        assert_eq!(
            tries_for(2).await,
            (Ok(true), 3, Duration::from_millis(500))
        );
        // Unreachable throughout: four tries, then the last failure.
        assert_eq!(
            tries_for(usize::MAX).await,
            (
                Err("unreachable (3)".to_owned()),
                4,
                Duration::from_millis(1_500)
            )
        );
    }
}

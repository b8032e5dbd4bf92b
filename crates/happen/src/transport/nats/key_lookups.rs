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
        let found = registry.look_up(&sender, shared.local.keys()).await;
        let waiters = {
            let mut state = lock(&shared.key_lookups.0);
            let ended = if found {
                state.senders.remove(&sender)
            } else {
                state.senders.insert(sender, Lookup::Missed(Instant::now()))
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

/// [`after_key`] for code that can wait: resolves once `event` can be
/// judged.
pub(super) async fn key_known(shared: &Arc<Shared>, event: &Event) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    after_key(shared, event, move || {
        let _ = tx.send(());
    });
    let _ = rx.await;
}

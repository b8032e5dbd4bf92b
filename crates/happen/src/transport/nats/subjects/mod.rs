//! Subjects: where events travel, and which broadcast subjects this process
//! subscribes to.
//!
//! - `<prefix>.node.<node id>`: events sent to one node (queue group
//!   `happen`, so instances of one node id share its work);
//! - `<prefix>.bcast.<event type>`: broadcasts.
//!
//! Handlers' string patterns become subject filters (alternatives expanded,
//! `*` and `>` kept), so the server does the filtering; function matchers
//! need `<prefix>.bcast.>` and filter locally. Filters are per process and
//! counted: a filter is subscribed when the first handler needs it and
//! released when the last one goes.
//!
//! Overlapping filters (`order.*` and `order.created`) each receive a copy
//! of a matching broadcast. A process must take it once: when a message's
//! subject matches more than one filter (or one released in the last
//! [`OVERLAP_GRACE`], whose copies may still be arriving), its event id is
//! checked against the ids recently taken through overlapping filters.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use async_nats::Subject;

use crate::id::Id;
use crate::pattern::Pattern;

/// How long a released filter still counts as overlapping: copies of
/// messages it was sent may still wait in another filter's buffer.
pub(super) const OVERLAP_GRACE: Duration = Duration::from_secs(30);
/// How many recently taken event ids are remembered for de-duplication.
const RECENT_IDS: usize = 65_536;

/// Where every reply subject a runtime makes begins: async-nats's inbox
/// prefix (each runtime's inbox is `_INBOX.<unique>`). A client with
/// another inbox prefix (async-nats's `custom_inbox_prefix`) cannot ask
/// Happen's nodes for answers.
const INBOX_PREFIX: &str = "_INBOX.";

/// Whether `subject`, given by another process as where to answer it (a
/// message's reply subject, a durable request's `Happen-Reply-To`, a
/// stream's credit subject), may be published to: only an inbox. Anything
/// else is refused, so that nobody can make a runtime publish its answers
/// under its own credentials to a subject they may not write themselves:
/// a security audit made a node write its refusal into its own record of
/// the identity registry (`$KV.happen_identity.<node>`) this way.
pub(super) fn answerable(subject: &str) -> bool {
    subject.len() > INBOX_PREFIX.len() && subject.starts_with(INBOX_PREFIX)
}

/// Why a message with the reply subject `subject` is refused.
pub(super) fn not_answerable(subject: &str, event_id: &str) -> crate::HappenError {
    let shown = shortened(subject);
    crate::HappenError::Integrity {
        event_id: event_id.to_owned(),
        reason: format!(
            "its reply subject \"{shown}\" is not an inbox ({INBOX_PREFIX}...): an answer there would be published with this process's permissions"
        ),
    }
}

/// Text from the wire, cut to 80 characters for a report or a log.
pub(in crate::transport::nats) fn shortened(text: &str) -> String {
    text.chars().take(80).collect()
}

/// The subject a signing node's runtime answers probes on with the
/// node's public key.
pub(super) fn identity_subject(prefix: &str, node: &str) -> String {
    joined(prefix, ".identity.", node)
}

/// The subject a node's direct events and requests go to.
pub(super) fn direct_subject(prefix: &str, node: &str) -> String {
    joined(prefix, ".node.", node)
}

/// The subject a broadcast of `event_type` goes to.
pub(super) fn broadcast_subject(prefix: &str, event_type: &str) -> String {
    joined(prefix, ".bcast.", event_type)
}

/// `prefix`, `middle` and `name` in one allocation of the exact size: a
/// subject is made for every event sent, and `format!` grows its string
/// two or three times on the way.
fn joined(prefix: &str, middle: &str, name: &str) -> String {
    let mut subject = String::with_capacity(prefix.len() + middle.len() + name.len());
    subject.push_str(prefix);
    subject.push_str(middle);
    subject.push_str(name);
    subject
}

/// How many subjects of one kind [`Made`] keeps before it starts again.
const MADE_LIMIT: usize = 4096;

/// The subjects events were published to, kept by the node id or event
/// type they name: every event to one node (of one type) goes to the same
/// subject, and one made afresh cost a string and, when the client took a
/// copy to publish, a second allocation to share it. A kept one is shared
/// already: handing it over counts a reference. At most [`MADE_LIMIT`] of
/// each kind are kept (then they are dropped and made again as used), so
/// many short-lived node ids do not grow it without bound.
pub(super) struct Made {
    /// The runtime's subject prefix.
    prefix: String,
    /// Both looked up for every event published (see "Maps looked
    /// up per event" in the transport module).
    direct: RwLock<foldhash::HashMap<String, Subject>>,
    broadcast: RwLock<foldhash::HashMap<String, Subject>>,
}

impl Made {
    /// Subjects under `prefix`.
    pub(super) fn new(prefix: &str) -> Made {
        Made {
            prefix: prefix.to_owned(),
            direct: RwLock::default(),
            broadcast: RwLock::default(),
        }
    }

    /// [`direct_subject`], made once.
    pub(super) fn direct(&self, node: &str) -> Subject {
        Self::kept(&self.direct, node, || direct_subject(&self.prefix, node))
    }

    /// [`broadcast_subject`], made once.
    pub(super) fn broadcast(&self, event_type: &str) -> Subject {
        Self::kept(&self.broadcast, event_type, || {
            broadcast_subject(&self.prefix, event_type)
        })
    }

    fn kept(
        map: &RwLock<foldhash::HashMap<String, Subject>>,
        name: &str,
        make: impl FnOnce() -> String,
    ) -> Subject {
        if let Some(subject) = map.read().unwrap_or_else(|p| p.into_inner()).get(name) {
            return subject.clone();
        }
        let subject = Subject::from(make());
        let mut map = map.write().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MADE_LIMIT {
            map.clear();
        }
        // This clone shares the bytes, so the kept subject's later clones
        // only count references.
        map.insert(name.to_owned(), subject.clone());
        subject
    }
}

/// The broadcast filters (subject patterns, without the prefix) a handler's
/// pattern needs.
pub(super) fn filters_for(pattern: &Pattern) -> Vec<String> {
    super::filters::subject_filters(pattern).unwrap_or_else(|| vec![">".to_owned()])
}

/// NATS subject matching: `*` is one token, `>` one or more trailing tokens.
pub(super) fn subject_matches(filter: &str, subject: &str) -> bool {
    let mut subject = subject.split('.');
    for token in filter.split('.') {
        match (token, subject.next()) {
            (">", Some(_)) => return true,
            (_, None) => return false,
            ("*", Some(_)) => {}
            (t, Some(s)) if t == s => {}
            _ => return false,
        }
    }
    subject.next().is_none()
}

/// Whether some subject matches both filters.
fn filters_overlap(a: &str, b: &str) -> bool {
    let (mut a, mut b) = (a.split('.'), b.split('.'));
    loop {
        match (a.next(), b.next()) {
            (None, None) | (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
            (Some(x), Some(y)) if x == "*" || y == "*" || x == y => {}
            _ => return false,
        }
    }
}

struct Filter {
    /// The full subject (with prefix).
    subject: String,
    /// The subscription's id (see `Command::Subscribe`).
    id: u64,
    /// Handlers of this process that need it.
    holders: usize,
}

/// What changed in the subscriptions: subscribe or release these.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Changes {
    pub(super) subscribe: Vec<(u64, String)>,
    pub(super) release: Vec<u64>,
}

#[derive(Default)]
struct Table {
    active: Vec<Filter>,
    /// Released filters and when, for [`OVERLAP_GRACE`].
    released: Vec<(String, Instant)>,
    recent: VecDeque<Id>,
    recent_set: HashSet<Id>,
    /// Whether two of the filters (held or in their grace) overlap: only
    /// then may a message arrive more than once.
    overlap: bool,
    /// How many pairs of them overlap, kept as filters come and go (each
    /// change compares one filter with the others). Recomputing every
    /// pair at each change made handler churn quadratic: a leak audit saw
    /// 40 ms per `on`/`off` after a thousand of them.
    pairs: usize,
}

impl Table {
    /// The filters (held or in their grace).
    fn subjects(&self) -> impl Iterator<Item = &str> {
        (self.active.iter().map(|f| f.subject.as_str()))
            .chain(self.released.iter().map(|(f, _)| f.as_str()))
    }

    /// How many of the filters overlap `subject`.
    fn overlapping(&self, subject: &str) -> usize {
        self.subjects()
            .filter(|f| filters_overlap(f, subject))
            .count()
    }

    fn hold(&mut self, filter: Filter) {
        self.pairs += self.overlapping(&filter.subject);
        self.active.push(filter);
    }

    fn unhold(&mut self, index: usize) -> Filter {
        let filter = self.active.remove(index);
        self.pairs -= self.overlapping(&filter.subject);
        filter
    }

    /// `subject` was released at `at`: it replaces an earlier release of it.
    fn released_at(&mut self, subject: String, at: Instant) {
        self.forget_released(|(s, _)| *s == subject);
        self.pairs += self.overlapping(&subject);
        self.released.push((subject, at));
    }

    fn forget_released(&mut self, gone: impl Fn(&(String, Instant)) -> bool) {
        let mut i = 0;
        while i < self.released.len() {
            if gone(&self.released[i]) {
                let (subject, _) = self.released.remove(i);
                self.pairs -= self.overlapping(&subject);
            } else {
                i += 1;
            }
        }
    }

    /// Forgets filters whose grace has ended and sees again whether any
    /// two of the rest overlap.
    fn refresh(&mut self, now: Instant) {
        self.forget_released(|(_, at)| now.duration_since(*at) >= OVERLAP_GRACE);
        self.overlap = self.pairs > 0;
    }

    /// The overlapping pairs counted one by one (for the tests).
    #[cfg(test)]
    fn count_pairs(&self) -> usize {
        let subjects: Vec<&str> = self.subjects().collect();
        (0..subjects.len())
            .map(|i| {
                (subjects[i + 1..].iter())
                    .filter(|b| filters_overlap(subjects[i], b))
                    .count()
            })
            .sum()
    }
}

/// The broadcast filters of one process.
#[derive(Default)]
pub(super) struct Filters {
    table: Mutex<Table>,
    /// Filter key (subject) → id, to find a filter by its key.
    ids: Mutex<HashMap<String, u64>>,
}

impl Filters {
    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One more handler needs each of `subjects` (full subjects); new ones
    /// get ids from `next_id` and are returned for subscription.
    pub(super) fn hold(&self, subjects: &[String], mut next_id: impl FnMut() -> u64) -> Changes {
        let mut table = self.table();
        let mut changes = Changes::default();
        for subject in subjects {
            match table.active.iter_mut().find(|f| &f.subject == subject) {
                Some(filter) => filter.holders += 1,
                None => {
                    let id = next_id();
                    table.hold(Filter {
                        subject: subject.clone(),
                        id,
                        holders: 1,
                    });
                    self.ids
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(subject.clone(), id);
                    changes.subscribe.push((id, subject.clone()));
                }
            }
        }
        table.refresh(Instant::now());
        changes
    }

    /// A handler that held `subjects` went; filters nobody holds any more
    /// are returned for release.
    pub(super) fn release(&self, subjects: &[String]) -> Changes {
        let mut table = self.table();
        let mut changes = Changes::default();
        let now = Instant::now();
        for subject in subjects {
            let Some(index) = table.active.iter().position(|f| &f.subject == subject) else {
                continue;
            };
            table.active[index].holders -= 1;
            if table.active[index].holders == 0 {
                let filter = table.unhold(index);
                self.ids
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&filter.subject);
                // One entry per subject, the latest release last.
                table.released_at(filter.subject, now);
                changes.release.push(filter.id);
            }
        }
        table.refresh(now);
        changes
    }

    /// Whether a broadcast on `subject` with event id `id` is new to this
    /// process (take it) or a copy already taken through another filter.
    pub(super) fn take(&self, subject: &str, id: &Id) -> bool {
        let mut table = self.table();
        if !table.overlap {
            // No subject matches two filters: every message comes once.
            return true;
        }
        let now = Instant::now();
        if table
            .released
            .first()
            .is_some_and(|(_, at)| now.duration_since(*at) >= OVERLAP_GRACE)
        {
            table.refresh(now);
        }
        // Released filters are in release order: after the refresh above,
        // every one left is in its grace.
        let matching = (table.active.iter().map(|f| f.subject.as_str()))
            .chain(table.released.iter().map(|(f, _)| f.as_str()))
            .filter(|f| subject_matches(f, subject))
            .count();
        if matching <= 1 {
            return true;
        }
        if !table.recent_set.insert(id.clone()) {
            return false;
        }
        table.recent.push_back(id.clone());
        if table.recent.len() > RECENT_IDS
            && let Some(old) = table.recent.pop_front()
        {
            table.recent_set.remove(&old);
        }
        true
    }

    /// Releases every filter (the runtime closes); their ids come back.
    pub(super) fn release_all(&self) -> Vec<u64> {
        let mut table = self.table();
        let now = Instant::now();
        let mut released = Vec::new();
        while let Some(last) = table.active.len().checked_sub(1) {
            let filter = table.unhold(last);
            table.released_at(filter.subject.clone(), now);
            released.push(filter);
        }
        released.reverse();
        table.refresh(now);
        self.ids.lock().unwrap_or_else(|p| p.into_inner()).clear();
        released.into_iter().map(|f| f.id).collect()
    }

    /// Every filter held now, with its id and holders.
    #[cfg(test)]
    pub(super) fn active(&self) -> Vec<(u64, String, usize)> {
        self.table()
            .active
            .iter()
            .map(|f| (f.id, f.subject.clone(), f.holders))
            .collect()
    }
}

#[cfg(test)]
mod tests;

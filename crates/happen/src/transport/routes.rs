//! Which of this process's nodes take a broadcast of a given event type,
//! worked out once per type and kept until something that could change the
//! answer changes.
//!
//! Without it every broadcast asked every node of the process whether one of
//! its handlers matches: with many nodes (an agent per user, per device) a
//! broadcast cost time in proportion to all of them, not to its receivers.
//!
//! Anything that can change which nodes take a type bumps one process-wide
//! generation ([`changed`]): a handler registered or removed (ordinary or
//! zero), a node attached, detached or shut down. A route made under an
//! older generation is made again on its next use. A route computed while a
//! change happens carries the generation read before it started, so it is
//! never taken for newer than it is.
//!
//! A pattern that is a user function (`Pattern::from_fn`) is asked on every
//! broadcast, as before: its answer may depend on more than the type. A
//! node with such a handler is listed in the route as one to ask.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::id::Id;
use crate::node::{Matched, Node};

/// The process-wide generation of everything routes depend on.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// Distinct event types whose routes are kept; past it the table starts
/// over (event types made from data, such as ids, must not grow it without
/// bound).
const MAX_ROUTES: usize = 4096;

/// Something that can change which nodes take which event types happened.
pub(crate) fn changed() {
    GENERATION.fetch_add(1, Ordering::AcqRel);
}

/// The receivers of broadcasts of one event type.
pub(crate) struct Route {
    generation: u64,
    /// Nodes whose handlers take the type, with the match (`None`: only a
    /// zero handler takes it).
    pub(crate) fixed: Vec<(Node, Option<Matched>)>,
    /// Nodes with a function pattern: asked on each broadcast.
    pub(crate) ask: Vec<Node>,
}

impl Route {
    /// A route being made now: read the generation before looking at any
    /// node.
    pub(crate) fn begin() -> Route {
        Route {
            generation: GENERATION.load(Ordering::Acquire),
            fixed: Vec::new(),
            ask: Vec::new(),
        }
    }
}

/// The routes of one process's nodes, by event type.
#[derive(Default)]
pub(crate) struct Routes {
    table: RwLock<HashMap<Id, Arc<Route>>>,
}

impl Routes {
    /// The route for `event_type`: the kept one if nothing changed since it
    /// was made, else a new one from `make` (kept for next time).
    pub(crate) fn get(&self, event_type: &str, make: impl FnOnce() -> Route) -> Arc<Route> {
        let now = GENERATION.load(Ordering::Acquire);
        {
            let table = self.table.read().unwrap_or_else(|p| p.into_inner());
            if let Some(route) = table.get(event_type)
                && route.generation == now
            {
                return route.clone();
            }
        }
        let route = Arc::new(make());
        let mut table = self.table.write().unwrap_or_else(|p| p.into_inner());
        if table.len() >= MAX_ROUTES && !table.contains_key(event_type) {
            table.clear();
        }
        table.insert(Id::from(event_type), route.clone());
        route
    }

    /// Forgets every route (the runtime lets go of its nodes).
    pub(crate) fn clear(&self) {
        self.table
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

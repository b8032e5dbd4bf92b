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
//! never taken for newer than it is, and it is not stored.
//!
//! Routes hold their nodes (a broadcast then takes no reference count per
//! receiver) and are dropped as soon as a node leaves the runtime
//! ([`Routes::forget`]): a node shut down is not kept alive by them, nor is
//! what it holds (a spool's file, say). They hold matched handlers weakly:
//! a handler removed is dropped at once (with what it captured), whether or
//! not its type is broadcast again. Routes of older generations are
//! dropped at the next broadcast of any type.
//!
//! A pattern that is a user function (`Pattern::from_fn`) is asked on every
//! broadcast, as before: its answer may depend on more than the type. A
//! node with such a handler is listed in the route as one to ask.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::id::Id;
use crate::node::{KeptMatch, Matched, NodeCore};

/// The process-wide generation of everything routes depend on.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// Event types, and receivers over all types, kept in one table; past
/// either the table starts over, so that event types made from data (ids,
/// say) or many types each taken by many nodes cannot grow it without
/// bound.
const MAX_TYPES: usize = 4096;
const MAX_KEPT: usize = 1 << 20;

/// Something that can change which nodes take which event types happened.
pub(crate) fn changed() {
    GENERATION.fetch_add(1, Ordering::AcqRel);
}

/// A node that takes a type, with its match (`None`: only a zero handler
/// takes it). Routes do not keep the node's handlers alive: a handler
/// removed is gone from memory even if its route is never made again.
pub(crate) struct Receiver {
    node: Arc<NodeCore>,
    matched: Option<KeptMatch>,
}

impl Receiver {
    /// The node and its match (`None`: only a zero handler takes the
    /// type). If its handlers changed since the route was made, `again`
    /// asks the node anew (`None`: it takes the type no more).
    pub(crate) fn get(
        &self,
        again: impl FnOnce(&NodeCore) -> Option<Option<Matched>>,
    ) -> Option<(&Arc<NodeCore>, Option<Matched>)> {
        let matched = match &self.matched {
            None => None,
            Some(kept) => match kept.get() {
                Some(matched) => Some(matched),
                None => again(&self.node)?,
            },
        };
        Some((&self.node, matched))
    }
}

/// The receivers of broadcasts of one event type.
pub(crate) struct Route {
    generation: u64,
    /// Nodes whose handlers take the type.
    fixed: Vec<Receiver>,
    /// Nodes with a function pattern: asked on each broadcast.
    ask: Vec<Arc<NodeCore>>,
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

    /// `node` takes the type, with `matched`.
    pub(crate) fn takes(&mut self, node: &Arc<NodeCore>, matched: Option<&Matched>) {
        self.fixed.push(Receiver {
            node: node.clone(),
            matched: matched.map(Matched::keep),
        });
    }

    /// `node` is to be asked on each broadcast.
    pub(crate) fn ask(&mut self, node: &Arc<NodeCore>) {
        self.ask.push(node.clone());
    }

    /// The nodes that take the type.
    pub(crate) fn fixed(&self) -> &[Receiver] {
        &self.fixed
    }

    /// The nodes to ask.
    pub(crate) fn to_ask(&self) -> &[Arc<NodeCore>] {
        &self.ask
    }

    fn size(&self) -> usize {
        self.fixed.len() + self.ask.len() + 1
    }
}

/// The routes of one process's nodes, by event type.
#[derive(Default)]
pub(crate) struct Routes {
    table: RwLock<Table>,
}

/// The kept routes, all made under one generation.
#[derive(Default)]
struct Table {
    generation: u64,
    /// Looked up on every broadcast: foldhash, not SipHash (see
    /// "Maps looked up per event" in the transport module).
    routes: foldhash::HashMap<Id, Arc<Route>>,
    /// The sum of the routes' sizes.
    kept: usize,
}

impl Table {
    fn clear(&mut self) {
        self.routes.clear();
        self.kept = 0;
    }
}

impl Routes {
    /// Drops every kept route (a node left the runtime: the routes must
    /// not keep it). Call after [`changed`]: a route made before is then
    /// not kept either.
    pub(crate) fn forget(&self) {
        self.table
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// The route for `event_type`: the kept one if nothing changed since it
    /// was made, else a new one from `make` (kept for next time, unless
    /// something changed while it was made).
    pub(crate) fn get(&self, event_type: &str, make: impl FnOnce() -> Route) -> Arc<Route> {
        let now = GENERATION.load(Ordering::Acquire);
        {
            let table = self.table.read().unwrap_or_else(|p| p.into_inner());
            if let Some(route) = table.routes.get(event_type)
                && route.generation == now
            {
                return route.clone();
            }
        }
        let route = Arc::new(make());
        let mut table = self.table.write().unwrap_or_else(|p| p.into_inner());
        if route.generation != GENERATION.load(Ordering::Acquire) {
            return route; // good for this broadcast only
        }
        if table.generation != route.generation {
            // Every kept route is older, hence never used again: dropped
            // now, not when its type is next broadcast (if ever).
            table.clear();
            table.generation = route.generation;
        }
        if let Some(same) = table.routes.remove(event_type) {
            table.kept -= same.size(); // made at the same time elsewhere
        }
        if table.routes.len() >= MAX_TYPES || table.kept + route.size() > MAX_KEPT {
            table.clear();
        }
        table.kept += route.size();
        table.routes.insert(Id::from(event_type), route.clone());
        route
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    /// What `attempt` gives in a run during which nothing but itself
    /// (`own` changes) changed the generation: tests run as threads of one
    /// process under `cargo test`, and other tests attach nodes.
    fn undisturbed<T>(own: u64, attempt: impl Fn() -> T) -> T {
        for _ in 0..1000 {
            let before = GENERATION.load(Ordering::Acquire);
            let outcome = attempt();
            if GENERATION.load(Ordering::Acquire) == before + own {
                return outcome;
            }
        }
        panic!("the generation never stood still");
    }

    /// How many times routes for one type were made in `gets` uses, with
    /// `between` called after the first.
    fn made(gets: usize, between: impl Fn()) -> usize {
        let routes = Routes::default();
        let made = Cell::new(0);
        for get in 0..gets {
            routes.get("t", || {
                made.set(made.get() + 1);
                Route::begin()
            });
            if get == 0 {
                between();
            }
        }
        made.get()
    }

    #[test]
    fn a_route_is_kept_until_something_changes() {
        assert_eq!(undisturbed(0, || made(3, || ())), 1, "kept");
        assert_eq!(undisturbed(1, || made(3, changed)), 2, "made again once");
    }

    #[test]
    fn routes_of_older_generations_are_dropped_when_a_new_one_is_kept() {
        let kept = undisturbed(1, || {
            let routes = Routes::default();
            routes.get("a", Route::begin);
            routes.get("b", Route::begin);
            changed();
            routes.get("c", Route::begin);
            let table = routes.table.read().unwrap();
            (table.routes.len(), table.kept)
        });
        assert_eq!(kept, (1, 1), "only the route of \"c\" is left");
    }

    #[test]
    fn a_route_made_during_a_change_is_not_kept() {
        let kept = undisturbed(1, || {
            let routes = Routes::default();
            routes.get("t", || {
                let route = Route::begin();
                changed(); // a node attached while this route was made
                route
            });
            routes.table.read().unwrap().kept
        });
        assert_eq!(kept, 0, "good for its broadcast only");
    }
}

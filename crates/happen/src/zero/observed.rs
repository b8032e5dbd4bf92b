//! Zero events as observers see them: stamped where they are sent,
//! delivered when their handler takes them, finished when it returns.
//!
//! Observers read ordinary [`Event`]s, so each point converts the zero
//! event ([`ZeroEvent::to_event`], which keeps its causal context and
//! payload). All of it is out of line and reached only when the runtime
//! has an observer: without one, the zero path pays one branch where an
//! event is sent and one where it is handled, and allocates nothing.

use std::time::Instant;

use super::ZeroEvent;
use super::lane::Item;
use crate::error::HappenError;
use crate::node::NodeCore;
use crate::observe::Finished;

/// How a zero handler's event ended, for [`Observer::finished`]
/// (`crate::observe::Observer`); a handler that went on in an ordinary
/// step has no end here (its ordinary flow reports it).
pub(super) struct Ended {
    error: Option<HappenError>,
    answered: bool,
}

/// What running a zero handler tells its observers: nothing (`()`, when
/// there are none: every call compiles to nothing), or how it ended.
pub(super) trait Report {
    /// Whether anything is reported.
    const ON: bool;
    /// The event's handling ended with `error` (or none).
    fn ended(&mut self, error: Option<&HappenError>, answered: bool);
    /// The handler's zero reply was sealed by `core`.
    fn stamped(&self, core: &NodeCore, reply: &ZeroEvent);
}

impl Report for () {
    const ON: bool = false;
    #[inline(always)]
    fn ended(&mut self, _: Option<&HappenError>, _: bool) {}
    #[inline(always)]
    fn stamped(&self, _: &NodeCore, _: &ZeroEvent) {}
}

impl Report for Option<Ended> {
    const ON: bool = true;
    fn ended(&mut self, error: Option<&HappenError>, answered: bool) {
        *self = Some(Ended {
            error: error.cloned(),
            answered,
        });
    }
    fn stamped(&self, core: &NodeCore, reply: &ZeroEvent) {
        stamped(core, reply);
    }
}

/// `event` was sealed by `core` and is about to leave it.
#[cold]
#[inline(never)]
pub(super) fn stamped(core: &NodeCore, event: &ZeroEvent) {
    core.observers().stamped(&event.to_event());
}

/// Runs `handle` on `item` for `core`, reported to the node's observers:
/// delivered before the handler runs, finished after it (unless it went
/// on in an ordinary flow).
#[cold]
#[inline(never)]
pub(super) fn run(core: &NodeCore, item: Item, handle: impl FnOnce(Item, &mut Option<Ended>)) {
    let ordinary = item.event.to_event();
    core.observers().delivered(core.id(), &ordinary);
    let started = Instant::now();
    let mut ended = None;
    handle(item, &mut ended);
    if let Some(ended) = ended {
        core.observers().finished(
            core.id(),
            &ordinary,
            &Finished {
                error: ended.error.as_ref(),
                elapsed: started.elapsed(),
                answered: ended.answered,
                // A zero event runs one handler: its node's first flow.
                flow: 0,
            },
        );
    }
}

//! [`Shared`]: what the steps of one flow share, and its reuse.
//!
//! Every flow has one, behind an `Arc` that each clone of the flow's
//! [`Context`](super::Context) holds. When a flow ends and nothing else
//! holds its part (no clone of its context was kept, by a task it spawned
//! for instance), the part is emptied at once (the node, the event and the
//! values the steps stored go then) and kept for the next flow on the same
//! thread ([`Shared::recycle`], [`Shared::new`]): a node handling a stream
//! of events allocates no part per flow. The next flow sees none of what
//! the last one left.

use std::cell::Cell;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde_json::{Map, Value};

use super::Typed;
use crate::delivery::Responder;
use crate::event::Event;
use crate::node::{Node, SlotWaits};

/// What every step of one flow shares, whatever its local value's type.
///
/// A flow's part is allocated once and then kept for the next flow on its
/// thread when the flow ends with no other reference to it (see
/// [`Shared::recycle`]): a node handling a stream of events allocates none.
pub(crate) struct Shared {
    /// The flow's node and event. `None` only while the part is kept, empty,
    /// for its thread's next flow: nothing else can reach it then.
    flow: Option<Flow>,
    pub(super) expects_response: bool,
    /// The requester's reply channel while the flow runs (taken at the end,
    /// and lent to one emit at a time).
    pub(super) responder: Mutex<Option<Responder>>,
    /// Serializes emits (from clones of the context in several tasks).
    pub(super) emitting: tokio::sync::Mutex<()>,
    /// Items emitted so far (numbering broadcast stream items).
    pub(super) emitted: std::sync::atomic::AtomicU64,
    pub(super) received_at: u64,
    pub(super) values: Mutex<Map<String, Value>>,
    pub(super) typed: Mutex<Typed>,
    /// How many answers the flow waits for now, and whether it ended (see
    /// `node::blocked`).
    pub(crate) waits: std::sync::atomic::AtomicUsize,
    /// The count shared with the other flows of the flow's event, when
    /// several handlers took it (they hold one slot).
    pub(crate) slot: Option<Arc<SlotWaits>>,
}

struct Flow {
    node: Node,
    event: Event,
}

thread_local! {
    /// The emptied part of the last flow that ended on this thread, for the
    /// thread's next flow.
    static SPARE: Cell<Option<Arc<Shared>>> = const { Cell::new(None) };
}

/// Whether a flow with `responder` answers a requester (one whose requester
/// waits for another flow of its event does not).
fn answers(responder: Option<&Responder>) -> bool {
    responder.is_some_and(|r| !matches!(r, Responder::Elsewhere))
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A step that panicked while holding the lock has already failed its flow;
    // the data itself is still consistent (every update is a single call).
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    pub(crate) fn new(
        node: Node,
        event: Event,
        received_at: u64,
        responder: Option<Responder>,
        slot: Option<Arc<SlotWaits>>,
    ) -> Arc<Self> {
        if let Some(mut spare) = SPARE.try_with(Cell::take).ok().flatten()
            && let Some(part) = Arc::get_mut(&mut spare)
        {
            part.flow = Some(Flow { node, event });
            part.expects_response = answers(responder.as_ref());
            *part
                .responder
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner) = responder;
            part.received_at = received_at;
            part.slot = slot;
            return spare;
        }
        Arc::new(Shared {
            flow: Some(Flow { node, event }),
            expects_response: answers(responder.as_ref()),
            responder: Mutex::new(responder),
            emitting: tokio::sync::Mutex::new(()),
            emitted: std::sync::atomic::AtomicU64::new(0),
            received_at,
            values: Mutex::new(Map::new()),
            typed: Mutex::new(Typed::default()),
            waits: std::sync::atomic::AtomicUsize::new(0),
            slot,
        })
    }

    /// Keeps the part of a flow that has ended for the thread's next flow,
    /// emptied, if nothing else holds it (a clone of the context kept by a
    /// task the flow spawned does; then it goes when that clone does).
    pub(crate) fn recycle(mut shared: Arc<Shared>) {
        let Some(part) = Arc::get_mut(&mut shared) else {
            return;
        };
        // Every field named, so that one added later cannot be left out.
        let Shared {
            flow,
            expects_response,
            responder,
            emitting,
            emitted,
            received_at,
            values,
            typed,
            waits,
            slot,
        } = part;
        // Locks a panicking step left poisoned: a part like that is not
        // worth keeping.
        let (Ok(values), Ok(typed), Ok(responder)) =
            (values.get_mut(), typed.get_mut(), responder.get_mut())
        else {
            return;
        };
        // What the flow left goes now, not when the next flow comes.
        values.clear();
        typed.0.clear();
        *responder = None;
        *flow = None;
        *expects_response = false;
        *received_at = 0;
        *emitted.get_mut() = 0;
        // Each wait holds the part, so none is left when it comes here
        // (and the flag of its end goes).
        *waits.get_mut() = 0;
        *slot = None;
        // Unlocked whatever became of an emit that waited for it (one
        // leaked while queued for the lock could hold it for good).
        *emitting = tokio::sync::Mutex::new(());
        // The part kept before, if any, goes outside the thread's slot.
        let _previous = SPARE.try_with(|spare| spare.replace(Some(shared)));
    }

    fn flow(&self) -> &Flow {
        self.flow
            .as_ref()
            .expect("a flow's part is emptied only when nothing else holds it")
    }

    /// Whether the flow has emitted an item.
    pub(crate) fn streamed(&self) -> bool {
        self.emitted.load(std::sync::atomic::Ordering::Relaxed) > 0
    }

    pub(crate) fn node(&self) -> &Node {
        &self.flow().node
    }

    pub(crate) fn event(&self) -> &Event {
        &self.flow().event
    }

    /// Whether a requester waits for the flow's outcome.
    pub(crate) fn expects_response(&self) -> bool {
        self.expects_response
    }

    pub(crate) fn core(&self) -> &Arc<crate::node::NodeCore> {
        self.node().core()
    }

    /// The responder, taken for the end of the flow; `Err` while an emit
    /// has it (then [`Shared::take_responder`] waits for that emit).
    #[inline]
    pub(crate) fn try_take_responder(&self) -> Result<Option<Responder>, ()> {
        if !self.expects_response {
            return Ok(None);
        }
        if let Some(responder) = lock(&self.responder).take() {
            return Ok(Some(responder));
        }
        // Empty: an emit has it, unless none runs (then look again with
        // emits held off: one may have put it back just now).
        match self.emitting.try_lock() {
            Ok(_turn) => Ok(lock(&self.responder).take()),
            Err(_) => Err(()),
        }
    }

    pub(crate) async fn take_responder(&self) -> Option<Responder> {
        if !self.expects_response {
            return None;
        }
        if let Some(responder) = lock(&self.responder).take() {
            return Some(responder);
        }
        // A task the flow spawned may be emitting with it: wait for its
        // turn to end.
        let _turn = self.emitting.lock().await;
        lock(&self.responder).take()
    }
}

#[cfg(test)]
mod tests {
    use crate::prelude::*;
    use std::sync::{Arc, Mutex};

    /// The part the thread keeps, if any: where it lives, and whether it
    /// is emptied of its node and event (left in place).
    fn kept_part() -> Option<(usize, bool)> {
        super::SPARE.with(|spare| {
            let part = spare.take();
            let seen = part
                .as_ref()
                .map(|p| (Arc::as_ptr(p) as usize, p.flow.is_none()));
            spare.set(part);
            seen
        })
    }

    /// Where a flow's shared part lives, to tell reuse from a new one.
    fn part_of<S>(cx: &Context<S>) -> usize {
        Arc::as_ptr(&cx.shared) as usize
    }

    /// Flows one after another on a thread share one allocation, and each
    /// starts with nothing the one before left in it.
    #[tokio::test(flavor = "current_thread")]
    async fn a_flow_starts_clean_in_the_part_its_thread_kept() {
        let happen = Happen::embedded();
        let client = happen.node("client").unwrap();
        let worker = happen.node("worker").unwrap();
        let dropped = Arc::new(());
        let held = dropped.clone();
        worker
            .on("step", move |e: Event, cx: Context| {
                let held = held.clone();
                async move {
                    let fresh = cx.get("mark").is_none()
                        && cx.typed::<u32>().is_none()
                        && cx.event().payload() == e.payload();
                    cx.set("mark", e.payload().clone());
                    cx.insert(7_u32);
                    cx.insert(held);
                    json!({ "fresh": fresh, "part": part_of(&cx) })
                }
            })
            .unwrap();
        let mut parts = Vec::new();
        for i in 0..3 {
            let out = client
                .send(&worker, Event::new("step", json!(i)))
                .await
                .unwrap();
            assert_eq!(
                out["fresh"],
                json!(true),
                "flow {i} saw a value left before it"
            );
            // What the flow put in its context went when it ended.
            // (The test and the handler hold one each.)
            assert_eq!(
                Arc::strong_count(&dropped),
                2,
                "flow {i} left its value alive"
            );
            // The thread keeps the flow's part, emptied of its node and
            // event, and the next flow starts in it.
            let spare = kept_part().expect("the thread kept the flow's part");
            assert_eq!(json!(spare.0), out["part"]);
            assert!(
                spare.1,
                "the kept part still holds its flow's node and event"
            );
            parts.push(out["part"].clone());
        }
        assert!(
            parts.windows(2).all(|w| w[0] == w[1]),
            "each flow allocated its own part: {parts:?}"
        );
        happen.shutdown().await;
    }

    /// A context a flow's handler kept keeps its own flow's part: the next
    /// flow gets another, and the kept one still reads its own event.
    #[tokio::test(flavor = "current_thread")]
    async fn a_kept_context_is_not_given_to_the_next_flow() {
        let happen = Happen::embedded();
        let client = happen.node("client").unwrap();
        let worker = happen.node("worker").unwrap();
        let kept: Arc<Mutex<Option<Context>>> = Arc::default();
        let slot = kept.clone();
        worker
            .on("step", move |e: Event, cx: Context| {
                let slot = slot.clone();
                async move {
                    let seen = cx.get("mine");
                    cx.set("mine", e.payload().clone());
                    if e.payload() == &json!("first") {
                        *slot.lock().unwrap() = Some(cx.clone());
                    }
                    json!({ "seen": seen, "part": part_of(&cx) })
                }
            })
            .unwrap();
        let first = client
            .send(&worker, Event::new("step", json!("first")))
            .await
            .unwrap();
        let second = client
            .send(&worker, Event::new("step", json!("second")))
            .await
            .unwrap();
        assert_eq!(second["seen"], Value::Null);
        assert_ne!(first["part"], second["part"]);
        let cx = kept.lock().unwrap().take().expect("the kept context");
        assert_eq!(cx.event().payload(), &json!("first"));
        assert_eq!(cx.get("mine"), Some(json!("first")));
        happen.shutdown().await;
    }

    /// A flow nobody waits for keeps its part for the next flow as well.
    #[tokio::test(flavor = "current_thread")]
    async fn a_one_way_flow_keeps_its_part_too() {
        let happen = Happen::embedded();
        let client = happen.node("client").unwrap();
        let worker = happen.node("worker").unwrap();
        let (done, finished) = tokio::sync::oneshot::channel::<usize>();
        let done = Mutex::new(Some(done));
        worker
            .on("note", move |_e: Event, cx: Context| {
                let done = done.lock().unwrap().take();
                async move {
                    cx.set("left", "behind");
                    if let Some(done) = done {
                        let _ = done.send(part_of(&cx));
                    }
                }
            })
            .unwrap();
        client.tell(&worker, Event::new("note", json!(1))).unwrap();
        let part = finished.await.unwrap();
        // The flow ends in the same turn of the node's worker as it answered.
        tokio::task::yield_now().await;
        let kept = kept_part().map(|(at, _)| at);
        assert_eq!(kept, Some(part), "the one-way flow's part was not kept");
        happen.shutdown().await;
    }

    /// The items a one-way flow emits are numbered from 0 in every flow,
    /// also in a part the thread's last flow left; a flow started by a
    /// request and the one-way flows after it in the same part each see
    /// whether their own sender waits.
    #[tokio::test(flavor = "current_thread")]
    async fn each_flow_numbers_its_items_from_zero() {
        let happen = Happen::embedded();
        let client = happen.node("client").unwrap();
        let worker = happen.node("worker").unwrap();
        let listener = happen.node("listener").unwrap();
        let waits = Arc::new(Mutex::new(Vec::new()));
        let seqs = Arc::new(Mutex::new(Vec::new()));
        let (w, s) = (waits.clone(), seqs.clone());
        worker
            .on("note", move |_e: Event, cx: Context| {
                let w = w.clone();
                async move {
                    w.lock().unwrap().push(cx.expects_response());
                    cx.emit(json!("item")).await.unwrap();
                }
            })
            .unwrap();
        listener
            .on("note.item", move |e: Event, _cx: Context| {
                let s = s.clone();
                async move { s.lock().unwrap().push(e.stream().map(|r| r.seq)) }
            })
            .unwrap();
        client
            .send(&worker, Event::new("note", json!(0)))
            .await
            .unwrap();
        for i in 1..=2 {
            client.tell(&worker, Event::new("note", json!(i))).unwrap();
            // Until the listener has this flow's item (bounded).
            for _ in 0..1000 {
                if seqs.lock().unwrap().len() == i {
                    break;
                }
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(*seqs.lock().unwrap(), vec![Some(0), Some(0)]);
        assert_eq!(*waits.lock().unwrap(), vec![true, false, false]);
        happen.shutdown().await;
    }

    /// A flow that fails leaves its part clean for the next one too (the
    /// failure is answered, then the part is emptied and kept).
    #[tokio::test(flavor = "current_thread")]
    async fn a_failed_flow_leaves_a_clean_part() {
        let happen = Happen::embedded();
        let client = happen.node("client").unwrap();
        let worker = happen.node("worker").unwrap();
        worker
            .on("step", |e: Event, cx: Context| async move {
                let fresh = cx.get("mark").is_none();
                cx.set("mark", true);
                if e.payload() == &json!("fail") {
                    return Err("refused");
                }
                Ok(json!({ "fresh": fresh, "part": part_of(&cx) }))
            })
            .unwrap();
        let failed = client
            .send(&worker, Event::new("step", json!("fail")))
            .await
            .unwrap_err();
        assert!(
            matches!(failed, HappenError::HandlerFailed { .. }),
            "{failed:?}"
        );
        let kept = kept_part().map(|(at, _)| at);
        let out = client
            .send(&worker, Event::new("step", json!("next")))
            .await
            .unwrap();
        assert_eq!(out["fresh"], json!(true));
        assert_eq!(kept.map(|at| json!(at)), Some(out["part"].clone()));
        happen.shutdown().await;
    }
}

//! Starting an event's flows at a node: the handlers that match it, each
//! one's flow, joined when there are several (see [`super::scheduler`] for
//! where they run), and settling the event's acknowledgement when they end.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;

use super::NodeCore;
use crate::delivery::{Acknowledge, Delivery, Failure, Responder};
use crate::entry::{FlowFuture, HandlerRef};
use crate::error::HappenError;

impl NodeCore {
    /// The runtime stopped taking work before its events were handled
    /// ([`Happen::shutdown_within`](crate::Happen::shutdown_within) ran
    /// out of time): the node takes no new event, and what waits in its
    /// queue or its zero lane (or is taken and not started yet) is refused
    /// with `Shutdown` (a durable event is handed back, to be delivered
    /// again). Flows already running run on.
    pub(crate) fn abandon(&self) {
        self.closed.store(true, Ordering::Release);
        self.scheduler.abandoned.store(true, Ordering::Release);
        self.refuse_waiting(HappenError::Shutdown);
        if let Some(lane) = self.zero_lane() {
            lane.abandon();
        }
    }

    /// Whether [`NodeCore::abandon`] was called.
    pub(crate) fn abandoned(&self) -> bool {
        self.scheduler.abandoned.load(Ordering::Acquire)
    }

    /// Refuses the deliveries in the queue.
    pub(super) fn refuse_waiting(&self, error: HappenError) {
        for delivery in self.scheduler.drain() {
            let _ = delivery.refuse(error.clone());
        }
        self.scheduler.idle.notify_waiters();
    }

    /// Starts the flows of every matching handler for one event (the first
    /// registered answers the requester); `None` if none matches any more
    /// (the delivery is refused).
    pub(super) fn start(self: &Arc<Self>, delivery: Delivery) -> Option<Started> {
        let Delivery {
            event,
            received_at,
            responder,
            ack,
            matched,
            inline,
            deadlock_at_await,
        } = delivery;
        let abandoned = self.abandoned();
        let matched = match abandoned {
            true => None,
            false => (self.registry).still_matching(matched, event.event_type(), &self.id),
        };
        let Some(matched) = matched else {
            // Every handler was removed while the event waited in the queue,
            // or the runtime stopped taking work.
            let error = match abandoned {
                true => HappenError::Shutdown,
                false => HappenError::NoHandler {
                    node: self.id.to_string(),
                    event_type: event.event_type().to_owned(),
                },
            };
            let _ = Delivery {
                event,
                received_at,
                responder,
                ack,
                matched: None,
                inline,
                deadlock_at_await,
            }
            .refuse(error);
            return None;
        };
        // A durable event may be tried again: its requester waits for the
        // attempt that ends it.
        let responder = match (&ack, responder) {
            (Some(_), Some(responder)) => Some(Responder::Retrying(Box::new(responder))),
            (_, responder) => responder,
        };
        let first = &matched.handlers[matched.first];
        let mut others = matched.handlers[matched.first + 1..]
            .iter()
            .filter(|r| r.accepts(event.event_type(), &self.id))
            .peekable();
        // Each flow keeps its own handler's entry; the table (`matched`)
        // is dropped here, so a handler removed meanwhile is not kept
        // alive by another handler's flow.
        if others.peek().is_none() {
            let (flow, handler) =
                first
                    .entry
                    .clone()
                    .start(self.clone(), event, received_at, responder, 0, None);
            let flows = Flows::One(flow, handler);
            return Some(Started { flows, ack });
        }
        // Numbered in registration order, the same when the event runs
        // again (exactly-once ids and state updates depend on it).
        // Their requester (if any) hears the first flow only. They hold one
        // slot, which waits while any of them does.
        let slot = Arc::new(crate::node::SlotWaits::default());
        let others: Vec<_> = others
            .zip(1u32..)
            .map(|(r, flow)| {
                let elsewhere = responder.as_ref().map(|_| Responder::Elsewhere);
                r.entry
                    .clone()
                    .start(
                        self.clone(),
                        event.clone(),
                        received_at,
                        elsewhere,
                        flow,
                        Some(slot.clone()),
                    )
                    .0
            })
            .collect();
        let (first, _) =
            first
                .entry
                .clone()
                .start(self.clone(), event, received_at, responder, 0, Some(slot));
        let flows = Flows::Joined(Box::pin(async move {
            let (first, rest) =
                futures::future::join(first, futures::future::join_all(others)).await;
            first.or_else(|| rest.into_iter().flatten().next())
        }));
        Some(Started { flows, ack })
    }
}

/// One event's flows, started: their future (boxed so that it can move to a
/// task of its own if it suspends) and the acknowledgement that waits for
/// their end.
pub(super) struct Started {
    pub(super) flows: Flows,
    pub(super) ack: Option<Box<dyn Acknowledge>>,
}

/// The future of an event's flows.
pub(super) enum Flows {
    /// The flow of the one handler that takes the event (its box is kept
    /// for the thread's next flow of that handler when it ends inline).
    One(FlowFuture, HandlerRef),
    /// The flows of several handlers, joined.
    Joined(futures::future::BoxFuture<'static, Option<Failure>>),
}

impl Future for Flows {
    type Output = Option<Failure>;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Flows::One(flow, _) => flow.as_mut().poll(cx),
            Flows::Joined(flows) => flows.as_mut().poll(cx),
        }
    }
}

/// Settles an event's acknowledgement with its flows' outcome (a panic that
/// escaped them counts as a failure).
pub(super) fn settle(
    ack: Option<Box<dyn Acknowledge>>,
    outcome: std::thread::Result<Option<Failure>>,
    node: &NodeCore,
) {
    let failure = match outcome {
        Ok(failure) => failure,
        Err(panic) => {
            // Flows catch their own panics; this catches the rest (an
            // error whose Display panics, ...).
            let message = crate::error::panic_message(panic.as_ref());
            tracing::error!(node = %node.id, %message, "event delivery panicked");
            Some(Failure::new(HappenError::HandlerPanicked {
                node: node.id.to_string(),
                event_type: String::new(),
                message,
            }))
        }
    };
    // Dropping the failure runs the Drop of a handler's own error, which
    // may panic: unwinding from here would leave the node's slot taken for
    // good (the caller gives it back after this), and the node would never
    // take another event (a cancellation audit's reproducer).
    let settled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match (ack, failure) {
        (Some(ack), None) => ack.ack(),
        (Some(ack), Some(failure)) => ack.nak(failure),
        // Without an acknowledgement nothing is retried.
        (None, Some(failure)) => {
            failure.answer();
        }
        (None, None) => {}
    }));
    if let Err(panic) = settled {
        let message = crate::error::panic_message(panic.as_ref());
        tracing::error!(node = %node.id, %message, "settling an event panicked");
        // The payload's own Drop may panic too.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(panic)));
    }
}

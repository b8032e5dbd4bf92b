//! The in-process transport: events go straight from the sender to the
//! receiving node's scheduler, without serialization.
//!
//! It is also the NATS transport's table of this process's nodes, so
//! delivery into a node (matching, queueing, refusals, system events) is the
//! same code in both runtimes.

use std::sync::{Arc, RwLock};

use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::reports::ReportLimit;
use super::routes::{Route, Routes};
use super::{Interest, Transport};
use crate::balance::Lag;
use crate::delivery::{self, Arrival, Delivery, ReplyTx, Responder};
use crate::error::{HappenError, Result};
use crate::event::{Event, stamp};
use crate::id::Id;
use crate::identity::Keys;
use crate::node::{Matched, Node, NodeCore};
use crate::pattern::Pattern;
use crate::receipt::Receipt;
use crate::system::RUNTIME_NODE;
use crate::system::{self, Counters, Tally};

/// Routes events between the nodes of one process.
#[derive(Default)]
pub(crate) struct LocalTransport {
    /// Looked up by id for every event sent by name (see "Maps looked
    /// up per event" in the transport module).
    nodes: RwLock<foldhash::HashMap<Arc<str>, Node>>,
    /// Who takes broadcasts of each event type.
    routes: Routes,
    tally: Tally,
    /// How often refusals and rejections are reported one by one.
    refused_reports: ReportLimit,
    rejected_reports: ReportLimit,
    /// How often refusals of the runtime's own reports are logged (they
    /// are never reported: a report of one would report itself).
    refused_own_reports: ReportLimit,
    /// The public keys of the nodes whose signatures this process checks.
    keys: Arc<Keys>,
}

impl LocalTransport {
    /// The public keys this process knows, by node id.
    pub(crate) fn keys(&self) -> &Arc<Keys> {
        &self.keys
    }

    /// Forgets every node (breaking the node ↔ runtime reference cycle).
    pub(crate) fn detach_all(&self) {
        self.nodes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        super::routes::changed();
        self.routes.forget();
    }

    /// This process's live nodes.
    pub(crate) fn nodes(&self) -> Vec<Node> {
        let nodes = self.nodes.read().unwrap_or_else(|p| p.into_inner());
        nodes.values().cloned().collect()
    }

    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    pub(crate) fn tally(&self) -> &Tally {
        &self.tally
    }

    pub(crate) fn lookup(&self, id: &str) -> Option<Node> {
        self.nodes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// Hands `event` to every local node with a matching handler. A full
    /// queue at one receiver does not keep the event from the others; each
    /// refusal is logged, counted and reported as a [`system::REFUSED`]
    /// event, and the first is returned afterwards.
    pub(crate) fn deliver_broadcast(&self, event: &Event, arrival: Arrival) -> Result<Receipt> {
        let event_type = event.event_type();
        let route = self.routes.get(event_type, || self.route(event_type));
        let asked = route
            .to_ask()
            .iter()
            .filter_map(|node| Self::takes(node, event_type).map(|matched| (node, matched)));
        let receivers = route
            .fixed()
            .iter()
            .filter_map(|receiver| receiver.get(|node| Self::takes(node, event_type)))
            .chain(asked)
            // A node shut down since the route was made (its shutdown
            // changes the routes right after; this covers the moment
            // between).
            .filter(|(node, _)| !node.is_closed());
        let mut first_error = None;
        let mut receipt = Receipt::kept();
        for (node, matched) in receivers {
            let mut delivery = Delivery::new(event.clone(), None, arrival);
            delivery.matched = matched;
            match delivery::deliver(node, delivery) {
                // One writer keeps every node's events in order: the last
                // receiver that keeps a copy answers for all.
                Ok(()) => match delivery::receipt(node) {
                    kept if kept.is_ready() => {}
                    waiting => receipt = waiting,
                },
                Err(error) => {
                    self.refused(node.id(), event, &error);
                    // A node whose acceptance controls or signature
                    // checks refuse the sender reports it; the broadcast
                    // itself went to the others.
                    if !matches!(
                        error,
                        HappenError::NotAccepted { .. } | HappenError::Integrity { .. }
                    ) {
                        first_error.get_or_insert(error);
                    }
                }
            }
        }
        first_error.map_or(Ok(receipt), Err)
    }

    /// Works out which nodes take broadcasts of `event_type`.
    fn route(&self, event_type: &str) -> Route {
        let mut route = Route::begin();
        // Taken out of the table first: a pattern function asked below
        // may itself look up or create nodes.
        let nodes: Vec<Arc<NodeCore>> = self
            .nodes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|node| node.core().clone())
            .collect();
        // A node whose transport stores its events takes broadcasts from
        // there, not this direct copy.
        for node in nodes.iter().filter(|n| !n.stored_by_transport()) {
            if !node.routes_by_type() {
                route.ask(node);
            } else if let Some(matched) = Self::takes(node, event_type) {
                route.takes(node, matched.as_ref());
            }
        }
        route
    }

    /// Whether `node` takes `event_type`: the match of its ordinary
    /// handlers, `Some(None)` when only a zero handler takes it (converted
    /// on delivery), `None` when nothing does.
    fn takes(node: &NodeCore, event_type: &str) -> Option<Option<Matched>> {
        match node.matching(event_type) {
            Some(matched) => Some(Some(matched)),
            None if node.zero_matches(event_type) => Some(None),
            None => None,
        }
    }

    /// Reports an event a node refused when nobody could be told directly
    /// (a broadcast, or a tell from another process): counted, and (within
    /// [`ReportLimit`]'s rate) logged and a [`system::REFUSED`] event.
    pub(crate) fn refused(&self, node: &str, event: &Event, error: &HappenError) {
        self.tally.refused();
        let now = std::time::Instant::now();
        if event.causal().sender == system::SYSTEM_SENDER {
            // Counted and logged, but not reported: a refused report would
            // report itself. Its own limit, so that it takes nothing from
            // the reports of other senders' refusals.
            if let Some(left_out) = self.refused_own_reports.admit(now) {
                tracing::warn!(node, event_type = event.event_type(), %error, left_out, "a report of the runtime's was refused");
            }
            return;
        }
        let Some(left_out) = self.refused_reports.admit(now) else {
            return;
        };
        tracing::warn!(node, event_type = event.event_type(), event_id = event.id(), %error, left_out, "broadcast refused");
        let mut report = json!({
            "node": node,
            "eventType": event.event_type(),
            "eventId": event.id(),
            "reason": error.to_string(),
        });
        with_left_out(&mut report, left_out);
        self.system_event(system::REFUSED, report);
    }

    /// Reports a message from another process that was not a valid event
    /// (undecodable, or its integrity check failed): counted, and (within
    /// [`ReportLimit`]'s rate) logged and a [`system::REJECTED`] event.
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    pub(crate) fn rejected(&self, subject: &str, error: &HappenError) {
        self.tally.rejected();
        let Some(left_out) = self.rejected_reports.admit(std::time::Instant::now()) else {
            return;
        };
        tracing::warn!(subject, %error, left_out, "message rejected");
        let event_id = match error {
            HappenError::Integrity { event_id, .. } => Value::from(event_id.as_str()),
            _ => Value::Null,
        };
        let mut report =
            json!({ "subject": subject, "eventId": event_id, "reason": error.to_string() });
        with_left_out(&mut report, left_out);
        self.system_event(system::REJECTED, report);
    }

    /// Reports a sent event that reached no node: logged, counted, and a
    /// [`system::UNDELIVERED`] event.
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    pub(crate) fn undelivered(&self, node: &str, event_type: &str, event_id: &str, reason: &str) {
        tracing::warn!(node, event_type, event_id, reason, "event reached no node");
        self.tally.undelivered();
        self.system_event(
            system::UNDELIVERED,
            json!({ "node": node, "eventType": event_type, "eventId": event_id, "reason": reason }),
        );
    }

    /// The queues of this process's nodes, but those whose transport
    /// stores their events (sampled there) and the runtime's own node (the
    /// handlers of `Happen::on`, not a node of the system's).
    pub(crate) fn queues(&self) -> Vec<(String, Option<Lag>)> {
        let nodes = self.nodes.read().unwrap_or_else(|p| p.into_inner());
        nodes
            .values()
            .filter(|node| !node.core().stored_by_transport() && node.id() != RUNTIME_NODE)
            .map(|node| {
                let (queued, running, completed) = node.core().load();
                let lag = Lag {
                    waiting: queued as u64,
                    in_flight: running as u64,
                    redelivered: 0,
                    progress: completed,
                };
                (node.id().to_owned(), Some(lag))
            })
            .collect()
    }

    /// Reports a durable event that failed its last attempt: logged,
    /// counted, and a [`system::DEAD_LETTER`] event.
    pub(crate) fn dead_letter(
        &self,
        node: &str,
        event: &Event,
        attempts: u32,
        error: &HappenError,
    ) {
        tracing::error!(node, event_type = event.event_type(), event_id = event.id(), attempts, %error, "event dead-lettered");
        self.tally.dead_lettered();
        self.system_event(
            system::DEAD_LETTER,
            json!({
                "node": node,
                "eventType": event.event_type(),
                "eventId": event.id(),
                "attempts": attempts,
                "error": error.to_string(),
                "event": event,
            }),
        );
    }

    /// Delivers a system event to the local nodes that handle it.
    pub(crate) fn system_event(&self, event_type: &str, payload: Value) {
        let mut event = Event::new(event_type, payload);
        stamp(&mut event, &Id::from(system::SYSTEM_SENDER), None);
        let _ = self.deliver_broadcast(&event, Arrival::Local);
    }

    /// Hands `event` to the local node `target`; every outcome, refusals
    /// included, goes to `responder` (when there is one) and refusals are
    /// returned.
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    pub(crate) fn deliver_to(
        &self,
        target: &str,
        event: Event,
        responder: Option<Responder>,
        arrival: Arrival,
    ) -> Result<()> {
        self.deliver_kept(target, event, responder, arrival)
            .map(drop)
    }

    /// Like [`LocalTransport::deliver_to`], with the receipt a sender awaits.
    fn deliver_kept(
        &self,
        target: &str,
        event: Event,
        responder: Option<Responder>,
        arrival: Arrival,
    ) -> Result<Receipt> {
        let delivery = Delivery::new(event, responder, arrival);
        match self.lookup(target) {
            Some(node) => {
                delivery::deliver(node.core(), delivery).map(|()| delivery::receipt(node.core()))
            }
            None => delivery
                .refuse(HappenError::UnknownNode {
                    node: target.to_owned(),
                })
                .map(|()| Receipt::kept()),
        }
    }
}

impl Transport for LocalTransport {
    fn attach(&self, node: &Node) -> Result<()> {
        let mut nodes = self.nodes.write().unwrap_or_else(|p| p.into_inner());
        if nodes.contains_key(node.id()) {
            return Err(HappenError::DuplicateNode {
                node: node.id().to_owned(),
            });
        }
        nodes.insert(Arc::from(node.id()), node.clone());
        super::routes::changed();
        Ok(())
    }

    fn detach(&self, id: &str) {
        self.nodes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        super::routes::changed();
        self.routes.forget();
    }

    fn subscribe(&self, _node: &Node, _pattern: &Pattern) -> Result<Interest> {
        // Every local node is consulted on each broadcast: nothing to set up.
        Ok(Interest::default())
    }

    fn unsubscribe(&self, _interest: &Interest) {}

    fn broadcast(&self, event: Event) -> Result<Receipt> {
        self.deliver_broadcast(&event, Arrival::Local)
    }

    fn send(
        &self,
        target: &str,
        event: Event,
        reply: ReplyTx,
        _deadline: crate::response::Deadline,
    ) -> Receipt {
        // A refusal has already gone to the requester.
        self.deliver_kept(target, event, Some(Responder::Local(reply)), Arrival::Local)
            .unwrap_or_else(Receipt::failed)
    }

    fn in_process(&self) -> bool {
        true
    }

    fn tell(&self, target: &str, event: Event) -> Result<Receipt> {
        self.deliver_kept(target, event, None, Arrival::Local)
    }

    fn flush(&self) -> BoxFuture<'static, Result<()>> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn settle(&self) -> BoxFuture<'static, ()> {
        Box::pin(std::future::ready(()))
    }

    fn close(&self) -> BoxFuture<'static, ()> {
        self.detach_all();
        Box::pin(std::future::ready(()))
    }

    fn abort(&self) {
        self.detach_all();
    }

    fn counters(&self) -> Counters {
        self.tally.snapshot()
    }

    fn local(&self) -> &LocalTransport {
        self
    }

    fn lag(&self) -> BoxFuture<'static, Vec<(String, Option<Lag>)>> {
        Box::pin(std::future::ready(self.queues()))
    }

    fn node(&self, id: &str) -> Option<Node> {
        self.lookup(id)
    }
}

/// Adds to a report how many of its kind were left out before it (see
/// [`ReportLimit`]), when any were.
fn with_left_out(report: &mut Value, left_out: u64) {
    if left_out > 0 {
        report["suppressed"] = Value::from(left_out);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use crate::{Context, Event, Happen};

    /// The refusal of one of the runtime's own reports is counted but takes
    /// nothing from the reports of other senders' refusals: the next of
    /// those still says how many were left out.
    #[test]
    fn refusing_the_runtimes_own_report_leaves_the_others_accounting_whole() {
        let local = super::LocalTransport::default();
        let error = crate::HappenError::Shutdown;
        let theirs = Event::new("tick", json!(null));
        for _ in 0..150 {
            local.refused("busy", &theirs, &error);
        }
        let mut own = Event::new(crate::system::REFUSED, json!(null));
        crate::event::stamp(
            &mut own,
            &crate::Id::from(crate::system::SYSTEM_SENDER),
            None,
        );
        for _ in 0..5 {
            local.refused("busy", &own, &error);
        }
        assert_eq!(local.tally.snapshot().refused, 155);
        let later = std::time::Instant::now() + std::time::Duration::from_secs(2);
        assert_eq!(
            local.refused_reports.admit(later),
            Some(150 - super::super::reports::PER_SECOND as u64)
        );
    }

    /// Routes hold their nodes, so a node that leaves the runtime must be
    /// let go of at once, not at the next broadcast (its core may hold a
    /// spool's open file).
    #[tokio::test(flavor = "current_thread")]
    async fn a_node_that_leaves_is_not_kept_by_broadcast_routes() {
        let happen = Happen::embedded();
        let sender = happen.node("sender").unwrap();
        let node = happen.node("leaving").unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        node.on("tick", move |_e: Event, _cx: Context| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(());
            }
        })
        .unwrap();
        sender.broadcast(Event::new("tick", json!(null))).unwrap();
        rx.recv().await.unwrap();
        let core = Arc::downgrade(node.core());
        node.shutdown().await;
        drop(node);
        // Flows that ran may still be ending; then nothing holds the node.
        assert!(
            crate::testkit::dropped_soon(&core).await,
            "the node's core was dropped"
        );
        // The sender's broadcasts go on (to nobody now).
        sender.broadcast(Event::new("tick", json!(null))).unwrap();
        happen.shutdown().await;
    }
}

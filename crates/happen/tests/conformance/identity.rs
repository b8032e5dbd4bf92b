//! Identity and access: acceptance controls (`acceptFrom`) on senders and
//! origins, for direct events and broadcasts, configured per node or for a
//! pattern of node ids.

use happen::prelude::*;
use happen::{AcceptRule, system};
use tokio::sync::mpsc;

use super::{Backend, assert_quiet, ev, recorder, recv, start};

fn is_not_accepted(result: happen::Result<Value>) -> bool {
    matches!(result, Err(HappenError::NotAccepted { .. }))
}

pub async fn accept_from_admits_matching_senders_and_refuses_others(backend: &dyn Backend) {
    let h = start(backend).await;
    let billing = h
        .node_with(
            "ac-billing",
            NodeConfig::new().accept_from([AcceptRule::node("ac-orders-*"), "ac-admin".into()]),
        )
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    billing.on("invoice", recorder(tx, json!("ok"))).unwrap();
    let eu = h.node("ac-orders-eu").unwrap();
    let admin = h.node("ac-admin").unwrap();
    let stranger = h.node("ac-stranger").unwrap();
    h.flush().await.unwrap();

    assert_eq!(
        eu.send(&billing, ev("invoice", json!(1))).await.unwrap(),
        "ok"
    );
    assert_eq!(
        admin
            .send("ac-billing", ev("invoice", json!(2)))
            .await
            .unwrap(),
        "ok"
    );
    // Refused with the reason, before any handler runs; by handle and by id.
    let refused = stranger.send(&billing, ev("invoice", json!(3))).await;
    let text = refused.as_ref().unwrap_err().to_string();
    assert!(is_not_accepted(refused), "{text}");
    assert!(
        text.contains("ac-stranger") && text.contains("node ac-orders-*"),
        "{text}"
    );
    assert!(is_not_accepted(
        stranger.send("ac-billing", ev("invoice", json!(4))).await
    ));
    // A tell in this process is refused at once.
    if let Err(error) = stranger.tell(&billing, ev("invoice", json!(5))) {
        assert!(matches!(error, HappenError::NotAccepted { .. }), "{error}");
    }
    assert_eq!(recv(&mut rx).await.payload(), &json!(1));
    assert_eq!(recv(&mut rx).await.payload(), &json!(2));
    assert_quiet(&mut rx, "a refused event reached the handler").await;
}

pub async fn accept_from_sources_follows_the_origin_down_the_chain(backend: &dyn Backend) {
    let h = start(backend).await;
    // The documentation's multi-tenant model: a node per tenant that only
    // takes events on behalf of that tenant.
    let acme = h
        .node_with(
            "ac-acme-data",
            NodeConfig::new().accept_from(["tenant:acme:*"]),
        )
        .unwrap();
    acme.on("process-data", |e: Event, _cx: Context| async move {
        json!(e.origin().source_id)
    })
    .unwrap();
    // A gateway that forwards what it is given: the forwarded event
    // inherits the origin of the event being handled.
    let gateway = h.node("ac-gateway").unwrap();
    gateway
        .on("forward", |e: Event, cx: Context| async move {
            cx.node()
                .send(
                    "ac-acme-data",
                    Event::new("process-data", e.payload().clone()),
                )
                .await
        })
        .unwrap();
    let portal = h.node("ac-portal").unwrap();
    h.flush().await.unwrap();

    let as_acme = ev("forward", json!(null)).with_source("tenant:acme:user-123", "user");
    assert_eq!(
        portal.send(&gateway, as_acme).await.unwrap(),
        "tenant:acme:user-123"
    );
    let as_globex = ev("forward", json!(null)).with_source("tenant:globex:user-9", "user");
    let refused = portal.send(&gateway, as_globex).await.unwrap_err();
    assert!(
        refused.to_string().contains("tenant:globex:user-9"),
        "{refused}"
    );
    let unsourced = portal.send(&acme, ev("process-data", json!(null))).await;
    assert!(is_not_accepted(unsourced));
}

pub async fn a_refused_broadcast_is_counted_and_reported(backend: &dyn Backend) {
    let h = start(backend).await;
    let open = h.node("ac-open").unwrap();
    let closed = h
        .node_with("ac-closed", NodeConfig::new().accept_from(["ac-trusted"]))
        .unwrap();
    let (open_tx, mut open_rx) = mpsc::unbounded_channel();
    let (closed_tx, mut closed_rx) = mpsc::unbounded_channel();
    open.on("news", recorder(open_tx, json!(null))).unwrap();
    closed.on("news", recorder(closed_tx, json!(null))).unwrap();
    let (refusals_tx, mut refusals) = mpsc::unbounded_channel();
    h.on(system::REFUSED, recorder(refusals_tx, json!(null)))
        .unwrap();
    let announcer = h.node("ac-announcer").unwrap();
    h.flush().await.unwrap();

    let before = h.counters().refused;
    // The broadcast itself is not an error: the other receivers take it.
    announcer.broadcast(ev("news", json!("hi"))).unwrap();
    assert_eq!(recv(&mut open_rx).await.payload(), "hi");
    let report = recv(&mut refusals).await;
    assert_eq!(report.payload()["node"], "ac-closed");
    assert!(
        report.payload()["reason"]
            .as_str()
            .unwrap()
            .contains("acceptFrom"),
        "{report:?}"
    );
    assert_eq!(h.counters().refused, before + 1);
    assert_quiet(&mut closed_rx, "the closed node took the broadcast").await;
}

pub async fn accept_from_for_a_pattern_of_nodes(backend: &dyn Backend) {
    let config = HappenConfig::default().for_nodes(
        "ac-tenant-a-*",
        NodeConfig::new().accept_from([AcceptRule::source("tenant:a:*")]),
    );
    let h = backend.start(config).await;
    let worker = h.node("ac-tenant-a-worker").unwrap();
    worker
        .on("job", |_e: Event, _cx: Context| async { json!("done") })
        .unwrap();
    // Its own rules replace the pattern's.
    let own = h
        .node_with(
            "ac-tenant-a-admin",
            NodeConfig::new().accept_from(["ac-root"]),
        )
        .unwrap();
    own.on("job", |_e: Event, _cx: Context| async { json!("done") })
        .unwrap();
    let client = h.node("ac-root").unwrap();
    h.flush().await.unwrap();

    let for_a = ev("job", json!(null)).with_source("tenant:a:u1", "user");
    assert_eq!(client.send(&worker, for_a).await.unwrap(), "done");
    assert!(is_not_accepted(
        client.send(&worker, ev("job", json!(null))).await
    ));
    assert_eq!(
        client.send(&own, ev("job", json!(null))).await.unwrap(),
        "done"
    );
}

pub async fn the_receiver_sees_the_hash_the_sender_made(backend: &dyn Backend) {
    let h = start(backend).await;
    let client = h.node("hs-client").unwrap();
    let server = h.node("hs-server").unwrap();
    server
        .on("check", |e: Event, _cx: Context| async move {
            // Over NATS the event carries its hash (checked on arrival);
            // in one process it is computed when asked for.
            if let Some(carried) = e.causal().hash {
                assert_eq!(carried, happen::EventHash::of(&e));
            }
            json!(e.hash().to_string())
        })
        .unwrap();
    h.flush().await.unwrap();
    let event = ev("check", json!({ "b": [1, 2.5, "x"], "a": null }))
        .with_source("user-1", "user")
        .with_context("tenant", json!("t1"));
    let sent = client.send(&server, event);
    let expected = sent.event().hash().to_string();
    assert_eq!(sent.await.unwrap(), json!(expected));
}

pub async fn signed_senders_are_verified_and_unsigned_refused_where_required(
    backend: &dyn Backend,
) {
    let h = start(backend).await;
    let key = happen::NodeIdentity::generate();
    let payments = h
        .node_with(
            "sg-payments",
            NodeConfig::new().identity(key.clone()).sign(true),
        )
        .unwrap();
    assert_eq!(payments.public_key(), key.public_key());
    let ledger = h
        .node_with("sg-ledger", NodeConfig::new().require_signed(true))
        .unwrap();
    ledger
        .on("entry", |e: Event, _cx: Context| async move {
            json!(e.context().integrity.is_some())
        })
        .unwrap();
    // A node that checks what is signed but takes unsigned events too.
    let audit = h.node("sg-audit").unwrap();
    audit
        .on("entry", |e: Event, _cx: Context| async move {
            json!(e.context().integrity.is_some())
        })
        .unwrap();
    let (refusals_tx, mut refusals) = mpsc::unbounded_channel();
    h.on(system::REFUSED, recorder(refusals_tx, json!(null)))
        .unwrap();
    let shop = h.node("sg-shop").unwrap();
    h.flush().await.unwrap();

    assert_eq!(
        payments.send(&ledger, ev("entry", json!(1))).await.unwrap(),
        true
    );
    assert_eq!(
        payments
            .send("sg-audit", ev("entry", json!(2)))
            .await
            .unwrap(),
        true
    );
    assert_eq!(
        shop.send(&audit, ev("entry", json!(3))).await.unwrap(),
        false
    );
    let refused = shop.send(&ledger, ev("entry", json!(4))).await.unwrap_err();
    assert!(
        matches!(refused, HappenError::Integrity { .. }),
        "{refused}"
    );
    assert!(refused.to_string().contains("not signed"), "{refused}");

    // Events a signing node's flow emits are signed too.
    payments
        .on("relay", |_e: Event, cx: Context| async move {
            cx.node()
                .send("sg-ledger", Event::new("entry", json!(5)))
                .await
        })
        .unwrap();
    h.flush().await.unwrap();
    assert_eq!(
        shop.send(&payments, ev("relay", json!(null)))
            .await
            .unwrap(),
        true
    );

    // An unsigned broadcast is refused by the ledger alone, and reported.
    let before = h.counters().refused;
    shop.broadcast(ev("entry", json!(6))).unwrap();
    let report = recv(&mut refusals).await;
    assert_eq!(report.payload()["node"], "sg-ledger");
    assert_eq!(h.counters().refused, before + 1);
}

/// A verifier that refuses everything and counts what it was asked.
struct Distrustful(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl happen::Verifier for Distrustful {
    fn verify(&self, _key: &str, _message: &[u8], _signature: &[u8]) -> Result<(), String> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Err("the hardware module says no".into())
    }
}

pub async fn a_custom_verifier_decides(backend: &dyn Backend) {
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = backend
        .start(HappenConfig::default().verifier(Distrustful(asked.clone())))
        .await;
    let signer = h
        .node_with("cv-signer", NodeConfig::new().sign(true))
        .unwrap();
    let receiver = h.node("cv-receiver").unwrap();
    receiver
        .on("note", |_e: Event, _cx: Context| async { json!("taken") })
        .unwrap();
    h.flush().await.unwrap();
    let refused = signer
        .send(&receiver, ev("note", json!(null)))
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("hardware module says no"),
        "{refused}"
    );
    assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 1);
}

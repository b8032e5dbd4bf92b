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

    // A group send is signed for each of its nodes: both take it.
    let strict = h
        .node_with("sg-strict", NodeConfig::new().require_signed(true))
        .unwrap();
    strict
        .on("entry", |e: Event, _cx: Context| async move {
            json!(e.context().integrity.is_some())
        })
        .unwrap();
    h.flush().await.unwrap();
    let results = payments
        .send_to_all([&ledger, &strict], ev("entry", json!(7)))
        .await;
    assert_eq!(results["sg-ledger"].as_ref().unwrap(), &json!(true));
    assert_eq!(results["sg-strict"].as_ref().unwrap(), &json!(true));
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

pub async fn a_zero_handler_takes_what_its_nodes_rules_accept(backend: &dyn Backend) {
    use happen::zero::ZeroNext;
    let h = start(backend).await;
    // Checked once, on the event as sent: its source and its signature,
    // which the zero form the handler reads does not carry.
    let billing = h
        .node_with(
            "zr-billing",
            NodeConfig::new().accept_from([AcceptRule::source("tenant:acme:*")]),
        )
        .unwrap();
    billing
        .zero("invoice", |_e, _cx| Ok(ZeroNext::Value(json!("invoiced"))))
        .unwrap();
    let ledger = h
        .node_with("zr-ledger", NodeConfig::new().require_signed(true))
        .unwrap();
    ledger
        .zero("entry", |_e, _cx| Ok(ZeroNext::Value(json!("booked"))))
        .unwrap();
    let portal = h.node("zr-portal").unwrap();
    let payments = h
        .node_with("zr-payments", NodeConfig::new().sign(true))
        .unwrap();
    h.flush().await.unwrap();

    let acme = ev("invoice", json!(1)).with_source("tenant:acme:user-7", "user");
    assert_eq!(portal.send(&billing, acme).await.unwrap(), "invoiced");
    let globex = ev("invoice", json!(2)).with_source("tenant:globex:user-1", "user");
    let refused = portal.send(&billing, globex).await.unwrap_err();
    assert!(
        matches!(&refused, HappenError::NotAccepted { source_id: Some(s), .. } if s == "tenant:globex:user-1"),
        "{refused}"
    );
    assert_eq!(
        payments.send(&ledger, ev("entry", json!(3))).await.unwrap(),
        "booked"
    );
    let unsigned = portal
        .send(&ledger, ev("entry", json!(4)))
        .await
        .unwrap_err();
    assert!(unsigned.to_string().contains("not signed"), "{unsigned}");
}

pub async fn each_member_of_a_batch_answers_for_its_own_origin(backend: &dyn Backend) {
    let h = start(backend).await;
    let billing = h
        .node_with(
            "bo-billing",
            NodeConfig::new().accept_from([AcceptRule::source("tenant:acme:*")]),
        )
        .unwrap();
    billing
        .on("invoice", |e: Event, _cx: Context| async move {
            json!(
                e.events()
                    .iter()
                    .map(|m| m.origin().source_id.clone())
                    .collect::<Vec<_>>()
            )
        })
        .unwrap();
    let portal = h.node("bo-portal").unwrap();
    h.flush().await.unwrap();
    let member = |n: i32, source: &str| ev("invoice", json!(n)).with_source(source, "user");

    // Members of the tenant, in a batch that claims nothing itself.
    let honest = Event::batch([member(1, "tenant:acme:u1"), member(2, "tenant:acme:u2")]).unwrap();
    assert_eq!(
        portal.send(&billing, honest).await.unwrap(),
        json!(["tenant:acme:u1", "tenant:acme:u2"])
    );
    // Another tenant's members in an envelope that claims the tenant.
    let smuggled = Event::batch([member(3, "tenant:globex:u1"), member(4, "tenant:acme:u2")])
        .unwrap()
        .with_source("tenant:acme:u1", "user");
    let refused = portal.send(&billing, smuggled).await.unwrap_err();
    assert!(
        matches!(&refused, HappenError::NotAccepted { source_id: Some(s), .. } if s == "tenant:globex:u1"),
        "{refused}"
    );
    // Members with no source of their own take the batch's.
    let plain = Event::batch([ev("invoice", json!(5)), ev("invoice", json!(6))])
        .unwrap()
        .with_source("tenant:acme:u3", "user");
    assert_eq!(
        portal.send(&billing, plain).await.unwrap(),
        json!(["tenant:acme:u3", "tenant:acme:u3"])
    );
}

pub async fn the_runtimes_own_reports_reach_nodes_that_require_signatures(backend: &dyn Backend) {
    // The recommended setting for a whole system: every node signs and
    // requires signatures. The runtime's reports are not signed (it has no
    // key); made in this process, they are its own, and still arrive.
    let h = backend
        .start(
            HappenConfig::default()
                .for_nodes("*", NodeConfig::new().sign(true).require_signed(true)),
        )
        .await;
    let (tx, mut reports) = mpsc::unbounded_channel();
    let monitor = h.node("rs-monitor").unwrap();
    monitor
        .on(system::REFUSED, recorder(tx, json!(null)))
        .unwrap();
    let guarded = h
        .node_with("rs-guarded", NodeConfig::new().accept_from(["rs-friend"]))
        .unwrap();
    guarded
        .on("ping", |_e: Event, _cx: Context| async {})
        .unwrap();
    let stranger = h.node("rs-stranger").unwrap();
    h.flush().await.unwrap();
    let before = h.counters().refused;
    stranger.broadcast(ev("ping", json!(null))).unwrap();
    let report = recv(&mut reports).await;
    assert_eq!(report.payload()["node"], "rs-guarded");
    assert_eq!(report.causal().sender, happen::SYSTEM_SENDER);
    assert_eq!(h.counters().refused, before + 1);
}

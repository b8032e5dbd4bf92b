//! The documentation's multi-tenant identity model: a node per tenant that
//! takes only events sent on behalf of that tenant (`acceptFrom` on the
//! origin's source id), and authorization inside a handler from the origin
//! of the event (a user may change only their own orders).
//!
//! ```text
//! cargo run --example multi_tenant
//! ```
//!
//! It prints what was accepted and refused, and exits non-zero if anything
//! went otherwise than the model says (scripts/test runs it).

use happen::prelude::*;

/// A node of `tenant` that takes only events whose origin is that
/// tenant's: `tenant:<id>:<user>`.
fn tenant_node(happen: &Happen, tenant: &str, id: &str) -> happen::Result<Node> {
    happen.node_with(
        id,
        NodeConfig::new().accept_from([happen::AcceptRule::source(format!("tenant:{tenant}:*"))]),
    )
}

/// An event on behalf of `user` of `tenant`.
fn on_behalf(tenant: &str, user: &str, event_type: &str, payload: Value) -> Event {
    Event::new(event_type, payload).with_source(format!("tenant:{tenant}:{user}"), "user")
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> happen::Result<()> {
    let happen = Happen::embedded();

    // Each tenant's data lives in a node of its own.
    for tenant in ["acme", "globex"] {
        let data = tenant_node(&happen, tenant, &format!("{tenant}-data"))?;
        data.state().set(|_| json!({ "orders": {} })).await?;
        data.on("place-order", |event: Event, cx: Context| async move {
            let owner = event.origin().source_id.clone().unwrap_or_default();
            let id = event.payload()["orderId"]
                .as_str()
                .unwrap_or("?")
                .to_owned();
            // An order id already placed (by anyone) is not placed again:
            // that would hand one user's order to another.
            let taken = cx
                .node()
                .state()
                .get_with(|s| !s["orders"][&id].is_null())
                .await?;
            if taken {
                return Ok::<_, HappenError>(
                    json!({ "success": false, "reason": "order id taken" }),
                );
            }
            let (key, record) = (id.clone(), json!({ "owner": owner, "status": "placed" }));
            cx.node()
                .state()
                .set(move |mut s| {
                    if s["orders"][&key].is_null() {
                        s["orders"][&key] = record.clone();
                    }
                    s
                })
                .await?;
            Ok(json!({ "placed": id }))
        })?;
        // Authorization in the flow: only the user who placed an order
        // may cancel it.
        data.on("cancel-order", |event: Event, cx: Context| async move {
            let caller = event.origin().source_id.clone().unwrap_or_default();
            let id = event.payload()["orderId"]
                .as_str()
                .unwrap_or("?")
                .to_owned();
            let owner = cx
                .node()
                .state()
                .get_with(|s| s["orders"][&id]["owner"].clone())
                .await?;
            if owner != json!(caller) {
                return Ok::<_, HappenError>(json!({ "success": false, "reason": "unauthorized" }));
            }
            let key = id.clone();
            cx.node()
                .state()
                .set(move |mut s| {
                    s["orders"][&key]["status"] = json!("cancelled");
                    s
                })
                .await?;
            Ok(json!({ "success": true, "cancelled": id }))
        })?;
    }

    // One gateway serves every tenant's users: the origin it is given
    // flows with the events it sends.
    let gateway = happen.node("gateway")?;

    let placed = gateway
        .send(
            "acme-data",
            on_behalf("acme", "ada", "place-order", json!({ "orderId": "A-1" })),
        )
        .await?;
    println!("acme user ada places A-1 at acme: {placed}");
    assert_eq!(placed, json!({ "placed": "A-1" }));

    // Another user of the tenant cannot take the order over by placing it
    // again (and then cancel it as its owner).
    let again = gateway
        .send(
            "acme-data",
            on_behalf("acme", "bob", "place-order", json!({ "orderId": "A-1" })),
        )
        .await?;
    println!("acme user bob places A-1 again: {again}");
    assert_eq!(again["success"], false, "{again}");

    let refused = gateway
        .send(
            "acme-data",
            on_behalf("globex", "gus", "place-order", json!({ "orderId": "G-1" })),
        )
        .await;
    println!(
        "globex user gus places an order at acme: {}",
        refused
            .as_ref()
            .map_or_else(|e| e.to_string(), |v| v.to_string())
    );
    assert!(matches!(refused, Err(HappenError::NotAccepted { .. })));

    let other_user = gateway
        .send(
            "acme-data",
            on_behalf("acme", "bob", "cancel-order", json!({ "orderId": "A-1" })),
        )
        .await?;
    println!("acme user bob cancels ada's A-1: {other_user}");
    assert_eq!(other_user["reason"], "unauthorized");

    let own = gateway
        .send(
            "acme-data",
            on_behalf("acme", "ada", "cancel-order", json!({ "orderId": "A-1" })),
        )
        .await?;
    println!("acme user ada cancels her A-1: {own}");
    assert_eq!(own["success"], true);

    let globex = gateway
        .send(
            "globex-data",
            on_behalf("globex", "gus", "place-order", json!({ "orderId": "G-1" })),
        )
        .await?;
    println!("globex user gus places G-1 at globex: {globex}");
    assert_eq!(globex, json!({ "placed": "G-1" }));

    let acme = happen.state_of("acme-data")?.get().await?;
    let globex = happen.state_of("globex-data")?.get().await?;
    println!(
        "acme orders: {}\nglobex orders: {}",
        acme["orders"], globex["orders"]
    );
    assert_eq!(acme["orders"]["A-1"]["status"], "cancelled");
    assert!(
        acme["orders"].get("G-1").is_none(),
        "globex's order never reached acme"
    );
    println!("the tenant model held: 1 cross-tenant event refused, 1 unauthorized cancel answered");
    happen.shutdown().await;
    Ok(())
}

/// `cargo test` runs the example as `cargo run --example` does: its own
/// assertions decide.
#[cfg(test)]
mod tests {
    #[test]
    fn the_example_runs() {
        super::main().expect("the example ends without an error");
    }
}

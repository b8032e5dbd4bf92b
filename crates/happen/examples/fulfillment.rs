//! The documentation's fulfillment system: four services own their state
//! (orders, inventory, customers, shipping rates); a fulfillment node reads
//! all four through views in one collect, builds a fulfillment plan in its
//! own state only when the order can be met, and continues with the
//! shipment step. Nothing is asked by request: the views read the owners'
//! state, which only the owners change.
//!
//! ```text
//! cargo run --example fulfillment
//! cargo run --example fulfillment -- --nats nats://127.0.0.1:4222
//! ```
//!
//! It exits non-zero if an order is fulfilled that cannot be, or one that
//! can is not (scripts/test runs it).

use happen::prelude::*;

/// Fills the owners' state.
async fn seed(happen: &Happen) -> happen::Result<()> {
    let put = |id: &str, value: Value| {
        let node = happen.node(id);
        async move { node?.state().set(move |_| value.clone()).await.map(drop) }
    };
    put(
        "orders",
        json!({
            "ORD-1": { "customerId": "c1", "items": [{ "productId": "lamp", "quantity": 2 }] },
            "ORD-2": { "customerId": "c2", "items": [{ "productId": "desk", "quantity": 1 }] },
            "ORD-3": { "customerId": "c9", "items": [{ "productId": "lamp", "quantity": 1 }] },
        }),
    )
    .await?;
    put(
        "inventory",
        json!({ "products": { "lamp": { "stock": 5 }, "desk": { "stock": 0 } } }),
    )
    .await?;
    put(
        "customers",
        json!({ "customers": {
            "c1": { "name": "Ann", "region": "eu", "address": "1 Rue Haute" },
            "c2": { "name": "Bo", "region": "us", "address": "2 Main St" },
        } }),
    )
    .await?;
    put("shipping", json!({ "rates": { "eu": { "standard": { "method": "post", "cost": 6.5 } }, "us": { "standard": { "method": "ground", "cost": 8.0 } } } })).await?;
    Ok(())
}

/// The fulfillment plan of `order_id` from the collected views, or why
/// there can be none.
fn plan(
    order_id: &str,
    data: &std::collections::HashMap<String, Option<Value>>,
) -> Result<Value, String> {
    let order = data["orders"]
        .clone()
        .filter(|o| !o.is_null())
        .ok_or("no such order")?;
    let customer_id = order["customerId"].as_str().unwrap_or("");
    let customer = data["customers"]
        .as_ref()
        .map(|c| c["customers"][customer_id].clone())
        .filter(|c| !c.is_null())
        .ok_or(format!("customer {customer_id} not found"))?;
    let products = data["inventory"].clone().unwrap_or_default();
    let items = order["items"].as_array().cloned().unwrap_or_default();
    for item in &items {
        let product = item["productId"].as_str().unwrap_or("");
        let stock = products[product]["stock"].as_u64().unwrap_or(0);
        if stock < item["quantity"].as_u64().unwrap_or(1) {
            return Err(format!("{product} is out of stock"));
        }
    }
    let rate = data["shipping"]
        .as_ref()
        .map(|r| r[customer["region"].as_str().unwrap_or("")]["standard"].clone())
        .unwrap_or_default();
    Ok(json!({
        "orderId": order_id,
        "items": items,
        "customer": { "id": customer_id, "name": customer["name"], "address": customer["address"] },
        "shippingMethod": rate["method"],
        "shippingCost": rate["cost"],
        "status": "ready",
    }))
}

async fn fulfill_order(event: Event, cx: Context) -> happen::Result<Flow> {
    let order_id = event.payload()["orderId"].as_str().unwrap_or("").to_owned();
    let id = order_id.clone();
    // One read of the four owners' state, each projected to what is needed.
    let data = cx
        .node()
        .collect()
        .from("orders", move |s| s[&id].clone())
        .from("inventory", |s| s["products"].clone())
        .from("customers", |s| s.clone())
        .from("shipping", |s| s["rates"].clone())
        .await?;
    match plan(&order_id, &data) {
        Err(reason) => Ok(Flow::done(
            json!({ "success": false, "orderId": order_id, "reason": reason }),
        )),
        Ok(plan) => {
            let key = order_id.clone();
            cx.node()
                .state()
                .set(move |mut s| {
                    s["fulfillments"][&key] = plan.clone();
                    s
                })
                .await?;
            Ok(Flow::next(initiate_shipment))
        }
    }
}

async fn initiate_shipment(event: Event, cx: Context) -> happen::Result<Value> {
    let order_id = event.payload()["orderId"].as_str().unwrap_or("").to_owned();
    let key = order_id.clone();
    let plan = cx
        .node()
        .state()
        .set(move |mut s| {
            s["fulfillments"][&key]["status"] = json!("shipping");
            s
        })
        .await?;
    Ok(json!({ "success": true, "orderId": order_id, "plan": plan["fulfillments"][&order_id] }))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> happen::Result<()> {
    let url = std::env::args().skip_while(|a| a != "--nats").nth(1);
    let happen = Happen::start(url.as_deref(), HappenConfig::default()).await?;
    seed(&happen).await?;
    let fulfillment = happen.node("fulfillment")?;
    fulfillment.on("fulfill-order", fulfill_order)?;
    happen.flush().await?;

    let desk = happen.node("warehouse-desk")?;
    let mut answers = Vec::new();
    for order in ["ORD-1", "ORD-2", "ORD-3", "ORD-404"] {
        let answer = desk
            .send(
                &fulfillment,
                Event::new("fulfill-order", json!({ "orderId": order })),
            )
            .await?;
        println!("{order}: {answer}");
        answers.push(answer);
    }
    let state = happen.state_of("fulfillment")?.get().await?;
    happen.shutdown().await;

    assert_eq!(answers[0]["success"], true);
    assert_eq!(answers[0]["plan"]["shippingCost"], 6.5);
    assert_eq!(answers[0]["plan"]["customer"]["name"], "Ann");
    assert_eq!(answers[1]["reason"], "desk is out of stock");
    assert_eq!(answers[2]["reason"], "customer c9 not found");
    assert_eq!(answers[3]["reason"], "no such order");
    // Only the order that could be met has a plan, and it is shipping.
    let plans = state["fulfillments"]
        .as_object()
        .map(|p| p.keys().cloned().collect::<Vec<_>>());
    assert_eq!(plans, Some(vec!["ORD-1".to_owned()]));
    assert_eq!(state["fulfillments"]["ORD-1"]["status"], "shipping");
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

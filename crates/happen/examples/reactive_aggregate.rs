//! A reactive aggregate, from the documentation's Advanced Patterns chapter:
//! a customer aggregate node keeps its customers' state consistent by
//! reacting to domain events (registrations, orders), decides on its own
//! rules (the fifth order makes a customer premium, once) and announces
//! what it decided as an event. Each change is one atomic update of the
//! node's state, so the rule sees the order it reacts to.
//!
//! ```text
//! cargo run --example reactive_aggregate
//! ```
//!
//! It exits non-zero if the aggregate's state or its announcements differ
//! from what its rules say (scripts/test runs it).

use std::sync::{Arc, Mutex};

use happen::prelude::*;

/// Orders that make a customer premium.
const PREMIUM_AFTER: usize = 5;

fn start_aggregate(happen: &Happen) -> happen::Result<Node> {
    let aggregate = happen.node("customer-aggregate")?;
    aggregate.on("customer-registered", |e: Event, cx: Context| async move {
        let customer = e.payload().clone();
        cx.node()
            .state()
            .set(move |mut s| {
                let id = customer["customerId"].as_str().unwrap_or("?").to_owned();
                s["customers"][&id] = json!({
                    "name": customer["name"], "status": "active", "orders": [], "totalSpent": 0
                });
                s
            })
            .await?;
        Ok::<_, HappenError>(json!({ "updated": true }))
    })?;
    aggregate.on("order-created", |e: Event, cx: Context| async move {
        let order = e.payload().clone();
        let id = order["customerId"].as_str().unwrap_or("?").to_owned();
        let mut upgraded = false;
        let key = id.clone();
        let state = cx
            .node()
            .state()
            .set(|mut s| {
                upgraded = false;
                let Some(customer) = s["customers"].get_mut(&key) else {
                    // Unknown customer: the aggregate does not change.
                    return s;
                };
                if let Some(orders) = customer["orders"].as_array_mut() {
                    orders.push(order["orderId"].clone());
                }
                let spent = customer["totalSpent"].as_f64().unwrap_or(0.0) + order["amount"].as_f64().unwrap_or(0.0);
                customer["totalSpent"] = json!(spent);
                let orders = customer["orders"].as_array().map_or(0, Vec::len);
                if orders >= PREMIUM_AFTER && customer["status"] != "premium" {
                    customer["status"] = json!("premium");
                    upgraded = true;
                }
                s
            })
            .await?;
        let Some(customer) = state["customers"].get(&id) else {
            return Ok::<_, HappenError>(json!({ "updated": false, "reason": "unknown customer" }));
        };
        if upgraded {
            cx.node().broadcast(Event::new(
                "customer-premium-status-achieved",
                json!({ "customerId": id, "ordersCount": customer["orders"].as_array().map_or(0, Vec::len), "totalSpent": customer["totalSpent"] }),
            ))?;
        }
        Ok(json!({ "updated": true }))
    })?;
    Ok(aggregate)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> happen::Result<()> {
    let happen = Happen::embedded();
    let aggregate = start_aggregate(&happen)?;
    let announced = Arc::new(Mutex::new(Vec::new()));
    let a = announced.clone();
    let marketing = happen.node("marketing")?;
    marketing.on(
        "customer-premium-status-achieved",
        move |e: Event, _cx: Context| {
            a.lock().unwrap().push(e.payload().clone());
            async {}
        },
    )?;

    let shop = happen.node("shop")?;
    for (id, name) in [("c1", "Ann"), ("c2", "Bo")] {
        shop.send(
            &aggregate,
            Event::new(
                "customer-registered",
                json!({ "customerId": id, "name": name }),
            ),
        )
        .await?;
    }
    // Ann orders six times, Bo twice, and an unknown customer once.
    let mut n = 0;
    for (customer, times) in [("c1", 6), ("c2", 2), ("c404", 1)] {
        for _ in 0..times {
            n += 1;
            shop.send(
                &aggregate,
                Event::new(
                    "order-created",
                    json!({ "orderId": format!("o{n}"), "customerId": customer, "amount": 10.0 }),
                ),
            )
            .await?;
        }
    }
    marketing.shutdown().await;
    let state = happen.state_of("customer-aggregate")?.get().await?;
    happen.shutdown().await;

    println!("customers: {}", state["customers"]);
    println!("announced: {:?}", announced.lock().unwrap());
    assert_eq!(state["customers"]["c1"]["status"], "premium");
    assert_eq!(state["customers"]["c1"]["totalSpent"], 60.0);
    assert_eq!(state["customers"]["c2"]["status"], "active");
    assert!(
        state["customers"].get("c404").is_none(),
        "unknown customers are not created by orders"
    );
    // Announced once, at the fifth order.
    assert_eq!(
        *announced.lock().unwrap(),
        [json!({ "customerId": "c1", "ordersCount": 5, "totalSpent": 50.0 })]
    );
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

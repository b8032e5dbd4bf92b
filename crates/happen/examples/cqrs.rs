//! The documentation's CQRS: a command node changes the orders (its state is
//! the write model) and broadcasts a domain event for each change; a query
//! node keeps a read model built from those events (orders by status), and
//! answers queries from it. A report query also reads the command node's
//! state directly through a state view, to show the two agreeing.
//!
//! ```text
//! cargo run --example cqrs                              # embedded
//! cargo run --example cqrs -- --nats nats://127.0.0.1:4222
//! ```
//!
//! It exits non-zero if a query answers otherwise than the commands imply
//! (scripts/test runs it; `tests/examples.rs` runs it on both runtimes).

use happen::prelude::*;

/// What the queries answered.
#[derive(Debug)]
pub struct CqrsRun {
    /// `get-order` for the first order, after it shipped.
    pub first: Value,
    /// `orders-by-status`.
    pub by_status: Value,
    /// A command that the write model refused.
    pub refused: Value,
    /// `report`: the read model's count beside the write model's.
    pub report: Value,
}

fn start_commands(happen: &Happen) -> happen::Result<()> {
    let commands = happen.node("order-commands")?;
    commands.on("create-order", |e: Event, cx: Context| async move {
        let items = e.payload()["items"].as_array().map_or(0, Vec::len);
        if items == 0 {
            return Ok(json!({ "success": false, "reason": "an order needs items" }));
        }
        // The write model: every order, by id.
        let state = cx
            .node()
            .state()
            .set(|mut s| {
                let n = s["next"].as_u64().unwrap_or(1);
                s["next"] = json!(n + 1);
                s["orders"][format!("ORD-{n}")] = json!({ "status": "pending" });
                s
            })
            .await?;
        let id = format!("ORD-{}", state["next"].as_u64().unwrap_or(2) - 1);
        cx.node().broadcast(Event::new(
            "domain-order-created",
            json!({ "orderId": id, "items": items, "customer": e.payload()["customer"] }),
        ))?;
        Ok::<_, HappenError>(json!({ "success": true, "orderId": id }))
    })?;
    commands.on("ship-order", |e: Event, cx: Context| async move {
        let id = e.payload()["orderId"].as_str().unwrap_or("").to_owned();
        let known = cx
            .node()
            .state()
            .get_with(|s| s["orders"].get(&id).is_some())
            .await?;
        if !known {
            return Ok(json!({ "success": false, "reason": format!("no order {id}") }));
        }
        let key = id.clone();
        cx.node()
            .state()
            .set(move |mut s| {
                s["orders"][&key]["status"] = json!("shipped");
                s
            })
            .await?;
        cx.node()
            .broadcast(Event::new("domain-order-shipped", json!({ "orderId": id })))?;
        Ok::<_, HappenError>(json!({ "success": true }))
    })?;
    Ok(())
}

fn start_queries(happen: &Happen) -> happen::Result<()> {
    // One flow at a time: the read model applies the domain events in the
    // order they arrive. With flows side by side, an order's "shipped" could
    // be applied before its "created", which would then write "pending"
    // over it for good (a review saw it over NATS under load).
    let queries = happen.node_with("order-queries", NodeConfig::new().max_concurrent(1))?;
    // The read model follows the domain events.
    queries.on("domain-order-created", |e: Event, cx: Context| async move {
        let order = e.payload().clone();
        cx.node()
            .state()
            .set(move |mut s| {
                let id = order["orderId"].as_str().unwrap_or("?").to_owned();
                let mut view = order.clone();
                view["status"] = json!("pending");
                s["orders"][&id] = view;
                s
            })
            .await?;
        Ok::<_, HappenError>(())
    })?;
    queries.on("domain-order-shipped", |e: Event, cx: Context| async move {
        let id = e.payload()["orderId"].as_str().unwrap_or("?").to_owned();
        cx.node()
            .state()
            .set(move |mut s| {
                s["orders"][&id]["status"] = json!("shipped");
                s
            })
            .await?;
        Ok::<_, HappenError>(())
    })?;
    // Queries answer from the read model only.
    queries.on("get-order", |e: Event, cx: Context| async move {
        let id = e.payload()["orderId"].as_str().unwrap_or("").to_owned();
        let order = cx
            .node()
            .state()
            .get_with(move |s| s["orders"].get(&id).cloned())
            .await?;
        Ok::<_, HappenError>(order.unwrap_or(Value::Null))
    })?;
    queries.on("orders-by-status", |_e: Event, cx: Context| async move {
        let counts = cx
            .node()
            .state()
            .get_with(|s| {
                let mut counts = serde_json::Map::new();
                for order in s["orders"].as_object().into_iter().flat_map(|o| o.values()) {
                    let status = order["status"].as_str().unwrap_or("?").to_owned();
                    let n = counts.get(&status).and_then(Value::as_u64).unwrap_or(0);
                    counts.insert(status, json!(n + 1));
                }
                Value::Object(counts)
            })
            .await?;
        Ok::<_, HappenError>(counts)
    })?;
    // The write model, read through a view, beside the read model.
    queries.on("report", |_e: Event, cx: Context| async move {
        let written = cx
            .node()
            .view("order-commands")
            .get_with(|s| s["orders"].as_object().map_or(0, |o| o.len()))
            .await?
            .unwrap_or(0);
        let read = cx
            .node()
            .state()
            .get_with(|s| s["orders"].as_object().map_or(0, |o| o.len()))
            .await?;
        Ok::<_, HappenError>(json!({ "writeModel": written, "readModel": read }))
    })?;
    Ok(())
}

/// Three orders, one shipped, one refused command; then the queries.
pub async fn run(happen: &Happen) -> happen::Result<CqrsRun> {
    start_commands(happen)?;
    start_queries(happen)?;
    // From empty models, also on a server that kept an earlier run's state.
    for node in ["order-commands", "order-queries"] {
        happen.state_of(node)?.set(|_| Value::Null).await?;
    }
    happen.flush().await?;
    let client = happen.node("cqrs-client")?;
    let ask = |event_type: &str, payload: Value| {
        client
            .send("order-commands", Event::new(event_type, payload))
            .response()
    };
    let mut ids = Vec::new();
    for customer in ["ann", "bo", "cy"] {
        let created = ask(
            "create-order",
            json!({ "customer": customer, "items": [1, 2] }),
        )
        .await?;
        ids.push(created["orderId"].as_str().unwrap_or("").to_owned());
    }
    ask("ship-order", json!({ "orderId": ids[0] })).await?;
    let refused = ask("create-order", json!({ "customer": "dee", "items": [] })).await?;

    // The read model is updated by events: wait until it has caught up.
    let query = |event_type: &str, payload: Value| {
        client
            .send("order-queries", Event::new(event_type, payload))
            .response()
    };
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let by_status = loop {
        let counts = query("orders-by-status", json!(null)).await?;
        if counts == json!({ "pending": 2, "shipped": 1 }) || tokio::time::Instant::now() > deadline
        {
            break counts;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    let first = query("get-order", json!({ "orderId": ids[0] })).await?;
    let report = query("report", json!(null)).await?;
    Ok(CqrsRun {
        first,
        by_status,
        refused,
        report,
    })
}

/// Asserts what the commands imply for the queries.
pub fn check(run: &CqrsRun) {
    assert_eq!(
        run.by_status,
        json!({ "pending": 2, "shipped": 1 }),
        "{run:?}"
    );
    assert_eq!(run.first["status"], "shipped", "{run:?}");
    assert_eq!(run.first["customer"], "ann", "{run:?}");
    assert_eq!(run.refused["success"], false, "{run:?}");
    assert_eq!(
        run.report,
        json!({ "writeModel": 3, "readModel": 3 }),
        "{run:?}"
    );
}

#[allow(dead_code)]
#[tokio::main(flavor = "current_thread")]
async fn main() -> happen::Result<()> {
    let url = std::env::args().skip_while(|a| a != "--nats").nth(1);
    let happen = Happen::start(url.as_deref(), HappenConfig::default()).await?;
    let run = run(&happen).await?;
    println!("orders by status: {}", run.by_status);
    println!("first order:      {}", run.first);
    println!("refused command:  {}", run.refused);
    println!("report:           {}", run.report);
    check(&run);
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

//! The order system of the Happen documentation, in one process.
//!
//! A storefront asks the order service to create an order. The order service
//! runs a flow of four steps (validate → inventory → payment → shipment),
//! asking other nodes along the way with send/response, then broadcasts
//! `order.completed`, which the notification service picks up. At the end the
//! demo prints the result and the causal chain of every event: each one knows
//! what caused it and which transaction it belongs to, with no bookkeeping in
//! the handlers.
//!
//! Run it with `cargo run --example order_processing`.

use std::sync::{Arc, Mutex};

use happen::prelude::*;
use tokio::sync::oneshot;

/// Every event seen by any node, in arrival order, for the causal report.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<Event>>>);

impl Log {
    fn record(&self, event: &Event) {
        self.0.lock().unwrap().push(event.clone());
    }
}

/// Sends `event` to `target` from the running flow's node, waits for the
/// answer and logs the response event.
async fn ask(cx: &Context, target: &str, event: Event) -> happen::Result<Value> {
    let response = cx.node().send(target, event).response_event().await?;
    cx.typed::<Log>().expect("log in context").record(&response);
    Ok(response.payload().clone())
}

async fn validate_order(event: Event, cx: Context) -> Flow {
    let order = event.payload();
    let items = order["items"].as_array().cloned().unwrap_or_default();
    if items.is_empty() || order["customer"]["id"].is_null() {
        return Flow::done(json!({ "success": false, "reason": "validation-failed" }));
    }
    let order_id = format!("ORD-{}", &event.id()[..8]);
    cx.set("orderId", order_id);
    cx.set("items", items);
    Flow::next(check_inventory)
}

async fn check_inventory(_event: Event, cx: Context) -> happen::Result<Flow> {
    let stock = ask(
        &cx,
        "inventory-service",
        Event::new("check-inventory", json!({ "items": cx.get("items") })),
    )
    .await?;
    if stock["available"] != json!(true) {
        return Ok(Flow::done(
            json!({ "success": false, "reason": "inventory-shortage" }),
        ));
    }
    cx.set("reservation", stock["reservationId"].clone());
    Ok(Flow::next(process_payment))
}

async fn process_payment(event: Event, cx: Context) -> happen::Result<Flow> {
    let payment = ask(
        &cx,
        "payment-service",
        Event::new(
            "process-payment",
            json!({ "orderId": cx.get("orderId"), "amount": event.payload()["total"] }),
        ),
    )
    .await?;
    if payment["status"] != "approved" {
        return Ok(Flow::done(
            json!({ "success": false, "reason": "payment-failed" }),
        ));
    }
    cx.set("transactionId", payment["transactionId"].clone());
    Ok(Flow::next(create_shipment))
}

async fn create_shipment(event: Event, cx: Context) -> happen::Result<Value> {
    let shipment = ask(
        &cx,
        "shipping-service",
        Event::new("create-shipment", json!({ "orderId": cx.get("orderId"), "address": event.payload()["customer"]["address"] })),
    )
    .await?;
    let result = json!({
        "success": true,
        "orderId": cx.get("orderId"),
        "transactionId": cx.get("transactionId"),
        "trackingNumber": shipment["trackingNumber"],
    });
    // Tell whoever cares; the notification service is listening.
    cx.node()
        .broadcast(Event::new("order.completed", result.clone()))?;
    Ok(result)
}

/// Runs the demo and prints its report.
pub async fn run() -> happen::Result<()> {
    let happen = Happen::embedded();
    let log = Log::default();

    let storefront = happen.node("storefront")?;
    let orders = happen.node("order-service")?;
    let inventory = happen.node("inventory-service")?;
    let payments = happen.node("payment-service")?;
    let shipping = happen.node("shipping-service")?;
    let notifications = happen.node("notification-service")?;

    let l = log.clone();
    orders.on("create-order", move |event: Event, cx: Context| {
        l.record(&event);
        cx.insert(l.clone());
        validate_order(event, cx)
    })?;

    let l = log.clone();
    inventory.on("check-inventory", move |event: Event, _cx: Context| {
        l.record(&event);
        async move {
            let count = event.payload()["items"].as_array().map_or(0, Vec::len);
            json!({ "available": true, "reservationId": format!("RES-{count}") })
        }
    })?;

    let l = log.clone();
    payments.on("process-payment", move |event: Event, cx: Context| {
        l.record(&event);
        async move {
            // A handler knows who asks and that an answer is expected.
            debug_assert!(cx.expects_response());
            let amount = event.payload()["amount"].as_f64().unwrap_or(0.0);
            let status = if amount > 0.0 { "approved" } else { "declined" };
            json!({ "status": status, "transactionId": "TXN-5521", "amount": amount })
        }
    })?;

    let l = log.clone();
    shipping.on("create-shipment", move |event: Event, _cx: Context| {
        l.record(&event);
        async move { json!({ "trackingNumber": "TRK-456" }) }
    })?;

    let (done_tx, done_rx) = oneshot::channel();
    let done_tx = Arc::new(Mutex::new(Some(done_tx)));
    let l = log.clone();
    notifications.on("order.*", move |event: Event, _cx: Context| {
        l.record(&event);
        let done = done_tx.lock().unwrap().take();
        async move {
            if let Some(done) = done {
                let _ = done.send(());
            }
        }
    })?;

    let order = Event::new(
        "create-order",
        json!({
            "customer": { "id": "cust-123", "name": "Jane Doe", "address": { "street": "123 Main St", "city": "Anytown", "zip": "12345" } },
            "items": [ { "id": "prod-a1", "quantity": 2 }, { "id": "prod-b7", "quantity": 1 } ],
            "total": 129.99
        }),
    );
    let response = storefront.send(&orders, order).response_event().await?;
    log.record(&response);
    done_rx
        .await
        .expect("the notification service saw order.completed");
    happen.shutdown().await;

    println!(
        "Result:\n{}\n",
        serde_json::to_string_pretty(response.payload()).unwrap_or_default()
    );
    println!(
        "Causal chain of every event (correlationId {}):\n",
        response.causal().correlation_id
    );
    println!(
        "{:<18} {:<22} {:<38} {:<38} path",
        "type", "sender", "id", "causationId"
    );
    let mut events = log.0.lock().unwrap().clone();
    events.sort_by(|a, b| a.id().cmp(b.id()));
    for e in &events {
        let c = e.causal();
        println!(
            "{:<18} {:<22} {:<38} {:<38} {}",
            e.event_type(),
            c.sender,
            c.id,
            c.causation_id.as_deref().unwrap_or("(root)"),
            c.path.join(" > ")
        );
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> happen::Result<()> {
    run().await
}

//! The documentation's saga: an order coordinator runs local steps on other
//! nodes (reserve inventory, take payment, create the shipment), and when a
//! step fails it undoes the completed ones in reverse order (refund, then
//! release), so that the system ends as it began. The compensations are
//! events like any other: the recorded causal web shows them as effects of
//! the failed order, next to the steps they undo.
//!
//! ```text
//! cargo run --example saga                              # embedded
//! cargo run --example saga -- --nats nats://127.0.0.1:4222
//! ```
//!
//! It prints both orders' transactions as trees and exits non-zero if the
//! saga did not end as it should (scripts/test runs it; the tests in
//! `tests/examples.rs` run it on both runtimes).

use happen::prelude::*;
use happen::trace::Recorder;

/// What the run showed: for the checks of the example and its tests.
#[derive(Debug)]
pub struct SagaRun {
    /// The answer to the order that went through.
    pub completed: Value,
    /// The answer to the order whose shipment failed.
    pub compensated: Value,
    /// The answer to an order for more than the stock holds.
    pub refused: Value,
    /// Event types the failed order caused, in causal order.
    pub failed_effects: Vec<String>,
    /// Stock and money at the end (as at the start: everything undone).
    pub stock: Value,
    /// Payments still held at the end.
    pub payments: Value,
}

/// Why a step of the saga did not complete.
#[derive(Debug, thiserror::Error)]
enum StepFailed {
    /// The service answered that it could not do it.
    #[error("{step} refused: {reason}")]
    Refused { step: String, reason: String },
    /// The request itself failed (no such node, timeout, ...).
    #[error(transparent)]
    Happen(#[from] HappenError),
}

/// One step of the saga: asks `target` and fails the saga unless the
/// answer says `success`.
async fn step(
    cx: &Context,
    target: &str,
    event_type: &str,
    payload: Value,
) -> Result<Value, StepFailed> {
    let answer = cx
        .node()
        .send(target, Event::new(event_type, payload))
        .response()
        .await?;
    if answer["success"] != json!(true) {
        return Err(StepFailed::Refused {
            step: event_type.to_owned(),
            reason: answer["reason"]
                .as_str()
                .unwrap_or("no reason given")
                .to_owned(),
        });
    }
    Ok(answer)
}

/// The coordinator's flow: the steps, and on failure the compensations of
/// the steps already done, newest first.
async fn process_order(event: Event, cx: Context) -> happen::Result<Value> {
    let order = event.payload().clone();
    // What has been done, so that it can be undone.
    let mut done: Vec<(&str, &str, Value)> = Vec::new();
    let outcome: Result<Value, StepFailed> = async {
        step(&cx, "inventory", "reserve-inventory", order.clone()).await?;
        done.push(("inventory", "release-inventory", order.clone()));
        let payment = step(&cx, "payment", "process-payment", order.clone()).await?;
        done.push(("payment", "refund-payment", json!({ "paymentId": payment["paymentId"] })));
        let shipment = step(&cx, "shipping", "create-shipment", order.clone()).await?;
        Ok(json!({ "success": true, "orderId": order["orderId"], "shipmentId": shipment["shipmentId"] }))
    }
    .await;
    match outcome {
        Ok(result) => {
            cx.node()
                .broadcast(Event::new("order-processed", result.clone()))?;
            Ok(result)
        }
        Err(error) => {
            // Every compensation is tried, newest first; one that fails
            // does not keep the others from running, and is reported.
            let mut reason = error.to_string();
            for (target, undo, payload) in done.into_iter().rev() {
                if let Err(failed) = cx
                    .node()
                    .send(target, Event::new(undo, payload))
                    .response()
                    .await
                {
                    reason.push_str(&format!("; {undo} failed too: {failed}"));
                }
            }
            cx.node().broadcast(Event::new(
                "order-processing-failed",
                json!({ "orderId": order["orderId"], "reason": reason }),
            ))?;
            Ok(json!({ "success": false, "orderId": order["orderId"], "reason": reason }))
        }
    }
}

/// Registers the services and the coordinator in `happen`.
fn start(happen: &Happen) -> happen::Result<Node> {
    let inventory = happen.node("inventory")?;
    inventory.on("reserve-inventory", |e: Event, cx: Context| async move {
        let qty = e.payload()["quantity"].as_i64().unwrap_or(0);
        // Taken only when there is enough: a refused reservation changes
        // nothing, so there is nothing to compensate. (The decision of the
        // transform's last run is the one saved.)
        let reserved = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let decided = reserved.clone();
        cx.node()
            .state()
            .set(move |s| {
                let have = s.as_i64().unwrap_or(10);
                let enough = have >= qty;
                decided.store(enough, std::sync::atomic::Ordering::SeqCst);
                json!(if enough { have - qty } else { have })
            })
            .await?;
        let success = reserved.load(std::sync::atomic::Ordering::SeqCst);
        Ok::<_, HappenError>(json!({ "success": success }))
    })?;
    inventory.on("release-inventory", |e: Event, cx: Context| async move {
        let qty = e.payload()["quantity"].as_i64().unwrap_or(0);
        cx.node()
            .state()
            .set(move |s| json!(s.as_i64().unwrap_or(10) + qty))
            .await?;
        Ok::<_, HappenError>(json!({ "success": true }))
    })?;
    let payment = happen.node("payment")?;
    payment.on("process-payment", |e: Event, cx: Context| async move {
        let id = format!("PAY-{}", e.payload()["orderId"].as_str().unwrap_or("?"));
        let (key, amount) = (id.clone(), e.payload()["amount"].clone());
        cx.node()
            .state()
            .set(move |mut s| {
                if !s.is_object() {
                    s = json!({});
                }
                s[&key] = amount.clone();
                s
            })
            .await?;
        Ok::<_, HappenError>(json!({ "success": true, "paymentId": id }))
    })?;
    payment.on("refund-payment", |e: Event, cx: Context| async move {
        let id = e.payload()["paymentId"].as_str().unwrap_or("").to_owned();
        cx.node()
            .state()
            .set(move |mut s| {
                if let Some(held) = s.as_object_mut() {
                    held.remove(&id);
                }
                s
            })
            .await?;
        Ok::<_, HappenError>(json!({ "success": true }))
    })?;
    happen
        .node("shipping")?
        .on("create-shipment", |e: Event, _cx: Context| async move {
            if e.payload()["address"].is_null() {
                return json!({ "success": false, "reason": "no shipping address" });
            }
            json!({ "success": true, "shipmentId": "SHP-1" })
        })?;
    let saga = happen.node("order-saga")?;
    saga.on("process-order", process_order)?;
    Ok(saga)
}

/// Runs one order that goes through and one whose shipment fails.
pub async fn run(happen: &Happen) -> happen::Result<SagaRun> {
    let saga = start(happen)?;
    // From the stock and payments a fresh system has, also on a server
    // that kept an earlier run's state (or another example's "inventory").
    happen.state_of("inventory")?.set(|_| Value::Null).await?;
    happen.state_of("payment")?.set(|_| Value::Null).await?;
    happen.flush().await?;
    let client = happen.node("storefront")?;
    let completed = client
        .send(
            &saga,
            Event::new(
                "process-order",
                json!({ "orderId": "A-1", "quantity": 2, "amount": 30, "address": "1 Main St" }),
            ),
        )
        .response()
        .await?;
    let failing = client.send(
        &saga,
        Event::new(
            "process-order",
            json!({ "orderId": "B-2", "quantity": 3, "amount": 45 }),
        ),
    );
    let failed_id = failing.id().to_owned();
    let compensated = failing.response().await?;

    let mut failed_effects = Vec::new();
    if let Some(recorder) = happen.recorder() {
        recorder.flush().await;
        let tx = recorder.transaction(&failed_id).await?;
        println!("{tx}");
        failed_effects = tx
            .effects(&failed_id)
            .iter()
            .map(|e| e.event_type.clone())
            .filter(|t| t != "happen.response")
            .collect();
    }
    // More than the stock holds: refused at the first step, nothing taken.
    let refused = client
        .send(
            &saga,
            Event::new(
                "process-order",
                json!({ "orderId": "C-3", "quantity": 50, "amount": 900, "address": "2 Main St" }),
            ),
        )
        .response()
        .await?;
    let stock = happen.state_of("inventory")?.get().await?;
    let payments = happen.state_of("payment")?.get().await?;
    Ok(SagaRun {
        completed,
        compensated,
        refused,
        failed_effects,
        stock,
        payments,
    })
}

/// Asserts what the saga promises.
pub fn check(run: &SagaRun) {
    assert_eq!(run.completed["success"], true, "{run:?}");
    assert_eq!(run.compensated["success"], false, "{run:?}");
    assert!(
        run.compensated["reason"]
            .as_str()
            .unwrap_or("")
            .contains("no shipping address")
    );
    assert!(
        run.refused["reason"]
            .as_str()
            .unwrap_or("")
            .contains("reserve-inventory refused"),
        "{run:?}"
    );
    // Only the completed order's two items are gone; the failed one's came
    // back, and the refused one took none.
    assert_eq!(run.stock, json!(8), "{run:?}");
    // Only the completed order's payment is held; the other was refunded.
    assert_eq!(run.payments, json!({ "PAY-A-1": 30 }), "{run:?}");
    if !run.failed_effects.is_empty() {
        assert_eq!(
            run.failed_effects,
            [
                "reserve-inventory",
                "process-payment",
                "create-shipment",
                "refund-payment",
                "release-inventory",
                "order-processing-failed",
            ],
            "the compensations follow the failure, newest step undone first"
        );
    }
}

#[allow(dead_code)]
#[tokio::main(flavor = "current_thread")]
async fn main() -> happen::Result<()> {
    let url = std::env::args().skip_while(|a| a != "--nats").nth(1);
    let config = HappenConfig::default().recorder(Recorder::in_memory(10_000));
    let happen = Happen::start(url.as_deref(), config).await?;
    let run = run(&happen).await?;
    println!(
        "completed:   {}\ncompensated: {}",
        run.completed, run.compensated
    );
    println!(
        "stock {} and payments held {} are as before the failed order",
        run.stock, run.payments
    );
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

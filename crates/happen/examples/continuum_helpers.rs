//! The helpers of the documentation's Event Continuum and Pattern Matching
//! chapters, in Rust: a domain builder (`createDomain`), reusable flow
//! wrappers (`withValidation`, `withRetry`), steps that run in parallel and
//! then continue, and step factories that capture their dependencies.
//!
//! ```text
//! cargo run --example continuum_helpers
//! ```
//!
//! It exits non-zero if an order is not handled as the flow says (scripts/test
//! runs it).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use happen::Step;
use happen::pattern::Domain;
use happen::prelude::*;
use happen::resilience::Retry;
use happen::wrap::{PARALLEL_RESULTS, parallel, with_retry, with_validation};

/// A dependency the steps need (a database, a client...).
struct Inventory {
    stock: std::collections::HashMap<&'static str, u64>,
    lookups: AtomicU32,
}

/// A step factory: the step it makes captures the inventory.
fn check_stock(inventory: Arc<Inventory>) -> impl Handler {
    move |e: Event, _cx: Context| {
        let inventory = inventory.clone();
        async move {
            inventory.lookups.fetch_add(1, Ordering::Relaxed);
            let sku = e.payload()["sku"].as_str().unwrap_or("");
            let have = inventory.stock.get(sku).copied().unwrap_or(0);
            json!({ "inStock": have >= e.payload()["quantity"].as_u64().unwrap_or(1) })
        }
    }
}

/// A step that asks `target` with `event_type` about the event.
fn ask(target: &'static str, event_type: &'static str) -> Step {
    Step::new(move |e: Event, cx: Context| async move {
        cx.node()
            .send(target, Event::new(event_type, e.payload().clone()))
            .response()
            .await
    })
}

/// Three checks at once (`wrap::parallel`), then `finalize` with their
/// results.
fn parallel_checks() -> impl Handler {
    parallel(
        vec![
            ask("inventory", "check-stock"),
            ask("risk", "check-fraud"),
            ask("shipping", "quote"),
        ],
        Step::new(finalize),
    )
}

async fn finalize(event: Event, cx: Context) -> Value {
    let checks = cx.get(PARALLEL_RESULTS).unwrap_or_default();
    let ok = checks[0]["inStock"] == true && checks[1]["risk"] == "low";
    json!({ "accepted": ok, "sku": event.payload()["sku"], "shipping": checks[2]["cost"] })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> happen::Result<()> {
    let happen = Happen::embedded();
    let order = Domain::new("order");

    let inventory = Arc::new(Inventory {
        stock: [("lamp", 3), ("desk", 0)].into_iter().collect(),
        lookups: AtomicU32::new(0),
    });
    happen
        .node("inventory")?
        .on("check-stock", check_stock(inventory.clone()))?;
    // A flaky risk service: every other call fails; withRetry hides it.
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    happen.node("risk")?.on(
        "check-fraud",
        with_retry(
            Retry::new(3).backoff(
                std::time::Duration::from_millis(1),
                std::time::Duration::from_millis(5),
            ),
            move |_e: Event, _cx: Context| {
                let n = c.fetch_add(1, Ordering::Relaxed);
                async move {
                    if n.is_multiple_of(2) {
                        return Err(std::io::Error::other("risk model warming up"));
                    }
                    Ok(json!({ "risk": "low" }))
                }
            },
        ),
    )?;
    happen
        .node("shipping")?
        .on("quote", |_e: Event, _cx: Context| async {
            json!({ "cost": 4.5 })
        })?;

    let orders = happen.node("orders")?;
    // withValidation around the parallel step, on the domain's event.
    orders.on(
        order.on("submitted"),
        with_validation(
            |e: &Event| match e.payload()["sku"].as_str() {
                Some(_) => Ok(()),
                None => Err("an order names a sku"),
            },
            parallel_checks(),
        ),
    )?;
    // Every order event is logged, whatever its action.
    let logged = Arc::new(AtomicU32::new(0));
    let l = logged.clone();
    happen
        .node("audit")?
        .on(order.all(), move |_e: Event, _cx: Context| {
            l.fetch_add(1, Ordering::Relaxed);
            async {}
        })?;

    let shop = happen.node("shop")?;
    let submit =
        |payload: Value| shop.send(&orders, Event::new(order.event_type("submitted"), payload));
    let lamp = submit(json!({ "sku": "lamp", "quantity": 2 })).await?;
    let desk = submit(json!({ "sku": "desk", "quantity": 1 })).await?;
    let invalid = submit(json!({ "quantity": 1 })).await.unwrap_err();
    shop.broadcast(Event::new(order.event_type("archived"), json!(null)))?;
    happen.shutdown().await;

    println!("lamp:    {lamp}\ndesk:    {desk}\ninvalid: {invalid}");
    assert_eq!(
        lamp,
        json!({ "accepted": true, "sku": "lamp", "shipping": 4.5 })
    );
    assert_eq!(desk["accepted"], false);
    assert!(
        invalid.to_string().contains("an order names a sku"),
        "{invalid}"
    );
    assert_eq!(
        inventory.lookups.load(Ordering::Relaxed),
        2,
        "the invalid order never got that far"
    );
    assert_eq!(
        calls.load(Ordering::Relaxed),
        4,
        "each fraud check failed once and was retried"
    );
    assert_eq!(
        logged.load(Ordering::Relaxed),
        1,
        "audit saw the broadcast order event"
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

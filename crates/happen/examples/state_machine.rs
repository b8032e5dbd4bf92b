//! A state machine, from the documentation's Advanced Patterns chapter: an
//! order node whose state is the order's status, changed only by events
//! that name an allowed transition. A transition that the table does not
//! allow is refused and changes nothing; every change is broadcast, so other
//! nodes can follow the order's life.
//!
//! ```text
//! cargo run --example state_machine
//! ```
//!
//! It exits non-zero if the machine ends in another state or accepted a
//! transition it should not have (scripts/test runs it).

use std::sync::{Arc, Mutex};

use happen::prelude::*;

/// (from, event, to): every transition the machine allows.
const TRANSITIONS: &[(&str, &str, &str)] = &[
    ("pending", "pay", "paid"),
    ("pending", "cancel", "cancelled"),
    ("paid", "ship", "shipped"),
    ("paid", "cancel", "refunding"),
    ("refunding", "refunded", "cancelled"),
    ("shipped", "deliver", "delivered"),
];

fn next_state(from: &str, event: &str) -> Option<&'static str> {
    TRANSITIONS
        .iter()
        .find(|(f, e, _)| *f == from && *e == event)
        .map(|(_, _, to)| *to)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> happen::Result<()> {
    let happen = Happen::embedded();
    let order = happen.node("order-42")?;
    // One handler for every transition event: the table decides.
    let events: Vec<&str> = TRANSITIONS.iter().map(|(_, e, _)| *e).collect();
    order.on(
        happen::pattern::one_of(events),
        |e: Event, cx: Context| async move {
            let event = e.event_type().to_owned();
            let mut refused = None;
            let state = cx
                .node()
                .state()
                .set(|s| {
                    // The update may run again on a newer state: decide afresh.
                    refused = None;
                    let from = s.as_str().unwrap_or("pending");
                    match next_state(from, &event) {
                        Some(to) => json!(to),
                        None => {
                            refused = Some(from.to_owned());
                            s
                        }
                    }
                })
                .await?;
            if let Some(from) = refused {
                return Ok::<_, HappenError>(
                    json!({ "accepted": false, "state": from, "event": event }),
                );
            }
            cx.node().broadcast(Event::new(
                "order.status-changed",
                json!({ "order": 42, "state": state }),
            ))?;
            Ok(json!({ "accepted": true, "state": state }))
        },
    )?;
    // Someone following the order's life.
    let followed = Arc::new(Mutex::new(Vec::new()));
    let f = followed.clone();
    happen
        .node("tracker")?
        .on("order.status-changed", move |e: Event, _cx: Context| {
            f.lock()
                .unwrap()
                .push(e.payload()["state"].as_str().unwrap_or("?").to_owned());
            async {}
        })?;

    let customer = happen.node("customer")?;
    let mut answers = Vec::new();
    for event in ["ship", "pay", "pay", "ship", "cancel", "deliver"] {
        let answer = customer
            .send(&order, Event::new(event, json!(null)))
            .await?;
        println!("{event:<8} → {answer}");
        answers.push(answer["accepted"] == true);
    }
    happen.shutdown().await;
    // Shipping before paying, paying twice and cancelling a shipped order
    // are refused; the rest go through.
    assert_eq!(answers, [false, true, false, true, false, true]);
    assert_eq!(*followed.lock().unwrap(), ["paid", "shipped", "delivered"]);
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

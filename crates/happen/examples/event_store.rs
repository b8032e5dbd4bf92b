//! The documentation's event store: a node keeps every `domain-*` event in
//! an append-only log (its state), with the causal context each carried, and
//! answers `rebuild-state` (fold every event into the current state) and
//! `get-state-at` (fold the events up to a point in time, or up to one
//! event). The account's state is never stored, only derived.
//!
//! ```text
//! cargo run --example event_store
//! ```
//!
//! It exits non-zero if a rebuilt state differs from what the events imply
//! (scripts/test runs it). `event_sourcing` shows the same idea with
//! Happen's temporal state instead of a log of one's own.

use happen::prelude::*;

/// How one event changes the state: the account's balance and history.
fn apply(mut state: Value, event: &Value) -> Value {
    let amount = event["payload"]["amount"].as_i64().unwrap_or(0);
    let balance = state["balance"].as_i64().unwrap_or(0);
    match event["type"].as_str() {
        Some("domain-deposited") => state["balance"] = json!(balance + amount),
        Some("domain-withdrawn") => state["balance"] = json!(balance - amount),
        Some("domain-opened") => {
            state = json!({ "owner": event["payload"]["owner"], "balance": 0 })
        }
        _ => {}
    }
    state
}

/// Folds the log, stopping after the event `until` returns true for.
fn fold(log: &[Value], until: impl Fn(&Value) -> bool) -> Value {
    let mut state = json!({});
    for event in log {
        state = apply(state, event);
        if until(event) {
            break;
        }
    }
    state
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> happen::Result<()> {
    let happen = Happen::embedded();
    let store = happen.node("event-store")?;
    // Every domain event, with its id, time and cause, appended.
    store.on(|t: &str| t.starts_with("domain-"), |e: Event, cx: Context| async move {
        let entry = json!({
            "type": e.event_type(), "payload": e.payload(),
            "id": e.id(), "timestamp": e.causal().timestamp, "causationId": e.causal().causation_id,
        });
        cx.node()
            .state()
            .set(move |mut s| {
                if !s["log"].is_array() {
                    s["log"] = json!([]);
                }
                if let Some(log) = s["log"].as_array_mut() {
                    log.push(entry.clone());
                }
                s
            })
            .await?;
        Ok::<_, HappenError>(json!({ "stored": true }))
    })?;
    store.on("rebuild-state", |_e: Event, cx: Context| async move {
        let log = cx
            .node()
            .state()
            .get_with(|s| s["log"].as_array().cloned().unwrap_or_default())
            .await?;
        Ok::<_, HappenError>(fold(&log, |_| false))
    })?;
    store.on("get-state-at", |e: Event, cx: Context| async move {
        let log = cx
            .node()
            .state()
            .get_with(|s| s["log"].as_array().cloned().unwrap_or_default())
            .await?;
        let (event_id, at) = (
            e.payload()["eventId"].clone(),
            e.payload()["timestamp"].as_u64(),
        );
        let before_next = |entry: &Value| match at {
            Some(at) => entry["timestamp"].as_u64() > Some(at),
            None => false,
        };
        // An event the log does not hold has no state to show: saying the
        // current one would answer a question that was not asked.
        if at.is_none() && !log.iter().any(|entry| entry["id"] == event_id) {
            return Ok::<_, HappenError>(
                json!({ "success": false, "reason": format!("no event {event_id} in the log") }),
            );
        }
        // Up to a time: the events at or before it; up to an event: it and
        // those before.
        let upto: Vec<Value> = match at {
            Some(_) => log
                .iter()
                .take_while(|entry| !before_next(entry))
                .cloned()
                .collect(),
            None => log.clone(),
        };
        Ok::<_, HappenError>(fold(&upto, |entry| entry["id"] == event_id))
    })?;

    let bank = happen.node("bank")?;
    let mut ids = Vec::new();
    for (event_type, payload) in [
        ("domain-opened", json!({ "owner": "ann" })),
        ("domain-deposited", json!({ "amount": 100 })),
        ("domain-withdrawn", json!({ "amount": 30 })),
        ("domain-deposited", json!({ "amount": 5 })),
    ] {
        let sent = bank.send(&store, Event::new(event_type, payload));
        ids.push(sent.id().to_owned());
        sent.await?;
        // Each event in a millisecond of its own, for the query by time.
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    }
    let now = bank
        .send(&store, Event::new("rebuild-state", json!(null)))
        .await?;
    let after_withdrawal = bank
        .send(
            &store,
            Event::new("get-state-at", json!({ "eventId": ids[2] })),
        )
        .await?;
    let log = happen.state_of("event-store")?.get().await?;
    let first_deposit_time = log["log"][1]["timestamp"].as_u64().unwrap_or(0);
    let by_time = bank
        .send(
            &store,
            Event::new(
                "get-state-at",
                json!({ "timestamp": first_deposit_time.saturating_sub(1) }),
            ),
        )
        .await?;
    let unknown = bank
        .send(
            &store,
            Event::new("get-state-at", json!({ "eventId": "no-such-event" })),
        )
        .await?;
    happen.shutdown().await;

    println!("now:                  {now}");
    println!("at an unknown event:  {unknown}");
    assert_eq!(unknown["success"], false, "{unknown}");
    println!("after the withdrawal: {after_withdrawal}");
    println!("just before deposits: {by_time}");
    assert_eq!(now, json!({ "owner": "ann", "balance": 75 }));
    assert_eq!(after_withdrawal, json!({ "owner": "ann", "balance": 70 }));
    // By time: the account opened, no deposit yet.
    assert_eq!(by_time, json!({ "owner": "ann", "balance": 0 }));
    assert_eq!(
        log["log"].as_array().map(Vec::len),
        Some(4),
        "only domain events are logged"
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

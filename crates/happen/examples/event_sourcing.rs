//! Event sourcing with temporal state: an account's state history, kept by
//! Happen for each change a flow made (the most recent ones: 100 per node
//! unless `HappenConfig::temporal` keeps more), is enough to see (and
//! restore) the state as of an earlier event and to explain how the current
//! state came to be. The restore is an event too, so it is in the history.
//!
//! Run it with `cargo run --example event_sourcing`; it exits non-zero if
//! the history does not say what it should.

use happen::prelude::*;
use happen::{Snapshot, SnapshotContext};

/// Applies one deposit or withdrawal to the account's state.
async fn apply(event: Event, cx: Context) -> happen::Result<Value> {
    let amount = event.payload()["amount"].as_i64().unwrap_or(0);
    let signed = if event.event_type() == "withdraw" {
        -amount
    } else {
        amount
    };
    let memo = event.payload()["memo"].clone();
    cx.node()
        .state()
        .set(|mut state| {
            let balance = state["balance"].as_i64().unwrap_or(0) + signed;
            state["balance"] = json!(balance);
            let entries = state["entries"].as_u64().unwrap_or(0);
            state["entries"] = json!(entries + 1);
            state["last"] = memo.clone();
            state
        })
        .await
}

/// The last, random part of an event id: enough to tell events apart here.
fn short(id: &str) -> &str {
    &id[id.len().saturating_sub(12)..]
}

fn describe(snapshot: &Snapshot) -> String {
    let c: &SnapshotContext = &snapshot.context;
    let cause = match c.causation_id.as_deref() {
        Some(id) => format!("event ..{}", short(id)),
        None => "nothing (a root event)".to_owned(),
    };
    format!(
        "{:<9} from {:<8} balance {:>4}   event ..{}  caused by {}",
        c.event_type,
        c.sender.as_str(),
        snapshot.state["balance"].to_string(),
        short(&c.id),
        cause,
    )
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> happen::Result<()> {
    let happen = Happen::embedded();
    let teller = happen.node("teller")?;
    let payroll = happen.node("payroll")?;
    let account = happen.node("account")?;

    account.on("{deposit,withdraw}", apply)?;
    // A restore is a change like any other: made by a flow, it is recorded
    // with the event that asked for it.
    account.on("restore", |event: Event, cx: Context| async move {
        let state = event.payload()["state"].clone();
        cx.node().state().set(move |_| state.clone()).await
    })?;
    // Payday makes payroll deposit a salary: a deposit caused by another event.
    payroll.on("payday", |event: Event, cx: Context| async move {
        let salary = event.payload()["salary"].clone();
        cx.node()
            .send(
                "account",
                Event::new("deposit", json!({ "amount": salary, "memo": "salary" })),
            )
            .await
    })?;

    teller
        .send(
            &account,
            Event::new("deposit", json!({ "amount": 100, "memo": "opening" })),
        )
        .await?;
    let groceries = teller.send(
        &account,
        Event::new("withdraw", json!({ "amount": 30, "memo": "groceries" })),
    );
    let groceries_id = groceries.id().to_owned();
    groceries.await?;
    teller
        .send(
            &payroll,
            Event::new("payday", json!({ "salary": 250 })).with_correlation_id("payday-2026-11"),
        )
        .await?;
    teller
        .send(
            &account,
            Event::new("withdraw", json!({ "amount": 45, "memo": "rent share" })),
        )
        .await?;

    let now = account.state().get().await?;
    println!("Current state: {now}\n");

    println!("How it came to be (every change, oldest first):");
    let history = account.state().history().await?;
    for snapshot in &history {
        println!("  {}", describe(snapshot));
    }

    // The state as of an earlier event...
    let then = account.state().when(groceries_id.as_str()).await?;
    let then = then
        .first()
        .expect("the groceries withdrawal changed the state");
    println!("\nAs of the groceries withdrawal: {}", then.state);

    // ...and every change belonging to one transaction.
    let payday = account
        .state()
        .when(|c: &SnapshotContext| c.correlation_id == "payday-2026-11")
        .await?;
    for snapshot in &payday {
        println!(
            "Payday changed the account through {} from {} (caused by event {})",
            snapshot.context.event_type,
            snapshot.context.sender,
            snapshot.context.causation_id.as_deref().unwrap_or("?")
        );
    }

    assert_eq!(history.len(), 4, "one snapshot per change");
    assert_eq!(then.state["balance"], 70, "{}", then.state);
    assert_eq!(payday.len(), 1, "the salary deposit");
    assert_eq!(now["balance"], 275, "{now}");

    // Rebuild: restore the state as of that earlier event.
    let restore = teller.send(
        &account,
        Event::new("restore", json!({ "state": then.state.clone() })),
    );
    let restore_id = restore.id().to_owned();
    restore.await?;
    let restored = account.state().get().await?;
    println!("\nRestored to: {restored}");
    assert_eq!(restored, then.state);
    let last = account.state().history().await?;
    let last = last.last().expect("the restore is in the history");
    assert_eq!(last.context.id, restore_id.as_str());
    assert_eq!(last.state, then.state);
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

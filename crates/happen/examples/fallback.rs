//! Retry with backoff, then fallback, from the documentation's Error
//! Handling chapter: the payment step tries the primary processor a few
//! times with exponential backoff and jitter; when it stays down, the flow
//! continues with a step that uses the backup processor; when both fail,
//! the order is answered with a clear failure instead of an error.
//!
//! ```text
//! cargo run --example fallback
//! ```
//!
//! It exits non-zero if a payment takes another path (scripts/test runs it).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use happen::prelude::*;
use happen::resilience::Retry;

/// A payment processor node that can be switched off.
fn processor(
    happen: &Happen,
    id: &str,
    up: Arc<AtomicBool>,
    calls: Arc<AtomicU32>,
) -> happen::Result<()> {
    let name = id.to_owned();
    happen
        .node(id)?
        .on("charge", move |e: Event, _cx: Context| {
            calls.fetch_add(1, Ordering::Relaxed);
            let (up, name) = (up.load(Ordering::Relaxed), name.clone());
            async move {
                if !up {
                    return Err(std::io::Error::other(format!("{name} is unavailable")));
                }
                Ok(json!({ "charged": e.payload()["amount"], "by": name }))
            }
        })?;
    Ok(())
}

/// The first step: the primary processor, retried with backoff; on giving
/// up, continue with the fallback step.
async fn pay(event: Event, cx: Context) -> Flow {
    let retry = Retry::new(3).backoff(Duration::from_millis(10), Duration::from_millis(40));
    let primary = retry
        .run(|_| {
            cx.node()
                .send(
                    "primary-processor",
                    Event::new("charge", event.payload().clone()),
                )
                .response()
        })
        .await;
    match primary {
        Ok(receipt) => {
            Flow::done(json!({ "success": true, "receipt": receipt, "usedFallback": false }))
        }
        Err(error) => {
            cx.set("primaryError", error.to_string());
            Flow::next(pay_with_backup)
        }
    }
}

/// The fallback step.
async fn pay_with_backup(event: Event, cx: Context) -> Value {
    let backup = cx
        .node()
        .send(
            "backup-processor",
            Event::new("charge", event.payload().clone()),
        )
        .response()
        .await;
    match backup {
        Ok(receipt) => json!({ "success": true, "receipt": receipt, "usedFallback": true }),
        Err(error) => json!({
            "success": false,
            "reason": "payment-unavailable",
            "primary": cx.get("primaryError"),
            "backup": error.to_string(),
        }),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> happen::Result<()> {
    let happen = Happen::embedded();
    let (primary_up, backup_up) = (
        Arc::new(AtomicBool::new(true)),
        Arc::new(AtomicBool::new(true)),
    );
    let (primary_calls, backup_calls) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    processor(
        &happen,
        "primary-processor",
        primary_up.clone(),
        primary_calls.clone(),
    )?;
    processor(
        &happen,
        "backup-processor",
        backup_up.clone(),
        backup_calls.clone(),
    )?;
    let payments = happen.node("payments")?;
    payments.on("process-payment", pay)?;
    let shop = happen.node("shop")?;
    let order = || Event::new("process-payment", json!({ "amount": 42 }));

    let normal = shop.send(&payments, order()).await?;
    primary_up.store(false, Ordering::Relaxed);
    let fallen_back = shop.send(&payments, order()).await?;
    backup_up.store(false, Ordering::Relaxed);
    let failed = shop.send(&payments, order()).await?;
    happen.shutdown().await;

    println!("primary up:   {normal}\nprimary down: {fallen_back}\nboth down:    {failed}");
    assert_eq!(normal["receipt"]["by"], "primary-processor");
    assert_eq!(fallen_back["usedFallback"], true);
    assert_eq!(fallen_back["receipt"]["by"], "backup-processor");
    assert_eq!(failed["success"], false);
    assert!(
        failed["primary"]
            .as_str()
            .unwrap_or("")
            .contains("primary-processor is unavailable")
    );
    // 1 (up) + 3 attempts + 3 attempts on the primary; the backup twice.
    assert_eq!(primary_calls.load(Ordering::Relaxed), 7);
    assert_eq!(backup_calls.load(Ordering::Relaxed), 2);
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

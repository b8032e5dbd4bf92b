//! The documentation's circuit breaker, with `happen::resilience`: a
//! payment node calls a gateway through a `CircuitBreaker`. While the
//! gateway is down, three failures in a row open the circuit, and further
//! charges are refused at once without reaching the gateway. Once the open
//! period has passed, one charge goes through as a probe; the gateway is
//! back, so the circuit closes and charges flow again.
//!
//! ```text
//! cargo run --example circuit_breaker                              # embedded
//! cargo run --example circuit_breaker -- --nats nats://127.0.0.1:4222
//! ```
//!
//! It prints each charge's outcome and the circuit's state after it, and
//! exits non-zero if the circuit did not go closed → open → half-open →
//! closed as described (scripts/test runs it; `tests/examples.rs` runs it on
//! both runtimes).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use happen::prelude::*;
use happen::resilience::{CircuitBreaker, CircuitError, CircuitState};

/// How long the circuit stays open.
const OPEN_FOR: Duration = Duration::from_millis(300);

/// What the run showed.
#[derive(Debug)]
pub struct BreakerRun {
    /// Each charge's outcome (`paid`, `failed`, `refused`) and the circuit's
    /// state after it.
    pub charges: Vec<(String, String)>,
    /// Charges that reached the gateway.
    pub gateway_calls: u32,
}

fn state_name(state: CircuitState) -> &'static str {
    match state {
        CircuitState::Closed => "closed",
        CircuitState::Open => "open",
        CircuitState::HalfOpen => "half-open",
    }
}

/// Runs seven charges: three against a gateway that is down, two while the
/// circuit is open, and two after the gateway recovered and the open period
/// passed.
pub async fn run(happen: &Happen) -> happen::Result<BreakerRun> {
    let down = Arc::new(AtomicBool::new(true));
    let calls = Arc::new(AtomicU32::new(0));
    let (d, c) = (down.clone(), calls.clone());
    happen
        .node("gateway")?
        .on("charge", move |_e: Event, _cx: Context| {
            c.fetch_add(1, Ordering::Relaxed);
            let down = d.load(Ordering::Relaxed);
            async move {
                if down {
                    return Err(std::io::Error::other("the card network does not answer"));
                }
                Ok(json!("paid"))
            }
        })?;
    let breaker = CircuitBreaker::new(3, OPEN_FOR);
    let payments = happen.node("payments")?;
    let b = breaker.clone();
    payments.on("pay", move |e: Event, cx: Context| {
        let breaker = b.clone();
        async move {
            // The request is made inside the call, so that an open circuit
            // sends nothing (`send` dispatches as soon as it is called).
            let charge = async {
                cx.node()
                    .send("gateway", Event::new("charge", e.payload().clone()))
                    .response()
                    .await
            };
            let outcome = match breaker.call(charge).await {
                Ok(_) => "paid",
                Err(CircuitError::Failed(_)) => "failed",
                Err(CircuitError::Open { .. }) => "refused",
            };
            json!({ "outcome": outcome, "circuit": state_name(breaker.state()) })
        }
    })?;
    happen.flush().await?;

    let shop = happen.node("shop")?;
    let mut charges = Vec::new();
    for i in 0..7 {
        if i == 5 {
            // The gateway is back; wait out the open period.
            down.store(false, Ordering::Relaxed);
            tokio::time::sleep(OPEN_FOR).await;
        }
        let answer = shop
            .send(&payments, Event::new("pay", json!({ "amount": 10 + i })))
            .response()
            .await?;
        let pair = (
            answer["outcome"].as_str().unwrap_or("?").to_owned(),
            answer["circuit"].as_str().unwrap_or("?").to_owned(),
        );
        println!("charge {}: {:<8} circuit {}", i + 1, pair.0, pair.1);
        charges.push(pair);
    }
    Ok(BreakerRun {
        charges,
        gateway_calls: calls.load(Ordering::Relaxed),
    })
}

/// Asserts the circuit's course.
pub fn check(run: &BreakerRun) {
    let expected = [
        ("failed", "closed"),
        ("failed", "closed"),
        ("failed", "open"),
        ("refused", "open"),
        ("refused", "open"),
        ("paid", "closed"), // the probe, after the open period
        ("paid", "closed"),
    ];
    let got: Vec<(&str, &str)> = run
        .charges
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    assert_eq!(got, expected, "{run:?}");
    assert_eq!(
        run.gateway_calls, 5,
        "the two refused charges never reached the gateway"
    );
}

#[allow(dead_code)]
#[tokio::main(flavor = "current_thread")]
async fn main() -> happen::Result<()> {
    let url = std::env::args().skip_while(|a| a != "--nats").nth(1);
    let happen = Happen::start(url.as_deref(), HappenConfig::default()).await?;
    let run = run(&happen).await?;
    check(&run);
    println!("the gateway saw {} of 7 charges", run.gateway_calls);
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

    /// With the test kit (paused clock, deterministic ids) the open period
    /// passes in virtual time: the same course, without waiting for it.
    #[tokio::test(start_paused = true)]
    async fn the_open_period_passes_on_the_paused_clock() {
        let _ids = happen::testkit::deterministic(1);
        let happen = happen::Happen::embedded();
        let started = tokio::time::Instant::now();
        super::check(&super::run(&happen).await.expect("the run ends"));
        assert!(
            started.elapsed() >= super::OPEN_FOR,
            "the open period was waited out"
        );
        happen.shutdown().await;
    }
}

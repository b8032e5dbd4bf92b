//! Resilience helpers for the steps of a flow: retry with exponential
//! backoff and jitter, and a circuit breaker.
//!
//! The documentation writes both inside handlers (a retry counter in the
//! context, a shared circuit object); here they are small reusable pieces to
//! wrap around whatever a step calls, usually a request to another node.
//! Both use tokio's clock, so a test with a paused clock
//! (`#[tokio::test(start_paused = true)]`) runs them instantly.
//!
//! ```
//! use std::time::Duration;
//! use happen::prelude::*;
//! use happen::resilience::{CircuitBreaker, Retry};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> happen::Result<()> {
//! let happen = Happen::embedded();
//! let shop = happen.node("shop")?;
//! happen.node("bank")?.on("charge", |_e: Event, _cx: Context| async { json!("paid") })?;
//!
//! let breaker = CircuitBreaker::new(5, Duration::from_secs(30));
//! let retry = Retry::new(3).backoff(Duration::from_millis(100), Duration::from_secs(2));
//! shop.on("order", move |_e: Event, cx: Context| {
//!     let (breaker, retry) = (breaker.clone(), retry.clone());
//!     async move {
//!         // Up to 3 attempts, each through the breaker. The request is
//!         // made inside the `async` block: an open circuit sends nothing.
//!         retry
//!             .run(|_attempt| {
//!                 breaker.call(async {
//!                     cx.node().send("bank", Event::new("charge", json!(5))).response().await
//!                 })
//!             })
//!             .await
//!     }
//! })?;
//! assert_eq!(shop.send(&shop, Event::new("order", json!(null))).await?, json!("paid"));
//! # Ok(()) }
//! ```

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// Retries an operation with exponential backoff and jitter; see the
/// [module docs](self). Cheap to clone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    attempts: u32,
    initial: Duration,
    max_delay: Duration,
    jitter: bool,
    max_elapsed: Option<Duration>,
}

impl Retry {
    /// At most `attempts` attempts in all (at least 1), waiting 100 ms after
    /// the first failure, doubling each time up to 5 s, with jitter.
    pub fn new(attempts: u32) -> Retry {
        Retry {
            attempts: attempts.max(1),
            initial: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            jitter: true,
            max_elapsed: None,
        }
    }

    /// Waits `initial` after the first failure, doubling up to `max`.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Retry {
        self.initial = initial;
        self.max_delay = max.max(initial);
        self
    }

    /// Whether each delay is drawn at random between half of it and all of
    /// it (default `true`), so that many retrying callers spread out.
    pub fn jitter(mut self, jitter: bool) -> Retry {
        self.jitter = jitter;
        self
    }

    /// Gives up, whatever attempts are left, once a further wait would end
    /// after `limit` from the first attempt.
    pub fn max_elapsed(mut self, limit: Duration) -> Retry {
        self.max_elapsed = Some(limit);
        self
    }

    /// The wait after `failed` failed attempts (from 1), before jitter.
    pub fn delay(&self, failed: u32) -> Duration {
        let factor = 2u32.saturating_pow(failed.saturating_sub(1));
        self.initial.saturating_mul(factor).min(self.max_delay)
    }

    /// Runs `attempt` (given the attempt's number, from 1) until it succeeds
    /// or the attempts or time are used up; returns the last error then.
    pub async fn run<T, E, F, Fut>(&self, mut attempt: F) -> Result<T, E>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let started = Instant::now();
        let mut number = 1;
        loop {
            let error = match attempt(number).await {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            if number >= self.attempts {
                return Err(error);
            }
            let mut wait = self.delay(number);
            if self.jitter && !wait.is_zero() {
                let half = wait / 2;
                let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX).max(1);
                wait = half + Duration::from_nanos(crate::uuid7::random() % nanos);
            }
            if let Some(limit) = self.max_elapsed
                && started.elapsed().saturating_add(wait) > limit
            {
                return Err(error);
            }
            tracing::debug!(attempt = number, ?wait, "retrying");
            tokio::time::sleep(wait).await;
            number += 1;
        }
    }
}

/// Where a [`CircuitBreaker`] stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    /// Calls go through; failures are counted.
    Closed,
    /// Calls are refused at once until the open period ends.
    Open,
    /// The open period ended: one call goes through as a probe; its success
    /// closes the circuit, its failure opens it again.
    HalfOpen,
}

/// Why a call through a [`CircuitBreaker`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CircuitError<E> {
    /// The circuit is open (or a probe is already under way): the call was
    /// not made.
    #[error("the circuit is open: the call was not made; retry after {retry_after:?}")]
    Open {
        /// How long until a probe may go through.
        retry_after: Duration,
    },
    /// The call was made and failed.
    #[error(transparent)]
    Failed(E),
}

#[derive(Debug)]
struct Circuit {
    failures: u32,
    /// Set while open: when a probe may go.
    open_until: Option<Instant>,
    probing: bool,
}

/// Stops calling what keeps failing: after `threshold` failures in a row the
/// circuit opens and calls are refused at once for `open_for`; then one call
/// probes, and its outcome closes or reopens the circuit. Clones share one
/// circuit (keep one per downstream service).
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    threshold: u32,
    open_for: Duration,
    circuit: Arc<Mutex<Circuit>>,
}

impl CircuitBreaker {
    /// Opens after `threshold` failures in a row (at least 1), for
    /// `open_for`.
    pub fn new(threshold: u32, open_for: Duration) -> CircuitBreaker {
        CircuitBreaker {
            threshold: threshold.max(1),
            open_for,
            circuit: Arc::new(Mutex::new(Circuit {
                failures: 0,
                open_until: None,
                probing: false,
            })),
        }
    }

    fn circuit(&self) -> std::sync::MutexGuard<'_, Circuit> {
        self.circuit.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where the circuit stands now.
    pub fn state(&self) -> CircuitState {
        let circuit = self.circuit();
        match circuit.open_until {
            None => CircuitState::Closed,
            Some(until) if Instant::now() < until => CircuitState::Open,
            Some(_) => CircuitState::HalfOpen,
        }
    }

    /// Failures in a row so far.
    pub fn failures(&self) -> u32 {
        self.circuit().failures
    }

    /// Makes the call `call` unless the circuit is open, and counts its
    /// outcome.
    ///
    /// Pass a future that does its work when polled (an `async` block around
    /// the request): [`Node::send`](crate::Node::send) dispatches as soon as
    /// it is called, so `breaker.call(node.send(..).response())` would send
    /// even through an open circuit.
    pub async fn call<T, E, Fut>(&self, call: Fut) -> Result<T, CircuitError<E>>
    where
        Fut: Future<Output = Result<T, E>>,
    {
        let probe = {
            let mut circuit = self.circuit();
            match circuit.open_until {
                None => false,
                Some(until) => {
                    let now = Instant::now();
                    if now < until || circuit.probing {
                        return Err(CircuitError::Open {
                            retry_after: until.saturating_duration_since(now),
                        });
                    }
                    circuit.probing = true;
                    true
                }
            }
        };
        // A probe whose caller gave up (a timeout around `call`, a dropped
        // task) ends its probing too: else the circuit refused every later
        // call for good.
        let mut cancelled = Probe(probe.then_some(self));
        let outcome = call.await;
        cancelled.0 = None;
        let mut circuit = self.circuit();
        if probe {
            circuit.probing = false;
        }
        match outcome {
            Ok(value) => {
                circuit.failures = 0;
                circuit.open_until = None;
                Ok(value)
            }
            Err(error) => {
                circuit.failures = circuit.failures.saturating_add(1);
                if probe || circuit.failures >= self.threshold {
                    circuit.open_until =
                        Some(crate::response::later(Instant::now(), self.open_for));
                    tracing::warn!(failures = circuit.failures, open_for = ?self.open_for, "circuit opened");
                }
                Err(CircuitError::Failed(error))
            }
        }
    }
}

/// Ends a probe that was dropped before its call came back.
struct Probe<'a>(Option<&'a CircuitBreaker>);

impl Drop for Probe<'_> {
    fn drop(&mut self) {
        if let Some(breaker) = self.0 {
            breaker.circuit().probing = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn retry_waits_longer_each_time_and_gives_the_last_error() {
        let retry = Retry::new(4)
            .backoff(Duration::from_millis(100), Duration::from_millis(250))
            .jitter(false);
        assert_eq!(
            (1..=4).map(|f| retry.delay(f)).collect::<Vec<_>>(),
            [100, 200, 250, 250].map(Duration::from_millis)
        );
        let started = Instant::now();
        let calls = AtomicU32::new(0);
        let outcome: Result<(), u32> = retry
            .run(|n| {
                calls.fetch_add(1, Ordering::Relaxed);
                async move { Err(n) }
            })
            .await;
        assert_eq!(outcome, Err(4), "the last attempt's error");
        assert_eq!(calls.load(Ordering::Relaxed), 4);
        // 100 + 200 + 250 on tokio's (paused) clock.
        assert_eq!(started.elapsed(), Duration::from_millis(550));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_stops_at_success_and_jitter_stays_within_half_to_whole() {
        let retry = Retry::new(10).backoff(Duration::from_millis(100), Duration::from_secs(1));
        let started = Instant::now();
        let value = retry
            .run(|n| async move { if n < 3 { Err("not yet") } else { Ok(n) } })
            .await;
        assert_eq!(value, Ok(3));
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(150) && waited <= Duration::from_millis(300),
            "{waited:?}: two waits of 50..100 and 100..200 ms"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retry_gives_up_when_the_time_is_up() {
        let retry = Retry::new(100)
            .backoff(Duration::from_millis(100), Duration::from_millis(100))
            .jitter(false)
            .max_elapsed(Duration::from_millis(350));
        let calls = AtomicU32::new(0);
        let _: Result<(), ()> = retry
            .run(|_| {
                calls.fetch_add(1, Ordering::Relaxed);
                async { Err(()) }
            })
            .await;
        // Attempts at 0, 100, 200, 300 ms; a fifth would start after 350.
        assert_eq!(calls.load(Ordering::Relaxed), 4);
    }

    /// `Duration::MAX` is a valid setting everywhere: no overflow panics.
    #[tokio::test(start_paused = true)]
    async fn the_longest_durations_are_taken_as_given() {
        let breaker = CircuitBreaker::new(1, Duration::MAX);
        assert_eq!(
            breaker.call(async { Err::<(), _>("down") }).await,
            Err(CircuitError::Failed("down"))
        );
        assert_eq!(breaker.state(), CircuitState::Open);
        let retry = Retry::new(3)
            .backoff(Duration::MAX, Duration::MAX)
            .max_elapsed(Duration::from_secs(1))
            .jitter(false);
        let calls = AtomicU32::new(0);
        let outcome: Result<(), &str> = retry
            .run(|_| {
                calls.fetch_add(1, Ordering::Relaxed);
                async { Err("down") }
            })
            .await;
        assert_eq!((outcome, calls.load(Ordering::Relaxed)), (Err("down"), 1));
    }

    #[tokio::test(start_paused = true)]
    async fn the_circuit_opens_probes_and_closes() {
        let breaker = CircuitBreaker::new(3, Duration::from_secs(30));
        let fail = || async { Err::<(), _>("down") };
        for _ in 0..3 {
            assert_eq!(
                breaker.call(fail()).await,
                Err(CircuitError::Failed("down"))
            );
        }
        assert_eq!(breaker.state(), CircuitState::Open);
        // Open: refused without calling.
        let called = AtomicU32::new(0);
        let refused = breaker
            .call(async {
                called.fetch_add(1, Ordering::Relaxed);
                Ok::<_, &str>(())
            })
            .await;
        assert!(matches!(refused, Err(CircuitError::Open { .. })));
        assert_eq!(called.load(Ordering::Relaxed), 0);
        // After the open period a failing probe opens it again...
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(breaker.state(), CircuitState::HalfOpen);
        assert_eq!(
            breaker.call(fail()).await,
            Err(CircuitError::Failed("down"))
        );
        assert_eq!(breaker.state(), CircuitState::Open);
        // ...and a succeeding one closes it.
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(breaker.call(async { Ok::<_, &str>(7) }).await, Ok(7));
        assert_eq!(breaker.state(), CircuitState::Closed);
        assert_eq!(breaker.failures(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_given_up_by_its_caller_lets_the_next_call_probe() {
        let breaker = CircuitBreaker::new(1, Duration::from_secs(30));
        let _ = breaker.call(async { Err::<(), _>("down") }).await;
        tokio::time::advance(Duration::from_secs(30)).await;
        // The probe hangs, and its caller stops waiting.
        let gave_up = tokio::time::timeout(
            Duration::from_secs(1),
            breaker.call(std::future::pending::<Result<(), &str>>()),
        )
        .await;
        assert!(gave_up.is_err());
        // The service is back: the next call probes, and closes the circuit.
        assert_eq!(breaker.call(async { Ok::<_, &str>(1) }).await, Ok(1));
        assert_eq!(breaker.state(), CircuitState::Closed);
    }
}

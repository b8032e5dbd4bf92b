//! Reusable wrappers around a flow's first step: the documentation's
//! `withValidation`, `withRetry` and `parallel`, as functions that return a
//! handler.
//!
//! ```
//! use happen::prelude::*;
//! use happen::resilience::Retry;
//! use happen::wrap::{with_retry, with_validation};
//!
//! async fn charge(event: Event, _cx: Context) -> happen::Result<Value> {
//!     Ok(json!({ "charged": event.payload()["amount"] }))
//! }
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> happen::Result<()> {
//! let happen = Happen::embedded();
//! let payments = happen.node("payments")?;
//! payments.on(
//!     "charge",
//!     with_validation(
//!         |e: &Event| e.payload()["amount"].as_f64().is_some_and(|a| a > 0.0).then_some(()).ok_or("amount must be positive"),
//!         with_retry(Retry::new(3), charge),
//!     ),
//! )?;
//! let ok = payments.send(&payments, Event::new("charge", json!({ "amount": 5 }))).await?;
//! assert_eq!(ok, json!({ "charged": 5 }));
//! let err = payments.send(&payments, Event::new("charge", json!({ "amount": -1 }))).await.unwrap_err();
//! assert!(err.to_string().contains("amount must be positive"));
//! # Ok(()) }
//! ```

use std::sync::Arc;

use crate::context::Context;
use crate::event::Event;
use crate::flow::{Flow, Handler, IntoFlow};
use crate::resilience::Retry;

/// Why [`with_validation`] refused an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid \"{event_type}\" event: {reason}")]
pub struct Invalid {
    /// The refused event's type.
    pub event_type: String,
    /// What the check said.
    pub reason: String,
}

/// Runs `check` on the event first: when it fails, the flow fails with
/// [`Invalid`] (the requester gets it) and `handler` never runs.
pub fn with_validation<S, H, C, R>(check: C, handler: H) -> impl Handler<S>
where
    S: Clone + Send + Sync + 'static,
    H: Handler<S>,
    C: Fn(&Event) -> Result<(), R> + Send + Sync + 'static,
    R: std::fmt::Display,
{
    let handler = Arc::new(handler);
    move |event: Event, cx: Context<S>| {
        let checked = check(&event).map_err(|reason| Invalid {
            event_type: event.event_type().to_owned(),
            reason: reason.to_string(),
        });
        let handler = handler.clone();
        async move {
            match checked {
                Ok(()) => handler.call(event, cx).await.into_flow(),
                Err(invalid) => Flow::fail(invalid),
            }
        }
    }
}

/// Runs `handler` again, with `retry`'s backoff, while its step fails (a
/// returned error or `Flow::fail`); the flow fails with the last error when
/// the attempts are used up. What the step continues with (`Flow::next`) is
/// not retried: only the wrapped step.
pub fn with_retry<S, H>(retry: Retry, handler: H) -> impl Handler<S>
where
    S: Clone + Send + Sync + 'static,
    H: Handler<S>,
{
    let handler = Arc::new(handler);
    move |event: Event, cx: Context<S>| {
        let handler = handler.clone();
        async move {
            let outcome = retry
                .run(|_attempt| {
                    let (handler, event, cx) = (handler.clone(), event.clone(), cx.clone());
                    async move {
                        match handler.call(event, cx).await.into_flow() {
                            Flow::Fail(error) => Err(error),
                            flow => Ok(flow),
                        }
                    }
                })
                .await;
            outcome.unwrap_or_else(Flow::Fail)
        }
    }
}

/// The context key under which [`parallel`] leaves its steps' results.
pub const PARALLEL_RESULTS: &str = "parallelResults";

/// Why [`parallel`] failed its flow.
#[derive(Debug, thiserror::Error)]
pub enum ParallelError {
    /// One of the steps failed.
    #[error("parallel step {index} failed: {source}")]
    StepFailed {
        /// The step's position in the list.
        index: usize,
        /// Its error.
        source: crate::error::BoxError,
    },
    /// One of the steps continued with another step or asked to run again:
    /// a parallel step must end with a value.
    #[error("parallel step {index} did not end with a value (it continued)")]
    NotEnded {
        /// The step's position in the list.
        index: usize,
    },
}

/// Runs `steps` at once on the same event (each with the flow's context)
/// and, when all have ended with a value, leaves their values in order as
/// a JSON array under [`PARALLEL_RESULTS`] in the context and continues
/// with `then`: the documentation's `parallel` helper. The first failure
/// fails the flow.
///
/// ```
/// use happen::prelude::*;
/// use happen::Step;
/// use happen::wrap::{parallel, PARALLEL_RESULTS};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> happen::Result<()> {
/// let happen = Happen::embedded();
/// let orders = happen.node("orders")?;
/// let check = |what: &'static str| Step::new(move |_e: Event, _cx: Context| async move { json!({ what: "ok" }) });
/// orders.on(
///     "process-order",
///     parallel(
///         vec![check("inventory"), check("payment"), check("shipping")],
///         Step::new(|_e: Event, cx: Context| async move { cx.get(PARALLEL_RESULTS).unwrap_or_default() }),
///     ),
/// )?;
/// let results = orders.send(&orders, Event::new("process-order", json!(null))).await?;
/// assert_eq!(results, json!([{ "inventory": "ok" }, { "payment": "ok" }, { "shipping": "ok" }]));
/// # Ok(()) }
/// ```
pub fn parallel<S>(steps: Vec<crate::flow::Step<S>>, then: crate::flow::Step<S>) -> impl Handler<S>
where
    S: Clone + Send + Sync + 'static,
{
    let steps = Arc::new(steps);
    move |event: Event, cx: Context<S>| {
        let (steps, then) = (steps.clone(), then.clone());
        async move {
            let runs = steps
                .iter()
                .map(|step| step.call(event.clone(), cx.clone()));
            let mut values = Vec::with_capacity(steps.len());
            for (index, flow) in futures::future::join_all(runs)
                .await
                .into_iter()
                .enumerate()
            {
                match flow {
                    Flow::Done(value) => values.push(value),
                    Flow::Fail(source) => {
                        return Flow::fail(ParallelError::StepFailed { index, source });
                    }
                    Flow::Next(_) | Flow::Again => {
                        return Flow::fail(ParallelError::NotEnded { index });
                    }
                }
            }
            cx.set(PARALLEL_RESULTS, serde_json::Value::Array(values));
            Flow::Next(then)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prelude::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn a_failing_step_is_retried_and_its_continuation_runs_once() {
        let happen = Happen::embedded();
        let node = happen.node("w").unwrap();
        let tries = Arc::new(AtomicU32::new(0));
        let after = Arc::new(AtomicU32::new(0));
        let (t, a) = (tries.clone(), after.clone());
        node.on(
            "job",
            with_retry(Retry::new(4), move |_e: Event, _cx: Context| {
                let (t, a) = (t.clone(), a.clone());
                async move {
                    if t.fetch_add(1, Ordering::Relaxed) < 2 {
                        return Flow::fail(std::io::Error::other("flaky"));
                    }
                    Flow::next(move |_e: Event, _cx: Context| {
                        let a = a.clone();
                        async move {
                            a.fetch_add(1, Ordering::Relaxed);
                            json!("done")
                        }
                    })
                }
            }),
        )
        .unwrap();
        assert_eq!(
            node.send(&node, Event::new("job", json!(null)))
                .await
                .unwrap(),
            json!("done")
        );
        assert_eq!(tries.load(Ordering::Relaxed), 3);
        assert_eq!(after.load(Ordering::Relaxed), 1);
        // Used up: the last error reaches the requester.
        tries.store(0, Ordering::Relaxed);
        let node2 = happen.node("w2").unwrap();
        node2
            .on(
                "job",
                with_retry(Retry::new(2), |_e: Event, _cx: Context| async {
                    Err::<Value, _>(std::io::Error::other("always"))
                }),
            )
            .unwrap();
        let err = node2
            .send(&node2, Event::new("job", json!(null)))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("always"), "{err}");
    }

    #[tokio::test]
    async fn a_failing_parallel_step_fails_the_flow_and_the_continuation_does_not_run() {
        use crate::flow::Step;
        let happen = Happen::embedded();
        let node = happen.node("p").unwrap();
        let ran = Arc::new(AtomicU32::new(0));
        let r = ran.clone();
        node.on(
            "go",
            parallel(
                vec![
                    Step::new(|_e: Event, _cx: Context| async { json!(1) }),
                    Step::new(|_e: Event, _cx: Context| async {
                        Err::<Value, _>(std::io::Error::other("no stock"))
                    }),
                ],
                Step::new(move |_e: Event, _cx: Context| {
                    r.fetch_add(1, Ordering::Relaxed);
                    async { json!("continued") }
                }),
            ),
        )
        .unwrap();
        let err = node
            .send(&node, Event::new("go", json!(null)))
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("parallel step 1 failed: no stock"),
            "{err}"
        );
        assert_eq!(ran.load(Ordering::Relaxed), 0);
    }
}

//! The Event Continuum: a handler is the first step of a flow, and every step
//! says what happens next by what it returns.
//!
//! A step is any async function or closure taking `(Event, Context)`. It
//! returns something that converts into a [`Flow`]:
//!
//! | the step returns            | the flow                                  |
//! |-----------------------------|-------------------------------------------|
//! | [`Flow::next`]`(step)`      | continues with `step`                     |
//! | [`Flow::again`]`()`         | runs the current step once more (loops)   |
//! | [`Flow::done`]`(value)`     | completes with `value` as its result      |
//! | a `serde_json::Value`       | completes with that value                 |
//! | `()`                        | completes with `null`                     |
//! | `Ok(x)`                     | as `x` would                              |
//! | `Err(e)`                    | fails: the requester receives the error   |
//!
//! ```
//! use happen::prelude::*;
//!
//! async fn validate(event: Event, cx: Context) -> Flow {
//!     if event.payload()["items"].as_array().is_none_or(|i| i.is_empty()) {
//!         return Flow::done(json!({ "success": false, "reason": "empty order" }));
//!     }
//!     cx.set("validated", true);
//!     Flow::next(charge)
//! }
//!
//! async fn charge(_event: Event, cx: Context) -> happen::Result<Value> {
//!     assert_eq!(cx.get("validated"), Some(json!(true)));
//!     Ok(json!({ "success": true }))
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> happen::Result<()> {
//! let happen = Happen::embedded();
//! let shop = happen.node("shop")?;
//! shop.on("create-order", validate)?;
//! let reply = shop
//!     .send(&shop, Event::new("create-order", json!({ "items": [1] })))
//!     .response()
//!     .await?;
//! assert_eq!(reply["success"], true);
//! # Ok(())
//! # }
//! ```
//!
//! A step that names itself (`Flow::next(this_step)`) needs a boxed future
//! type; write it with [`#[happen::step]`](crate::step) or use
//! [`Flow::again`].

use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde::Serialize;
use serde_json::Value;

use crate::context::Context;
use crate::error::{BoxError, HappenError};
use crate::event::Event;
use crate::transport::Responder;

/// What a step decided: continue, repeat, complete or fail.
#[must_use = "a Flow does nothing unless it is returned from a step"]
pub enum Flow {
    /// Continue the flow with another step.
    Next(Step),
    /// Run the current step again.
    Again,
    /// Complete the flow with a result value.
    Done(Value),
    /// End the flow with an error, reported to the requester.
    Fail(BoxError),
}

impl std::fmt::Debug for Flow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Flow::Next(_) => f.write_str("Flow::Next(..)"),
            Flow::Again => f.write_str("Flow::Again"),
            Flow::Done(v) => write!(f, "Flow::Done({v})"),
            Flow::Fail(e) => write!(f, "Flow::Fail({e})"),
        }
    }
}

impl Flow {
    /// Continue with `step` (an async fn or closure taking `(Event, Context)`).
    pub fn next(step: impl Handler) -> Flow {
        Flow::Next(Step::new(step))
    }

    /// Run the current step once more: the loop and retry patterns.
    ///
    /// ```
    /// use happen::prelude::*;
    ///
    /// async fn count_to_three(_e: Event, cx: Context) -> Flow {
    ///     let n = cx.get("n").and_then(|v| v.as_u64()).unwrap_or(0) + 1;
    ///     cx.set("n", n);
    ///     if n < 3 { Flow::again() } else { Flow::done(json!(n)) }
    /// }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> happen::Result<()> {
    /// let happen = Happen::embedded();
    /// let node = happen.node("counter")?;
    /// node.on("count", count_to_three)?;
    /// assert_eq!(node.send(&node, Event::new("count", json!(null))).await?, json!(3));
    /// # Ok(()) }
    /// ```
    pub fn again() -> Flow {
        Flow::Again
    }

    /// Complete the flow with `value` as its result.
    pub fn done(value: Value) -> Flow {
        Flow::Done(value)
    }

    /// Complete the flow with `value` serialized to JSON (failing the flow if
    /// it cannot be serialized).
    pub fn done_with<T: Serialize + ?Sized>(value: &T) -> Flow {
        match serde_json::to_value(value) {
            Ok(v) => Flow::Done(v),
            Err(e) => Flow::Fail(Box::new(e)),
        }
    }

    /// End the flow with an error.
    pub fn fail(error: impl Into<BoxError>) -> Flow {
        Flow::Fail(error.into())
    }
}

/// A step of a flow, type-erased so that steps of different types can follow
/// one another. Cloning is cheap.
#[derive(Clone)]
pub struct Step(Arc<dyn ErasedStep>);

impl std::fmt::Debug for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Step(..)")
    }
}

impl Step {
    /// Wraps a handler as a step.
    pub fn new(handler: impl Handler) -> Step {
        Step(Arc::new(Erased(handler)))
    }

    pub(crate) fn call(&self, event: Event, cx: Context) -> BoxFuture<'static, Flow> {
        self.0.call(event, cx)
    }
}

trait ErasedStep: Send + Sync + 'static {
    fn call(&self, event: Event, cx: Context) -> BoxFuture<'static, Flow>;
}

struct Erased<H>(H);

impl<H: Handler> ErasedStep for Erased<H> {
    fn call(&self, event: Event, cx: Context) -> BoxFuture<'static, Flow> {
        let fut = self.0.call(event, cx);
        Box::pin(async move { fut.await.into_flow() })
    }
}

/// A step of the Event Continuum: anything callable as
/// `async fn(Event, Context) -> impl IntoFlow`.
///
/// It is implemented for every such function and closure; you do not
/// implement it yourself.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be used as a Happen handler",
    label = "not a handler",
    note = "a handler is an async fn or closure `(Event, Context) -> impl Future<Output = R> + Send + 'static`, where R is Flow, serde_json::Value, (), or Result<R, E>",
    note = "a closure must be `move |event, cx| async move {{ .. }}`; a step that names itself needs #[happen::step] or Flow::again()"
)]
pub trait Handler: Send + Sync + 'static {
    /// What the step's future yields.
    type Output: IntoFlow;
    /// The step's future.
    type Future: Future<Output = Self::Output> + Send + 'static;
    /// Runs the step.
    fn call(&self, event: Event, cx: Context) -> Self::Future;
}

impl<F, Fut> Handler for F
where
    F: Fn(Event, Context) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: IntoFlow,
{
    type Output = Fut::Output;
    type Future = Fut;
    fn call(&self, event: Event, cx: Context) -> Fut {
        self(event, cx)
    }
}

/// Values a step may return; see the [module docs](self) for what each means.
#[diagnostic::on_unimplemented(
    message = "a Happen step cannot return `{Self}`",
    note = "return Flow, serde_json::Value (e.g. json!(..)), (), or Result<T, E> where T is one of these; use Flow::done_with(&value) for a Serialize type"
)]
pub trait IntoFlow {
    /// Converts the step's return value into a [`Flow`].
    fn into_flow(self) -> Flow;
}

impl IntoFlow for Flow {
    fn into_flow(self) -> Flow {
        self
    }
}

impl IntoFlow for Value {
    fn into_flow(self) -> Flow {
        Flow::Done(self)
    }
}

impl IntoFlow for () {
    fn into_flow(self) -> Flow {
        Flow::Done(Value::Null)
    }
}

impl IntoFlow for Step {
    fn into_flow(self) -> Flow {
        Flow::Next(self)
    }
}

impl<T: IntoFlow, E: Into<BoxError>> IntoFlow for Result<T, E> {
    fn into_flow(self) -> Flow {
        match self {
            Ok(t) => t.into_flow(),
            Err(e) => Flow::Fail(e.into()),
        }
    }
}

/// The event type of the event that carries a flow's result back to its
/// requester.
pub const RESPONSE_EVENT_TYPE: &str = "happen.response";

/// Runs one flow to its end and reports the outcome to the requester, if any.
///
/// The whole flow runs inside the causality scope of `event` and inside
/// `catch_unwind`, so a panicking step ends only its own flow.
pub(crate) async fn run(
    node: crate::Node,
    first: Step,
    event: Event,
    responder: Option<Responder>,
) {
    use futures::FutureExt;
    use std::panic::AssertUnwindSafe;

    let cx = Context::new(node.clone(), event.clone(), responder);
    let flow_cx = cx.clone();
    let step_event = event.clone();
    let steps = AssertUnwindSafe(async move {
        let mut step = first;
        let mut taken: u32 = 0;
        loop {
            match step.call(step_event.clone(), flow_cx.clone()).await {
                Flow::Next(next) => step = next,
                Flow::Again => {}
                Flow::Done(value) => return Ok(value),
                // Formatted here, inside catch_unwind: a Display that
                // panics is a panic of this flow.
                Flow::Fail(error) => return Err(error.to_string()),
            }
            taken = taken.wrapping_add(1);
            if taken % 64 == 0 {
                // A long loop of steps that never wait must not starve the
                // other flows sharing this thread.
                tokio::task::yield_now().await;
            }
        }
    });
    let outcome = crate::causality::scoped(event.clone(), steps.catch_unwind()).await;
    let result = match outcome {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(cause)) => Err(HappenError::HandlerFailed {
            node: node.id().to_owned(),
            event_type: event.event_type().to_owned(),
            cause,
        }),
        Err(panic) => Err(HappenError::HandlerPanicked {
            node: node.id().to_owned(),
            event_type: event.event_type().to_owned(),
            message: panic_message(panic.as_ref()),
        }),
    };
    if let Err(error) = &result {
        tracing::error!(
            node = node.id(),
            event_type = event.event_type(),
            event_id = event.id(),
            %error,
            "flow failed"
        );
    }
    // A fire-and-forget requester dropped its handle: building the response
    // event would be wasted work.
    if let Some(responder) = cx.take_responder().await.filter(|r| !r.is_abandoned()) {
        responder
            .finish(result.map(|value| {
                let mut response = Event::new(RESPONSE_EVENT_TYPE, value);
                crate::event::stamp(&mut response, node.shared_id(), Some(event.causal()));
                response
            }))
            .await;
    }
}

pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_owned()
    }
}

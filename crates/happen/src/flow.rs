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
//!
//! # Steps with nothing to wait for
//!
//! A closure whose work needs no waiting can do it in the call and return a
//! ready future ([`std::future::ready`]). It then borrows what it captured,
//! where an `async move` block would need its own clone of it (an `Arc`'s
//! two atomic operations) for every event. The work runs when the flow
//! starts its step, as it would in the block.
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use happen::prelude::*;
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> happen::Result<()> {
//! let happen = Happen::embedded();
//! let meter = happen.node("meter")?;
//! let seen = Arc::new(AtomicU64::new(0));
//! let counter = seen.clone();
//! meter.on("tick", move |_event: Event, _cx: Context| {
//!     let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
//!     std::future::ready(json!(n))
//! })?;
//! let reply = meter.send(&meter, Event::new("tick", json!({}))).response().await?;
//! assert_eq!(reply, json!(1));
//! assert_eq!(seen.load(Ordering::Relaxed), 1);
//! # Ok(())
//! # }
//! ```
//!
//! # Node-local values
//!
//! A node made with [`Node::with_local`](crate::Node::with_local) hands a
//! value of its choosing (a database pool, a client, an `Arc` of shared
//! data) to every step of every flow it runs, as `Context<S>`: the steps
//! read it with [`Context::local`], with no lookup that could fail. The types
//! follow: such steps take `Context<S>` and return `Flow<S>` (or any other
//! [`IntoFlow`] value). Everything without a local value uses `S = ()`, the
//! default, so `Context` and `Flow` are written without a parameter.
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use happen::prelude::*;
//!
//! #[derive(Default)]
//! struct Hits(AtomicU64);
//!
//! async fn count(_e: Event, cx: Context<Arc<Hits>>) -> Flow<Arc<Hits>> {
//!     cx.local().0.fetch_add(1, Ordering::Relaxed);
//!     Flow::next(report)
//! }
//!
//! async fn report(_e: Event, cx: Context<Arc<Hits>>) -> Value {
//!     json!(cx.local().0.load(Ordering::Relaxed))
//! }
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> happen::Result<()> {
//! let happen = Happen::embedded();
//! let counter = happen.node("counter")?.with_local(Arc::new(Hits::default()));
//! counter.on("hit", count)?;
//! counter.send(&counter, Event::new("hit", json!(null))).await?;
//! assert_eq!(counter.send(&counter, Event::new("hit", json!(null))).await?, json!(2));
//! assert_eq!(counter.local().0.load(Ordering::Relaxed), 2);
//! # Ok(()) }
//! ```

use std::future::Future;
use std::sync::Arc;
use tokio::time::Instant;

use futures::future::BoxFuture;
use serde::Serialize;
use serde_json::Value;

use crate::config::DeliveryMode;
use crate::context::{Context, Shared};
use crate::delivery::{Failure, Responder};
use crate::entry::{FlowStart, Typed};
use crate::error::{BoxError, Cause, HappenError};
use crate::event::Event;
use crate::node::Node;
use crate::observe::Finished;
use crate::stream::Outcome;

/// What a step decided: continue, repeat, complete or fail.
///
/// `S` is the type of the node-local value the steps see (see the
/// [module docs](self#node-local-values)); `()` unless the node has one.
#[must_use = "a Flow does nothing unless it is returned from a step"]
pub enum Flow<S = ()> {
    /// Continue the flow with another step.
    Next(Step<S>),
    /// Run the current step again.
    Again,
    /// Complete the flow with a result value.
    Done(Value),
    /// End the flow with an error, reported to the requester.
    Fail(BoxError),
}

impl<S> std::fmt::Debug for Flow<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Flow::Next(_) => f.write_str("Flow::Next(..)"),
            Flow::Again => f.write_str("Flow::Again"),
            Flow::Done(v) => write!(f, "Flow::Done({v})"),
            Flow::Fail(e) => write!(f, "Flow::Fail({e})"),
        }
    }
}

impl<S: Clone + Send + Sync + 'static> Flow<S> {
    /// Continue with `step` (an async fn or closure taking `(Event, Context<S>)`).
    pub fn next(step: impl Handler<S>) -> Flow<S> {
        Flow::Next(Step::new(step))
    }
}

impl<S> Flow<S> {
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
    pub fn again() -> Flow<S> {
        Flow::Again
    }

    /// Complete the flow with `value` as its result.
    pub fn done(value: Value) -> Flow<S> {
        Flow::Done(value)
    }

    /// Complete the flow with `value` serialized to JSON (failing the flow if
    /// it cannot be serialized).
    pub fn done_with<T: Serialize + ?Sized>(value: &T) -> Flow<S> {
        match serde_json::to_value(value) {
            Ok(v) => Flow::Done(v),
            Err(e) => Flow::Fail(Box::new(e)),
        }
    }

    /// End the flow with an error.
    pub fn fail(error: impl Into<BoxError>) -> Flow<S> {
        Flow::Fail(error.into())
    }
}

/// A step of a flow, type-erased so that steps of different types can follow
/// one another. Cloning is cheap.
pub struct Step<S = ()>(Arc<dyn ErasedStep<S>>);

impl<S> Clone for Step<S> {
    fn clone(&self) -> Self {
        Step(self.0.clone())
    }
}

impl<S> std::fmt::Debug for Step<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Step(..)")
    }
}

impl<S: Clone + Send + Sync + 'static> Step<S> {
    /// Wraps a handler as a step.
    pub fn new(handler: impl Handler<S>) -> Step<S> {
        Step(Arc::new(Erased(handler)))
    }

    pub(crate) fn call(&self, event: Event, cx: Context<S>) -> BoxFuture<'static, Flow<S>> {
        self.0.call(event, cx)
    }
}

trait ErasedStep<S>: Send + Sync + 'static {
    fn call(&self, event: Event, cx: Context<S>) -> BoxFuture<'static, Flow<S>>;
}

struct Erased<H>(H);

impl<S: 'static, H: Handler<S>> ErasedStep<S> for Erased<H> {
    fn call(&self, event: Event, cx: Context<S>) -> BoxFuture<'static, Flow<S>> {
        let fut = self.0.call(event, cx);
        Box::pin(async move { fut.await.into_flow() })
    }
}

/// A step of the Event Continuum: anything callable as
/// `async fn(Event, Context<S>) -> impl IntoFlow<S>`.
///
/// It is implemented for every such function and closure; you do not
/// implement it yourself.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be used as a Happen handler",
    label = "not a handler",
    note = "a handler is an async fn or closure `(Event, Context) -> impl Future<Output = R> + Send + 'static`, where R is Flow, serde_json::Value, (), or Result<R, E>",
    note = "a closure returns a future: `move |event, cx| async move {{ .. }}`, or std::future::ready(..) when nothing is awaited; a step that names itself needs #[happen::step] or Flow::again()",
    note = "on a node made with .with_local(value), steps take Context<S> and return Flow<S>, S being the value's type"
)]
pub trait Handler<S = ()>: Send + Sync + 'static {
    /// What the step's future yields.
    type Output: IntoFlow<S>;
    /// The step's future.
    type Future: Future<Output = Self::Output> + Send + 'static;
    /// Runs the step.
    fn call(&self, event: Event, cx: Context<S>) -> Self::Future;
}

impl<F, Fut, S> Handler<S> for F
where
    F: Fn(Event, Context<S>) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: IntoFlow<S>,
{
    type Output = Fut::Output;
    type Future = Fut;
    fn call(&self, event: Event, cx: Context<S>) -> Fut {
        self(event, cx)
    }
}

/// Values a step may return; see the [module docs](self) for what each means.
#[diagnostic::on_unimplemented(
    message = "a Happen step cannot return `{Self}`",
    note = "return Flow, serde_json::Value (e.g. json!(..)), (), or Result<T, E> where T is one of these; use Flow::done_with(&value) for a Serialize type"
)]
pub trait IntoFlow<S = ()> {
    /// Converts the step's return value into a [`Flow`].
    fn into_flow(self) -> Flow<S>;
}

impl<S> IntoFlow<S> for Flow<S> {
    fn into_flow(self) -> Flow<S> {
        self
    }
}

impl<S> IntoFlow<S> for Value {
    fn into_flow(self) -> Flow<S> {
        Flow::Done(self)
    }
}

impl<S> IntoFlow<S> for () {
    fn into_flow(self) -> Flow<S> {
        Flow::Done(Value::Null)
    }
}

impl<S> IntoFlow<S> for Step<S> {
    fn into_flow(self) -> Flow<S> {
        Flow::Next(self)
    }
}

impl<S, T: IntoFlow<S>, E: Into<BoxError>> IntoFlow<S> for Result<T, E> {
    fn into_flow(self) -> Flow<S> {
        match self {
            Ok(t) => t.into_flow(),
            Err(e) => Flow::Fail(e.into()),
        }
    }
}

/// The event type of the event that carries a flow's result back to its
/// requester.
pub const RESPONSE_EVENT_TYPE: &str = "happen.response";

/// How a flow's steps ended: a value, or the error with its text (formatted
/// inside the flow, so that a `Display` that panics is a panic of the flow).
type StepsOutcome = Result<Value, (String, BoxError)>;

/// The failure of a step that found no flow around it (a runner bug: the
/// runner polls steps only inside their flow's scope).
fn no_scope() -> (String, BoxError) {
    const WHY: &str = "a step ran outside its flow's scope";
    (WHY.to_owned(), WHY.into())
}

/// A step is a handler too (its future is already boxed).
impl<S: Clone + Send + Sync + 'static> Handler<S> for Step<S> {
    type Output = Flow<S>;
    type Future = BoxFuture<'static, Flow<S>>;
    fn call(&self, event: Event, cx: Context<S>) -> Self::Future {
        Step::call(self, event, cx)
    }
}

/// Runs the steps of one flow: the handler, then whatever it continues
/// with. The first call gets the flow's own event and context; clones are
/// made only when a further step follows.
async fn run_steps<S, H>(first: &H, event: Event, cx: Context<S>, local: &S) -> StepsOutcome
where
    S: Clone + Send + Sync + 'static,
    H: Handler<S>,
{
    let mut flow = first.call(event, cx).await.into_flow();
    // `None` until the handler hands over to another step.
    let mut step: Option<Step<S>> = None;
    let mut taken: u32 = 0;
    loop {
        match flow {
            Flow::Next(next) => step = Some(next),
            Flow::Again => {}
            Flow::Done(value) => return Ok(value),
            Flow::Fail(error) => return Err((error.to_string(), error)),
        }
        taken = taken.wrapping_add(1);
        if taken.is_multiple_of(64) {
            // A long loop of steps that never wait must not starve the
            // other flows sharing this thread.
            tokio::task::yield_now().await;
        }
        // The steps run inside their flow's scope, which holds its shared
        // part.
        let Some(shared) = crate::causality::current_flow() else {
            return Err(no_scope());
        };
        let event = shared.event().clone();
        let cx = Context::from_parts(shared, local.clone());
        flow = match &step {
            None => first.call(event, cx).await.into_flow(),
            Some(step) => step.call(event, cx).await,
        };
    }
}

/// Runs one flow to its end and reports the outcome to the requester, if
/// any; returns the error when the flow failed.
///
/// The steps run inside the causality scope of `event` and inside
/// `catch_unwind`, so a panicking step ends only its own flow.
pub(crate) async fn run<S, H>(start: FlowStart) -> Option<Failure>
where
    S: Clone + Send + Sync + 'static,
    H: Handler<S>,
{
    use futures::FutureExt;
    use std::panic::AssertUnwindSafe;

    let FlowStart {
        entry,
        node: core,
        event,
        received_at,
        responder,
        flow,
        slot,
    } = start;
    let Some(Typed { handler, local }) = entry.typed::<S, H>() else {
        // Not reached: an entry starts flows of its own types only.
        let error = HappenError::Config("a handler's flow started with another's types".into());
        return Some(Failure { error, responder });
    };
    let observed = core.observers().is_active();
    let started = observed.then(|| (Instant::now(), flow));
    let first = event.clone();
    let exactly_once = (core.limits().delivery.mode == DeliveryMode::ExactlyOnce).then_some(flow);
    let shared = Shared::new(Node::from_core(core), event, received_at, responder, slot);
    let cx = Context::from_parts(shared.clone(), local.clone());
    let span = crate::observe::flow_span(&shared);
    // The scope keeps the flow's shared part (the steps after the first
    // find it there) and gives it back at the end.
    let mut scope = crate::causality::FlowScope::new(shared, exactly_once);
    let outcome = {
        // Pinned where it is made: the steps' future is not moved again.
        let mut steps = std::pin::pin!(tracing::Instrument::instrument(
            AssertUnwindSafe(run_steps(handler, first, cx, local)).catch_unwind(),
            span,
        ));
        std::future::poll_fn(|cx| scope.poll(steps.as_mut(), cx)).await
    };
    let Some(shared) = scope.into_flow() else {
        // The thread's scope slot went away during a poll (thread exit):
        // the flow's shared part, with its responder, went with it.
        let error = HappenError::HandlerFailed {
            node: String::new(),
            event_type: String::new(),
            cause: no_scope().0,
            source: None,
        };
        return Some(Failure::new(error));
    };
    // A wait the flow handed on (or kept) counts no more: its slot frees.
    crate::node::Blocked::ended(&shared);
    // The rest is synchronous but for rare cases (an emit still holding the
    // responder, a stream consumer behind), which get a future of their own:
    // the flow's future stays small.
    match conclude(shared, outcome, observed, started) {
        Concluded::Done(error) => error,
        Concluded::Later(rest) => rest.await,
    }
}

/// What is left of a flow once its steps have ended.
enum Concluded {
    Done(Option<Failure>),
    Later(BoxFuture<'static, Option<Failure>>),
}

/// Reports how a flow's steps ended: to the requester, if any, and to the
/// observers; returns the error when the flow failed.
fn conclude(
    shared: Arc<Shared>,
    outcome: std::thread::Result<StepsOutcome>,
    observed: bool,
    started: Option<(Instant, u32)>,
) -> Concluded {
    if !observed && !shared.expects_response() && matches!(outcome, Ok(Ok(_))) {
        // Nobody to answer, nobody watching, nothing failed: nothing to do.
        Shared::recycle(shared);
        return Concluded::Done(None);
    }
    let (core, event) = (shared.core(), shared.event());
    let result = match outcome {
        Ok(Ok(value)) => Ok(value),
        Ok(Err((cause, error))) => Err(HappenError::HandlerFailed {
            node: core.id().to_string(),
            event_type: event.event_type().to_owned(),
            cause,
            source: Some(Cause::new(error)),
        }),
        Err(panic) => Err(HappenError::HandlerPanicked {
            node: core.id().to_string(),
            event_type: event.event_type().to_owned(),
            message: crate::error::panic_message(panic.as_ref()),
        }),
    };
    let error = match &result {
        Ok(_) => None,
        Err(error) => {
            tracing::error!(
                node = %core.id(),
                event_type = event.event_type(),
                event_id = event.id(),
                %error,
                "flow failed"
            );
            if let Some(runtime) = core.runtime_inner() {
                runtime.transport().local().tally().failed();
            }
            Some(error.clone())
        }
    };
    let responder = match shared.try_take_responder() {
        Ok(responder) => responder,
        Err(()) => {
            // An emit still has it: wait for that emit, then answer.
            return Concluded::Later(Box::pin(async move {
                let responder = shared.take_responder().await;
                let (rest, kept) = answer(&shared, responder, result, observed, started, &error);
                Shared::recycle(shared);
                if let Some(rest) = rest {
                    rest.await;
                }
                failure(error, kept)
            }));
        }
    };
    let (rest, kept) = answer(&shared, responder, result, observed, started, &error);
    // The answer's rest, if any, holds what it needs of the flow.
    Shared::recycle(shared);
    match rest {
        None => Concluded::Done(failure(error, kept)),
        Some(rest) => Concluded::Later(Box::pin(async move {
            rest.await;
            failure(error, kept)
        })),
    }
}

fn failure(error: Option<HappenError>, responder: Option<Responder>) -> Option<Failure> {
    error.map(|error| Failure { error, responder })
}

/// Sends the flow's result to its requester (unless it stopped waiting, or
/// the flow failed and its event will be retried: then the requester comes
/// back, second; or `Elsewhere` once items went out, as the failure was
/// the requester's final answer and a retry's items must go nowhere) and
/// tells the observers how the flow ended. A stream whose consumer is
/// behind gives back the future that waits to send its end.
fn answer(
    shared: &Shared,
    responder: Option<Responder>,
    result: Result<Value, HappenError>,
    observed: bool,
    started: Option<(Instant, u32)>,
    error: &Option<HappenError>,
) -> (Option<BoxFuture<'static, ()>>, Option<Responder>) {
    let (core, event) = (shared.core(), shared.event());
    // A fire-and-forget requester dropped its handle: the outcome would be
    // wasted work.
    let responder = responder.filter(|r| r.keeps_answer() || !r.is_abandoned());
    let answered = responder.is_some();
    let (mut kept, mut over) = (None, false);
    let rest = match responder {
        // Nobody watches: the requester builds the response event only if
        // it asks for one.
        Some(Responder::Local(reply)) if !observed => {
            let _ = reply.send(Outcome::Value(result));
            None
        }
        Some(responder) => {
            let outcome = result.and_then(|value| core.answer(value, event));
            let failed = outcome.is_err();
            match responder.conclude(outcome) {
                Ok(rest) => (over = failed && shared.streamed(), rest).1,
                Err(retried) => {
                    kept = retried.responder;
                    None
                }
            }
        }
        None => None,
    };
    if let Some((started, flow)) = started {
        core.observers().finished(
            core.id(),
            event,
            &Finished {
                error: error.as_ref(),
                elapsed: started.elapsed(),
                answered: answered && kept.is_none(),
                flow,
            },
        );
    }
    (
        rest,
        if over {
            Some(Responder::Elsewhere)
        } else {
            kept
        },
    )
}

//! Requests run by their requester ("claimed") in one process: ordinary
//! and zero requests, their order, their exclusion, their causal scope,
//! and the shutdown's wait for them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use happen::prelude::*;
use happen::zero::{ZeroNext, ZeroWriter};
use happen::{Happen, Step};

/// A zero request to a node of this process, next in its zero lane, runs
/// in the requester's task ...
#[tokio::test(flavor = "current_thread")]
async fn a_zero_request_runs_in_the_requesters_task() -> happen::Result<()> {
    let happen = Happen::embedded();
    let (a, b) = (happen.node("a")?, happen.node("b")?);
    b.zero("where", |_event, _cx| {
        Ok(ZeroNext::Value(json!(format!(
            "{:?}",
            tokio::task::try_id()
        ))))
    })?;
    let here = tokio::spawn(async move {
        let ran_in = a.zero_send(&b, ZeroWriter::new("where")).await?;
        Ok::<_, HappenError>((
            ran_in.into_value(),
            json!(format!("{:?}", tokio::task::try_id())),
        ))
    });
    let (ran_in, requester) = here.await.expect("the requester")?;
    assert_eq!(ran_in, requester);
    Ok(())
}

/// ... but never while the lane's task runs a handler: a node runs its
/// zero handlers one at a time, claimed or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_request_waits_while_the_lane_runs_a_handler() -> happen::Result<()> {
    let happen = Happen::embedded();
    let (a, b) = (happen.node("a")?, happen.node("b")?);
    let inside = Arc::new(AtomicBool::new(false));
    let release = Arc::new(AtomicBool::new(false));
    let (slow_inside, slow_release) = (inside.clone(), release.clone());
    b.zero("slow", move |_event, _cx| {
        slow_inside.store(true, Ordering::SeqCst);
        let until = Instant::now() + Duration::from_secs(5);
        while !slow_release.load(Ordering::SeqCst) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
        slow_inside.store(false, Ordering::SeqCst);
        Ok(ZeroNext::Done)
    })?;
    let fast_inside = inside.clone();
    b.zero("fast", move |_event, _cx| {
        Ok(ZeroNext::Value(
            json!({ "overlapped": fast_inside.load(Ordering::SeqCst) }),
        ))
    })?;
    a.zero_tell(&b, ZeroWriter::new("slow"))?;
    until(&inside).await;
    let requester = a.clone();
    let target = b.clone();
    let fast =
        tokio::spawn(async move { requester.zero_send(&target, ZeroWriter::new("fast")).await });
    // Time enough for the request to run, were it allowed to.
    tokio::time::sleep(Duration::from_millis(100)).await;
    release.store(true, Ordering::SeqCst);
    let answer = fast.await.expect("the requester")?.into_value();
    assert_eq!(answer, json!({ "overlapped": false }));
    Ok(())
}

/// Runs `request` on a new thread in a runtime of its own; its output
/// and the thread's id.
fn on_a_thread_of_its_own<T: Send + 'static>(
    request: impl std::future::Future<Output = T> + Send + 'static,
) -> std::thread::JoinHandle<(T, String)> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let output = runtime.block_on(request);
        (output, format!("{:?}", std::thread::current().id()))
    })
}

/// Waits until `flag` is set, blocking the thread, so that no task of a
/// current-thread runtime runs meanwhile (at most 10 s).
fn block_until(flag: &AtomicBool) {
    let limit = Instant::now() + Duration::from_secs(10);
    while !flag.load(Ordering::SeqCst) {
        assert!(Instant::now() < limit, "the flag was never set");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Waits until `flag` is set, letting the runtime's other tasks run.
async fn until(flag: &AtomicBool) {
    while !flag.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A handler's body that takes 200 ms without awaiting.
#[derive(Clone, Default)]
struct Slow {
    inside: Arc<AtomicBool>,
    done: Arc<AtomicBool>,
}

impl Slow {
    /// Runs the body; the id of the thread it ran on.
    fn run(&self) -> serde_json::Value {
        self.inside.store(true, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(200));
        self.done.store(true, Ordering::SeqCst);
        serde_json::json!(format!("{:?}", std::thread::current().id()))
    }

    /// Shuts `happen` down once the body runs, checks that the shutdown
    /// waited for it, and checks that the requester's thread ran it. The
    /// wait for the body blocks this (current-thread) runtime, so that the
    /// task woken for the event cannot take it before the requester.
    async fn shut_down_while_running(
        &self,
        happen: &Happen,
        requester: std::thread::JoinHandle<(happen::Result<serde_json::Value>, String)>,
    ) -> happen::Result<()> {
        block_until(&self.inside);
        happen.shutdown().await;
        assert!(
            self.done.load(Ordering::SeqCst),
            "the shutdown returned while the handler ran"
        );
        let (answer, thread) = requester.join().expect("the requester");
        assert_eq!(
            answer?,
            serde_json::json!(thread),
            "the requester ran the handler"
        );
        Ok(())
    }
}

/// A shutdown waits for a zero request its requester claimed before the
/// shutdown began (it runs in the requester's task, which the runtime does
/// not track). The requester is a thread of its own, so that the lane's
/// task is not queued behind it on a worker of the runtime.
#[tokio::test(flavor = "current_thread")]
async fn shutdown_waits_for_a_claimed_zero_request() -> happen::Result<()> {
    let happen = Happen::embedded();
    let (a, b) = (happen.node("a")?, happen.node("b")?);
    let slow = Slow::default();
    let body = slow.clone();
    b.zero("slow", move |_event, _cx| Ok(ZeroNext::Value(body.run())))?;
    let requester = on_a_thread_of_its_own(async move {
        let answer = a.zero_send(&b, ZeroWriter::new("slow")).await;
        answer.map(|answer| answer.into_value())
    });
    slow.shut_down_while_running(&happen, requester).await
}

/// The same for an ordinary request claimed by its requester.
#[tokio::test(flavor = "current_thread")]
async fn shutdown_waits_for_a_claimed_request() -> happen::Result<()> {
    let happen = Happen::embedded();
    let (a, b) = (happen.node("a")?, happen.node("b")?);
    let slow = Slow::default();
    let body = slow.clone();
    // No await: the flow completes in the task that runs it.
    b.on("slow", move |_e: Event, _cx: Context| {
        let value = body.run();
        async move { value }
    })?;
    let requester =
        on_a_thread_of_its_own(async move { a.send(&b, Event::new("slow", json!(null))).await });
    slow.shut_down_while_running(&happen, requester).await
}

/// A zero handler claimed by a requester that continues in an ordinary
/// step: the shutdown waits for the step's flow too, which starts only when
/// the handler returns (after the runtime's tasks were first waited for).
#[tokio::test(flavor = "current_thread")]
async fn shutdown_waits_for_the_step_of_a_claimed_zero_request() -> happen::Result<()> {
    let happen = Happen::embedded();
    let (a, b) = (happen.node("a")?, happen.node("b")?);
    let slow = Slow::default();
    let (body, step_done) = (slow.clone(), Arc::new(AtomicBool::new(false)));
    let flag = step_done.clone();
    b.zero("slow", move |_event, _cx| {
        let thread = body.run();
        let flag = flag.clone();
        Ok(ZeroNext::Then(Step::new(move |_e: Event, _cx: Context| {
            let (flag, thread) = (flag.clone(), thread.clone());
            async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                flag.store(true, Ordering::SeqCst);
                thread
            }
        })))
    })?;
    let requester = on_a_thread_of_its_own(async move {
        let answer = a.zero_send(&b, ZeroWriter::new("slow")).await;
        answer.map(|answer| answer.into_value())
    });
    slow.shut_down_while_running(&happen, requester).await?;
    assert!(
        step_done.load(Ordering::SeqCst),
        "the shutdown returned while the step ran"
    );
    Ok(())
}

/// An error whose `Display` panics.
#[derive(Debug)]
struct Unprintable;

impl std::fmt::Display for Unprintable {
    fn fmt(&self, _f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        panic!("this error cannot be shown")
    }
}

impl std::error::Error for Unprintable {}

/// A zero handler's error is the handler's code, its `Display` included:
/// a panic there is the handler's panic, and the lane goes on (it used to
/// end the lane's task with the lane marked busy, and a shutdown then
/// waited forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_showing_a_zero_handlers_error_stops_nothing() -> happen::Result<()> {
    let happen = Happen::embedded();
    let a = happen.node_with("a", NodeConfig::new().timeout(Duration::from_secs(2)))?;
    let b = happen.node("b")?;
    b.zero("bad", |_event, _cx| {
        Err(Box::new(Unprintable) as happen::BoxError)
    })?;
    b.zero("ok", |_event, _cx| Ok(ZeroNext::Value(json!("fine"))))?;
    let error = a
        .zero_send(&b, ZeroWriter::new("bad"))
        .await
        .expect_err("the handler failed");
    assert!(
        matches!(error, HappenError::HandlerPanicked { .. }),
        "{error:?}"
    );
    // The same through the lane's task: a tell, then a request behind it.
    a.zero_tell(&b, ZeroWriter::new("bad"))?;
    let answer = a.zero_send(&b, ZeroWriter::new("ok")).await?;
    assert_eq!(answer.into_value(), json!("fine"));
    assert!(
        happen.shutdown_within(Duration::from_secs(5)).await,
        "the shutdown finished"
    );
    Ok(())
}

/// A claimed zero handler runs outside the requester's flow: an ordinary
/// event it sends is a root event of its node, as when the lane's task
/// runs it, not a child of the requester's event.
#[tokio::test(flavor = "current_thread")]
async fn a_claimed_zero_handler_is_not_in_the_requesters_flow() -> happen::Result<()> {
    let happen = Happen::embedded();
    let (a, b, c) = (happen.node("a")?, happen.node("b")?, happen.node("c")?);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    c.on("note", move |event: Event, _cx: Context| {
        let causal = event.causal();
        let path: Vec<String> = causal.path.iter().map(|id| id.to_string()).collect();
        let seen = (causal.causation_id.clone(), path);
        let _ = tx.send(seen);
        async {}
    })?;
    let to_c = c.clone();
    b.zero("z", move |_event, cx| {
        cx.node().tell(&to_c, Event::new("note", json!(null)))?;
        Ok(ZeroNext::Done)
    })?;
    let to_b = b.clone();
    a.on("go", move |_event: Event, cx: Context| {
        let to_b = to_b.clone();
        async move {
            cx.node()
                .zero_send(&to_b, ZeroWriter::new("z"))
                .await
                .map(|_| ())
        }
    })?;
    // Claimed from a flow of a.
    a.send(&a, Event::new("go", json!(null))).await?;
    let (cause, path) = rx.recv().await.expect("the note");
    assert_eq!(cause, None, "a root event");
    assert_eq!(path, ["b"]);
    Ok(())
}

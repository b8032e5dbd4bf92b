//! Error events and a supervisor, as the documentation's Error Handling and
//! Advanced Patterns chapters describe them: a failing worker reports its
//! failures as first-class events (`worker.error`), a monitor observes every
//! `*.error` event, and a supervisor restarts the worker (a fresh node with
//! the same id and a clean slate) once it has failed three times. Only the
//! running worker's errors count: one that was replaced may still report
//! failures of jobs it took before, and they must not restart its healthy
//! successor.
//!
//! ```text
//! cargo run --example supervisor
//! ```
//!
//! It exits non-zero if the supervisor did not restart the worker, or if the
//! restarted worker does not serve (scripts/test runs it).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use happen::prelude::*;

/// Errors in a row that make the supervisor restart the worker.
const RESTART_AFTER: u64 = 3;

/// Starts the worker: it has a corrupted cache (its node-local value) and
/// fails every job until restarted with a fresh one. Each failure becomes an
/// error event for whoever watches.
fn start_worker(happen: &Happen, generation: u32) -> happen::Result<()> {
    let corrupted = generation == 1;
    let worker = happen.node("worker")?.with_local(corrupted);
    worker.on("job", move |e: Event, cx: Context<bool>| async move {
        if *cx.local() {
            let error = "the cache is corrupted";
            // Errors are events too: anyone may react to them.
            cx.node().broadcast(Event::new(
                "worker.error",
                json!({ "job": e.payload()["job"], "error": error, "generation": generation }),
            ))?;
            return Ok::<_, HappenError>(json!({ "ok": false, "error": error }));
        }
        Ok(json!({ "ok": true, "job": e.payload()["job"], "generation": generation }))
    })?;
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> happen::Result<()> {
    let happen = Happen::embedded();
    let generation = Arc::new(AtomicU32::new(1));
    start_worker(&happen, 1)?;

    // A monitor sees every error event of the system, whatever its source.
    let seen = Arc::new(AtomicU32::new(0));
    let s = seen.clone();
    happen.node("monitor")?.on(
        |t: &str| t.ends_with(".error"),
        move |e: Event, _cx: Context| {
            s.fetch_add(1, Ordering::Relaxed);
            println!(
                "monitor: {} from {}: {}",
                e.event_type(),
                e.causal().sender,
                e.payload()["error"]
            );
            async {}
        },
    )?;

    // The supervisor counts errors per service in its state and restarts
    // the worker at the threshold.
    // One error at a time: two at the threshold must not both restart.
    let supervisor = happen.node_with("supervisor", NodeConfig::new().max_concurrent(1))?;
    let restarted = Arc::new(tokio::sync::Notify::new());
    let (h, g, r) = (happen.clone(), generation.clone(), restarted.clone());
    supervisor.on("worker.error", move |e: Event, cx: Context| {
        let (happen, generation, restarted) = (h.clone(), g.clone(), r.clone());
        async move {
            let current = u64::from(generation.load(Ordering::Relaxed));
            if e.payload()["generation"].as_u64() != Some(current) {
                // A replaced worker's: noted, not counted.
                cx.node()
                    .state()
                    .set(|mut s| {
                        s["worker"]["ignored"] =
                            json!(s["worker"]["ignored"].as_u64().unwrap_or(0) + 1);
                        s
                    })
                    .await?;
                return Ok::<_, HappenError>(());
            }
            let state = cx
                .node()
                .state()
                .set(|mut s| {
                    let n = s["worker"]["errors"].as_u64().unwrap_or(0) + 1;
                    s["worker"]["errors"] = json!(n);
                    s
                })
                .await?;
            if state["worker"]["errors"].as_u64() < Some(RESTART_AFTER) {
                return Ok(());
            }
            // Restart: the old node finishes what it runs and goes; a new
            // one takes its id with a clean slate.
            if let Some(old) = happen.existing_node("worker") {
                old.shutdown().await;
            }
            let next = generation.fetch_add(1, Ordering::Relaxed) + 1;
            start_worker(&happen, next)?;
            cx.node()
                .state()
                .set(|mut s| {
                    s["worker"]["errors"] = json!(0);
                    s["worker"]["restarts"] =
                        json!(s["worker"]["restarts"].as_u64().unwrap_or(0) + 1);
                    s
                })
                .await?;
            println!("supervisor: restarted the worker (generation {next})");
            restarted.notify_one();
            Ok(())
        }
    })?;

    let client = happen.node("client")?;
    for job in 1..=3 {
        let answer = client
            .send("worker", Event::new("job", json!({ "job": job })))
            .await?;
        println!("job {job}: {answer}");
        assert_eq!(answer["ok"], false);
    }
    restarted.notified().await;
    let answer = client
        .send("worker", Event::new("job", json!({ "job": 4 })))
        .await?;
    println!("job 4: {answer}");
    assert_eq!(answer, json!({ "ok": true, "job": 4, "generation": 2 }));
    // Late reports of the replaced worker (jobs it took before the restart)
    // do not restart its healthy successor.
    for job in 5..=7 {
        client.broadcast(Event::new(
            "worker.error",
            json!({ "job": job, "error": "the cache is corrupted", "generation": 1 }),
        ))?;
    }
    let supervisor_state = happen.state_of("supervisor")?;
    let state = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            let state = supervisor_state.get().await?;
            if state["worker"]["ignored"] == 3 {
                return Ok::<_, HappenError>(state);
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the supervisor took the late reports")?;
    println!("supervisor: {state}");
    assert_eq!(state["worker"]["restarts"], 1, "{state}");
    assert_eq!(
        seen.load(Ordering::Relaxed),
        6,
        "the monitor saw each error event"
    );
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

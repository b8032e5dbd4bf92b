//! Helpers shared by the benchmark binaries (`mod support;` in each).

#![allow(dead_code)] // each benchmark uses the part it needs

use std::future::Future;

use tokio::runtime::Runtime;

/// Runs `fut` as a spawned task on `rt` (so that on a multi-thread runtime it
/// runs on a worker thread) and returns its output.
pub fn run_on<F>(rt: &Runtime, fut: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    rt.block_on(async { tokio::spawn(fut).await.expect("benchmark task panicked") })
}

/// Events per second, for tables.
pub fn fmt_rate(eps: f64) -> String {
    if eps >= 1e6 {
        format!("{:.2} M ev/s", eps / 1e6)
    } else {
        format!("{:.0} k ev/s", eps / 1e3)
    }
}

/// Whether `HAPPEN_BENCH_ONLY` (a substring of "runtime / benchmark") selects
/// this benchmark; everything is selected when it is unset.
pub fn selected(runtime: &str, benchmark: &str) -> bool {
    std::env::var("HAPPEN_BENCH_ONLY").map_or(true, |only| {
        format!("{runtime} / {benchmark}").contains(only.as_str())
    })
}

/// A positive number from the environment, or `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .filter(|&v| v > 0)
        .unwrap_or(default)
}

/// The median of some timings.
pub fn median(mut samples: Vec<std::time::Duration>) -> std::time::Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// A current-thread tokio runtime with timers and I/O.
pub fn current_thread_runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

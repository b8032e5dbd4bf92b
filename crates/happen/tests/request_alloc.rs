//! Awaiting a [`Sent`](happen::Sent) directly, the way the documentation
//! writes a request, costs no more heap allocations than
//! [`Sent::response`](happen::Sent::response): the handle's future is a
//! named type, not a boxed one. A counting global allocator sees every
//! allocation of this test binary.

use std::alloc::System;

use happen::prelude::*;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const REQUESTS: u64 = 1000;

/// Heap allocations of `REQUESTS` requests made by `request`.
async fn allocations_of<F, Fut>(request: F) -> u64
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = happen::Result<Value>>,
{
    let region = Region::new(GLOBAL);
    for i in 0..REQUESTS {
        assert_eq!(request(i).await.unwrap(), json!(i));
    }
    let change = region.change();
    (change.allocations + change.reallocations) as u64
}

#[tokio::test(flavor = "current_thread")]
async fn awaiting_a_sent_allocates_no_more_than_response() {
    let happen = Happen::embedded();
    let client = happen.node("client").unwrap();
    let echo = happen.node("echo").unwrap();
    echo.on("ping", |e: Event, _cx: Context| async move {
        e.payload().clone()
    })
    .unwrap();
    let ping = |i: u64| Event::new("ping", json!(i));

    // Warm-up: whatever grows once has grown.
    for i in 0..REQUESTS {
        client.send(&echo, ping(i)).await.unwrap();
        client.send(&echo, ping(i)).response().await.unwrap();
    }
    let through_response = allocations_of(|i| client.send(&echo, ping(i)).response()).await;
    let awaited = allocations_of(|i| client.send(&echo, ping(i)).into_future()).await;
    println!(
        "allocations per request: awaited {:.2}, through response() {:.2}",
        awaited as f64 / REQUESTS as f64,
        through_response as f64 / REQUESTS as f64
    );
    // A boxed future would add one per request; a few spare for anything
    // the runtime grows on its own.
    assert!(
        awaited <= through_response + 10,
        "awaiting a Sent allocated {awaited} times in {REQUESTS} requests, response() {through_response}"
    );
    happen.shutdown().await;
}

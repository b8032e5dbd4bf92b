//! Awaiting a [`Sent`](happen::Sent) directly, the way the documentation
//! writes a request, costs no more heap allocations than
//! [`Sent::response`](happen::Sent::response): the handle's future is a
//! named type, not a boxed one; and a flow that ends inline leaves its box
//! to the next flow of its handler, and its shared part to the thread's next
//! flow, so that a request allocates its event and its reply channel only.
//! A counting global allocator sees every allocation of this test binary.

use std::alloc::System;

use happen::prelude::*;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const REQUESTS: u64 = 1000;

/// The allocator counts every thread's allocations: one test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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
    let _serial = SERIAL.lock().await;
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

/// A flow that ends where it started leaves its box to the thread's next
/// flow of the same handler: requests to one handler allocate one box less
/// each than requests that alternate between two handlers.
#[tokio::test(flavor = "current_thread")]
async fn flows_of_one_handler_reuse_their_box() {
    let _serial = SERIAL.lock().await;
    let happen = Happen::embedded();
    let client = happen.node("client").unwrap();
    let echoes: Vec<Node> = ["echo-a", "echo-b"]
        .into_iter()
        .map(|name| {
            let node = happen.node(name).unwrap();
            node.on("ping", |e: Event, _cx: Context| async move {
                e.payload().clone()
            })
            .unwrap();
            node
        })
        .collect();
    let ping = |i: u64| Event::new("ping", json!(i));
    for i in 0..REQUESTS {
        client.send(&echoes[0], ping(i)).await.unwrap();
        client.send(&echoes[1], ping(i)).await.unwrap();
    }
    let one = allocations_of(|i| client.send(&echoes[0], ping(i)).into_future()).await;
    let alternating = allocations_of(|i| {
        client
            .send(&echoes[(i % 2) as usize], ping(i))
            .into_future()
    })
    .await;
    println!(
        "allocations per request: one handler {:.2}, alternating {:.2}",
        one as f64 / REQUESTS as f64,
        alternating as f64 / REQUESTS as f64
    );
    assert!(
        one + REQUESTS * 9 / 10 <= alternating,
        "one handler: {one} allocations in {REQUESTS} requests; alternating: {alternating}"
    );
    happen.shutdown().await;
}

/// A request to a handler that ends inline allocates the event and the
/// reply channel, nothing else: the flow's box and its shared part (the
/// context's node, event, responder and values) are those the thread's
/// last flow left.
#[tokio::test(flavor = "current_thread")]
async fn a_request_allocates_its_event_and_reply_channel_only() {
    let _serial = SERIAL.lock().await;
    let happen = Happen::embedded();
    let client = happen.node("client").unwrap();
    let echo = happen.node("echo").unwrap();
    echo.on("ping", |e: Event, cx: Context| async move {
        assert!(cx.expects_response());
        e.payload().clone()
    })
    .unwrap();
    let ping = |i: u64| Event::new("ping", json!(i));
    for i in 0..REQUESTS {
        client.send(&echo, ping(i)).await.unwrap();
    }
    let allocations = allocations_of(|i| client.send(&echo, ping(i)).into_future()).await;
    println!(
        "allocations per request: {:.2}",
        allocations as f64 / REQUESTS as f64
    );
    // Two per request, and a few dozen spare for what the runtime grows on
    // its own (one more per request, a part not reused, would be 3,000).
    assert!(
        allocations <= 2 * REQUESTS + REQUESTS / 20,
        "{allocations} allocations in {REQUESTS} requests"
    );
    happen.shutdown().await;
}

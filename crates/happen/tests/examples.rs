//! The pattern examples, run on both runtimes: each example's `run` against
//! an embedded runtime and against a NATS server, checked by the example's
//! own `check` (the same assertions its `main` makes).

use happen::prelude::*;
use happen::trace::Recorder;
use happen_test::NatsServer;

#[allow(dead_code)]
#[path = "../examples/saga.rs"]
mod saga;

#[allow(dead_code)]
#[path = "../examples/circuit_breaker.rs"]
mod circuit_breaker;

#[allow(dead_code)]
#[path = "../examples/cqrs.rs"]
mod cqrs;

#[allow(dead_code)]
#[path = "../examples/sensor_zero.rs"]
mod sensor_zero;

fn recording() -> HappenConfig {
    HappenConfig::default().recorder(Recorder::in_memory(10_000))
}

async fn over_nats(server: &NatsServer, config: HappenConfig) -> Happen {
    Happen::connect_with(happen::NatsConfig::new(server.url()), config)
        .await
        .expect("connects to the test server")
}

#[tokio::test]
async fn the_saga_undoes_completed_steps_embedded() {
    let happen = Happen::embedded_with(recording());
    let run = saga::run(&happen).await.unwrap();
    assert!(!run.failed_effects.is_empty(), "the recorder saw the saga");
    saga::check(&run);
}

#[tokio::test]
async fn the_saga_undoes_completed_steps_over_nats() {
    let server = NatsServer::start().unwrap();
    let happen = over_nats(&server, recording()).await;
    let run = saga::run(&happen).await.unwrap();
    assert!(!run.failed_effects.is_empty(), "the recorder saw the saga");
    saga::check(&run);
    happen.shutdown().await;
}

#[tokio::test]
async fn the_circuit_opens_and_closes_embedded() {
    let happen = Happen::embedded();
    circuit_breaker::check(&circuit_breaker::run(&happen).await.unwrap());
}

#[tokio::test]
async fn the_circuit_opens_and_closes_over_nats() {
    let server = NatsServer::start().unwrap();
    let happen = over_nats(&server, HappenConfig::default()).await;
    circuit_breaker::check(&circuit_breaker::run(&happen).await.unwrap());
    happen.shutdown().await;
}

#[tokio::test]
async fn cqrs_queries_follow_the_commands_embedded() {
    let happen = Happen::embedded();
    cqrs::check(&cqrs::run(&happen).await.unwrap());
}

#[tokio::test]
async fn cqrs_queries_follow_the_commands_over_nats() {
    let server = NatsServer::start().unwrap();
    let happen = over_nats(&server, HappenConfig::default()).await;
    cqrs::check(&cqrs::run(&happen).await.unwrap());
    happen.shutdown().await;
}

#[tokio::test]
async fn zero_sensor_batches_are_processed_embedded() {
    let happen = Happen::embedded();
    sensor_zero::check(&sensor_zero::run(&happen).await.unwrap());
}

#[tokio::test]
async fn zero_sensor_batches_are_processed_over_nats() {
    let server = NatsServer::start().unwrap();
    // Every event through the server, so that the zero buffers travel as
    // NATS messages.
    let happen = Happen::connect_with(
        happen::NatsConfig::new(server.url()).co_located(false),
        HappenConfig::default(),
    )
    .await
    .unwrap();
    sensor_zero::check(&sensor_zero::run(&happen).await.unwrap());
    happen.shutdown().await;
}

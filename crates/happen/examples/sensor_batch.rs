//! Confluence fan-in: high-volume sensor readings sent in explicit batches of
//! 50, handled by one handler that also accepts single readings.
//!
//! Run it with `cargo run --example sensor_batch`.

use happen::prelude::*;

#[tokio::main(flavor = "current_thread")]
async fn main() -> happen::Result<()> {
    let happen = Happen::embedded();
    let sensors = happen.node("sensor-gateway")?;
    let telemetry = happen.node("telemetry-processor")?;

    telemetry.on("sensor-reading", |event: Event, cx: Context| async move {
        // One handler for both: a batch lists its members, a single event is
        // a list of one.
        let values: Vec<f64> = event
            .events()
            .iter()
            .filter_map(|e| e.payload()["value"].as_f64())
            .collect();
        let average = values.iter().sum::<f64>() / values.len().max(1) as f64;
        if let Some(batch) = cx.batch() {
            let first = &batch[0];
            println!(
                "batch of {:>2} readings (first {} from {}), average {average:6.2}",
                batch.len(),
                &first.id()[24..],
                first.payload()["sensorId"].as_str().unwrap_or("?"),
            );
        } else {
            println!("single reading, value {average:6.2}");
        }
        json!({ "processed": values.len() })
    })?;

    // 1000 readings from 10 sensors, sent as explicit batches of 50.
    let readings: Vec<Event> = (0..1000)
        .map(|i| {
            Event::new(
                "sensor-reading",
                json!({ "sensorId": format!("sensor-{}", i % 10), "value": ((i * 37) % 100) as f64 }),
            )
        })
        .collect();
    let (mut processed, mut runs) = (0, 0);
    for chunk in readings.chunks(50) {
        let reply = sensors
            .send(&telemetry, Event::batch(chunk.to_vec())?)
            .await?;
        processed += reply["processed"].as_u64().unwrap_or(0);
        runs += 1;
    }
    let single = sensors
        .send(
            &telemetry,
            Event::new(
                "sensor-reading",
                json!({ "sensorId": "sensor-0", "value": 42.0 }),
            ),
        )
        .await?;
    processed += single["processed"].as_u64().unwrap_or(0);
    runs += 1;
    println!("\nprocessed {processed} readings in {runs} handler runs");
    // Every reading handled, 50 to a run but the last, single one.
    assert_eq!((processed, runs), (1001, 21));
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

//! The documentation's zero-allocation sensor example: a sensor processor
//! handles single readings the ordinary way (JSON payload, node state) and
//! batches of readings through `node.zero`: a flat buffer whose readings are
//! 16-byte records (sensor id `u16` at 0, value `f32` at 4, timestamp `u64`
//! at 8), read at offsets, calibrated, summed and kept in a fixed table,
//! without allocating. A batch whose average is out of range raises an
//! alert: a zero event to a monitor whose handler is an ordinary one, so
//! the alert is converted at the boundary, its causal chain intact.
//!
//! ```text
//! cargo run --example sensor_zero                              # embedded
//! cargo run --example sensor_zero -- --nats nats://127.0.0.1:4222
//! ```
//!
//! It prints each batch's summary and the monitor's alert, and exits
//! non-zero if any figure differs from what the readings give.

use std::sync::{Arc, Mutex};

use happen::prelude::*;
use happen::zero::{ZeroEvent, ZeroNext, ZeroWriter};
use tokio::sync::mpsc;

/// Bytes per reading record in a batch.
const RECORD: usize = 16;
/// Sensors the processor keeps a slot for.
const SENSORS: usize = 64;

/// The last reading of one sensor, as the processor keeps it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SensorSlot {
    /// The raw value.
    pub last_value: f32,
    /// When it was read (ms since the Unix epoch).
    pub last_updated: u64,
    /// The calibrated value.
    pub processed: f64,
}

/// Each sensor's calibration factor.
fn calibration(sensor: u16) -> f64 {
    1.0 + f64::from(sensor % 4) * 0.1
}

/// One reading: sensor id, value, timestamp.
type Reading = (u16, f32, u64);

/// The records of one batch.
fn records(readings: &[Reading]) -> Vec<u8> {
    let mut block = Vec::with_capacity(readings.len() * RECORD);
    for (sensor, value, timestamp) in readings {
        block.extend_from_slice(&sensor.to_le_bytes());
        block.extend_from_slice(&[0, 0]);
        block.extend_from_slice(&value.to_le_bytes());
        block.extend_from_slice(&timestamp.to_le_bytes());
    }
    block
}

/// What the run showed.
#[derive(Debug)]
pub struct SensorRun {
    /// Each batch's summary: device, processed count, average.
    pub batches: Vec<(String, u32, f64)>,
    /// The single reading's answer (ordinary path).
    pub single: Value,
    /// The alert the monitor received: type, payload, path.
    pub alert: (String, Value, Vec<String>),
    /// The processor's table after the run, for the sensors that reported.
    pub slots: Vec<(u16, SensorSlot)>,
}

/// Handles a batch in place: the documentation's `sensor-batch` handler.
fn process_batch(
    event: &ZeroEvent,
    table: &Mutex<[SensorSlot; SENSORS]>,
) -> Result<(u32, f64), happen::zero::ZeroError> {
    let offsets = event.offsets();
    let field = |name: &str| {
        offsets
            .get(name)
            .ok_or_else(|| happen::zero::ZeroError::NoField(name.to_owned()))
    };
    let count = event.u32(field("count")?)?;
    // A bytes field's value is its block's offset, then its length: the
    // records are read within that block, whatever `count` claims.
    let readings = event.u32(field("readings")?)? as usize;
    let block = event.bytes(field("readings")?)?.len();
    if count as usize * RECORD > block {
        return Err(happen::zero::ZeroError::OutOfRange {
            at: readings,
            width: count as usize * RECORD,
            len: block,
        });
    }
    let mut total = 0.0;
    let mut table = table.lock().unwrap_or_else(|e| e.into_inner());
    for i in 0..count as usize {
        let at = readings + i * RECORD;
        let sensor = event.u16(at)?;
        let value = event.f32(at + 4)?;
        let timestamp = event.u64(at + 8)?;
        let processed = f64::from(value) * calibration(sensor);
        total += processed;
        // Direct updates of a fixed table: nothing allocated per reading.
        if let Some(slot) = table.get_mut(usize::from(sensor)) {
            *slot = SensorSlot {
                last_value: value,
                last_updated: timestamp,
                processed,
            };
        }
    }
    Ok((
        count,
        if count == 0 {
            0.0
        } else {
            total / f64::from(count)
        },
    ))
}

/// Sets up the processor and the monitor, sends a single reading and three
/// batches, and collects what came back.
pub async fn run(happen: &Happen) -> happen::Result<SensorRun> {
    let processor = happen.node("sensor-processor")?;
    let monitor = happen.node("sensor-monitor")?;
    let gateway = happen.node("sensor-gateway")?;
    let table = Arc::new(Mutex::new([SensorSlot::default(); SENSORS]));

    // Single readings: the ordinary way, state as JSON.
    processor.on("sensor-reading", |event: Event, cx: Context| async move {
        let p = event.payload();
        let (sensor, value) = (
            p["sensorId"].as_u64().unwrap_or(0),
            p["value"].as_f64().unwrap_or(0.0),
        );
        let processed = value * calibration(sensor as u16);
        cx.node()
            .state()
            .set(move |mut state| {
                state["readings"][sensor.to_string()] =
                    json!({ "lastValue": value, "processedValue": processed });
                state
            })
            .await?;
        Ok::<_, HappenError>(json!({ "processed": true, "value": processed }))
    })?;

    // Batches: zero-allocation, read through offsets.
    let slots = table.clone();
    processor.zero("sensor-batch", move |event, cx| {
        let (count, average) = process_batch(event, &slots)?;
        let device = event.get::<&str>("deviceId")?;
        if average > 30.0 {
            let mut alert = ZeroWriter::new("sensor-alert");
            alert.str("deviceId", device).f64("average", average);
            cx.tell("sensor-monitor", alert)?;
        }
        let mut summary = ZeroWriter::new("batch-summary");
        summary
            .str("deviceId", device)
            .u32("processedCount", count)
            .f64("averageValue", average);
        Ok(ZeroNext::Reply(summary))
    })?;

    // The monitor is ordinary code: zero alerts arrive as ordinary events.
    let (tx, mut alerts) = mpsc::unbounded_channel();
    monitor.on("sensor-alert", move |event: Event, _cx: Context| {
        let tx = tx.clone();
        async move {
            let path: Vec<String> = event.causal().path.iter().map(|n| n.to_string()).collect();
            let _ = tx.send((event.event_type().to_owned(), event.payload().clone(), path));
        }
    })?;
    happen.flush().await?;

    let single = gateway
        .send(
            &processor,
            Event::new("sensor-reading", json!({ "sensorId": 3, "value": 20.0 })),
        )
        .await?;

    let devices: [(&str, Vec<Reading>); 3] = [
        ("dev-a", vec![(1, 10.0, 1_000), (2, 20.0, 1_001)]),
        (
            "dev-b",
            vec![(4, 5.0, 2_000), (8, 7.0, 2_001), (12, 9.0, 2_002)],
        ),
        ("dev-c", vec![(5, 40.0, 3_000), (6, 30.0, 3_001)]),
    ];
    let mut batches = Vec::new();
    for (device, readings) in &devices {
        let mut batch = ZeroWriter::new("sensor-batch");
        batch
            .str("deviceId", device)
            .u32("count", readings.len() as u32)
            .bytes("readings", &records(readings));
        let answer = gateway.zero_send(&processor, batch).await?;
        let summary = answer
            .zero()
            .ok_or_else(|| HappenError::Config("no zero summary".into()))?;
        let line = (
            summary.get::<&str>("deviceId")?.to_owned(),
            summary.get::<u32>("processedCount")?,
            summary.get::<f64>("averageValue")?,
        );
        println!(
            "batch {:<6} {} readings, average {:.2}",
            line.0, line.1, line.2
        );
        batches.push(line);
    }
    let alert = tokio::time::timeout(std::time::Duration::from_secs(10), alerts.recv())
        .await
        .map_err(|_| HappenError::Config("no alert within 10 s".into()))?
        .ok_or(HappenError::Shutdown)?;
    println!(
        "monitor: {} {} via {}",
        alert.0,
        alert.1,
        alert.2.join(" → ")
    );
    let table = *table.lock().unwrap_or_else(|e| e.into_inner());
    let slots = (0..SENSORS as u16)
        .filter(|s| table[usize::from(*s)] != SensorSlot::default())
        .map(|s| (s, table[usize::from(s)]))
        .collect();
    Ok(SensorRun {
        batches,
        single,
        alert,
        slots,
    })
}

/// Asserts what the readings give.
pub fn check(run: &SensorRun) {
    let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
    assert_eq!(run.single["processed"], true);
    assert!(
        close(run.single["value"].as_f64().unwrap_or(0.0), 26.0),
        "{}",
        run.single
    );
    let expected = [
        ("dev-a", 2, (11.0 + 24.0) / 2.0),
        ("dev-b", 3, 7.0),
        ("dev-c", 2, (44.0 + 36.0) / 2.0),
    ];
    assert_eq!(run.batches.len(), 3);
    for ((device, count, average), (want_device, want_count, want_average)) in
        run.batches.iter().zip(expected)
    {
        assert_eq!((device.as_str(), *count), (want_device, want_count));
        assert!(
            close(*average, want_average),
            "{device}: {average} ≠ {want_average}"
        );
    }
    let (event_type, payload, path) = &run.alert;
    assert_eq!(event_type, "sensor-alert");
    assert_eq!(payload["deviceId"], "dev-c");
    assert!(close(payload["average"].as_f64().unwrap_or(0.0), 40.0));
    assert_eq!(
        path,
        &["sensor-gateway", "sensor-processor"],
        "the alert's causal path"
    );
    let sensors: Vec<u16> = run.slots.iter().map(|(s, _)| *s).collect();
    assert_eq!(sensors, [1, 2, 4, 5, 6, 8, 12]);
    let (_, five) = run.slots.iter().find(|(s, _)| *s == 5).expect("sensor 5");
    assert_eq!((five.last_value, five.last_updated), (40.0, 3_000));
    assert!(close(five.processed, 44.0));
}

#[allow(dead_code)]
#[tokio::main(flavor = "current_thread")]
async fn main() -> happen::Result<()> {
    let url = std::env::args().skip_while(|a| a != "--nats").nth(1);
    let happen = Happen::start(url.as_deref(), HappenConfig::default()).await?;
    let run = run(&happen).await?;
    check(&run);
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

//! Streaming progress: an importer streams progress updates while it works
//! through a file; the requester shows them as they arrive and then gets the
//! final summary. The consumer sets the pace: the importer waits when the
//! reader falls behind.
//!
//! Run it with `cargo run --example import_progress`; it exits non-zero if
//! an update or the summary is missing.

use std::time::Duration;

use futures::StreamExt;
use happen::StreamItem;
use happen::prelude::*;

/// Reads `records` records in chunks, emitting progress after each chunk.
async fn import_file(event: Event, cx: Context) -> happen::Result<Value> {
    let total = event.payload()["records"].as_u64().unwrap_or(0);
    let chunk = 250;
    let mut done = 0;
    while done < total {
        let n = chunk.min(total - done);
        tokio::time::sleep(Duration::from_millis(20)).await; // the real work
        done += n;
        cx.emit(json!({ "progress": done * 100 / total, "recordsProcessed": n }))
            .await?;
    }
    Ok(json!({ "status": "complete", "totalRecords": done }))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> happen::Result<()> {
    let happen = Happen::embedded();
    let ui = happen.node("ui")?;
    let importer = happen.node("importer")?;
    importer.on("import-file", import_file)?;

    let request = Event::new(
        "import-file",
        json!({ "path": "customers.csv", "records": 2_000 }),
    );
    let mut progress = ui.send(&importer, request).stream();
    let (mut updates, mut records, mut summary) = (0, 0, None);
    while let Some(update) = progress.next().await {
        match update? {
            StreamItem::Item(p) => {
                println!(
                    "progress: {:>3}% (+{} records)",
                    p["progress"], p["recordsProcessed"]
                );
                updates += 1;
                records += p["recordsProcessed"].as_u64().unwrap_or(0);
            }
            StreamItem::Done(done) => {
                println!("finished: {done}");
                summary = Some(done);
            }
        }
    }
    // Every chunk's update, in order, then the summary.
    assert_eq!((updates, records), (8, 2_000));
    assert_eq!(
        summary,
        Some(json!({ "status": "complete", "totalRecords": 2_000 }))
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

//! `happen trace` and `happen watch`: the recorded causal web, as a tree
//! or as it happens.
//!
//! Over NATS both read the JetStream trace that runtimes connected with
//! `NatsConfig::record` write (`happen demo --nats URL --record` is one).
//! Without `--nats` they run the embedded demo with a recorder and show its
//! transaction.

use std::io::Write;

use clap::Args;
use happen::Pattern;
use happen::trace::{Record, Recorder, What};

use crate::order_processing;

#[derive(Debug, Args)]
pub(crate) struct TraceArgs {
    /// The transaction (correlation id) to print; over NATS only. Without
    /// --nats the embedded demo runs and its transaction is printed
    #[arg(value_name = "CORRELATION_ID")]
    pub(crate) id: Option<String>,

    /// Read the trace of the NATS system at URL
    #[arg(long, value_name = "URL", env = crate::NATS_URL_ENV)]
    pub(crate) nats: Option<String>,

    /// Print the transaction as JSON instead of a tree
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct WatchArgs {
    /// Show only events whose type matches this pattern ("order.*",
    /// "{a,b}.done", ...)
    #[arg(value_name = "PATTERN", value_parser = parse_pattern)]
    pub(crate) pattern: Option<Pattern>,

    /// Follow the trace of the NATS system at URL (until Ctrl-C); without
    /// it, the embedded demo runs and its events are shown as they happen
    #[arg(long, value_name = "URL", env = crate::NATS_URL_ENV)]
    pub(crate) nats: Option<String>,

    /// Stop after this many records
    #[arg(long, value_name = "N")]
    pub(crate) count: Option<u64>,
}

fn parse_pattern(text: &str) -> Result<Pattern, String> {
    Pattern::parse(text).map_err(|e| e.to_string())
}

fn demo_options() -> order_processing::Options {
    order_processing::Options {
        nats: None,
        role: order_processing::Role::All,
        trace_json: false,
        record: true,
    }
}

/// Prints the transaction `args.id` (over NATS) or the demo's.
pub(crate) async fn trace(args: TraceArgs) -> Result<(), String> {
    let tx = match (&args.nats, &args.id) {
        (None, _) => {
            let played = order_processing::play(&demo_options(), None)
                .await
                .map_err(|e| e.to_string())?;
            played
                .transaction
                .ok_or("the demo recorded no transaction")?
        }
        (Some(_), Some(id)) if id.trim().is_empty() => {
            return Err("the correlation id is empty: name the transaction to print".into());
        }
        (Some(url), Some(id)) => {
            let happen = crate::connect_recording(url).await?;
            let recorder = happen.recorder().ok_or("no recorder")?.clone();
            let tx = recorder.transaction(id).await.map_err(|e| e.to_string())?;
            happen.shutdown().await;
            if tx.is_empty() {
                return Err(format!(
                    "nothing is recorded for transaction {id}: is the system recording \
                     (NatsConfig::record, or happen demo --record), and is it the correlation id?"
                ));
            }
            tx
        }
        (Some(_), None) => unreachable!("checked by the caller"),
    };
    let text = if args.json {
        serde_json::to_string_pretty(&tx).map_err(|e| e.to_string())? + "\n"
    } else {
        tx.to_string()
    };
    // A reader that went away (`| head`) is not an error worth a panic.
    let _ = std::io::stdout().write_all(text.as_bytes());
    Ok(())
}

/// Prints records as they are made: the demo's, or a NATS system's.
pub(crate) async fn watch(args: WatchArgs) -> Result<(), String> {
    let shown = move |record: &Record| {
        args.pattern
            .as_ref()
            .is_none_or(|p| p.matches(&record.event_type))
    };
    let limit = args.count.unwrap_or(u64::MAX);
    match &args.nats {
        None => {
            let recorder = Recorder::in_memory(100_000);
            let mut live = recorder.watch();
            let printer = tokio::spawn(async move {
                let mut printed = 0;
                loop {
                    let record = match live.recv().await {
                        Ok(record) => record,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            eprintln!(
                                "(missed {n} records: the terminal is slower than the system)"
                            );
                            continue;
                        }
                        Err(_) => break,
                    };
                    if printed < limit && shown(&record) {
                        if writeln!(std::io::stdout(), "{}", line(&record)).is_err() {
                            break; // the reader went away
                        }
                        printed += 1;
                    }
                }
            });
            order_processing::play(&demo_options(), Some(recorder))
                .await
                .map_err(|e| e.to_string())?;
            // The recorder (and with it the sender) is gone: the printer
            // ends once it has printed what is left.
            let _ = printer.await;
            Ok(())
        }
        Some(url) => {
            let happen = crate::connect_recording(url).await?;
            let recorder = happen.recorder().ok_or("no recorder")?;
            let mut live = recorder.watch();
            recorder.watching().await;
            eprintln!("watching {url} (Ctrl-C to stop)");
            let mut printed = 0;
            while printed < limit {
                tokio::select! {
                    record = live.recv() => match record {
                        Ok(record) if shown(&record) => {
                            if writeln!(std::io::stdout(), "{}", line(&record)).is_err() {
                                break; // the reader went away
                            }
                            printed += 1;
                        }
                        Ok(_) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            eprintln!("(missed {n} records: the terminal is slower than the system)");
                        }
                        Err(_) => break,
                    },
                    _ = tokio::signal::ctrl_c() => break,
                }
            }
            happen.shutdown().await;
            Ok(())
        }
    }
}

/// One record as a line: time, what happened, the event, its causal links.
pub(crate) fn line(record: &Record) -> String {
    let c = &record.causal;
    let time = record.at % 86_400_000;
    let clock = format!(
        "{:02}:{:02}:{:02}.{:03}",
        time / 3_600_000,
        time / 60_000 % 60,
        time / 1000 % 60,
        time % 1000
    );
    let what = match &record.what {
        What::Stamped => format!(
            "sent      {:<20} by {} (cause {})",
            record.event_type,
            c.sender,
            c.causation_id.as_deref().unwrap_or("none: a root")
        ),
        What::Delivered { node } => format!("delivered {:<20} to {node}", record.event_type),
        What::Finished {
            node,
            elapsed_us,
            error,
            ..
        } => format!(
            "finished  {:<20} at {node} in {elapsed_us} µs: {}",
            record.event_type,
            error
                .as_deref()
                .map_or("ok".to_owned(), |e| format!("FAILED: {e}"))
        ),
        What::Dropped { records } => {
            format!("dropped   {records} records of this transaction (the recorder fell behind)")
        }
        other => format!("{other:?} {}", record.event_type),
    };
    format!(
        "{clock} {what}  [event {} transaction {}]",
        c.id, c.correlation_id
    )
}

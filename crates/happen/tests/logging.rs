//! A failing or panicking flow is recorded with `tracing`, naming the node,
//! the event type and the cause.

use std::io::Write;
use std::sync::{Arc, Mutex};

use happen::prelude::*;

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs `work` on a current-thread runtime (which keeps every flow on this
/// thread, where the subscriber is installed) with log lines up to `level`
/// captured; returns its output and the log.
fn logged<T>(level: tracing::Level, work: impl std::future::Future<Output = T>) -> (T, String) {
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(level)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let out = runtime.block_on(work);
    let log = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    (out, log)
}

#[test]
fn failed_and_panicked_flows_are_logged() {
    let ((), log) = logged(tracing::Level::INFO, async {
        let happen = Happen::embedded();
        let node = happen.node("ledger").unwrap();
        node.on("post-entry", |_e: Event, _cx: Context| async {
            Err::<Value, _>("account is frozen")
        })
        .unwrap();
        node.on("explode", |_e: Event, _cx: Context| async {
            if true {
                panic!("ledger corrupted");
            }
        })
        .unwrap();
        assert!(
            node.send(&node, Event::new("post-entry", json!(null)))
                .await
                .is_err()
        );
        assert!(
            node.send(&node, Event::new("explode", json!(null)))
                .await
                .is_err()
        );
    });
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("flow failed")).collect();
    assert_eq!(lines.len(), 2, "one record per failed flow:\n{log}");
    assert!(lines[0].contains("ERROR"), "{}", lines[0]);
    assert!(
        lines[0].contains("ledger")
            && lines[0].contains("post-entry")
            && lines[0].contains("account is frozen"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains("explode") && lines[1].contains("ledger corrupted"),
        "{}",
        lines[1]
    );
}

#[test]
fn a_handlers_log_lines_carry_its_flows_causal_context() {
    let ((order, charge), log) = logged(tracing::Level::DEBUG, async {
        let happen = Happen::embedded();
        let shop = happen.node("shop").unwrap();
        let bank = happen.node("bank").unwrap();
        bank.on("charge", |e: Event, _cx: Context| async move {
            tracing::info!("charging");
            json!(e.id())
        })
        .unwrap();
        shop.on("order", |_e: Event, cx: Context| async move {
            cx.node()
                .send("bank", Event::new("charge", json!(null)))
                .await
        })
        .unwrap();
        let sent = shop.send(&shop, Event::new("order", json!(null)));
        let order = sent.id().to_owned();
        let charge = sent.await.unwrap();
        (order, charge.as_str().unwrap().to_owned())
    });
    let line = log
        .lines()
        .find(|l| l.contains("charging"))
        .unwrap_or_else(|| panic!("no log line from the handler:\n{log}"));
    // The handler's span, inside the span of the flow that asked.
    for field in [
        "happen.flow{node=bank event_type=\"charge\"".to_owned(),
        format!("event_id={charge}"),
        format!("correlation_id={order}"),
        format!("causation_id=\"{order}\""),
    ] {
        assert!(line.contains(&field), "{field} is not in {line}");
    }
}

//! Observation: observers see every event stamped, delivered to a node and
//! finished by a flow, with the flow's outcome.

use std::sync::{Arc, Mutex};

use happen::observe::{Finished, Observer};
use happen::prelude::*;

use super::{Backend, ev};

#[derive(Default)]
struct Seen(Mutex<Vec<String>>);

impl Seen {
    fn push(&self, line: String) {
        self.0.lock().unwrap().push(line);
    }

    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

impl Observer for Seen {
    fn stamped(&self, event: &Event) {
        self.push(format!(
            "stamped {} by {}",
            event.event_type(),
            event.causal().sender
        ));
    }

    fn delivered(&self, node: &str, event: &Event) {
        self.push(format!("delivered {} to {node}", event.event_type()));
    }

    fn finished(&self, node: &str, event: &Event, finished: &Finished<'_>) {
        let outcome = match finished.error {
            None => "ok".to_owned(),
            Some(error) => format!("failed: {error}"),
        };
        self.push(format!(
            "finished {} on {node}: {outcome}, answered {}",
            event.event_type(),
            finished.answered
        ));
    }
}

/// An observer installed with `HappenConfig::observer` sees the request, its
/// delivery, the response event and how each flow ended.
pub async fn observers_see_stamps_deliveries_and_finishes(backend: &dyn Backend) {
    let seen = Arc::new(Seen::default());
    let h = backend
        .start(HappenConfig::default().observer(seen.clone()))
        .await;
    let client = h.node("obs-client").unwrap();
    let svc = h.node("obs-svc").unwrap();
    svc.on("ok", |_e: Event, _cx: Context| async { json!(1) })
        .unwrap();
    svc.on("bad", |_e: Event, _cx: Context| async {
        Err::<Value, _>(HappenError::Cancelled)
    })
    .unwrap();
    svc.on("note", |_e: Event, _cx: Context| async {}).unwrap();
    h.flush().await.unwrap();
    client.send(&svc, ev("ok", json!(null))).await.unwrap();
    client.send(&svc, ev("bad", json!(null))).await.unwrap_err();
    client.tell(&svc, ev("note", json!(null))).unwrap();
    // The tell's flow finishes on its own time.
    for _ in 0..500 {
        if seen.lines().iter().any(|l| l.starts_with("finished note")) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let lines = seen.lines();
    for expected in [
        "stamped ok by obs-client",
        "delivered ok to obs-svc",
        "stamped happen.response by obs-svc",
        "finished ok on obs-svc: ok, answered true",
        "stamped bad by obs-client",
        "delivered bad to obs-svc",
        "stamped note by obs-client",
        "delivered note to obs-svc",
        "finished note on obs-svc: ok, answered false",
    ] {
        assert!(
            lines.contains(&expected.to_owned()),
            "missing {expected:?} in {lines:#?}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("finished bad on obs-svc: failed:")
                && l.ends_with("answered true")),
        "{lines:#?}"
    );
    // Every delivery is stamped first.
    let stamp = lines
        .iter()
        .position(|l| l == "stamped ok by obs-client")
        .unwrap();
    let delivery = lines
        .iter()
        .position(|l| l == "delivered ok to obs-svc")
        .unwrap();
    assert!(stamp < delivery);
}

//! Outages: what a server restart does to events in flight, to the
//! connection status nodes see, and to shutdown.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use happen::nats::{NatsConfig, Reconnect};
use happen::prelude::*;
use happen_test::NatsServer;
use tokio::sync::mpsc;

mod support;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_is_reported_and_events_sent_during_it_arrive_after_reconnection() {
    let mut server = NatsServer::start().unwrap();
    // Every event through the server, so that these wait out the outage.
    let happen = Happen::connect(fast_reconnect(server.url()).co_located(false))
        .await
        .unwrap();
    let watcher = happen.node("watcher").unwrap();
    let sink = happen.node("sink").unwrap();
    let source = happen.node("source").unwrap();

    let (status_tx, mut status_rx) = mpsc::unbounded_channel();
    watcher
        .on(happen::CONNECTION_STATUS, move |e: Event, _cx: Context| {
            let tx = status_tx.clone();
            async move {
                assert_eq!(e.causal().sender, happen::SYSTEM_SENDER);
                let reason = e.payload()["reason"].as_str().unwrap_or("");
                assert!(!reason.is_empty(), "every status says why: {e:?}");
                let _ = tx.send(e.payload()["status"].as_str().unwrap_or("").to_owned());
            }
        })
        .unwrap();
    let (got_tx, mut got_rx) = mpsc::unbounded_channel();
    sink.on("outage.note", move |e: Event, _cx: Context| {
        let tx = got_tx.clone();
        async move {
            let _ = tx.send(e.payload()["n"].as_i64().unwrap());
            json!("noted")
        }
    })
    .unwrap();
    happen.flush().await.unwrap();
    // Working before the outage.
    assert_eq!(
        source
            .send(&sink, Event::new("outage.note", json!({ "n": -1 })))
            .await
            .unwrap(),
        "noted"
    );
    assert_eq!(got_rx.recv().await.unwrap(), -1);

    server.stop();
    let status = within("disconnected status", 30, async {
        loop {
            let s = status_rx.recv().await.unwrap();
            if s == "disconnected" {
                return s;
            }
        }
    })
    .await;
    assert_eq!(status, "disconnected");

    // Published while the server is down.
    for n in 0..5 {
        source
            .broadcast(Event::new("outage.note", json!({ "n": n })))
            .unwrap();
    }
    let request = source
        .send(&sink, Event::new("outage.note", json!({ "n": 100 })))
        .timeout(Duration::from_secs(30));

    server.restart().unwrap();
    // The documentation's name for a restored connection.
    within("reconnected status", 30, async {
        while status_rx.recv().await.unwrap() != "reconnected" {}
    })
    .await;

    assert_eq!(
        within("request answer", 30, request.response())
            .await
            .unwrap(),
        "noted"
    );
    let mut seen: Vec<i64> = Vec::new();
    within("the outage's events", 30, async {
        while seen.len() < 6 {
            seen.push(got_rx.recv().await.unwrap());
        }
    })
    .await;
    seen.sort();
    assert_eq!(
        seen,
        vec![0, 1, 2, 3, 4, 100],
        "nothing lost, nothing twice"
    );
    happen.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_during_an_outage_finishes() {
    let mut server = NatsServer::start().unwrap();
    let happen = Happen::connect(fast_reconnect(server.url())).await.unwrap();
    let node = happen.node("lonely").unwrap();
    node.on("x", |_e: Event, _cx: Context| async {}).unwrap();
    happen.flush().await.unwrap();
    server.stop();
    assert!(
        happen.shutdown_within(Duration::from_secs(20)).await,
        "shutdown drained"
    );
}

/// Counts what one node receives: each event id once, and how often.
#[derive(Clone, Default)]
struct Tally(Arc<Mutex<HashMap<String, u32>>>);

impl Tally {
    fn handler(&self) -> impl happen::Handler {
        let tally = self.clone();
        move |e: Event, _cx: Context| {
            let tally = tally.clone();
            async move {
                *tally
                    .0
                    .lock()
                    .unwrap()
                    .entry(e.id().to_owned())
                    .or_default() += 1;
            }
        }
    }

    /// (distinct events, events seen more than once)
    fn counts(&self) -> (usize, usize) {
        let seen = self.0.lock().unwrap();
        (seen.len(), seen.values().filter(|n| **n > 1).count())
    }

    async fn wait_for(&self, n: usize, secs: u64) -> (usize, usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        while self.counts().0 < n && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Give late duplicates a moment to show.
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.counts()
    }
}

/// Co-located delivery: the nodes of one runtime keep talking while the
/// server is down, and what they broadcast meanwhile reaches the other
/// runtime after the reconnection, once, and never comes back to them.
///
/// A broadcast is not stored (durable delivery is another matter): it
/// reaches the processes subscribed when the server gets it. So the other
/// runtime reconnects first (every 50 ms) and this one later (every 1 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn co_located_nodes_keep_talking_during_an_outage() {
    let mut server = NatsServer::start().unwrap();
    let here = Happen::connect(reconnecting_every(server.url(), Duration::from_secs(1)))
        .await
        .unwrap();
    let there = Happen::connect(reconnecting_every(server.url(), Duration::from_millis(50)))
        .await
        .unwrap();
    let mut here_status = watch_status(&here, "here-watch");
    let mut there_status = watch_status(&there, "there-watch");
    let source = here.node("source").unwrap();
    let sink = here.node("sink").unwrap();
    let remote = there.node("remote").unwrap();
    let record = |node: &Node| {
        let (tx, rx) = mpsc::unbounded_channel();
        node.on("colo.note", move |e: Event, _cx: Context| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(e.payload()["n"].as_i64().unwrap());
                json!("noted")
            }
        })
        .unwrap();
        rx
    };
    let mut at_sink = record(&sink);
    let mut at_remote = record(&remote);
    here.flush().await.unwrap();
    there.flush().await.unwrap();

    server.stop();
    wait_for_status(&mut here_status, "disconnected").await;
    // Answered at once, with the server gone.
    let answer = within(
        "a co-located answer during the outage",
        10,
        source
            .send(&sink, Event::new("colo.note", json!({ "n": 100 })))
            .response(),
    )
    .await;
    assert_eq!(answer.unwrap(), "noted");
    for n in 0..5 {
        source
            .broadcast(Event::new("colo.note", json!({ "n": n })))
            .unwrap();
    }
    let mut seen = Vec::new();
    within("co-located broadcasts during the outage", 10, async {
        while seen.len() < 6 {
            seen.push(at_sink.recv().await.unwrap());
        }
    })
    .await;
    seen.sort();
    assert_eq!(seen, vec![0, 1, 2, 3, 4, 100]);

    server.restart().unwrap();
    wait_for_status(&mut there_status, "reconnected").await;
    wait_for_status(&mut here_status, "reconnected").await;
    let mut remote_seen = Vec::new();
    within("the broadcasts at the other runtime", 30, async {
        while remote_seen.len() < 5 {
            remote_seen.push(at_remote.recv().await.unwrap());
        }
    })
    .await;
    remote_seen.sort();
    assert_eq!(remote_seen, vec![0, 1, 2, 3, 4], "each broadcast once");
    // Nothing more anywhere: the server did not echo them back here.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        at_sink.try_recv().is_err(),
        "no echo to the sender's runtime"
    );
    assert!(at_remote.try_recv().is_err(), "no duplicates elsewhere");
    here.shutdown().await;
    there.shutdown().await;
}

fn reconnecting_every(url: String, delay: Duration) -> NatsConfig {
    NatsConfig::new(url).reconnect(Reconnect {
        max_attempts: None,
        base_delay: delay,
        max_delay: delay,
    })
}

async fn wait_for_status(rx: &mut mpsc::UnboundedReceiver<String>, status: &str) {
    within(status, 30, async {
        while rx.recv().await.unwrap() != status {}
    })
    .await;
}

fn watch_status(happen: &Happen, id: &str) -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    happen
        .node(id)
        .unwrap()
        .on(happen::CONNECTION_STATUS, move |e: Event, _cx: Context| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(e.payload()["status"].as_str().unwrap_or("").to_owned());
            }
        })
        .unwrap();
    rx
}

/// After a server restart the sender's connection is back before the
/// receiver has subscribed again (it waits 500 ms between attempts, the
/// sender 50 ms), so the server first answers "no responders". Sends are
/// offered again until the receiver is back: of 5,000 fire-and-forget events
/// sent during and right after the outage, none is lost and none arrives
/// twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_sent_across_staggered_reconnects_are_not_lost() {
    const EVENTS: usize = 5_000;
    let mut server = NatsServer::start().unwrap();
    let receiver = Happen::connect(reconnecting_every(server.url(), Duration::from_millis(500)))
        .await
        .unwrap();
    let sender = Happen::connect_with(
        reconnecting_every(server.url(), Duration::from_millis(50)),
        HappenConfig::default().request_timeout(Duration::from_secs(20)),
    )
    .await
    .unwrap();
    let tally = Tally::default();
    let sink = receiver.node("sink").unwrap();
    sink.on("note", tally.handler()).unwrap();
    sink.ready().await.unwrap();
    let mut sender_status = watch_status(&sender, "sender-watch");
    let source = sender.node("source").unwrap();
    source
        .send("sink", Event::new("note", json!({ "n": -1 })))
        .await
        .unwrap();

    server.stop();
    wait_for_status(&mut sender_status, "disconnected").await;
    for n in 0..EVENTS / 2 {
        drop(source.send("sink", Event::new("note", json!({ "n": n }))));
    }
    server.restart().unwrap();
    wait_for_status(&mut sender_status, "reconnected").await;
    // The receiver is still waiting to reconnect: these meet "no responders".
    for n in EVENTS / 2..EVENTS {
        drop(source.send("sink", Event::new("note", json!({ "n": n }))));
    }
    let (received, duplicated) = tally.wait_for(EVENTS + 1, 60).await;
    let lost = EVENTS + 1 - received;
    println!(
        "staggered reconnects: sent {}, processed {received}, lost {lost}, duplicated {duplicated}",
        EVENTS + 1
    );
    assert_eq!((lost, duplicated), (0, 0));
    assert_eq!(sender.counters().undelivered, 0);
    sender.shutdown().await;
    receiver.shutdown().await;
}

/// A node that answered before and is gone for good: an awaited send fails
/// with Unreachable (not "unknown node") once its deadline passes, and a
/// fire-and-forget send is reported as a system.undelivered event and
/// counted. A node id nobody ever answered for is UnknownNode at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_to_a_vanished_node_fail_clearly_and_losses_are_reported() {
    let server = NatsServer::start().unwrap();
    let other = connect(&server).await;
    let ghost = other.node("ghost").unwrap();
    ghost
        .on("ping", |_e: Event, _cx: Context| async { json!("pong") })
        .unwrap();
    ghost.ready().await.unwrap();
    let here = connect(&server).await;
    let asker = here
        .node_with(
            "asker",
            NodeConfig::new().timeout(Duration::from_millis(400)),
        )
        .unwrap();
    let (tx, mut undelivered) = mpsc::unbounded_channel();
    here.node("monitor")
        .unwrap()
        .on(
            happen::system::UNDELIVERED,
            move |e: Event, _cx: Context| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(e.payload().clone());
                }
            },
        )
        .unwrap();
    assert_eq!(
        asker
            .send("ghost", Event::new("ping", json!(null)))
            .await
            .unwrap(),
        "pong"
    );
    other.shutdown().await;

    let err = asker
        .send("ghost", Event::new("ping", json!(null)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, HappenError::Unreachable { ref node, attempts, .. } if node == "ghost" && attempts > 1),
        "{err:?}"
    );
    assert!(err.to_string().contains("reachable"), "{err}");

    let lost = asker.send("ghost", Event::new("ping", json!({ "lost": true })));
    let lost_id = lost.id().to_owned();
    drop(lost);
    let report = within("undelivered report", 10, undelivered.recv())
        .await
        .unwrap();
    assert_eq!(report["node"], "ghost");
    assert_eq!(report["eventType"], "ping");
    assert_eq!(report["eventId"], lost_id.as_str());
    assert_eq!(here.counters().undelivered, 1);

    let long = here
        .node_with(
            "patient",
            NodeConfig::new().timeout(Duration::from_secs(30)),
        )
        .unwrap();
    let err = within(
        "unknown node error",
        10,
        long.send("never-was", Event::new("ping", json!(null)))
            .response(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, HappenError::UnknownNode { ref node } if node == "never-was"),
        "{err:?}"
    );
    here.shutdown().await;
}

/// While the server is unreachable new events wait in a bounded queue; past
/// NatsConfig::outgoing_limit, broadcast, send and tell fail with
/// Backpressure instead of memory growing. Once the server is back the
/// queue drains and sending works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outgoing_queue_is_bounded_during_an_outage() {
    let mut server = NatsServer::start().unwrap();
    let happen = Happen::connect(fast_reconnect(server.url()).outgoing_limit(100))
        .await
        .unwrap();
    let mut status = watch_status(&happen, "watch");
    let source = happen.node("source").unwrap();
    server.stop();
    wait_for_status(&mut status, "disconnected").await;
    let mut accepted = 0usize;
    let refused = loop {
        match source.broadcast(Event::new("outage.tick", json!(accepted))) {
            Ok(_) => accepted += 1,
            Err(error) => break error,
        }
        assert!(accepted < 100_000, "the queue kept growing");
    };
    assert!(
        matches!(refused, HappenError::Backpressure { limit: 100, .. }),
        "{refused:?}"
    );
    println!("outgoing queue: {accepted} broadcasts accepted during the outage, then Backpressure");
    // The connection's own buffer may still take a few of the queued
    // messages meanwhile, freeing as many places: tell and send are refused
    // once those are taken again.
    let mut told = 0;
    let refused = loop {
        match source.tell("anyone", Event::new("outage.tick", json!(null))) {
            Ok(_) => told += 1,
            Err(error) => break error,
        }
        assert!(told < 100_000, "the queue kept growing");
    };
    assert!(
        matches!(refused, HappenError::Backpressure { .. }),
        "{refused:?}"
    );
    let mut sent = 0;
    let refused = loop {
        match source
            .send("anyone", Event::new("outage.tick", json!(null)))
            .timeout(Duration::from_millis(1))
            .await
        {
            Err(HappenError::Backpressure { .. }) => break None,
            other if sent < 1_000 => {
                sent += 1;
                let _ = other;
            }
            other => break Some(other),
        }
    };
    assert!(refused.is_none(), "send was never refused: {refused:?}");
    server.restart().unwrap();
    wait_for_status(&mut status, "reconnected").await;
    within("the queue drains", 30, async {
        while source
            .broadcast(Event::new("outage.tick", json!("after")))
            .is_err()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    happen.shutdown().await;
}

/// A sender that sends 3,000 fire-and-forget events as fast as it can, calls
/// flush() and shutdown() and then disappears (its tokio runtime ends, as
/// a process exits) delivers every one of them: 50 runs, nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_and_shutdown_deliver_everything_sent_before() {
    const RUNS: usize = 50;
    const EVENTS: usize = 3_000;
    let server = NatsServer::start().unwrap();
    let receiver = Happen::connect_with(
        NatsConfig::new(server.url()),
        HappenConfig::default().default_limits(100, 100_000),
    )
    .await
    .unwrap();
    let tally = Tally::default();
    let sink = receiver.node("sink").unwrap();
    sink.on("burst", tally.handler()).unwrap();
    sink.ready().await.unwrap();
    let mut lost_runs = Vec::new();
    for run in 0..RUNS {
        let url = server.url();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let happen = Happen::connect(NatsConfig::new(url)).await.unwrap();
                let node = happen.node(&format!("burst-{run}")).unwrap();
                for i in 0..EVENTS {
                    drop(node.send("sink", Event::new("burst", json!({ "run": run, "i": i }))));
                }
                happen.flush().await.unwrap();
                happen.shutdown().await;
            });
            // The runtime ends here, with every task of the sender.
        })
        .join()
        .unwrap();
        let (received, _) = tally.wait_for((run + 1) * EVENTS, 30).await;
        if received < (run + 1) * EVENTS {
            lost_runs.push((run, (run + 1) * EVENTS - received));
        }
    }
    let (received, duplicated) = tally.counts();
    println!(
        "burst then shutdown: {RUNS} runs, sent {}, processed {received}, lost {}, duplicated {duplicated}",
        RUNS * EVENTS,
        RUNS * EVENTS - received
    );
    assert!(lost_runs.is_empty(), "runs that lost events: {lost_runs:?}");
    assert_eq!((received, duplicated), (RUNS * EVENTS, 0));
    receiver.shutdown().await;
}

/// A client that gives up reconnecting (`Reconnect::max_attempts`) says so:
/// the status `closed` after the attempts, sends fail at once, and shutdown
/// does not wait for a server that will not be asked again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn giving_up_reconnecting_is_reported_as_closed() {
    let mut server = NatsServer::start().unwrap();
    let happen = Happen::connect(NatsConfig::new(server.url()).reconnect(Reconnect {
        max_attempts: Some(2),
        base_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(100),
    }))
    .await
    .unwrap();
    let mut statuses = watch_status(&happen, "watcher");
    let source = happen.node("source").unwrap();
    happen.flush().await.unwrap();
    server.stop();
    wait_for_status(&mut statuses, "closed").await;
    let refused = source.tell("elsewhere", Event::new("note", json!(1)));
    assert!(refused.is_err(), "a send after giving up was taken");
    within("shutdown after giving up", 10, happen.shutdown()).await;
}

//! The life of runtimes and nodes over NATS: shutdown while other
//! processes keep sending, dropped runtimes, subscriptions, readiness.

use std::time::Duration;

use happen::nats::NatsConfig;
use happen::prelude::*;
use happen_test::NatsServer;
use tokio::sync::mpsc;

mod support;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_request_to_a_dead_instance_does_not_block_shutdown() {
    let server = NatsServer::start().unwrap();
    // An "instance" of node ghost that takes requests and never answers.
    let raw = async_nats::connect(server.url()).await.unwrap();
    let _ghost = raw
        .queue_subscribe("happen.node.ghost", "happen".into())
        .await
        .unwrap();
    happen_test::round_trip(&raw).await.unwrap();
    let happen = connect(&server).await;
    let a = happen.node("asker").unwrap();
    let held = a
        .send("ghost", Event::new("x", json!(null)))
        .timeout(Duration::from_millis(300));
    assert!(happen.shutdown_within(Duration::from_secs(20)).await);
    let err = held.await.unwrap_err();
    assert!(
        matches!(err, HappenError::Timeout { .. } | HappenError::Shutdown),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_refuses_new_work_from_other_processes() {
    let server = NatsServer::start().unwrap();
    let a = connect(&server).await;
    let b = connect(&server).await;
    let svc = a.node("svc").unwrap();
    svc.on("work", |_e: Event, _cx: Context| async {
        tokio::time::sleep(Duration::from_millis(30)).await;
        json!("done")
    })
    .unwrap();
    a.flush().await.unwrap();
    let client = b.node("client").unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s = stop.clone();
    let load = tokio::spawn(async move {
        let mut refused = 0;
        while !s.load(std::sync::atomic::Ordering::Relaxed) {
            let sent = client
                .send("svc", Event::new("work", json!(null)))
                .timeout(Duration::from_secs(5));
            tokio::spawn(async move { sent.await });
            if let Err(HappenError::Shutdown) =
                client.send("svc", Event::new("work", json!(null))).await
            {
                refused += 1;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        refused
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        a.shutdown_within(Duration::from_secs(20)).await,
        "a busy node still shuts down"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = load.await.unwrap();
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_runtime_stops_serving_its_node_id() {
    let server = NatsServer::start().unwrap();
    let old = connect(&server).await;
    old.node("svc")
        .unwrap()
        .on("who", |_e: Event, _cx: Context| async { json!("old") })
        .unwrap();
    old.flush().await.unwrap();
    drop(old);
    let new = connect(&server).await;
    let svc = new.node("svc").unwrap();
    svc.on("who", |_e: Event, _cx: Context| async { json!("new") })
        .unwrap();
    new.flush().await.unwrap();
    let asker = new.node("asker").unwrap();
    for _ in 0..20 {
        assert_eq!(
            asker
                .send("svc", Event::new("who", json!(null)))
                .await
                .unwrap(),
            json!("new")
        );
    }
    new.shutdown().await;
}

/// The subscriptions this runtime's connection holds at the server, by the
/// monitoring endpoint (`/connz?subs=1`), for the connection named `name`.
fn subscriptions(server: &NatsServer, name: &str) -> Vec<String> {
    let body = server.monitor("/connz?subs=1").unwrap();
    let connz: Value = serde_json::from_str(&body).unwrap();
    let mut subs: Vec<String> = connz["connections"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["name"] == name)
        .flat_map(|c| {
            c["subscriptions_list"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|s| s.as_str().map(str::to_owned))
        .filter(|s| s.starts_with("happen."))
        .collect();
    subs.sort();
    subs
}

/// Subscriptions follow the handlers: a filter is subscribed when the first
/// handler needs it, released with the last one (`off`), and a node that
/// shuts down releases its own subscription and its handlers' filters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_and_nodes_release_their_subscriptions() {
    let server = NatsServer::builder().monitoring().start().unwrap();
    let happen = Happen::connect(NatsConfig::new(server.url()).name("subs-test"))
        .await
        .unwrap();
    let subs = || subscriptions(&server, "subs-test");
    let node = happen.node("n").unwrap();
    let other = happen.node("m").unwrap();
    let noop = |_e: Event, _cx: Context| async {};
    let first = node.on("order.*", noop).unwrap();
    let second = other.on("order.*", noop).unwrap();
    let wide = node.on(|t: &str| t.ends_with(".failed"), noop).unwrap();
    node.ready().await.unwrap();
    assert_eq!(
        subs(),
        [
            "happen.bcast.>",
            "happen.bcast.order.*",
            "happen.node.m",
            "happen.node.n"
        ]
    );
    assert!(node.off(first));
    node.ready().await.unwrap();
    assert_eq!(
        subs(),
        [
            "happen.bcast.>",
            "happen.bcast.order.*",
            "happen.node.m",
            "happen.node.n"
        ],
        "another handler still needs order.*"
    );
    assert!(other.off(second));
    assert!(!other.off(second), "already removed");
    node.ready().await.unwrap();
    assert_eq!(subs(), ["happen.bcast.>", "happen.node.m", "happen.node.n"]);
    let _ = wide;
    node.shutdown().await;
    node.ready().await.unwrap_or(());
    other.ready().await.unwrap();
    assert_eq!(subs(), ["happen.node.m"]);
    // Many registrations and removals do not accumulate subscriptions.
    for _ in 0..50 {
        let id = other.on("tick.{a,b}", noop).unwrap();
        other.off(id);
    }
    other.ready().await.unwrap();
    assert_eq!(subs(), ["happen.node.m"]);
    happen.shutdown().await;
    assert!(subs().is_empty(), "shutdown released everything");
}

/// Once `ready()` returns, a node and its handlers are reachable from
/// another process at once: no race with the server learning of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_is_reachable_from_elsewhere_once_ready() {
    let server = NatsServer::start().unwrap();
    let here = connect(&server).await;
    let there = connect(&server).await;
    let asker = there.node("asker").unwrap();
    for i in 0..30 {
        let id = format!("svc-{i}");
        ponger(&here, &id).await;
        assert_eq!(
            asker
                .send(id.as_str(), Event::new("ping", json!(null)))
                .await
                .unwrap(),
            "pong",
            "node {id}"
        );
    }
    here.shutdown().await;
    there.shutdown().await;
}

/// A server that takes at most 64 KiB per message.
fn small_server() -> NatsServer {
    NatsServer::builder()
        .config("max_payload: 65536")
        .start()
        .unwrap()
}

/// Messages larger than the server's max_payload are errors at once, where
/// they would otherwise be lost (a broadcast) or turn into a timeout (an
/// answer): PayloadTooLarge with the size and the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_over_the_servers_limit_are_clear_errors() {
    let server = small_server();
    let happen = Happen::connect_with(
        NatsConfig::new(server.url()),
        HappenConfig::default().request_timeout(Duration::from_secs(30)),
    )
    .await
    .unwrap();
    // The client is in another runtime (another connection): events
    // between nodes of one runtime stay in the process and never meet the
    // server's limit.
    let other = Happen::connect_with(
        NatsConfig::new(server.url()),
        HappenConfig::default().request_timeout(Duration::from_secs(30)),
    )
    .await
    .unwrap();
    let big = "x".repeat(100_000);
    let client = other.node("client").unwrap();
    let svc = happen.node("svc").unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let answer = big.clone();
    svc.on("big-answer", move |_e: Event, _cx: Context| {
        let answer = answer.clone();
        async move { json!(answer) }
    })
    .unwrap();
    svc.on("big.broadcast", move |e: Event, _cx: Context| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(e.payload().clone());
        }
    })
    .unwrap();
    svc.on("big-stream", |_e: Event, cx: Context| async move {
        cx.emit(json!("small")).await?;
        cx.emit(json!("x".repeat(100_000))).await?;
        Ok::<_, HappenError>(json!("never"))
    })
    .unwrap();
    happen.flush().await.unwrap();

    // The answer is too large: the requester hears so at once.
    let err = within(
        "the oversized answer's error",
        10,
        client
            .send(&svc, Event::new("big-answer", json!(null)))
            .response(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, HappenError::PayloadTooLarge { size, limit: 65536 } if size > 100_000),
        "{err:?}"
    );
    // The request is too large.
    let err = client
        .send(&svc, Event::new("big-answer", json!(big)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, HappenError::PayloadTooLarge { .. }),
        "{err:?}"
    );
    // The broadcast is too large: an error, and nobody receives it.
    let err = client
        .broadcast(Event::new("big.broadcast", json!(big)))
        .unwrap_err();
    assert!(
        matches!(err, HappenError::PayloadTooLarge { limit: 65536, .. }),
        "{err:?}"
    );
    assert!(matches!(
        client.tell(&svc, Event::new("big.broadcast", json!(big))),
        Err(HappenError::PayloadTooLarge { .. })
    ));
    client
        .broadcast(Event::new("big.broadcast", json!("small")))
        .unwrap();
    assert_eq!(
        within("small broadcast", 10, rx.recv()).await.unwrap(),
        "small"
    );
    assert!(rx.try_recv().is_err(), "the large broadcast never arrived");
    // A streamed item too large ends the stream with the error.
    use futures::StreamExt;
    let items: Vec<_> = within(
        "the stream",
        10,
        client
            .send(&svc, Event::new("big-stream", json!(null)))
            .stream()
            .collect(),
    )
    .await;
    assert_eq!(items.len(), 2, "{items:?}");
    assert_eq!(
        items[0].as_ref().unwrap(),
        &happen::StreamItem::Item(json!("small"))
    );
    assert!(
        matches!(&items[1], Err(HappenError::HandlerFailed { cause, .. }) if cause.contains("exceeds")),
        "{:?}",
        items[1]
    );
    other.shutdown().await;
    happen.shutdown().await;
}

/// A tell crosses processes like a send, but nobody waits: the flow sees
/// expects_response() false and no answer is published. A tell to a node no
/// process has is reported as system.undelivered in the sender's process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tell_crosses_processes_without_an_answer() {
    use futures::StreamExt;
    let server = NatsServer::start().unwrap();
    let here = connect(&server).await;
    let there = connect(&server).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let log = there.node("log").unwrap();
    log.on("reading", move |e: Event, cx: Context| {
        let tx = tx.clone();
        async move {
            let _ = tx.send((e.payload().clone(), cx.expects_response()));
            json!("this answer goes nowhere")
        }
    })
    .unwrap();
    log.ready().await.unwrap();
    // A bystander on the server sees every reply published to any inbox.
    let raw = async_nats::connect(server.url()).await.unwrap();
    let mut replies = raw.subscribe("_INBOX.>").await.unwrap();
    happen_test::round_trip(&raw).await.unwrap();

    let sensor = here.node("sensor").unwrap();
    sensor
        .tell("log", Event::new("reading", json!(21.5)))
        .unwrap();
    assert_eq!(
        within("the tell", 10, rx.recv()).await.unwrap(),
        (json!(21.5), false)
    );
    here.flush().await.unwrap();
    there.flush().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
    while let Ok(Some(message)) = tokio::time::timeout_at(deadline, replies.next()).await {
        // Round trips of flush() are empty; an answer would not be.
        assert!(
            message.payload.is_empty(),
            "a reply was published: {message:?}"
        );
    }

    let (tx, mut undelivered) = mpsc::unbounded_channel();
    here.node("monitor")
        .unwrap()
        .on(
            happen::system::UNDELIVERED,
            move |e: Event, _cx: Context| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(e.payload()["node"].clone());
                }
            },
        )
        .unwrap();
    sensor
        .tell("nobody-home", Event::new("reading", json!(0)))
        .unwrap();
    assert_eq!(
        within("undelivered report", 10, undelivered.recv())
            .await
            .unwrap(),
        "nobody-home"
    );
    assert_eq!(here.counters().undelivered, 1);
    here.shutdown().await;
    there.shutdown().await;
}

/// A timeout set on the handle after the send (`Sent::timeout`) is the one
/// the transport keeps too: a closing runtime waits for that request's
/// answer up to it, and a target on its way back is offered the request
/// again up to it (both stopped at the node's default timeout before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_set_after_the_send_holds_over_nats() {
    let server = NatsServer::start().unwrap();
    let there = connect(&server).await;
    let slow = there.node("slow").unwrap();
    slow.on("work", |_e: Event, _cx: Context| async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        json!("done")
    })
    .unwrap();
    slow.ready().await.unwrap();
    let here = connect(&server).await;
    let asker = here
        .node_with(
            "asker",
            NodeConfig::new().timeout(Duration::from_millis(300)),
        )
        .unwrap();
    let answer = tokio::spawn(
        asker
            .send("slow", Event::new("work", json!(null)))
            .timeout(Duration::from_secs(10))
            .response(),
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(here.shutdown_within(Duration::from_secs(20)).await);
    assert_eq!(answer.await.unwrap().unwrap(), json!("done"));

    // The target answered, went away, and comes back after the node's
    // default timeout but within the handle's.
    let here = connect(&server).await;
    let asker = here
        .node_with(
            "asker",
            NodeConfig::new().timeout(Duration::from_millis(300)),
        )
        .unwrap();
    let node = ponger(&there, "echo").await;
    assert_eq!(
        asker
            .send("echo", Event::new("ping", json!(null)))
            .await
            .unwrap(),
        json!("pong")
    );
    node.shutdown().await;
    let asked = tokio::spawn(
        asker
            .send("echo", Event::new("ping", json!(null)))
            .timeout(Duration::from_secs(10))
            .response(),
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    ponger(&there, "echo").await;
    assert_eq!(
        within("the answer", 10, asked).await.unwrap().unwrap(),
        json!("pong")
    );
    here.shutdown().await;
    there.shutdown().await;
}

/// Requests racing a node's shutdown each end with a clear outcome: the
/// answer, or `UnknownNode` / `Unreachable` (what the server routed to the
/// node before it saw the release is still read, and refused once the node
/// is gone); one still on the wire when the client dropped the
/// subscription ends at its timeout (async-nats 0.51 ends a drain before
/// the server confirms it), and is counted. Requests sent once
/// `Node::shutdown` has returned never reach the old subscription: none of
/// them times out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_racing_a_node_shutdown_end_clearly() {
    let server = NatsServer::start().unwrap();
    let there = connect(&server).await;
    let node = ponger(&there, "busy").await;
    let here = connect(&server).await;
    let asker = here.node("asker").unwrap();
    let ask = |asker: &Node| {
        let sent = asker
            .send("busy", Event::new("ping", json!(null)))
            .timeout(Duration::from_secs(3));
        tokio::spawn(sent.response())
    };
    let racing = tokio::spawn({
        let asker = asker.clone();
        async move {
            let mut waits = Vec::new();
            for _ in 0..300 {
                waits.push(ask(&asker));
                tokio::time::sleep(Duration::from_micros(300)).await;
            }
            waits
        }
    });
    tokio::time::sleep(Duration::from_millis(30)).await;
    node.shutdown().await;
    let after: Vec<_> = (0..100).map(|_| ask(&asker)).collect();
    let mut outcomes = Vec::new();
    for wait in racing.await.unwrap() {
        outcomes.push(within("a racing outcome", 20, wait).await.unwrap());
    }
    let timed_out = |outcomes: &[happen::Result<Value>]| {
        outcomes
            .iter()
            .filter(|o| matches!(o, Err(HappenError::Timeout { .. })))
            .count()
    };
    let answered = outcomes.iter().filter(|o| o.is_ok()).count();
    println!(
        "faults: node-shutdown-race sent={} answered={answered} timed-out={}",
        outcomes.len(),
        timed_out(&outcomes)
    );
    assert!(answered > 0, "{outcomes:?}");
    for outcome in &outcomes {
        assert!(
            matches!(
                outcome,
                Ok(_)
                    | Err(HappenError::UnknownNode { .. }
                        | HappenError::Unreachable { .. }
                        | HappenError::Timeout { .. })
            ),
            "{outcome:?}"
        );
    }
    let mut later = Vec::new();
    for wait in after {
        later.push(within("an outcome after", 20, wait).await.unwrap());
    }
    println!(
        "faults: after-node-shutdown sent={} timed-out={}",
        later.len(),
        timed_out(&later)
    );
    assert_eq!(timed_out(&later), 0, "{later:?}");
    assert!(
        later
            .iter()
            .all(|o| matches!(o, Err(HappenError::Unreachable { .. }))),
        "{later:?}"
    );
    here.shutdown().await;
    there.shutdown().await;
}

/// A node `id` of `happen` answering "ping" with "pong", reachable from
/// elsewhere.
async fn ponger(happen: &Happen, id: &str) -> Node {
    let node = happen.node(id).unwrap();
    node.on("ping", |_e: Event, _cx: Context| async { json!("pong") })
        .unwrap();
    node.ready().await.unwrap();
    node
}

/// A durable node shut down lets go of its consuming task (which held the
/// node and pulled for it until the runtime ended: a leak audit counted two
/// tasks and 29 KB left behind per node), and hands back what it had
/// received: thirty durable nodes of their own ids, each made, sent one
/// event and shut down, leave the runtime's tasks where they were after the
/// first three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_node_shut_down_leaves_no_task_behind() {
    let server = NatsServer::start().unwrap();
    let happen = Happen::connect(NatsConfig::new(server.url()))
        .await
        .unwrap();
    let sender = Happen::connect(NatsConfig::new(server.url()))
        .await
        .unwrap();
    let shop = sender.node("shop").unwrap();
    let alive = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    let mut before = 0;
    for i in 0..30 {
        if i == 3 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            before = alive();
        }
        let id = format!("session-{i}");
        let node = happen
            .node_with(
                &id,
                NodeConfig::new().delivery(happen::DeliveryConfig::at_least_once()),
            )
            .unwrap();
        let (tx, mut handled) = mpsc::unbounded_channel();
        node.on("hello", move |_e: Event, _cx: Context| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(());
            }
        })
        .unwrap();
        happen.flush().await.unwrap();
        shop.tell(&id, Event::new("hello", json!(i)))
            .unwrap()
            .await
            .unwrap();
        within("the event", 10, handled.recv()).await.unwrap();
        node.shutdown().await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = alive();
    println!("durable nodes shut down: 27 after the first three, tasks {before} -> {after}");
    assert!(after <= before + 3, "tasks {before} -> {after}");
    happen.shutdown().await;
    sender.shutdown().await;
}

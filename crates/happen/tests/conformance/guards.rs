//! Guards on the causal web: a request that would wait forever for itself
//! fails at once as a deadlock, naming the cycle, and a runaway loop of
//! events stops at the configured causal depth, naming what repeats.

use std::time::Duration;

use happen::prelude::*;
use tokio::sync::mpsc;

use super::{Backend, ev};

/// A runtime whose requests would wait long enough that a test ending
/// means the deadlock was reported, not timed out.
async fn start_patient(backend: &dyn Backend) -> Happen {
    backend
        .start(HappenConfig::default().request_timeout(Duration::from_secs(30)))
        .await
}

/// A handler that asks `target` with `event_type` and answers what it
/// heard: the answer, or the error's kind and text.
fn asks(target: &'static str, event_type: &'static str) -> impl happen::Handler {
    move |_e: Event, cx: Context| async move { ask(&cx, target, event_type).await }
}

/// What [`asks`] answers.
async fn ask(cx: &Context, target: &str, event_type: &str) -> Value {
    match cx
        .node()
        .send(target, ev(event_type, json!(null)))
        .response()
        .await
    {
        Ok(value) => json!({ "answer": value }),
        Err(HappenError::Deadlock { node, chain, .. }) => {
            json!({ "deadlock": { "node": node, "chain": chain } })
        }
        Err(other) => json!({ "error": other.to_string() }),
    }
}

/// Node `id` with `slots` flow slots: "start" asks `first` with
/// `ask`; `back` answers `"from a"`.
fn asker(
    h: &Happen,
    id: &str,
    slots: usize,
    first: &'static str,
    ask: &'static str,
    back: &str,
) -> Node {
    let node = h
        .node_with(id, NodeConfig::new().max_concurrent(slots))
        .unwrap();
    node.on("start", asks(first, ask)).unwrap();
    node.on(back, |_e: Event, _cx: Context| async { json!("from a") })
        .unwrap();
    node
}

/// Sends "start" to `node` from a new node `client` and returns the answer.
async fn start_at(h: &Happen, client: &str, node: &Node) -> Value {
    h.node(client)
        .unwrap()
        .send(node, ev("start", json!(null)))
        .response()
        .await
        .unwrap()
}

pub async fn asking_back_a_node_that_waits_is_a_deadlock(backend: &dyn Backend) {
    let h = start_patient(backend).await;
    let a = asker(&h, "dl-a", 1, "dl-b", "ask", "back");
    h.node("dl-b")
        .unwrap()
        .on("ask", asks("dl-a", "back"))
        .unwrap();

    assert_eq!(
        start_at(&h, "dl-client", &a).await,
        json!({ "answer": { "deadlock": { "node": "dl-a", "chain": ["dl-a", "dl-b", "dl-a"] } } })
    );
    // The node is free again afterwards.
    let client = h.node("dl-client-2").unwrap();
    let again = client.send(&a, ev("back", json!(null))).response().await;
    assert_eq!(again.unwrap(), json!("from a"));
}

pub async fn a_cycle_through_three_nodes_is_a_deadlock(backend: &dyn Backend) {
    let h = start_patient(backend).await;
    let a = asker(&h, "dl3-a", 1, "dl3-b", "one", "three");
    h.node("dl3-b")
        .unwrap()
        .on("one", asks("dl3-c", "two"))
        .unwrap();
    h.node("dl3-c")
        .unwrap()
        .on("two", asks("dl3-a", "three"))
        .unwrap();

    let reply = start_at(&h, "dl3-client", &a).await;
    assert_eq!(
        reply["answer"]["answer"]["deadlock"],
        json!({ "node": "dl3-a", "chain": ["dl3-a", "dl3-b", "dl3-c", "dl3-a"] })
    );
}

pub async fn asking_yourself_with_one_slot_is_a_deadlock(backend: &dyn Backend) {
    let h = start_patient(backend).await;
    let a = asker(&h, "self-a", 1, "self-a", "inner", "inner");
    assert_eq!(
        start_at(&h, "self-client", &a).await,
        json!({ "deadlock": { "node": "self-a", "chain": ["self-a", "self-a"] } })
    );
}

pub async fn asking_back_with_a_free_slot_is_answered(backend: &dyn Backend) {
    let h = start_patient(backend).await;
    let a = asker(&h, "re-a", 2, "re-b", "ask", "back");
    h.node("re-b")
        .unwrap()
        .on("ask", asks("re-a", "back"))
        .unwrap();
    assert_eq!(
        start_at(&h, "re-client", &a).await,
        json!({ "answer": { "answer": "from a" } })
    );
}

/// What [`ask`] answers, telling `started` once the wait has begun (its
/// first poll: where the deadlock check of a waiting requester runs).
async fn ask_telling(
    cx: &Context,
    target: &str,
    event_type: &str,
    started: mpsc::UnboundedSender<()>,
) -> Value {
    let mut answer = std::pin::pin!(ask(cx, target, event_type));
    let first = futures::poll!(answer.as_mut());
    let _ = started.send(());
    match first {
        std::task::Poll::Ready(value) => value,
        std::task::Poll::Pending => answer.await,
    }
}

/// Node `via`, whose "ask" asks `target` "back" and tells the receiver
/// returned once that wait has begun.
fn asking_back(h: &Happen, via: &str, target: &'static str) -> mpsc::UnboundedReceiver<()> {
    let (asked_tx, asked) = mpsc::unbounded_channel();
    h.node(via)
        .unwrap()
        .on("ask", move |_e: Event, cx: Context| {
            let asked_tx = asked_tx.clone();
            async move { ask_telling(&cx, target, "back", asked_tx).await }
        })
        .unwrap();
    asked
}

/// `node` answers `event_type` with `answer` once the returned notify is
/// notified (its flow waits for no answer meanwhile).
fn answers_when_let_go(
    node: &Node,
    event_type: &str,
    answer: Value,
) -> std::sync::Arc<tokio::sync::Notify> {
    let go = std::sync::Arc::new(tokio::sync::Notify::new());
    let held = go.clone();
    node.on(event_type, move |_e: Event, _cx: Context| {
        let (held, answer) = (held.clone(), answer.clone());
        async move {
            held.notified().await;
            answer
        }
    })
    .unwrap();
    go
}

/// Node `id` (two slots) whose "slow" flow holds its slot, without
/// waiting for any answer, until `release` is notified.
struct Slow {
    node: Node,
    release: std::sync::Arc<tokio::sync::Notify>,
    started: mpsc::UnboundedReceiver<()>,
}

fn with_slow_flow(h: &Happen, id: &str) -> Slow {
    let node = h
        .node_with(id, NodeConfig::new().max_concurrent(2))
        .unwrap();
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    let (started_tx, started) = mpsc::unbounded_channel();
    let held = release.clone();
    node.on("slow", move |_e: Event, _cx: Context| {
        let (held, started_tx) = (held.clone(), started_tx.clone());
        async move {
            let _ = started_tx.send(());
            held.notified().await;
            json!("released")
        }
    })
    .unwrap();
    node.on("back", |_e: Event, _cx: Context| async { json!("from a") })
        .unwrap();
    Slow {
        node,
        release,
        started,
    }
}

impl Slow {
    /// With the slow flow holding one slot, sends "start" (which asks a
    /// node that asks this one back, telling `asked` once it waits); lets
    /// the slow flow go only then: the request back waits for that slot
    /// and is answered.
    async fn ask_back_while_busy(
        &mut self,
        client: &Node,
        asked: &mut mpsc::UnboundedReceiver<()>,
    ) {
        let slow = self.start(client).await;
        let start = tokio::spawn(client.send(&self.node, ev("start", json!(null))).response());
        tokio::time::timeout(Duration::from_secs(10), asked.recv())
            .await
            .expect("asked back");
        self.release.notify_one();
        assert_eq!(
            start.await.unwrap().unwrap(),
            json!({ "answer": { "answer": "from a" } })
        );
        assert_eq!(slow.await.unwrap().unwrap(), json!("released"));
    }

    /// Starts the slow flow from `client` and waits until it runs.
    async fn start(&mut self, client: &Node) -> tokio::task::JoinHandle<happen::Result<Value>> {
        let slow = tokio::spawn(client.send(&self.node, ev("slow", json!(null))).response());
        tokio::time::timeout(Duration::from_secs(10), self.started.recv())
            .await
            .expect("the slow flow starts");
        slow
    }
}

/// A request back to a node whose other slot is busy with work that will
/// end (a flow waiting for no answer) is no deadlock: it waits for that
/// slot and is answered.
pub async fn asking_back_a_node_busy_with_other_work_waits_for_its_slot(backend: &dyn Backend) {
    let h = start_patient(backend).await;
    let mut slow_flow = with_slow_flow(&h, "bw-a");
    let a = slow_flow.node.clone();
    a.on("start", asks("bw-b", "ask")).unwrap();
    let mut asked = asking_back(&h, "bw-b", "bw-a");
    let client = h.node("bw-client").unwrap();
    slow_flow.ask_back_while_busy(&client, &mut asked).await;
}

/// An event that two handlers take holds one slot, however many of its
/// flows wait: with the node's other slot busy with work that will end, a
/// request back waits for that slot instead of being refused as a
/// deadlock (counting each waiting flow made two waits of one slot).
pub async fn an_event_of_two_handlers_waits_as_one_slot(backend: &dyn Backend) {
    let h = start_patient(backend).await;
    let mut slow_flow = with_slow_flow(&h, "ts-a");
    let a = slow_flow.node.clone();
    // Both flows of "start" wait: the first for b (which asks a back),
    // the second for c (let go only at the end). The first answers.
    a.on("start", asks("ts-b", "ask")).unwrap();
    a.on("start", asks("ts-c", "ask")).unwrap();
    let mut asked = asking_back(&h, "ts-b", "ts-a");
    let c_go = answers_when_let_go(&h.node("ts-c").unwrap(), "ask", json!("from c"));
    let client = h.node("ts-client").unwrap();
    slow_flow.ask_back_while_busy(&client, &mut asked).await;
    c_go.notify_one();
}

/// The slot of an event that two handlers take frees only when both flows
/// end: with one of them waiting for a request back to its only slot, the
/// request back is a deadlock, though the other flow computes.
pub async fn one_waiting_flow_of_two_holds_their_only_slot(backend: &dyn Backend) {
    let h = start_patient(backend).await;
    let a = h
        .node_with("os-a", NodeConfig::new().max_concurrent(1))
        .unwrap();
    a.on("start", asks("os-b", "ask")).unwrap();
    let computing = answers_when_let_go(&a, "start", json!("computed"));
    a.on("back", |_e: Event, _cx: Context| async { json!("from a") })
        .unwrap();
    let _asked = asking_back(&h, "os-b", "os-a");
    let client = h.node("os-client").unwrap();
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        client.send(&a, ev("start", json!(null))).response(),
    )
    .await
    .expect("refused at once, not left waiting");
    computing.notify_one();
    assert_eq!(
        answer.unwrap(),
        json!({ "answer": { "deadlock": { "node": "os-a", "chain": ["os-a", "os-b", "os-a"] } } })
    );
}

/// A flow waiting for several answers at once (a group send) holds one
/// slot and counts once: with the node's other slot busy with work that
/// will end, a request back waits for that slot.
pub async fn a_group_send_waits_as_one_flow(backend: &dyn Backend) {
    let h = start_patient(backend).await;
    let mut slow_flow = with_slow_flow(&h, "gw-a");
    let (a, release) = (slow_flow.node.clone(), slow_flow.release.clone());
    a.on("fan", |_e: Event, cx: Context| async move {
        let results = cx
            .node()
            .send_to_all(["gw-b", "gw-c"], ev("ask", json!(null)))
            .await;
        let heard = |id: &str| match &results[id] {
            Ok(value) => value.clone(),
            Err(error) => json!({ "error": error.to_string() }),
        };
        json!([heard("gw-b"), heard("gw-c")])
    })
    .unwrap();
    let mut asked = asking_back(&h, "gw-b", "gw-a");
    // c answers only once b waits, so that a's flow waits for both then.
    let c_go = answers_when_let_go(&h.node("gw-c").unwrap(), "ask", json!("from c"));
    let client = h.node("gw-client").unwrap();
    let slow = slow_flow.start(&client).await;
    let fan = tokio::spawn(client.send(&a, ev("fan", json!(null))).response());
    tokio::time::timeout(Duration::from_secs(10), asked.recv())
        .await
        .expect("b asks a back");
    c_go.notify_one();
    release.notify_one();
    assert_eq!(
        fan.await.unwrap().unwrap(),
        json!([{ "answer": "from a" }, "from c"])
    );
    assert_eq!(slow.await.unwrap().unwrap(), json!("released"));
}

/// A flow that has read a streamed answer to its end waits for nothing
/// more, though it still holds the stream: a request back waits for its
/// slot instead of being refused.
pub async fn a_stream_read_to_its_end_no_longer_waits(backend: &dyn Backend) {
    use futures::StreamExt;
    let h = start_patient(backend).await;
    let slow_flow = with_slow_flow(&h, "se-a");
    let (a, release) = (slow_flow.node.clone(), slow_flow.release.clone());
    h.node("se-b")
        .unwrap()
        .on("items", |_e: Event, cx: Context| async move {
            cx.emit(json!(1)).await?;
            Ok::<_, HappenError>(json!("done"))
        })
        .unwrap();
    let (read_tx, mut read) = mpsc::unbounded_channel();
    let held = release.clone();
    a.on("read", move |_e: Event, cx: Context| {
        let (read_tx, held) = (read_tx.clone(), held.clone());
        async move {
            let mut stream = cx.node().send("se-b", ev("items", json!(null))).stream();
            let mut items = Vec::new();
            while let Some(item) = stream.next().await {
                items.push(format!("{item:?}"));
            }
            read_tx.send(()).unwrap();
            held.notified().await;
            drop(stream);
            json!(items.len())
        }
    })
    .unwrap();
    a.on("start", asks("se-c", "ask")).unwrap();
    let mut asked = asking_back(&h, "se-c", "se-a");
    let client = h.node("se-client").unwrap();
    let reading = tokio::spawn(client.send(&a, ev("read", json!(null))).response());
    tokio::time::timeout(Duration::from_secs(10), read.recv())
        .await
        .expect("the stream is read to its end");
    let start = tokio::spawn(client.send(&a, ev("start", json!(null))).response());
    tokio::time::timeout(Duration::from_secs(10), asked.recv())
        .await
        .expect("c asks a back");
    release.notify_one();
    assert_eq!(
        start.await.unwrap().unwrap(),
        json!({ "answer": { "answer": "from a" } })
    );
    assert_eq!(reading.await.unwrap().unwrap(), json!(2));
}

/// A flow that began to wait and then handed its wait to a task of its
/// own ends, and its slot waits for nothing: a request back waits for the
/// node's other slot, busy with work that will end, instead of being
/// refused.
pub async fn a_wait_handed_to_a_task_no_longer_counts_once_its_flow_ends(backend: &dyn Backend) {
    let h = start_patient(backend).await;
    let mut slow_flow = with_slow_flow(&h, "ho-a");
    let a = slow_flow.node.clone();
    let b_go = answers_when_let_go(&h.node("ho-b").unwrap(), "later", json!("later"));
    let (handed_tx, handed) = tokio::sync::oneshot::channel();
    let handed_tx = std::sync::Arc::new(std::sync::Mutex::new(Some(handed_tx)));
    a.on("handoff", move |_e: Event, cx: Context| {
        let handed_tx = handed_tx.clone();
        async move {
            let mut answer = Box::pin(cx.node().send("ho-b", ev("later", json!(null))).response());
            // Begins to wait here, then leaves the rest to a task.
            assert!(futures::poll!(answer.as_mut()).is_pending());
            let task = tokio::spawn(answer);
            handed_tx
                .lock()
                .unwrap()
                .take()
                .unwrap()
                .send(task)
                .unwrap();
            json!("handed")
        }
    })
    .unwrap();
    a.on("start", asks("ho-c", "ask")).unwrap();
    let mut asked = asking_back(&h, "ho-c", "ho-a");
    let client = h.node("ho-client").unwrap();
    assert_eq!(
        client.send(&a, ev("handoff", json!(null))).await.unwrap(),
        json!("handed")
    );
    slow_flow.ask_back_while_busy(&client, &mut asked).await;
    b_go.notify_one();
    let task = handed.await.unwrap();
    assert_eq!(task.await.unwrap().unwrap(), json!("later"));
}

/// A flow that sends, then works, and waits only after the request back
/// to it was queued (and its requester began to wait) leaves no slot that
/// frees itself: the request back is refused then, not left to time out.
pub async fn a_late_wait_refuses_the_request_back_it_deadlocks(backend: &dyn Backend) {
    let h = start_patient(backend).await;
    let a = h
        .node_with("lw-a", NodeConfig::new().max_concurrent(1))
        .unwrap();
    a.on("back", |_e: Event, _cx: Context| async { json!("from a") })
        .unwrap();
    let asked = asking_back(&h, "lw-b", "lw-a");
    let asked = std::sync::Arc::new(tokio::sync::Mutex::new(asked));
    a.on("start", move |_e: Event, cx: Context| {
        let asked = asked.clone();
        async move {
            let sent = cx.node().send("lw-b", ev("ask", json!(null)));
            // Work done between sending and waiting, while b asks back.
            asked.lock().await.recv().await;
            match sent.response().await {
                Ok(value) => json!({ "answer": value }),
                Err(other) => json!({ "error": other.to_string() }),
            }
        }
    })
    .unwrap();
    let client = h.node("lw-client").unwrap();
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        client.send(&a, ev("start", json!(null))).response(),
    )
    .await
    .expect("refused at once, not timed out");
    assert_eq!(
        answer.unwrap(),
        json!({ "answer": { "deadlock": { "node": "lw-a", "chain": ["lw-a", "lw-b", "lw-a"] } } })
    );
}

/// Two chains that each hold one of a node's two slots, each asking the
/// node back: neither slot frees itself, so a request back is refused as
/// a deadlock at once (not left to time out).
pub async fn two_chains_holding_both_slots_are_a_deadlock(backend: &dyn Backend) {
    let h = start_patient(backend).await;
    let a = h
        .node_with("2c-a", NodeConfig::new().max_concurrent(2))
        .unwrap();
    a.on("start", |e: Event, cx: Context| async move {
        let via = e.payload().as_str().unwrap().to_owned();
        match cx.node().send(via, ev("ask", json!(null))).response().await {
            Ok(value) => json!({ "answer": value }),
            Err(other) => json!({ "error": other.to_string() }),
        }
    })
    .unwrap();
    a.on("back", |_e: Event, _cx: Context| async { json!("from a") })
        .unwrap();
    // Each middle node asks back only once both of a's flows wait.
    let both = std::sync::Arc::new(tokio::sync::Barrier::new(2));
    for via in ["2c-b", "2c-c"] {
        let both = both.clone();
        h.node(via)
            .unwrap()
            .on("ask", move |_e: Event, cx: Context| {
                let both = both.clone();
                async move {
                    both.wait().await;
                    ask(&cx, "2c-a", "back").await
                }
            })
            .unwrap();
    }
    let client = h.node("2c-client").unwrap();
    let one = client.send(&a, ev("start", json!("2c-b"))).response();
    let two = client.send(&a, ev("start", json!("2c-c"))).response();
    let (one, two) = tokio::time::timeout(Duration::from_secs(10), futures::future::join(one, two))
        .await
        .expect("both refused at once, not timed out");
    // Once one request back is refused, its chain ends and frees a slot:
    // the other may then be answered instead (which one is a race).
    let mut refused = 0;
    for (reply, via) in [(one.unwrap(), "2c-b"), (two.unwrap(), "2c-c")] {
        let deadlock =
            json!({ "answer": { "deadlock": { "node": "2c-a", "chain": ["2c-a", via, "2c-a"] } } });
        if reply == deadlock {
            refused += 1;
        } else {
            assert_eq!(reply, json!({ "answer": { "answer": "from a" } }));
        }
    }
    assert!(refused >= 1, "neither request back was refused");
}

pub async fn a_tell_in_the_chain_waits_for_the_slot(backend: &dyn Backend) {
    // a asks b; b *tells* c and answers; c asks a. c's request waits for
    // a's slot, which frees once b has answered: no deadlock, no refusal.
    let h = start_patient(backend).await;
    let a = asker(&h, "tl-a", 1, "tl-b", "ask", "back");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let b = h.node("tl-b").unwrap();
    b.on("ask", |_e: Event, cx: Context| async move {
        cx.node().tell("tl-c", ev("note", json!(null)))?;
        Ok::<_, HappenError>(json!("told"))
    })
    .unwrap();
    let c = h.node("tl-c").unwrap();
    c.on("note", move |_e: Event, cx: Context| {
        let tx = tx.clone();
        async move {
            let heard = cx
                .node()
                .send("tl-a", ev("back", json!(null)))
                .response()
                .await;
            tx.send(heard.map_err(|e| e.to_string())).unwrap();
        }
    })
    .unwrap();
    assert_eq!(
        start_at(&h, "tl-client", &a).await,
        json!({ "answer": "told" })
    );
    let heard = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("c heard nothing within 10 s")
        .unwrap();
    assert_eq!(heard, Ok(json!("from a")));
}

/// A request whose handle is dropped is fire-and-forget: nobody waits, so
/// it cannot deadlock, even when it names a node (or a chain of nodes) that
/// has no free slot. It waits in the queue and runs once a slot frees:
/// here a one-slot node re-schedules itself, and a node answering a request
/// notifies the one-slot node that waits for it.
pub async fn a_dropped_request_waits_for_the_slot_instead_of_deadlocking(backend: &dyn Backend) {
    let h = start_patient(backend).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let a = h
        .node_with("dr-a", NodeConfig::new().max_concurrent(1))
        .unwrap();
    let heard = tx.clone();
    a.on("tick", move |e: Event, cx: Context| {
        let heard = heard.clone();
        async move {
            let i = e.payload().as_u64().unwrap();
            heard.send(format!("tick {i}")).unwrap();
            if i < 3 {
                drop(cx.node().send("dr-a", ev("tick", json!(i + 1))));
            }
        }
    })
    .unwrap();
    let client = h.node("dr-client").unwrap();
    client.send(&a, ev("tick", json!(1))).await.unwrap();
    for expected in ["tick 1", "tick 2", "tick 3"] {
        let got = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("every tick runs")
            .unwrap();
        assert_eq!(got, expected);
    }

    // a asks b; b drops a request back to a (a notification) and answers.
    a.on("ask", |_e: Event, cx: Context| async move {
        cx.node().send("dr-b", ev("work", json!(null))).await
    })
    .unwrap();
    let b = h.node("dr-b").unwrap();
    b.on("work", |_e: Event, cx: Context| async move {
        drop(cx.node().send("dr-a", ev("note", json!("done soon"))));
        json!("worked")
    })
    .unwrap();
    a.on("note", move |e: Event, _cx: Context| {
        let tx = tx.clone();
        async move {
            tx.send(e.payload().to_string()).unwrap();
        }
    })
    .unwrap();
    assert_eq!(
        client.send(&a, ev("ask", json!(null))).await.unwrap(),
        json!("worked")
    );
    let got = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("the note arrives once a's slot frees")
        .unwrap();
    assert_eq!(got, "\"done soon\"");

    // The same for a group send whose handle is dropped.
    a.on("fan", |_e: Event, cx: Context| async move {
        drop(cx.node().send_to_all(["dr-a"], ev("note", json!("to all"))));
    })
    .unwrap();
    client.send(&a, ev("fan", json!(null))).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("the group's note arrives once a's slot frees")
        .unwrap();
    assert_eq!(got, "\"to all\"");
}

/// A task a flow spawned may outlive the flow and its answer: the nodes
/// that waited for that answer are not believed to wait for the task's
/// requests, nor is the task's own node. Here x asks y, y answers at once
/// and spawns a follow-up that asks x, then y itself, later, while both
/// one-slot nodes run unrelated work: each request waits for the slot
/// instead of being refused as a deadlock.
pub async fn a_spawned_follow_up_waits_for_a_busy_slot(backend: &dyn Backend) {
    let h = start_patient(backend).await;
    let one_slot = || NodeConfig::new().max_concurrent(1);
    let x = h.node_with("sf-x", one_slot()).unwrap();
    let y = h.node_with("sf-y", one_slot()).unwrap();
    x.on("start", |_e: Event, cx: Context| async move {
        cx.node().send("sf-y", ev("work", json!(null))).await
    })
    .unwrap();
    for node in [&x, &y] {
        node.on("busy", |_e: Event, _cx: Context| async {
            tokio::time::sleep(Duration::from_millis(300)).await;
        })
        .unwrap();
        node.on("later", |_e: Event, cx: Context| async move {
            json!(format!("later done at {}", cx.node().id()))
        })
        .unwrap();
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    y.on("work", move |_e: Event, cx: Context| {
        let tx = tx.clone();
        async move {
            let node = cx.node().clone();
            happen::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                // Asks the node that asked, and its own node: both slots
                // run unrelated work by then.
                for target in ["sf-x", "sf-y"] {
                    let _ = tx.send(node.send(target, ev("later", json!(null))).await);
                }
            });
            json!("worked")
        }
    })
    .unwrap();
    let client = h.node("sf-client").unwrap();
    assert_eq!(
        client.send(&x, ev("start", json!(null))).await.unwrap(),
        json!("worked")
    );
    client.tell(&x, ev("busy", json!(null))).unwrap();
    client.tell(&y, ev("busy", json!(null))).unwrap();
    for at in ["sf-x", "sf-y"] {
        let later = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("the follow-up is answered")
            .unwrap();
        assert_eq!(later, Ok(json!(format!("later done at {at}"))));
    }
}

/// Waiting for a request that would deadlock is refused at once whichever
/// way the requester waits: for the value, or for a stream.
pub async fn waiting_for_a_stream_that_would_deadlock_is_refused(backend: &dyn Backend) {
    use futures::StreamExt;
    let h = start_patient(backend).await;
    let a = h
        .node_with("ds-a", NodeConfig::new().max_concurrent(1))
        .unwrap();
    a.on("inner", |_e: Event, _cx: Context| async { json!("inner") })
        .unwrap();
    a.on("start", |_e: Event, cx: Context| async move {
        let mut stream = cx.node().send("ds-a", ev("inner", json!(null))).stream();
        match stream.next().await {
            Some(Err(HappenError::Deadlock { chain, .. })) => json!({ "deadlock": chain }),
            other => json!({ "other": format!("{other:?}") }),
        }
    })
    .unwrap();
    assert_eq!(
        start_at(&h, "ds-client", &a).await,
        json!({ "deadlock": ["ds-a", "ds-a"] })
    );

    // And for a group send awaited from the node it names.
    a.on("fan", |_e: Event, cx: Context| async move {
        let results = cx
            .node()
            .send_to_all(["ds-a"], ev("inner", json!(null)))
            .await;
        match &results["ds-a"] {
            Err(HappenError::Deadlock { chain, .. }) => json!({ "deadlock": chain }),
            other => json!({ "other": format!("{other:?}") }),
        }
    })
    .unwrap();
    let client = h.node("ds-fan-client").unwrap();
    assert_eq!(
        client.send(&a, ev("fan", json!(null))).await.unwrap(),
        json!({ "deadlock": ["ds-a", "ds-a"] })
    );
}

pub async fn a_runaway_loop_stops_at_the_causal_depth(backend: &dyn Backend) {
    let h = backend
        .start(HappenConfig::default().max_causal_depth(10))
        .await;
    let (handled_tx, mut handled) = mpsc::unbounded_channel();
    let (error_tx, mut errors) = mpsc::unbounded_channel();
    for (me, other) in [("loop-a", "loop-b"), ("loop-b", "loop-a")] {
        let (handled_tx, error_tx) = (handled_tx.clone(), error_tx.clone());
        h.node(me)
            .unwrap()
            .on("bounce", move |e: Event, cx: Context| {
                let (handled_tx, error_tx) = (handled_tx.clone(), error_tx.clone());
                async move {
                    handled_tx.send(e.causal().path.len()).unwrap();
                    if let Err(error) = cx.node().tell(other, ev("bounce", json!(null))) {
                        error_tx.send(error).unwrap();
                    }
                }
            })
            .unwrap();
    }
    let starter = h.node("loop-start").unwrap();
    starter.tell("loop-a", ev("bounce", json!(null))).unwrap();

    let error = tokio::time::timeout(Duration::from_secs(10), errors.recv())
        .await
        .expect("the loop did not stop within 10 s")
        .unwrap();
    match error {
        HappenError::CausalDepth {
            node,
            event_type,
            depth,
            limit,
            repeating,
        } => {
            assert_eq!((node.as_str(), event_type.as_str()), ("loop-b", "bounce"));
            assert_eq!((depth, limit), (11, 10));
            assert_eq!(repeating, ["loop-a", "loop-b"]);
        }
        other => panic!("expected CausalDepth, got {other}"),
    }
    // Every event up to the limit was handled, none beyond it.
    let mut depths = Vec::new();
    while let Ok(Some(depth)) =
        tokio::time::timeout(Duration::from_millis(200), handled.recv()).await
    {
        depths.push(depth);
    }
    assert_eq!(depths, (1..=10).collect::<Vec<_>>());
}

//! In-process benchmark of the embedded runtime: what `happen` costs beside
//! hand-written tokio channels ("tokio raw") and three actor crates, `ractor`,
//! `kameo` and `actix`, doing the same work in the same run.
//!
//! Run it in release mode with
//!
//! ```text
//! cargo bench -p happen --bench local
//! HAPPEN_BENCH_N=20000 cargo bench -p happen --bench local       # fewer operations per repetition
//! HAPPEN_BENCH_ONLY="current-thread / request" cargo bench -p happen --bench local   # one benchmark
//! HAPPEN_BENCH_CONTENDERS=happen,tokio cargo bench -p happen --bench local          # fewer contenders
//! HAPPEN_BENCH_NODES=100000 cargo bench -p happen --bench local  # memory rows at 100 k nodes only
//! ```
//!
//! Environment variables (all optional):
//!
//! - `HAPPEN_BENCH_N`: messages per repetition (default [`DEFAULT_N`]).
//! - `HAPPEN_BENCH_BATCH`: fire-and-forget and fan-out batch size (default
//!   [`DEFAULT_BATCH`]).
//! - `HAPPEN_BENCH_REPS`: timed repetitions (default [`DEFAULT_REPS`]).
//! - `HAPPEN_BENCH_ONLY`: keep only the benchmarks whose "runtime /
//!   benchmark" label contains this text, e.g. `multi-thread`, `fan-out`,
//!   `memory` (handy under a profiler).
//! - `HAPPEN_BENCH_CONTENDERS`: comma-separated subset of `happen`, `tokio`,
//!   `ractor`, `kameo`, `actix` (default: all).
//! - `HAPPEN_BENCH_BYSTANDERS`: extra happen nodes in the fire-and-forget
//!   and fan-out runs, each with a handler for another event type
//!   (default 0): what a broadcast costs in a process with many nodes.
//! - `HAPPEN_BENCH_NODES`: comma-separated node counts for the memory rows
//!   (default `100000,1000000`).
//! - `HAPPEN_BENCH_NODE_SECS`: time cap in seconds for creating the nodes of
//!   one memory row (default [`DEFAULT_NODE_SECS`]); a contender that hits it
//!   is reported with the number of nodes it had created.
//!
//! Every contender gets the same message, `serde_json::json!({"seq": i})` (a
//! `serde_json::Value`), and a request is answered with `payload["seq"]`
//! (a `Value` too).
//!
//! # Throughput benchmarks
//!
//! They run on a current-thread tokio runtime and on a multi-thread runtime
//! with 2 workers. The driving code runs as a spawned task (on the
//! multi-thread runtime: on a worker thread) and takes the time itself, so
//! `block_on` is not part of it.
//!
//! 1. **request→response**: `N` sequential requests, each awaited before the
//!    next (client → server → reply). Reported as ns per request and
//!    requests/s.
//!    - happen: `a.send(&b, Event::new("ping", payload)).await`,
//!      `b` having one `ping` handler that returns `payload["seq"]`;
//!    - tokio raw: one long-lived task reading `(Value, oneshot::Sender)`
//!      from a bounded (1024) `tokio::sync::mpsc` channel and answering on
//!      the oneshot;
//!    - ractor: `call!(actor, Msg::Ping, payload)` (an `RpcReplyPort`);
//!    - kameo: `actor_ref.ask(Ping(payload)).await` (default bounded mailbox
//!      of 64; the reply type is `Result<Value, Infallible>` because kameo
//!      wants a `Reply` type and `Value` is not one);
//!    - actix: `addr.send(Ping(payload)).await`.
//! 2. **fire-and-forget**: `N` messages sent without waiting, in batches of
//!    `HAPPEN_BENCH_BATCH`: send a batch, wait until the receiver has counted
//!    all of it (an `AtomicUsize` and a `Notify`), repeat. So handling is
//!    measured, not only enqueueing, and the backlog stays small. Reported
//!    in events/s.
//!    - happen: `a.tell(&b, Event::new("ping", payload))`, `b` created with
//!      `NodeConfig::new().queue_limit(batch)` so nothing is refused;
//!    - tokio raw: an unbounded `tokio::sync::mpsc` channel drained by a
//!      counting task;
//!    - ractor: `actor.cast(..)` (ractor mailboxes are unbounded);
//!    - kameo: `actor_ref.tell(..).try_send()` into an unbounded mailbox;
//!    - actix: `addr.do_send(..)` (ignores the mailbox capacity).
//! 3. **fan-out to 5**: one sender, 5 receivers that each handle every
//!    message; the same batching as fire-and-forget, waiting until all
//!    `5 × batch` deliveries are counted. Reported in deliveries/s
//!    (`5 × N / time`).
//!    - happen: 5 nodes (each with `queue_limit(batch)`) with a `tick`
//!      handler, and `sender.broadcast(Event::new("tick", payload))`;
//!    - the others: a loop over the 5 receivers (4 clones of the payload,
//!      the last receiver gets the original): 5 unbounded channels for tokio
//!      raw, `cast` for ractor, `tell(..).try_send()` for kameo (unbounded
//!      mailboxes), `do_send` for actix.
//!
//! Each benchmark sets every contender up once, does one warm-up
//! repetition and then `HAPPEN_BENCH_REPS` timed repetitions of `N`
//! messages. Within a repetition the contenders run one after the other
//! (starting with a different one each repetition), so that all see the same
//! machine noise. The tables show medians; the spread (min..max) follows.
//!
//! actix runs in its own `actix_rt::System` (a current-thread tokio runtime
//! with a `LocalSet`, which is how actix runs): its actors and its driving
//! task (`actix_rt::spawn`) live there, and the other contenders' tasks in
//! the benchmark's tokio runtime. An actix arbiter is single-threaded, so
//! actix has no cell in the multi-thread table.
//!
//! Ratio columns are happen / contender in throughput (for request→response
//! that is contender ns / happen ns): above 1 means happen is faster.
//!
//! # Memory per idle node
//!
//! For each count `K` in `HAPPEN_BENCH_NODES`, and for happen, ractor, kameo
//! and actix, in a fresh current-thread runtime (a fresh `actix_rt::System`
//! for actix): create `K` nodes/actors, each with one handler (happen:
//! `happen.node(&format!("n{i}"))?` then `.on("ping", handler)?`; ractor:
//! `Actor::spawn(None, ..)`, unnamed; kameo: `Actor::spawn` with its default
//! mailbox; actix: `.start()`), keep their handles in a `Vec` allocated
//! beforehand, then send one request to the last one created and await the
//! answer (so the actors have started). The heap bytes allocated and still
//! live (counted by the global allocator, [`cap::Cap`] around
//! `std::alloc::System`; the crate forbids `unsafe`, so the counting
//! allocator comes from a crate) are read before and after; the difference
//! divided by `K` is the figure. It counts requested sizes, not the
//! allocator's own overhead. The creation time is the wall time of the same
//! span. Each row is measured once.
//!
//! The counting allocator is in place for the whole binary, so every
//! allocation in the throughput benchmarks pays two relaxed atomic
//! operations too, for every contender alike.
//!
//! # Targets
//!
//! Printed under each table with "yes"/"no": happen's request→response,
//! fire-and-forget and fan-out at least as fast as ractor's and kameo's in
//! the same run; request→response at least [`RR_VS_TOKIO_TARGET`] × tokio
//! raw; at most [`MEMORY_TARGET`] bytes per idle node at 1,000,000 nodes;
//! creating 1,000,000 nodes within [`CREATION_TARGET_SECS`] s ("seconds",
//! not minutes).

use std::alloc::System;
use std::convert::Infallible;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use actix::Actor as _;
use cap::Cap;
use happen::prelude::*;
use kameo::actor::Spawn as _;
use tokio::runtime::{Builder, Runtime};
use tokio::sync::{Notify, mpsc, oneshot};

mod support;
use support::{current_thread_runtime, env_usize, fmt_rate, run_on, selected};

/// Counts the heap bytes that are allocated and live, for the memory rows.
#[global_allocator]
static ALLOCATOR: Cap<System> = Cap::new(System, usize::MAX);

/// Messages per repetition unless `HAPPEN_BENCH_N` says otherwise.
const DEFAULT_N: usize = 100_000;
/// Fire-and-forget and fan-out messages sent before waiting for them to be
/// handled.
const DEFAULT_BATCH: usize = 1_000;
/// Timed repetitions per benchmark (after one warm-up).
const DEFAULT_REPS: usize = 5;
/// Receivers in the fan-out benchmark.
const FAN_OUT: usize = 5;
/// Node counts of the memory rows.
const DEFAULT_NODES: [usize; 2] = [100_000, 1_000_000];
/// Seconds allowed for creating the nodes of one memory row.
const DEFAULT_NODE_SECS: usize = 60;
/// happen's request→response throughput must be at least this fraction of
/// tokio raw's.
const RR_VS_TOKIO_TARGET: f64 = 0.7;
/// Most heap bytes per idle node (one handler) at 1,000,000 nodes.
const MEMORY_TARGET: f64 = 1024.0;
/// Most seconds for creating 1,000,000 nodes.
const CREATION_TARGET_SECS: f64 = 10.0;

/// The things compared.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Who {
    Happen,
    Tokio,
    Ractor,
    Kameo,
    Actix,
}

impl Who {
    const ALL: [Who; 5] = [Who::Happen, Who::Tokio, Who::Ractor, Who::Kameo, Who::Actix];

    fn label(self) -> &'static str {
        match self {
            Who::Happen => "happen",
            Who::Tokio => "tokio",
            Who::Ractor => "ractor",
            Who::Kameo => "kameo",
            Who::Actix => "actix",
        }
    }

    /// Whether `HAPPEN_BENCH_CONTENDERS` keeps this contender (happen is
    /// always kept: every ratio is relative to it).
    fn wanted(self) -> bool {
        self == Who::Happen
            || std::env::var("HAPPEN_BENCH_CONTENDERS").map_or(true, |list| {
                list.split(',')
                    .any(|s| s.trim().eq_ignore_ascii_case(self.label()))
            })
    }
}

/// The timed repetitions of one measurement (warm-up excluded).
#[derive(Default)]
struct Samples(Vec<Duration>);

impl Samples {
    fn sorted(&self) -> Vec<Duration> {
        let mut v = self.0.clone();
        v.sort();
        v
    }

    fn median(&self) -> Duration {
        let v = self.sorted();
        v[v.len() / 2]
    }

    fn min(&self) -> Duration {
        self.sorted()[0]
    }

    fn max(&self) -> Duration {
        *self.sorted().last().expect("no samples")
    }
}

/// Counts handled messages and wakes the waiter when `target` is reached.
struct Counter {
    count: AtomicUsize,
    target: AtomicUsize,
    done: Notify,
}

impl Counter {
    fn new() -> Arc<Self> {
        Arc::new(Counter {
            count: AtomicUsize::new(0),
            target: AtomicUsize::new(usize::MAX),
            done: Notify::new(),
        })
    }

    fn arm(&self, n: usize) {
        self.count.store(0, Ordering::SeqCst);
        self.target.store(n, Ordering::SeqCst);
    }

    fn hit(&self) {
        let seen = self.count.fetch_add(1, Ordering::AcqRel) + 1;
        if seen == self.target.load(Ordering::Acquire) {
            // `notify_one` keeps a permit if the waiter is not waiting yet.
            self.done.notify_one();
        }
    }

    async fn wait(&self) {
        self.done.notified().await;
    }
}

/// The message every contender carries.
fn payload(i: usize) -> Value {
    json!({ "seq": i })
}

/// Sends `p` to every target: clones for all but the last, which gets `p`.
fn fan<T>(targets: &[T], p: Value, mut send: impl FnMut(&T, Value)) {
    let (last, rest) = targets.split_last().expect("no targets");
    for t in rest {
        send(t, p.clone());
    }
    send(last, p);
}

/// Runs `n` messages in batches of `batch`: `arm` the counter for the
/// batch's deliveries (`per_message` each), `send` every message, wait.
async fn batched(
    n: usize,
    batch: usize,
    per_message: usize,
    counter: &Counter,
    mut send: impl FnMut(usize),
) -> Duration {
    let start = Instant::now();
    for first in (0..n).step_by(batch) {
        let last = (first + batch).min(n);
        counter.arm((last - first) * per_message);
        for i in first..last {
            send(i);
        }
        counter.wait().await;
    }
    start.elapsed()
}

// ---------------------------------------------------------------------------
// The peers' actors. Each has a request (`Ping`, answered with
// `payload["seq"]`) and a one-way message (`Tick`, counted).
// ---------------------------------------------------------------------------

/// ractor's actor: its messages are an enum, the request carries its reply
/// port.
struct RactorServer;

/// Messages of [`RactorServer`].
enum RactorMsg {
    Ping(Value, ractor::RpcReplyPort<Value>),
    Tick(Value),
}

impl ractor::Actor for RactorServer {
    type Msg = RactorMsg;
    type State = Option<Arc<Counter>>;
    type Arguments = Option<Arc<Counter>>;

    async fn pre_start(
        &self,
        _myself: ractor::ActorRef<RactorMsg>,
        counter: Option<Arc<Counter>>,
    ) -> Result<Self::State, ractor::ActorProcessingErr> {
        Ok(counter)
    }

    async fn handle(
        &self,
        _myself: ractor::ActorRef<RactorMsg>,
        message: RactorMsg,
        counter: &mut Self::State,
    ) -> Result<(), ractor::ActorProcessingErr> {
        match message {
            RactorMsg::Ping(p, reply) => {
                let _ = reply.send(p["seq"].clone());
            }
            RactorMsg::Tick(p) => {
                black_box(&p);
                if let Some(c) = counter {
                    c.hit();
                }
            }
        }
        Ok(())
    }
}

/// kameo's actor.
#[derive(kameo::Actor)]
struct KameoServer {
    counter: Option<Arc<Counter>>,
}

/// kameo request.
struct KameoPing(Value);
/// kameo one-way message.
struct KameoTick(Value);

impl kameo::message::Message<KameoPing> for KameoServer {
    type Reply = Result<Value, Infallible>;

    async fn handle(
        &mut self,
        msg: KameoPing,
        _ctx: &mut kameo::message::Context<Self, Self::Reply>,
    ) -> Self::Reply {
        Ok(msg.0["seq"].clone())
    }
}

impl kameo::message::Message<KameoTick> for KameoServer {
    type Reply = ();

    async fn handle(
        &mut self,
        msg: KameoTick,
        _ctx: &mut kameo::message::Context<Self, Self::Reply>,
    ) {
        black_box(&msg.0);
        if let Some(c) = &self.counter {
            c.hit();
        }
    }
}

/// actix's actor.
struct ActixServer {
    counter: Option<Arc<Counter>>,
}

impl actix::Actor for ActixServer {
    type Context = actix::Context<Self>;
}

/// actix request.
struct ActixPing(Value);
/// actix one-way message.
struct ActixTick(Value);

impl actix::Message for ActixPing {
    type Result = Value;
}

impl actix::Message for ActixTick {
    type Result = ();
}

impl actix::Handler<ActixPing> for ActixServer {
    type Result = actix::MessageResult<ActixPing>;

    fn handle(&mut self, msg: ActixPing, _ctx: &mut actix::Context<Self>) -> Self::Result {
        actix::MessageResult(msg.0["seq"].clone())
    }
}

impl actix::Handler<ActixTick> for ActixServer {
    type Result = ();

    fn handle(&mut self, msg: ActixTick, _ctx: &mut actix::Context<Self>) {
        black_box(&msg.0);
        if let Some(c) = &self.counter {
            c.hit();
        }
    }
}

/// happen's request handler: answers `payload["seq"]`.
fn on_ping(node: &Node) {
    node.on("ping", |e: Event, _cx: Context| async move {
        e.payload()["seq"].clone()
    })
    .expect("handler");
}

/// happen's one-way handler for `event_type`: counts.
///
/// The work is synchronous, so it is done in the call and the step's
/// future is ready at once: the handler reads its counter by reference, as
/// the peers' handlers read theirs from their actor's state. (An `async
/// move` block would need its own clone of the counter for every event,
/// two atomic operations the peers' handlers do not make.)
fn on_count(node: &Node, event_type: &str, counter: &Arc<Counter>) {
    let c = counter.clone();
    node.on(event_type, move |e: Event, _cx: Context| {
        black_box(e.payload());
        c.hit();
        std::future::ready(())
    })
    .expect("handler");
}

// ---------------------------------------------------------------------------
// Runtimes and contenders.
// ---------------------------------------------------------------------------

/// Where one table's benchmarks run.
struct Env {
    name: &'static str,
    rt: Runtime,
    /// actix's own system, on the current-thread table only.
    actix: Option<actix_rt::SystemRunner>,
}

impl Env {
    /// Runs `fut` as a task of the tokio runtime.
    fn tokio<F>(&self, fut: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        run_on(&self.rt, fut)
    }

    /// Runs `fut` as a task of actix's system.
    fn actix<F>(&self, fut: F) -> F::Output
    where
        F: Future + 'static,
        F::Output: 'static,
    {
        let system = self.actix.as_ref().expect("no actix system here");
        system.block_on(async { actix_rt::spawn(fut).await.expect("actix task panicked") })
    }

    fn has(&self, who: Who) -> bool {
        who.wanted() && (who != Who::Actix || self.actix.is_some())
    }
}

/// One contender set up for one benchmark.
struct Contender<'e> {
    who: Who,
    /// Runs one repetition of `n` messages and returns its duration.
    rep: Rep<'e>,
    /// Stops what the contender started; called after `rep` is dropped.
    finish: Finish<'e>,
}

/// Runs one repetition of `n` messages and returns its duration.
type Rep<'e> = Box<dyn FnMut(usize) -> Duration + 'e>;
/// Stops what a contender started.
type Finish<'e> = Box<dyn FnOnce() + 'e>;

/// Warm-up plus `reps` timed repetitions, the contenders alternating within
/// each repetition (a different one first each time).
fn measure(mut cs: Vec<Contender<'_>>, n: usize, reps: usize) -> Vec<(Who, Samples)> {
    let mut samples: Vec<Samples> = cs.iter().map(|_| Samples::default()).collect();
    for rep in 0..=reps {
        for k in 0..cs.len() {
            let j = (rep + k) % cs.len();
            let took = (cs[j].rep)(n);
            if rep > 0 {
                samples[j].0.push(took);
            }
        }
    }
    cs.into_iter()
        .zip(samples)
        .map(|(c, s)| {
            let Contender { who, rep, finish } = c;
            drop(rep);
            finish();
            (who, s)
        })
        .collect()
}

/// request→response: `n` sequential requests, each awaited.
fn request_response(env: &Env, who: Who) -> Contender<'_> {
    let (rep, finish): (Rep<'_>, Finish<'_>) = match who {
        Who::Happen => {
            let (happen, a, b) = env.tokio(async {
                let happen = Happen::embedded();
                let a = happen.node("client").expect("node");
                let b = happen.node("server").expect("node");
                on_ping(&b);
                (happen, a, b)
            });
            (
                Box::new(move |n| {
                    let (a, b) = (a.clone(), b.clone());
                    env.tokio(async move {
                        let start = Instant::now();
                        for i in 0..n {
                            let v = a
                                .send(&b, Event::new("ping", payload(i)))
                                .await
                                .expect("happen request");
                            black_box(v);
                        }
                        start.elapsed()
                    })
                }),
                Box::new(move || env.tokio(async move { happen.shutdown().await })),
            )
        }
        Who::Tokio => {
            let (tx, server) = env.tokio(async {
                let (tx, mut rx) = mpsc::channel::<(Value, oneshot::Sender<Value>)>(1024);
                let server = tokio::spawn(async move {
                    while let Some((p, reply)) = rx.recv().await {
                        let _ = reply.send(p["seq"].clone());
                    }
                });
                (tx, server)
            });
            (
                Box::new(move |n| {
                    let tx = tx.clone();
                    env.tokio(async move {
                        let start = Instant::now();
                        for i in 0..n {
                            let (otx, orx) = oneshot::channel();
                            tx.send((payload(i), otx)).await.expect("server alive");
                            black_box(orx.await.expect("tokio request"));
                        }
                        start.elapsed()
                    })
                }),
                Box::new(move || env.tokio(server).expect("server task")),
            )
        }
        Who::Ractor => {
            let (actor, handle) = env.tokio(async {
                ractor::Actor::spawn(None, RactorServer, None)
                    .await
                    .expect("ractor spawn")
            });
            let stop = actor.clone();
            (
                Box::new(move |n| {
                    let actor = actor.clone();
                    env.tokio(async move {
                        let start = Instant::now();
                        for i in 0..n {
                            let Ok(v) = ractor::call!(actor, RactorMsg::Ping, payload(i)) else {
                                panic!("ractor request failed");
                            };
                            black_box(v);
                        }
                        start.elapsed()
                    })
                }),
                Box::new(move || {
                    stop.stop(None);
                    env.tokio(handle).expect("ractor actor");
                }),
            )
        }
        Who::Kameo => {
            let actor = env.tokio(async { KameoServer::spawn(KameoServer { counter: None }) });
            let stop = actor.clone();
            (
                Box::new(move |n| {
                    let actor = actor.clone();
                    env.tokio(async move {
                        let start = Instant::now();
                        for i in 0..n {
                            let Ok(v) = actor.ask(KameoPing(payload(i))).await else {
                                panic!("kameo request failed");
                            };
                            black_box(v);
                        }
                        start.elapsed()
                    })
                }),
                Box::new(move || env.tokio(kameo_stop(stop))),
            )
        }
        Who::Actix => {
            let addr = env.actix(async { ActixServer { counter: None }.start() });
            (
                Box::new(move |n| {
                    let addr = addr.clone();
                    env.actix(async move {
                        let start = Instant::now();
                        for i in 0..n {
                            let Ok(v) = addr.send(ActixPing(payload(i))).await else {
                                panic!("actix request failed");
                            };
                            black_box(v);
                        }
                        start.elapsed()
                    })
                }),
                // The actor stops once its last address is gone.
                Box::new(|| {}),
            )
        }
    };
    Contender { who, rep, finish }
}

/// Stops a kameo actor and waits until it has.
async fn kameo_stop(actor: kameo::actor::ActorRef<KameoServer>) {
    actor.stop_gracefully().await.expect("kameo stop");
    actor.wait_for_shutdown().await;
}

/// Spawns a kameo actor that counts, with an unbounded mailbox.
fn kameo_counting(counter: &Arc<Counter>) -> kameo::actor::ActorRef<KameoServer> {
    KameoServer::spawn_with_mailbox(
        KameoServer {
            counter: Some(counter.clone()),
        },
        kameo::mailbox::unbounded(),
    )
}

/// fire-and-forget (`receivers` = 1) or fan-out (`receivers` =
/// [`FAN_OUT`]): `n` one-way messages in batches of `batch`, each handled by
/// every receiver.
fn one_way(env: &Env, who: Who, batch: usize, receivers: usize) -> Contender<'_> {
    let counter = Counter::new();
    let c = counter.clone();
    let (rep, finish): (Rep<'_>, Finish<'_>) = match who {
        Who::Happen => {
            let (happen, sender, targets) = env.tokio(async move {
                let happen = Happen::embedded();
                let sender = happen.node("sender").expect("node");
                let targets: Vec<Node> = (0..receivers)
                    .map(|r| {
                        let node = happen
                            .node_with(
                                &format!("receiver{r}"),
                                NodeConfig::new().queue_limit(batch),
                            )
                            .expect("node");
                        on_count(&node, "tick", &c);
                        node
                    })
                    .collect();
                // Nodes that take other event types: a broadcast should not
                // cost in proportion to them.
                let bystanders: Vec<Node> = (0..env_usize("HAPPEN_BENCH_BYSTANDERS", 0))
                    .map(|i| {
                        let node = happen.node(&format!("bystander{i}")).expect("node");
                        on_count(&node, "other", &c);
                        node
                    })
                    .collect();
                drop(bystanders);
                (happen, sender, targets)
            });
            (
                Box::new(move |n| {
                    let (sender, targets, c) = (sender.clone(), targets.clone(), counter.clone());
                    env.tokio(async move {
                        batched(n, batch, receivers, &c, |i| {
                            let event = Event::new("tick", payload(i));
                            if receivers == 1 {
                                sender.tell(&targets[0], event).expect("happen tell");
                            } else {
                                sender.broadcast(event).expect("happen broadcast");
                            }
                        })
                        .await
                    })
                }),
                Box::new(move || env.tokio(async move { happen.shutdown().await })),
            )
        }
        Who::Tokio => {
            let (txs, tasks) = env.tokio(async move {
                (0..receivers)
                    .map(|_| {
                        let (tx, mut rx) = mpsc::unbounded_channel::<Value>();
                        let c = c.clone();
                        let task = tokio::spawn(async move {
                            while let Some(p) = rx.recv().await {
                                black_box(&p);
                                c.hit();
                            }
                        });
                        (tx, task)
                    })
                    .unzip::<_, _, Vec<_>, Vec<_>>()
            });
            (
                Box::new(move |n| {
                    let (txs, c) = (txs.clone(), counter.clone());
                    env.tokio(async move {
                        batched(n, batch, receivers, &c, |i| {
                            fan(&txs, payload(i), |tx, p| {
                                tx.send(p).expect("receiver alive")
                            });
                        })
                        .await
                    })
                }),
                Box::new(move || {
                    env.tokio(async move {
                        for task in tasks {
                            task.await.expect("receiver task");
                        }
                    });
                }),
            )
        }
        Who::Ractor => {
            let actors = env.tokio(async move {
                let mut actors = Vec::new();
                for _ in 0..receivers {
                    actors.push(
                        ractor::Actor::spawn(None, RactorServer, Some(c.clone()))
                            .await
                            .expect("ractor spawn"),
                    );
                }
                actors
            });
            let refs: Vec<_> = actors.iter().map(|(a, _)| a.clone()).collect();
            (
                Box::new(move |n| {
                    let (refs, c) = (refs.clone(), counter.clone());
                    env.tokio(async move {
                        batched(n, batch, receivers, &c, |i| {
                            fan(&refs, payload(i), |a, p| {
                                if a.cast(RactorMsg::Tick(p)).is_err() {
                                    panic!("ractor cast failed");
                                }
                            });
                        })
                        .await
                    })
                }),
                Box::new(move || {
                    env.tokio(async move {
                        for (actor, handle) in actors {
                            actor.stop(None);
                            handle.await.expect("ractor actor");
                        }
                    });
                }),
            )
        }
        Who::Kameo => {
            let actors: Vec<_> =
                env.tokio(async move { (0..receivers).map(|_| kameo_counting(&c)).collect() });
            let stop = actors.clone();
            (
                Box::new(move |n| {
                    let (actors, c) = (actors.clone(), counter.clone());
                    env.tokio(async move {
                        batched(n, batch, receivers, &c, |i| {
                            fan(&actors, payload(i), |a, p| {
                                if a.tell(KameoTick(p)).try_send().is_err() {
                                    panic!("kameo tell failed");
                                }
                            });
                        })
                        .await
                    })
                }),
                Box::new(move || {
                    env.tokio(async move {
                        for actor in stop {
                            kameo_stop(actor).await;
                        }
                    });
                }),
            )
        }
        Who::Actix => {
            let addrs: Vec<_> = env.actix(async move {
                (0..receivers)
                    .map(|_| {
                        ActixServer {
                            counter: Some(c.clone()),
                        }
                        .start()
                    })
                    .collect()
            });
            (
                Box::new(move |n| {
                    let (addrs, c) = (addrs.clone(), counter.clone());
                    env.actix(async move {
                        batched(n, batch, receivers, &c, |i| {
                            fan(&addrs, payload(i), |a, p| a.do_send(ActixTick(p)));
                        })
                        .await
                    })
                }),
                Box::new(|| {}),
            )
        }
    };
    Contender { who, rep, finish }
}

// ---------------------------------------------------------------------------
// Throughput tables.
// ---------------------------------------------------------------------------

/// The throughput benchmarks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    RequestResponse,
    FireAndForget,
    FanOut,
}

impl Op {
    fn label(self) -> &'static str {
        match self {
            Op::RequestResponse => "request→response",
            Op::FireAndForget => "fire-and-forget",
            Op::FanOut => "fan-out to 5",
        }
    }

    /// Units counted per message (deliveries for fan-out).
    fn per_message(self) -> usize {
        if self == Op::FanOut { FAN_OUT } else { 1 }
    }
}

/// What to run.
#[derive(Clone, Copy)]
struct Params {
    n: usize,
    batch: usize,
    reps: usize,
}

/// One measured row: the samples of each contender that ran.
struct OpRow {
    op: Op,
    units: usize,
    results: Vec<(Who, Samples)>,
}

impl OpRow {
    /// Median throughput (units/s) of `who`, if it ran.
    fn rate(&self, who: Who) -> Option<f64> {
        self.samples(who).map(|s| per_sec(self.units, s.median()))
    }

    fn samples(&self, who: Who) -> Option<&Samples> {
        self.results.iter().find(|(w, _)| *w == who).map(|(_, s)| s)
    }

    /// happen's throughput over `who`'s.
    fn ratio(&self, who: Who) -> Option<f64> {
        Some(self.rate(Who::Happen)? / self.rate(who)?)
    }

    /// A table cell for a median, min or max duration.
    fn cell(&self, d: Duration) -> String {
        let rate = per_sec(self.units, d);
        match self.op {
            Op::RequestResponse => format!("{:.0} ns ({})", 1e9 / rate, fmt_ops(rate)),
            _ => fmt_rate(rate),
        }
    }

    /// min..max, in the row's unit.
    fn spread(&self, s: &Samples) -> String {
        match self.op {
            Op::RequestResponse => format!(
                "{:.0}..{:.0} ns",
                1e9 / per_sec(self.units, s.min()),
                1e9 / per_sec(self.units, s.max())
            ),
            _ => format!(
                "{}..{}",
                fmt_rate(per_sec(self.units, s.max())),
                fmt_rate(per_sec(self.units, s.min()))
            ),
        }
    }
}

fn per_sec(units: usize, d: Duration) -> f64 {
    units as f64 / d.as_secs_f64()
}

/// Requests per second, for tables.
fn fmt_ops(ops: f64) -> String {
    if ops >= 1e6 {
        format!("{:.2} M/s", ops / 1e6)
    } else {
        format!("{:.0} k/s", ops / 1e3)
    }
}

fn run_op(env: &Env, op: Op, p: Params) -> OpRow {
    let contenders: Vec<Contender<'_>> = Who::ALL
        .into_iter()
        .filter(|&w| env.has(w))
        .map(|w| match op {
            Op::RequestResponse => request_response(env, w),
            Op::FireAndForget => one_way(env, w, p.batch, 1),
            Op::FanOut => one_way(env, w, p.batch, FAN_OUT),
        })
        .collect();
    OpRow {
        op,
        units: p.n * op.per_message(),
        results: measure(contenders, p.n, p.reps),
    }
}

fn throughput_table(env: &Env, p: Params) -> Vec<OpRow> {
    [Op::RequestResponse, Op::FireAndForget, Op::FanOut]
        .into_iter()
        .filter(|op| selected(env.name, op.label()))
        .map(|op| {
            eprintln!("{} / {} ...", env.name, op.label());
            run_op(env, op, p)
        })
        .collect()
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or("—".to_owned(), |r| format!("{r:.2}"))
}

fn yes_no(ok: bool) -> &'static str {
    if ok { "yes" } else { "NO" }
}

fn print_throughput(name: &str, rows: &[OpRow], actix_here: bool) {
    if rows.is_empty() {
        return;
    }
    println!("### {name}\n");
    println!(
        "| operation | happen | tokio raw | ractor | kameo | actix | \
         happen/tokio | happen/ractor | happen/kameo | happen/actix |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for row in rows {
        let cells: Vec<String> = Who::ALL
            .iter()
            .map(|&w| {
                row.samples(w)
                    .map_or("—".to_owned(), |s| row.cell(s.median()))
            })
            .collect();
        let ratios: Vec<String> = Who::ALL[1..]
            .iter()
            .map(|&w| fmt_ratio(row.ratio(w)))
            .collect();
        println!(
            "| {} | {} | {} |",
            row.op.label(),
            cells.join(" | "),
            ratios.join(" | ")
        );
    }
    if !actix_here {
        println!(
            "\n— actix: not run on the multi-thread runtime (an actix arbiter is \
             single-threaded; actix has no multi-thread mailbox runtime to compare)."
        );
    }
    println!("\nSpread over the repetitions (min..max):\n");
    for row in rows {
        let spreads: Vec<String> = row
            .results
            .iter()
            .map(|(w, s)| format!("{} {}", w.label(), row.spread(s)))
            .collect();
        println!("- {}: {}", row.op.label(), spreads.join(", "));
    }
    println!("\nTargets:\n");
    for row in rows {
        let vs = |w: Who| row.ratio(w);
        match (vs(Who::Ractor), vs(Who::Kameo)) {
            (Some(r), Some(k)) => println!(
                "- {} at least as fast as ractor and kameo: {} (×{r:.2} ractor, ×{k:.2} kameo)",
                row.op.label(),
                yes_no(r >= 1.0 && k >= 1.0)
            ),
            _ => println!(
                "- {} at least as fast as ractor and kameo: not measured",
                row.op.label()
            ),
        }
        if row.op == Op::RequestResponse {
            match vs(Who::Tokio) {
                Some(t) => println!(
                    "- request→response ≥ {RR_VS_TOKIO_TARGET}× tokio raw: {} (×{t:.2})",
                    yes_no(t >= RR_VS_TOKIO_TARGET)
                ),
                None => {
                    println!("- request→response ≥ {RR_VS_TOKIO_TARGET}× tokio raw: not measured")
                }
            }
        }
    }
    println!();
}

// ---------------------------------------------------------------------------
// Memory per idle node.
// ---------------------------------------------------------------------------

/// One memory measurement.
struct Memory {
    wanted: usize,
    created: usize,
    bytes: isize,
    took: Duration,
}

impl Memory {
    fn per_node(&self) -> f64 {
        self.bytes as f64 / self.created.max(1) as f64
    }

    fn capped(&self) -> bool {
        self.created < self.wanted
    }

    fn cell(&self) -> String {
        let mut s = format!("{:.0} B, {:.2} s", self.per_node(), self.took.as_secs_f64());
        if self.capped() {
            s.push_str(&format!(" (time cap: {} created)", self.created));
        }
        s
    }
}

fn live_bytes() -> isize {
    ALLOCATOR.allocated() as isize
}

/// Whether the creation loop has used up its time.
fn out_of_time(i: usize, start: Instant, cap: Duration) -> bool {
    i.is_multiple_of(1024) && start.elapsed() > cap
}

/// Creates up to `k` nodes/actors of `who` with one handler each and reports
/// the live heap bytes they added.
fn memory(who: Who, k: usize, cap: Duration) -> Memory {
    match who {
        Who::Happen => run_on(&current_thread_runtime(), async move {
            let happen = Happen::embedded();
            let client = happen.node("client").expect("node");
            let mut nodes: Vec<Node> = Vec::with_capacity(k);
            let before = live_bytes();
            let start = Instant::now();
            for i in 0..k {
                if out_of_time(i, start, cap) {
                    break;
                }
                let node = happen.node(&format!("n{i}")).expect("node");
                on_ping(&node);
                nodes.push(node);
            }
            let last = nodes.last().expect("no node");
            let v = client
                .send(last, Event::new("ping", payload(0)))
                .await
                .expect("happen request");
            black_box(v);
            let took = start.elapsed();
            let bytes = live_bytes() - before;
            Memory {
                wanted: k,
                created: nodes.len(),
                bytes,
                took,
            }
        }),
        Who::Ractor => run_on(&current_thread_runtime(), async move {
            let mut actors = Vec::with_capacity(k);
            let before = live_bytes();
            let start = Instant::now();
            for i in 0..k {
                if out_of_time(i, start, cap) {
                    break;
                }
                let (actor, _handle) = ractor::Actor::spawn(None, RactorServer, None)
                    .await
                    .expect("ractor spawn");
                actors.push(actor);
            }
            let last = actors.last().expect("no actor");
            let Ok(v) = ractor::call!(last, RactorMsg::Ping, payload(0)) else {
                panic!("ractor request failed");
            };
            black_box(v);
            let took = start.elapsed();
            let bytes = live_bytes() - before;
            Memory {
                wanted: k,
                created: actors.len(),
                bytes,
                took,
            }
        }),
        Who::Kameo => run_on(&current_thread_runtime(), async move {
            let mut actors = Vec::with_capacity(k);
            let before = live_bytes();
            let start = Instant::now();
            for i in 0..k {
                if out_of_time(i, start, cap) {
                    break;
                }
                actors.push(KameoServer::spawn(KameoServer { counter: None }));
            }
            let last = actors.last().expect("no actor");
            let Ok(v) = last.ask(KameoPing(payload(0))).await else {
                panic!("kameo request failed");
            };
            black_box(v);
            let took = start.elapsed();
            let bytes = live_bytes() - before;
            Memory {
                wanted: k,
                created: actors.len(),
                bytes,
                took,
            }
        }),
        Who::Actix => {
            let system = actix_rt::System::new();
            system.block_on(async move {
                actix_rt::spawn(async move {
                    let mut addrs = Vec::with_capacity(k);
                    let before = live_bytes();
                    let start = Instant::now();
                    for i in 0..k {
                        if out_of_time(i, start, cap) {
                            break;
                        }
                        addrs.push(ActixServer { counter: None }.start());
                    }
                    let last = addrs.last().expect("no actor");
                    let Ok(v) = last.send(ActixPing(payload(0))).await else {
                        panic!("actix request failed");
                    };
                    black_box(v);
                    let took = start.elapsed();
                    let bytes = live_bytes() - before;
                    Memory {
                        wanted: k,
                        created: addrs.len(),
                        bytes,
                        took,
                    }
                })
                .await
                .expect("actix task panicked")
            })
        }
        Who::Tokio => unreachable!("no memory row for tokio raw"),
    }
}

/// Node counts for the memory rows.
fn node_counts() -> Vec<usize> {
    std::env::var("HAPPEN_BENCH_NODES")
        .ok()
        .map(|s| {
            s.split(',')
                .filter_map(|v| v.trim().replace('_', "").parse().ok())
                .filter(|&v| v > 0)
                .collect::<Vec<usize>>()
        })
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| DEFAULT_NODES.to_vec())
}

fn memory_rows() -> Vec<(usize, Vec<(Who, Memory)>)> {
    if !selected("current-thread", "memory per idle node") {
        return Vec::new();
    }
    let cap = Duration::from_secs(env_usize("HAPPEN_BENCH_NODE_SECS", DEFAULT_NODE_SECS) as u64);
    let peers = [Who::Happen, Who::Ractor, Who::Kameo, Who::Actix];
    node_counts()
        .into_iter()
        .map(|k| {
            let row = peers
                .into_iter()
                .filter(|w| w.wanted())
                .map(|w| {
                    eprintln!("memory / {} nodes / {} ...", k, w.label());
                    (w, memory(w, k, cap))
                })
                .collect();
            (k, row)
        })
        .collect()
}

fn print_memory(rows: &[(usize, Vec<(Who, Memory)>)]) {
    if rows.is_empty() {
        return;
    }
    println!(
        "### memory per idle node (one handler each; current-thread; \
         live heap bytes per node, creation time)\n"
    );
    println!("| nodes | happen | ractor | kameo | actix |");
    println!("|---|---|---|---|---|");
    for (k, row) in rows {
        let cells: Vec<String> = [Who::Happen, Who::Ractor, Who::Kameo, Who::Actix]
            .iter()
            .map(|&w| {
                row.iter()
                    .find(|(x, _)| *x == w)
                    .map_or("—".to_owned(), |(_, m)| m.cell())
            })
            .collect();
        println!("| {k} | {} |", cells.join(" | "));
    }
    println!("\nTargets:\n");
    let happen_at_1m = rows
        .iter()
        .find(|(k, _)| *k == 1_000_000)
        .and_then(|(_, row)| row.iter().find(|(w, _)| *w == Who::Happen))
        .map(|(_, m)| m);
    match happen_at_1m {
        Some(m) if !m.capped() => {
            println!(
                "- ≤ {MEMORY_TARGET:.0} B per idle node at 1,000,000 nodes: {} ({:.0} B)",
                yes_no(m.per_node() <= MEMORY_TARGET),
                m.per_node()
            );
            println!(
                "- 1,000,000 nodes created within {CREATION_TARGET_SECS:.0} s: {} ({:.2} s)",
                yes_no(m.took.as_secs_f64() <= CREATION_TARGET_SECS),
                m.took.as_secs_f64()
            );
        }
        Some(m) => println!(
            "- 1,000,000 nodes: NO, only {} created within the time cap ({:.0} B per node so far)",
            m.created,
            m.per_node()
        ),
        None => println!("- 1,000,000 nodes: not measured (see HAPPEN_BENCH_NODES)"),
    }
    println!();
}

fn main() {
    let n = env_usize("HAPPEN_BENCH_N", DEFAULT_N);
    let params = Params {
        n,
        batch: env_usize("HAPPEN_BENCH_BATCH", DEFAULT_BATCH).min(n),
        reps: env_usize("HAPPEN_BENCH_REPS", DEFAULT_REPS),
    };
    let started = Instant::now();

    let current = Env {
        name: "current-thread",
        rt: current_thread_runtime(),
        actix: Some(actix_rt::System::new()),
    };
    let current_rows = throughput_table(&current, params);
    drop(current);

    let multi = Env {
        name: "multi-thread (2 workers)",
        rt: Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("multi-thread runtime"),
        actix: None,
    };
    let multi_rows = throughput_table(&multi, params);
    drop(multi);

    let memory = memory_rows();

    println!(
        "happen in-process benchmark: N = {n} messages per repetition, batches of {}, \
         1 warm-up + {} repetitions, medians; {} CPUs available\n",
        params.batch,
        params.reps,
        std::thread::available_parallelism().map_or(0, |p| p.get())
    );
    print_throughput("current-thread", &current_rows, true);
    print_throughput("multi-thread (2 workers)", &multi_rows, false);
    print_memory(&memory);
    println!(
        "Ratios are happen / contender in throughput (above 1: happen faster). \
         request→response cells are ns per request (requests/s); fan-out counts \
         deliveries (5 per message). Total time {:.1} s.",
        started.elapsed().as_secs_f64()
    );
}

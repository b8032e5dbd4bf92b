//! Flow balance: the runtime watches how events flow into each node and
//! reports imbalance as ordinary system events, so that an application
//! reacts with ordinary handlers.
//!
//! Every [`FlowBalanceConfig::interval`] the runtime samples each node it
//! can see: in one process, every node's queue (events waiting, flows
//! running, flows ended); over NATS also every durable node's JetStream
//! consumer, wherever the node runs (events waiting in the stream, handed
//! out and not acknowledged, redelivered, acknowledged so far). A node
//! whose process is down is seen by the others through its consumer.
//!
//! A node is **down** when it holds events (waiting for it, or handed to
//! it and not finished) and has finished none for
//! [`FlowBalanceConfig::stall_after`], or when at least
//! [`FlowBalanceConfig::lag_threshold`] events wait for it. A durable
//! consumer that cannot be read (the server out of reach) leaves its node
//! as it was judged; a node that goes away while down (shut down) is
//! reported up, with `removed: true`. The runtime's own node (the handlers
//! of `Happen::on`) is not watched. Each node of the process where it is
//! detected receives:
//!
//! | event | payload |
//! |---|---|
//! | [`NODE_DOWN`] | `nodeId`, `lagMetrics` (`messagesWaiting`, `inFlight`, `redelivered`, `stalledMs`), `pattern`, `affectedNodes` (for a `partition`, every node that stalled in the same check, sorted; else the node itself) |
//! | [`NODE_UP`] | `nodeId`, `lagMetrics`: the node is back under the thresholds (`removed: true`: it went away) |
//! | [`SYSTEM_DOWN`] | `level` (`warning`, or `critical` when every node is down), `affectedNodes`, `pattern` |
//! | [`SYSTEM_UP`] | `affectedNodes`: fewer nodes than the system threshold are down again |
//!
//! The `pattern` classifies what the samples show, after the
//! documentation's four:
//! - `node-failure`: one node stopped making progress while it holds
//!   events;
//! - `bottleneck`: a node makes progress but its backlog passed the
//!   threshold;
//! - `partition`: several nodes stopped making progress in the same check;
//! - `overload` (system): most nodes are down while still making progress.
//!
//! ```
//! use std::time::Duration;
//! use happen::prelude::*;
//! use happen::balance::{self, FlowBalanceConfig};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> happen::Result<()> {
//! let config = HappenConfig::default().flow_balance(
//!     FlowBalanceConfig::default()
//!         .interval(Duration::from_millis(20))
//!         .lag_threshold(3),
//! );
//! let happen = Happen::embedded_with(config);
//! let ops = happen.node("ops")?;
//! let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
//! ops.on(balance::NODE_DOWN, move |e: Event, _cx: Context| {
//!     let tx = tx.clone();
//!     async move { tx.send(e.payload().clone()).unwrap(); }
//! })?;
//! let slow = happen.node_with("slow", NodeConfig::new().max_concurrent(1))?;
//! let gate = std::sync::Arc::new(tokio::sync::Notify::new());
//! let g = gate.clone();
//! slow.on("job", move |_e: Event, _cx: Context| { let g = g.clone(); async move { g.notified().await } })?;
//! for i in 0..5 {
//!     ops.tell(&slow, Event::new("job", json!(i)))?;
//! }
//! let down = rx.recv().await.unwrap();
//! assert_eq!(down["nodeId"], "slow");
//! assert!(down["lagMetrics"]["messagesWaiting"].as_u64().unwrap() >= 3);
//! # gate.notify_waiters();
//! # Ok(()) }
//! ```

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::transport::Transport;

/// A node fell behind (see the [module docs](self)).
pub const NODE_DOWN: &str = "node.down";
/// A node that was down is back under the thresholds.
pub const NODE_UP: &str = "node.up";
/// Many nodes are down at once.
pub const SYSTEM_DOWN: &str = "system.down";
/// The system is back under its threshold.
pub const SYSTEM_UP: &str = "system.up";

/// When flow balance checks and what it calls down.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FlowBalanceConfig {
    /// Whether the runtime watches at all (default `true`).
    pub enabled: bool,
    /// How often the nodes are sampled (default 5 s; below 1 ms counts as
    /// 1 ms).
    pub interval: Duration,
    /// Events waiting for one node from which it is down whatever its
    /// progress (default 1,000).
    pub lag_threshold: u64,
    /// How long a node may make no progress while events wait before it is
    /// down (default 30 s).
    pub stall_after: Duration,
    /// The share of the watched nodes (at least two) that must be down for
    /// [`SYSTEM_DOWN`] (default 0.5).
    pub system_share: f64,
}

impl Default for FlowBalanceConfig {
    fn default() -> Self {
        FlowBalanceConfig {
            enabled: true,
            interval: Duration::from_secs(5),
            lag_threshold: 1_000,
            stall_after: Duration::from_secs(30),
            system_share: 0.5,
        }
    }
}

impl FlowBalanceConfig {
    /// No watching.
    pub fn disabled() -> Self {
        FlowBalanceConfig {
            enabled: false,
            ..Self::default()
        }
    }

    /// Sets how often the nodes are sampled.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Sets the backlog from which a node is down.
    pub fn lag_threshold(mut self, events: u64) -> Self {
        self.lag_threshold = events.max(1);
        self
    }

    /// Sets how long a node may make no progress with events waiting.
    pub fn stall_after(mut self, after: Duration) -> Self {
        self.stall_after = after;
        self
    }

    /// Sets the share of nodes down that makes the system down.
    pub fn system_share(mut self, share: f64) -> Self {
        self.system_share = share.clamp(0.0, 1.0);
        self
    }
}

/// One node's flow at one sample.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Lag {
    /// Events not handed to the node yet.
    pub(crate) waiting: u64,
    /// Events handed to it whose flows have not ended.
    pub(crate) in_flight: u64,
    /// Events handed to it more than once.
    pub(crate) redelivered: u64,
    /// A count that grows as the node finishes events.
    pub(crate) progress: u64,
}

#[derive(Debug, Default)]
struct Watched {
    last: Lag,
    /// Since when events wait without progress.
    stalled_since: Option<Instant>,
    down: bool,
}

/// The judgement across samples (no I/O: the runtime feeds it).
#[derive(Debug, Default)]
pub(crate) struct Balance {
    nodes: HashMap<String, Watched>,
    system_down: bool,
}

impl Balance {
    /// Takes one sample of every watched node and returns the events to
    /// report (type, payload).
    ///
    /// A node sampled as `None` (its consumer could not be read: the
    /// server is out of reach) keeps what it was; a node no longer sampled
    /// (shut down, or no longer durable) is forgotten, reported up first
    /// if it was down.
    pub(crate) fn check(
        &mut self,
        config: &FlowBalanceConfig,
        samples: Vec<(String, Option<Lag>)>,
        now: Instant,
    ) -> Vec<(&'static str, Value)> {
        let mut reports = Vec::new();
        let mut newly_stalled = Vec::new();
        let mut changes = Vec::new();
        let seen: BTreeSet<String> = samples.iter().map(|(id, _)| id.clone()).collect();
        let mut gone: Vec<(String, Watched)> = Vec::new();
        self.nodes.retain(|id, watched| {
            let kept = seen.contains(id);
            if !kept && watched.down {
                gone.push((id.clone(), std::mem::take(watched)));
            }
            kept
        });
        gone.sort_by(|a, b| a.0.cmp(&b.0));
        for (id, watched) in gone {
            let metrics = metrics(&watched.last, Duration::ZERO);
            reports.push((
                NODE_UP,
                json!({ "nodeId": id, "lagMetrics": metrics, "removed": true }),
            ));
        }
        for (id, lag) in samples {
            let watched = self.nodes.entry(id.clone()).or_default();
            let Some(lag) = lag else { continue };
            let progressed = lag.progress != watched.last.progress;
            // Work it holds: waiting, or handed to it and not finished (a
            // node whose every flow hangs has nothing waiting).
            let holding = lag.waiting > 0 || lag.in_flight > 0;
            if !holding || progressed {
                watched.stalled_since = None;
            } else if watched.stalled_since.is_none() {
                watched.stalled_since = Some(now);
            }
            let stalled_for = watched
                .stalled_since
                .map_or(Duration::ZERO, |since| now.duration_since(since));
            let stalled = watched.stalled_since.is_some() && stalled_for >= config.stall_after;
            let down = stalled || lag.waiting >= config.lag_threshold.max(1);
            watched.last = lag;
            if down != watched.down {
                watched.down = down;
                changes.push((id.clone(), down, stalled, lag, stalled_for));
                if down && stalled {
                    newly_stalled.push(id);
                }
            }
        }
        let partition = newly_stalled.len() >= 2;
        newly_stalled.sort();
        for (id, down, stalled, lag, stalled_for) in changes {
            let metrics = metrics(&lag, stalled_for);
            if down {
                let (pattern, affected) = match (stalled, partition) {
                    (true, true) => ("partition", json!(newly_stalled)),
                    (true, false) => ("node-failure", json!([id])),
                    (false, _) => ("bottleneck", json!([id])),
                };
                reports.push((
                    NODE_DOWN,
                    json!({
                        "nodeId": id,
                        "lagMetrics": metrics,
                        "pattern": pattern,
                        "affectedNodes": affected,
                    }),
                ));
            } else {
                reports.push((NODE_UP, json!({ "nodeId": id, "lagMetrics": metrics })));
            }
        }
        let total = self.nodes.len();
        let affected: Vec<&String> = self
            .nodes
            .iter()
            .filter(|(_, w)| w.down)
            .map(|(id, _)| id)
            .collect();
        let needed = ((total as f64 * config.system_share).ceil() as usize).max(2);
        let system_down = affected.len() >= needed;
        if system_down != self.system_down {
            self.system_down = system_down;
            let mut affected: Vec<&String> = affected;
            affected.sort();
            if system_down {
                let all_stalled = affected
                    .iter()
                    .all(|id| self.nodes[*id].stalled_since.is_some());
                reports.push((
                    SYSTEM_DOWN,
                    json!({
                        "level": if affected.len() == total { "critical" } else { "warning" },
                        "affectedNodes": affected,
                        "pattern": if all_stalled { "partition" } else { "overload" },
                    }),
                ));
            } else {
                reports.push((SYSTEM_UP, json!({ "affectedNodes": affected })));
            }
        }
        reports
    }
}

/// A report's `lagMetrics`.
fn metrics(lag: &Lag, stalled_for: Duration) -> Value {
    json!({
        "messagesWaiting": lag.waiting,
        "inFlight": lag.in_flight,
        "redelivered": lag.redelivered,
        "stalledMs": u64::try_from(stalled_for.as_millis()).unwrap_or(u64::MAX),
    })
}

/// Samples the runtime's nodes every interval and reports imbalance, until
/// the runtime is closed or gone. It holds the transport weakly and never
/// the runtime, so that dropping the last `Happen` handle ends the runtime
/// at once.
pub(crate) async fn watch(
    transport: Weak<dyn Transport>,
    closed: Arc<AtomicBool>,
    config: FlowBalanceConfig,
) {
    let mut balance = Balance::default();
    let mut tick = tokio::time::interval(config.interval.max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if closed.load(Ordering::Acquire) {
            return;
        }
        let Some(sampling) = transport.upgrade().map(|t| t.lag()) else {
            return;
        };
        let samples = sampling.await;
        if closed.load(Ordering::Acquire) {
            return;
        }
        let Some(transport) = transport.upgrade() else {
            return;
        };
        for (event_type, payload) in balance.check(&config, samples, Instant::now()) {
            tracing::warn!(event_type, %payload, "flow balance");
            transport.local().system_event(event_type, payload);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lag(waiting: u64, progress: u64) -> Lag {
        Lag {
            waiting,
            progress,
            ..Lag::default()
        }
    }

    fn config() -> FlowBalanceConfig {
        FlowBalanceConfig::default()
            .lag_threshold(100)
            .stall_after(Duration::from_secs(10))
    }

    /// The four patterns, and recovery.
    #[test]
    fn patterns_follow_the_samples() {
        let config = config();
        let mut balance = Balance::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let sample = |a: Lag, b: Lag, c: Lag| {
            vec![
                ("a".to_owned(), Some(a)),
                ("b".to_owned(), Some(b)),
                ("c".to_owned(), Some(c)),
            ]
        };
        // Healthy.
        assert!(
            balance
                .check(&config, sample(lag(5, 1), lag(0, 1), lag(0, 1)), at(0))
                .is_empty()
        );
        // a stops making progress with events waiting: down 10 s later.
        assert!(
            balance
                .check(&config, sample(lag(5, 1), lag(0, 2), lag(0, 2)), at(5))
                .is_empty()
        );
        assert!(
            balance
                .check(&config, sample(lag(7, 1), lag(0, 3), lag(0, 3)), at(10))
                .is_empty()
        );
        let reports = balance.check(&config, sample(lag(9, 1), lag(0, 3), lag(0, 3)), at(16));
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].0, NODE_DOWN);
        assert_eq!(reports[0].1["nodeId"], "a");
        assert_eq!(reports[0].1["pattern"], "node-failure");
        assert_eq!(reports[0].1["affectedNodes"], json!(["a"]));
        assert_eq!(reports[0].1["lagMetrics"]["messagesWaiting"], 9);
        // b is busy but behind: a bottleneck, and with a the system is down
        // (2 of 3, share 0.5), not every node stalled: overload.
        let reports = balance.check(&config, sample(lag(9, 1), lag(150, 9), lag(0, 4)), at(17));
        assert_eq!(reports[0].1["pattern"], "bottleneck");
        assert_eq!(reports[1].0, SYSTEM_DOWN);
        assert_eq!(reports[1].1["level"], "warning");
        assert_eq!(reports[1].1["affectedNodes"], json!(["a", "b"]));
        assert_eq!(reports[1].1["pattern"], "overload");
        // a moves again: up; the system is up.
        let reports = balance.check(&config, sample(lag(0, 20), lag(150, 30), lag(0, 5)), at(18));
        let kinds: Vec<&str> = reports.iter().map(|r| r.0).collect();
        assert_eq!(kinds, [NODE_UP, SYSTEM_UP]);
    }

    #[test]
    fn nodes_stalling_together_are_a_partition() {
        let config = config();
        let mut balance = Balance::default();
        let t0 = Instant::now();
        let two = |a: Lag, b: Lag| vec![("a".to_owned(), Some(a)), ("b".to_owned(), Some(b))];
        balance.check(&config, two(lag(3, 1), lag(4, 1)), t0);
        balance.check(
            &config,
            two(lag(3, 1), lag(4, 1)),
            t0 + Duration::from_secs(1),
        );
        let reports = balance.check(
            &config,
            two(lag(3, 1), lag(4, 1)),
            t0 + Duration::from_secs(11),
        );
        let patterns: Vec<&Value> = reports.iter().map(|r| &r.1["pattern"]).collect();
        assert_eq!(
            patterns,
            [
                &json!("partition"),
                &json!("partition"),
                &json!("partition")
            ]
        );
        assert_eq!(reports[2].0, SYSTEM_DOWN);
        assert_eq!(reports[2].1["level"], "critical");
        // Each node's report names the nodes that stalled with it, as the
        // documentation's partition handler reads them.
        for report in &reports[..2] {
            assert_eq!(report.0, NODE_DOWN);
            assert_eq!(report.1["affectedNodes"], json!(["a", "b"]));
        }
    }

    #[test]
    fn a_node_whose_every_flow_hangs_is_down() {
        let config = config();
        let mut balance = Balance::default();
        let t0 = Instant::now();
        let hung = Lag {
            in_flight: 4,
            progress: 7,
            ..Lag::default()
        };
        let one = |lag: Lag| vec![("a".to_owned(), Some(lag))];
        assert!(balance.check(&config, one(hung), t0).is_empty());
        assert!(
            balance
                .check(&config, one(hung), t0 + Duration::from_secs(1))
                .is_empty()
        );
        let reports = balance.check(&config, one(hung), t0 + Duration::from_secs(12));
        assert_eq!(reports.len(), 1, "{reports:?}");
        assert_eq!(reports[0].0, NODE_DOWN);
        assert_eq!(reports[0].1["pattern"], "node-failure");
        assert_eq!(reports[0].1["lagMetrics"]["inFlight"], 4);
    }

    #[test]
    fn an_unread_node_keeps_its_state_and_a_removed_one_is_reported_up() {
        let config = config();
        let mut balance = Balance::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let pair = |a: Option<Lag>, b: Option<Lag>| vec![("a".to_owned(), a), ("b".to_owned(), b)];
        balance.check(&config, pair(Some(lag(150, 1)), Some(lag(0, 1))), at(0));
        assert!(balance.nodes["a"].down);
        // The server out of reach: a cannot be read, and is not judged
        // again (no second down, no up) when it can be read once more.
        assert!(
            balance
                .check(&config, pair(None, Some(lag(0, 2))), at(1))
                .is_empty()
        );
        assert!(
            balance
                .check(&config, pair(Some(lag(150, 1)), Some(lag(0, 3))), at(2))
                .is_empty()
        );
        // a shuts down while down: reported up, once, as removed.
        let reports = balance.check(&config, vec![("b".to_owned(), Some(lag(0, 4)))], at(3));
        assert_eq!(reports.len(), 1, "{reports:?}");
        assert_eq!(reports[0].0, NODE_UP);
        assert_eq!(reports[0].1["nodeId"], "a");
        assert_eq!(reports[0].1["removed"], true);
        assert!(
            balance
                .check(&config, vec![("b".to_owned(), Some(lag(0, 5)))], at(4))
                .is_empty()
        );
    }

    #[test]
    fn a_zero_lag_threshold_does_not_make_idle_nodes_down() {
        let config = FlowBalanceConfig {
            lag_threshold: 0,
            ..config()
        };
        let mut balance = Balance::default();
        let reports = balance.check(
            &config,
            vec![("a".to_owned(), Some(lag(0, 0)))],
            Instant::now(),
        );
        assert!(reports.is_empty(), "{reports:?}");
    }
}

//! # Happen
//!
//! Event-driven, agent-based systems from two primitives: **nodes** that handle
//! and emit events, and **events** that carry their own causal history.
//!
//! ```
//! use happen::prelude::*;
//!
//! #[tokio::main(flavor = "current_thread")]
//! async fn main() -> happen::Result<()> {
//!     let happen = Happen::embedded();
//!     let orders = happen.node("order-service")?;
//!     let payments = happen.node("payment-service")?;
//!
//!     // A handler is an async fn or closure; the value it returns completes the flow.
//!     payments.on("process-payment", |event: Event, _cx: Context| async move {
//!         json!({ "status": "approved", "amount": event.payload()["amount"] })
//!     })?;
//!
//!     // send dispatches at once; awaiting the handle waits for the flow's result.
//!     let reply = orders
//!         .send(&payments, Event::new("process-payment", json!({ "amount": 129.99 })))
//!         .response()
//!         .await?;
//!     assert_eq!(reply["status"], "approved");
//!     Ok(())
//! }
//! ```
//!
//! ## Where things are
//!
//! - [`Event`] and its causal context: [`event`]; ids and causality that
//!   follows flows across `.await`s: [`causality`].
//! - Which events a handler takes: [`pattern`].
//! - The Event Continuum (steps returning the next step or a value): [`flow`],
//!   with the per-flow [`Context`].
//! - Nodes, broadcast and send: [`Node`]; waiting for results: [`Sent`].
//! - Runtime, configuration and shutdown: [`Happen`], [`HappenConfig`].
//! - Across processes: `Happen::connect` with a `NatsConfig` (module
//!   `nats`, feature `nats`).
//! - Errors: [`HappenError`]; events the runtime itself emits: [`system`].
//!
//! ## Cargo features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `nats` | on | the distributed runtime: `Happen::connect`, MessagePack on the wire, state in JetStream (async-nats, rmp-serde) |
//! | `redb` | on | `Happen::embedded_on_disk`: embedded state kept in a redb file |
//! | `otel` | off | `happen::otel`: flows exported as OpenTelemetry spans, a trace per transaction |
//! | `toml` | on | `Settings::from_toml` and TOML files for `Settings::load` |
//!
//! With `default-features = false` the crate is the embedded runtime alone,
//! with none of those dependencies. Tests of NATS-backed systems start a
//! throwaway server with the `happen-test` crate.
//!
//! ## Same code, any arrangement
//!
//! Node code does not change when nodes move to other processes: only the way
//! [`Happen`] is made does. `Happen::embedded()` keeps every node in this
//! process; `Happen::connect(NatsConfig::new("nats://127.0.0.1:4222")).await?`
//! connects this process's nodes to every other process on that server.

#![warn(unreachable_pub)]

pub mod accept;
pub mod balance;
pub mod causality;
pub mod config;
pub mod confluence;
pub mod context;
mod delivery;
pub mod depth;
pub mod durable;
mod entry;
pub mod error;
pub mod event;
pub mod flow;
pub mod id;
pub mod identity;
pub mod integrity;
mod kept;
pub mod name;
#[cfg(feature = "nats")]
pub mod nats;
pub mod node;
pub mod observe;
#[cfg(feature = "otel")]
pub mod otel;
pub mod path;
pub mod pattern;
pub mod receipt;
pub mod resilience;
pub mod response;
mod retries;
pub mod runtime;
pub mod settings;
#[cfg(feature = "redb")]
mod spool;
pub mod state;
mod store;
pub mod stream;
pub mod system;
pub mod testkit;
pub mod trace;
mod transport;
mod uuid7;
pub mod wrap;
pub mod zero;

pub use accept::AcceptRule;
pub use causality::spawn;
pub use config::{
    DeliveryConfig, DeliveryMode, HappenConfig, NodeConfig, NodeLimits, QueueStrategy,
};
pub use confluence::{GroupResults, NodeGroup, SentToAll};
pub use context::Context;
pub use error::{BoxError, Cause, HappenError, Result, SOURCES_ON_THE_WIRE};
pub use event::{Causal, Event, EventContext, Origin, StreamRef, new_event_id};
pub use flow::{Flow, Handler, IntoFlow, Step};
pub use id::Id;
pub use identity::{Ed25519, Integrity, NodeIdentity, Signer, Verifier};
pub use integrity::EventHash;
#[cfg(feature = "nats")]
pub use nats::NatsConfig;
pub use node::{HandlerId, Node, Target};
pub use observe::Observer;
pub use path::Path;
pub use pattern::{IntoPattern, Pattern};
pub use receipt::Receipt;
pub use response::Sent;
pub use runtime::Happen;
pub use state::global::{Global, GlobalChange};
pub use state::temporal::{Snapshot, SnapshotContext, Snapshots, TemporalConfig};
pub use state::{State, View, Views};
pub use stream::StreamItem;
pub use system::RUNTIME_NODE;
pub use system::{CONNECTION_STATUS, Counters, SYSTEM_SENDER};

/// Turns an `async fn` step into one returning a boxed future, so that a step
/// can name itself or its callers in [`Flow::next`] (which plain `async fn`s
/// cannot: the compiler cannot prove such a future `Send`).
///
/// ```
/// use happen::prelude::*;
///
/// #[happen::step]
/// async fn process_items(event: Event, cx: Context) -> Flow {
///     let i = cx.get("i").and_then(|v| v.as_u64()).unwrap_or(0);
///     let items = event.payload()["items"].as_array().map_or(0, |a| a.len()) as u64;
///     if i < items {
///         cx.set("i", i + 1);
///         return Flow::next(process_items); // loop back to this step
///     }
///     Flow::done(json!({ "processed": i }))
/// }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> happen::Result<()> {
/// let happen = Happen::embedded();
/// let node = happen.node("worker")?;
/// node.on("process", process_items)?;
/// let out = node.send(&node, Event::new("process", json!({ "items": [1, 2, 3] }))).await?;
/// assert_eq!(out["processed"], 3);
/// # Ok(()) }
/// ```
pub use happen_macros::step;

/// The names most programs need: `use happen::prelude::*;`.
pub mod prelude {
    pub use crate::pattern::{domain, exact, not, one_of, wildcard};
    pub use crate::{
        Context, Event, Flow, Handler, Happen, HappenConfig, HappenError, Node, NodeConfig,
        Pattern, Sent,
    };
    pub use serde_json::{Value, json};
}

#[doc(hidden)]
pub mod __private {
    pub use futures::future::BoxFuture;
}

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;

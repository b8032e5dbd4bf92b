//! The connection's state, reported to the local nodes as
//! [`system::CONNECTION_STATUS`](crate::system::CONNECTION_STATUS) events.
//!
//! The first connection is `connected`; a connection restored after a loss
//! is `reconnected`, with a `reason` saying how long it was down (as the
//! documentation's applications expect). The events go to this process's
//! nodes directly, not through the server, which may be what is gone.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Shared, lock};
use crate::system;

#[derive(Default)]
struct State {
    /// When the connection was lost, while it is.
    lost_at: Option<Instant>,
    /// When it was last restored after a loss.
    reconnected_at: Option<Instant>,
    /// The runtime started without its server (intermittent), and has not
    /// connected yet: its first connection is a coming back too.
    offline_start: bool,
    /// The client gave up reconnecting: nothing it holds will go out.
    gave_up: bool,
}

/// What the transport knows of its connection.
#[derive(Default)]
pub(super) struct Status {
    state: Mutex<State>,
    /// Whether a message published now may meet a receiver that has not
    /// subscribed again (see [`Status::unsettled`]): read by every tell,
    /// so kept apart from the lock.
    unsettled: std::sync::atomic::AtomicBool,
}

impl Status {
    /// The status of a runtime that starts without its server
    /// (`NatsConfig::intermittent`) when `offline`: events it held wait
    /// for receivers that may be reconnecting themselves, so its first
    /// connection counts as restoring one.
    pub(super) fn new(offline: bool) -> Status {
        Status {
            state: Mutex::new(State {
                offline_start: offline,
                ..State::default()
            }),
            unsettled: std::sync::atomic::AtomicBool::new(offline),
        }
    }

    /// Whether the connection was restored after a loss within `window`.
    pub(super) fn reconnected_within(&self, window: Duration) -> bool {
        self.reconnected_at()
            .is_some_and(|at| at.elapsed() < window)
    }

    /// Whether the connection is down (and not given up), or came back
    /// within `window`: a message to another process may meet a receiver
    /// that has not subscribed again. An atomic load while it is settled
    /// (every tell asks); the flag is cleared once the window has passed.
    pub(super) fn unsettled(&self, window: Duration) -> bool {
        use std::sync::atomic::Ordering;
        if !self.unsettled.load(Ordering::Acquire) {
            return false;
        }
        let state = lock(&self.state);
        let unsettled = !state.gave_up
            && (state.lost_at.is_some()
                || state.offline_start
                || state.reconnected_at.is_some_and(|at| at.elapsed() < window));
        if !unsettled {
            self.unsettled.store(false, Ordering::Release);
        }
        unsettled
    }

    /// When the connection was last restored after a loss (or, for a
    /// runtime that started offline, first made).
    pub(super) fn reconnected_at(&self) -> Option<Instant> {
        lock(&self.state).reconnected_at
    }

    /// The status to report for `event`, and why.
    fn on(&self, event: &async_nats::Event) -> (&'static str, String) {
        let mut state = lock(&self.state);
        // Any change may unsettle it; `unsettled` settles it again.
        self.unsettled
            .store(true, std::sync::atomic::Ordering::Release);
        match event {
            async_nats::Event::Connected => match state.lost_at.take() {
                Some(lost_at) => {
                    state.reconnected_at = Some(Instant::now());
                    (
                        "reconnected",
                        format!(
                            "the connection was restored after {} ms",
                            lost_at.elapsed().as_millis()
                        ),
                    )
                }
                None => {
                    if std::mem::take(&mut state.offline_start) {
                        state.reconnected_at = Some(Instant::now());
                    }
                    ("connected", "connected to the server".to_owned())
                }
            },
            async_nats::Event::Disconnected => {
                state.lost_at.get_or_insert_with(Instant::now);
                (
                    "disconnected",
                    "the connection to the server was lost; reconnecting".to_owned(),
                )
            }
            async_nats::Event::LameDuckMode => ("lame-duck", event.to_string()),
            async_nats::Event::Draining => ("draining", event.to_string()),
            async_nats::Event::Closed => ("closed", event.to_string()),
            // The client gave up reconnecting (`Reconnect::max_attempts`):
            // it sends nothing more, and says so with this error alone.
            async_nats::Event::ClientError(async_nats::ClientError::MaxReconnects) => {
                state.gave_up = true;
                (
                "closed",
                "gave up reconnecting after Reconnect::max_attempts attempts; nothing more can be sent"
                    .to_owned(),
            )
            }
            async_nats::Event::SlowConsumer(_) => ("slow-consumer", event.to_string()),
            async_nats::Event::ServerError(_) | async_nats::Event::ClientError(_) => {
                ("error", event.to_string())
            }
        }
    }
}

/// Turns the client's connection events into system events for the local
/// nodes, until the client goes.
pub(super) async fn report(
    shared: Arc<Shared>,
    mut events: mpsc::UnboundedReceiver<async_nats::Event>,
) {
    while let Some(event) = events.recv().await {
        if matches!(
            event,
            async_nats::Event::ClientError(async_nats::ClientError::MaxReconnects)
        ) {
            shared.commands.give_up();
        }
        let (status, reason) = shared.status.on(&event);
        tracing::info!(status, %reason, "NATS connection");
        shared.local.system_event(
            system::CONNECTION_STATUS,
            json!({ "status": status, "reason": reason, "detail": event.to_string() }),
        );
    }
}

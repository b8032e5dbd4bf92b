//! [`Receipt`]: what [`Node::tell`](crate::Node::tell) and
//! [`Node::broadcast`](crate::Node::broadcast) return, to await when the
//! sender must know that the event is kept for its receivers.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::oneshot;

use crate::error::{HappenError, Result};

/// Resolves once an event that was sent is kept where its receivers will
/// find it: `Ok(())`, or the reason it is not.
///
/// `tell` and `broadcast` return as soon as the event is on its way; most
/// senders drop the receipt. Await it when the sender must not go on (or
/// forget the event) before the event is safe:
///
/// | the receiver | the receipt resolves when |
/// |---|---|
/// | a node in this process, direct delivery | at once: the node has the event |
/// | a durable node, embedded on disk | the event is committed to the database |
/// | a durable node over NATS | JetStream has acknowledged storing it |
/// | other nodes over NATS (direct delivery) | at once: the event is handed to the connection, which keeps no copy |
///
/// A durable event that cannot be stored resolves with the error (and is
/// also reported as [`system::UNDELIVERED`](crate::system::UNDELIVERED)).
/// Over NATS an event is published again through an outage until it is
/// stored, so a receipt can take as long as the outage.
/// [`Happen::flush`](crate::Happen::flush) waits for everything sent before
/// it instead. For a request, [`Sent::stored`](crate::Sent::stored) gives the
/// same answer.
///
/// ```
/// use happen::prelude::*;
/// use happen::DeliveryConfig;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> happen::Result<()> {
/// let happen = Happen::embedded(); // or embedded_on_disk, or connect (NATS)
/// let shop = happen.node("shop")?;
/// let mailer = happen.node_with("mailer", NodeConfig::new().delivery(DeliveryConfig::at_least_once()))?;
/// mailer.on("mail", |_e: Event, _cx: Context| async {})?;
/// // Returns once the event is kept: on disk with `embedded_on_disk`, stored
/// // by JetStream over NATS; in memory, at once.
/// shop.tell(&mailer, Event::new("mail", json!({ "to": "ada@example.com" })))?.await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Receipt(State);

#[derive(Debug)]
enum State {
    /// Kept.
    Kept,
    /// Not kept, for this reason (boxed: a receipt stays two words).
    Failed(Box<HappenError>),
    /// Known when the store answers.
    #[cfg_attr(not(any(feature = "nats", feature = "redb")), allow(dead_code))]
    Waiting(oneshot::Receiver<Result<()>>),
}

/// The store's side of a [`Receipt`].
#[cfg_attr(not(any(feature = "nats", feature = "redb")), allow(dead_code))]
pub(crate) type ReceiptTx = oneshot::Sender<Result<()>>;

impl Receipt {
    /// A receipt for an event that is already where its receivers find it.
    pub(crate) fn kept() -> Receipt {
        Receipt(State::Kept)
    }

    /// A receipt for an event that was not kept.
    pub(crate) fn failed(error: HappenError) -> Receipt {
        Receipt(State::Failed(Box::new(error)))
    }

    /// A receipt resolved by whoever holds the other half.
    #[cfg_attr(not(any(feature = "nats", feature = "redb")), allow(dead_code))]
    pub(crate) fn waiting() -> (ReceiptTx, Receipt) {
        let (tx, rx) = oneshot::channel();
        (tx, Receipt(State::Waiting(rx)))
    }

    /// Whether the answer is already known (awaiting it will not wait).
    pub fn is_ready(&self) -> bool {
        !matches!(self.0, State::Waiting(_))
    }
}

impl Future for Receipt {
    type Output = Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        match &mut self.0 {
            State::Kept => Poll::Ready(Ok(())),
            State::Failed(error) => Poll::Ready(Err((**error).clone())),
            State::Waiting(rx) => Pin::new(rx).poll(cx).map(|answer| {
                // The store went away without answering: the runtime stopped.
                let result = answer.unwrap_or(Err(HappenError::Shutdown));
                // Awaited again (through `&mut`), it answers the same.
                self.0 = match &result {
                    Ok(()) => State::Kept,
                    Err(error) => State::Failed(Box::new(error.clone())),
                };
                result
            }),
        }
    }
}

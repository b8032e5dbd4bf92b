//! The events each flow emitted to durable nodes that are not stored yet,
//! by the event that caused them, so that the cause is acknowledged only
//! once they are stored.
//!
//! Acknowledged earlier, a process killed in between would lose them for
//! good: the cause is not handed out again, so its flow does not run again
//! to emit them.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::oneshot;

use crate::id::Id;
use crate::transport::nats::lock;

/// Queued events by cause (the id of the event whose flow emitted them).
#[derive(Default)]
pub(super) struct Unstored(Mutex<Causes>);

#[derive(Default)]
struct Causes {
    queued: HashMap<Id, Emitted>,
    /// The publishing task ended: nothing is tracked any more.
    closed: bool,
}

/// One cause's queued events, and the acknowledgements waiting for them.
#[derive(Default)]
struct Emitted {
    queued: usize,
    /// One of them was given up (a request past its deadline): the cause
    /// must not be settled as if they were all stored.
    failed: bool,
    waiting: Vec<oneshot::Sender<()>>,
}

impl Unstored {
    /// An event caused by `cause` joined the publishing queue.
    pub(super) fn queued(&self, cause: &Id) {
        let mut causes = lock(&self.0);
        if !causes.closed {
            causes.queued.entry(cause.clone()).or_default().queued += 1;
        }
    }

    /// An event caused by `cause` left the publishing queue, `stored` or
    /// given up (a request past its deadline). Once none is left, whoever
    /// waits for them is told: resolved if all were stored, dropped
    /// unresolved if one was given up.
    pub(super) fn left(&self, cause: &str, stored: bool) {
        let mut causes = lock(&self.0);
        let Some(emitted) = causes.queued.get_mut(cause) else {
            return;
        };
        emitted.queued -= 1;
        emitted.failed |= !stored;
        if emitted.queued == 0
            && let Some(emitted) = causes.queued.remove(cause)
        {
            drop(causes);
            if !emitted.failed {
                for tx in emitted.waiting {
                    let _ = tx.send(());
                }
            }
        }
    }

    /// Resolves once no event caused by `cause` is queued; `None` if none
    /// is now. The sender is dropped unresolved when one of them was given
    /// up, or when the publishing task ends first (the runtime closing with
    /// them not stored), and at once once it has ended (what a flow emits
    /// then is not stored).
    pub(super) fn wait(&self, cause: &str) -> Option<oneshot::Receiver<()>> {
        let mut causes = lock(&self.0);
        if causes.closed {
            return Some(oneshot::channel().1);
        }
        let emitted = causes.queued.get_mut(cause)?;
        let (tx, rx) = oneshot::channel();
        emitted.waiting.push(tx);
        Some(rx)
    }

    /// The publishing task ended: nothing queued will be stored by this
    /// process; the waiting acknowledgements are told so (they do not
    /// acknowledge), and so is every later one.
    pub(super) fn close(&self) {
        let mut causes = lock(&self.0);
        causes.closed = true;
        let queued = std::mem::take(&mut causes.queued);
        drop(causes);
        drop(queued);
    }
}

#[cfg(test)]
mod tests {
    use super::Unstored;
    use crate::id::Id;

    #[test]
    fn a_cause_waits_for_its_own_events_only() {
        let unstored = Unstored::default();
        let (a, b) = (Id::from("a"), Id::from("b"));
        unstored.queued(&a);
        unstored.queued(&a);
        // Another cause's events do not hold this one.
        assert!(unstored.wait("b").is_none());
        let mut waiting = unstored.wait("a").expect("two events of a are queued");
        unstored.left("a", true);
        assert!(waiting.try_recv().is_err(), "one is still queued");
        unstored.queued(&b);
        unstored.left("b", true);
        assert!(unstored.wait("b").is_none());
        unstored.left("a", true);
        assert_eq!(waiting.try_recv(), Ok(()));
        assert!(unstored.wait("a").is_none(), "nothing of a is left");
    }

    #[test]
    fn a_cause_with_an_event_given_up_is_not_settled() {
        let unstored = Unstored::default();
        let a = Id::from("a");
        unstored.queued(&a);
        unstored.queued(&a);
        let mut waiting = unstored.wait("a").expect("queued");
        unstored.left("a", false);
        unstored.left("a", true);
        assert_eq!(
            waiting.try_recv(),
            Err(tokio::sync::oneshot::error::TryRecvError::Closed)
        );
        assert!(unstored.wait("a").is_none(), "nothing of a is left");
    }

    #[test]
    fn closing_tells_the_waiting_their_events_will_not_be_stored() {
        let unstored = Unstored::default();
        unstored.queued(&Id::from("a"));
        let mut waiting = unstored.wait("a").expect("queued");
        unstored.close();
        assert_eq!(
            waiting.try_recv(),
            Err(tokio::sync::oneshot::error::TryRecvError::Closed)
        );
        // After the close, nothing emitted is stored: no cause is settled.
        unstored.queued(&Id::from("c"));
        for cause in ["c", "d"] {
            let mut waiting = unstored.wait(cause).expect("closed");
            assert_eq!(
                waiting.try_recv(),
                Err(tokio::sync::oneshot::error::TryRecvError::Closed)
            );
        }
    }
}

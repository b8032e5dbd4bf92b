//! Who a node takes events from: its acceptance controls and required
//! signatures, checked on every delivery (ordinary and zero).

use super::NodeCore;
use crate::error::Result;
use crate::event::Event;
use crate::system::SYSTEM_SENDER;

impl NodeCore {
    /// `Ok` when the node's acceptance controls take `event` (every member
    /// of a batch), and its signature, if it has one or the node requires
    /// one, is its sender's.
    ///
    /// `local`: made in this process. The runtime's own reports (sender
    /// [`SYSTEM_SENDER`]) are never signed; made here, they need no
    /// signature (one from elsewhere claiming that sender still does).
    #[inline]
    pub(crate) fn accepts(&self, event: &Event, local: bool) -> Result<()> {
        let signed =
            self.limits.require_signed && !(local && event.causal().sender == SYSTEM_SENDER);
        if signed || event.context().integrity.is_some() {
            self.key_registry.check(&self.id, event, signed)?;
        }
        match &self.accept {
            None => Ok(()),
            Some(rules) => match event.batch_events() {
                // Each member answers for its own origin (a batch's
                // envelope does not speak for them); the sender is the
                // envelope's, the one its signature proves (a member's own
                // sender field is not authenticated).
                Some(members) => members.iter().try_for_each(|m| {
                    rules.check_from(
                        &self.id,
                        &event.causal().sender,
                        m.origin().source_id.as_deref(),
                    )
                }),
                None => rules.check(&self.id, event),
            },
        }
    }

    /// [`accepts`](Self::accepts) for a zero event, read in place: its
    /// sender is matched against the rules as it is (a zero event has no
    /// source of its own), and it is never signed, so a node that requires
    /// signatures refuses it (the refusal is made on the ordinary form, with
    /// the same reason as for any unsigned event).
    pub(crate) fn accepts_zero(&self, event: &crate::zero::ZeroEvent) -> Result<()> {
        if self.limits.require_signed {
            return self.accepts(&event.to_event(), false);
        }
        match &self.accept {
            None => Ok(()),
            Some(rules) => rules.check_from(&self.id, event.sender(), None),
        }
    }

    /// Whether the node checks who sends to it (acceptance controls, or
    /// signatures required).
    pub(crate) fn guards_senders(&self) -> bool {
        self.limits.require_signed || self.accept.is_some()
    }
}

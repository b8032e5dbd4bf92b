//! Acceptance controls (the documentation's `acceptFrom`): which senders
//! and origins a node takes events from.
//!
//! A node configured with [`NodeConfig::accept_from`](crate::NodeConfig::accept_from)
//! takes an event only when one of its rules matches; any other event is
//! refused before it reaches a handler, and its sender gets
//! [`HappenError::NotAccepted`] naming the
//! rules (a refused broadcast, or a tell from another process, is logged,
//! counted and reported as a [`system::REFUSED`]
//! event, like every refusal). A node without rules takes events from
//! anyone.
//!
//! A rule is a pattern where `*` stands for any run of characters:
//!
//! - [`AcceptRule::node`] matches the sending node's id
//!   (`causal.sender`): `"order-service"`, `"order-service-*"`, `"admin-*"`;
//! - [`AcceptRule::source`] matches the origin's source id
//!   (`origin.sourceId`, set by the application and inherited down the
//!   causal chain): the documentation's multi-tenant `"tenant:acme:*"`;
//! - a plain string (`"admin-*"`) matches either of the two, as the
//!   documentation's `acceptFrom: [...]` lists do. Mind what that admits:
//!   any sender whose event *claims* a matching source passes it, and a
//!   claimed source is not authenticated (see below). To admit a node by
//!   its id alone, write [`AcceptRule::node`].
//!
//! Rules apply to every event, the runtime's own included (their sender is
//! [`SYSTEM_SENDER`](crate::SYSTEM_SENDER)). A batch is taken when every
//! member is, each by its own origin (a member sent without a source
//! carries the batch's): what the batch's envelope claims does not speak
//! for its members.
//!
//! **What this is and is not.** Without signatures, acceptance controls
//! route: they keep well-behaved senders to the nodes meant for them, but a
//! client that can publish on the NATS server can claim any sender and any
//! source. Node rules authenticate when the node also requires signed
//! events ([`NodeConfig::require_signed`](crate::NodeConfig::require_signed):
//! the sender is then the holder of the sender's registered key; see
//! [`crate::identity`]). Source rules trust the origin a signing sender put
//! in the event (the source is covered by its signature, not checked
//! against anything). The runtime's own reports (`system.*`, made in this
//! process) are never signed and need no signature; an event from another
//! process claiming [`SYSTEM_SENDER`](crate::SYSTEM_SENDER) is rejected
//! before any rule sees it.
//!
//! ```
//! use happen::prelude::*;
//! use happen::AcceptRule;
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> happen::Result<()> {
//! let happen = Happen::embedded();
//! let billing = happen.node_with("billing", NodeConfig::new().accept_from([
//!     AcceptRule::node("order-service-*"),
//!     AcceptRule::source("tenant:acme:*"),
//! ]))?;
//! billing.on("invoice", |_e: Event, _cx: Context| async { json!("invoiced") })?;
//!
//! let orders = happen.node("order-service-eu")?;
//! assert_eq!(orders.send(&billing, Event::new("invoice", json!(null))).await?, "invoiced");
//!
//! // Another node, on behalf of a user of the tenant: accepted by the source rule.
//! let portal = happen.node("portal")?;
//! let event = Event::new("invoice", json!(null)).with_source("tenant:acme:user-7", "user");
//! assert_eq!(portal.send(&billing, event).await?, "invoiced");
//!
//! // The same node for another tenant: refused, and told why.
//! let event = Event::new("invoice", json!(null)).with_source("tenant:globex:user-1", "user");
//! let refused = portal.send(&billing, event).await.unwrap_err();
//! assert!(matches!(refused, HappenError::NotAccepted { .. }), "{refused}");
//! # Ok(()) }
//! ```

use std::fmt;

use crate::error::HappenError;
use crate::event::Event;
use crate::pattern::glob_match;
#[cfg(doc)]
use crate::system;

/// One pattern of a node's acceptance controls; see the
/// [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AcceptRule {
    on: On,
    pattern: String,
}

/// What a rule's pattern is matched against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum On {
    Node,
    Source,
    Either,
}

impl AcceptRule {
    /// Accepts events whose sending node's id matches `pattern`.
    pub fn node(pattern: impl Into<String>) -> Self {
        Self::new(On::Node, pattern)
    }

    /// Accepts events whose origin source id matches `pattern`.
    pub fn source(pattern: impl Into<String>) -> Self {
        Self::new(On::Source, pattern)
    }

    /// Accepts events whose sending node's id or origin source id matches
    /// `pattern` (what a plain string converts to).
    pub fn either(pattern: impl Into<String>) -> Self {
        Self::new(On::Either, pattern)
    }

    fn new(on: On, pattern: impl Into<String>) -> Self {
        AcceptRule {
            on,
            pattern: pattern.into(),
        }
    }

    /// The pattern.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// Whether this rule accepts `event`.
    pub fn accepts(&self, event: &Event) -> bool {
        self.accepts_from(&event.causal().sender, event.origin().source_id.as_deref())
    }

    /// Whether this rule accepts an event from the node `sender` on behalf
    /// of the source `source`.
    fn accepts_from(&self, sender: &str, source: Option<&str>) -> bool {
        let node = || glob_match(&self.pattern, sender);
        let source = || source.is_some_and(|s| glob_match(&self.pattern, s));
        match self.on {
            On::Node => node(),
            On::Source => source(),
            On::Either => node() || source(),
        }
    }
}

impl fmt::Display for AcceptRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.on {
            On::Node => write!(f, "node {}", self.pattern),
            On::Source => write!(f, "source {}", self.pattern),
            On::Either => write!(f, "{}", self.pattern),
        }
    }
}

impl From<&str> for AcceptRule {
    fn from(pattern: &str) -> Self {
        AcceptRule::either(pattern)
    }
}

impl From<String> for AcceptRule {
    fn from(pattern: String) -> Self {
        AcceptRule::either(pattern)
    }
}

/// A node's rules, checked when an event is delivered to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AcceptFrom(Box<[AcceptRule]>);

impl AcceptFrom {
    pub(crate) fn new(rules: Vec<AcceptRule>) -> Self {
        AcceptFrom(rules.into_boxed_slice())
    }

    /// `Ok` when a rule accepts `event`; else the refusal for its sender.
    pub(crate) fn check(&self, node: &str, event: &Event) -> Result<(), HappenError> {
        let causal = event.causal();
        self.check_from(node, &causal.sender, event.origin().source_id.as_deref())
    }

    /// [`check`](Self::check) for an event from the node `sender` on behalf
    /// of the source `source` (a zero event is checked this way, without
    /// converting it: nothing is allocated unless it is refused).
    pub(crate) fn check_from(
        &self,
        node: &str,
        sender: &str,
        source: Option<&str>,
    ) -> Result<(), HappenError> {
        if self.0.iter().any(|rule| rule.accepts_from(sender, source)) {
            return Ok(());
        }
        Err(HappenError::NotAccepted {
            node: node.to_owned(),
            sender: sender.to_owned(),
            source_id: source.map(str::to_owned),
            rules: self
                .0
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::Id;
    use serde_json::json;

    fn from(sender: &str, source: Option<&str>) -> Event {
        let mut event = Event::new("e", json!(null));
        if let Some(source) = source {
            event = event.with_source(source, "user");
        }
        crate::event::stamp(&mut event, &Id::from(sender), None);
        event
    }

    #[test]
    fn rules_match_senders_sources_or_either() {
        let node = AcceptRule::node("order-service-*");
        assert!(node.accepts(&from("order-service-eu", None)));
        assert!(!node.accepts(&from("order-service", None)));
        assert!(!node.accepts(&from("x", Some("order-service-eu"))));

        let source = AcceptRule::source("tenant:acme:*");
        assert!(source.accepts(&from("portal", Some("tenant:acme:user-1"))));
        assert!(!source.accepts(&from("portal", Some("tenant:globex:user-1"))));
        assert!(!source.accepts(&from("tenant:acme:svc", None)));

        let either = AcceptRule::from("admin-*");
        assert!(either.accepts(&from("admin-1", None)));
        assert!(either.accepts(&from("portal", Some("admin-7"))));
        assert!(!either.accepts(&from("portal", Some("user-7"))));
    }

    #[test]
    fn a_refusal_names_the_node_the_sender_and_the_rules() {
        let rules = AcceptFrom::new(vec![AcceptRule::node("a-*"), "admin".into()]);
        assert!(rules.check("n", &from("a-1", None)).is_ok());
        let error = rules
            .check("n", &from("b", Some("tenant:x:u")))
            .unwrap_err();
        let text = error.to_string();
        for part in ["n", "b", "tenant:x:u", "node a-*", "admin"] {
            assert!(text.contains(part), "{text} lacks {part}");
        }
    }
}

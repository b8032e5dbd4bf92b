//! [`Domain`]: the documentation's `createDomain`, a builder for the event
//! types and patterns of one domain (`order.*`).

use super::{Pattern, domain, exact, one_of};

/// The events of one domain, `<name>.<action>`: patterns to register
/// handlers with and event types to send, without repeating the prefix.
///
/// ```
/// use happen::pattern::Domain;
///
/// let order = Domain::new("order");
/// assert!(order.on("submitted").matches("order.submitted"));
/// assert!(order.all().matches("order.item.added"));
/// assert!(order.one_of(["paid", "shipped"]).matches("order.shipped"));
/// assert!(!order.one_of(["paid", "shipped"]).matches("order.cancelled"));
/// assert_eq!(order.event_type("submitted"), "order.submitted");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domain {
    name: String,
}

impl Domain {
    /// The domain `name` (an event type prefix such as `"order"`).
    pub fn new(name: impl Into<String>) -> Domain {
        Domain { name: name.into() }
    }

    /// The domain's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The event type of `action`: `<name>.<action>`.
    pub fn event_type(&self, action: &str) -> String {
        format!("{}.{action}", self.name)
    }

    /// A pattern for the event `action` of this domain.
    pub fn on(&self, action: &str) -> Pattern {
        exact(&self.event_type(action))
    }

    /// A pattern for every event of this domain.
    pub fn all(&self) -> Pattern {
        domain(&self.name)
    }

    /// A pattern for any of `actions`.
    pub fn one_of<'a>(&self, actions: impl IntoIterator<Item = &'a str>) -> Pattern {
        one_of(actions.into_iter().map(|a| self.on(a)))
    }
}

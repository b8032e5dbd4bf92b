//! Rules for the names Happen puts on the wire: event types and node ids.
//!
//! Both kinds of name must be usable as NATS subject tokens, so they share one
//! character rule: no whitespace, no control characters and none of
//! `*`, `>`, `{`, `}` or `,` (the first two are NATS wildcards, the rest are
//! the alternation syntax of [`crate::pattern`]).
//!
//! - An **event type** is one or more non-empty segments joined by `.`, such as
//!   `order.submitted` or `user.password-changed`, at most
//!   [`MAX_EVENT_TYPE_LEN`] bytes long.
//! - A **node id** is a single token (no `.` either), at most
//!   [`MAX_NODE_ID_LEN`] bytes long.
//!
//! ```
//! use happen::name::{validate_event_type, validate_node_id};
//!
//! assert!(validate_event_type("order.submitted").is_ok());
//! assert!(validate_event_type("order.*").is_err());
//! assert!(validate_node_id("payments").is_ok());
//! assert!(validate_node_id("payments.eu").is_err());
//! ```

use std::fmt;

/// The longest event type accepted, in bytes.
pub const MAX_EVENT_TYPE_LEN: usize = 256;

/// The longest node id accepted, in bytes.
pub const MAX_NODE_ID_LEN: usize = 128;

/// Which kind of name a [`NameError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum NameKind {
    /// An event type such as `order.submitted`.
    EventType,
    /// A node id such as `payments`.
    NodeId,
}

impl NameKind {
    /// The rule this kind of name follows, phrased for error messages.
    fn rule(self) -> &'static str {
        match self {
            NameKind::EventType => {
                "event types are dot-separated tokens without whitespace or any of * > { } ,"
            }
            NameKind::NodeId => {
                "node ids are single tokens without whitespace or any of . * > { } ,"
            }
        }
    }
}

impl fmt::Display for NameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameKind::EventType => "event type",
            NameKind::NodeId => "node id",
        })
    }
}

/// A name that cannot be used as an event type or node id.
///
/// The message names the offending string, what is wrong with it and what is
/// allowed instead:
///
/// ```
/// use happen::name::validate_event_type;
///
/// let err = validate_event_type("a b").unwrap_err();
/// assert!(err.to_string().starts_with("invalid event type \"a b\": segment 1 contains whitespace"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[error("invalid {kind} {name:?}: {reason}; {}", .kind.rule())]
pub struct NameError {
    /// Whether the name was meant as an event type or a node id.
    pub kind: NameKind,
    /// The rejected name, as given.
    pub name: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Whether each byte is one every name may contain: the fast path of the
/// checks below (anything else is looked at character by character).
const PLAIN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] =
            c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b':' | b'/' | b'@' | b'#');
        b += 1;
    }
    table
};

#[inline]
fn plain_byte(b: u8) -> bool {
    PLAIN[usize::from(b)]
}

/// Describes why `c` cannot appear in a name token, or `None` if it can.
///
/// `.` is allowed here; callers that treat it as a separator (or forbid it)
/// handle it themselves.
pub(crate) fn char_problem(c: char) -> Option<String> {
    if c.is_whitespace() {
        Some("whitespace".to_owned())
    } else if c.is_control() {
        Some(format!("control character U+{:04X}", u32::from(c)))
    } else if matches!(c, '*' | '>' | '{' | '}' | ',') {
        Some(format!("'{c}'"))
    } else {
        None
    }
}

/// Checks that `s` can be used as an event type.
///
/// An event type is non-empty, at most [`MAX_EVENT_TYPE_LEN`] bytes, and made
/// of `.`-separated segments that are each non-empty and free of whitespace,
/// control characters and `*`, `>`, `{`, `}`, `,`. Any other character,
/// including non-ASCII letters, is allowed.
///
/// # Errors
///
/// Returns a [`NameError`] of kind [`NameKind::EventType`] saying which rule
/// `s` breaks.
///
/// ```
/// use happen::name::validate_event_type;
///
/// assert!(validate_event_type("user.password-changed").is_ok());
/// assert!(validate_event_type("a..b").is_err());
/// ```
#[inline]
pub fn validate_event_type(s: &str) -> Result<(), NameError> {
    // Fast path: plain ASCII segments, checked without building anything.
    // One pass: a `.` may not start the type nor follow another `.`.
    let bytes = s.as_bytes();
    let mut plain = bytes.len() <= MAX_EVENT_TYPE_LEN && bytes.last().is_some_and(|&b| b != b'.');
    let mut after_dot = true;
    for &b in bytes {
        let dot = b == b'.';
        plain &= if dot { !after_dot } else { plain_byte(b) };
        after_dot = dot;
    }
    if plain {
        return Ok(());
    }
    event_type_problem(s)
}

/// Why `s` is not a valid event type (the slow path of
/// [`validate_event_type`], kept out of line so that the fast path, run
/// for every event sent, needs no stack frame of its own).
#[cold]
#[inline(never)]
fn event_type_problem(s: &str) -> Result<(), NameError> {
    let fail = |reason: String| NameError {
        kind: NameKind::EventType,
        name: s.to_owned(),
        reason,
    };
    if s.is_empty() {
        return Err(fail("it is empty".to_owned()));
    }
    if s.len() > MAX_EVENT_TYPE_LEN {
        return Err(fail(format!(
            "it is {} bytes long, the maximum is {MAX_EVENT_TYPE_LEN}",
            s.len()
        )));
    }
    for (index, segment) in s.split('.').enumerate() {
        let number = index + 1;
        if segment.is_empty() {
            return Err(fail(format!(
                "segment {number} is empty (a leading, trailing or doubled '.')"
            )));
        }
        if let Some(problem) = segment.chars().find_map(char_problem) {
            return Err(fail(format!("segment {number} contains {problem}")));
        }
    }
    Ok(())
}

/// Checks that `s` can be used as a node id.
///
/// A node id is a single token: non-empty, at most [`MAX_NODE_ID_LEN`] bytes,
/// and free of `.`, whitespace, control characters and `*`, `>`, `{`, `}`, `,`.
///
/// # Errors
///
/// Returns a [`NameError`] of kind [`NameKind::NodeId`] saying which rule `s`
/// breaks.
///
/// ```
/// use happen::name::validate_node_id;
///
/// assert!(validate_node_id("order-service").is_ok());
/// assert!(validate_node_id("order service").is_err());
/// ```
pub fn validate_node_id(s: &str) -> Result<(), NameError> {
    if !s.is_empty() && s.len() <= MAX_NODE_ID_LEN && s.bytes().all(plain_byte) {
        return Ok(());
    }
    let fail = |reason: String| NameError {
        kind: NameKind::NodeId,
        name: s.to_owned(),
        reason,
    };
    if s.is_empty() {
        return Err(fail("it is empty".to_owned()));
    }
    if s.len() > MAX_NODE_ID_LEN {
        return Err(fail(format!(
            "it is {} bytes long, the maximum is {MAX_NODE_ID_LEN}",
            s.len()
        )));
    }
    let problem = s.chars().find_map(|c| {
        if c == '.' {
            Some("'.'".to_owned())
        } else {
            char_problem(c)
        }
    });
    match problem {
        Some(problem) => Err(fail(format!("it contains {problem}"))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_event_types() {
        for s in [
            "create-order",
            "order.submitted",
            "user.password-changed",
            "system.connection-status",
            "ünïcode.ok",
            "a",
            "a.b.c.d",
            "under_score:colon/slash",
        ] {
            assert_eq!(validate_event_type(s), Ok(()), "{s:?} should be valid");
        }
    }

    #[test]
    fn invalid_event_types() {
        for s in [
            "", "a..b", ".a", "a.", ".", "a b", "order.*", "a>b", "{a}", "a,b", "a\tb", "a\u{7}",
            "a.\u{a0}", "*", ">", "a.>",
        ] {
            let err = validate_event_type(s).expect_err(s);
            assert_eq!(err.kind, NameKind::EventType);
            assert_eq!(err.name, s);
        }
    }

    #[test]
    fn event_type_length_limit() {
        let ok = "a".repeat(MAX_EVENT_TYPE_LEN);
        assert_eq!(validate_event_type(&ok), Ok(()));
        let long = "a".repeat(MAX_EVENT_TYPE_LEN + 1);
        let err = validate_event_type(&long).unwrap_err();
        assert!(err.reason.contains("257 bytes"), "{}", err.reason);
        // Multi-byte characters count by bytes, not chars.
        let wide = "ü".repeat(MAX_EVENT_TYPE_LEN / 2 + 1);
        assert!(validate_event_type(&wide).is_err());
    }

    #[test]
    fn event_type_error_message() {
        let err = validate_event_type("a b").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid event type \"a b\": segment 1 contains whitespace; \
             event types are dot-separated tokens without whitespace or any of * > { } ,"
        );
        let err = validate_event_type("order.it*m").unwrap_err();
        assert_eq!(err.reason, "segment 2 contains '*'");
        let err = validate_event_type("a..b").unwrap_err();
        assert!(
            err.reason.starts_with("segment 2 is empty"),
            "{}",
            err.reason
        );
        let err = validate_event_type("").unwrap_err();
        assert_eq!(err.reason, "it is empty");
        let err = validate_event_type("x.a\u{1}").unwrap_err();
        assert_eq!(err.reason, "segment 2 contains control character U+0001");
    }

    #[test]
    fn valid_node_ids() {
        for s in ["payments", "order-service", "n1", "ünïcode", "a_b:c"] {
            assert_eq!(validate_node_id(s), Ok(()), "{s:?} should be valid");
        }
        assert_eq!(validate_node_id(&"n".repeat(MAX_NODE_ID_LEN)), Ok(()));
    }

    #[test]
    fn invalid_node_ids() {
        for s in [
            "", "a.b", ".", "a b", "*", ">", "a>", "{a}", "a,b", "a\nb", "a\u{0}",
        ] {
            let err = validate_node_id(s).expect_err(s);
            assert_eq!(err.kind, NameKind::NodeId);
            assert_eq!(err.name, s);
        }
        assert!(validate_node_id(&"n".repeat(MAX_NODE_ID_LEN + 1)).is_err());
    }

    #[test]
    fn node_id_error_message() {
        let err = validate_node_id("a.b").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid node id \"a.b\": it contains '.'; \
             node ids are single tokens without whitespace or any of . * > { } ,"
        );
    }

    #[test]
    fn kind_display() {
        assert_eq!(NameKind::EventType.to_string(), "event type");
        assert_eq!(NameKind::NodeId.to_string(), "node id");
    }
}

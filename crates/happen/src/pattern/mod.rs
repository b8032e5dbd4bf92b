//! Patterns that select event types: which events a handler or subscription
//! receives.
//!
//! # String patterns
//!
//! A string pattern is a list of non-empty segments separated by `.`, matched
//! against the `.`-separated segments of an event type. Each segment is one of:
//!
//! | segment          | matches                                                        |
//! |------------------|----------------------------------------------------------------|
//! | `*`              | exactly one segment, whatever it is                            |
//! | `>`              | one or more remaining segments; only allowed as the last one   |
//! | literal text     | a segment equal to the text                                    |
//! | `{x,y,...}` mixed with text | a segment equal to the text with each group replaced by one of its alternatives |
//!
//! Literal text may use any character allowed in event types (see
//! [`crate::name`]): everything except whitespace, control characters and
//! `*`, `>`, `{`, `}`, `,`, `.`. An alternation group `{...}` holds one or more
//! non-empty literal alternatives separated by `,`; groups cannot be nested
//! and cannot contain `.`, `*` or `>`. A segment may contain several groups,
//! as in `{a,b}{c,d}` (which matches `ac`, `ad`, `bc` and `bd`).
//!
//! | pattern                  | matches                          | does not match               |
//! |--------------------------|----------------------------------|------------------------------|
//! | `order.created`          | `order.created`                  | `order.created.v2`           |
//! | `order.*`                | `order.created`                  | `order`, `order.item.added`  |
//! | `order.>`                | `order.a`, `order.a.b`           | `order`                      |
//! | `a.*.c`                  | `a.b.c`                          | `a.c`, `a.b.b.c`             |
//! | `{order,payment}.created`| `order.created`, `payment.created` | `refund.created`           |
//! | `user-{a,b}.x`           | `user-a.x`, `user-b.x`           | `user-.x`, `user-ab.x`       |
//!
//! ```
//! use happen::pattern::Pattern;
//!
//! let p = Pattern::parse("{order,payment}.*").unwrap();
//! assert!(p.matches("order.created"));
//! assert!(p.matches("payment.failed"));
//! assert!(!p.matches("order.item.added"));
//!
//! let err = Pattern::parse("ord*").unwrap_err();
//! assert_eq!(err.position, 3);
//! ```
//!
//! # Building patterns
//!
//! Besides [`Pattern::parse`], patterns come from [`any`](Pattern::any),
//! [`domain`], [`exact`], [`wildcard`] (a glob whose `*` spans dots, as the
//! documentation's helper), [`Pattern::from_fn`] and the combinators
//! [`one_of`], [`not`], [`Pattern::and`], [`Pattern::or`] and
//! [`Pattern::negate`]. Functions that take patterns accept anything that
//! implements [`IntoPattern`]: a [`Pattern`], a string, or a closure
//! `Fn(&str) -> bool`.
//!
//! A string that is not a valid pattern still converts (so that builder code
//! stays free of `unwrap`), into a pattern that matches nothing and remembers
//! the error; [`Pattern::validate`] returns it. Happen calls `validate` on
//! registering a pattern (one too long for any event type is an error too).
//!
//! ```
//! use happen::pattern::{domain, not, one_of, Pattern};
//!
//! let p = one_of(["order.created", "payment.*"]).and(not(domain("payment.test")));
//! assert!(p.matches("order.created"));
//! assert!(p.matches("payment.failed"));
//! assert!(!p.matches("refund.created"));
//!
//! let bad = Pattern::any().and("order.{a,}");
//! assert!(bad.validate().is_err());
//! ```
//!
//! Over NATS, patterns that can be expressed as subject filters (string
//! patterns, `domain`, `exact`, a `wildcard` ending in `.*`, and `one_of`
//! these) are filtered by the server; the others are filtered in the process.
//! Either way a handler sees exactly the events its pattern matches.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

mod domains;
mod matcher;
mod parse;
#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;

use crate::name::char_problem;
pub use domains::Domain;
#[cfg(feature = "nats")]
pub(crate) use matcher::Segment;
pub(crate) use matcher::{Compiled, Glob, glob_match};
pub(crate) use parse::check_name;
use parse::compile;

/// A string that is not a valid pattern.
///
/// `position` is the byte offset in `pattern` where the problem was found
/// (at most `pattern.len()`), and `reason` states the rule that was broken.
///
/// ```
/// use happen::pattern::Pattern;
///
/// let err = Pattern::parse("ord*").unwrap_err();
/// assert_eq!(
///     err.to_string(),
///     "invalid pattern \"ord*\": '*' must be a whole segment (at byte 3); see happen::pattern for the syntax"
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[error(
    "invalid pattern {pattern:?}: {reason} (at byte {position}); see happen::pattern for the syntax"
)]
pub struct PatternError {
    /// The rejected pattern, as given.
    pub pattern: String,
    /// Byte offset of the problem within `pattern`.
    pub position: usize,
    /// The rule that was broken.
    pub reason: String,
}

/// A selector of event types.
///
/// Cloning is cheap (the parts are reference counted), and patterns are
/// `Send + Sync`. See the [module documentation](self) for the string syntax.
///
/// ```
/// use happen::pattern::Pattern;
///
/// let p = Pattern::parse("order.>").unwrap();
/// assert!(p.matches("order.item.added"));
/// assert!(!p.matches("order"));
/// ```
#[derive(Clone)]
#[must_use]
pub struct Pattern {
    repr: Repr,
}

/// What a pattern is made of; the NATS transport reads it to build subject
/// filters.
#[derive(Clone)]
pub(crate) enum Repr {
    /// Matches every string.
    Any,
    /// Matches exactly this string.
    Exact(Arc<str>),
    /// Matches `name.` followed by one or more non-empty segments.
    Domain(Arc<str>),
    /// A string pattern with wildcards or alternation.
    Compiled(Arc<Compiled>),
    /// A [`wildcard`] glob: `*` is any run of characters.
    Glob(Arc<Glob>),
    /// A user predicate.
    Func(Arc<dyn Fn(&str) -> bool + Send + Sync>),
    /// Matches what the inner pattern does not.
    Not(Arc<Pattern>),
    /// Matches what all parts match.
    And(Arc<[Pattern]>),
    /// Matches what any part matches (nothing if there are no parts).
    Or(Arc<[Pattern]>),
    /// Built from an invalid string: matches nothing.
    Invalid(Arc<PatternError>),
}

impl Pattern {
    /// Parses a string pattern, reporting the first syntax error.
    ///
    /// A pattern without wildcards or alternation compiles to a plain string
    /// comparison.
    ///
    /// # Errors
    ///
    /// Returns a [`PatternError`] locating the first place where `s` breaks
    /// the syntax described in the [module documentation](self).
    ///
    /// ```
    /// use happen::pattern::Pattern;
    ///
    /// assert!(Pattern::parse("a.*.c").unwrap().matches("a.b.c"));
    /// assert!(Pattern::parse("a.>.c").is_err());
    /// ```
    pub fn parse(s: &str) -> Result<Pattern, PatternError> {
        compile(s).map(|repr| Pattern { repr })
    }

    /// A pattern that asks `f` whether an event type matches.
    ///
    /// Over NATS such patterns cannot be subject filters: the process takes
    /// every broadcast and asks `f`.
    ///
    /// ```
    /// use happen::pattern::Pattern;
    ///
    /// let p = Pattern::from_fn(|t| t.ends_with(".failed"));
    /// assert!(p.matches("payment.failed"));
    /// ```
    pub fn from_fn<F: Fn(&str) -> bool + Send + Sync + 'static>(f: F) -> Pattern {
        Pattern {
            repr: Repr::Func(Arc::new(f)),
        }
    }

    /// A pattern that matches every event type.
    ///
    /// ```
    /// use happen::pattern::Pattern;
    ///
    /// assert!(Pattern::any().matches("anything.at.all"));
    /// ```
    pub fn any() -> Pattern {
        Pattern { repr: Repr::Any }
    }

    /// Whether `event_type` is selected by this pattern.
    ///
    /// This never allocates. Patterns built from invalid strings match
    /// nothing.
    ///
    /// ```
    /// use happen::pattern::Pattern;
    ///
    /// let p = Pattern::parse("order.*").unwrap();
    /// assert!(p.matches("order.created"));
    /// assert!(!p.matches("order.item.added"));
    /// ```
    #[must_use]
    pub fn matches(&self, event_type: &str) -> bool {
        match &self.repr {
            Repr::Any => true,
            Repr::Exact(text) => **text == *event_type,
            Repr::Domain(name) => event_type
                .strip_prefix(&**name)
                .and_then(|rest| rest.strip_prefix('.'))
                .is_some_and(|rest| rest.split('.').all(|segment| !segment.is_empty())),
            Repr::Compiled(compiled) => compiled.matches(event_type),
            Repr::Glob(glob) => glob.matches(event_type),
            Repr::Func(f) => f(event_type),
            Repr::Not(inner) => !inner.matches(event_type),
            Repr::And(parts) => parts.iter().all(|p| p.matches(event_type)),
            Repr::Or(parts) => parts.iter().any(|p| p.matches(event_type)),
            Repr::Invalid(_) => false,
        }
    }

    /// Checks that this pattern, and every pattern it was combined from, was
    /// built from a valid string.
    ///
    /// # Errors
    ///
    /// Returns the first [`PatternError`] found, depth first.
    ///
    /// ```
    /// use happen::pattern::{wildcard, Pattern};
    ///
    /// assert!(wildcard("order.*").validate().is_ok());
    /// let err = Pattern::any().or("order.{a").validate().unwrap_err();
    /// assert_eq!(err.pattern, "order.{a");
    /// ```
    pub fn validate(&self) -> Result<(), PatternError> {
        match &self.repr {
            Repr::Invalid(err) => Err(PatternError::clone(err)),
            Repr::Not(inner) => inner.validate(),
            Repr::And(parts) | Repr::Or(parts) => parts.iter().try_for_each(Pattern::validate),
            Repr::Any
            | Repr::Exact(_)
            | Repr::Domain(_)
            | Repr::Compiled(_)
            | Repr::Glob(_)
            | Repr::Func(_) => Ok(()),
        }
    }

    /// A pattern that matches what both `self` and `other` match.
    ///
    /// ```
    /// use happen::pattern::Pattern;
    ///
    /// let p = Pattern::parse("order.*").unwrap().and(|t: &str| t.len() < 14);
    /// assert!(p.matches("order.created"));
    /// assert!(!p.matches("order.cancelled"));
    /// ```
    pub fn and(self, other: impl IntoPattern) -> Pattern {
        let mut parts = Vec::new();
        for pattern in [self, other.into_pattern()] {
            match pattern.repr {
                Repr::And(inner) => parts.extend(inner.iter().cloned()),
                repr => parts.push(Pattern { repr }),
            }
        }
        Pattern {
            repr: Repr::And(parts.into()),
        }
    }

    /// A pattern that matches what `self` or `other` matches.
    ///
    /// ```
    /// use happen::pattern::exact;
    ///
    /// let p = exact("order.created").or("payment.*");
    /// assert!(p.matches("payment.failed"));
    /// ```
    pub fn or(self, other: impl IntoPattern) -> Pattern {
        one_of([self, other.into_pattern()])
    }

    /// A pattern that matches what `self` does not; the same as [`not`].
    ///
    /// ```
    /// use happen::pattern::domain;
    ///
    /// assert!(domain("internal").negate().matches("order.created"));
    /// ```
    pub fn negate(self) -> Pattern {
        not(self)
    }

    /// What the pattern is made of.
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    pub(crate) fn repr(&self) -> &Repr {
        &self.repr
    }

    fn invalid(err: PatternError) -> Pattern {
        Pattern {
            repr: Repr::Invalid(Arc::new(err)),
        }
    }
}

impl FromStr for Pattern {
    type Err = PatternError;

    /// The same as [`Pattern::parse`].
    fn from_str(s: &str) -> Result<Pattern, PatternError> {
        Pattern::parse(s)
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn list(f: &mut fmt::Formatter<'_>, name: &str, parts: &[Pattern]) -> fmt::Result {
            write!(f, "{name}(")?;
            for (index, part) in parts.iter().enumerate() {
                if index > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{part:?}")?;
            }
            f.write_str(")")
        }
        match &self.repr {
            Repr::Any => f.write_str("any()"),
            Repr::Exact(text) => write!(f, "exact({text:?})"),
            Repr::Domain(name) => write!(f, "domain({name:?})"),
            Repr::Compiled(compiled) => write!(f, "pattern({:?})", compiled.source),
            Repr::Glob(glob) => write!(f, "wildcard({:?})", glob.source),
            Repr::Func(_) => f.write_str("<fn>"),
            Repr::Not(inner) => write!(f, "not({inner:?})"),
            Repr::And(parts) => list(f, "and", parts),
            Repr::Or(parts) => list(f, "one_of", parts),
            Repr::Invalid(err) => write!(f, "invalid({:?})", err.pattern),
        }
    }
}

/// Conversion into a [`Pattern`], accepted wherever Happen takes a pattern.
///
/// Implemented for [`Pattern`] and `&Pattern`, for strings (parsed with the
/// [string syntax](self), deferring errors to [`Pattern::validate`]) and for
/// closures `Fn(&str) -> bool`. A closure passed where `impl IntoPattern` is
/// expected needs its argument type written out, as in `|t: &str| ...`.
///
/// ```
/// use happen::pattern::{IntoPattern, Pattern};
///
/// fn count(p: impl IntoPattern, types: &[&str]) -> usize {
///     let p = p.into_pattern();
///     types.iter().filter(|t| p.matches(t)).count()
/// }
///
/// let types = ["order.created", "order.paid", "user.created"];
/// assert_eq!(count("order.*", &types), 2);
/// assert_eq!(count(|t: &str| t.ends_with("created"), &types), 2);
/// assert_eq!(count(Pattern::any(), &types), 3);
/// ```
pub trait IntoPattern {
    /// Converts `self` into a pattern.
    fn into_pattern(self) -> Pattern;
}

impl IntoPattern for Pattern {
    fn into_pattern(self) -> Pattern {
        self
    }
}

impl IntoPattern for &Pattern {
    fn into_pattern(self) -> Pattern {
        self.clone()
    }
}

impl IntoPattern for &str {
    fn into_pattern(self) -> Pattern {
        string_pattern(self)
    }
}

impl IntoPattern for String {
    fn into_pattern(self) -> Pattern {
        string_pattern(&self)
    }
}

impl IntoPattern for &String {
    fn into_pattern(self) -> Pattern {
        string_pattern(self)
    }
}

/// A string in the [string syntax](self), its error deferred to `validate`.
fn string_pattern(pattern: &str) -> Pattern {
    Pattern::parse(pattern).unwrap_or_else(Pattern::invalid)
}

impl<F> IntoPattern for F
where
    F: Fn(&str) -> bool + Send + Sync + 'static,
{
    fn into_pattern(self) -> Pattern {
        Pattern::from_fn(self)
    }
}

/// A pattern matching every event type in the domain `name`: those that
/// start with `name.` followed by one or more segments.
///
/// `name` is taken literally and may itself contain dots (`domain("shop.eu")`
/// matches `shop.eu.order.created`). If it is not a valid event type (empty,
/// an empty segment, wildcards, whitespace...), the result matches nothing and
/// [`Pattern::validate`] reports the problem.
///
/// ```
/// use happen::pattern::domain;
///
/// let p = domain("order");
/// assert!(p.matches("order.created"));
/// assert!(p.matches("order.item.added"));
/// assert!(!p.matches("order"));
/// assert!(!p.matches("orders.created"));
/// ```
pub fn domain(name: &str) -> Pattern {
    match check_name(name) {
        Ok(()) => Pattern {
            repr: Repr::Domain(Arc::from(name)),
        },
        Err((position, problem)) => Pattern::invalid(PatternError {
            pattern: name.to_owned(),
            position,
            reason: format!("domain names must be valid event types, but {problem}"),
        }),
    }
}

/// A pattern matching exactly `event_type`, with no wildcard interpretation.
///
/// `exact("a.*")` matches only the literal string `a.*`. Such a string is not
/// a valid event type (see [`crate::name`]), so in practice that pattern
/// matches no event.
///
/// ```
/// use happen::pattern::exact;
///
/// assert!(exact("order.created").matches("order.created"));
/// assert!(!exact("order.*").matches("order.created"));
/// ```
pub fn exact(event_type: &str) -> Pattern {
    Pattern {
        repr: Repr::Exact(Arc::from(event_type)),
    }
}

/// A glob, as the documentation's `wildcard` helper: `*` matches any run of
/// characters, dots included (possibly none); every other character stands
/// for itself.
///
/// This differs from the [string syntax](self), where `*` is exactly one
/// segment: `"user.*.completed"` given to `node.on` matches
/// `user.signup.completed` only, while `wildcard("user.*.completed")` also
/// matches `user.profile.update.completed`. An empty glob, or one with
/// whitespace or control characters (which no event type contains), matches
/// nothing and [`Pattern::validate`] reports it.
///
/// ```
/// use happen::pattern::{wildcard, Pattern};
///
/// let glob = wildcard("user.*.completed");
/// assert!(glob.matches("user.signup.completed"));
/// assert!(glob.matches("user.profile.update.completed"));
/// assert!(!glob.matches("order.signup.completed"));
///
/// let segment = Pattern::parse("user.*.completed").unwrap();
/// assert!(segment.matches("user.signup.completed"));
/// assert!(!segment.matches("user.profile.update.completed"));
///
/// assert!(wildcard("order*").matches("orders.created"));
/// assert!(wildcard("").validate().is_err());
/// ```
pub fn wildcard(pattern: &str) -> Pattern {
    if pattern.is_empty() {
        return Pattern::invalid(PatternError {
            pattern: String::new(),
            position: 0,
            reason: "the wildcard is empty".to_owned(),
        });
    }
    if let Some((position, c)) = pattern
        .char_indices()
        .find(|(_, c)| c.is_whitespace() || c.is_control())
    {
        return Pattern::invalid(PatternError {
            pattern: pattern.to_owned(),
            position,
            reason: format!(
                "{} cannot appear in an event type",
                char_problem(c).unwrap_or_else(|| format!("{c:?}"))
            ),
        });
    }
    if !pattern.contains('*') {
        return Pattern {
            repr: Repr::Exact(Arc::from(pattern)),
        };
    }
    Pattern {
        repr: Repr::Glob(Arc::new(Glob::new(pattern))),
    }
}

/// A pattern matching what any of `patterns` matches.
///
/// With no patterns at all, it matches nothing. A string argument is read in
/// the [string syntax](self), where the documentation's `oneOf` compares
/// strings exactly: for every string that could equal an event type the two
/// agree (such a string has no `*`, `>`, `{`, `}` or `,`, so it parses to an
/// exact comparison), and a string with those characters could never equal
/// an event type, so reading it as a pattern is the useful choice.
///
/// ```
/// use happen::pattern::one_of;
///
/// let p = one_of(["order.created", "payment.*"]);
/// assert!(p.matches("order.created"));
/// assert!(p.matches("payment.failed"));
/// assert!(!p.matches("order.paid"));
/// ```
pub fn one_of<I, P>(patterns: I) -> Pattern
where
    I: IntoIterator<Item = P>,
    P: IntoPattern,
{
    let mut parts = Vec::new();
    for pattern in patterns {
        match pattern.into_pattern().repr {
            Repr::Or(inner) => parts.extend(inner.iter().cloned()),
            repr => parts.push(Pattern { repr }),
        }
    }
    match <[Pattern; 1]>::try_from(parts) {
        Ok([single]) => single,
        Err(parts) => Pattern {
            repr: Repr::Or(parts.into()),
        },
    }
}

/// A pattern matching what `pattern` does not.
///
/// A string is read in the [string syntax](self); as with [`one_of`], for
/// any string that could equal an event type this is the documentation's
/// exact comparison.
///
/// Over NATS a negation is filtered in the process. Note that the negation of an invalid pattern matches everything; [`Pattern::validate`]
/// still reports the error.
///
/// ```
/// use happen::pattern::not;
///
/// let p = not("internal.>");
/// assert!(p.matches("order.created"));
/// assert!(!p.matches("internal.tick"));
/// ```
pub fn not(pattern: impl IntoPattern) -> Pattern {
    Pattern {
        repr: Repr::Not(Arc::new(pattern.into_pattern())),
    }
}

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
//! [`domain`], [`exact`], [`wildcard`], [`Pattern::from_fn`] and the
//! combinators [`one_of`], [`not`], [`Pattern::and`], [`Pattern::or`] and
//! [`Pattern::negate`]. Functions that take patterns accept anything that
//! implements [`IntoPattern`]: a [`Pattern`], a string, or a closure
//! `Fn(&str) -> bool`.
//!
//! A string that is not a valid pattern still converts (so that builder code
//! stays free of `unwrap`), into a pattern that matches nothing and remembers
//! the error; [`Pattern::validate`] returns it. Happen calls `validate` when a
//! pattern is registered, so the mistake surfaces there.
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
//! # Subjects
//!
//! [`Pattern::subjects`] translates a pattern into NATS subject filters when
//! that is possible, so that a transport can let the server do the filtering.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::name::char_problem;

/// The most subjects [`Pattern::subjects`] returns for one string pattern.
///
/// A string pattern whose alternation groups expand to more combinations than
/// this has no subjects (it is filtered locally instead).
pub const MAX_SUBJECTS: usize = 64;

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

#[derive(Clone)]
enum Repr {
    /// Matches every string.
    Any,
    /// Matches exactly this string.
    Exact(Arc<str>),
    /// Matches `name.` followed by one or more non-empty segments.
    Domain(Arc<str>),
    /// A string pattern with wildcards or alternation.
    Compiled(Arc<Compiled>),
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
    /// Such patterns have no [`subjects`](Pattern::subjects): events are
    /// filtered locally.
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
            Repr::Any | Repr::Exact(_) | Repr::Domain(_) | Repr::Compiled(_) | Repr::Func(_) => {
                Ok(())
            }
        }
    }

    /// NATS subject filters that select exactly the event types this pattern
    /// matches, or `None` if the pattern cannot be expressed that way.
    ///
    /// - a string pattern gives one subject per combination of its
    ///   alternatives (`*` and `>` carry over unchanged), or `None` if there
    ///   would be more than [`MAX_SUBJECTS`];
    /// - [`any`](Pattern::any) gives `[">"]`, [`domain("x")`](domain) gives
    ///   `["x.>"]` and [`exact(t)`](exact) gives `[t]` (or `None` if `t` is
    ///   not a valid event type, since NATS would read it differently);
    /// - [`one_of`] and [`or`](Pattern::or) give the union of their parts'
    ///   subjects, without duplicates, if every part has subjects (an empty
    ///   `one_of` gives an empty list);
    /// - functions, [`not`] and [`and`](Pattern::and) give `None`, as do
    ///   patterns built from invalid strings.
    ///
    /// Returning `None` means that events must be filtered locally with
    /// [`matches`](Pattern::matches).
    ///
    /// ```
    /// use happen::pattern::Pattern;
    ///
    /// let p = Pattern::parse("{order,payment}.*").unwrap();
    /// assert_eq!(p.subjects().unwrap(), vec!["order.*", "payment.*"]);
    /// assert_eq!(Pattern::from_fn(|_| true).subjects(), None);
    /// ```
    #[must_use]
    pub fn subjects(&self) -> Option<Vec<String>> {
        match &self.repr {
            Repr::Any => Some(vec![">".to_owned()]),
            Repr::Exact(text) => check_name(text).is_ok().then(|| vec![text.to_string()]),
            Repr::Domain(name) => Some(vec![format!("{name}.>")]),
            Repr::Compiled(compiled) => compiled.subjects(),
            Repr::Or(parts) => {
                let mut out: Vec<String> = Vec::new();
                for part in parts.iter() {
                    for subject in part.subjects()? {
                        if !out.contains(&subject) {
                            out.push(subject);
                        }
                    }
                }
                Some(out)
            }
            Repr::Func(_) | Repr::Not(_) | Repr::And(_) | Repr::Invalid(_) => None,
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
            Repr::Compiled(compiled) => write!(f, "wildcard({:?})", compiled.source),
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
        wildcard(self)
    }
}

impl IntoPattern for String {
    fn into_pattern(self) -> Pattern {
        wildcard(&self)
    }
}

impl IntoPattern for &String {
    fn into_pattern(self) -> Pattern {
        wildcard(self)
    }
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
/// matches no event; it also has no [`subjects`](Pattern::subjects).
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

/// A pattern in the [string syntax](self); the same as converting the string
/// with [`IntoPattern`].
///
/// If `pattern` is not valid, the result matches nothing and
/// [`Pattern::validate`] returns the error.
///
/// ```
/// use happen::pattern::wildcard;
///
/// assert!(wildcard("order.>").matches("order.item.added"));
/// assert!(wildcard("order.>.x").validate().is_err());
/// ```
pub fn wildcard(pattern: &str) -> Pattern {
    Pattern::parse(pattern).unwrap_or_else(Pattern::invalid)
}

/// A pattern matching what any of `patterns` matches.
///
/// With no patterns at all, it matches nothing.
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
/// Negated patterns have no [`subjects`](Pattern::subjects). Note that the
/// negation of an invalid pattern matches everything; [`Pattern::validate`]
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

// ---------------------------------------------------------------------------
// Compiled string patterns
// ---------------------------------------------------------------------------

/// A string pattern with at least one wildcard or alternation group.
struct Compiled {
    /// The pattern as written, for `Debug`.
    source: Box<str>,
    /// The segments before a trailing `>`, if any.
    segments: Box<[Segment]>,
    /// Whether the pattern ends with `>`.
    tail: bool,
}

/// One segment of a compiled pattern.
enum Segment {
    /// `*`: any one non-empty segment.
    Star,
    /// A literal segment.
    Literal(Box<str>),
    /// A segment with alternation, expanded into its (sorted, distinct)
    /// literal combinations.
    OneOf(Box<[Box<str>]>),
    /// A segment with too many combinations to expand.
    Pieces(Pieces),
}

/// A segment kept as a sequence of pieces, each a list of alternatives (a
/// literal run is a piece with one alternative).
struct Pieces {
    parts: Box<[Box<[Box<str>]>]>,
    /// Length in bytes of the shortest text this segment matches.
    min_len: usize,
    /// Length in bytes of the longest text this segment matches.
    max_len: usize,
}

impl Compiled {
    fn matches(&self, event_type: &str) -> bool {
        let mut tokens = event_type.split('.');
        for segment in &self.segments {
            match tokens.next() {
                Some(token) if segment.matches(token) => {}
                _ => return false,
            }
        }
        if self.tail {
            let mut any = false;
            for token in tokens {
                if token.is_empty() {
                    return false;
                }
                any = true;
            }
            any
        } else {
            tokens.next().is_none()
        }
    }

    fn subjects(&self) -> Option<Vec<String>> {
        let mut choices: Vec<&[Box<str>]> = Vec::with_capacity(self.segments.len());
        let star: &[Box<str>] = &[];
        let mut total: usize = 1;
        for segment in &self.segments {
            let options = match segment {
                Segment::Star => star,
                Segment::Literal(text) => std::slice::from_ref(text),
                Segment::OneOf(alternatives) => alternatives,
                Segment::Pieces(_) => return None,
            };
            total = total.saturating_mul(options.len().max(1));
            choices.push(options);
        }
        if total > MAX_SUBJECTS {
            return None;
        }
        let mut subjects = vec![String::new()];
        for (index, options) in choices.iter().enumerate() {
            let separator = if index == 0 { "" } else { "." };
            subjects = if options.is_empty() {
                // `*` stays a wildcard token.
                subjects
                    .into_iter()
                    .map(|prefix| format!("{prefix}{separator}*"))
                    .collect()
            } else {
                subjects
                    .iter()
                    .flat_map(|prefix| {
                        options
                            .iter()
                            .map(move |option| format!("{prefix}{separator}{option}"))
                    })
                    .collect()
            };
        }
        if self.tail {
            let separator = if self.segments.is_empty() { "" } else { "." };
            for subject in &mut subjects {
                subject.push_str(separator);
                subject.push('>');
            }
        }
        Some(subjects)
    }
}

impl Segment {
    fn matches(&self, token: &str) -> bool {
        match self {
            Segment::Star => !token.is_empty(),
            Segment::Literal(text) => **text == *token,
            Segment::OneOf(alternatives) => alternatives
                .binary_search_by(|alternative| (**alternative).cmp(token))
                .is_ok(),
            Segment::Pieces(pieces) => pieces.matches(token),
        }
    }
}

/// Number of 64-bit words in a [`PositionSet`].
const POSITION_WORDS: usize = 5;

/// A fixed-size set of byte positions `0..POSITION_WORDS * 64`, used to match
/// [`Pieces`] without allocating.
#[derive(Clone, Copy)]
struct PositionSet([u64; POSITION_WORDS]);

impl PositionSet {
    /// The largest segment length (in bytes) the set can track; this covers
    /// every segment of a valid event type.
    const MAX_LEN: usize = POSITION_WORDS * 64 - 1;

    fn contains(&self, position: usize) -> bool {
        self.0
            .get(position / 64)
            .is_some_and(|word| (word >> (position % 64)) & 1 == 1)
    }

    fn insert(&mut self, position: usize) {
        if let Some(word) = self.0.get_mut(position / 64) {
            *word |= 1 << (position % 64);
        }
    }

    fn is_empty(&self) -> bool {
        self.0.iter().all(|word| *word == 0)
    }
}

impl Pieces {
    fn matches(&self, token: &str) -> bool {
        if token.len() < self.min_len || token.len() > self.max_len {
            return false;
        }
        if token.len() <= PositionSet::MAX_LEN {
            self.matches_by_positions(token)
        } else {
            // Only reachable for segments longer than any valid event type;
            // the recursion depth is bounded by the number of pieces.
            matches_by_backtracking(&self.parts, token)
        }
    }

    /// Tracks every byte offset reachable after each piece: linear in the
    /// number of pieces, whatever the alternatives.
    fn matches_by_positions(&self, token: &str) -> bool {
        let bytes = token.as_bytes();
        let mut reachable = PositionSet([0; POSITION_WORDS]);
        reachable.insert(0);
        for alternatives in &self.parts {
            let mut next = PositionSet([0; POSITION_WORDS]);
            for position in 0..=bytes.len() {
                if !reachable.contains(position) {
                    continue;
                }
                let rest = bytes.get(position..).unwrap_or_default();
                for alternative in alternatives {
                    if rest.starts_with(alternative.as_bytes()) {
                        next.insert(position + alternative.len());
                    }
                }
            }
            if next.is_empty() {
                return false;
            }
            reachable = next;
        }
        reachable.contains(bytes.len())
    }
}

fn matches_by_backtracking(parts: &[Box<[Box<str>]>], token: &str) -> bool {
    match parts.split_first() {
        None => token.is_empty(),
        Some((alternatives, rest)) => alternatives.iter().any(|alternative| {
            token
                .strip_prefix(&**alternative)
                .is_some_and(|remaining| matches_by_backtracking(rest, remaining))
        }),
    }
}

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

/// Parses `source` into its most efficient representation.
fn compile(source: &str) -> Result<Repr, PatternError> {
    let fail = |position: usize, reason: String| PatternError {
        pattern: source.to_owned(),
        position,
        reason,
    };
    if source.is_empty() {
        return Err(fail(
            0,
            "the pattern is empty; it needs at least one segment".to_owned(),
        ));
    }
    let count = source.split('.').count();
    let mut segments = Vec::with_capacity(count);
    let mut tail = false;
    let mut offset = 0;
    for (index, text) in source.split('.').enumerate() {
        match text {
            "" => {
                return Err(fail(
                    offset,
                    "empty segment; segments are separated by single '.' and cannot be empty"
                        .to_owned(),
                ));
            }
            "*" => segments.push(Segment::Star),
            ">" if index + 1 == count => tail = true,
            ">" => {
                return Err(fail(
                    offset,
                    "'>' is only allowed as the last segment".to_owned(),
                ));
            }
            _ => segments.push(
                parse_segment(text, offset).map_err(|(position, reason)| fail(position, reason))?,
            ),
        }
        offset += text.len() + 1;
    }

    if !tail {
        let mut literal = String::with_capacity(source.len());
        let mut all_literal = true;
        for (index, segment) in segments.iter().enumerate() {
            let Segment::Literal(text) = segment else {
                all_literal = false;
                break;
            };
            if index > 0 {
                literal.push('.');
            }
            literal.push_str(text);
        }
        if all_literal {
            return Ok(Repr::Exact(Arc::from(literal)));
        }
    }
    Ok(Repr::Compiled(Arc::new(Compiled {
        source: source.into(),
        segments: segments.into(),
        tail,
    })))
}

/// An alternation group being read: where it opened, the alternatives so far
/// and the one being read.
struct OpenGroup {
    start: usize,
    alternatives: Vec<String>,
    current: String,
}

/// Parses one segment that is neither empty nor a lone `*` or `>`; `offset`
/// is its byte offset in the pattern. Errors are `(position, reason)`.
fn parse_segment(text: &str, offset: usize) -> Result<Segment, (usize, String)> {
    const EMPTY_ALTERNATIVE: &str =
        "empty alternative; every alternative in a {..} group needs at least one character";

    let mut parts: Vec<Vec<String>> = Vec::new();
    let mut literal = String::new();
    let mut group: Option<OpenGroup> = None;

    for (index, c) in text.char_indices() {
        let at = offset + index;
        match c {
            '*' | '>' => {
                return Err((at, format!("'{c}' must be a whole segment")));
            }
            '{' => {
                if let Some(open) = &group {
                    return Err((
                        at,
                        format!(
                            "alternation groups cannot be nested (the group opened at byte {} is still open)",
                            open.start
                        ),
                    ));
                }
                if !literal.is_empty() {
                    parts.push(vec![std::mem::take(&mut literal)]);
                }
                group = Some(OpenGroup {
                    start: at,
                    alternatives: Vec::new(),
                    current: String::new(),
                });
            }
            ',' => match &mut group {
                None => {
                    return Err((
                        at,
                        "',' is only allowed inside an alternation group {..}".to_owned(),
                    ));
                }
                Some(open) => {
                    if open.current.is_empty() {
                        return Err((at, EMPTY_ALTERNATIVE.to_owned()));
                    }
                    let alternative = std::mem::take(&mut open.current);
                    open.alternatives.push(alternative);
                }
            },
            '}' => match group.take() {
                None => return Err((at, "'}' has no matching '{'".to_owned())),
                Some(mut open) => {
                    if open.current.is_empty() {
                        return Err((at, EMPTY_ALTERNATIVE.to_owned()));
                    }
                    open.alternatives.push(open.current);
                    parts.push(open.alternatives);
                }
            },
            _ => {
                if let Some(problem) = char_problem(c) {
                    return Err((at, format!("{problem} is not allowed in a pattern")));
                }
                match &mut group {
                    Some(open) => open.current.push(c),
                    None => literal.push(c),
                }
            }
        }
    }
    if let Some(open) = group {
        return Err((
            open.start,
            "'{' is not closed by '}' within its segment (alternatives cannot contain '.')"
                .to_owned(),
        ));
    }
    if !literal.is_empty() {
        parts.push(vec![literal]);
    }
    Ok(build_segment(parts))
}

/// Chooses the representation of a parsed segment.
fn build_segment(parts: Vec<Vec<String>>) -> Segment {
    // Normalize: distinct sorted alternatives, adjacent single-alternative
    // pieces merged into one literal run.
    let mut merged: Vec<Vec<String>> = Vec::with_capacity(parts.len());
    for mut alternatives in parts {
        alternatives.sort();
        alternatives.dedup();
        match (merged.last_mut(), alternatives.as_slice()) {
            (Some(previous), [single]) if previous.len() == 1 => {
                if let Some(run) = previous.first_mut() {
                    run.push_str(single);
                }
            }
            _ => merged.push(alternatives),
        }
    }

    let combinations = merged
        .iter()
        .fold(1usize, |total, part| total.saturating_mul(part.len()));
    if combinations <= MAX_SUBJECTS {
        let mut expanded = vec![String::new()];
        for alternatives in &merged {
            expanded = expanded
                .iter()
                .flat_map(|prefix| alternatives.iter().map(move |a| format!("{prefix}{a}")))
                .collect();
        }
        expanded.sort();
        expanded.dedup();
        if let [single] = expanded.as_mut_slice() {
            return Segment::Literal(std::mem::take(single).into());
        }
        return Segment::OneOf(expanded.into_iter().map(String::into_boxed_str).collect());
    }

    let lengths = |pick: fn(usize, usize) -> usize| {
        merged
            .iter()
            .map(|alternatives| {
                alternatives
                    .iter()
                    .map(String::len)
                    .reduce(pick)
                    .unwrap_or_default()
            })
            .fold(0usize, usize::saturating_add)
    };
    let min_len = lengths(usize::min);
    let max_len = lengths(usize::max);
    Segment::Pieces(Pieces {
        parts: merged
            .into_iter()
            .map(|alternatives| {
                alternatives
                    .into_iter()
                    .map(String::into_boxed_str)
                    .collect()
            })
            .collect(),
        min_len,
        max_len,
    })
}

/// Checks that `name` is made of non-empty `.`-separated tokens of allowed
/// characters (the character rules of event types, without the length
/// limit). Errors are `(position, description)`.
fn check_name(name: &str) -> Result<(), (usize, String)> {
    if name.is_empty() {
        return Err((0, "it is empty".to_owned()));
    }
    let mut offset = 0;
    for segment in name.split('.') {
        if segment.is_empty() {
            return Err((offset, "it has an empty segment".to_owned()));
        }
        for (index, c) in segment.char_indices() {
            if let Some(problem) = char_problem(c) {
                return Err((offset + index, format!("it contains {problem}")));
            }
        }
        offset += segment.len() + 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Pattern {
        match Pattern::parse(s) {
            Ok(pattern) => pattern,
            Err(err) => panic!("{err}"),
        }
    }

    fn err(s: &str) -> PatternError {
        match Pattern::parse(s) {
            Ok(pattern) => panic!("{s:?} parsed as {pattern:?}"),
            Err(err) => err,
        }
    }

    fn check(pattern: &str, yes: &[&str], no: &[&str]) {
        let compiled = p(pattern);
        for t in yes {
            assert!(compiled.matches(t), "{pattern:?} should match {t:?}");
        }
        for t in no {
            assert!(!compiled.matches(t), "{pattern:?} should not match {t:?}");
        }
    }

    #[test]
    fn literal_patterns_are_exact() {
        check(
            "order.created",
            &["order.created"],
            &[
                "order",
                "order.created.v2",
                "order.create",
                "xorder.created",
                "",
            ],
        );
        assert!(matches!(p("order.created").repr, Repr::Exact(_)));
        assert!(matches!(p("ünïcode.ok").repr, Repr::Exact(_)));
        // A single-alternative group is a literal too.
        let single = p("{order}.created");
        assert!(matches!(single.repr, Repr::Exact(ref t) if &**t == "order.created"));
        assert!(matches!(p("a{b,b}c").repr, Repr::Exact(ref t) if &**t == "abc"));
    }

    #[test]
    fn star_matches_one_segment() {
        check(
            "order.*",
            &["order.created", "order.x"],
            &["order", "order.item.added", "order.", "other.created"],
        );
        check("a.*.c", &["a.b.c", "a.xyz.c"], &["a.c", "a.b.b.c", "a..c"]);
        check("*", &["a", "order"], &["", "a.b"]);
        check("*.*", &["a.b"], &["a", "a.b.c", ".b", "a."]);
    }

    #[test]
    fn tail_matches_one_or_more_segments() {
        check(
            "order.>",
            &["order.a", "order.a.b", "order.a.b.c"],
            &["order", "order.", "order.a.", "order..a", "orders.a"],
        );
        check(">", &["a", "a.b", "a.b.c"], &["", ".", "a."]);
        check("*.>", &["a.b", "a.b.c"], &["a"]);
        check("a.*.>", &["a.b.c", "a.b.c.d"], &["a.b"]);
    }

    #[test]
    fn alternation() {
        check(
            "{order,payment}.created",
            &["order.created", "payment.created"],
            &["refund.created", "orderpayment.created", "order.paid"],
        );
        check(
            "user-{a,b}.x",
            &["user-a.x", "user-b.x"],
            &["user-.x", "user-ab.x", "user-c.x", "user-a"],
        );
        check(
            "{a,b}{c,d}",
            &["ac", "ad", "bc", "bd"],
            &["a", "c", "abcd", "ab"],
        );
        check("x{a,ab}y", &["xay", "xaby"], &["xy", "xby", "xabby"]);
        check(
            "{a,b}.*.{c,d}.>",
            &["a.x.c.y", "b.x.d.y.z"],
            &["a.x.c", "c.x.c.y"],
        );
        check("pre{a,b}", &["prea", "preb"], &["pre", "prec"]);
    }

    #[test]
    fn large_alternation_uses_pieces() {
        // 4^4 = 256 combinations: too many to expand.
        let pattern = "{a,b,c,d}{a,b,c,d}{a,b,c,d}{a,bb,c,dd}x";
        let compiled = p(pattern);
        let Repr::Compiled(c) = &compiled.repr else {
            panic!("expected a compiled pattern");
        };
        assert!(matches!(c.segments[0], Segment::Pieces(_)));
        check(
            pattern,
            &["abcax", "dddddx", "aaabbx"],
            &["abcx", "abcaxx", "abcbx", ""],
        );
        assert_eq!(compiled.subjects(), None);

        // Overlapping alternatives where greedy choices would fail.
        let overlapping = "{a,aa,aaa}{a,aa,aaa}{a,aa,aaa}{a,aa,aaa}{a,aa,aaa}b";
        check(
            overlapping,
            &["aaaaab", "aaaaaaaaaaaaaab"],
            &["aaaab", "aaaaaaaaaaaaaaaab"],
        );

        // A long token takes the backtracking path.
        let long_alt = "x".repeat(400);
        let long_pattern = format!("{{{long_alt},y,z,w,v}}{{a,b,c,d}}{{a,b,c,d}}{{a,b,c,d}}");
        let compiled = p(&long_pattern);
        assert!(compiled.matches(&format!("{long_alt}abc")));
        assert!(compiled.matches("yabc"));
        assert!(!compiled.matches(&format!("{long_alt}ab")));
    }

    #[test]
    fn segment_count_must_match() {
        check("a.b.*", &["a.b.c"], &["a.b", "a.b.c.d"]);
    }

    #[test]
    fn error_empty() {
        let e = err("");
        assert_eq!(e.position, 0);
        assert!(e.reason.contains("empty"));
    }

    #[test]
    fn error_empty_segment() {
        for (pattern, position) in [("a..b", 2), (".a", 0), ("a.", 2), (".", 0), ("a.*.", 4)] {
            let e = err(pattern);
            assert_eq!(e.position, position, "{pattern:?}: {e}");
            assert!(e.reason.starts_with("empty segment"), "{e}");
        }
    }

    #[test]
    fn error_tail_not_last() {
        for (pattern, position) in [(">.a", 0), ("a.>.b", 2), ("a.>.>", 2)] {
            let e = err(pattern);
            assert_eq!(e.position, position, "{pattern:?}: {e}");
            assert_eq!(e.reason, "'>' is only allowed as the last segment");
        }
    }

    #[test]
    fn error_wildcard_in_segment() {
        for (pattern, position, c) in [
            ("ord*", 3, '*'),
            ("*a", 0, '*'),
            ("a.b*c", 3, '*'),
            ("**", 0, '*'),
            ("a>b", 1, '>'),
            ("a.>>", 2, '>'),
            ("{*,a}", 1, '*'),
            ("{a,>}", 3, '>'),
        ] {
            let e = err(pattern);
            assert_eq!(e.position, position, "{pattern:?}: {e}");
            assert_eq!(e.reason, format!("'{c}' must be a whole segment"));
        }
    }

    #[test]
    fn error_braces() {
        let e = err("{a,b");
        assert_eq!(e.position, 0);
        assert!(e.reason.contains("not closed"), "{e}");
        let e = err("x.{a.b}");
        assert_eq!(e.position, 2);
        assert!(e.reason.contains("not closed"), "{e}");
        let e = err("{a,{b}}");
        assert_eq!(e.position, 3);
        assert!(e.reason.contains("nested"), "{e}");
        let e = err("a}");
        assert_eq!(e.position, 1);
        assert!(e.reason.contains("no matching"), "{e}");
        let e = err("{a}}");
        assert_eq!(e.position, 3);
        assert!(e.reason.contains("no matching"), "{e}");
    }

    #[test]
    fn error_empty_alternative() {
        for (pattern, position) in [("{a,}", 3), ("{,a}", 1), ("{}", 1), ("x.{a,,b}", 5)] {
            let e = err(pattern);
            assert_eq!(e.position, position, "{pattern:?}: {e}");
            assert!(e.reason.starts_with("empty alternative"), "{e}");
        }
    }

    #[test]
    fn error_stray_comma() {
        let e = err("a,b");
        assert_eq!(e.position, 1);
        assert!(e.reason.contains("','"), "{e}");
        let e = err("{a}.b,");
        assert_eq!(e.position, 5);
    }

    #[test]
    fn error_forbidden_characters() {
        let e = err("a b");
        assert_eq!(e.position, 1);
        assert_eq!(e.reason, "whitespace is not allowed in a pattern");
        let e = err("a.{b,c\td}");
        assert_eq!(e.position, 6);
        let e = err("a\u{1}");
        assert_eq!(
            e.reason,
            "control character U+0001 is not allowed in a pattern"
        );
        let e = err("ü ");
        assert_eq!(e.position, 2);
    }

    #[test]
    fn error_display() {
        assert_eq!(
            err("ord*").to_string(),
            "invalid pattern \"ord*\": '*' must be a whole segment (at byte 3); \
             see happen::pattern for the syntax"
        );
    }

    #[test]
    fn error_position_is_within_pattern() {
        for pattern in ["", "a.", "{a", "a.{", "x,", "{a,}", "a.>.", "ü.{ä"] {
            let e = err(pattern);
            assert!(e.position <= pattern.len(), "{pattern:?}: {e}");
            assert_eq!(e.pattern, pattern);
        }
    }

    #[test]
    fn any_matches_everything() {
        let any = Pattern::any();
        for t in ["", "a", "a.b.c", "order.*"] {
            assert!(any.matches(t));
        }
        assert_eq!(any.validate(), Ok(()));
    }

    #[test]
    fn domain_patterns() {
        let d = domain("order");
        for t in ["order.created", "order.item.added"] {
            assert!(d.matches(t), "{t}");
        }
        for t in [
            "order",
            "orders.created",
            "order.",
            "order..x",
            "x.order.y",
            "",
        ] {
            assert!(!d.matches(t), "{t}");
        }
        let nested = domain("shop.eu");
        assert!(nested.matches("shop.eu.order"));
        assert!(!nested.matches("shop.us.order"));
        assert_eq!(nested.validate(), Ok(()));
    }

    #[test]
    fn invalid_domain_names() {
        for (name, position) in [("", 0), ("a b", 1), ("order.*", 6), ("a..b", 2), ("x.", 2)] {
            let d = domain(name);
            assert!(!d.matches("a.b"));
            let e = d.validate().unwrap_err();
            assert_eq!(e.position, position, "{name:?}: {e}");
            assert_eq!(e.pattern, name);
            assert_eq!(d.subjects(), None);
        }
    }

    #[test]
    fn exact_is_literal() {
        let e = exact("a.*");
        assert!(e.matches("a.*"));
        assert!(!e.matches("a.b"));
        assert_eq!(e.validate(), Ok(()));
        assert_eq!(e.subjects(), None);
        assert_eq!(
            exact("order.created").subjects(),
            Some(vec!["order.created".to_owned()])
        );
    }

    #[test]
    fn wildcard_defers_errors() {
        let w = wildcard("ord*");
        assert!(!w.matches("ord"));
        assert!(!w.matches("ord*"));
        let e = w.validate().unwrap_err();
        assert_eq!(e, err("ord*"));
        assert_eq!(w.subjects(), None);
        assert!(wildcard("order.*").matches("order.x"));
    }

    #[test]
    fn into_pattern_impls() {
        let owned = String::from("order.*");
        let base = p("order.*");
        let patterns = [
            base.clone().into_pattern(),
            (&base).into_pattern(),
            "order.*".into_pattern(),
            owned.clone().into_pattern(),
            (&owned).into_pattern(),
            (|t: &str| t.starts_with("order.")).into_pattern(),
        ];
        for pattern in &patterns {
            assert!(pattern.matches("order.x"), "{pattern:?}");
            assert!(!pattern.matches("user.x"), "{pattern:?}");
            assert_eq!(pattern.validate(), Ok(()));
        }
        let bad = "a..b".into_pattern();
        assert!(bad.validate().is_err());
        assert!(!bad.matches("a..b"));
        let from_str: Pattern = "order.>".parse().unwrap();
        assert!(from_str.matches("order.a.b"));
    }

    #[test]
    fn and_or_not() {
        let both = p("order.*").and(|t: &str| t.ends_with("ed"));
        assert!(both.matches("order.created"));
        assert!(!both.matches("order.create"));
        assert!(!both.matches("user.created"));

        let either = exact("a").or("b.*");
        assert!(either.matches("a"));
        assert!(either.matches("b.x"));
        assert!(!either.matches("c"));

        let neither = not(either.clone());
        assert!(!neither.matches("a"));
        assert!(neither.matches("c"));
        assert!(either.clone().negate().matches("c"));

        // Flattening keeps semantics.
        let three = p("a.*").and("*.b").and(|t: &str| t.len() == 3);
        assert!(three.matches("a.b"));
        assert!(!three.matches("a.c"));
        assert!(matches!(three.repr, Repr::And(ref parts) if parts.len() == 3));
        let many = exact("a").or("b").or("c");
        assert!(matches!(many.repr, Repr::Or(ref parts) if parts.len() == 3));
        assert!(many.matches("c"));
    }

    #[test]
    fn one_of_patterns() {
        let o = one_of(["order.created", "payment.*"]);
        assert!(o.matches("order.created"));
        assert!(o.matches("payment.x"));
        assert!(!o.matches("order.paid"));

        let none = one_of(Vec::<Pattern>::new());
        assert!(!none.matches("a"));
        assert_eq!(none.subjects(), Some(Vec::new()));

        let single = one_of(["a.*"]);
        assert!(matches!(single.repr, Repr::Compiled(_)));
    }

    #[test]
    fn validate_finds_nested_errors() {
        let e = Pattern::any()
            .and(not(one_of(["a", "b.{x"])))
            .validate()
            .unwrap_err();
        assert_eq!(e.pattern, "b.{x");
        assert_eq!(e.position, 2);
        assert_eq!(not("a.").validate().unwrap_err().pattern, "a.");
        assert!(Pattern::any().or(domain("")).validate().is_err());
        assert_eq!(one_of(["a", "b.*"]).and(not("c.>")).validate(), Ok(()));
    }

    fn subjects(pattern: impl IntoPattern) -> Option<Vec<String>> {
        pattern.into_pattern().subjects()
    }

    #[test]
    fn subjects_of_string_patterns() {
        assert_eq!(subjects("order.created").unwrap(), ["order.created"]);
        assert_eq!(subjects("order.*").unwrap(), ["order.*"]);
        assert_eq!(subjects("order.>").unwrap(), ["order.>"]);
        assert_eq!(subjects(">").unwrap(), [">"]);
        assert_eq!(subjects("*").unwrap(), ["*"]);
        assert_eq!(subjects("*.a.>").unwrap(), ["*.a.>"]);
        assert_eq!(
            subjects("{order,payment}.created").unwrap(),
            ["order.created", "payment.created"]
        );
        assert_eq!(
            subjects("{b,a}.*.x{1,2}.>").unwrap(),
            ["a.*.x1.>", "a.*.x2.>", "b.*.x1.>", "b.*.x2.>"]
        );
        assert_eq!(subjects("{a,ab}{b,bb}").unwrap(), ["ab", "abb", "abbb"]);
    }

    #[test]
    fn subjects_cap() {
        // 8 * 8 = 64 combinations: allowed.
        let eight = "{a,b,c,d,e,f,g,h}";
        let at_cap = subjects(format!("{eight}.{eight}")).unwrap();
        assert_eq!(at_cap.len(), MAX_SUBJECTS);
        // 8 * 9 = 72: too many.
        assert_eq!(subjects(format!("{eight}.{{a,b,c,d,e,f,g,h,i}}")), None);
        // Still matches correctly.
        let over = p(&format!("{eight}.{{a,b,c,d,e,f,g,h,i}}"));
        assert!(over.matches("h.i"));
        assert!(!over.matches("i.h"));
    }

    #[test]
    fn subjects_of_constructors_and_combinators() {
        assert_eq!(Pattern::any().subjects().unwrap(), [">"]);
        assert_eq!(domain("order").subjects().unwrap(), ["order.>"]);
        assert_eq!(
            one_of(["a.*", "{a,b}.*", "c"]).subjects().unwrap(),
            ["a.*", "b.*", "c"]
        );
        assert_eq!(exact("x").or(domain("y")).subjects().unwrap(), ["x", "y.>"]);
        assert_eq!(one_of(["a", "b"]).or(|_: &str| true).subjects(), None);
        assert_eq!(Pattern::from_fn(|_| true).subjects(), None);
        assert_eq!(not("a").subjects(), None);
        assert_eq!(exact("a").and("a").subjects(), None);
        assert_eq!(one_of(["a", "b.{"]).subjects(), None);
    }

    #[test]
    fn debug_output() {
        assert_eq!(format!("{:?}", Pattern::any()), "any()");
        assert_eq!(format!("{:?}", p("a.b")), "exact(\"a.b\")");
        assert_eq!(format!("{:?}", p("a.*")), "wildcard(\"a.*\")");
        assert_eq!(format!("{:?}", domain("d")), "domain(\"d\")");
        assert_eq!(format!("{:?}", wildcard("a*")), "invalid(\"a*\")");
        assert_eq!(
            format!("{:?}", not(exact("a").or(|_: &str| true)).and("b.>")),
            "and(not(one_of(exact(\"a\"), <fn>)), wildcard(\"b.>\"))"
        );
    }

    #[test]
    fn patterns_are_send_sync() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<Pattern>();
        assert_send_sync::<PatternError>();
    }

    #[test]
    fn check_name_rules() {
        assert_eq!(check_name("a.b"), Ok(()));
        assert!(check_name("").is_err());
        assert!(check_name("a.").is_err());
        assert!(check_name("a.{b}").is_err());
        assert!(check_name("a\u{85}").is_err());
    }
}

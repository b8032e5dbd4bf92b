//! Matching compiled string patterns and globs without allocating, and
//! whether a pattern answers by the event type alone.

/// A string pattern with at least one wildcard or alternation group.
pub(crate) struct Compiled {
    /// The pattern as written, for `Debug`.
    pub(crate) source: Box<str>,
    /// The segments before a trailing `>`, if any.
    pub(crate) segments: Box<[Segment]>,
    /// Whether the pattern ends with `>`.
    pub(crate) tail: bool,
}

/// One segment of a compiled pattern.
pub(crate) enum Segment {
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
pub(crate) struct Pieces {
    pub(super) parts: Box<[Box<[Box<str>]>]>,
    /// Length in bytes of the shortest text this segment matches.
    pub(super) min_len: usize,
    /// Length in bytes of the longest text this segment matches.
    pub(super) max_len: usize,
}

impl Compiled {
    pub(super) fn matches(&self, event_type: &str) -> bool {
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
}

impl Segment {
    /// The length in bytes of the shortest token this segment matches.
    pub(super) fn min_len(&self) -> usize {
        match self {
            Segment::Star => 1,
            Segment::Literal(text) => text.len(),
            Segment::OneOf(alternatives) => alternatives.iter().map(|a| a.len()).min().unwrap_or(0),
            Segment::Pieces(pieces) => pieces.min_len,
        }
    }

    pub(super) fn matches(&self, token: &str) -> bool {
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

/// A glob: `*` is any run of characters (dots included), the rest literal.
pub(crate) struct Glob {
    /// The glob as written.
    pub(crate) source: Box<str>,
}

impl Glob {
    pub(super) fn new(source: &str) -> Glob {
        Glob {
            source: source.into(),
        }
    }

    pub(super) fn matches(&self, text: &str) -> bool {
        glob_match(&self.source, text)
    }
}

/// `*` matches any run of characters (including none); everything else is
/// literal.
pub(crate) fn glob_match(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    // Allocates nothing: acceptance rules run on the zero path too.
    let Some(mut part) = parts.next() else {
        return rest.is_empty(); // no '*' at all: exact match
    };
    for next in parts {
        // The leftmost occurrence leaves the most room for what follows.
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
        part = next;
    }
    rest.len() >= part.len() && rest.ends_with(part)
}

use super::{Pattern, Repr};

impl Pattern {
    /// Whether the answer depends on the event type alone: no part of the
    /// pattern is a user function (whose answer may change).
    pub(crate) fn is_pure(&self) -> bool {
        match &self.repr {
            Repr::Func(_) => false,
            Repr::Not(inner) => inner.is_pure(),
            Repr::And(parts) | Repr::Or(parts) => parts.iter().all(Pattern::is_pure),
            Repr::Any
            | Repr::Exact(_)
            | Repr::Domain(_)
            | Repr::Compiled(_)
            | Repr::Glob(_)
            | Repr::Invalid(_) => true,
        }
    }

    /// Whether an event type given as its UTF-8 bytes matches; `text`
    /// gives it as a string when the pattern is more than one exact type
    /// (a zero event's type is read as bytes, and checked as UTF-8 only
    /// when needed).
    pub(crate) fn matches_raw<'a>(&self, raw: &[u8], text: impl FnOnce() -> &'a str) -> bool {
        match &self.repr {
            Repr::Exact(exact) => exact.as_bytes() == raw,
            _ => self.matches(text()),
        }
    }
}

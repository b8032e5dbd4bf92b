//! Parsing the string syntax into its most efficient representation.

use std::sync::Arc;

use super::matcher::{Compiled, Pieces, Segment};
use super::{PatternError, Repr};
use crate::name::{MAX_EVENT_TYPE_LEN, char_problem};

/// A segment whose alternation groups expand to at most this many
/// combinations is kept as a sorted list of literals (matched by binary
/// search); beyond it, as pieces.
pub(super) const EXPANSION_LIMIT: usize = 64;

/// Parses `source` into its most efficient representation.
pub(super) fn compile(source: &str) -> Result<Repr, PatternError> {
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

    // A pattern whose every match is longer than an event type may be
    // (a long literal, a mistake) matches nothing; over NATS its subject
    // would also be longer than the server takes.
    let words = segments.len() + usize::from(tail);
    let shortest = segments.iter().map(Segment::min_len).sum::<usize>()
        + usize::from(tail)
        + words.saturating_sub(1);
    if shortest > MAX_EVENT_TYPE_LEN {
        return Err(fail(
            0,
            format!(
                "it matches no event type: its shortest match is {shortest} bytes, and an event type is at most {MAX_EVENT_TYPE_LEN}"
            ),
        ));
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
    if combinations <= EXPANSION_LIMIT {
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
/// characters, at most `MAX_EVENT_TYPE_LEN` bytes (the rules of event
/// types). Errors are `(position, description)`.
pub(crate) fn check_name(name: &str) -> Result<(), (usize, String)> {
    if name.is_empty() {
        return Err((0, "it is empty".to_owned()));
    }
    if name.len() > MAX_EVENT_TYPE_LEN {
        return Err((
            MAX_EVENT_TYPE_LEN,
            format!("it is longer than {MAX_EVENT_TYPE_LEN} bytes"),
        ));
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

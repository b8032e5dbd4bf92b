//! Property tests of patterns: the matcher agrees with a regex reference,
//! globs agree with a reference glob matcher, NATS subject filters select
//! exactly what the pattern matches, and parsing never panics.

use proptest::prelude::*;
use regex::Regex;

use super::{Pattern, wildcard};

/// The subject filters of a pattern (none without the NATS transport).
fn filters(pattern: &Pattern) -> Option<Vec<String>> {
    #[cfg(feature = "nats")]
    return crate::transport::nats::filters::subject_filters(pattern);
    #[cfg(not(feature = "nats"))]
    {
        let _ = pattern;
        None
    }
}

/// A reference glob matcher: `*` is any run of characters, by recursion.
fn glob_reference(glob: &[u8], text: &[u8]) -> bool {
    match glob.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|i| glob_reference(rest, &text[i..])),
        Some((c, rest)) => text.first() == Some(c) && glob_reference(rest, &text[1..]),
    }
}

/// One piece of a generated segment: a literal or an alternation group.
#[derive(Debug, Clone)]
enum Piece {
    Literal(String),
    Group(Vec<String>),
}

/// A generated pattern segment.
#[derive(Debug, Clone)]
enum Seg {
    Star,
    Pieces(Vec<Piece>),
}

/// A generated pattern: segments, plus whether it ends with `>`.
#[derive(Debug, Clone)]
struct Generated {
    segments: Vec<Seg>,
    tail: bool,
}

impl Generated {
    fn source(&self) -> String {
        let mut parts: Vec<String> = self
            .segments
            .iter()
            .map(|segment| match segment {
                Seg::Star => "*".to_owned(),
                Seg::Pieces(pieces) => pieces
                    .iter()
                    .map(|piece| match piece {
                        Piece::Literal(text) => text.clone(),
                        Piece::Group(alternatives) => format!("{{{}}}", alternatives.join(",")),
                    })
                    .collect(),
            })
            .collect();
        if self.tail {
            parts.push(">".to_owned());
        }
        parts.join(".")
    }

    /// An event type built from the pattern by making a choice wherever it
    /// allows one (drawing from `choices`), so that it usually matches.
    fn instance(&self, choices: &[u8]) -> String {
        const WORDS: [&str; 4] = ["a", "b", "c", "ab"];
        let mut choices = choices.iter().cycle().map(|c| usize::from(*c));
        let mut next = move || choices.next().unwrap_or(0);
        let mut tokens: Vec<String> = self
            .segments
            .iter()
            .map(|segment| match segment {
                Seg::Star => WORDS[next() % WORDS.len()].to_owned(),
                Seg::Pieces(pieces) => pieces
                    .iter()
                    .map(|piece| match piece {
                        Piece::Literal(text) => text.clone(),
                        Piece::Group(alternatives) => {
                            alternatives[next() % alternatives.len()].clone()
                        }
                    })
                    .collect(),
            })
            .collect();
        if self.tail {
            for _ in 0..=next() % 3 {
                tokens.push(WORDS[next() % WORDS.len()].to_owned());
            }
        }
        tokens.join(".")
    }

    /// The reference matcher: an anchored regex equivalent to the pattern.
    fn regex(&self) -> Regex {
        let mut parts: Vec<String> = self
            .segments
            .iter()
            .map(|segment| match segment {
                Seg::Star => "[^.]+".to_owned(),
                Seg::Pieces(pieces) => pieces
                    .iter()
                    .map(|piece| match piece {
                        Piece::Literal(text) => regex::escape(text),
                        Piece::Group(alternatives) => {
                            let escaped: Vec<String> =
                                alternatives.iter().map(|a| regex::escape(a)).collect();
                            format!("(?:{})", escaped.join("|"))
                        }
                    })
                    .collect(),
            })
            .collect();
        if self.tail {
            parts.push(r"[^.]+(\.[^.]+)*".to_owned());
        }
        Regex::new(&format!("^(?:{})$", parts.join(r"\."))).expect("reference regex compiles")
    }
}

/// Small edits that may turn a matching event type into a non-matching one.
#[derive(Debug, Clone)]
enum Mutation {
    None,
    AppendSegment,
    DropLastSegment,
    AppendChar(char),
    DropLastChar,
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => Just(Mutation::None),
        1 => Just(Mutation::AppendSegment),
        1 => Just(Mutation::DropLastSegment),
        1 => prop_oneof![Just('a'), Just('b'), Just('c')].prop_map(Mutation::AppendChar),
        1 => Just(Mutation::DropLastChar),
    ]
}

fn mutate(t: &str, mutation: &Mutation) -> String {
    match mutation {
        Mutation::None => t.to_owned(),
        Mutation::AppendSegment => format!("{t}.a"),
        Mutation::DropLastSegment => match t.rsplit_once('.') {
            Some((rest, _)) => rest.to_owned(),
            None => t.to_owned(),
        },
        Mutation::AppendChar(c) => format!("{t}{c}"),
        Mutation::DropLastChar => {
            let mut t = t.to_owned();
            t.pop();
            // Keep it a valid event type.
            if t.is_empty() || t.ends_with('.') {
                t.push('c');
            }
            t
        }
    }
}

fn word() -> impl Strategy<Value = String> {
    prop_oneof![Just("a"), Just("b"), Just("c"), Just("ab")].prop_map(str::to_owned)
}

fn piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        word().prop_map(Piece::Literal),
        prop::collection::vec(word(), 1..4).prop_map(Piece::Group),
    ]
}

/// A segment whose groups have too many combinations to be expanded, so the
/// matcher keeps it as pieces.
fn big_segment() -> impl Strategy<Value = Seg> {
    prop::collection::vec(
        prop::collection::vec(word(), 4..8).prop_map(Piece::Group),
        4..6,
    )
    .prop_map(Seg::Pieces)
}

fn segment() -> impl Strategy<Value = Seg> {
    prop_oneof![
        2 => Just(Seg::Star),
        6 => prop::collection::vec(piece(), 1..5).prop_map(Seg::Pieces),
        1 => big_segment(),
    ]
}

fn pattern() -> impl Strategy<Value = Generated> {
    (prop::collection::vec(segment(), 0..5), any::<bool>())
        .prop_filter(
            "a pattern needs at least one segment",
            |(segments, tail)| !segments.is_empty() || *tail,
        )
        .prop_map(|(segments, tail)| Generated { segments, tail })
}

/// Event types over the same alphabet, with 1 to 5 segments; segments may
/// concatenate words so that alternation groups and literals line up.
fn event_type() -> impl Strategy<Value = String> {
    let token = prop::collection::vec(word(), 1..7).prop_map(|words| words.concat());
    prop::collection::vec(token, 1..6).prop_map(|tokens| tokens.join("."))
}

/// NATS subject filter semantics: `*` is one token, a final `>` is one or
/// more tokens, anything else must be equal.
fn nats_matches(filter: &str, subject: &str) -> bool {
    let filter: Vec<&str> = filter.split('.').collect();
    let subject: Vec<&str> = subject.split('.').collect();
    for (index, token) in filter.iter().enumerate() {
        if *token == ">" && index + 1 == filter.len() {
            return subject.len() > index;
        }
        match subject.get(index) {
            Some(s) if *token == "*" || token == s => {}
            _ => return false,
        }
    }
    filter.len() == subject.len()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn matches_agrees_with_regex(generated in pattern(), t in event_type()) {
        let source = generated.source();
        let parsed = Pattern::parse(&source);
        prop_assert!(parsed.is_ok(), "{source:?} should parse: {parsed:?}");
        let parsed = parsed.unwrap();
        prop_assert_eq!(parsed.validate(), Ok(()));
        prop_assert_eq!(
            parsed.matches(&t),
            generated.regex().is_match(&t),
            "pattern {:?}, event type {:?}", source, t
        );
    }

    #[test]
    fn matches_agrees_with_regex_near_instances(
        generated in pattern(),
        choices in prop::collection::vec(any::<u8>(), 1..16),
        mutation in mutation(),
    ) {
        let source = generated.source();
        let parsed = Pattern::parse(&source).unwrap();
        let instance = generated.instance(&choices);
        prop_assert!(parsed.matches(&instance), "{:?} should match its instance {:?}", source, instance);
        let t = mutate(&instance, &mutation);
        prop_assert_eq!(
            parsed.matches(&t),
            generated.regex().is_match(&t),
            "pattern {:?}, event type {:?}", source, t
        );
    }

    #[test]
    fn subjects_select_the_same_event_types(
        generated in pattern(),
        random_types in prop::collection::vec(event_type(), 1..20),
        choices in prop::collection::vec(any::<u8>(), 1..16),
        mutation in mutation(),
    ) {
        let parsed = Pattern::parse(&generated.source()).unwrap();
        let instance = generated.instance(&choices);
        let mut types = random_types;
        types.push(mutate(&instance, &mutation));
        types.push(instance);
        if let Some(subjects) = filters(&parsed) {
            prop_assert!(!subjects.is_empty());
            prop_assert!(subjects.len() <= 64);
            for t in &types {
                let by_subject = subjects.iter().any(|s| nats_matches(s, t));
                prop_assert_eq!(
                    parsed.matches(t),
                    by_subject,
                    "pattern {:?}, subjects {:?}, event type {:?}", generated.source(), subjects, t
                );
            }
        }
    }

    #[test]
    fn parse_never_panics(s in ".*") {
        match Pattern::parse(&s) {
            Ok(pattern) => {
                prop_assert_eq!(pattern.validate(), Ok(()));
                let _ = pattern.matches(&s);
                let _ = filters(&pattern);
            }
            Err(err) => {
                prop_assert!(err.position <= s.len(), "{err}");
                prop_assert_eq!(&err.pattern, &s);
            }
        }
    }

    #[test]
    fn parse_never_panics_on_pattern_like_strings(s in "[ab*>{},. ]{0,12}") {
        match Pattern::parse(&s) {
            Ok(pattern) => {
                let _ = pattern.matches("a.b");
                let _ = filters(&pattern);
            }
            Err(err) => {
                prop_assert!(err.position <= s.len(), "{err}");
                prop_assert!(s.is_char_boundary(err.position));
            }
        }
    }

    #[test]
    fn wildcard_agrees_with_a_reference_glob(glob in "[ab.*]{1,10}", t in "[ab.]{0,12}") {
        let pattern = wildcard(&glob);
        prop_assert_eq!(pattern.validate(), Ok(()));
        prop_assert_eq!(
            pattern.matches(&t),
            glob_reference(glob.as_bytes(), t.as_bytes()),
            "glob {:?}, text {:?}", glob, t
        );
    }

    #[test]
    fn a_glob_without_star_matches_only_itself(t in event_type(), other in event_type()) {
        let pattern = wildcard(&t);
        prop_assert!(pattern.matches(&t));
        prop_assert_eq!(pattern.matches(&other), t == other);
    }

    #[test]
    fn a_star_matches_any_insertion(
        t in event_type(),
        inserted in "[a-z.]{0,8}",
        at in any::<prop::sample::Index>(),
    ) {
        let i = at.index(t.len() + 1);
        let glob = format!("{}*{}", &t[..i], &t[i..]);
        let text = format!("{}{}{}", &t[..i], inserted, &t[i..]);
        prop_assert!(wildcard(&glob).matches(&text), "{:?} vs {:?}", glob, text);
    }

    #[test]
    fn glob_filters_select_the_same_event_types(
        prefix in event_type(),
        types in prop::collection::vec(event_type(), 1..20),
    ) {
        let pattern = wildcard(&format!("{prefix}.*"));
        let subjects = filters(&pattern);
        if cfg!(feature = "nats") {
            prop_assert!(subjects.is_some());
        }
        if let Some(subjects) = subjects {
            let mut types = types;
            types.push(format!("{prefix}.x"));
            types.push(format!("{prefix}.x.y"));
            for t in &types {
                let by_subject = subjects.iter().any(|s| nats_matches(s, t));
                prop_assert_eq!(pattern.matches(t), by_subject, "{:?}", t);
            }
        }
    }
}

//! Handlers' patterns as NATS subject filters, so that the server does the
//! filtering wherever a pattern can be said in subjects.
//!
//! - a string pattern gives one subject per combination of its alternatives
//!   (`*` and `>` carry over unchanged), or `None` beyond [`MAX_SUBJECTS`];
//! - `any` gives `>`, `domain("x")` gives `x.>`, `exact(t)` gives `t` (or
//!   no subject at all if `t` is not a valid event type: no event has that
//!   type, and NATS would read the text differently);
//! - a `wildcard` glob gives its text when it has no `*`, `x.>` when its only
//!   `*` is a whole last segment (`x.*`: one or more segments, as `>`), and
//!   `None` otherwise;
//! - `one_of`/`or` give the union of their parts' subjects if every part has
//!   some (an empty `one_of` gives none);
//! - functions, `not` and `and` give `None`.
//!
//! `None` means the process subscribes to every broadcast and filters with
//! [`Pattern::matches`]: a handler sees the same events either way.

use crate::pattern::{Compiled, Glob, Pattern, Repr, Segment, check_name};

/// The most subjects one pattern is expanded into.
pub(super) const MAX_SUBJECTS: usize = 64;

/// The subject filters (without prefix) that select exactly the event types
/// `pattern` matches, or `None` if there are none.
pub(crate) fn subject_filters(pattern: &Pattern) -> Option<Vec<String>> {
    match pattern.repr() {
        Repr::Any => Some(vec![">".to_owned()]),
        Repr::Exact(text) => Some(
            check_name(text)
                .is_ok()
                .then(|| text.to_string())
                .into_iter()
                .collect(),
        ),
        Repr::Domain(name) => Some(vec![format!("{name}.>")]),
        Repr::Compiled(compiled) => compiled_filters(compiled),
        Repr::Glob(glob) => glob_filters(glob),
        Repr::Or(parts) => {
            let mut out: Vec<String> = Vec::new();
            for part in parts.iter() {
                for subject in subject_filters(part)? {
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

fn glob_filters(glob: &Glob) -> Option<Vec<String>> {
    let prefix = glob.source.strip_suffix(".*")?;
    (!prefix.contains('*') && check_name(prefix).is_ok()).then(|| vec![format!("{prefix}.>")])
}

fn compiled_filters(compiled: &Compiled) -> Option<Vec<String>> {
    let mut choices: Vec<&[Box<str>]> = Vec::with_capacity(compiled.segments.len());
    let star: &[Box<str>] = &[];
    let mut total: usize = 1;
    for segment in &compiled.segments {
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
    // A subject longer than an event type matches none (each token of a
    // subject matches one at least as long), and the server would refuse it.
    subjects.retain(|subject| subject.len() <= crate::name::MAX_EVENT_TYPE_LEN);
    if compiled.tail {
        let separator = if compiled.segments.is_empty() {
            ""
        } else {
            "."
        };
        for subject in &mut subjects {
            subject.push_str(separator);
            subject.push('>');
        }
    }
    Some(subjects)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pattern::{IntoPattern, domain, exact, not, one_of, wildcard};

    fn subjects(pattern: impl IntoPattern) -> Option<Vec<String>> {
        subject_filters(&pattern.into_pattern())
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
        // An alternative too long for any event type gives no subject (the
        // server would refuse one that long, and close the connection).
        let long = "x".repeat(300);
        assert_eq!(subjects(format!("a.{{b,{long}}}")).unwrap(), ["a.b"]);
        assert_eq!(subjects(domain(&long)), None);
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
        let over = Pattern::parse(&format!("{eight}.{{a,b,c,d,e,f,g,h,i}}")).unwrap();
        assert!(over.matches("h.i"));
        assert!(!over.matches("i.h"));
    }

    #[test]
    fn subjects_of_constructors_and_combinators() {
        assert_eq!(subject_filters(&Pattern::any()).unwrap(), [">"]);
        assert_eq!(subject_filters(&domain("order")).unwrap(), ["order.>"]);
        assert_eq!(
            subject_filters(&one_of(["a.*", "{a,b}.*", "c"])).unwrap(),
            ["a.*", "b.*", "c"]
        );
        assert_eq!(
            subject_filters(&exact("x").or(domain("y"))).unwrap(),
            ["x", "y.>"]
        );
        assert_eq!(
            subject_filters(&one_of(["a", "b"]).or(|_: &str| true)),
            None
        );
        assert_eq!(subject_filters(&Pattern::from_fn(|_| true)), None);
        assert_eq!(subject_filters(&not("a")), None);
        assert_eq!(subject_filters(&exact("a").and("a")), None);
        assert_eq!(subject_filters(&one_of(["a", "b.{"])), None);
    }

    #[test]
    fn globs_become_filters_where_they_can() {
        assert_eq!(
            subject_filters(&wildcard("order.created")).unwrap(),
            ["order.created"]
        );
        assert_eq!(subject_filters(&wildcard("order.*")).unwrap(), ["order.>"]);
        assert_eq!(subject_filters(&wildcard("user.*.completed")), None);
        assert_eq!(subject_filters(&wildcard("order*")), None);
        assert_eq!(subject_filters(&wildcard("a.*.*")), None);
        assert_eq!(subject_filters(&wildcard("*")), None);
    }

    #[test]
    fn unexpressible_patterns_have_no_filters() {
        let large = "{a,b,c,d}{a,b,c,d}{a,b,c,d}{a,bb,c,dd}x";
        assert_eq!(subject_filters(&Pattern::parse(large).unwrap()), None);
        for name in ["", "a b", "order.*", "a..b", "x."] {
            assert_eq!(subject_filters(&domain(name)), None, "{name:?}");
        }
        // No event has a type that is no valid event type: no subject (not
        // every broadcast, filtered here), however long the text.
        assert_eq!(subject_filters(&exact("a.*")), Some(Vec::new()));
        let long = "x".repeat(crate::name::MAX_EVENT_TYPE_LEN + 1);
        assert_eq!(subject_filters(&exact(&long)), Some(Vec::new()));
        assert_eq!(subject_filters(&"ord*".into_pattern()), None);
        assert_eq!(
            subject_filters(&one_of(Vec::<Pattern>::new())),
            Some(Vec::new())
        );
    }
}

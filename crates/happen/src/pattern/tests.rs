//! Unit tests of parsing and matching.

use super::matcher::Segment;
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
fn a_pattern_no_event_type_is_long_enough_for_is_an_error() {
    let max = crate::name::MAX_EVENT_TYPE_LEN;
    // The longest literal an event type can be, and one byte more.
    let at_most = format!("a.{}", "b".repeat(max - 2));
    check(&at_most, &[&at_most], &["a.b"]);
    let over = format!("{at_most}b");
    let e = err(&over);
    assert_eq!(e.position, 0);
    assert!(e.reason.contains("matches no event type"), "{e}");
    assert!(e.reason.contains(&format!("{}", max + 1)), "{e}");
    // Wildcards count as their shortest match: `*` one byte, `>` a dot and
    // one byte; an alternation its shortest alternative.
    let long = "x".repeat(max - 2);
    check(&format!("{long}.*"), &[&format!("{long}.y")], &[]);
    err(&format!("{long}.*.*"));
    check(&format!("{long}.>"), &[&format!("{long}.y")], &[]);
    err(&format!("{long}x.>"));
    check(&format!("{{a,{}}}", "y".repeat(5_000)), &["a"], &["y"]);
    // A node's handler takes none of them, on any runtime.
    let happen = crate::Happen::embedded();
    let node = happen.node("n").unwrap();
    let refused = node.on(
        over.as_str(),
        |_e: crate::Event, _cx: crate::Context| async {},
    );
    assert!(
        matches!(refused, Err(crate::HappenError::InvalidPattern(_))),
        "{refused:?}"
    );
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
    let long = "d".repeat(crate::name::MAX_EVENT_TYPE_LEN + 1);
    for (name, position) in [
        ("", 0),
        ("a b", 1),
        ("order.*", 6),
        ("a..b", 2),
        ("x.", 2),
        (long.as_str(), crate::name::MAX_EVENT_TYPE_LEN),
    ] {
        let d = domain(name);
        assert!(!d.matches("a.b"));
        let e = d.validate().unwrap_err();
        assert_eq!(e.position, position, "{name:?}: {e}");
        assert_eq!(e.pattern, name);
    }
}

#[test]
fn exact_is_literal() {
    let e = exact("a.*");
    assert!(e.matches("a.*"));
    assert!(!e.matches("a.b"));
    assert_eq!(e.validate(), Ok(()));
}

#[test]
fn wildcard_is_a_glob_over_the_whole_type() {
    let w = wildcard("ord*");
    assert!(w.matches("ord"));
    assert!(w.matches("order.created.v2"));
    assert!(!w.matches("xorder"));
    assert_eq!(w.validate(), Ok(()));
    let mid = wildcard("user.*.completed");
    for t in ["user.a.completed", "user.a.b.completed", "user..completed"] {
        assert!(mid.matches(t), "{t}");
    }
    for t in ["user.completed", "user.a.completedx", "xuser.a.completed"] {
        assert!(!mid.matches(t), "{t}");
    }
    assert!(wildcard("*").matches("anything.at.all"));
    assert!(wildcard("a*b*c").matches("aXbYc"));
    assert!(!wildcard("a*b*c").matches("aXcYb"));
    assert!(!wildcard("ab*ba").matches("aba"));
    // No alternation or tail in a glob: those characters are literal.
    assert!(!wildcard("{a,b}.x").matches("a.x"));
    assert!(wildcard("{a,b}.x").matches("{a,b}.x"));
    // Without '*' it is an exact comparison.
    assert!(matches!(wildcard("order.created").repr, Repr::Exact(_)));
    // What no event type can contain is an error, deferred to validate.
    for (bad, position) in [("", 0), ("a b*", 1), ("*\u{1}", 1)] {
        let w = wildcard(bad);
        assert!(!w.matches(bad));
        assert_eq!(w.validate().unwrap_err().position, position, "{bad:?}");
    }
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

#[test]
fn debug_output() {
    assert_eq!(format!("{:?}", Pattern::any()), "any()");
    assert_eq!(format!("{:?}", p("a.b")), "exact(\"a.b\")");
    assert_eq!(format!("{:?}", p("a.*")), "pattern(\"a.*\")");
    assert_eq!(format!("{:?}", domain("d")), "domain(\"d\")");
    assert_eq!(format!("{:?}", wildcard("a*")), "wildcard(\"a*\")");
    assert_eq!(format!("{:?}", "a*".into_pattern()), "invalid(\"a*\")");
    assert_eq!(
        format!("{:?}", not(exact("a").or(|_: &str| true)).and("b.>")),
        "and(not(one_of(exact(\"a\"), <fn>)), pattern(\"b.>\"))"
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

#[test]
fn matching_raw_bytes_agrees_with_matching_text() {
    let patterns = [
        p("order.created"),
        p("order.*"),
        p("order.{created,paid}"),
        Pattern::any(),
        exact("order.created").or("user.*"),
    ];
    for pattern in &patterns {
        for event_type in [
            "order.created",
            "order.paid",
            "order.created.x",
            "user.new",
            "ord",
        ] {
            assert_eq!(
                pattern.matches_raw(event_type.as_bytes(), || event_type),
                pattern.matches(event_type),
                "{pattern:?} on {event_type}"
            );
        }
    }
}

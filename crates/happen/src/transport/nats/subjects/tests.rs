//! Tests of subject building and of the broadcast filters.

use super::*;

#[test]
fn kept_subjects_are_the_ones_made_and_stay_bounded() {
    let made = Made::new("app");
    let first = made.direct("orders");
    assert_eq!(first.as_str(), direct_subject("app", "orders"));
    // The same bytes again, not a subject made afresh.
    let again = made.direct("orders");
    assert_eq!(again.as_ptr(), first.as_ptr());
    assert_eq!(made.broadcast("orders").as_str(), "app.bcast.orders");
    assert_eq!(made.direct("billing").as_str(), "app.node.billing");
    for i in 0..MADE_LIMIT + 10 {
        let node = format!("n{i}");
        assert_eq!(made.direct(&node).as_str(), direct_subject("app", &node));
    }
    let kept = made.direct.read().unwrap().len();
    assert!(kept <= MADE_LIMIT, "{kept} direct subjects kept");
}

#[test]
fn nats_subject_semantics() {
    assert!(subject_matches("a.b", "a.b"));
    assert!(!subject_matches("a.b", "a.b.c"));
    assert!(subject_matches("a.*", "a.b"));
    assert!(!subject_matches("a.*", "a.b.c"));
    assert!(subject_matches("a.>", "a.b.c"));
    assert!(!subject_matches("a.>", "a"));
    assert!(subject_matches(">", "x"));
    assert!(!subject_matches("a.b.c", "a.b"));
}

/// The subjects other processes subscribe to, made in one allocation.
#[test]
fn subjects_are_the_prefix_a_kind_and_a_name() {
    for (subject, expected) in [
        (direct_subject("happen", "orders"), "happen.node.orders"),
        (
            broadcast_subject("app.x", "order.created"),
            "app.x.bcast.order.created",
        ),
        (identity_subject("happen", "pay"), "happen.identity.pay"),
    ] {
        assert_eq!(subject, expected);
        assert_eq!(subject.capacity(), subject.len());
    }
}

#[test]
fn filters_are_counted_and_released_with_their_last_holder() {
    let filters = Filters::default();
    let mut next = 0;
    let mut id = || {
        next += 1;
        next
    };
    let a = vec!["h.bcast.order.*".to_owned()];
    let ab = vec!["h.bcast.order.*".to_owned(), "h.bcast.pay.>".to_owned()];
    assert_eq!(filters.hold(&a, &mut id).subscribe, vec![(1, a[0].clone())]);
    assert_eq!(
        filters.hold(&ab, &mut id).subscribe,
        vec![(2, ab[1].clone())]
    );
    assert_eq!(filters.active().len(), 2);
    assert_eq!(filters.release(&a), Changes::default(), "still held");
    assert_eq!(filters.release(&ab).release, vec![1, 2]);
    assert!(filters.active().is_empty());
}

#[test]
fn overlapping_filters_take_each_event_once() {
    let filters = Filters::default();
    let mut next = 0;
    let mut id = || {
        next += 1;
        next
    };
    filters.hold(&["h.bcast.order.*".to_owned()], &mut id);
    let e1 = Id::from("e1");
    // One filter: no bookkeeping, every copy is taken.
    assert!(filters.take("h.bcast.order.created", &e1));
    assert!(filters.take("h.bcast.order.created", &e1));
    filters.hold(&["h.bcast.order.created".to_owned()], &mut id);
    let e2 = Id::from("e2");
    assert!(filters.take("h.bcast.order.created", &e2));
    assert!(!filters.take("h.bcast.order.created", &e2), "second copy");
    assert!(
        filters.take("h.bcast.order.paid", &e2),
        "one filter matches"
    );
    // Released, but its copies may still arrive: still de-duplicated.
    filters.release(&["h.bcast.order.created".to_owned()]);
    let e3 = Id::from("e3");
    assert!(filters.take("h.bcast.order.created", &e3));
    assert!(!filters.take("h.bcast.order.created", &e3));
    // Filters that share no subject never count copies.
    let apart = Filters::default();
    apart.hold(
        &["h.bcast.order.*".to_owned(), "h.bcast.user.>".to_owned()],
        &mut id,
    );
    assert!(!apart.table().overlap);
    assert!(apart.take("h.bcast.user.a.b", &e3));
    assert!(apart.table().recent.is_empty(), "no id kept");
    apart.hold(&["h.bcast.*.created".to_owned()], &mut id);
    assert!(apart.table().overlap, "order.created matches two");
    // A filter held and released again and again is kept once in its
    // grace, however often.
    for _ in 0..100 {
        apart.hold(&["h.bcast.churn".to_owned()], &mut id);
        apart.release(&["h.bcast.churn".to_owned()]);
    }
    assert_eq!(apart.table().released.len(), 1);
    apart.release_all();
    let table = apart.table();
    let mut subjects: Vec<&str> = table.released.iter().map(|(s, _)| s.as_str()).collect();
    let all = subjects.len();
    subjects.sort_unstable();
    subjects.dedup();
    assert_eq!(subjects.len(), all, "each released subject once");
}

#[test]
fn filters_overlap_when_a_subject_matches_both() {
    // Every filter of up to three tokens over `a`, `b`, `*`, `>`
    // (`>` last only), against every subject of up to four tokens
    // over `a`, `b`, `c`.
    fn all(tokens: &[&str], most: usize, last_gt: bool) -> Vec<String> {
        let mut out: Vec<Vec<&str>> = vec![vec![]];
        let mut found = Vec::new();
        for _ in 0..most {
            out = out
                .iter()
                .flat_map(|p| tokens.iter().map(move |t| [p.clone(), vec![*t]].concat()))
                .filter(|p| !p[..p.len() - 1].contains(&">"))
                .collect();
            found.extend(out.iter().map(|p| p.join(".")));
        }
        if !last_gt {
            found.retain(|f| !f.contains('>'));
        }
        found
    }
    let filters = all(&["a", "b", "*", ">"], 3, true);
    let subjects = all(&["a", "b", "c"], 4, false);
    for f in &filters {
        for g in &filters {
            let both = subjects
                .iter()
                .any(|s| subject_matches(f, s) && subject_matches(g, s));
            assert_eq!(filters_overlap(f, g), both, "{f} and {g}");
        }
    }
}

/// The overlapping pairs kept as filters come and go are the pairs
/// counted one by one, through 3,000 holds, releases and ends of grace
/// chosen by a fixed pseudo-random sequence over filters that overlap
/// in many ways (wildcards, prefixes, the same subject).
#[test]
fn overlapping_pairs_are_kept_as_counted_one_by_one() {
    let pool = [
        "h.bcast.order.*",
        "h.bcast.order.created",
        "h.bcast.*.created",
        "h.bcast.>",
        "h.bcast.user.>",
        "h.bcast.user.a",
        "h.bcast.audit",
        "h.bcast.order.paid",
    ];
    let filters = Filters::default();
    let mut next = 0;
    let mut state = 0x9e37_79b9_u64;
    for step in 0..3_000 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let subject = vec![pool[(state % pool.len() as u64) as usize].to_owned()];
        match (state >> 8) % 5 {
            0 | 1 => {
                filters.hold(&subject, || {
                    next += 1;
                    next
                });
            }
            2 | 3 => {
                filters.release(&subject);
            }
            _ => {
                // Some grace ends.
                let later = Instant::now() + OVERLAP_GRACE * 2;
                let mut table = filters.table();
                let n = table.released.len() / 2;
                table.forget_released(|(s, _)| pool[..n].contains(&s.as_str()));
                table.refresh(later);
            }
        }
        let table = filters.table();
        assert_eq!(table.pairs, table.count_pairs(), "step {step}");
        assert_eq!(table.overlap, table.pairs > 0, "step {step}");
    }
    filters.release_all();
    let table = filters.table();
    assert_eq!(table.pairs, table.count_pairs());
}

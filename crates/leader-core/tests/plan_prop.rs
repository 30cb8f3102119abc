//! Property tests of the planner against slower, simply written references.
//!
//! - Small inputs (≤ 5 members, ≤ 12 items; 10,000 cases): the fewest moves is found by brute
//!   force over every balanced count vector, where "balanced" is checked from its definition
//!   (`|cᵢ·W − n·wᵢ| < W`, counts summing to `n`), not with the planner's quotas.
//! - Tiny inputs (≤ 3 members, ≤ 6 items): brute force over every assignment at all, which
//!   also checks that the count-vector reasoning above is right.
//! - Large inputs (up to 60 members, 3,000 items): a direct formula, written here again.
//!
//! Every case also checks the invariants: every item assigned exactly once, only to members of
//! positive weight, balanced, `moved`/`placed` as defined, the diff turns the current assignment
//! into the new one, deterministic (fresh inputs built in another insertion order), idempotent.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use leader_core::{min_moves, plan, quotas, Assignment, MemberId, Plan};
use proptest::prelude::*;
use worker_core::WorkId;

#[derive(Debug, Clone)]
struct Case {
    items: BTreeSet<WorkId>,
    members: BTreeMap<MemberId, u32>,
    current: Assignment,
}

/// Weights: mostly 1, some 0 (draining), 2 and 3.
fn weight() -> impl Strategy<Value = u32> {
    prop_oneof![4 => Just(1u32), 1 => Just(0u32), 2 => 2u32..=3]
}

/// Members `m0..m{max_members}` each present or not; items from a pool of `pool` ids, at most
/// `max_items` of them; current owners drawn from those members and two dead ones (`d0`, `d1`),
/// also for items no longer in the input.
fn case(max_members: usize, pool: usize, max_items: usize) -> impl Strategy<Value = Case> {
    let members = prop::collection::vec(prop::option::weighted(0.8, weight()), max_members);
    let items = prop::collection::vec(any::<bool>(), pool);
    let owners = prop::collection::vec(prop::option::weighted(0.7, 0..max_members + 2), pool);
    (members, items, owners).prop_map(move |(members, items, owners)| {
        let members: BTreeMap<MemberId, u32> = members
            .iter()
            .enumerate()
            .filter_map(|(i, w)| w.map(|w| (Arc::from(format!("m{i}")), w)))
            .collect();
        let items: BTreeSet<WorkId> = items
            .iter()
            .enumerate()
            .filter(|&(_, &on)| on)
            .map(|(i, _)| Arc::from(format!("w{i:04}")))
            .take(max_items)
            .collect();
        let current: Assignment = owners
            .iter()
            .enumerate()
            .filter_map(|(i, o)| {
                o.map(|o| {
                    let owner = if o < max_members {
                        format!("m{o}")
                    } else {
                        format!("d{}", o - max_members)
                    };
                    (Arc::from(format!("w{i:04}")), Arc::from(owner))
                })
            })
            .collect();
        Case {
            items,
            members,
            current,
        }
    })
}

fn total(members: &BTreeMap<MemberId, u32>) -> u128 {
    members.values().map(|&w| u128::from(w)).sum()
}

/// Balanced by definition: `|c·W − n·w| < W` for every member, counts summing to `n`.
fn is_balanced_count(c: usize, n: usize, w: u32, total: u128) -> bool {
    let lhs = c as u128 * total;
    let rhs = n as u128 * u128::from(w);
    lhs.abs_diff(rhs) < total
}

/// Items of the input each live member owns now (weight 0 included).
fn live_owned(c: &Case) -> BTreeMap<MemberId, usize> {
    let mut k: BTreeMap<MemberId, usize> = c.members.keys().map(|m| (m.clone(), 0)).collect();
    for item in &c.items {
        if let Some(owner) = c.current.get(item) {
            if let Some(n) = k.get_mut(owner) {
                *n += 1;
            }
        }
    }
    k
}

/// Brute force over every balanced count vector: the fewest moves.
fn reference_by_counts(c: &Case) -> usize {
    let n = c.items.len();
    let w_total = total(&c.members);
    let k = live_owned(c);
    let live: usize = k.values().sum();
    if w_total == 0 {
        return live;
    }
    // Each member's balanced counts, by definition; then every combination of them.
    let choices: Vec<(&MemberId, Vec<usize>)> = c
        .members
        .iter()
        .map(|(m, &w)| {
            let ok = (0..=n).filter(|&x| is_balanced_count(x, n, w, w_total));
            (m, ok.collect())
        })
        .collect();
    let mut best_stays: Option<usize> = None;
    let mut pick = vec![0usize; choices.len()];
    'all: loop {
        let counts: Vec<usize> = pick.iter().zip(&choices).map(|(&p, (_, v))| v[p]).collect();
        if counts.iter().sum::<usize>() == n {
            let stays: usize = choices
                .iter()
                .zip(&counts)
                .map(|((m, _), &x)| k[*m].min(x))
                .sum();
            best_stays = Some(best_stays.map_or(stays, |b| b.max(stays)));
        }
        // Next combination (odometer).
        for (p, (_, v)) in pick.iter_mut().zip(&choices) {
            *p += 1;
            if *p < v.len() {
                continue 'all;
            }
            *p = 0;
        }
        break;
    }
    live - best_stays.expect("a balanced count vector always exists")
}

/// Moves of an assignment `new` from the case's current one, by definition.
fn moves_of(c: &Case, new: &Assignment) -> usize {
    c.items
        .iter()
        .filter(|item| match c.current.get(*item) {
            Some(owner) if c.members.contains_key(owner) => new.get(*item) != Some(owner),
            _ => false,
        })
        .count()
}

fn balanced(c: &Case, a: &Assignment) -> bool {
    let n = c.items.len();
    let w_total = total(&c.members);
    if w_total == 0 {
        return a.is_empty();
    }
    let mut counts: BTreeMap<&MemberId, usize> = c.members.keys().map(|m| (m, 0)).collect();
    for owner in a.values() {
        match counts.get_mut(owner) {
            Some(x) => *x += 1,
            None => return false,
        }
    }
    a.keys().eq(c.items.iter())
        && counts
            .iter()
            .all(|(m, &k)| is_balanced_count(k, n, c.members[*m], w_total))
}

/// Brute force over every assignment of the items to members at all.
fn reference_by_assignments(c: &Case) -> usize {
    if total(&c.members) == 0 {
        return live_owned(c).values().sum();
    }
    let items: Vec<&WorkId> = c.items.iter().collect();
    let ms: Vec<&MemberId> = c.members.keys().collect();
    let mut best = None;
    let combos = ms.len().pow(items.len() as u32);
    for mut code in 0..combos {
        let mut a = Assignment::new();
        for item in &items {
            a.insert((*item).clone(), ms[code % ms.len()].clone());
            code /= ms.len();
        }
        if balanced(c, &a) {
            let m = moves_of(c, &a);
            best = Some(best.map_or(m, |b: usize| b.min(m)));
        }
    }
    best.expect("a balanced assignment always exists")
}

/// The direct formula for large inputs, written out again here: with `k` owned, floor `f` and a
/// fractional quota, a member keeps `min(k, f)`, plus one more when it holds more than `f` and
/// gets one of the `n − Σf` ceil slots.
fn reference_formula(c: &Case) -> usize {
    let n = c.items.len();
    let w_total = total(&c.members);
    let k = live_owned(c);
    let live: usize = k.values().sum();
    if w_total == 0 {
        return live;
    }
    let mut stays = 0;
    let mut slots = n;
    let mut wanting = 0;
    for (m, &w) in &c.members {
        let exact = n as u128 * u128::from(w);
        let f = (exact / w_total) as usize;
        slots -= f;
        stays += k[m].min(f);
        if !exact.is_multiple_of(w_total) && k[m] > f {
            wanting += 1;
        }
    }
    live - stays - wanting.min(slots)
}

/// Fresh `Arc`s, inserted in reverse order.
fn rebuilt(c: &Case) -> Case {
    let mut items = BTreeSet::new();
    for i in c.items.iter().rev() {
        items.insert(Arc::from(i.to_string()));
    }
    let mut members = BTreeMap::new();
    for (m, &w) in c.members.iter().rev() {
        members.insert(Arc::from(m.to_string()), w);
    }
    let mut current = Assignment::new();
    for (i, m) in c.current.iter().rev() {
        current.insert(Arc::from(i.to_string()), Arc::from(m.to_string()));
    }
    Case {
        items,
        members,
        current,
    }
}

/// Every invariant but optimality; returns the plan.
fn check(c: &Case) -> Result<Plan, TestCaseError> {
    let p = plan(&c.items, &c.members, &c.current);
    let w_total = total(&c.members);

    // Every item exactly once (a map holds one owner per item), on a member of weight > 0,
    // balanced.
    prop_assert!(
        balanced(c, &p.assignment),
        "not balanced: {:?}",
        p.assignment
    );
    if w_total > 0 {
        prop_assert!(p.assignment.values().all(|m| c.members[m] > 0));
    }
    // The planner's own quotas agree with the definition.
    for (m, (f, ceil)) in quotas(c.items.len(), &c.members) {
        let w = c.members[&m];
        prop_assert!(ceil == f || ceil == f + 1);
        if w_total > 0 {
            prop_assert!(is_balanced_count(f, c.items.len(), w, w_total));
            prop_assert!(is_balanced_count(ceil, c.items.len(), w, w_total));
        }
    }

    // moved / placed as defined.
    prop_assert_eq!(p.moved, moves_of(c, &p.assignment));
    let placed = p
        .assignment
        .keys()
        .filter(|item| {
            c.current
                .get(*item)
                .is_none_or(|o| !c.members.contains_key(o))
        })
        .count();
    prop_assert_eq!(p.placed, placed);

    // The diff, applied to the current assignment, gives the new one.
    prop_assert!(p.revoked.windows(2).all(|w| w[0] < w[1]));
    prop_assert!(p.assigned.windows(2).all(|w| w[0] < w[1]));
    let mut applied = c.current.clone();
    for (item, old) in &p.revoked {
        let removed = applied.remove(item);
        prop_assert_eq!(removed.as_ref(), Some(old));
    }
    for (item, new) in &p.assigned {
        prop_assert!(applied.insert(item.clone(), new.clone()).is_none());
    }
    prop_assert_eq!(&applied, &p.assignment);
    // ...and touches nothing that stays.
    for (item, owner) in &p.assignment {
        let unchanged = c.current.get(item) == Some(owner);
        prop_assert_eq!(unchanged, !p.assigned.iter().any(|(i, _)| i == item));
    }

    // Deterministic: same inputs, and the same inputs rebuilt another way.
    prop_assert_eq!(&plan(&c.items, &c.members, &c.current), &p);
    let r = rebuilt(c);
    prop_assert_eq!(&plan(&r.items, &r.members, &r.current), &p);

    // Idempotent.
    let again = plan(&c.items, &c.members, &p.assignment);
    prop_assert_eq!(&again.assignment, &p.assignment);
    prop_assert_eq!((again.moved, again.placed), (0, 0));
    prop_assert!(again.revoked.is_empty() && again.assigned.is_empty());
    Ok(p)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(10_000))]

    /// The main property: invariants, and moves equal to the brute-force minimum.
    #[test]
    fn small_plans_are_balanced_and_move_the_fewest(c in case(5, 16, 12)) {
        let p = check(&c)?;
        let reference = reference_by_counts(&c);
        prop_assert_eq!(p.moved, reference);
        prop_assert_eq!(min_moves(&c.items, &c.members, &c.current), reference);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1_000))]

    /// Brute force over all assignments agrees with the count-vector brute force and the planner.
    #[test]
    fn tiny_plans_match_brute_force_over_all_assignments(c in case(3, 8, 6)) {
        let p = check(&c)?;
        let reference = reference_by_assignments(&c);
        prop_assert_eq!(reference, reference_by_counts(&c));
        prop_assert_eq!(p.moved, reference);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(100))]

    /// Large inputs: invariants, and moves equal to the direct formula.
    #[test]
    fn large_plans_move_the_formula_minimum(c in case(60, 3_000, 3_000)) {
        let p = check(&c)?;
        let reference = reference_formula(&c);
        prop_assert_eq!(p.moved, reference);
        prop_assert_eq!(min_moves(&c.items, &c.members, &c.current), reference);
    }
}

/// A joining member takes exactly its share, only from members above quota; a dying member's
/// items are the only ones that move; repeated over a sequence of membership changes.
#[test]
fn churn_sequence_moves_only_what_it_must() {
    let items: BTreeSet<WorkId> = (0..1_000).map(|i| Arc::from(format!("w{i:04}"))).collect();
    let mut members: BTreeMap<MemberId, u32> = BTreeMap::new();
    let mut current = Assignment::new();
    for step in 0..40u32 {
        let id: MemberId = Arc::from(format!("m{}", step % 13));
        let joining = !members.contains_key(&id);
        let before_counts = {
            let mut k: BTreeMap<MemberId, usize> = BTreeMap::new();
            for m in current.values() {
                *k.entry(m.clone()).or_default() += 1;
            }
            k
        };
        if joining {
            members.insert(id.clone(), 1 + step % 3);
        } else {
            members.remove(&id);
        }
        let p = plan(&items, &members, &current);
        if joining {
            // Nothing is placed; everything the joiner gets comes from members above quota.
            if before_counts.is_empty() {
                assert_eq!(p.placed, items.len());
            } else {
                assert_eq!(p.placed, 0);
                assert!(p.assigned.iter().all(|(_, m)| *m == id), "step {step}");
                let q = quotas(items.len(), &members);
                for (_, from) in &p.revoked {
                    assert!(
                        before_counts[from] > q[from].0,
                        "step {step}: {from} shed below floor"
                    );
                }
            }
        } else {
            // Only the dead member's items move; survivors keep everything.
            assert_eq!(p.moved, 0, "step {step}");
            assert!(p.revoked.iter().all(|(_, m)| *m == id), "step {step}");
        }
        assert_eq!(p.moved, min_moves(&items, &members, &current));
        current = p.assignment;
    }
}

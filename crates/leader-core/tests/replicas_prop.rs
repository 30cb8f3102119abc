//! Property tests of the replica planner against brute force on small inputs.
//!
//! Cases: ≤ 5 items (wanted replicas 1–3), ≤ 4 members (weights mostly 1, some 0 and 2) in ≤ 3
//! zones (`a`, `b` and the no-zone zone), current states with primaries and secondaries drawn from
//! live, draining and gone members, also for items no longer present.
//!
//! Two brute forces, both written from the definitions (not with the planner's helpers):
//!
//! - **Full**: every valid plan (distinct members, `min(N, M)` replicas, the zone rule, both
//!   balance rules checked as `|c·W − n·w| < W`), and its lexicographic minimum of (cold
//!   primaries, primaries changed, secondaries moved).
//! - **Primaries only**: every primary choice meeting the primary balance, and its minimum of
//!   (cold primaries, primaries changed).
//!
//! What is asserted (the planner's guarantee):
//!
//! - always: the hard constraints (replica count, distinct members of positive weight, the zone
//!   cap, computed here by brute force as the least possible maximum per zone), the primary
//!   balance, counts as defined, the key diff, determinism;
//! - **exact secondaries for the planner's primaries** (a third brute force, over every placement
//!   of the secondaries with the primaries fixed to the planner's): whenever one of them is
//!   balanced, the planner's totals are balanced and its secondaries moved is the least among
//!   the balanced ones — in every case;
//! - **the full lexicographic minimum**: whenever a valid plan exists, the planner's totals are
//!   balanced and its (cold, changed, moved) is the full brute-force minimum — in every case
//!   (these inputs are within the exact search's bounds, `M^n ≤ 4,096` and `n·M ≤ 32`);
//! - the primaries-only minimum is never above the full one (a sanity check of the brute forces);
//! - idempotence whenever the totals are balanced.

#![allow(clippy::many_single_char_names, clippy::items_after_statements)] // brute-force notation

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use leader_core::conformance::replica_truth::{
    add, balanced_count, cost_of, facts, full_minimum, max_per_zone, subsets, Facts,
};
use leader_core::{
    plan, plan_replicas, Assignment, MemberId, ReplicaAssignment, ReplicaMember, ReplicaPlan,
    Replicas, Role,
};
use proptest::prelude::*;
use worker_core::WorkId;

#[derive(Debug, Clone)]
struct Case {
    items: BTreeMap<WorkId, u32>,
    members: BTreeMap<MemberId, ReplicaMember>,
    current: ReplicaAssignment,
}

const MAX_MEMBERS: usize = 4;
const POOL: usize = 6;

fn weight() -> impl Strategy<Value = u32> {
    prop_oneof![6 => Just(1u32), 1 => Just(0u32), 1 => Just(2u32)]
}

fn zone() -> impl Strategy<Value = Option<&'static str>> {
    prop_oneof![Just(None), Just(Some("a")), Just(Some("b"))]
}

/// An owner: members `m0..m3` or the gone `d0`.
fn owner_name(o: usize) -> MemberId {
    if o < MAX_MEMBERS {
        Arc::from(format!("m{o}"))
    } else {
        Arc::from("d0")
    }
}

fn case(zones: bool) -> impl Strategy<Value = Case> {
    let members = prop::collection::vec(
        prop::option::weighted(0.85, (weight(), zone())),
        MAX_MEMBERS,
    );
    let items = prop::collection::vec(prop::option::weighted(0.75, 1u32..=3), POOL);
    let cur = prop::collection::vec(
        (
            prop::option::weighted(0.7, 0..=MAX_MEMBERS),
            prop::collection::vec(0..=MAX_MEMBERS, 0..3),
        ),
        POOL,
    );
    (members, items, cur).prop_map(move |(members, items, cur)| {
        let members = members
            .iter()
            .enumerate()
            .filter_map(|(i, m)| {
                m.map(|(w, z)| {
                    let z = if zones { z } else { None };
                    (owner_name(i), ReplicaMember::new(w, z))
                })
            })
            .collect();
        let items = items
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.map(|n| (Arc::from(format!("w{i}")), n)))
            .take(5)
            .collect();
        let current = cur
            .iter()
            .enumerate()
            .filter(|(_, (p, s))| p.is_some() || !s.is_empty())
            .map(|(i, (p, s))| {
                let r = Replicas {
                    primary: p.map(owner_name),
                    secondaries: s.iter().map(|&o| owner_name(o)).collect(),
                };
                (Arc::from(format!("w{i}")), r)
            })
            .collect();
        Case {
            items,
            members,
            current,
        }
    })
}

/// Brute force over every primary choice meeting the primary balance: the least (cold, changed).
fn primary_minimum(f: &Facts) -> (usize, usize) {
    let m = f.elig.len();
    let n = f.items.len();
    let mut best = (usize::MAX, usize::MAX);
    let combos = m.pow(n as u32);
    for mut code in 0..combos {
        let mut pc = vec![0; m];
        let mut cost = (0, 0);
        for x in 0..n {
            let p = code % m;
            code /= m;
            pc[p] += 1;
            let c = cost_of(f, x, p, &[]);
            cost = (cost.0 + c.0, cost.1 + c.1);
        }
        if (0..m).all(|i| balanced_count(pc[i], n, f.w[i], f.total_w)) {
            best = best.min(cost);
        }
    }
    best
}

/// Brute force over the secondaries only, the primaries fixed to `prim` (member indexes):
/// every placement of `r − 1` secondaries per item on distinct members other than the primary
/// within the zone cap. Returns the least secondaries moved over the placements whose totals
/// are balanced, or `None` if none is.
fn secondaries_minimum(f: &Facts, prim: &[usize]) -> Option<usize> {
    let m = f.elig.len();
    let big_r: usize = f.items.iter().map(|i| i.1).sum();
    let mut options: Vec<Vec<(Vec<usize>, usize)>> = Vec::new();
    for (x, (_, r)) in f.items.iter().enumerate() {
        let p = prim[x];
        let others: Vec<usize> = (0..m).filter(|&o| o != p).collect();
        let mut opts = Vec::new();
        for s in subsets(others.len(), r - 1) {
            let secs: Vec<usize> = s.iter().map(|&i| others[i]).collect();
            let mut set = secs.clone();
            set.push(p);
            if max_per_zone(&f.zone, &set) <= f.cap[x] {
                let moved = cost_of(f, x, p, &secs).2;
                opts.push((secs, moved));
            }
        }
        opts.sort_by_key(|o| o.1);
        options.push(opts);
    }
    let mut tc = vec![0; m];
    for &p in prim {
        tc[p] += 1;
    }
    let tmax: Vec<usize> = (0..m)
        .map(|i| {
            (0..=big_r)
                .filter(|&c| balanced_count(c, big_r, f.w[i], f.total_w))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut best = None;
    fn dfs(
        f: &Facts,
        options: &[Vec<(Vec<usize>, usize)>],
        x: usize,
        moved: usize,
        tc: &mut Vec<usize>,
        tmax: &[usize],
        best: &mut Option<usize>,
    ) {
        if best.is_some_and(|b| moved >= b) {
            return;
        }
        if x == options.len() {
            let big_r: usize = f.items.iter().map(|i| i.1).sum();
            if (0..f.elig.len()).all(|i| balanced_count(tc[i], big_r, f.w[i], f.total_w)) {
                *best = Some(moved);
            }
            return;
        }
        for (secs, c) in &options[x] {
            if secs.iter().any(|&s| tc[s] + 1 > tmax[s]) {
                continue;
            }
            for &s in secs {
                tc[s] += 1;
            }
            dfs(f, options, x + 1, moved + c, tc, tmax, best);
            for &s in secs {
                tc[s] -= 1;
            }
        }
    }
    dfs(f, &options, 0, 0, &mut tc, &tmax, &mut best);
    best
}

/// The planner's primaries as member indexes.
fn primaries_of(f: &Facts, p: &ReplicaPlan) -> Vec<usize> {
    f.items
        .iter()
        .map(|(w, _)| {
            let prim = p.state[w].primary.as_ref().expect("a primary");
            f.elig.iter().position(|e| e == prim).expect("eligible")
        })
        .collect()
}

/// Keys of a state: (item, member, role).
fn keys(s: &ReplicaAssignment) -> BTreeSet<(WorkId, MemberId, Role)> {
    let mut k = BTreeSet::new();
    for (w, r) in s {
        if let Some(p) = &r.primary {
            k.insert((w.clone(), p.clone(), Role::Primary));
        }
        for m in &r.secondaries {
            if r.primary.as_ref() != Some(m) {
                k.insert((w.clone(), m.clone(), Role::Secondary));
            }
        }
    }
    k
}

/// Whether the plan's totals are balanced.
fn totals_balanced(f: &Facts, p: &ReplicaPlan) -> bool {
    let big_r: usize = f.items.iter().map(|i| i.1).sum();
    f.elig.iter().enumerate().all(|(i, m)| {
        let t = p
            .state
            .values()
            .filter(|r| r.primary.as_ref() == Some(m) || r.secondaries.contains(m))
            .count();
        balanced_count(t, big_r, f.w[i], f.total_w)
    })
}

/// The hard constraints, the primary balance, the counts and the diff.
fn check_valid(c: &Case, f: &Facts, p: &ReplicaPlan) -> Result<(), TestCaseError> {
    let n = f.items.len();
    if f.elig.is_empty() {
        prop_assert!(p.state.is_empty());
        prop_assert!(p.assigned.is_empty());
        prop_assert_eq!(p.revoked.len(), keys(&c.current).len());
        return Ok(());
    }
    prop_assert!(p.state.keys().eq(f.items.iter().map(|i| &i.0)));
    let mut cost = (0, 0, 0);
    let mut promotions = 0;
    let mut placed = 0;
    for (x, (w, r)) in f.items.iter().enumerate() {
        let reps = &p.state[w];
        let prim = reps.primary.as_ref().expect("a primary");
        let pi = f.elig.iter().position(|e| e == prim).expect("eligible");
        let mut set = vec![pi];
        prop_assert!(reps.secondaries.windows(2).all(|w| w[0] < w[1]));
        let mut secs = Vec::new();
        for s in &reps.secondaries {
            let si = f.elig.iter().position(|e| e == s).expect("eligible");
            prop_assert!(!set.contains(&si), "distinct members");
            set.push(si);
            secs.push(si);
        }
        prop_assert_eq!(set.len(), *r);
        prop_assert!(max_per_zone(&f.zone, &set) <= f.cap[x], "zone cap of {}", w);
        if f.live[x].is_empty() {
            placed += r;
        } else if f.live[x].contains(&pi) && c.current[w].primary.as_ref() != Some(prim) {
            promotions += 1;
        }
        cost = add(cost, cost_of(f, x, pi, &secs));
    }
    for (i, m) in f.elig.iter().enumerate() {
        let k = p
            .state
            .values()
            .filter(|r| r.primary.as_ref() == Some(m))
            .count();
        prop_assert!(balanced_count(k, n, f.w[i], f.total_w), "primary balance");
    }
    prop_assert_eq!(
        (p.cold_primaries, p.primaries_changed, p.secondaries_moved),
        cost
    );
    prop_assert_eq!(p.placed, placed);
    prop_assert_eq!(p.promotions, promotions);
    // The diff turns the current keys (of present and absent items) into the new ones, and
    // touches nothing that stays.
    let old = keys(&c.current);
    let new = keys(&p.state);
    let revoked: BTreeSet<_> = p.revoked.iter().cloned().collect();
    let assigned: BTreeSet<_> = p.assigned.iter().cloned().collect();
    prop_assert_eq!(&revoked, &old.difference(&new).cloned().collect());
    prop_assert_eq!(&assigned, &new.difference(&old).cloned().collect());
    prop_assert!(p.revoked.windows(2).all(|w| w[0] < w[1]));
    prop_assert!(p.assigned.windows(2).all(|w| w[0] < w[1]));
    Ok(())
}

/// The same case rebuilt with fresh `Arc`s in reverse insertion order.
fn rebuilt(c: &Case) -> Case {
    let fresh = |s: &Arc<str>| Arc::<str>::from(&**s);
    Case {
        items: c.items.iter().rev().map(|(k, &v)| (fresh(k), v)).collect(),
        members: c
            .members
            .iter()
            .rev()
            .map(|(k, m)| {
                let m = ReplicaMember {
                    weight: m.weight,
                    zone: m.zone.as_ref().map(fresh),
                };
                (fresh(k), m)
            })
            .collect(),
        current: c
            .current
            .iter()
            .rev()
            .map(|(k, r)| {
                let r = Replicas {
                    primary: r.primary.as_ref().map(fresh),
                    secondaries: r.secondaries.iter().map(fresh).collect(),
                };
                (fresh(k), r)
            })
            .collect(),
    }
}

/// What one case showed against the brute forces.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    cases: usize,
    feasible: usize,
    primaries_only: usize,
}

/// Checks one case: every guarantee is asserted; the cases with a valid plan, and those whose
/// (cold, changed) is the primaries-only minimum, are tallied.
fn check(c: &Case, tally: &mut Tally) -> Result<(), TestCaseError> {
    let f = facts(&c.items, &c.members, &c.current);
    let p = plan_replicas(&c.items, &c.members, &c.current);
    check_valid(c, &f, &p)?;
    prop_assert_eq!(&p, &plan_replicas(&c.items, &c.members, &c.current));
    let r = rebuilt(c);
    prop_assert_eq!(&p, &plan_replicas(&r.items, &r.members, &r.current));
    tally.cases += 1;
    if f.elig.is_empty() {
        return Ok(());
    }
    let got = (p.cold_primaries, p.primaries_changed, p.secondaries_moved);
    let balanced = totals_balanced(&f, &p);
    // Exact secondaries for the planner's primaries: balanced whenever a placement of the
    // secondaries can be, and then with the fewest secondaries moved.
    if let Some(least) = secondaries_minimum(&f, &primaries_of(&f, &p)) {
        prop_assert!(balanced, "a balanced placement of the secondaries exists");
        prop_assert_eq!(
            p.secondaries_moved,
            least,
            "secondaries moved above the minimum"
        );
    }
    if (got.0, got.1) == primary_minimum(&f) {
        tally.primaries_only += 1;
    }
    if let Some(full) = full_minimum(&f) {
        tally.feasible += 1;
        // The primaries-only minimum relaxes the full one.
        prop_assert!(primary_minimum(&f) <= (full.0, full.1));
        // The full lexicographic minimum, in every case that has a valid plan.
        prop_assert!(
            balanced,
            "a valid plan exists but the totals are not balanced"
        );
        prop_assert_eq!(got, full, "not the full minimum");
    }
    if balanced {
        let again = plan_replicas(&c.items, &c.members, &p.state);
        prop_assert_eq!(&again.state, &p.state, "not idempotent");
        prop_assert!(again.revoked.is_empty() && again.assigned.is_empty());
        prop_assert_eq!(
            (
                again.cold_primaries,
                again.primaries_changed,
                again.secondaries_moved
            ),
            (0, 0, 0)
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn valid_deterministic_idempotent_with_zones(c in case(true)) {
        check(&c, &mut Tally::default())?;
    }

    #[test]
    fn valid_deterministic_idempotent_without_zones(c in case(false)) {
        check(&c, &mut Tally::default())?;
    }

    /// N = 1 and no zones: the same balance and the same number of moves as `plan()`.
    #[test]
    fn one_replica_agrees_with_plan(c in case(false)) {
        let items: BTreeMap<WorkId, u32> = c.items.keys().map(|k| (k.clone(), 1)).collect();
        let weights: BTreeMap<MemberId, u32> =
            c.members.iter().map(|(k, m)| (k.clone(), m.weight)).collect();
        let owners: Assignment = c
            .current
            .iter()
            .filter_map(|(k, r)| r.primary.clone().map(|p| (k.clone(), p)))
            .collect();
        let current: ReplicaAssignment = owners
            .iter()
            .map(|(k, p)| (k.clone(), Replicas { primary: Some(p.clone()), secondaries: vec![] }))
            .collect();
        let single = plan(&items.keys().cloned().collect(), &weights, &owners);
        let p = plan_replicas(&items, &c.members, &current);
        let moved = items
            .keys()
            .filter(|k| {
                owners.get(*k).is_some_and(|o| {
                    weights.contains_key(o)
                        && p.state.get(*k).and_then(|r| r.primary.as_ref()) != Some(o)
                })
            })
            .count();
        prop_assert_eq!(moved, single.moved);
        let n = items.len();
        let tw: u128 = weights.values().map(|&w| u128::from(w)).sum();
        for m in weights.keys() {
            let a = single.assignment.values().filter(|o| *o == m).count();
            let b = p.state.values().filter(|r| r.primary.as_ref() == Some(m)).count();
            if tw > 0 {
                prop_assert!(balanced_count(a, n, weights[m], tw));
                prop_assert!(balanced_count(b, n, weights[m], tw));
            }
        }
        prop_assert_eq!(p.state.len(), single.assignment.len());
        prop_assert!(p.state.values().all(|r| r.secondaries.is_empty()));
    }
}

/// A failover at a larger size: members (4–30, weight 1, in 1–3 zones), items (20–400, 2–3
/// replicas) planned from nothing, then one member dies.
fn failover_case() -> impl Strategy<Value = (usize, usize, usize, u32, usize)> {
    (
        4usize..=30,
        1usize..=3,
        20usize..=400,
        2u32..=3,
        any::<prop::sample::Index>(),
    )
        .prop_map(|(m, z, n, r, dead)| (m, z, n, r, dead.index(m)))
}

/// One failover: asserts the invariants; returns (balanced before and after, secondaries
/// moved beyond the dead member's replicas).
fn failover(
    (m, z, n, r, dead): (usize, usize, usize, u32, usize),
) -> Result<(bool, usize), TestCaseError> {
    let zone_names = ["a", "b", "c"];
    let members: BTreeMap<MemberId, ReplicaMember> = (0..m)
        .map(|i| {
            let zone = if z == 1 {
                None
            } else {
                Some(zone_names[i % z])
            };
            (Arc::from(format!("m{i:02}")), ReplicaMember::new(1, zone))
        })
        .collect();
    let items: BTreeMap<WorkId, u32> = (0..n).map(|i| (Arc::from(format!("w{i:04}")), r)).collect();
    let before = plan_replicas(&items, &members, &ReplicaAssignment::new());
    let dead_id: MemberId = Arc::from(format!("m{dead:02}"));
    let mut alive = members.clone();
    alive.remove(&dead_id);
    let after = plan_replicas(&items, &alive, &before.state);
    let case = Case {
        items: items.clone(),
        members: alive.clone(),
        current: before.state.clone(),
    };
    let f = facts(&case.items, &case.members, &case.current);
    check_valid(&case, &f, &after)?;
    let dead_primaries = before
        .state
        .values()
        .filter(|x| x.primary.as_ref() == Some(&dead_id))
        .count();
    let dead_replicas = before
        .state
        .values()
        .filter(|x| x.primary.as_ref() == Some(&dead_id) || x.secondaries.contains(&dead_id))
        .count();
    // No primary goes cold: the dead member's primaries are promoted, and where the primary
    // quotas need it a few other primaries hand over to a live secondary (still warm; the
    // fewest such hand-overs, see the exact primary test).
    prop_assert_eq!(after.cold_primaries, 0);
    prop_assert_eq!(after.placed, 0);
    prop_assert_eq!(after.promotions, after.primaries_changed);
    prop_assert!(after.primaries_changed >= dead_primaries);
    // Every lost replica is replaced.
    prop_assert!(after.secondaries_moved >= dead_replicas);
    let before_f = facts(&items, &members, &ReplicaAssignment::new());
    let balanced = totals_balanced(&before_f, &before) && totals_balanced(&f, &after);
    if balanced {
        let again = plan_replicas(&items, &alive, &after.state);
        prop_assert!(again.revoked.is_empty() && again.assigned.is_empty());
    }
    Ok((balanced, after.secondaries_moved - dead_replicas))
}

/// 200 failovers (a deterministic runner): the invariants of `failover` in every one, and how
/// often exactly the dead member's replicas move (no extra secondary move), pinned by a floor.
#[test]
fn one_death_promotes_and_replaces_its_replicas() {
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
    let mut runner = TestRunner::new_with_rng(
        Config::with_cases(200),
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    );
    let stats = std::cell::RefCell::new((0usize, 0usize, 0usize, 0usize));
    runner
        .run(&failover_case(), |c| {
            let (balanced, extra) = failover(c)?;
            let mut s = stats.borrow_mut();
            s.0 += 1;
            s.1 += usize::from(extra == 0);
            s.2 = s.2.max(extra);
            s.3 += usize::from(balanced);
            Ok(())
        })
        .expect("the failover invariants hold");
    let (cases, exact, worst, balanced) = stats.into_inner();
    eprintln!(
        "{cases} failovers: {balanced} balanced before and after; exactly the dead member's \
         replicas moved in {exact}, at most {worst} extra secondary moves"
    );
    assert!(exact * 100 >= cases * 80, "{exact} of {cases}");
}

/// The full brute-force minimum over a fixed set of 3,000 cases with zones and 3,000 without (a
/// deterministic runner), asserted in every case by `check`; prints how many cases had a valid
/// plan, and how often the full minimum's (cold, changed) is the primaries-only one.
#[test]
fn the_full_minimum_in_a_fixed_set() {
    use proptest::test_runner::{Config, TestRunner};
    let mut all = Tally::default();
    for zones in [true, false] {
        let mut runner = TestRunner::new_with_rng(
            Config::with_cases(3_000),
            proptest::test_runner::TestRng::deterministic_rng(
                proptest::test_runner::RngAlgorithm::ChaCha,
            ),
        );
        let tally = std::cell::RefCell::new(Tally::default());
        runner
            .run(&case(zones), |c| check(&c, &mut tally.borrow_mut()))
            .expect("the invariants hold");
        let t = tally.into_inner();
        all.cases += t.cases;
        all.feasible += t.feasible;
        all.primaries_only += t.primaries_only;
    }
    eprintln!(
        "{} cases, {} with a valid plan: every one at the full minimum; (cold, changed) at the \
         primaries-only minimum in {} of all cases",
        all.cases, all.feasible, all.primaries_only,
    );
    assert_eq!(all.cases, 6_000, "{all:?}");
}

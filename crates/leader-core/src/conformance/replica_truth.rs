//! The slower truth of the replica planner: a brute force over every valid plan of a small
//! input, written from the definitions (not with the planner's helpers). The planner's property
//! tests and the simulator compare [`plan_replicas`](crate::plan_replicas) with it.
//!
//! A valid plan: every item `min(N, M)` replicas on distinct members of positive weight, at most
//! the least possible maximum per zone (found by trying every replica set), both balance rules
//! checked as `|c·W − n·w| < W`. Its cost: (cold primaries, primaries changed, secondaries
//! moved), compared lexicographically.
#![allow(clippy::many_single_char_names, clippy::items_after_statements)] // brute-force notation

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use worker_core::WorkId;

use crate::plan::MemberId;
use crate::replicas::{ReplicaAssignment, ReplicaMember};

/// The facts of an input, from the definitions.
pub struct Facts {
    /// The items with their replica counts (`min(N, M)`).
    pub items: Vec<(WorkId, usize)>,
    /// The members of positive weight.
    pub elig: Vec<MemberId>,
    /// Their zones.
    pub zone: Vec<Option<Arc<str>>>,
    /// Their weights.
    pub w: Vec<u32>,
    /// The sum of the weights.
    pub total_w: u128,
    /// Per item: the least possible maximum of replicas in one zone.
    pub cap: Vec<usize>,
    /// Per item: its live replicas (members of positive weight).
    pub live: Vec<BTreeSet<usize>>,
    /// Per item: its primary before (live or gone).
    pub old_primary: Vec<Option<MemberId>>,
}

/// Every subset of `k` of `0..m`.
pub fn subsets(m: usize, k: usize) -> Vec<Vec<usize>> {
    (0u32..1 << m)
        .filter(|s| s.count_ones() as usize == k)
        .map(|s| (0..m).filter(|i| s & (1 << i) != 0).collect())
        .collect()
}

/// The most members of `set` in one zone.
pub fn max_per_zone(zone: &[Option<Arc<str>>], set: &[usize]) -> usize {
    let mut c: BTreeMap<&Option<Arc<str>>, usize> = BTreeMap::new();
    for &i in set {
        *c.entry(&zone[i]).or_insert(0) += 1;
    }
    c.values().copied().max().unwrap_or(0)
}

/// The facts of an input of [`plan_replicas`](crate::plan_replicas).
pub fn facts(
    items: &BTreeMap<WorkId, u32>,
    members: &BTreeMap<MemberId, ReplicaMember>,
    current: &ReplicaAssignment,
) -> Facts {
    let elig: Vec<MemberId> = members
        .iter()
        .filter(|(_, m)| m.weight > 0)
        .map(|(id, _)| id.clone())
        .collect();
    let zone: Vec<Option<Arc<str>>> = elig.iter().map(|m| members[m].zone.clone()).collect();
    let w: Vec<u32> = elig.iter().map(|m| members[m].weight).collect();
    let total_w = w.iter().map(|&w| u128::from(w)).sum();
    let items: Vec<(WorkId, usize)> = items
        .iter()
        .map(|(k, &n)| (k.clone(), (n.max(1) as usize).min(elig.len())))
        .collect();
    // The least possible maximum per zone: by brute force over every replica set on small
    // inputs; on large ones (the failover test) from the zone sizes, fill-the-zones-evenly.
    let mut sizes: BTreeMap<&Option<Arc<str>>, usize> = BTreeMap::new();
    for z in &zone {
        *sizes.entry(z).or_insert(0) += 1;
    }
    let cap = items
        .iter()
        .map(|(_, r)| {
            if elig.len() <= 8 {
                subsets(elig.len(), *r)
                    .iter()
                    .map(|s| max_per_zone(&zone, s))
                    .min()
                    .unwrap_or(0)
            } else {
                (1..=*r)
                    .find(|&c| sizes.values().map(|&s| s.min(c)).sum::<usize>() >= *r)
                    .unwrap_or(*r)
            }
        })
        .collect();
    let pos = |m: &MemberId| elig.iter().position(|e| e == m);
    let live = items
        .iter()
        .map(|(k, _)| {
            current.get(k).map_or_else(BTreeSet::new, |r| {
                r.primary
                    .iter()
                    .chain(&r.secondaries)
                    .filter_map(pos)
                    .collect()
            })
        })
        .collect();
    let old_primary = items
        .iter()
        .map(|(k, _)| current.get(k).and_then(|r| r.primary.clone()))
        .collect();
    Facts {
        items,
        elig,
        zone,
        w,
        total_w,
        cap,
        live,
        old_primary,
    }
}

/// Whether `c` of `n` is a balanced count for weight `w` of `total`.
pub fn balanced_count(c: usize, n: usize, w: u32, total: u128) -> bool {
    (c as u128 * total).abs_diff(n as u128 * u128::from(w)) < total
}

/// One item's choice: primary, secondaries (member indexes), and its cost.
pub type Choice = (usize, Vec<usize>, (usize, usize, usize));

/// The cost of item `x` with primary `p` and secondaries `secs`: (cold, changed, moved).
pub fn cost_of(f: &Facts, x: usize, p: usize, secs: &[usize]) -> (usize, usize, usize) {
    let live = &f.live[x];
    let had_live = !live.is_empty();
    let cold = usize::from(had_live && !live.contains(&p));
    let changed = usize::from(f.old_primary[x].as_ref().is_some_and(|o| *o != f.elig[p]));
    let moved = if had_live {
        secs.iter().filter(|s| !live.contains(s)).count()
    } else {
        0
    };
    (cold, changed, moved)
}

/// The sum of two costs.
pub fn add(a: (usize, usize, usize), b: (usize, usize, usize)) -> (usize, usize, usize) {
    (a.0 + b.0, a.1 + b.1, a.2 + b.2)
}

/// Brute force over every valid plan: the least (cold, changed, moved), or `None` if no plan
/// meets every rule.
pub fn full_minimum(f: &Facts) -> Option<(usize, usize, usize)> {
    let m = f.elig.len();
    let n = f.items.len();
    let big_r: usize = f.items.iter().map(|i| i.1).sum();
    let mut options: Vec<Vec<Choice>> = Vec::new();
    for (x, (_, r)) in f.items.iter().enumerate() {
        let mut opts = Vec::new();
        for p in 0..m {
            let others: Vec<usize> = (0..m).filter(|&o| o != p).collect();
            for s in subsets(others.len(), r - 1) {
                let secs: Vec<usize> = s.iter().map(|&i| others[i]).collect();
                let mut set = secs.clone();
                set.push(p);
                if max_per_zone(&f.zone, &set) <= f.cap[x] {
                    opts.push((p, secs.clone(), cost_of(f, x, p, &secs)));
                }
            }
        }
        opts.sort_by_key(|o| o.2);
        options.push(opts);
    }
    let pmax: Vec<usize> = (0..m)
        .map(|i| {
            (0..=n)
                .filter(|&c| balanced_count(c, n, f.w[i], f.total_w))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let tmax: Vec<usize> = (0..m)
        .map(|i| {
            (0..=big_r)
                .filter(|&c| balanced_count(c, big_r, f.w[i], f.total_w))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut best = None;
    let mut pc = vec![0; m];
    let mut tc = vec![0; m];
    #[allow(clippy::too_many_arguments)]
    fn dfs(
        f: &Facts,
        options: &[Vec<Choice>],
        x: usize,
        cost: (usize, usize, usize),
        pc: &mut Vec<usize>,
        tc: &mut Vec<usize>,
        pmax: &[usize],
        tmax: &[usize],
        best: &mut Option<(usize, usize, usize)>,
    ) {
        if best.is_some_and(|b| cost >= b) {
            return;
        }
        if x == options.len() {
            let n = f.items.len();
            let big_r: usize = f.items.iter().map(|i| i.1).sum();
            let ok = (0..f.elig.len()).all(|i| {
                balanced_count(pc[i], n, f.w[i], f.total_w)
                    && balanced_count(tc[i], big_r, f.w[i], f.total_w)
            });
            if ok {
                *best = Some(cost);
            }
            return;
        }
        for (p, secs, c) in &options[x] {
            if pc[*p] + 1 > pmax[*p] || tc[*p] + 1 > tmax[*p] {
                continue;
            }
            if secs.iter().any(|&s| tc[s] + 1 > tmax[s]) {
                continue;
            }
            pc[*p] += 1;
            tc[*p] += 1;
            for &s in secs {
                tc[s] += 1;
            }
            dfs(f, options, x + 1, add(cost, *c), pc, tc, pmax, tmax, best);
            pc[*p] -= 1;
            tc[*p] -= 1;
            for &s in secs {
                tc[s] -= 1;
            }
        }
    }
    dfs(
        f,
        &options,
        0,
        (0, 0, 0),
        &mut pc,
        &mut tc,
        &pmax,
        &tmax,
        &mut best,
    );
    best
}

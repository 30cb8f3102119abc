//! The exact secondaries: given the primaries, the secondaries are a min-cost flow, and this
//! pass makes them one by cancelling negative cycles (Bellman–Ford) in its residual graph.
//!
//! The flow: each item `x` sends its `r − 1` secondaries through one node per (item, zone),
//! capped at the zone cap less the primary's replica in its zone, to members other than its
//! primary (at most one each), and on to a hub `T`. Costs: a secondary on a member that held a
//! live replica of `x` costs 0, elsewhere 1 (one secondary moved); member `m`'s total `L` costs
//! `BIG·(distance of L from its range)`, `BIG` more than every move together, so the total
//! balance comes first wherever the primaries leave room for it. A flow is min-cost iff its
//! residual graph has no negative cycle, so when no cycle is left the secondaries moved are the
//! fewest over every placement of the secondaries that meets the hard constraints (and the total
//! balance, if any does) for these primaries.
//!
//! Cost per round `O(V·E)` with `V = 1 + M + n·(Z + 1)` nodes and `E = O(n·M)` arcs; each round
//! lowers the cost by at least 1. The pass runs only on inputs of at most [`EXACT_PAIRS`]
//! (item, member) pairs.

#![allow(clippy::many_single_char_names, clippy::needless_range_loop)] // flow notation: s the setup, x an item, m a member; members and zones by index

#[allow(clippy::wildcard_imports)] // the parent module's types and helpers
use super::*;

use super::place::Setup;

/// The largest `n·M` (items × members of positive weight) on which [`settle`] runs.
pub(super) const EXACT_PAIRS: usize = 4_096;

/// What a residual arc changes.
#[derive(Clone, Copy)]
enum Arc_ {
    /// Nothing of the state (the hub and the zone nodes: totals and zone counts follow).
    Implied,
    /// Item `x` gains a secondary on `m`.
    Add(usize, usize),
    /// Item `x` loses its secondary on `m`.
    Remove(usize, usize),
}

/// Makes the secondaries (the sets after their first element, the primary) a min-cost flow for
/// the members' ranges `range`. Returns whether it changed anything. No-op above
/// [`EXACT_PAIRS`].
pub(super) fn settle(s: &Setup, sets: &mut [Vec<usize>], range: &[(usize, usize)]) -> bool {
    let (n, mm) = (s.items.len(), s.members());
    if n * mm > EXACT_PAIRS || mm == 0 {
        return false;
    }
    cancel(s, sets, range, true)
}

/// The least distance of the totals from `range` over every choice of replica sets (`r`
/// distinct members per item within the zone cap), the primaries left free: a lower bound of
/// that distance for every choice of primaries. `sets` is a valid start (it is left as it is).
pub(super) fn relaxed_distance(s: &Setup, sets: &[Vec<usize>], range: &[(usize, usize)]) -> usize {
    let mut free = sets.to_vec();
    cancel(s, &mut free, range, false);
    let mut load = vec![0usize; s.members()];
    for set in &free {
        for &o in set {
            load[o] += 1;
        }
    }
    (0..s.members())
        .map(|m| range[m].0.saturating_sub(load[m]) + load[m].saturating_sub(range[m].1))
        .sum()
}

/// Cancels negative cycles. With `fixed`, each set's first element (the primary) stays and the
/// flow places the rest; without, every replica may move (the primaries relaxed away).
fn cancel(s: &Setup, sets: &mut [Vec<usize>], range: &[(usize, usize)], fixed: bool) -> bool {
    let (n, mm) = (s.items.len(), s.members());
    let skip = usize::from(fixed);
    let nz = s.zone_sizes.len();
    let big = s.big_r() as i128 + 1;
    let hub = 0;
    let member = |m: usize| 1 + m;
    let item = |x: usize| 1 + mm + x;
    let izone = |x: usize, z: usize| 1 + mm + n + x * nz + z;
    let nodes = 1 + mm + n * (nz + 1);
    let mut changed = false;
    let mut arcs: Vec<(usize, usize, i128, Arc_)> = Vec::new();
    loop {
        // The residual graph of the current state.
        let mut load = vec![0usize; mm];
        for set in sets.iter() {
            for &o in set {
                load[o] += 1;
            }
        }
        let pen = |m: usize, l: usize| {
            let (lo, hi) = range[m];
            big * (lo.saturating_sub(l) + l.saturating_sub(hi)) as i128
        };
        arcs.clear();
        for m in 0..mm {
            let l = load[m];
            arcs.push((member(m), hub, pen(m, l + 1) - pen(m, l), Arc_::Implied));
            if l > 0 {
                arcs.push((hub, member(m), pen(m, l - 1) - pen(m, l), Arc_::Implied));
            }
        }
        for (x, set) in sets.iter().enumerate() {
            let p = if fixed { set[0] } else { NONE };
            let mut inz = vec![0usize; nz];
            for &o in &set[skip..] {
                inz[s.zone_of[o]] += 1;
            }
            for z in 0..nz {
                let cap = s.caps[x] - usize::from(fixed && s.zone_of[p] == z);
                if inz[z] < cap {
                    arcs.push((item(x), izone(x, z), 0, Arc_::Implied));
                }
                if inz[z] > 0 {
                    arcs.push((izone(x, z), item(x), 0, Arc_::Implied));
                }
            }
            for m in 0..mm {
                let c = i128::from(!s.was(x, m));
                let z = s.zone_of[m];
                if m == p {
                    continue;
                }
                if set[skip..].contains(&m) {
                    arcs.push((member(m), izone(x, z), -c, Arc_::Remove(x, m)));
                } else {
                    arcs.push((izone(x, z), member(m), c, Arc_::Add(x, m)));
                }
            }
        }
        let Some(cycle) = negative_cycle(nodes, &arcs) else {
            return changed;
        };
        for a in cycle {
            match arcs[a].3 {
                Arc_::Add(x, m) => sets[x].push(m),
                Arc_::Remove(x, m) => {
                    let pos = sets[x].iter().position(|&o| o == m).expect("m in x");
                    sets[x].remove(pos);
                }
                Arc_::Implied => {}
            }
        }
        changed = true;
    }
}

/// A negative cycle of the graph (arcs `(from, to, cost, _)`), as arc indexes, if there is
/// one: Bellman–Ford from every node at once, with a check of the predecessor graph after
/// every pass (any cycle there is negative).
fn negative_cycle(nodes: usize, arcs: &[(usize, usize, i128, Arc_)]) -> Option<Vec<usize>> {
    let mut dist = vec![0i128; nodes];
    let mut pred: Vec<usize> = vec![NONE; nodes]; // arc index
    for _ in 0..=nodes {
        let mut relaxed = false;
        for (i, &(u, v, c, _)) in arcs.iter().enumerate() {
            if dist[u] + c < dist[v] {
                dist[v] = dist[u] + c;
                pred[v] = i;
                relaxed = true;
            }
        }
        if !relaxed {
            return None;
        }
        if let Some(c) = pred_cycle(nodes, arcs, &pred) {
            return Some(c);
        }
    }
    None
}

/// A cycle of the predecessor graph, if any (arc indexes, in path order).
fn pred_cycle(
    nodes: usize,
    arcs: &[(usize, usize, i128, Arc_)],
    pred: &[usize],
) -> Option<Vec<usize>> {
    // 0 unseen, 1 on the current walk, 2 done.
    let mut mark = vec![0u8; nodes];
    for start in 0..nodes {
        let mut v = start;
        let mut walk = Vec::new();
        while mark[v] == 0 && pred[v] != NONE {
            mark[v] = 1;
            walk.push(v);
            v = arcs[pred[v]].0;
        }
        if mark[v] == 1 {
            // v is on the walk: the cycle is from v back to v.
            let mut cycle = Vec::new();
            let mut u = v;
            loop {
                let a = pred[u];
                cycle.push(a);
                u = arcs[a].0;
                if u == v {
                    break;
                }
            }
            cycle.reverse();
            return Some(cycle);
        }
        for w in walk {
            mark[w] = 2;
        }
    }
    None
}

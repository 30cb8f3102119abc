//! The search over the primaries: each primary choice scored by its exact secondaries
//! ([`settle`]), so a plan is ranked by (distance of the totals from their ranges, cold
//! primaries, primaries changed, secondaries moved), lexicographically.
//!
//! **Branch and bound** ([`exact`]) over every primary choice that meets the primary balance.
//! Why it is exact: for fixed primaries, [`settle`] gives the least (distance, secondaries
//! moved) over every placement of the secondaries (a min-cost flow), and cold and changed depend
//! on the primaries alone; the search visits every primary choice except those a lower bound
//! proves no better than the best plan found. The bound of a partial choice: no lower distance
//! than [`relaxed_distance`] (every replica free, the primaries relaxed away), the cold and
//! changed of the items chosen, and for every other item its cheapest (cold, changed,
//! secondaries it must move) — the secondaries it must move being `r − 1` less the live
//! replicas it can keep beside its primary within the zone cap. Lexicographic order is
//! compatible with addition, so the sum of those is a lower bound. Items without a live replica
//! and of equal `r` are interchangeable (swapping their whole replica sets changes no cost):
//! their primaries are taken in non-decreasing member order.
//!
//! **Local improvement** ([`improve`]): one item's primary role moved, or two items' swapped,
//! the first strictly better plan taken, until none is better or its budget is spent.
//!
//! Both start from the phases' plan and replace it only by a strictly better one, the first
//! found in a fixed order (items in id order, each item's members by (cost, member hash, index)),
//! so they are deterministic and leave an optimal plan as it is (idempotence).
//!
//! When: with `M^n ≤` [`SEARCH_CHOICES`] and `n·M ≤` [`SEARCH_PAIRS`] (`n` items, `M` members
//! of positive weight) the branch and bound runs without a budget (at most `SEARCH_CHOICES`
//! leaves, each one [`settle`] on at most `SEARCH_PAIRS` pairs): the plan is the full
//! lexicographic minimum. Above that and up to [`LOCAL_PAIRS`] pairs, the local improvement and
//! then the branch and bound within [`BNB_NODES`] nodes and [`BNB_LEAVES`] leaves: the minimum
//! whenever that finishes, else the best plan found. Above [`LOCAL_PAIRS`], nothing.

#![allow(clippy::many_single_char_names)] // flow notation: s the setup, x an item, m a member

#[allow(clippy::wildcard_imports)] // the parent module's types and helpers
use super::*;

use super::place::{score, Setup};
use super::settle::{relaxed_distance, settle};

/// The largest `M^n` (members of positive weight to the power of the items) the search runs on.
pub(super) const SEARCH_CHOICES: usize = 4_096;

/// The largest `n·M` the search runs on.
pub(super) const SEARCH_PAIRS: usize = 32;

/// The largest `n·M` the local improvement runs on.
pub(super) const LOCAL_PAIRS: usize = 1_024;

/// The most plans the local improvement evaluates (each one [`settle`]).
pub(super) const LOCAL_EVALS: usize = 256;

/// The most candidates the local improvement looks at (most are dismissed by their bound).
pub(super) const LOCAL_CHECKS: usize = 100_000;

/// The branch and bound's budget above the exact bounds: search nodes, and leaves (plans
/// evaluated, each one [`settle`]).
pub(super) const BNB_NODES: usize = 5_000;
pub(super) const BNB_LEAVES: usize = 256;

/// Whether the search runs on `n` items over `mm` members.
pub(super) fn searched(n: usize, mm: usize) -> bool {
    n > 0
        && mm > 0
        && n * mm <= SEARCH_PAIRS
        && u32::try_from(n)
            .ok()
            .and_then(|e| mm.checked_pow(e))
            .is_some_and(|c| c <= SEARCH_CHOICES)
}

type Score = [usize; 4];

fn plus(a: Score, b: Score) -> Score {
    [a[0] + b[0], a[1] + b[1], a[2] + b[2], a[3] + b[3]]
}

/// Within the search's size bounds, replaces `prim` and `sets` (primary first) by the full
/// lexicographic minimum ([`exact`]); above them and up to [`LOCAL_PAIRS`], by the result of
/// the local improvement ([`improve`]) and a budgeted [`exact`].
pub(super) fn search(
    s: &Setup,
    prim: &mut Vec<usize>,
    sets: &mut Vec<Vec<usize>>,
    range: &[(usize, usize)],
) {
    let (n, mm) = (s.items.len(), s.members());
    let small = searched(n, mm);
    if !small && n * mm > LOCAL_PAIRS {
        return;
    }
    let Some(c) = Costs::new(s, prim, sets, range) else {
        return;
    };
    if small {
        exact(s, &c, prim, sets, range, usize::MAX, usize::MAX);
    } else {
        improve(s, &c, prim, sets, range);
        exact(s, &c, prim, sets, range, BNB_NODES, BNB_LEAVES);
    }
}

/// The bounds both searches use.
pub(super) struct Costs {
    /// A lower bound of the distance of the totals from their ranges.
    viol_lb: usize,
    /// Per item, per member: [0, cold, changed, least moved] with that member as primary.
    table: Vec<Vec<Score>>,
    /// Per item: the members by (cost, member hash, index).
    order: Vec<Vec<usize>>,
}

impl Costs {
    /// The bounds, or `None` when the plan is already at the least distance with no move (no
    /// search can better it).
    pub(super) fn new(
        s: &Setup,
        prim: &[usize],
        sets: &[Vec<usize>],
        range: &[(usize, usize)],
    ) -> Option<Self> {
        let (n, mm) = (s.items.len(), s.members());
        if n == 0 || mm == 0 {
            return None;
        }
        let best = score(s, prim, sets, range);
        // 0 when the plan is at 0, else every replica free (the primaries relaxed away).
        let viol_lb = if best[0] == 0 {
            0
        } else {
            relaxed_distance(s, sets, range)
        };
        if best == [viol_lb, 0, 0, 0] {
            return None;
        }
        let table: Vec<Vec<Score>> = (0..n)
            .map(|x| (0..mm).map(|m| cost(s, x, m)).collect())
            .collect();
        let mut hashes = vec![0u64; mm];
        for &(h, m) in &s.order {
            hashes[m] = h;
        }
        let order = (0..n)
            .map(|x| {
                let mut c: Vec<usize> = (0..mm).collect();
                c.sort_unstable_by_key(|&m| (table[x][m], hashes[m], m));
                c
            })
            .collect();
        Some(Self {
            viol_lb,
            table,
            order,
        })
    }
}

/// The branch and bound, whatever the size, within a budget of search nodes and of leaves
/// (plans evaluated). Returns whether it finished within the budget: then the plan is the full
/// lexicographic minimum; else the best plan found (never worse than the one given).
pub(super) fn exact(
    s: &Setup,
    c: &Costs,
    prim: &mut Vec<usize>,
    sets: &mut Vec<Vec<usize>>,
    range: &[(usize, usize)],
    nodes: usize,
    leaves: usize,
) -> bool {
    let (n, mm) = (s.items.len(), s.members());
    let best = score(s, prim, sets, range);
    // Per item: its candidate primaries with their costs, cheapest first.
    let cands: Vec<Vec<(usize, Score)>> = (0..n)
        .map(|x| c.order[x].iter().map(|&m| (m, c.table[x][m])).collect())
        .collect();
    let mut rest = vec![[c.viol_lb, 0, 0, 0]; n + 1];
    for x in (0..n).rev() {
        rest[x] = plus(rest[x + 1], cands[x][0].1);
    }
    if rest[0] >= best {
        return true;
    }
    let prev_same: Vec<usize> = (0..n)
        .map(|x| {
            let same = |y: &usize| !s.live(*y) && s.items[*y].1 == s.items[x].1;
            if s.live(x) {
                NONE
            } else {
                (0..x).rev().find(same).unwrap_or(NONE)
            }
        })
        .collect();
    let shares: Vec<(usize, u128)> = s.wts.iter().map(|&w| share(n, w, s.total)).collect();
    let floor: Vec<usize> = shares.iter().map(|p| p.0).collect();
    let mut b = Bnb {
        s,
        range,
        cands,
        rest,
        prev_same,
        ceils: n - floor.iter().sum::<usize>(),
        frac: shares.iter().map(|p| p.1 != 0).collect(),
        deficit: floor.iter().sum(),
        floor,
        count: vec![0; mm],
        ceils_used: 0,
        cur: vec![NONE; n],
        best,
        found: None,
        start: sets.clone(),
        nodes,
        leaves,
        complete: true,
    };
    b.dfs(0, [0; 4]);
    if let Some((p, st)) = b.found {
        *prim = p;
        *sets = st;
    }
    b.complete
}

/// Item `x` with primary `m`: [0, cold, changed, the secondaries it must move at least].
fn cost(s: &Setup, x: usize, m: usize) -> Score {
    if !s.live(x) {
        return [0, 0, usize::from(s.had_primary[x]), 0];
    }
    let cold = usize::from(!s.was(x, m));
    let changed = usize::from(s.had_primary[x] && s.old_p[x] != m);
    // The live replicas other than m it can keep beside m: per zone, up to the zone cap less
    // m's replica there (the first ones of each zone kept).
    let live: Vec<usize> = std::iter::once(s.old_p[x])
        .chain(s.old_s[x].iter().copied())
        .filter(|&o| o != NONE && o != m)
        .collect();
    let keep = (0..live.len())
        .filter(|&i| {
            let z = s.zone_of[live[i]];
            let before = live[..i].iter().filter(|&&o| s.zone_of[o] == z).count();
            before + usize::from(s.zone_of[m] == z) < s.caps[x]
        })
        .count();
    let r = s.items[x].1 - 1;
    [0, cold, changed, r - keep.min(r)]
}

/// The branch and bound's state.
struct Bnb<'s, 'a> {
    s: &'s Setup<'a>,
    range: &'s [(usize, usize)],
    cands: Vec<Vec<(usize, Score)>>,
    /// `rest[x]`: the lower bound of the items from `x` on (with the distance bound).
    rest: Vec<Score>,
    /// Per item without a live replica: the previous such item of equal `r`, else `NONE`.
    prev_same: Vec<usize>,
    floor: Vec<usize>,
    frac: Vec<bool>,
    ceils: usize,
    count: Vec<usize>,
    ceils_used: usize,
    /// Primaries still missing below the members' floors.
    deficit: usize,
    cur: Vec<usize>,
    best: Score,
    found: Option<(Vec<usize>, Vec<Vec<usize>>)>,
    /// The sets of the best plan so far (primary first): each leaf's start.
    start: Vec<Vec<usize>>,
    /// The budget left: search nodes, leaves; whether none was refused.
    nodes: usize,
    leaves: usize,
    complete: bool,
}

impl Bnb<'_, '_> {
    fn dfs(&mut self, x: usize, acc: Score) {
        if plus(acc, self.rest[x]) >= self.best {
            return;
        }
        if self.nodes == 0 {
            self.complete = false;
            return;
        }
        self.nodes -= 1;
        let n = self.cur.len();
        if x == n {
            if self.leaves == 0 {
                self.complete = false;
                return;
            }
            self.leaves -= 1;
            self.leaf();
            return;
        }
        if self.deficit > n - x {
            return;
        }
        for i in 0..self.cands[x].len() {
            let (m, c) = self.cands[x][i];
            if self.prev_same[x] != NONE && m < self.cur[self.prev_same[x]] {
                continue;
            }
            let above = self.count[m] >= self.floor[m];
            if above
                && (!self.frac[m] || self.count[m] > self.floor[m] || self.ceils_used == self.ceils)
            {
                continue;
            }
            self.count[m] += 1;
            if above {
                self.ceils_used += 1;
            } else {
                self.deficit -= 1;
            }
            self.cur[x] = m;
            self.dfs(x + 1, plus(acc, c));
            self.count[m] -= 1;
            if above {
                self.ceils_used -= 1;
            } else {
                self.deficit += 1;
            }
        }
        self.cur[x] = NONE;
    }

    /// A complete primary choice: its exact secondaries and score.
    fn leaf(&mut self) {
        let s = self.s;
        // A valid start: the best plan's sets, re-seated on the new primaries; then the exact
        // pass.
        let mut sets: Vec<Vec<usize>> = self
            .start
            .iter()
            .enumerate()
            .map(|(x, set)| reseat(s, x, set, self.cur[x]))
            .collect();
        settle(s, &mut sets, self.range);
        let got = score(s, &self.cur, &sets, self.range);
        if got < self.best {
            self.best = got;
            self.start.clone_from(&sets);
            self.found = Some((self.cur.clone(), sets));
        }
    }
}

/// A local improvement of the primary choice: moves of one item's primary role to another
/// member (a holder of one of its replicas or not) and swaps of the primary roles of two items,
/// within the primary balance, in a fixed order (moves by item id, then the item's members by
/// (cost, member hash); then swaps by item ids). A candidate whose lower bound (as in
/// [`exact`]) is not below the current plan is skipped; the others get their exact
/// secondaries ([`settle`]) and the first strictly better plan is taken, and the scan starts
/// over, until none is better, [`LOCAL_EVALS`] plans were evaluated or [`LOCAL_CHECKS`]
/// candidates looked at. Not exact in general.
pub(super) fn improve(
    s: &Setup,
    c: &Costs,
    prim: &mut Vec<usize>,
    sets: &mut Vec<Vec<usize>>,
    range: &[(usize, usize)],
) {
    let (n, mm) = (s.items.len(), s.members());
    let mut best = score(s, prim, sets, range);
    let (viol_lb, table, order) = (c.viol_lb, &c.table, &c.order);
    let shares: Vec<(usize, u128)> = s.wts.iter().map(|&w| share(n, w, s.total)).collect();
    let (mut evals, mut checks) = (0, 0);
    'scan: while evals < LOCAL_EVALS && checks < LOCAL_CHECKS && best > [viol_lb, 0, 0, 0] {
        let mut count = vec![0usize; mm];
        for &p in prim.iter() {
            count[p] += 1;
        }
        let cur_v = prim.clone();
        let cur = &cur_v;
        let costs: Vec<Score> = (0..n).map(|x| table[x][cur[x]]).collect();
        let base = costs.iter().fold([viol_lb, 0, 0, 0], |a, &c| plus(a, c));
        let minus = |a: Score, b: Score| [a[0], a[1] - b[1], a[2] - b[2], a[3] - b[3]];
        // Candidates: (items and their new primaries, how many), lazily in scan order.
        let moves = (0..n).flat_map(|x| order[x].iter().map(move |&m| ([(x, m); 2], 1)));
        let swaps = (0..n).flat_map(|x| ((x + 1)..n).map(move |y| ([(x, cur[y]), (y, cur[x])], 2)));
        for (pair, len) in moves.chain(swaps) {
            checks += 1;
            if checks > LOCAL_CHECKS {
                break 'scan;
            }
            let change = &pair[..len];
            let (x, m) = change[0];
            if change.iter().any(|&(y, m)| cur[y] == m) {
                continue;
            }
            if len == 1 {
                let a = cur[x];
                let ceil = shares[m].0 + usize::from(shares[m].1 != 0);
                if count[a] <= shares[a].0 || count[m] >= ceil {
                    continue;
                }
            }
            let bound = change
                .iter()
                .fold(base, |b, &(y, m)| plus(minus(b, costs[y]), table[y][m]));
            if bound >= best {
                continue;
            }
            let mut p2 = cur_v.clone();
            let mut sets2 = sets.clone();
            for &(y, m) in change {
                p2[y] = m;
                sets2[y] = reseat(s, y, &sets[y], m);
            }
            settle(s, &mut sets2, range);
            evals += 1;
            let got = score(s, &p2, &sets2, range);
            if got < best {
                best = got;
                *prim = p2;
                *sets = sets2;
                continue 'scan;
            }
            if evals >= LOCAL_EVALS {
                break 'scan;
            }
        }
        break;
    }
}

/// Item `x`'s replica set (primary first) with `m` as its new primary: `m` first, then the
/// others; where `m` was not in it, one replica goes (in `m`'s zone if the zone cap needs it,
/// else a new one before a live one, the last first).
fn reseat(s: &Setup, x: usize, set: &[usize], m: usize) -> Vec<usize> {
    let mut v = vec![m];
    v.extend(set.iter().copied().filter(|&o| o != m));
    if v.len() > s.items[x].1 {
        let z = s.zone_of[m];
        let full = v.iter().filter(|&&o| s.zone_of[o] == z).count() > s.caps[x];
        let pick = (1..v.len())
            .rev()
            .filter(|&i| !full || s.zone_of[v[i]] == z)
            .min_by_key(|&i| (s.was(x, v[i]), Reverse(i)))
            .expect("a replica besides the new primary");
        v.remove(pick);
    }
    v
}

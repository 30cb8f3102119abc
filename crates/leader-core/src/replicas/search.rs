//! Exact primaries on tiny inputs: a branch and bound over every primary choice that meets the
//! primary balance, each leaf's secondaries made exact by [`settle`], so the plan is the full
//! lexicographic minimum of (distance of the totals from their ranges, cold primaries,
//! primaries changed, secondaries moved).
//!
//! Why it is exact: for fixed primaries, [`settle`] gives the least (distance, secondaries
//! moved) over every placement of the secondaries (a min-cost flow), and cold and changed depend
//! on the primaries alone; the search visits every primary choice that meets the primary
//! balance except those a lower bound proves no better than the best plan found. The bound of
//! a partial choice: no lower distance than [`relaxed_distance`] (every replica free, the
//! primaries relaxed away), the cold and changed of the items chosen, and for every item its
//! cheapest (cold, changed, secondaries it must move) — the secondaries it must move being
//! `r − 1` less the live replicas it can keep beside its primary within the zone cap.
//! Lexicographic order is compatible with addition, so the sum of those is a lower bound.
//!
//! Items without a live replica and of equal `r` are interchangeable (swapping their whole
//! replica sets changes no cost): their primaries are taken in non-decreasing member order.
//!
//! The search starts from the phases' plan and replaces it only by a strictly better one, the
//! first found in a fixed order (items in id order, each item's members by (cost, member
//! hash)), so it is deterministic and leaves an optimal plan as it is.
//!
//! It runs when `M^n ≤` [`SEARCH_CHOICES`] and `n·M ≤` [`SEARCH_PAIRS`] (`n` items, `M` members
//! of positive weight): at most `SEARCH_CHOICES` leaves, each one [`settle`] on at most
//! `SEARCH_PAIRS` (item, member) pairs.

#![allow(clippy::many_single_char_names)] // flow notation: s the setup, x an item, m a member

#[allow(clippy::wildcard_imports)] // the parent module's types and helpers
use super::*;

use super::place::{keep_live, score, Setup};
use super::settle::{relaxed_distance, settle};

/// The largest `M^n` (members of positive weight to the power of the items) the search runs on.
pub(super) const SEARCH_CHOICES: usize = 4_096;

/// The largest `n·M` the search runs on.
pub(super) const SEARCH_PAIRS: usize = 32;

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

/// Replaces `prim` and `sets` (primary first) by the full lexicographic minimum, if the input
/// is within the search's size bounds and the phases' plan is not already it.
pub(super) fn search(
    s: &Setup,
    prim: &mut Vec<usize>,
    sets: &mut Vec<Vec<usize>>,
    range: &[(usize, usize)],
) {
    let (n, mm) = (s.items.len(), s.members());
    if !searched(n, mm) {
        return;
    }
    let best = score(s, prim, sets, range);
    let viol_lb = relaxed_distance(s, sets, range);
    // Per item: its candidate primaries with their costs [0, cold, changed, least moved].
    let cands: Vec<Vec<(usize, Score)>> = (0..n)
        .map(|x| {
            let mut c: Vec<(Score, u64, usize)> = (0..mm)
                .map(|m| (cost(s, x, m), stable_hash(s.ids[m]), m))
                .collect();
            c.sort_unstable();
            c.into_iter().map(|(c, _, m)| (m, c)).collect()
        })
        .collect();
    let mut rest = vec![[viol_lb, 0, 0, 0]; n + 1];
    for x in (0..n).rev() {
        rest[x] = plus(rest[x + 1], cands[x][0].1);
    }
    if rest[0] >= best {
        return;
    }
    let mut prev_same = vec![NONE; n];
    for x in 0..n {
        if !s.live(x) {
            prev_same[x] = (0..x)
                .rev()
                .find(|&y| !s.live(y) && s.items[y].1 == s.items[x].1)
                .unwrap_or(NONE);
        }
    }
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
    };
    b.dfs(0, [0; 4]);
    if let Some((p, st)) = b.found {
        *prim = p;
        *sets = st;
    }
}

/// Item `x` with primary `m`: [0, cold, changed, the secondaries it must move at least].
fn cost(s: &Setup, x: usize, m: usize) -> Score {
    if !s.live(x) {
        return [0, 0, usize::from(s.had_primary[x]), 0];
    }
    let cold = usize::from(!s.was(x, m));
    let changed = usize::from(s.had_primary[x] && s.old_p[x] != m);
    // The live replicas other than m it can keep beside m: per zone, up to the zone cap less
    // m's replica there.
    let mut inz = vec![0usize; s.zone_sizes.len()];
    for o in std::iter::once(s.old_p[x]).chain(s.old_s[x].iter().copied()) {
        if o != NONE && o != m {
            inz[s.zone_of[o]] += 1;
        }
    }
    let keep: usize = inz
        .iter()
        .enumerate()
        .map(|(z, &k)| k.min(s.caps[x] - usize::from(s.zone_of[m] == z)))
        .sum();
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
}

impl Bnb<'_, '_> {
    fn dfs(&mut self, x: usize, acc: Score) {
        if plus(acc, self.rest[x]) >= self.best {
            return;
        }
        let n = self.cur.len();
        if x == n {
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
        let (mut sets, _) = keep_live(s, &self.cur);
        let mut load = vec![0usize; s.members()];
        for set in &sets {
            for &o in set {
                load[o] += 1;
            }
        }
        // A valid start (any member with zone room; the least loaded against its range first),
        // then the exact pass.
        for (x, set) in sets.iter_mut().enumerate() {
            while set.len() < s.items[x].1 {
                let m = (0..s.members())
                    .filter(|&m| {
                        !set.contains(&m) && {
                            let z = s.zone_of[m];
                            set.iter().filter(|&&o| s.zone_of[o] == z).count() < s.caps[x]
                        }
                    })
                    .min_by_key(|&m| (load[m] >= self.range[m].1, load[m], m))
                    .expect("the zone cap leaves room for r replicas");
                set.push(m);
                load[m] += 1;
            }
        }
        settle(s, &mut sets, self.range);
        let got = score(s, &self.cur, &sets, self.range);
        if got < self.best {
            self.best = got;
            self.found = Some((self.cur.clone(), sets));
        }
    }
}

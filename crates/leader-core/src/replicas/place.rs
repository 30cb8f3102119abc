//! The planner's body: the inputs indexed ([`Setup`]), then the phases in order (primaries,
//! total targets, secondaries, repair) and the key diff, each in its own module.

#[allow(clippy::wildcard_imports)] // the parent module's types and helpers
use super::*;

use super::diff::output;
use super::primaries::choose_primaries;
use super::search::search;
use super::secondaries::place_secondaries;
use super::settle::{settle, EXACT_PAIRS};
use super::targets::total_targets;

/// The inputs, indexed: members of positive weight by index (id order), zones, items with
/// their replica counts, and each item's old live replicas.
pub(super) struct Setup<'a> {
    /// Members of positive weight, in id order.
    pub(super) ids: Vec<&'a MemberId>,
    /// Their weights, and the total.
    pub(super) wts: Vec<u32>,
    pub(super) total: u128,
    /// Items (id order) with `r = min(N, M)`.
    pub(super) items: Vec<(&'a WorkId, usize)>,
    /// Per member: its zone index; per zone: its size.
    pub(super) zone_of: Vec<usize>,
    pub(super) zone_sizes: Vec<usize>,
    /// Per item: its zone cap.
    pub(super) caps: Vec<usize>,
    /// Per item: the old primary if live (else `NONE`), the live secondaries (distinct, not the
    /// primary), and whether it had a primary at all (live or gone).
    pub(super) old_p: Vec<usize>,
    pub(super) old_s: Vec<Vec<usize>>,
    pub(super) had_primary: Vec<bool>,
    /// Members in order of `(stable_hash, index)`.
    pub(super) order: Vec<(u64, usize)>,
}

impl<'a> Setup<'a> {
    fn new(
        items: &'a BTreeMap<WorkId, u32>,
        members: &'a BTreeMap<MemberId, ReplicaMember>,
        current: &ReplicaAssignment,
    ) -> Self {
        let elig: Vec<(&MemberId, &ReplicaMember)> =
            members.iter().filter(|(_, m)| m.weight > 0).collect();
        let ids: Vec<&MemberId> = elig.iter().map(|e| e.0).collect();
        let mm = ids.len();
        let item_v: Vec<(&WorkId, usize)> = items
            .iter()
            .map(|(w, &r)| (w, (r.max(1) as usize).min(mm)))
            .collect();
        let n = item_v.len();
        // Member lookups by id (a hash map only for lookups: nothing depends on its order).
        let index: HashMap<&str, usize> = ids.iter().enumerate().map(|(i, m)| (&***m, i)).collect();
        let find = |m: &MemberId| index.get(&**m).copied();

        let mut zone_ix: BTreeMap<Option<&Arc<str>>, usize> = BTreeMap::new();
        for e in &elig {
            let k = zone_ix.len();
            zone_ix.entry(e.1.zone.as_ref()).or_insert(k);
        }
        let zone_of: Vec<usize> = elig.iter().map(|e| zone_ix[&e.1.zone.as_ref()]).collect();
        let mut zone_sizes = vec![0usize; zone_ix.len()];
        for &z in &zone_of {
            zone_sizes[z] += 1;
        }

        let mut old_p = vec![NONE; n];
        let mut old_s: Vec<Vec<usize>> = vec![Vec::new(); n];
        let mut had_primary = vec![false; n];
        let mut cur = current.iter().peekable();
        for (x, (w, _)) in item_v.iter().enumerate() {
            while cur.next_if(|&(c, _)| c < *w).is_some() {}
            if let Some((_, reps)) = cur.next_if(|&(c, _)| c == *w) {
                had_primary[x] = reps.primary.is_some();
                if let Some(p) = reps.primary.as_ref().and_then(find) {
                    old_p[x] = p;
                }
                for s in reps.secondaries.iter().filter_map(find) {
                    if s != old_p[x] && !old_s[x].contains(&s) {
                        old_s[x].push(s);
                    }
                }
            }
        }
        let caps = item_v.iter().map(|i| zone_cap(i.1, &zone_sizes)).collect();
        let mut order: Vec<(u64, usize)> = (0..mm).map(|m| (stable_hash(ids[m]), m)).collect();
        order.sort_unstable();
        let wts: Vec<u32> = elig.iter().map(|e| e.1.weight).collect();
        Setup {
            total: wts.iter().map(|&w| u128::from(w)).sum(),
            wts,
            ids,
            items: item_v,
            zone_of,
            zone_sizes,
            caps,
            old_p,
            old_s,
            had_primary,
            order,
        }
    }

    pub(super) fn members(&self) -> usize {
        self.ids.len()
    }

    /// Whether item `x` had a live replica.
    pub(super) fn live(&self, x: usize) -> bool {
        self.old_p[x] != NONE || !self.old_s[x].is_empty()
    }

    /// Whether member `m` held a live replica of item `x`.
    pub(super) fn was(&self, x: usize, m: usize) -> bool {
        self.old_p[x] == m || self.old_s[x].contains(&m)
    }

    /// `R = Σ r`.
    pub(super) fn big_r(&self) -> usize {
        self.items.iter().map(|i| i.1).sum()
    }

    /// Per member: `floor(R·w/W)` and the remainder.
    pub(super) fn total_shares(&self) -> Vec<(usize, u128)> {
        let big_r = self.big_r();
        self.wts
            .iter()
            .map(|&w| share(big_r, w, self.total))
            .collect()
    }

    /// Per replica count `r` (0 to the largest), per zone: whether an item of `r` replicas must
    /// fill the zone completely (every member of the zone holds one of its replicas).
    pub(super) fn forced_by_r(&self) -> Vec<Vec<bool>> {
        let max_r = self.items.iter().map(|i| i.1).max().unwrap_or(0);
        (0..=max_r)
            .map(|r| {
                let c = zone_cap(r, &self.zone_sizes);
                let all: usize = self.zone_sizes.iter().map(|&s| s.min(c)).sum();
                self.zone_sizes
                    .iter()
                    .map(|&s| r.saturating_sub(all - s.min(c)) >= s)
                    .collect()
            })
            .collect()
    }
}

/// The primary quotas: per member its floor and whether it may take one more, and how many
/// members take one more in all.
pub(super) struct PrimaryQuota {
    pub(super) floor: Vec<usize>,
    pub(super) frac: Vec<bool>,
    pub(super) ceils: usize,
}

pub(super) fn plan_with(
    items: &BTreeMap<WorkId, u32>,
    members: &BTreeMap<MemberId, ReplicaMember>,
    current: &ReplicaAssignment,
    opts: Opts,
) -> ReplicaPlan {
    let s = Setup::new(items, members, current);
    let n = s.items.len();
    if s.members() == 0 {
        return output(&s, current, &vec![NONE; n], &vec![Vec::new(); n]);
    }
    let (prim, sets, _) = phases(&s, opts);
    output(&s, current, &prim, &sets)
}

/// Every phase: [`solve`]; on inputs of at most [`EXACT_PAIRS`] pairs, also without the soft
/// caps (the better plan kept), then the search over the primaries.
fn phases(s: &Setup, opts: Opts) -> Solved {
    let n = s.items.len();
    let (mut prim, mut sets, range) = solve(s, opts);
    if opts.repair && n * s.members() <= EXACT_PAIRS {
        let alt_opts = Opts {
            ports: !opts.ports,
            ..opts
        };
        let (alt_prim, alt_sets, _) = solve(s, alt_opts);
        if score(s, &alt_prim, &alt_sets, &range) < score(s, &prim, &sets, &range) {
            (prim, sets) = (alt_prim, alt_sets);
        }
        search(s, &mut prim, &mut sets, &range);
    }
    (prim, sets, range)
}

/// For the tests: the planner's score (distance of the totals from their ranges, cold,
/// changed, secondaries moved) and the exact one (the branch and bound, whatever the size).
#[cfg(test)]
pub(super) fn against_exact(
    items: &BTreeMap<WorkId, u32>,
    members: &BTreeMap<MemberId, ReplicaMember>,
    current: &ReplicaAssignment,
) -> ([usize; 4], [usize; 4]) {
    let s = Setup::new(items, members, current);
    let opts = Opts {
        ports: true,
        repair: true,
    };
    let (mut prim, mut sets, range) = phases(&s, opts);
    let got = score(&s, &prim, &sets, &range);
    if let Some(c) = super::search::Costs::new(&s, &prim, &sets, &range) {
        super::search::exact(&s, &c, &mut prim, &mut sets, &range, usize::MAX, usize::MAX);
    }
    (got, score(&s, &prim, &sets, &range))
}

/// Primaries, sets and total ranges (see [`solve`]).
type Solved = (Vec<usize>, Vec<Vec<usize>>, Vec<(usize, usize)>);

/// One run of the phases: the primaries, the sets (primary first) and the members' total
/// ranges.
fn solve(s: &Setup, opts: Opts) -> Solved {
    let (mut prim, quota) = choose_primaries(s, opts);
    let (mut sets, held) = keep_live(s, &prim);
    let trange = total_targets(s, &prim, &held);
    place_secondaries(s, &prim, &mut sets, held, &trange);
    if opts.repair {
        repair_totals(
            &mut sets,
            &mut prim,
            &trange.range,
            &quota,
            &s.zone_of,
            &s.caps,
        );
        polish(&mut sets, &trange.range, s);
        polish_roles(&mut sets, &mut prim, &quota, s);
        if settle(s, &mut sets, &trange.range) {
            polish_roles(&mut sets, &mut prim, &quota, s);
            settle(s, &mut sets, &trange.range);
        }
    }
    (prim, sets, trange.range)
}

/// A plan's rank: the total distance of the members' totals from their ranges, then cold
/// primaries, primaries changed, secondaries moved (lower is better).
pub(super) fn score(
    s: &Setup,
    prim: &[usize],
    sets: &[Vec<usize>],
    range: &[(usize, usize)],
) -> [usize; 4] {
    let mut load = vec![0usize; s.members()];
    let mut r = [0usize; 4];
    for (x, set) in sets.iter().enumerate() {
        for &o in set {
            load[o] += 1;
        }
        if s.live(x) {
            r[1] += usize::from(!s.was(x, prim[x]));
            r[3] += set[1..].iter().filter(|&&m| !s.was(x, m)).count();
        }
        r[2] += usize::from(s.had_primary[x] && s.old_p[x] != prim[x]);
    }
    r[0] = (0..s.members())
        .map(|m| range[m].0.saturating_sub(load[m]) + load[m].saturating_sub(range[m].1))
        .sum();
    r
}

/// Each item's replica set starts with its primary and keeps its live replicas (old primary
/// first) that the zone cap allows. Returns the sets and, per member, the items it keeps a
/// secondary of.
fn keep_live(s: &Setup, prim: &[usize]) -> (Vec<Vec<usize>>, Vec<Vec<usize>>) {
    let n = s.items.len();
    let mut sets: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut held: Vec<Vec<usize>> = vec![Vec::new(); s.members()];
    for x in 0..n {
        let p = prim[x];
        sets[x].push(p);
        let want = s.items[x].1;
        let cands = std::iter::once(s.old_p[x]).chain(s.old_s[x].iter().copied());
        for m in cands {
            if m == NONE || m == p || sets[x].len() >= want {
                continue;
            }
            let inz = sets[x]
                .iter()
                .filter(|&&o| s.zone_of[o] == s.zone_of[m])
                .count();
            if inz < s.caps[x] {
                sets[x].push(m);
                held[m].push(x);
            }
        }
    }
    (sets, held)
}

//! The balance repair and the polish passes: the replicas' totals brought to their quotas,
//! dropped live replicas taken back, and the primary role given to a replica that had the data.

#[allow(clippy::wildcard_imports)] // the parent module's types and helpers
use super::*;

use super::place::{PrimaryQuota, Setup};

/// How many (item, member) pairs the balance repair may look at, per replica in the plan
/// (plus a fixed 100,000), so that it stays cheap where the balance cannot be reached.
pub(super) const REPAIR_BUDGET: usize = 1;

/// The state of the balance repair.
pub(super) struct Repair<'a> {
    pub(super) sets: &'a mut [Vec<usize>],
    pub(super) prim: &'a mut [usize],
    pub(super) load: Vec<usize>,
    pub(super) pload: Vec<usize>,
    pub(super) tfloor: Vec<usize>,
    pub(super) tceil: Vec<usize>,
    pub(super) pfloor: &'a [usize],
    pub(super) pfrac: &'a [bool],
    pub(super) pceils: usize,
    pub(super) zone_of: &'a [usize],
    pub(super) caps: &'a [usize],
}

impl Repair<'_> {
    /// Whether moving a replica from `o` to `u` lowers the imbalance.
    pub(super) fn helps(&self, o: usize, u: usize) -> bool {
        (self.load[o] > self.tceil[o] && self.load[u] < self.tceil[u])
            || (self.load[o] > self.tfloor[o] && self.load[u] < self.tfloor[u])
    }

    /// Whether the primary counts stay balanced if `from` loses a primary and `to` gains one.
    pub(super) fn primary_ok(&self, from: usize, to: usize) -> bool {
        if from == to {
            return true;
        }
        let after = |m: usize| self.pload[m] + usize::from(m == to) - usize::from(m == from);
        if after(from) < self.pfloor[from] {
            return false;
        }
        let t = after(to);
        if t > self.pfloor[to] + usize::from(self.pfrac[to]) {
            return false;
        }
        let used = (0..self.pload.len())
            .filter(|&m| after(m) > self.pfloor[m])
            .count();
        used <= self.pceils
    }

    /// Whether `u` may take `o`'s place in item `x`'s set (distinct members, zone cap).
    pub(super) fn fits(&self, x: usize, o: usize, u: usize) -> bool {
        !self.sets[x].contains(&u)
            && self.sets[x]
                .iter()
                .filter(|&&v| v != o && self.zone_of[v] == self.zone_of[u])
                .count()
                < self.caps[x]
    }

    pub(super) fn set_primary(&mut self, x: usize, p: usize) {
        let old = self.prim[x];
        self.pload[old] -= 1;
        self.pload[p] += 1;
        self.prim[x] = p;
        let pos = self.sets[x].iter().position(|&v| v == p).expect("p in x");
        self.sets[x].swap(0, pos);
    }

    pub(super) fn replace(&mut self, x: usize, o: usize, u: usize) {
        let pos = self.sets[x].iter().position(|&v| v == o).expect("o in x");
        self.sets[x][pos] = u;
        if self.prim[x] == o {
            self.prim[x] = u;
            self.pload[o] -= 1;
            self.pload[u] += 1;
        }
        self.load[o] -= 1;
        self.load[u] += 1;
    }
}

/// Restores the total balance where the primaries or the greedy placement left it off: a
/// replica of an item moves from a member above its range to one below, keeping the zone rule
/// and the primary balance. Moves, in order of preference: a secondary; a primary after
/// handing the primary role to another replica of the item; a primary, with a role swap in
/// another item when the primary counts need it. The work is bounded by [`REPAIR_BUDGET`]
/// items per replica.
pub(super) fn repair_totals(
    sets: &mut [Vec<usize>],
    prim: &mut [usize],
    trange: &[(usize, usize)],
    quota: &PrimaryQuota,
    zone_of: &[usize],
    caps: &[usize],
) {
    let mm = trange.len();
    let mut r = Repair {
        load: vec![0; mm],
        pload: vec![0; mm],
        tfloor: trange.iter().map(|t| t.0).collect(),
        tceil: trange.iter().map(|t| t.1).collect(),
        sets,
        prim,
        pfloor: &quota.floor,
        pfrac: &quota.frac,
        pceils: quota.ceils,
        zone_of,
        caps,
    };
    for set in r.sets.iter() {
        for &o in set {
            r.load[o] += 1;
        }
    }
    for &p in r.prim.iter() {
        r.pload[p] += 1;
    }
    let bad = |r: &Repair| (0..mm).any(|m| r.load[m] > r.tceil[m] || r.load[m] < r.tfloor[m]);
    if !bad(&r) {
        return;
    }
    let mut budget = REPAIR_BUDGET * r.sets.iter().map(Vec::len).sum::<usize>() + 100_000;
    let mut on: Vec<Vec<usize>> = vec![Vec::new(); mm];
    for (x, set) in r.sets.iter().enumerate() {
        for &o in set {
            on[o].push(x);
        }
    }
    while bad(&r) {
        let mut moved = false;
        'search: for o in 0..mm {
            let unders: Vec<usize> = (0..mm).filter(|&u| r.helps(o, u)).collect();
            if unders.is_empty() {
                continue;
            }
            // (kind, x, u, other): kind 0 secondary, 1 role handed to `other` in x, 2 primary
            // to u, 3 primary to u with a role swap in item `other`.
            let mut best: Option<(u8, usize, usize, usize)> = None;
            budget = budget.saturating_sub(mm);
            for &x in &on[o] {
                budget = budget.saturating_sub(unders.len());
                if budget == 0 {
                    return;
                }
                for &u in &unders {
                    if !r.fits(x, o, u) {
                        continue;
                    }
                    let cand = if r.prim[x] != o {
                        Some((0, x, u, 0))
                    } else if let Some(&v) = r.sets[x][1..].iter().find(|&&v| r.primary_ok(o, v)) {
                        Some((1, x, u, v))
                    } else if r.primary_ok(o, u) {
                        Some((2, x, u, 0))
                    } else {
                        // A role swap in an item y whose primary is u and which has a
                        // replica on o: y's primary becomes o, so u's count stays.
                        on[u]
                            .iter()
                            .find(|&&y| y != x && r.prim[y] == u && r.sets[y].contains(&o))
                            .map(|&y| (3, x, u, y))
                    };
                    if let Some(c) = cand {
                        if best.is_none_or(|b| c < b) {
                            best = Some(c);
                        }
                        if c.0 == 0 {
                            break;
                        }
                    }
                }
                if best.is_some_and(|b| b.0 == 0) {
                    break;
                }
            }
            if let Some((kind, x, u, other)) = best {
                match kind {
                    1 => r.set_primary(x, other),
                    3 => r.set_primary(other, o),
                    _ => {}
                }
                r.replace(x, o, u);
                on[o].retain(|&y| y != x);
                on[u].push(x);
                moved = true;
                break 'search;
            }
        }
        if !moved && !r.chain(&mut on, &mut budget) {
            return;
        }
    }
}

impl Repair<'_> {
    /// A chain of secondary moves `o → v₁ → … → u` (breadth first over members): each step
    /// moves one item's secondary on to the next member, so only the ends change their totals.
    /// Returns whether it found and applied one.
    pub(super) fn chain(&mut self, on: &mut [Vec<usize>], budget: &mut usize) -> bool {
        let mm = self.load.len();
        for o in 0..mm {
            if !(0..mm).any(|u| self.helps(o, u)) {
                continue;
            }
            let mut parent: Vec<Option<(usize, usize)>> = vec![None; mm]; // (member, item)
            let mut seen = vec![false; mm];
            seen[o] = true;
            let mut queue = VecDeque::from([o]);
            while let Some(a) = queue.pop_front() {
                for &x in &on[a] {
                    if self.prim[x] == a {
                        continue;
                    }
                    for b in 0..mm {
                        if *budget == 0 {
                            return false;
                        }
                        *budget -= 1;
                        if seen[b] || !self.fits(x, a, b) {
                            continue;
                        }
                        seen[b] = true;
                        parent[b] = Some((a, x));
                        if self.helps(o, b) {
                            // Apply from the end back to o, checking each step again.
                            let mut steps = Vec::new();
                            let mut v = b;
                            while v != o {
                                let (a, x) = parent[v].expect("on the path");
                                steps.push((x, a, v));
                                v = a;
                            }
                            let mut done = Vec::new();
                            for &(x, a, v) in &steps {
                                if !self.sets[x].contains(&a) || !self.fits(x, a, v) {
                                    for &(x, a, v) in done.iter().rev() {
                                        self.replace(x, v, a);
                                    }
                                    return false;
                                }
                                self.replace(x, a, v);
                                done.push((x, a, v));
                            }
                            for &(x, a, v) in &steps {
                                on[a].retain(|&y| y != x);
                                on[v].push(x);
                            }
                            return true;
                        }
                        queue.push_back(b);
                    }
                }
            }
        }
        false
    }
}

/// Takes back live replicas the greedy steps dropped: a new secondary `u` of an item gives way
/// to one of the item's former live replicas `v` when `v` is below the top of its range, `u`
/// above the bottom of its own, and the zone cap allows it. Never worsens the balance.
/// `O(n·N²)`.
pub(super) fn polish(sets: &mut [Vec<usize>], trange: &[(usize, usize)], s: &Setup) {
    let (zone_of, caps, old_p, old_s) = (&s.zone_of, &s.caps, &s.old_p, &s.old_s);
    let mut load = vec![0usize; trange.len()];
    for set in sets.iter() {
        for &o in set {
            load[o] += 1;
        }
    }
    for (x, set) in sets.iter_mut().enumerate() {
        let was = |m: usize| old_p[x] == m || old_s[x].contains(&m);
        let live = std::iter::once(old_p[x]).chain(old_s[x].iter().copied());
        for v in live {
            if v == NONE || set.contains(&v) || load[v] >= trange[v].1 {
                continue;
            }
            for pos in 1..set.len() {
                let u = set[pos];
                if was(u) || load[u] <= trange[u].0 {
                    continue;
                }
                let inz = set
                    .iter()
                    .filter(|&&o| o != u && zone_of[o] == zone_of[v])
                    .count();
                if inz < caps[x] {
                    set[pos] = v;
                    load[u] -= 1;
                    load[v] += 1;
                    break;
                }
            }
        }
    }
}

/// Hands a primary role to another replica of the same item where that makes fewer cold or
/// changed primaries and the primary balance allows it (the replica sets, and so the totals,
/// stay as they are). `O(n·N + M)`.
pub(super) fn polish_roles(
    sets: &mut [Vec<usize>],
    prim: &mut [usize],
    quota: &PrimaryQuota,
    s: &Setup,
) {
    let (pfloor, pfrac, pceils) = (&quota.floor, &quota.frac, quota.ceils);
    let (old_p, old_s, had_primary) = (&s.old_p, &s.old_s, &s.had_primary);
    let mut pload = vec![0usize; pfloor.len()];
    for &p in prim.iter() {
        pload[p] += 1;
    }
    let mut used = (0..pload.len()).filter(|&m| pload[m] > pfloor[m]).count();
    for x in 0..sets.len() {
        let live = old_p[x] != NONE || !old_s[x].is_empty();
        let cost = |m: usize| {
            let cold = live && old_p[x] != m && !old_s[x].contains(&m);
            (cold, had_primary[x] && old_p[x] != m)
        };
        let p = prim[x];
        let mut best: Option<(bool, bool, usize)> = None;
        for &v in &sets[x][1..] {
            let c = cost(v);
            if c >= cost(p) {
                continue;
            }
            // p loses a primary, v gains one: both stay within their range, and the number of
            // members above their floor stays within the ceil slots.
            if pload[p] == pfloor[p] || pload[v] > pfloor[v] || (pload[v] == pfloor[v] && !pfrac[v])
            {
                continue;
            }
            let frees = usize::from(pload[p] > pfloor[p]);
            let takes = usize::from(pload[v] == pfloor[v]);
            if used + takes - frees > pceils {
                continue;
            }
            if best.is_none_or(|b| (c.0, c.1, v) < b) {
                best = Some((c.0, c.1, v));
            }
        }
        if let Some((.., v)) = best {
            used = used + usize::from(pload[v] == pfloor[v]) - usize::from(pload[p] > pfloor[p]);
            pload[p] -= 1;
            pload[v] += 1;
            prim[x] = v;
            let pos = sets[x].iter().position(|&o| o == v).expect("v in x");
            sets[x].swap(0, pos);
        }
    }
}

/// The first ring position at or after `i` whose member has room (`next[i] == i`), with path
/// compression; `next.len() − 1` is the end sentinel.
pub(super) fn next_with_room(next: &mut [usize], i: usize) -> usize {
    let mut r = i;
    while next[r] != r {
        r = next[r];
    }
    let mut j = i;
    while next[j] != r {
        let k = next[j];
        next[j] = r;
        j = k;
    }
    r
}

//! Phase 2: the secondaries. Over-quota members shed kept secondaries; the missing ones are
//! dealt over a ring of the members with room, each primary with its own cursor; a stuck one
//! tries a bounded one-step exchange, else overflows onto the allowed member least over target.

#[allow(clippy::wildcard_imports)] // the parent module's types and helpers
use super::*;

use super::place::Setup;
use super::targets::Targets;

/// The dealing state: the sets, and per member its room and the ring's "next with room".
struct Dealer<'s, 'a> {
    s: &'s Setup<'a>,
    sets: &'s mut [Vec<usize>],
    target: &'s [usize],
    /// Members with room in hash order, and each member's position there.
    ring: Vec<usize>,
    ring_pos: Vec<usize>,
    roomv: Vec<usize>,
    next: Vec<usize>,
    /// Per member, the items it holds a secondary of (built at the first exchange).
    sec_on: Vec<Vec<usize>>,
    /// Per member, its total (built at the first overflow).
    load: Vec<usize>,
    /// (item, member) pairs the exchanges may still look at.
    ex_budget: usize,
}

/// Fills every item's set up to `r` replicas from what [`keep_live`](super::place) kept:
/// members above their target shed the kept secondaries of largest item hash, then the missing
/// secondaries are dealt in item-hash order.
pub(super) fn place_secondaries(
    s: &Setup,
    prim: &[usize],
    sets: &mut [Vec<usize>],
    mut held: Vec<Vec<usize>>,
    t: &Targets,
) {
    let mm = s.members();
    let mut pcount = vec![0usize; mm];
    for &p in prim {
        pcount[p] += 1;
    }
    shed_over_target(s, sets, &mut held, &pcount, &t.target);
    let mut pool: Vec<(u64, usize)> = Vec::new();
    for (x, set) in sets.iter().enumerate() {
        let h = stable_hash(s.items[x].0);
        for _ in set.len()..s.items[x].1 {
            pool.push((h, x));
        }
    }
    pool.sort_unstable();
    // Members on a ring in hash order. Each primary has its own cursor on the ring, so the
    // secondaries of one member's items spread over all the others (a dead member's
    // primaries then promote on many members); full members are skipped by a union-find
    // "next with room" pointer.
    let ring: Vec<usize> = s.order.iter().map(|o| o.1).collect();
    let mut ring_pos = vec![0usize; mm];
    for (i, &m) in ring.iter().enumerate() {
        ring_pos[m] = i;
    }
    let roomv: Vec<usize> = (0..mm)
        .map(|m| t.target[m].saturating_sub(pcount[m] + held[m].len()))
        .collect();
    let mut next: Vec<usize> = (0..=mm).collect();
    for (i, &m) in ring.iter().enumerate() {
        if roomv[m] == 0 {
            next[i] = i + 1;
        }
    }
    let mut d = Dealer {
        s,
        sets,
        target: &t.target,
        ring,
        ring_pos,
        roomv,
        next,
        sec_on: Vec::new(),
        load: Vec::new(),
        ex_budget: 4 * s.big_r() + 100_000,
    };
    let mut cursor: Vec<usize> = (0..mm).map(|p| (d.ring_pos[p] + 1) % mm).collect();
    for (_, x) in pool {
        if let Some(j) = d.on_ring(x, cursor[prim[x]]) {
            d.put(x, d.ring[j]);
            cursor[prim[x]] = (j + 1) % mm;
        } else if !d.exchange(x) {
            d.overflow(x);
        }
    }
}

/// Members above their target shed the kept secondaries of largest item hash.
fn shed_over_target(
    s: &Setup,
    sets: &mut [Vec<usize>],
    held: &mut [Vec<usize>],
    pcount: &[usize],
    target: &[usize],
) {
    for m in 0..s.members() {
        let k = pcount[m] + held[m].len();
        if k > target[m] {
            let mut keyed: Vec<(u64, usize)> = held[m]
                .iter()
                .map(|&x| (stable_hash(s.items[x].0), x))
                .collect();
            keyed.sort_unstable();
            let keep = target[m].saturating_sub(pcount[m]);
            for &(_, x) in &keyed[keep..] {
                sets[x].retain(|&o| o != m);
            }
            held[m] = keyed[..keep].iter().map(|e| e.1).collect();
        }
    }
}

impl Dealer<'_, '_> {
    /// Whether `m` may join item `x`'s set (distinct members, zone cap).
    fn allowed(&self, x: usize, m: usize) -> bool {
        let z = self.s.zone_of[m];
        !self.sets[x].contains(&m)
            && self.sets[x]
                .iter()
                .filter(|&&o| self.s.zone_of[o] == z)
                .count()
                < self.s.caps[x]
    }

    /// The first ring position from `start` on (wrapping once) whose member has room and is
    /// allowed for `x`.
    fn on_ring(&mut self, x: usize, start: usize) -> Option<usize> {
        let mm = self.ring.len();
        let mut i = start;
        let mut wrapped = false;
        loop {
            let j = next_with_room(&mut self.next, i);
            if j == mm {
                if wrapped {
                    return None;
                }
                wrapped = true;
                i = 0;
                continue;
            }
            if wrapped && j >= start {
                return None;
            }
            if self.allowed(x, self.ring[j]) {
                return Some(j);
            }
            i = j + 1;
        }
    }

    /// `m` takes a secondary of `x` (within its room).
    fn put(&mut self, x: usize, m: usize) {
        self.sets[x].push(m);
        if !self.sec_on.is_empty() {
            self.sec_on[m].push(x);
        }
        if !self.load.is_empty() {
            self.load[m] += 1;
        }
        self.take_room(m);
    }

    fn take_room(&mut self, m: usize) {
        self.roomv[m] -= 1;
        if self.roomv[m] == 0 {
            let j = self.ring_pos[m];
            self.next[j] = j + 1;
        }
    }

    /// Stuck: one-step exchange. A member `a` allowed for x gives one of its secondaries `y`
    /// to a member `b` with room allowed for y; x takes a's place. The search is bounded
    /// ([`EXCHANGE_TRIES`] members `a`, and the pair budget), so it stays cheap.
    fn exchange(&mut self, x: usize) -> bool {
        if self.sec_on.is_empty() {
            self.sec_on = vec![Vec::new(); self.ring.len()];
            for (y, set) in self.sets.iter().enumerate() {
                for &o in &set[1..] {
                    self.sec_on[o].push(y);
                }
            }
        }
        let tries: Vec<usize> = self
            .s
            .order
            .iter()
            .map(|o| o.1)
            .filter(|&a| self.allowed(x, a))
            .take(EXCHANGE_TRIES)
            .collect();
        for a in tries {
            for yi in 0..self.sec_on[a].len() {
                let y = self.sec_on[a][yi];
                if y == x || !self.sets[y][1..].contains(&a) {
                    continue;
                }
                for bi in 0..self.ring.len() {
                    let b = self.ring[bi];
                    if self.roomv[b] == 0 {
                        continue;
                    }
                    if self.ex_budget == 0 {
                        return false;
                    }
                    self.ex_budget -= 1;
                    let zb = self.s.zone_of[b];
                    let ok = !self.sets[y].contains(&b)
                        && (zb == self.s.zone_of[a]
                            || self.sets[y]
                                .iter()
                                .filter(|&&o| self.s.zone_of[o] == zb)
                                .count()
                                < self.s.caps[y]);
                    if ok {
                        let pos = self.sets[y].iter().position(|&o| o == a).expect("a in y");
                        self.sets[y][pos] = b;
                        self.sec_on[b].push(y);
                        if !self.load.is_empty() {
                            self.load[b] += 1;
                        }
                        self.sets[x].push(a);
                        self.sec_on[a][yi] = x;
                        self.take_room(b);
                        return true;
                    }
                }
            }
        }
        false
    }

    /// No balanced place: the zone rule wins over the total balance. The replica goes to the
    /// allowed member least over its target.
    fn overflow(&mut self, x: usize) {
        if self.load.is_empty() {
            self.load = vec![0usize; self.ring.len()];
            for set in self.sets.iter() {
                for &o in set {
                    self.load[o] += 1;
                }
            }
        }
        let a = self
            .s
            .order
            .iter()
            .map(|o| o.1)
            .filter(|&a| self.allowed(x, a))
            .min_by_key(|&a| self.load[a] as i128 - self.target[a] as i128)
            .expect("the zone cap leaves a member for every replica");
        self.sets[x].push(a);
        self.load[a] += 1;
        if !self.sec_on.is_empty() {
            self.sec_on[a].push(x);
        }
    }
}

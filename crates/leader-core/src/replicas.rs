//! The replica planner: one primary and `N − 1` secondaries per item, spread over failure
//! domains (zones). A pure, deterministic function like [`plan()`](crate::plan()), which stays
//! the single-owner default.
//!
//! [`plan_replicas`] maps (items with their wanted replica counts, live members with weight and
//! zone, current replica state) to a new replica state. The rule, in priority order:
//!
//! 1. **Hard constraints.** Every item gets `r = min(N, M)` replicas on distinct members (`M`
//!    the members of positive weight): one primary and `r − 1` secondaries. In every zone the
//!    item has at most `c` replicas, `c` the smallest cap with `Σ_zones min(size, c) ≥ r`: one
//!    per zone when there are at least `r` zones, otherwise spread as evenly as the zone sizes
//!    allow. Members without a zone (`zone: None`) together form one zone.
//! 2. **Balance.** Member `i` is primary of `floor(n·wᵢ/W)` or `ceil(n·wᵢ/W)` items, and holds
//!    `floor(R·wᵢ/W)` or `ceil(R·wᵢ/W)` replicas in all (`R = Σ r`), as [`quotas`](crate::quotas).
//!    The primary balance always holds. The total balance holds whenever the greedy placement
//!    (with one-step exchanges) finds room; where the zone and distinct-member rules make it
//!    impossible (e.g. a zone of one member and `N = 2`) the zone rule wins.
//! 3. **Fewest moves**, lexicographically: cold primaries (the new primary held no replica of
//!    the item), then primaries changed, then secondaries moved. Primaries are chosen by an
//!    exact min-cost flow over the items' live replicas, so (cold, changed) is the minimum over
//!    every primary-balanced choice of primaries; secondaries then keep every live replica that
//!    the zone cap and the total quotas allow (fewest moves for the chosen primaries, like
//!    [`plan()`](crate::plan())).
//! 4. **Deterministic and idempotent.** Only `BTreeMap` order and [`stable_hash`] break ties.
//!
//! Cost: `O((n·N + M) log(n·N + M) + k·A)` where `k` is the number of items whose primary cannot
//! stay (dead or over quota) and `A` the part of the flow graph one shortest-path search visits
//! (in practice a few members and their items); see `docs/planner.md`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::sync::Arc;

use worker_core::WorkId;

use crate::plan::{stable_hash, MemberId};

/// A member as the replica planner sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReplicaMember {
    /// Its weight: its share of primaries and of replicas. 0 takes nothing (draining).
    pub weight: u32,
    /// Its failure domain. Members with `None` together form one zone of their own.
    pub zone: Option<Arc<str>>,
}

impl ReplicaMember {
    /// A member of `weight` in `zone`.
    pub fn new(weight: u32, zone: Option<&str>) -> Self {
        Self {
            weight,
            zone: zone.map(Arc::from),
        }
    }
}

/// One item's replicas: its primary and its secondaries (sorted, distinct, without the
/// primary in what [`plan_replicas`] returns; the input may be less tidy).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Replicas {
    /// The primary, if any.
    pub primary: Option<MemberId>,
    /// The secondaries.
    pub secondaries: Vec<MemberId>,
}

/// Replica state: work id → replicas.
pub type ReplicaAssignment = BTreeMap<WorkId, Replicas>;

/// The role of a replica key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// The primary.
    Primary,
    /// A secondary (standby).
    Secondary,
}

/// The result of [`plan_replicas`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReplicaPlan {
    /// The new state: every item, with `min(N, M)` replicas on distinct members of positive
    /// weight (empty when there is no such member).
    pub state: ReplicaAssignment,
    /// Items that had a live replica and whose new primary held none of them before.
    pub cold_primaries: usize,
    /// Items whose new primary was a live secondary (not the primary) before.
    pub promotions: usize,
    /// Items that had a primary (live or gone) whose primary changes.
    pub primaries_changed: usize,
    /// New secondaries, of items that had a live replica, on members that held no replica of
    /// the item before.
    pub secondaries_moved: usize,
    /// Replicas (primaries and secondaries) of items that had no live replica.
    pub placed: usize,
    /// `(item, member, role)` keys to delete, sorted: replicas that leave or change role, items
    /// no longer present, replicas on members that are gone.
    pub revoked: Vec<(WorkId, MemberId, Role)>,
    /// `(item, member, role)` keys to put, sorted.
    pub assigned: Vec<(WorkId, MemberId, Role)>,
}

/// Each item's wanted replica count: `default` unless `overrides` names the item.
pub fn replica_counts<'a>(
    items: impl IntoIterator<Item = &'a WorkId>,
    default: u32,
    overrides: &BTreeMap<WorkId, u32>,
) -> BTreeMap<WorkId, u32> {
    items
        .into_iter()
        .map(|w| (w.clone(), overrides.get(w).copied().unwrap_or(default)))
        .collect()
}

/// `floor(n·w/W)` and the remainder.
fn share(n: usize, w: u32, total: u128) -> (usize, u128) {
    let num = n as u128 * u128::from(w);
    ((num / total) as usize, num % total)
}

/// The zone cap of an item of `r` replicas over zones of `sizes`: the smallest `c` with
/// `Σ min(size, c) ≥ r`.
fn zone_cap(r: usize, sizes: &[usize]) -> usize {
    (1..=r.max(1))
        .find(|&c| sizes.iter().map(|&s| s.min(c)).sum::<usize>() >= r)
        .unwrap_or(r.max(1))
}

const NONE: usize = usize::MAX;

/// How many members a stuck secondary tries to exchange with before it overflows.
const EXCHANGE_TRIES: usize = 8;

/// The primary phase: an exact min-cost assignment of items to members within the primary
/// quotas, where keeping the old primary costs 0, promoting a live secondary 1 and a cold
/// primary `big`. Rows are the items with live replicas; see `docs/planner.md`.
struct PrimaryFlow {
    /// Per row: its live replicas and the cost of each (0 old primary, 1 old secondary).
    arcs: Vec<Vec<(usize, i64)>>,
    /// Per row: its member, and whether it came through the hub (cold).
    mat: Vec<(usize, bool)>,
    /// Per member: warm rows.
    at: Vec<Vec<usize>>,
    /// Per member: cold rows.
    hub_at: Vec<Vec<usize>>,
    floor: Vec<usize>,
    frac: Vec<bool>,
    ceils: usize,
    ceils_used: usize,
    big: i64,
    pot: Vec<i64>,
}

/// How a node was reached in the search.
#[derive(Clone, Copy)]
enum Via {
    Start,
    /// Row → member (warm arc).
    RowMember(usize),
    /// Row → hub.
    RowHub(usize),
    /// Member → row (a warm row leaves the member).
    MemberRow(usize),
    /// Member → hub (a cold row leaves the member).
    MemberHub(usize),
    /// Hub → member.
    HubMember,
    /// Hub → row (a cold row leaves the hub).
    HubRow,
    /// Member → ceil pool.
    MemberCeil(usize),
    /// Ceil pool → member (the member gives up its ceil slot).
    CeilMember,
    /// Member → sink.
    MemberSink(usize),
    /// Ceil pool → sink.
    CeilSink,
}

impl PrimaryFlow {
    fn load(&self, m: usize) -> usize {
        self.at[m].len() + self.hub_at[m].len()
    }

    /// Tries to seat `row` on `m` at cost 0 without a search (greedy start).
    fn seat_free(&mut self, row: usize, m: usize) -> bool {
        let l = self.load(m);
        let ceil = l == self.floor[m] && self.frac[m] && self.ceils_used < self.ceils;
        if l >= self.floor[m] && !ceil {
            return false;
        }
        self.ceils_used += usize::from(l >= self.floor[m]);
        self.at[m].push(row);
        self.mat[row] = (m, false);
        true
    }

    /// Seats `x` along a shortest augmenting path (Dijkstra with potentials).
    #[allow(clippy::too_many_lines)]
    fn augment(&mut self, x: usize) {
        let rows = self.arcs.len();
        let members = self.at.len();
        let (ceil, hub, sink) = (rows + members, rows + members + 1, rows + members + 2);
        let nodes = sink + 1;
        let mut dist = vec![i64::MAX; nodes];
        let mut via = vec![Via::Start; nodes];
        let mut done = vec![false; nodes];
        let mut settled = Vec::new();
        let mut heap = BinaryHeap::new();
        dist[x] = 0;
        heap.push(Reverse((0i64, x)));
        let pot = &self.pot;
        let relax = |heap: &mut BinaryHeap<Reverse<(i64, usize)>>,
                         dist: &mut Vec<i64>,
                         via: &mut Vec<Via>,
                         u: usize,
                         du: i64,
                         v: usize,
                         cost: i64,
                         how: Via| {
            let nd = du + cost + pot[u] - pot[v];
            if nd < dist[v] {
                dist[v] = nd;
                via[v] = how;
                heap.push(Reverse((nd, v)));
            }
        };
        while let Some(Reverse((d, u))) = heap.pop() {
            if done[u] || d > dist[u] {
                continue;
            }
            done[u] = true;
            settled.push(u);
            if u == sink {
                break;
            }
            if u < rows {
                let (cur, cold) = self.mat[u];
                for &(m, c) in &self.arcs[u] {
                    if cold || cur != m || u == x {
                        relax(
                            &mut heap,
                            &mut dist,
                            &mut via,
                            u,
                            d,
                            rows + m,
                            c,
                            Via::RowMember(u),
                        );
                    }
                }
                if !cold || u == x {
                    relax(
                        &mut heap,
                        &mut dist,
                        &mut via,
                        u,
                        d,
                        hub,
                        self.big,
                        Via::RowHub(u),
                    );
                }
            } else if u < ceil {
                let m = u - rows;
                let l = self.load(m);
                if l < self.floor[m] {
                    relax(
                        &mut heap,
                        &mut dist,
                        &mut via,
                        u,
                        d,
                        sink,
                        0,
                        Via::MemberSink(m),
                    );
                } else if l == self.floor[m] && self.frac[m] {
                    relax(
                        &mut heap,
                        &mut dist,
                        &mut via,
                        u,
                        d,
                        ceil,
                        0,
                        Via::MemberCeil(m),
                    );
                }
                for &y in &self.at[m] {
                    let c = self.arcs[y].iter().find(|a| a.0 == m).map_or(0, |a| a.1);
                    relax(
                        &mut heap,
                        &mut dist,
                        &mut via,
                        u,
                        d,
                        y,
                        -c,
                        Via::MemberRow(m),
                    );
                }
                if !self.hub_at[m].is_empty() {
                    relax(
                        &mut heap,
                        &mut dist,
                        &mut via,
                        u,
                        d,
                        hub,
                        0,
                        Via::MemberHub(m),
                    );
                }
            } else if u == ceil {
                if self.ceils_used < self.ceils {
                    relax(
                        &mut heap,
                        &mut dist,
                        &mut via,
                        u,
                        d,
                        sink,
                        0,
                        Via::CeilSink,
                    );
                }
                for m in 0..members {
                    if self.load(m) > self.floor[m] {
                        relax(
                            &mut heap,
                            &mut dist,
                            &mut via,
                            u,
                            d,
                            rows + m,
                            0,
                            Via::CeilMember,
                        );
                    }
                }
            } else if u == hub {
                for m in 0..members {
                    relax(
                        &mut heap,
                        &mut dist,
                        &mut via,
                        u,
                        d,
                        rows + m,
                        0,
                        Via::HubMember,
                    );
                }
                for m in 0..members {
                    for &y in &self.hub_at[m] {
                        relax(
                            &mut heap,
                            &mut dist,
                            &mut via,
                            u,
                            d,
                            y,
                            -self.big,
                            Via::HubRow,
                        );
                    }
                }
            }
        }
        let reach = dist[sink];
        assert!(reach < i64::MAX, "the sink is reachable: quotas sum to the items");
        for &v in &settled {
            if dist[v] < reach {
                self.pot[v] += dist[v] - reach;
            }
        }
        // The path, from the sink back to x.
        let mut path = Vec::new();
        let mut v = sink;
        while v != x {
            let how = via[v];
            path.push((how, v));
            v = match how {
                Via::Start => unreachable!("only x is the start"),
                Via::RowMember(r) | Via::RowHub(r) => r,
                Via::MemberRow(m) | Via::MemberHub(m) | Via::MemberCeil(m) | Via::MemberSink(m) => {
                    rows + m
                }
                Via::HubMember | Via::HubRow => hub,
                Via::CeilMember | Via::CeilSink => ceil,
            };
        }
        path.reverse();
        // Apply it: `carried` is the row moving along the path; `hub_carried` a cold row in
        // transit through the hub.
        let mut carried = x;
        for (how, v) in path {
            match how {
                Via::RowMember(r) => {
                    let m = v - rows;
                    self.at[m].push(r);
                    self.mat[r] = (m, false);
                }
                Via::RowHub(r) => carried = r,
                Via::MemberRow(m) => {
                    let pos = self.at[m].iter().position(|&y| y == v).expect("row at m");
                    self.at[m].remove(pos);
                    self.mat[v] = (NONE, false);
                    carried = v;
                }
                Via::MemberHub(m) => {
                    carried = self.hub_at[m].pop().expect("a cold row at m");
                    self.mat[carried] = (NONE, false);
                }
                Via::HubMember => {
                    let m = v - rows;
                    self.hub_at[m].push(carried);
                    self.mat[carried] = (m, true);
                }
                Via::HubRow => {
                    // `carried` takes v's place, v moves on.
                    let m = self.mat[v].0;
                    let pos = self.hub_at[m].iter().position(|&y| y == v).expect("v cold");
                    self.hub_at[m][pos] = carried;
                    self.mat[carried] = (m, true);
                    self.mat[v] = (NONE, false);
                    carried = v;
                }
                Via::CeilSink => self.ceils_used += 1,
                Via::MemberCeil(_) | Via::CeilMember | Via::MemberSink(_) | Via::Start => {}
            }
        }
    }
}

/// How many items the balance repair looks at, at most, per replica in the plan.
const REPAIR_BUDGET: usize = 4;

/// Restores the total balance where the primaries or the greedy placement left a member above
/// its target and another below: one replica of an item moves from the member above to the
/// member below (a secondary when possible; else the primary, if the primary balance allows),
/// keeping the zone rule. The work is bounded by [`REPAIR_BUDGET`] per replica.
#[allow(clippy::too_many_arguments)]
fn repair_totals(
    sets: &mut [Vec<usize>],
    prim: &mut [usize],
    target: &[usize],
    pfloor: &[usize],
    pfrac: &[bool],
    pceils: usize,
    zone_of: &[usize],
    caps: &[usize],
    old_p: &[usize],
    old_s: &[Vec<usize>],
) {
    let mm = target.len();
    let mut load = vec![0usize; mm];
    let mut pload = vec![0usize; mm];
    for set in sets.iter() {
        for &o in set {
            load[o] += 1;
        }
    }
    for &p in prim.iter() {
        pload[p] += 1;
    }
    if (0..mm).all(|m| load[m] <= target[m]) {
        return;
    }
    let mut budget = REPAIR_BUDGET * sets.iter().map(Vec::len).sum::<usize>();
    let mut on: Vec<Vec<usize>> = vec![Vec::new(); mm];
    for (x, set) in sets.iter().enumerate() {
        for &o in set {
            on[o].push(x);
        }
    }
    let was = |x: usize, m: usize| old_p[x] == m || old_s[x].contains(&m);
    loop {
        let mut progress = false;
        for o in 0..mm {
            while load[o] > target[o] {
                let unders: Vec<usize> = (0..mm).filter(|&u| load[u] < target[u]).collect();
                if unders.is_empty() {
                    return;
                }
                let pceil_used = (0..mm).filter(|&m| pload[m] > pfloor[m]).count();
                // The best swap: (is a primary swap, u not a former replica, x, u).
                let mut best: Option<(bool, bool, usize, usize)> = None;
                for &x in &on[o] {
                    if budget == 0 {
                        return;
                    }
                    budget -= 1;
                    let primary = prim[x] == o;
                    for &u in &unders {
                        if sets[x].contains(&u) {
                            continue;
                        }
                        let inz = sets[x]
                            .iter()
                            .filter(|&&v| v != o && zone_of[v] == zone_of[u])
                            .count();
                        if inz >= caps[x] {
                            continue;
                        }
                        if primary {
                            let o_ok = pload[o] > pfloor[o];
                            let u_room = pload[u] < pfloor[u]
                                || (pload[u] == pfloor[u]
                                    && pfrac[u]
                                    && (pceil_used < pceils || pload[o] > pfloor[o]));
                            if !(o_ok && u_room) {
                                continue;
                            }
                        }
                        let key = (primary, !was(x, u), x, u);
                        if best.is_none_or(|b| key < b) {
                            best = Some(key);
                        }
                    }
                }
                let Some((primary, _, x, u)) = best else {
                    break;
                };
                let pos = sets[x].iter().position(|&v| v == o).expect("o holds x");
                sets[x][pos] = u;
                if primary {
                    prim[x] = u;
                    pload[o] -= 1;
                    pload[u] += 1;
                }
                load[o] -= 1;
                load[u] += 1;
                on[o].retain(|&y| y != x);
                on[u].push(x);
                progress = true;
            }
        }
        if !progress {
            return;
        }
    }
}

/// Plans replicas: for each item of `items` (id → wanted replicas; 0 counts as 1), a primary and
/// secondaries on distinct `members` of positive weight, balanced, spread over zones, moving
/// the fewest replicas from `current`. See the [module docs](self) for the rule.
///
/// Members in `current` that are not in `members` are gone. Entries of `current` for items not
/// in `items` are revoked.
///
/// # Panics
/// Only on a bug of its own (the primary quotas not adding up to the number of items).
#[allow(clippy::too_many_lines)]
pub fn plan_replicas(
    items: &BTreeMap<WorkId, u32>,
    members: &BTreeMap<MemberId, ReplicaMember>,
    current: &ReplicaAssignment,
) -> ReplicaPlan {
    let elig: Vec<(&MemberId, &ReplicaMember)> =
        members.iter().filter(|(_, m)| m.weight > 0).collect();
    let ids: Vec<&MemberId> = elig.iter().map(|e| e.0).collect();
    let mm = ids.len();
    let item_v: Vec<(&WorkId, usize)> = items
        .iter()
        .map(|(w, &r)| (w, (r.max(1) as usize).min(mm)))
        .collect();
    let n = item_v.len();
    let find = |m: &MemberId| ids.binary_search(&m).ok();

    // Zones.
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

    // Old live replicas per item: (old primary if live, live secondaries), distinct.
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
    let live = |x: usize| old_p[x] != NONE || !old_s[x].is_empty();

    let mut plan = ReplicaPlan::default();
    let mut prim = vec![NONE; n];
    let mut sets: Vec<Vec<usize>> = vec![Vec::new(); n];
    if mm > 0 {
        let total: u128 = elig.iter().map(|e| u128::from(e.1.weight)).sum();
        let wts: Vec<u32> = elig.iter().map(|e| e.1.weight).collect();

        // Phase 1: primaries by min-cost flow over rows = items with live replicas.
        let pshare: Vec<(usize, u128)> = wts.iter().map(|&w| share(n, w, total)).collect();
        let pfloor: Vec<usize> = pshare.iter().map(|s| s.0).collect();
        let rows: Vec<usize> = (0..n).filter(|&x| live(x)).collect();
        let mut flow = PrimaryFlow {
            arcs: rows
                .iter()
                .map(|&x| {
                    let mut a: Vec<(usize, i64)> = Vec::new();
                    if old_p[x] != NONE {
                        a.push((old_p[x], 0));
                    }
                    a.extend(old_s[x].iter().map(|&s| (s, 1)));
                    a
                })
                .collect(),
            mat: vec![(NONE, false); rows.len()],
            at: vec![Vec::new(); mm],
            hub_at: vec![Vec::new(); mm],
            ceils: n - pfloor.iter().sum::<usize>(),
            floor: pfloor,
            frac: pshare.iter().map(|s| s.1 != 0).collect(),
            ceils_used: 0,
            big: rows.len() as i64 + 1,
            pot: vec![0; rows.len() + mm + 3],
        };
        let mut pending = Vec::new();
        for (row, &x) in rows.iter().enumerate() {
            if old_p[x] == NONE || !flow.seat_free(row, old_p[x]) {
                pending.push((stable_hash(item_v[x].0), row));
            }
        }
        pending.sort_unstable();
        for &(_, row) in &pending {
            flow.augment(row);
        }
        for (row, &x) in rows.iter().enumerate() {
            prim[x] = flow.mat[row].0;
        }
        // Items without live replicas: fill the remaining primary room, floors first, round
        // robin in member-hash order.
        let mut order: Vec<(u64, usize)> = (0..mm).map(|m| (stable_hash(ids[m]), m)).collect();
        order.sort_unstable();
        let mut room: VecDeque<(usize, usize)> = VecDeque::new();
        for &(_, m) in &order {
            let l = flow.load(m);
            if l < flow.floor[m] {
                room.push_back((m, flow.floor[m] - l));
            }
        }
        for &(_, m) in &order {
            if flow.frac[m] && flow.load(m) <= flow.floor[m] && flow.ceils_used < flow.ceils {
                flow.ceils_used += 1;
                room.push_back((m, 1));
            }
        }
        let mut fresh: Vec<(u64, usize)> = (0..n)
            .filter(|&x| !live(x))
            .map(|x| (stable_hash(item_v[x].0), x))
            .collect();
        fresh.sort_unstable();
        // Round robin: one slot of each member with room in turn.
        let mut left: Vec<(usize, usize)> = room.into_iter().collect();
        let mut seq = VecDeque::new();
        while !left.is_empty() {
            for e in &mut left {
                seq.push_back(e.0);
                e.1 -= 1;
            }
            left.retain(|e| e.1 > 0);
        }
        for (_, x) in fresh {
            prim[x] = seq.pop_front().expect("primary quotas sum to the items");
        }
        let (flow_floor, flow_frac, flow_ceils) = (flow.floor, flow.frac, flow.ceils);

        // Phase 2: secondaries.
        let big_r: usize = item_v.iter().map(|i| i.1).sum();
        let caps: Vec<usize> = item_v.iter().map(|i| zone_cap(i.1, &zone_sizes)).collect();
        let mut pcount = vec![0usize; mm];
        for &p in &prim {
            pcount[p] += 1;
        }
        let mut held: Vec<Vec<usize>> = vec![Vec::new(); mm]; // kept secondaries per member
        for x in 0..n {
            let p = prim[x];
            sets[x].push(p);
            let cap = caps[x];
            let want = item_v[x].1;
            let cands = std::iter::once(old_p[x]).chain(old_s[x].iter().copied());
            for s in cands {
                if s == NONE || s == p || sets[x].len() >= want {
                    continue;
                }
                let inz = sets[x].iter().filter(|&&o| zone_of[o] == zone_of[s]).count();
                if inz < cap {
                    sets[x].push(s);
                    held[s].push(x);
                }
            }
        }
        let tshare: Vec<(usize, u128)> = wts.iter().map(|&w| share(big_r, w, total)).collect();
        let mut target: Vec<usize> = tshare.iter().map(|s| s.0).collect();
        let extra = big_r - target.iter().sum::<usize>();
        let mut cands: Vec<(u8, Reverse<u128>, u64, usize)> = (0..mm)
            .filter(|&m| tshare[m].1 != 0)
            .map(|m| {
                let k = pcount[m] + held[m].len();
                let class = if pcount[m] > tshare[m].0 {
                    0
                } else {
                    match k.cmp(&tshare[m].0) {
                        std::cmp::Ordering::Greater => 1,
                        std::cmp::Ordering::Less => 2,
                        std::cmp::Ordering::Equal => 3,
                    }
                };
                (class, Reverse(tshare[m].1), stable_hash(ids[m]), m)
            })
            .collect();
        cands.sort_unstable();
        for (i, c) in cands.iter().enumerate() {
            if i < extra || c.0 == 0 {
                target[c.3] += 1;
            }
        }
        // Over-quota members shed the secondaries of largest item hash.
        let mut pool: Vec<(u64, usize)> = Vec::new();
        for m in 0..mm {
            let k = pcount[m] + held[m].len();
            if k > target[m] {
                let mut keyed: Vec<(u64, usize)> = held[m]
                    .iter()
                    .map(|&x| (stable_hash(item_v[x].0), x))
                    .collect();
                keyed.sort_unstable();
                let keep = target[m].saturating_sub(pcount[m]);
                for &(_, x) in &keyed[keep..] {
                    sets[x].retain(|&o| o != m);
                }
                held[m] = keyed[..keep].iter().map(|e| e.1).collect();
            }
        }
        for x in 0..n {
            let h = stable_hash(item_v[x].0);
            for _ in sets[x].len()..item_v[x].1 {
                pool.push((h, x));
            }
        }
        pool.sort_unstable();
        let mut room: VecDeque<(usize, usize)> = order
            .iter()
            .filter(|&&(_, m)| pcount[m] + held[m].len() < target[m])
            .map(|&(_, m)| (m, target[m] - pcount[m] - held[m].len()))
            .collect();
        let allowed = |sets: &Vec<Vec<usize>>, x: usize, m: usize| {
            !sets[x].contains(&m)
                && sets[x].iter().filter(|&&o| zone_of[o] == zone_of[m]).count() < caps[x]
        };
        let mut sec_on: Vec<Vec<usize>> = Vec::new();
        for (_, x) in pool {
            let mut found = None;
            for _ in 0..room.len() {
                let (m, left) = room.pop_front().expect("non-empty");
                if allowed(&sets, x, m) {
                    found = Some((m, left));
                    break;
                }
                room.push_back((m, left));
            }
            if let Some((m, left)) = found {
                sets[x].push(m);
                if !sec_on.is_empty() {
                    sec_on[m].push(x);
                }
                if left > 1 {
                    room.push_back((m, left - 1));
                }
                continue;
            }
            // Stuck: one-step exchange. A member `a` allowed for x gives one of its
            // secondaries `y` to a member `b` with room allowed for y; x takes a's place.
            // The search is bounded (EXCHANGE_TRIES members `a`), so it stays cheap.
            if sec_on.is_empty() {
                sec_on = vec![Vec::new(); mm];
                for (y, set) in sets.iter().enumerate() {
                    for &o in &set[1..] {
                        sec_on[o].push(y);
                    }
                }
            }
            let mut done = false;
            let tries = order.iter().map(|o| o.1).filter(|&a| allowed(&sets, x, a));
            'ex: for a in tries.take(EXCHANGE_TRIES) {
                for yi in 0..sec_on[a].len() {
                    let y = sec_on[a][yi];
                    if y == x || !sets[y][1..].contains(&a) {
                        continue;
                    }
                    for (ri, &(b, left)) in room.iter().enumerate() {
                        let ok = !sets[y].contains(&b)
                            && (zone_of[b] == zone_of[a]
                                || sets[y].iter().filter(|&&o| zone_of[o] == zone_of[b]).count()
                                    < caps[y]);
                        if ok {
                            let pos = sets[y].iter().position(|&o| o == a).expect("a in y");
                            sets[y][pos] = b;
                            sec_on[b].push(y);
                            sets[x].push(a);
                            sec_on[a][yi] = x;
                            if left > 1 {
                                room[ri].1 -= 1;
                            } else {
                                room.remove(ri);
                            }
                            done = true;
                            break 'ex;
                        }
                    }
                }
            }
            if !done {
                // No balanced place: the zone rule wins over the total balance. The replica
                // goes to the allowed member least over its target.
                let mut load = vec![0usize; mm];
                for set in &sets {
                    for &o in set {
                        load[o] += 1;
                    }
                }
                let a = order
                    .iter()
                    .map(|o| o.1)
                    .filter(|&a| allowed(&sets, x, a))
                    .min_by_key(|&a| load[a] as i128 - target[a] as i128)
                    .expect("the zone cap leaves a member for every replica");
                sets[x].push(a);
                if !sec_on.is_empty() {
                    sec_on[a].push(x);
                }
            }
        }
        repair_totals(
            &mut sets,
            &mut prim,
            &target,
            &flow_floor,
            &flow_frac,
            flow_ceils,
            &zone_of,
            &caps,
            &old_p,
            &old_s,
        );
    }

    // Output, counts and the key-level diff.
    let mut cur = current.iter().peekable();
    let mut revoked = Vec::new();
    let mut assigned = Vec::new();
    let push_old = |revoked: &mut Vec<(WorkId, MemberId, Role)>, w: &WorkId, r: &Replicas| {
        let mut v: Vec<(WorkId, MemberId, Role)> = Vec::new();
        if let Some(p) = &r.primary {
            v.push((w.clone(), p.clone(), Role::Primary));
        }
        for s in &r.secondaries {
            if r.primary.as_ref() != Some(s) {
                v.push((w.clone(), s.clone(), Role::Secondary));
            }
        }
        v.sort();
        v.dedup();
        revoked.extend(v);
    };
    let mut state = ReplicaAssignment::new();
    for (x, (w, _)) in item_v.iter().enumerate() {
        while let Some((c, r)) = cur.next_if(|&(c, _)| c < *w) {
            push_old(&mut revoked, c, r);
        }
        let old = cur.next_if(|&(c, _)| c == *w).map(|e| e.1);
        if prim[x] == NONE {
            if let Some(r) = old {
                push_old(&mut revoked, w, r);
            }
            continue;
        }
        let p = prim[x];
        let mut secs: Vec<MemberId> = sets[x][1..].iter().map(|&m| ids[m].clone()).collect();
        secs.sort();
        if live(x) {
            if old_p[x] != p && !old_s[x].contains(&p) {
                plan.cold_primaries += 1;
            }
            if old_s[x].contains(&p) {
                plan.promotions += 1;
            }
            plan.secondaries_moved += sets[x][1..]
                .iter()
                .filter(|&&m| m != old_p[x] && !old_s[x].contains(&m))
                .count();
        } else {
            plan.placed += sets[x].len();
        }
        let prim_id = ids[p].clone();
        if had_primary[x] && old.and_then(|r| r.primary.as_ref()) != Some(&prim_id) {
            plan.primaries_changed += 1;
        }
        let mut new_keys: Vec<(WorkId, MemberId, Role)> = vec![((*w).clone(), prim_id.clone(), Role::Primary)];
        new_keys.extend(secs.iter().map(|s| ((*w).clone(), s.clone(), Role::Secondary)));
        new_keys.sort();
        let mut old_keys = Vec::new();
        if let Some(r) = old {
            push_old(&mut old_keys, w, r);
        }
        revoked.extend(old_keys.iter().filter(|k| new_keys.binary_search(k).is_err()).cloned());
        assigned.extend(new_keys.iter().filter(|k| old_keys.binary_search(k).is_err()).cloned());
        state.insert(
            (*w).clone(),
            Replicas {
                primary: Some(prim_id),
                secondaries: secs,
            },
        );
    }
    while let Some((c, r)) = cur.next() {
        push_old(&mut revoked, c, r);
    }
    revoked.sort();
    assigned.sort();
    plan.state = state;
    plan.revoked = revoked;
    plan.assigned = assigned;
    plan
}

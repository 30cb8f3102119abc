//! The replica planner: one primary and `N − 1` secondaries per item, spread over failure
//! domains (zones). A pure, deterministic function like [`plan()`](crate::plan()), which stays
//! the single-owner default.
//!
//! [`plan_replicas`] maps (items with their wanted replica counts, members with weight and
//! zone, current replica state) to a new replica state. The rule, in priority order:
//!
//! 1. **Hard constraints.** Every item gets `r = min(N, M)` replicas on distinct members (`M`
//!    the members of positive weight; a wanted count of 0 counts as 1): one primary and `r − 1`
//!    secondaries. In every zone the item has at most `c` replicas, `c` the smallest cap with
//!    `Σ_zones min(size, c) ≥ r`: one per zone when there are at least `r` zones, otherwise as
//!    evenly as the zone sizes allow. Members without a zone (`zone: None`) together form one
//!    zone of their own.
//! 2. **Balance.** Member `i` is primary of `floor(n·wᵢ/W)` or `ceil(n·wᵢ/W)` items, and holds
//!    `floor(R·wᵢ/W)` or `ceil(R·wᵢ/W)` replicas in all (`R = Σ r`). Where the zone rule forces
//!    a zone's total outside what those targets give it (zones of unequal size with one replica
//!    per zone, say), the zone totals are clamped and apportioned within each zone by weight.
//! 3. **Fewest moves**, lexicographically: cold primaries (the new primary held no live replica
//!    of the item), then primaries changed, then secondaries moved.
//! 4. **Deterministic and idempotent.** Only `BTreeMap` order and [`stable_hash`] break ties.
//!
//! How: (1) the primaries are a min-cost assignment (successive shortest paths with potentials)
//! of the items with live replicas to the members' primary quotas: keeping the old primary is
//! cheapest, then promoting a live secondary, then a cold primary through a hub; a soft cap per
//! member keeps room for the replicas the zone rule forces onto it. (2) Each item keeps its live
//! replicas that the zone cap allows, over-quota members shed secondaries, and the missing ones
//! are dealt over the members with room, each primary with its own cursor on a ring of members
//! (so one member's items have their secondaries spread over all the others), with bounded
//! one-step exchanges. (3) A bounded repair restores the total balance where (1) and (2) left
//! it off (moving a secondary, handing a primary role over, or a chain of secondary moves).
//!
//! What is guaranteed and tested (see `docs/planner.md`): the hard constraints and the primary
//! balance always; determinism; idempotence whenever the totals are balanced; for `N = 1`
//! without zones the same balance and moves as [`plan()`](crate::plan()); without the soft caps
//! and the repair, (cold, changed) is exactly the minimum over every primary-balanced choice.
//! The full lexicographic minimum and the total balance are reached in most but not all small
//! cases; the test suite measures how often and pins floors.
//!
//! Cost: `O(R·N + M log M + n log n + k·(A log A + M))` with `R = Σ r`, `k` the items whose
//! primary cannot stay (gone or over quota) and `A` the nodes one shortest-path search settles
//! (bounded: a search that settles too many gives up and seats its row cold); exchanges and the
//! repair look at `O(R)` (item, member) pairs at most. At 1,000 members × 100,000 items × 3
//! replicas: 68 ms for a first plan, 47 ms after a death, 147 ms after a join.

//! ```
//! use std::collections::BTreeMap;
//! use std::sync::Arc;
//! use leader_core::{plan_replicas, replica_counts, MemberId, ReplicaAssignment, ReplicaMember};
//! use worker_core::WorkId;
//!
//! let ids: Vec<WorkId> = (0..60).map(|i| Arc::from(format!("item-{i:02}"))).collect();
//! let items = replica_counts(&ids, 2, &BTreeMap::new()); // two replicas each
//! let members: BTreeMap<MemberId, ReplicaMember> = [("a1", "a"), ("a2", "a"), ("b1", "b"), ("b2", "b")]
//!     .into_iter()
//!     .map(|(m, z)| (Arc::from(m), ReplicaMember::new(1, Some(z))))
//!     .collect();
//! let first = plan_replicas(&items, &members, &ReplicaAssignment::new());
//! assert_eq!(first.placed, 120);
//!
//! // b1 dies: its primaries are promoted from their secondaries (all in zone a), none is cold.
//! let mut alive = members.clone();
//! alive.remove("b1");
//! let after = plan_replicas(&items, &alive, &first.state);
//! assert_eq!(after.cold_primaries, 0);
//! assert!(after.state.values().all(|r| r.secondaries.len() == 1));
//! ```

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
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

/// How many nodes (plus four per member and 16 per row per member) one shortest-path search of
/// the primary phase settles before it gives up and seats its row cold (see
/// `PrimaryFlow::augment`). The rows that go cold this way are about `n / M` when a member
/// joins, so the total stays `O(n + (n/M)²)`.
const SEARCH_BUDGET: usize = 1024;

/// How many primary slots an item without live replicas tries before it ignores the port cap.
const FILL_TRIES: usize = 64;

/// How many members a stuck secondary tries to exchange with before it overflows.
const EXCHANGE_TRIES: usize = 8;

/// The primary phase: an exact min-cost assignment of the items with live replicas ("rows") to
/// members within the primary quotas. Keeping the old primary costs 0, promoting a live
/// secondary 1, a cold primary `big` (through the hub, to any member). Each member also has a
/// soft "port" cap on the primaries of rows that do not force a replica onto it (its total
/// ceil minus the items that must have a replica there anyway); exceeding it costs `over`,
/// more than all cold primaries together, so the total balance is kept whenever the primaries
/// can keep it. See `docs/planner.md`.
struct PrimaryFlow {
    /// Per row: its live replicas, the cost of each (0 old primary, 1 old secondary) and
    /// whether the row forces a replica onto that member (then it bypasses the port).
    arcs: Vec<Vec<(usize, i128, bool)>>,
    /// Per row: its member and how it is seated there.
    mat: Vec<(usize, Seat)>,
    /// Per member: warm rows that force it.
    at: Vec<Vec<usize>>,
    /// Per member: warm rows through the port.
    atp: Vec<Vec<usize>>,
    /// Per member: cold rows (through the hub and the port).
    hub_at: Vec<Vec<usize>>,
    /// Per member: the port cap, its use within the cap, and its use over the cap.
    pcap: Vec<usize>,
    pused: Vec<usize>,
    pover: Vec<usize>,
    floor: Vec<usize>,
    frac: Vec<bool>,
    ceils: usize,
    ceils_used: usize,
    /// Per row: the cost of a cold primary.
    cold: Vec<i128>,
    over: i128,
    pot: Vec<i128>,
    /// Scratch of the searches, reset after each.
    dist: Vec<i128>,
    via: Vec<Via>,
    settled: Vec<bool>,
}

/// How a row is seated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seat {
    Free,
    Forced,
    Port,
    Cold,
}

/// How a node was reached in the search.
#[derive(Clone, Copy)]
enum Via {
    Start,
    RowMember(usize),
    RowPort(usize),
    RowHub(usize),
    PortMember(usize),
    MemberPort(usize),
    PortRow(usize),
    MemberRow(usize),
    PortHub(usize),
    HubPort,
    HubRow,
    MemberCeil(usize),
    CeilMember,
    MemberSink(usize),
    CeilSink,
}

impl PrimaryFlow {
    fn load(&self, m: usize) -> usize {
        self.at[m].len() + self.atp[m].len() + self.hub_at[m].len()
    }

    /// Whether `m` has primary room (within its floor, or a free ceil slot).
    fn room(&self, m: usize) -> bool {
        let l = self.load(m);
        l < self.floor[m] || (l == self.floor[m] && self.frac[m] && self.ceils_used < self.ceils)
    }

    fn take_room(&mut self, m: usize) {
        if self.load(m) >= self.floor[m] {
            self.ceils_used += 1;
        }
    }

    fn take_port(&mut self, m: usize) {
        if self.pused[m] < self.pcap[m] {
            self.pused[m] += 1;
        } else {
            self.pover[m] += 1;
        }
    }

    fn free_port(&mut self, m: usize) {
        if self.pover[m] > 0 {
            self.pover[m] -= 1;
        } else {
            self.pused[m] -= 1;
        }
    }

    /// Seats `row` on its old primary `m` at cost 0 without a search, if there is room.
    fn seat_free(&mut self, row: usize, m: usize, forced: bool) -> bool {
        if !self.room(m) || (!forced && self.pused[m] >= self.pcap[m]) {
            return false;
        }
        self.take_room(m);
        // Keeping the old primary is the row's cheapest arc; this potential keeps the reduced
        // cost of its reverse arc at 0 and of its other arcs non-negative.
        self.pot[row] = -self.cost_at(row, m);
        if forced {
            self.at[m].push(row);
            self.mat[row] = (m, Seat::Forced);
        } else {
            self.take_port(m);
            self.atp[m].push(row);
            self.mat[row] = (m, Seat::Port);
        }
        true
    }

    /// Seats `x` cold on the first member (in index order) with primary room, preferring one
    /// whose port has room; its potential keeps the reverse hub arc at reduced cost 0.
    fn seat_cold(&mut self, x: usize, hub: usize) {
        let mm = self.at.len();
        let m = (0..mm)
            .find(|&m| self.room(m) && self.pused[m] < self.pcap[m])
            .or_else(|| (0..mm).find(|&m| self.room(m)))
            .expect("the quotas leave room for every row");
        self.take_room(m);
        self.take_port(m);
        self.hub_at[m].push(x);
        self.mat[x] = (m, Seat::Cold);
        self.pot[x] = self.pot[hub] - self.cold[x];
    }

    fn cost_at(&self, y: usize, m: usize) -> i128 {
        self.arcs[y].iter().find(|a| a.0 == m).map_or(0, |a| a.1)
    }

    /// Seats the unseated row `x` along a shortest augmenting path (Dijkstra on reduced costs
    /// with potentials, stopped at the sink). A search that settles more than
    /// [`SEARCH_BUDGET`] + 4·M + 16·(rows per member) nodes without reaching the sink gives up:
    /// the row is then seated cold
    /// on a member with room ([`Self::seat_cold`]), and the assignment is no longer
    /// guaranteed min-cost (this happens only on large inputs where most rows cannot move, as
    /// when a member joins).
    ///
    /// # Panics
    /// If the sink is unreachable, which the hub and the uncapped ports rule out.
    #[allow(clippy::too_many_lines)]
    fn augment(&mut self, x: usize) {
        let rows = self.arcs.len();
        let mm = self.at.len();
        let port0 = rows + mm;
        let (ceil, hub, sink) = (rows + 2 * mm, rows + 2 * mm + 1, rows + 2 * mm + 2);
        let nodes = sink + 1;
        if self.dist.len() < nodes {
            self.dist = vec![i128::MAX; nodes];
            self.via = vec![Via::Start; nodes];
            self.settled = vec![false; nodes];
        }
        let mut dist = std::mem::take(&mut self.dist);
        let mut via = std::mem::take(&mut self.via);
        let mut settled = std::mem::take(&mut self.settled);
        let mut touched: Vec<usize> = vec![x];
        let mut done: Vec<usize> = Vec::new();
        // Ties pop the sink first, so a search stops as soon as its distance is known.
        let mut heap = BinaryHeap::new();
        dist[x] = 0;
        via[x] = Via::Start;
        heap.push(Reverse((0i128, true, x)));
        let pot = &self.pot;
        let mut edges: Vec<(usize, i128, Via)> = Vec::new();
        while let Some(Reverse((d, _, u))) = heap.pop() {
            if d > dist[u] || settled[u] {
                continue;
            }
            settled[u] = true;
            done.push(u);
            if u == sink {
                break;
            }
            if done.len() > SEARCH_BUDGET + 4 * mm + 16 * rows.div_ceil(mm) {
                for &v in &touched {
                    dist[v] = i128::MAX;
                    settled[v] = false;
                }
                self.dist = dist;
                self.via = via;
                self.settled = settled;
                self.seat_cold(x, hub);
                return;
            }
            edges.clear();
            if u < rows {
                let (cur, seat) = self.mat[u];
                for &(m, c, forced) in &self.arcs[u] {
                    if cur == m && seat != Seat::Cold {
                        continue;
                    }
                    if forced {
                        edges.push((rows + m, c, Via::RowMember(u)));
                    } else {
                        edges.push((port0 + m, c, Via::RowPort(u)));
                    }
                }
                if seat != Seat::Cold {
                    edges.push((hub, self.cold[u], Via::RowHub(u)));
                }
            } else if u < port0 {
                let m = u - rows;
                let l = self.load(m);
                if l < self.floor[m] {
                    edges.push((sink, 0, Via::MemberSink(m)));
                } else if l == self.floor[m] && self.frac[m] {
                    edges.push((ceil, 0, Via::MemberCeil(m)));
                }
                for &y in &self.at[m] {
                    edges.push((y, -self.cost_at(y, m), Via::MemberRow(m)));
                }
                if self.pover[m] > 0 {
                    edges.push((port0 + m, -self.over, Via::MemberPort(m)));
                } else if self.pused[m] > 0 {
                    edges.push((port0 + m, 0, Via::MemberPort(m)));
                }
            } else if u < ceil {
                let m = u - port0;
                let c = if self.pused[m] < self.pcap[m] {
                    0
                } else {
                    self.over
                };
                edges.push((rows + m, c, Via::PortMember(m)));
                for &y in &self.atp[m] {
                    edges.push((y, -self.cost_at(y, m), Via::PortRow(m)));
                }
                if !self.hub_at[m].is_empty() {
                    edges.push((hub, 0, Via::PortHub(m)));
                }
            } else if u == ceil {
                if self.ceils_used < self.ceils {
                    edges.push((sink, 0, Via::CeilSink));
                }
                for m in 0..mm {
                    if self.load(m) > self.floor[m] {
                        edges.push((rows + m, 0, Via::CeilMember));
                    }
                }
            } else if u == hub {
                for m in 0..mm {
                    edges.push((port0 + m, 0, Via::HubPort));
                }
                for list in &self.hub_at {
                    for &y in list {
                        edges.push((y, -self.cold[y], Via::HubRow));
                    }
                }
            }
            for &(v, c, how) in &edges {
                let nd = d + c + pot[u] - pot[v];
                if nd < dist[v] {
                    if dist[v] == i128::MAX {
                        touched.push(v);
                    }
                    dist[v] = nd;
                    via[v] = how;
                    heap.push(Reverse((nd, v != sink, v)));
                }
            }
        }
        let reach = dist[sink];
        assert!(reach < i128::MAX, "the sink is reachable through the hub");
        for &v in &done {
            if dist[v] < reach {
                self.pot[v] += dist[v] - reach;
            }
        }
        let mut path = Vec::new();
        let mut v = sink;
        while v != x {
            let how = via[v];
            path.push((how, v));
            v = match how {
                Via::Start => unreachable!("only x is the start"),
                Via::RowMember(r) | Via::RowPort(r) | Via::RowHub(r) => r,
                Via::PortMember(m) | Via::PortRow(m) | Via::PortHub(m) => port0 + m,
                Via::MemberPort(m)
                | Via::MemberRow(m)
                | Via::MemberCeil(m)
                | Via::MemberSink(m) => rows + m,
                Via::HubPort | Via::HubRow => hub,
                Via::CeilMember | Via::CeilSink => ceil,
            };
        }
        path.reverse();
        for &v in &touched {
            dist[v] = i128::MAX;
            settled[v] = false;
        }
        self.dist = dist;
        self.via = via;
        self.settled = settled;
        // Apply it. `carry` is the row moving along the path and whether it travels cold. A
        // row entering a port is seated at its member there.
        let mut carry = (x, false);
        let mut from_port: Option<usize> = None;
        for (how, v) in path {
            match how {
                Via::RowMember(r) => {
                    let m = v - rows;
                    self.at[m].push(r);
                    self.mat[r] = (m, Seat::Forced);
                }
                Via::RowHub(r) => carry = (r, true),
                Via::RowPort(_) | Via::HubPort => {
                    let m = v - port0;
                    if let (Via::HubPort, Some(m0)) = (how, from_port.take()) {
                        // A cold row of m0 moves on through the hub.
                        let z = self.hub_at[m0].pop().expect("a cold row at m0");
                        carry = (z, true);
                    }
                    if let Via::RowPort(r) = how {
                        carry = (r, false);
                    }
                    if carry.1 {
                        self.hub_at[m].push(carry.0);
                        self.mat[carry.0] = (m, Seat::Cold);
                    } else {
                        self.atp[m].push(carry.0);
                        self.mat[carry.0] = (m, Seat::Port);
                    }
                }
                Via::PortMember(m) => self.take_port(m),
                Via::MemberPort(m) => self.free_port(m),
                Via::PortRow(m) => {
                    let pos = self.atp[m].iter().position(|&y| y == v).expect("row at m");
                    self.atp[m].remove(pos);
                    self.mat[v] = (NONE, Seat::Free);
                    carry = (v, false);
                }
                Via::MemberRow(m) => {
                    let pos = self.at[m].iter().position(|&y| y == v).expect("row at m");
                    self.at[m].remove(pos);
                    self.mat[v] = (NONE, Seat::Free);
                    carry = (v, false);
                }
                Via::PortHub(m) => from_port = Some(m),
                Via::HubRow => {
                    let mv = self.mat[v].0;
                    let pos = self.hub_at[mv]
                        .iter()
                        .position(|&y| y == v)
                        .expect("v cold");
                    if let Some(m) = from_port.take() {
                        // m loses a cold unit and v stops being cold: v leaves mv, and a cold
                        // row of m takes its seat there (none moves when m is mv).
                        self.hub_at[mv].remove(pos);
                        if m != mv {
                            let z = self.hub_at[m].pop().expect("a cold row at m");
                            self.hub_at[mv].push(z);
                            self.mat[z] = (mv, Seat::Cold);
                        }
                    } else {
                        // The carried cold row takes v's seat.
                        self.hub_at[mv][pos] = carry.0;
                        self.mat[carry.0] = (mv, Seat::Cold);
                    }
                    self.mat[v] = (NONE, Seat::Free);
                    carry = (v, false);
                }
                Via::CeilSink => self.ceils_used += 1,
                Via::MemberCeil(_) | Via::CeilMember | Via::MemberSink(_) | Via::Start => {}
            }
        }
    }
}

/// How many (item, member) pairs the balance repair may look at, per replica in the plan
/// (plus a fixed 100,000), so that it stays cheap where the balance cannot be reached.
const REPAIR_BUDGET: usize = 1;

/// The state of the balance repair.
struct Repair<'a> {
    sets: &'a mut [Vec<usize>],
    prim: &'a mut [usize],
    load: Vec<usize>,
    pload: Vec<usize>,
    tfloor: Vec<usize>,
    tceil: Vec<usize>,
    pfloor: &'a [usize],
    pfrac: &'a [bool],
    pceils: usize,
    zone_of: &'a [usize],
    caps: &'a [usize],
}

impl Repair<'_> {
    /// Whether moving a replica from `o` to `u` lowers the imbalance.
    fn helps(&self, o: usize, u: usize) -> bool {
        (self.load[o] > self.tceil[o] && self.load[u] < self.tceil[u])
            || (self.load[o] > self.tfloor[o] && self.load[u] < self.tfloor[u])
    }

    /// Whether the primary counts stay balanced if `from` loses a primary and `to` gains one.
    fn primary_ok(&self, from: usize, to: usize) -> bool {
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
    fn fits(&self, x: usize, o: usize, u: usize) -> bool {
        !self.sets[x].contains(&u)
            && self.sets[x]
                .iter()
                .filter(|&&v| v != o && self.zone_of[v] == self.zone_of[u])
                .count()
                < self.caps[x]
    }

    fn set_primary(&mut self, x: usize, p: usize) {
        let old = self.prim[x];
        self.pload[old] -= 1;
        self.pload[p] += 1;
        self.prim[x] = p;
        let pos = self.sets[x].iter().position(|&v| v == p).expect("p in x");
        self.sets[x].swap(0, pos);
    }

    fn replace(&mut self, x: usize, o: usize, u: usize) {
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
#[allow(clippy::too_many_arguments)]
fn repair_totals(
    sets: &mut [Vec<usize>],
    prim: &mut [usize],
    trange: &[(usize, usize)],
    pfloor: &[usize],
    pfrac: &[bool],
    pceils: usize,
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
        pfloor,
        pfrac,
        pceils,
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
    fn chain(&mut self, on: &mut [Vec<usize>], budget: &mut usize) -> bool {
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
fn polish(
    sets: &mut [Vec<usize>],
    trange: &[(usize, usize)],
    zone_of: &[usize],
    caps: &[usize],
    old_p: &[usize],
    old_s: &[Vec<usize>],
) {
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
fn polish_roles(
    sets: &mut [Vec<usize>],
    prim: &mut [usize],
    pq: (&[usize], &[bool], usize),
    old_p: &[usize],
    old_s: &[Vec<usize>],
    had_primary: &[bool],
) {
    let (pfloor, pfrac, pceils) = pq;
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
fn next_with_room(next: &mut [usize], i: usize) -> usize {
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

/// Plans replicas: for each item of `items` (id → wanted replicas; 0 counts as 1), a primary and
/// secondaries on distinct `members` of positive weight, balanced, spread over zones, moving
/// the fewest replicas from `current`. See the [module docs](self) for the rule.
///
/// Members in `current` that are not in `members` are gone. Entries of `current` for items not
/// in `items` are revoked.
///
/// # Panics
/// Only on a bug of its own (the primary quotas not adding up to the number of items).
pub fn plan_replicas(
    items: &BTreeMap<WorkId, u32>,
    members: &BTreeMap<MemberId, ReplicaMember>,
    current: &ReplicaAssignment,
) -> ReplicaPlan {
    plan_with(
        items,
        members,
        current,
        Opts {
            ports: true,
            repair: true,
        },
    )
}

/// Switches for the unit tests: without the soft port caps and the repair, the primaries are
/// exactly the min-cost assignment, which a test checks against brute force.
#[derive(Clone, Copy)]
struct Opts {
    ports: bool,
    repair: bool,
}

#[allow(clippy::too_many_lines)]
fn plan_with(
    items: &BTreeMap<WorkId, u32>,
    members: &BTreeMap<MemberId, ReplicaMember>,
    current: &ReplicaAssignment,
    opts: Opts,
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
    // Member lookups by id (a hash map only for lookups: nothing depends on its order).
    let index: HashMap<&str, usize> = ids.iter().enumerate().map(|(i, m)| (&***m, i)).collect();
    let find = |m: &MemberId| index.get(&**m).copied();

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
        let big_r: usize = item_v.iter().map(|i| i.1).sum();
        let caps: Vec<usize> = item_v.iter().map(|i| zone_cap(i.1, &zone_sizes)).collect();
        // Zones an item of r replicas must fill completely (every member holds a replica).
        let forced_zones = |r: usize| -> Vec<bool> {
            let c = zone_cap(r, &zone_sizes);
            let all: usize = zone_sizes.iter().map(|&s| s.min(c)).sum();
            zone_sizes
                .iter()
                .map(|&s| r.saturating_sub(all - s.min(c)) >= s)
                .collect()
        };
        let max_r = item_v.iter().map(|i| i.1).max().unwrap_or(0);
        let forced_by_r: Vec<Vec<bool>> = (0..=max_r).map(forced_zones).collect();
        let forces = |x: usize, m: usize| forced_by_r[item_v[x].1][zone_of[m]];
        let tshare: Vec<(usize, u128)> = wts.iter().map(|&w| share(big_r, w, total)).collect();
        let mut forced_count = vec![0usize; zone_sizes.len()];
        for (_, r) in &item_v {
            for (z, &f) in forced_by_r[*r].iter().enumerate() {
                forced_count[z] += usize::from(f);
            }
        }
        let pshare: Vec<(usize, u128)> = wts.iter().map(|&w| share(n, w, total)).collect();
        let pfloor: Vec<usize> = pshare.iter().map(|s| s.0).collect();
        let rows: Vec<usize> = (0..n).filter(|&x| live(x)).collect();
        // Costs, lexicographic: a cold primary (`a`) over a changed primary (`b`) over an
        // estimate of the secondaries the choice makes move (at most r − 1 per item).
        let cost_b = big_r as i128 + 1;
        let cost_a = cost_b * (n as i128 + 1);
        let est = |x: usize, keeps: usize| {
            let r = item_v[x].1 - 1;
            (r - keeps.min(r)) as i128
        };
        let live_n = |x: usize| usize::from(old_p[x] != NONE) + old_s[x].len();
        let changed = |x: usize, m: usize| i128::from(had_primary[x] && old_p[x] != m) * cost_b;
        let mut flow = PrimaryFlow {
            arcs: rows
                .iter()
                .map(|&x| {
                    let mut arcs: Vec<(usize, i128, bool)> = Vec::new();
                    let warm = |m: usize| changed(x, m) + est(x, live_n(x) - 1);
                    if old_p[x] != NONE {
                        arcs.push((old_p[x], warm(old_p[x]), forces(x, old_p[x])));
                    }
                    arcs.extend(old_s[x].iter().map(|&s| (s, warm(s), forces(x, s))));
                    arcs
                })
                .collect(),
            cold: rows
                .iter()
                .map(|&x| cost_a + i128::from(had_primary[x]) * cost_b + est(x, live_n(x)))
                .collect(),
            mat: vec![(NONE, Seat::Free); rows.len()],
            at: vec![Vec::new(); mm],
            atp: vec![Vec::new(); mm],
            hub_at: vec![Vec::new(); mm],
            pcap: (0..mm)
                .map(|m| {
                    let tceil = tshare[m].0 + usize::from(tshare[m].1 != 0);
                    if opts.ports {
                        tceil.saturating_sub(forced_count[zone_of[m]])
                    } else {
                        usize::MAX / 4
                    }
                })
                .collect(),
            pused: vec![0; mm],
            pover: vec![0; mm],
            ceils: n - pfloor.iter().sum::<usize>(),
            floor: pfloor,
            frac: pshare.iter().map(|s| s.1 != 0).collect(),
            ceils_used: 0,
            over: cost_a * (n as i128 + 1),
            pot: vec![0; rows.len() + 2 * mm + 3],
            dist: Vec::new(),
            via: Vec::new(),
            settled: Vec::new(),
        };
        let mut pending = Vec::new();
        for (row, &x) in rows.iter().enumerate() {
            if old_p[x] == NONE || !flow.seat_free(row, old_p[x], forces(x, old_p[x])) {
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
        // robin in member-hash order, each on the first member in turn whose port has room.
        let mut order: Vec<(u64, usize)> = (0..mm).map(|m| (stable_hash(ids[m]), m)).collect();
        order.sort_unstable();
        let mut room: Vec<(usize, usize)> = Vec::new();
        for &(_, m) in &order {
            let l = flow.load(m);
            if l < flow.floor[m] {
                room.push((m, flow.floor[m] - l));
            }
        }
        // The free ceil slots go first to members whose port keeps room once their floor is
        // full (an item that does not force them can still go there), then in hash order.
        let mut ceil_order: Vec<(bool, u64, usize)> = order
            .iter()
            .filter(|&&(_, m)| flow.frac[m] && flow.load(m) <= flow.floor[m])
            .map(|&(h, m)| {
                let fill = flow.floor[m] - flow.load(m);
                (flow.pused[m] + fill >= flow.pcap[m], h, m)
            })
            .collect();
        ceil_order.sort_unstable();
        for &(.., m) in &ceil_order {
            if flow.ceils_used < flow.ceils {
                flow.ceils_used += 1;
                room.push((m, 1));
            }
        }
        let mut fresh: Vec<(u64, usize)> = (0..n)
            .filter(|&x| !live(x))
            .map(|x| (stable_hash(item_v[x].0), x))
            .collect();
        fresh.sort_unstable();
        // Round robin: one slot of each member with room in turn.
        let mut seq = VecDeque::new();
        while !room.is_empty() {
            for e in &mut room {
                seq.push_back(e.0);
                e.1 -= 1;
            }
            room.retain(|e| e.1 > 0);
        }
        for (_, x) in fresh {
            let pick = seq
                .iter()
                .take(FILL_TRIES)
                .position(|&m| forces(x, m) || flow.pused[m] < flow.pcap[m]);
            let m = seq
                .remove(pick.unwrap_or(0))
                .expect("primary quotas sum to the items");
            if !forces(x, m) {
                flow.take_port(m);
            }
            prim[x] = m;
        }
        let (flow_floor, flow_frac, flow_ceils) = (flow.floor, flow.frac, flow.ceils);

        // Phase 2: secondaries.
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
                let inz = sets[x]
                    .iter()
                    .filter(|&&o| zone_of[o] == zone_of[s])
                    .count();
                if inz < cap {
                    sets[x].push(s);
                    held[s].push(x);
                }
            }
        }
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
        // Balance as the zone rule allows: each zone's total must lie between what the zone
        // rule forces into it and what it lets it take. Where the weighted targets leave a zone
        // outside that range, the zone totals are clamped (moving the difference to the zones
        // that are least / most loaded per weight) and apportioned within the zone by weight.
        let mut trange: Vec<(usize, usize)> = tshare
            .iter()
            .map(|s| (s.0, s.0 + usize::from(s.1 != 0)))
            .collect();
        let nz = zone_sizes.len();
        let (mut lo, mut hi) = (vec![0usize; nz], vec![0usize; nz]);
        let mut by_r: BTreeMap<usize, usize> = BTreeMap::new();
        for (_, r) in &item_v {
            *by_r.entry(*r).or_insert(0) += 1;
        }
        for (&r, &cnt) in &by_r {
            let c = zone_cap(r, &zone_sizes);
            let all: usize = zone_sizes.iter().map(|&s| s.min(c)).sum();
            for z in 0..nz {
                let h = zone_sizes[z].min(c);
                lo[z] += cnt * r.saturating_sub(all - h);
                hi[z] += cnt * h;
            }
        }
        let mut zt = vec![0usize; nz];
        let mut zw = vec![0u128; nz];
        for m in 0..mm {
            zt[zone_of[m]] += target[m];
            zw[zone_of[m]] += u128::from(wts[m]);
        }
        if (0..nz).any(|z| zt[z] < lo[z] || zt[z] > hi[z]) {
            let mut want: Vec<usize> = (0..nz).map(|z| zt[z].clamp(lo[z], hi[z])).collect();
            let mut sum: usize = want.iter().sum();
            let load = |a: usize, want: &[usize]| (want[a] as u128, zw[a]);
            let less = |a: (u128, u128), b: (u128, u128)| a.0 * b.1 < b.0 * a.1;
            while sum != big_r {
                let up = sum < big_r;
                let mut pick: Option<usize> = None;
                for z in 0..nz {
                    let ok = if up { want[z] < hi[z] } else { want[z] > lo[z] };
                    if ok
                        && pick.is_none_or(|p| {
                            let (lz, lp) = (load(z, &want), load(p, &want));
                            if up {
                                less(lz, lp)
                            } else {
                                less(lp, lz)
                            }
                        })
                    {
                        pick = Some(z);
                    }
                }
                let z = pick.expect("the zone ranges contain the total");
                if up {
                    want[z] += 1;
                    sum += 1;
                } else {
                    want[z] -= 1;
                    sum -= 1;
                }
            }
            for z in 0..nz {
                if want[z] == zt[z] {
                    continue;
                }
                let ms: Vec<usize> = order
                    .iter()
                    .map(|o| o.1)
                    .filter(|&m| zone_of[m] == z)
                    .collect();
                let mut rems: Vec<(Reverse<u128>, usize, usize)> = Vec::new();
                let mut given = 0;
                for (i, &m) in ms.iter().enumerate() {
                    let (f, rem) = share(want[z], wts[m], zw[z]);
                    target[m] = f;
                    trange[m] = (f, f + usize::from(rem != 0));
                    given += f;
                    rems.push((Reverse(rem), i, m));
                }
                rems.sort_unstable();
                for &(_, _, m) in rems.iter().take(want[z] - given) {
                    target[m] += 1;
                }
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
        // Members with room on a ring in hash order. Each primary has its own cursor on the
        // ring, so the secondaries of one member's items spread over all the others (a dead
        // member's primaries then promote on many members); full members are skipped by a
        // union-find "next with room" pointer.
        let ring: Vec<usize> = order.iter().map(|o| o.1).collect();
        let mut ring_pos = vec![0usize; mm];
        for (i, &m) in ring.iter().enumerate() {
            ring_pos[m] = i;
        }
        let mut roomv: Vec<usize> = (0..mm)
            .map(|m| target[m].saturating_sub(pcount[m] + held[m].len()))
            .collect();
        let mut next: Vec<usize> = (0..=mm).collect();
        for (i, &m) in ring.iter().enumerate() {
            if roomv[m] == 0 {
                next[i] = i + 1;
            }
        }
        let mut cursor: Vec<usize> = (0..mm).map(|p| (ring_pos[p] + 1) % mm).collect();
        let allowed = |sets: &Vec<Vec<usize>>, x: usize, m: usize| {
            !sets[x].contains(&m)
                && sets[x]
                    .iter()
                    .filter(|&&o| zone_of[o] == zone_of[m])
                    .count()
                    < caps[x]
        };
        let mut sec_on: Vec<Vec<usize>> = Vec::new();
        let mut load: Vec<usize> = Vec::new(); // totals, once a replica overflows
                                               // Exchanges look at (item, member) pairs within this budget, then replicas overflow.
        let mut ex_budget = 4 * big_r + 100_000;
        for (_, x) in pool {
            let mut found = None;
            let mut i = cursor[prim[x]];
            let mut wrapped = false;
            loop {
                let j = next_with_room(&mut next, i);
                if j == mm {
                    if wrapped {
                        break;
                    }
                    wrapped = true;
                    i = 0;
                    continue;
                }
                if wrapped && j >= cursor[prim[x]] {
                    break;
                }
                if allowed(&sets, x, ring[j]) {
                    found = Some(j);
                    break;
                }
                i = j + 1;
            }
            if let Some(j) = found {
                let m = ring[j];
                sets[x].push(m);
                if !sec_on.is_empty() {
                    sec_on[m].push(x);
                }
                if !load.is_empty() {
                    load[m] += 1;
                }
                roomv[m] -= 1;
                if roomv[m] == 0 {
                    next[j] = j + 1;
                }
                cursor[prim[x]] = (j + 1) % mm;
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
                    for &b in &ring {
                        if roomv[b] == 0 {
                            continue;
                        }
                        if ex_budget == 0 {
                            break 'ex;
                        }
                        ex_budget -= 1;
                        let ok = !sets[y].contains(&b)
                            && (zone_of[b] == zone_of[a]
                                || sets[y]
                                    .iter()
                                    .filter(|&&o| zone_of[o] == zone_of[b])
                                    .count()
                                    < caps[y]);
                        if ok {
                            let pos = sets[y].iter().position(|&o| o == a).expect("a in y");
                            sets[y][pos] = b;
                            sec_on[b].push(y);
                            if !load.is_empty() {
                                load[b] += 1;
                            }
                            sets[x].push(a);
                            sec_on[a][yi] = x;
                            roomv[b] -= 1;
                            if roomv[b] == 0 {
                                next[ring_pos[b]] = ring_pos[b] + 1;
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
                if load.is_empty() {
                    load = vec![0usize; mm];
                    for set in &sets {
                        for &o in set {
                            load[o] += 1;
                        }
                    }
                }
                let a = order
                    .iter()
                    .map(|o| o.1)
                    .filter(|&a| allowed(&sets, x, a))
                    .min_by_key(|&a| load[a] as i128 - target[a] as i128)
                    .expect("the zone cap leaves a member for every replica");
                sets[x].push(a);
                load[a] += 1;
                if !sec_on.is_empty() {
                    sec_on[a].push(x);
                }
            }
        }
        if opts.repair {
            repair_totals(
                &mut sets,
                &mut prim,
                &trange,
                &flow_floor,
                &flow_frac,
                flow_ceils,
                &zone_of,
                &caps,
            );
            polish(&mut sets, &trange, &zone_of, &caps, &old_p, &old_s);
            polish_roles(
                &mut sets,
                &mut prim,
                (&flow_floor, &flow_frac, flow_ceils),
                &old_p,
                &old_s,
                &had_primary,
            );
        }
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
    let mut state: Vec<(WorkId, Replicas)> = Vec::with_capacity(n);
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
        let mut second: Vec<MemberId> = sets[x][1..].iter().map(|&m| ids[m].clone()).collect();
        second.sort();
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
        // Unchanged (same primary, same secondaries, nothing gone or duplicated): no keys.
        let unchanged = old.is_some_and(|r| {
            old_p[x] == p
                && r.secondaries.len() == old_s[x].len()
                && old_s[x].len() + 1 == sets[x].len()
                && old_s[x].iter().all(|m| sets[x][1..].contains(m))
        });
        if unchanged {
            state.push((
                (*w).clone(),
                Replicas {
                    primary: Some(prim_id),
                    secondaries: second,
                },
            ));
            continue;
        }
        let mut new_keys: Vec<(WorkId, MemberId, Role)> =
            vec![((*w).clone(), prim_id.clone(), Role::Primary)];
        new_keys.extend(
            second
                .iter()
                .map(|s| ((*w).clone(), s.clone(), Role::Secondary)),
        );
        new_keys.sort();
        let mut old_keys = Vec::new();
        if let Some(r) = old {
            push_old(&mut old_keys, w, r);
        }
        revoked.extend(
            old_keys
                .iter()
                .filter(|k| new_keys.binary_search(k).is_err())
                .cloned(),
        );
        assigned.extend(
            new_keys
                .iter()
                .filter(|k| old_keys.binary_search(k).is_err())
                .cloned(),
        );
        state.push((
            (*w).clone(),
            Replicas {
                primary: Some(prim_id),
                secondaries: second,
            },
        ));
    }
    for (c, r) in cur {
        push_old(&mut revoked, c, r);
    }
    revoked.sort();
    assigned.sort();
    plan.state = state.into_iter().collect(); // sorted: built in bulk
    plan.revoked = revoked;
    plan.assigned = assigned;
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn items(n: usize, r: u32) -> BTreeMap<WorkId, u32> {
        (0..n)
            .map(|i| (Arc::from(format!("item-{i:02}")), r))
            .collect()
    }

    fn members(spec: &[(&str, Option<&str>)]) -> BTreeMap<MemberId, ReplicaMember> {
        spec.iter()
            .map(|&(m, z)| (Arc::from(m), ReplicaMember::new(1, z)))
            .collect()
    }

    fn counts(s: &ReplicaAssignment) -> (BTreeMap<&str, usize>, BTreeMap<&str, usize>) {
        let (mut p, mut t) = (BTreeMap::new(), BTreeMap::new());
        for r in s.values() {
            let prim = r.primary.as_deref().expect("a primary");
            *p.entry(prim).or_insert(0) += 1;
            for m in std::iter::once(prim).chain(r.secondaries.iter().map(|m| &**m)) {
                *t.entry(m).or_insert(0) += 1;
            }
        }
        (p, t)
    }

    fn zones_distinct(s: &ReplicaAssignment, ms: &BTreeMap<MemberId, ReplicaMember>) -> bool {
        s.values().all(|r| {
            let all: Vec<&MemberId> = r.primary.iter().chain(&r.secondaries).collect();
            let zs: BTreeSet<_> = all.iter().map(|m| ms[*m].zone.clone()).collect();
            zs.len() == all.len()
        })
    }

    #[test]
    fn primary_death_promotes_a_live_secondary() {
        let four = members(&[("m1", None), ("m2", None), ("m3", None), ("m4", None)]);
        let it = items(40, 2);
        let before = plan_replicas(&it, &four, &ReplicaAssignment::new());
        assert_eq!(before.placed, 80);
        let (p, t) = counts(&before.state);
        assert!(p.values().all(|&c| c == 10) && t.values().all(|&c| c == 20));

        let three = members(&[("m1", None), ("m3", None), ("m4", None)]);
        let after = plan_replicas(&it, &three, &before.state);
        let dead_primaries = before
            .state
            .values()
            .filter(|r| r.primary.as_deref() == Some("m2"))
            .count();
        assert_eq!(dead_primaries, 10);
        // The secondaries of m2's items are spread over the others (the per-primary cursor).
        let mut spread = BTreeMap::new();
        for r in before
            .state
            .values()
            .filter(|r| r.primary.as_deref() == Some("m2"))
        {
            *spread.entry(r.secondaries[0].clone()).or_insert(0) += 1;
        }
        assert!(spread.len() == 3 && spread.values().all(|&c| (3..=4).contains(&c)));
        assert_eq!(after.cold_primaries, 0);
        assert_eq!(after.promotions, dead_primaries);
        assert_eq!(after.primaries_changed, dead_primaries);
        // Each of m2's 20 replicas is replaced once, nothing else moves.
        assert_eq!(after.secondaries_moved, 20);
        for (w, r) in &before.state {
            let now = &after.state[w];
            if r.primary.as_deref() == Some("m2") {
                // Promoted from its live secondary, and a new secondary placed.
                assert_eq!(now.primary.as_ref(), r.secondaries.first());
                assert_eq!(now.secondaries.len(), 1);
                assert_ne!(now.secondaries[0], now.primary.clone().unwrap());
            } else {
                assert_eq!(now.primary, r.primary, "{w}: a live primary stays");
            }
        }
        // What is revoked: m2's keys and the promoted members' secondary keys.
        for (w, m, role) in &after.revoked {
            assert!(
                &**m == "m2"
                    || (*role == Role::Secondary && after.state[w].primary.as_ref() == Some(m)),
                "{w} {m} {role:?}"
            );
        }
        let (p, t) = counts(&after.state);
        assert!(p.values().all(|&c| (13..=14).contains(&c)), "{p:?}");
        assert!(t.values().all(|&c| (26..=27).contains(&c)), "{t:?}");
    }

    #[test]
    fn zone_outage_and_return() {
        let spec = [
            ("a1", Some("a")),
            ("a2", Some("a")),
            ("b1", Some("b")),
            ("b2", Some("b")),
            ("c1", Some("c")),
            ("c2", Some("c")),
        ];
        let six = members(&spec);
        let it = items(60, 2);
        let before = plan_replicas(&it, &six, &ReplicaAssignment::new());
        assert!(zones_distinct(&before.state, &six));
        let (p, t) = counts(&before.state);
        assert!(p.values().all(|&c| c == 10) && t.values().all(|&c| c == 20));

        // Zone c goes away.
        let four = members(&spec[..4]);
        let out = plan_replicas(&it, &four, &before.state);
        assert_eq!(out.state.len(), 60);
        assert!(out.state.values().all(|r| r.primary.is_some()));
        assert_eq!(out.cold_primaries, 0);
        assert!(zones_distinct(&out.state, &four));
        let (p, t) = counts(&out.state);
        assert!(p.values().all(|&c| c == 15) && t.values().all(|&c| c == 30));
        let lost = before
            .state
            .values()
            .filter(|r| {
                r.primary
                    .iter()
                    .chain(&r.secondaries)
                    .any(|m| m.starts_with('c'))
            })
            .count();
        let lost_primaries = before
            .state
            .values()
            .filter(|r| r.primary.as_ref().is_some_and(|m| m.starts_with('c')))
            .count();
        // Only what zone c held moves: its primaries are promoted (a few other primaries may
        // hand over to their secondary where the primary quotas need it: never cold), its
        // replicas replaced.
        assert_eq!(lost_primaries, 20);
        assert_eq!(out.primaries_changed, out.promotions);
        assert!((20..=22).contains(&out.promotions), "{}", out.promotions);
        assert_eq!(out.secondaries_moved, lost);

        // Zone c comes back: spread and balanced again. c1 and c2 hold nothing, so their 20
        // primaries are necessarily cold and their 40 replicas all new.
        let back = plan_replicas(&it, &six, &out.state);
        assert!(zones_distinct(&back.state, &six));
        let (p, t) = counts(&back.state);
        assert!(p.values().all(|&c| c == 10) && t.values().all(|&c| c == 20));
        // The minimum is 20 cold primaries, 20 changed, 20 secondaries moved. The greedy
        // secondaries leave one member off balance here and the repair hands one more
        // primary over; these bounds pin what the planner does today.
        assert_eq!(back.cold_primaries, 20);
        assert!((20..=21).contains(&back.primaries_changed));
        assert!((20..=21).contains(&back.secondaries_moved));
        assert_eq!(back.revoked.len(), back.assigned.len());
        eprintln!(
            "zone c out: {} promotions, {} secondaries moved, {} keys revoked, {} assigned; \
             back: {} cold primaries, {} secondaries moved, {} keys revoked, {} assigned",
            out.promotions,
            out.secondaries_moved,
            out.revoked.len(),
            out.assigned.len(),
            back.cold_primaries,
            back.secondaries_moved,
            back.revoked.len(),
            back.assigned.len()
        );
    }

    #[test]
    fn fewer_members_than_replicas_and_no_members() {
        let two = members(&[("m1", None), ("m2", None)]);
        let p = plan_replicas(&items(4, 3), &two, &ReplicaAssignment::new());
        assert!(p.state.values().all(|r| r.secondaries.len() == 1));
        let none = plan_replicas(&items(4, 3), &BTreeMap::new(), &p.state);
        assert!(none.state.is_empty() && none.assigned.is_empty());
        assert_eq!(none.revoked.len(), 8);
    }

    #[test]
    fn replica_counts_take_overrides() {
        let ids: Vec<WorkId> = vec![Arc::from("a"), Arc::from("b")];
        let over = BTreeMap::from([(Arc::from("b"), 1)]);
        let r = replica_counts(&ids, 3, &over);
        assert_eq!(r[&Arc::<str>::from("a")], 3);
        assert_eq!(r[&Arc::<str>::from("b")], 1);
    }
}

#[cfg(test)]
mod exact_primaries {
    //! The primary phase alone (no port caps, no repair) against brute force over every
    //! primary choice meeting the primary balance: the least (cold, changed) is reached.
    use super::*;
    use proptest::prelude::*;

    fn balanced(c: usize, n: usize, w: u32, total: u128) -> bool {
        (c as u128 * total).abs_diff(n as u128 * u128::from(w)) < total
    }

    type Spec = (
        Vec<Option<u32>>,
        Vec<Option<u32>>,
        Vec<(Option<usize>, Vec<usize>)>,
    );

    fn spec() -> impl Strategy<Value = Spec> {
        (
            prop::collection::vec(prop::option::weighted(0.85, 0u32..=2), 4),
            prop::collection::vec(prop::option::weighted(0.8, 1u32..=3), 6),
            prop::collection::vec(
                (
                    prop::option::weighted(0.7, 0usize..5),
                    prop::collection::vec(0usize..5, 0..3),
                ),
                6,
            ),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]
        #[test]
        fn min_cost_primaries((ws, ns, cur) in spec()) {
            let name = |i: usize| -> MemberId { Arc::from(format!("m{i}")) };
            let members: BTreeMap<MemberId, ReplicaMember> = ws
                .iter()
                .enumerate()
                .filter_map(|(i, w)| w.map(|w| (name(i), ReplicaMember::new(w, None))))
                .collect();
            let items: BTreeMap<WorkId, u32> = ns
                .iter()
                .enumerate()
                .filter_map(|(i, r)| r.map(|r| (Arc::from(format!("w{i}")), r)))
                .collect();
            let current: ReplicaAssignment = cur
                .iter()
                .enumerate()
                .map(|(i, (p, s))| {
                    let r = Replicas {
                        primary: p.map(name),
                        secondaries: s.iter().map(|&m| name(m)).collect(),
                    };
                    (Arc::from(format!("w{i}")), r)
                })
                .collect();
            let opts = Opts { ports: false, repair: false };
            let p = plan_with(&items, &members, &current, opts);
            let elig: Vec<&MemberId> =
                members.iter().filter(|(_, m)| m.weight > 0).map(|(k, _)| k).collect();
            prop_assume!(!elig.is_empty());
            let total: u128 = members.values().map(|m| u128::from(m.weight)).sum();
            let keys: Vec<&WorkId> = items.keys().collect();
            let n = keys.len();
            let cost = |x: usize, m: &MemberId| {
                let r = current.get(keys[x]);
                let live: Vec<&MemberId> = r
                    .map(|r| r.primary.iter().chain(&r.secondaries).filter(|o| elig.contains(o)).collect())
                    .unwrap_or_default();
                let cold = usize::from(!live.is_empty() && !live.contains(&m));
                let changed = usize::from(r.and_then(|r| r.primary.as_ref()).is_some_and(|o| o != m));
                (cold, changed)
            };
            let mut best = (usize::MAX, usize::MAX);
            for mut code in 0..elig.len().pow(n as u32) {
                let mut counts = vec![0; elig.len()];
                let mut c = (0, 0);
                for x in 0..n {
                    let i = code % elig.len();
                    code /= elig.len();
                    counts[i] += 1;
                    let d = cost(x, elig[i]);
                    c = (c.0 + d.0, c.1 + d.1);
                }
                if (0..elig.len()).all(|i| balanced(counts[i], n, members[elig[i]].weight, total)) {
                    best = best.min(c);
                }
            }
            prop_assert_eq!((p.cold_primaries, p.primaries_changed), best);
        }
    }
}

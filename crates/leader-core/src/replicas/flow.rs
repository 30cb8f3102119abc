//! The primary phase: primaries chosen by a min-cost assignment (shortest augmenting
//! paths), keeping the old primary first, then promoting a live secondary, then a cold one.

#[allow(clippy::wildcard_imports)] // the parent module's types and helpers
use super::*;

/// How many nodes (plus four per member and 16 per row per member) one shortest-path search of
/// the primary phase settles before it gives up and seats its row cold (see
/// `PrimaryFlow::augment`). The rows that go cold this way are about `n / M` when a member
/// joins, so the total stays `O(n + (n/M)²)`.
pub(super) const SEARCH_BUDGET: usize = 1024;

/// How many primary slots an item without live replicas tries before it ignores the port cap.
pub(super) const FILL_TRIES: usize = 64;

/// How many members a stuck secondary tries to exchange with before it overflows.
pub(super) const EXCHANGE_TRIES: usize = 8;

/// The primary phase: an exact min-cost assignment of the items with live replicas ("rows") to
/// members within the primary quotas. Keeping the old primary costs 0, promoting a live
/// secondary 1, a cold primary `big` (through the hub, to any member). Each member also has a
/// soft "port" cap on the primaries of rows that do not force a replica onto it (its total
/// ceil minus the items that must have a replica there anyway); exceeding it costs `over`,
/// more than all cold primaries together, so the total balance is kept whenever the primaries
/// can keep it. See `docs/planner.md`.
pub(super) struct PrimaryFlow {
    /// Per row: its live replicas, the cost of each (0 old primary, 1 old secondary) and
    /// whether the row forces a replica onto that member (then it bypasses the port).
    pub(super) arcs: Vec<Vec<(usize, i128, bool)>>,
    /// Per row: its member and how it is seated there.
    pub(super) mat: Vec<(usize, Seat)>,
    /// Per member: warm rows that force it.
    pub(super) at: Vec<Vec<usize>>,
    /// Per member: warm rows through the port.
    pub(super) atp: Vec<Vec<usize>>,
    /// Per member: cold rows (through the hub and the port).
    pub(super) hub_at: Vec<Vec<usize>>,
    /// Per member: the port cap, its use within the cap, and its use over the cap.
    pub(super) pcap: Vec<usize>,
    pub(super) pused: Vec<usize>,
    pub(super) pover: Vec<usize>,
    pub(super) floor: Vec<usize>,
    pub(super) frac: Vec<bool>,
    pub(super) ceils: usize,
    pub(super) ceils_used: usize,
    /// Per row: the cost of a cold primary.
    pub(super) cold: Vec<i128>,
    pub(super) over: i128,
    pub(super) pot: Vec<i128>,
    /// Scratch of the searches, reset after each.
    pub(super) dist: Vec<i128>,
    pub(super) via: Vec<Via>,
    pub(super) settled: Vec<bool>,
}

/// How a row is seated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Seat {
    Free,
    Forced,
    Port,
    Cold,
}

/// How a node was reached in the search.
#[derive(Clone, Copy)]
pub(super) enum Via {
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
    pub(super) fn load(&self, m: usize) -> usize {
        self.at[m].len() + self.atp[m].len() + self.hub_at[m].len()
    }

    /// Whether `m` has primary room (within its floor, or a free ceil slot).
    pub(super) fn room(&self, m: usize) -> bool {
        let l = self.load(m);
        l < self.floor[m] || (l == self.floor[m] && self.frac[m] && self.ceils_used < self.ceils)
    }

    pub(super) fn take_room(&mut self, m: usize) {
        if self.load(m) >= self.floor[m] {
            self.ceils_used += 1;
        }
    }

    pub(super) fn take_port(&mut self, m: usize) {
        if self.pused[m] < self.pcap[m] {
            self.pused[m] += 1;
        } else {
            self.pover[m] += 1;
        }
    }

    pub(super) fn free_port(&mut self, m: usize) {
        if self.pover[m] > 0 {
            self.pover[m] -= 1;
        } else {
            self.pused[m] -= 1;
        }
    }

    /// Seats `row` on its old primary `m` at cost 0 without a search, if there is room.
    pub(super) fn seat_free(&mut self, row: usize, m: usize, forced: bool) -> bool {
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
    pub(super) fn seat_cold(&mut self, x: usize, hub: usize) {
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

    pub(super) fn cost_at(&self, y: usize, m: usize) -> i128 {
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
    pub(super) fn augment(&mut self, x: usize) {
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

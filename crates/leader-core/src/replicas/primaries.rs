//! Phase 1: the primaries. Items with live replicas are seated by the min-cost assignment of
//! [`PrimaryFlow`]; items without live replicas then fill the remaining primary room.

#[allow(clippy::wildcard_imports)] // the parent module's types and helpers
use super::*;

use super::place::{PrimaryQuota, Setup};

/// Chooses every item's primary. Returns the primaries and the primary quotas.
pub(super) fn choose_primaries(s: &Setup, opts: Opts) -> (Vec<usize>, PrimaryQuota) {
    let n = s.items.len();
    let mut flow = primary_flow(s, opts);
    let rows: Vec<usize> = (0..n).filter(|&x| s.live(x)).collect();
    let forced_by_r = s.forced_by_r();
    let forces = |x: usize, m: usize| forced_by_r[s.items[x].1][s.zone_of[m]];
    let mut pending = Vec::new();
    for (row, &x) in rows.iter().enumerate() {
        if s.old_p[x] == NONE || !flow.seat_free(row, s.old_p[x], forces(x, s.old_p[x])) {
            pending.push((stable_hash(s.items[x].0), row));
        }
    }
    pending.sort_unstable();
    for &(_, row) in &pending {
        flow.augment(row);
    }
    let mut prim = vec![NONE; n];
    for (row, &x) in rows.iter().enumerate() {
        prim[x] = flow.mat[row].0;
    }
    fill_fresh(s, &mut flow, &mut prim, &forces);
    let quota = PrimaryQuota {
        floor: flow.floor,
        frac: flow.frac,
        ceils: flow.ceils,
    };
    (prim, quota)
}

/// The min-cost assignment of the rows (items with live replicas) to the members' primary
/// quotas, before any row is seated.
fn primary_flow(s: &Setup, opts: Opts) -> PrimaryFlow {
    let n = s.items.len();
    let mm = s.members();
    let big_r = s.big_r();
    let forced_by_r = s.forced_by_r();
    let forces = |x: usize, m: usize| forced_by_r[s.items[x].1][s.zone_of[m]];
    let tshare = s.total_shares();
    let mut forced_count = vec![0usize; s.zone_sizes.len()];
    for (_, r) in &s.items {
        for (z, &f) in forced_by_r[*r].iter().enumerate() {
            forced_count[z] += usize::from(f);
        }
    }
    let pshare: Vec<(usize, u128)> = s.wts.iter().map(|&w| share(n, w, s.total)).collect();
    let pfloor: Vec<usize> = pshare.iter().map(|s| s.0).collect();
    let rows: Vec<usize> = (0..n).filter(|&x| s.live(x)).collect();
    // Costs, lexicographic: a cold primary (`a`) over a changed primary (`b`) over an
    // estimate of the secondaries the choice makes move (at most r − 1 per item).
    let cost_b = big_r as i128 + 1;
    let cost_a = cost_b * (n as i128 + 1);
    let est = |x: usize, keeps: usize| {
        let r = s.items[x].1 - 1;
        (r - keeps.min(r)) as i128
    };
    let live_n = |x: usize| usize::from(s.old_p[x] != NONE) + s.old_s[x].len();
    let changed = |x: usize, m: usize| i128::from(s.had_primary[x] && s.old_p[x] != m) * cost_b;
    PrimaryFlow {
        arcs: rows
            .iter()
            .map(|&x| {
                let mut arcs: Vec<(usize, i128, bool)> = Vec::new();
                let warm = |m: usize| changed(x, m) + est(x, live_n(x) - 1);
                if s.old_p[x] != NONE {
                    arcs.push((s.old_p[x], warm(s.old_p[x]), forces(x, s.old_p[x])));
                }
                arcs.extend(s.old_s[x].iter().map(|&m| (m, warm(m), forces(x, m))));
                arcs
            })
            .collect(),
        cold: rows
            .iter()
            .map(|&x| cost_a + i128::from(s.had_primary[x]) * cost_b + est(x, live_n(x)))
            .collect(),
        mat: vec![(NONE, Seat::Free); rows.len()],
        at: vec![Vec::new(); mm],
        atp: vec![Vec::new(); mm],
        hub_at: vec![Vec::new(); mm],
        pcap: (0..mm)
            .map(|m| {
                let tceil = tshare[m].0 + usize::from(tshare[m].1 != 0);
                if opts.ports {
                    tceil.saturating_sub(forced_count[s.zone_of[m]])
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
    }
}

/// Items without live replicas: fill the remaining primary room, floors first, round robin in
/// member-hash order, each on the first member in turn whose port has room.
fn fill_fresh(
    s: &Setup,
    flow: &mut PrimaryFlow,
    prim: &mut [usize],
    forces: &dyn Fn(usize, usize) -> bool,
) {
    let mut room: Vec<(usize, usize)> = Vec::new();
    for &(_, m) in &s.order {
        let l = flow.load(m);
        if l < flow.floor[m] {
            room.push((m, flow.floor[m] - l));
        }
    }
    // The free ceil slots go first to members whose port keeps room once their floor is
    // full (an item that does not force them can still go there), then in hash order.
    let mut ceil_order: Vec<(bool, u64, usize)> = s
        .order
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
    let mut fresh: Vec<(u64, usize)> = (0..s.items.len())
        .filter(|&x| !s.live(x))
        .map(|x| (stable_hash(s.items[x].0), x))
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
}

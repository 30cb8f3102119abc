//! The members' total targets: `floor(R·w/W)` or `ceil(R·w/W)` replicas each, clamped per zone
//! where the zone rule forces a zone's total outside what those targets give it.

#![allow(clippy::many_single_char_names)] // flow notation: s the setup, x an item, m a member

#[allow(clippy::wildcard_imports)] // the parent module's types and helpers
use super::*;

use super::place::Setup;

/// Per member: the total it is dealt up to (`target`) and the range a balanced plan keeps it in
/// (`range`, `(floor, ceil)`, zone-clamped).
pub(super) struct Targets {
    pub(super) target: Vec<usize>,
    pub(super) range: Vec<(usize, usize)>,
}

/// The targets, given the primaries and the live secondaries each member keeps (`held`): the
/// ceil slots go first to members over their primary floor, then to members that keep more
/// than their floor, then below it, then the others (largest remainder, then member hash).
pub(super) fn total_targets(s: &Setup, prim: &[usize], held: &[Vec<usize>]) -> Targets {
    let mm = s.members();
    let big_r = s.big_r();
    let tshare = s.total_shares();
    let mut pcount = vec![0usize; mm];
    for &p in prim {
        pcount[p] += 1;
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
            (class, Reverse(tshare[m].1), stable_hash(s.ids[m]), m)
        })
        .collect();
    cands.sort_unstable();
    for (i, c) in cands.iter().enumerate() {
        if i < extra || c.0 == 0 {
            target[c.3] += 1;
        }
    }
    let range: Vec<(usize, usize)> = tshare
        .iter()
        .map(|s| (s.0, s.0 + usize::from(s.1 != 0)))
        .collect();
    let mut t = Targets { target, range };
    clamp_to_zones(s, &mut t);
    t
}

/// Balance as the zone rule allows: each zone's total must lie between what the zone rule
/// forces into it and what it lets it take. Where the weighted targets leave a zone outside
/// that range, the zone totals are clamped (moving the difference to the zones that are least /
/// most loaded per weight) and apportioned within the zone by weight.
fn clamp_to_zones(s: &Setup, t: &mut Targets) {
    let big_r = s.big_r();
    let nz = s.zone_sizes.len();
    let (mut lo, mut hi) = (vec![0usize; nz], vec![0usize; nz]);
    let mut by_r: BTreeMap<usize, usize> = BTreeMap::new();
    for (_, r) in &s.items {
        *by_r.entry(*r).or_insert(0) += 1;
    }
    for (&r, &cnt) in &by_r {
        let c = zone_cap(r, &s.zone_sizes);
        let all: usize = s.zone_sizes.iter().map(|&z| z.min(c)).sum();
        for z in 0..nz {
            let h = s.zone_sizes[z].min(c);
            lo[z] += cnt * r.saturating_sub(all - h);
            hi[z] += cnt * h;
        }
    }
    let mut zt = vec![0usize; nz];
    let mut zw = vec![0u128; nz];
    for m in 0..s.members() {
        zt[s.zone_of[m]] += t.target[m];
        zw[s.zone_of[m]] += u128::from(s.wts[m]);
    }
    if (0..nz).all(|z| zt[z] >= lo[z] && zt[z] <= hi[z]) {
        return;
    }
    // Where some choice of floors and ceils meets the zone bounds, the ranges stay as they are
    // and only the ceil slots move between zones.
    let (mut a, mut b) = (vec![0usize; nz], vec![0usize; nz]);
    for m in 0..s.members() {
        a[s.zone_of[m]] += t.range[m].0;
        b[s.zone_of[m]] += t.range[m].1;
    }
    for z in 0..nz {
        (a[z], b[z]) = (a[z].max(lo[z]), b[z].min(hi[z]));
    }
    let sums = (a.iter().sum::<usize>(), b.iter().sum::<usize>());
    if (0..nz).all(|z| a[z] <= b[z]) && sums.0 <= big_r && big_r <= sums.1 {
        shift_ceils(s, t, &mut zt, &a, &b);
        return;
    }
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
        let ms: Vec<usize> = s
            .order
            .iter()
            .map(|o| o.1)
            .filter(|&m| s.zone_of[m] == z)
            .collect();
        let mut rems: Vec<(Reverse<u128>, usize, usize)> = Vec::new();
        let mut given = 0;
        for (i, &m) in ms.iter().enumerate() {
            let (f, rem) = share(want[z], s.wts[m], zw[z]);
            t.target[m] = f;
            t.range[m] = (f, f + usize::from(rem != 0));
            given += f;
            rems.push((Reverse(rem), i, m));
        }
        rems.sort_unstable();
        for &(_, _, m) in rems.iter().take(want[z] - given) {
            t.target[m] += 1;
        }
    }
}

/// Moves ceil slots (a member's target above its floor) from zones whose total is above `b`
/// (or below `a`, the other way) to zones with slack, until every zone total `zt` is within
/// `[a, b]`. The caller checked that such totals exist.
fn shift_ceils(s: &Setup, t: &mut Targets, zt: &mut [usize], a: &[usize], b: &[usize]) {
    let nz = zt.len();
    let member_in = |t: &Targets, z: usize, up: bool| {
        s.order.iter().map(|o| o.1).find(|&m| {
            s.zone_of[m] == z
                && if up {
                    t.target[m] < t.range[m].1
                } else {
                    t.target[m] > t.range[m].0
                }
        })
    };
    loop {
        // (from, to): a zone over its bound gives to one below its own, else to one with room;
        // a zone under its bound takes from one above its own, else from one with slack.
        let over = (0..nz).find(|&z| zt[z] > b[z]);
        let under = (0..nz).find(|&z| zt[z] < a[z]);
        let (from, to) = match (over, under) {
            (Some(f), Some(u)) => (f, u),
            (Some(f), None) => match (0..nz).find(|&z| zt[z] < b[z]) {
                Some(u) => (f, u),
                None => return,
            },
            (None, Some(u)) => match (0..nz).find(|&z| zt[z] > a[z]) {
                Some(f) => (f, u),
                None => return,
            },
            (None, None) => return,
        };
        let (Some(m_from), Some(m_to)) = (member_in(t, from, false), member_in(t, to, true)) else {
            return;
        };
        t.target[m_from] -= 1;
        t.target[m_to] += 1;
        zt[from] -= 1;
        zt[to] += 1;
    }
}

//! The planner's body: replica sets, primaries, secondaries, repair, and the key diff.

#[allow(clippy::wildcard_imports)] // the parent module's types and helpers
use super::*;

#[allow(clippy::too_many_lines)]
pub(super) fn plan_with(
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

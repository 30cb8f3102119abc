//! The output: the new state, the counts of [`ReplicaPlan`] and the key-level diff.

#[allow(clippy::wildcard_imports)] // the parent module's types and helpers
use super::*;

use super::place::Setup;

type Key = (WorkId, MemberId, Role);

/// The keys of one current entry, sorted and distinct.
fn old_keys(out: &mut Vec<Key>, w: &WorkId, r: &Replicas) {
    let mut v: Vec<Key> = Vec::new();
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
    out.extend(v);
}

/// Builds the plan from the primaries and the sets (primary first), counting the moves against
/// `current` and diffing the keys.
pub(super) fn output(
    s: &Setup,
    current: &ReplicaAssignment,
    prim: &[usize],
    sets: &[Vec<usize>],
) -> ReplicaPlan {
    let mut plan = ReplicaPlan::default();
    let mut cur = current.iter().peekable();
    let mut revoked = Vec::new();
    let mut assigned = Vec::new();
    let mut state: Vec<(WorkId, Replicas)> = Vec::with_capacity(s.items.len());
    for (x, (w, _)) in s.items.iter().enumerate() {
        while let Some((c, r)) = cur.next_if(|&(c, _)| c < *w) {
            old_keys(&mut revoked, c, r);
        }
        let old = cur.next_if(|&(c, _)| c == *w).map(|e| e.1);
        if prim[x] == NONE {
            if let Some(r) = old {
                old_keys(&mut revoked, w, r);
            }
            continue;
        }
        let p = prim[x];
        let mut second: Vec<MemberId> = sets[x][1..].iter().map(|&m| s.ids[m].clone()).collect();
        second.sort();
        if s.live(x) {
            if !s.was(x, p) {
                plan.cold_primaries += 1;
            }
            if s.old_s[x].contains(&p) {
                plan.promotions += 1;
            }
            plan.secondaries_moved += sets[x][1..].iter().filter(|&&m| !s.was(x, m)).count();
        } else {
            plan.placed += sets[x].len();
        }
        let prim_id = s.ids[p].clone();
        if s.had_primary[x] && old.and_then(|r| r.primary.as_ref()) != Some(&prim_id) {
            plan.primaries_changed += 1;
        }
        // Unchanged (same primary, same secondaries, nothing gone or duplicated): no keys.
        let unchanged = old.is_some_and(|r| {
            s.old_p[x] == p
                && r.secondaries.len() == s.old_s[x].len()
                && s.old_s[x].len() + 1 == sets[x].len()
                && s.old_s[x].iter().all(|m| sets[x][1..].contains(m))
        });
        if !unchanged {
            let mut new_keys: Vec<Key> = vec![((*w).clone(), prim_id.clone(), Role::Primary)];
            new_keys.extend(
                second
                    .iter()
                    .map(|m| ((*w).clone(), m.clone(), Role::Secondary)),
            );
            new_keys.sort();
            let mut old_k = Vec::new();
            if let Some(r) = old {
                old_keys(&mut old_k, w, r);
            }
            revoked.extend(
                old_k
                    .iter()
                    .filter(|k| new_keys.binary_search(k).is_err())
                    .cloned(),
            );
            assigned.extend(
                new_keys
                    .iter()
                    .filter(|k| old_k.binary_search(k).is_err())
                    .cloned(),
            );
        }
        state.push((
            (*w).clone(),
            Replicas {
                primary: Some(prim_id),
                secondaries: second,
            },
        ));
    }
    for (c, r) in cur {
        old_keys(&mut revoked, c, r);
    }
    revoked.sort();
    assigned.sort();
    plan.state = state.into_iter().collect(); // sorted: built in bulk
    plan.revoked = revoked;
    plan.assigned = assigned;
    plan
}

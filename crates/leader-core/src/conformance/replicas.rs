//! Replicas over zones: 3 zones × 2 members, 60 items, 2 replicas each. A
//! whole zone is killed: every item keeps (or gets back, by promotion) a
//! primary within the bound, none of them cold; the zone comes back and the
//! replicas spread over it again with the fewest moves. The acknowledged
//! workloads never hold an item as primary on two members.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use worker_core::WorkId;

use super::setup::{futures_select_any, put_items, spawn_member, Group, Holdings};
use super::{member_config, AckedLedger, ClusterStore, WAIT};
use crate::member::MemberConfig;

/// The members and their zones; zone `a` joins last so that it does not lead.
const MEMBERS: [(&str, &str); 6] = [
    ("b1", "b"),
    ("b2", "b"),
    ("c1", "c"),
    ("c2", "c"),
    ("a1", "a"),
    ("a2", "a"),
];
const ITEMS: usize = 60;

fn zone(id: &str) -> &'static str {
    MEMBERS
        .iter()
        .find(|(m, _)| *m == id)
        .map_or("?", |(_, z)| z)
}

/// Whether `all` (every replica) and `primaries` show each of the 60 items
/// on 2 members of distinct zones, one of them its primary, with `per`
/// primaries and `2 × per` replicas on each of `live`.
fn spread(all: &Holdings, primaries: &Holdings, live: &[&str]) -> bool {
    let per = ITEMS / live.len();
    let mut replicas: BTreeMap<&WorkId, Vec<&str>> = BTreeMap::new();
    for (m, items) in all {
        if !items.is_empty() && !live.contains(&m.as_str()) {
            return false;
        }
        for w in items {
            replicas.entry(w).or_default().push(m);
        }
    }
    let mut primary_of: BTreeMap<&WorkId, usize> = BTreeMap::new();
    for items in primaries.values() {
        for w in items {
            *primary_of.entry(w).or_default() += 1;
        }
    }
    replicas.len() == ITEMS
        && replicas.values().all(|ms| {
            let zones: BTreeSet<&str> = ms.iter().map(|m| zone(m)).collect();
            ms.len() == 2 && zones.len() == 2
        })
        && primary_of.len() == ITEMS
        && primary_of.values().all(|&n| n == 1)
        && live.iter().all(|m| {
            primaries.get(*m).map_or(0, BTreeSet::len) == per
                && all.get(*m).map_or(0, BTreeSet::len) == 2 * per
        })
}

/// The replica sets: item -> members holding it.
fn replica_sets(all: &Holdings) -> BTreeMap<WorkId, BTreeSet<String>> {
    let mut out: BTreeMap<WorkId, BTreeSet<String>> = BTreeMap::new();
    for (m, items) in all {
        for w in items {
            out.entry(w.clone()).or_default().insert(m.clone());
        }
    }
    out
}

/// The primary of each item.
fn primaries_of(primaries: &Holdings) -> BTreeMap<WorkId, String> {
    primaries
        .iter()
        .flat_map(|(m, items)| items.iter().map(move |w| (w.clone(), m.clone())))
        .collect()
}

/// Replicas 2 over 3 zones of 2 members, 60 items. A whole zone (`a`) is
/// killed: every item keeps, or gets back by promotion, a primary within the
/// bound, none of them cold; the zone comes back and the replicas spread
/// over it again with the fewest moves. In exclusive mode the acknowledged
/// workloads never hold an item as primary on two members; in the default
/// mode the return leaves no item without a primary. `exclusive`: in
/// exclusive mode. Returns how long the promotions took after the kill (the longest
/// an item was without an acknowledged primary).
pub async fn replicas_survive_a_zone_outage(
    store: &dyn ClusterStore,
    root: &str,
    exclusive: bool,
) -> Duration {
    let all = AckedLedger::new();
    let primaries = AckedLedger::new();
    put_items(store, root, ITEMS, 2).await;
    let config = |id: &str| {
        let c = member_config(store, root, id).replicas(2).zone(zone(id));
        if exclusive {
            let margin = c.ttl / 5;
            c.exclusive(margin)
        } else {
            c
        }
    };
    let ids: Vec<&str> = MEMBERS.iter().map(|(m, _)| *m).collect();
    // Zone a joins once one of the others leads, so that killing it does
    // not take the leader with it.
    let mut group = Group::spawn(store, root, &ids[..4], config).await;
    wait_leader(&group).await;
    for id in &ids[4..] {
        group.join(id, spawn_member(store, root, &config(id)).await);
    }
    for (id, m) in &group.members {
        all.follow_replicas(id, m);
        primaries.follow(id, m);
    }
    let bound = store.expiry_bound() + store.ttl() * 2;
    let six = ids.clone();
    wait_spread(
        &all,
        &primaries,
        &six,
        bound,
        "60 items spread over 3 zones",
    )
    .await;
    for id in ["a1", "a2"] {
        assert!(
            !group.members[id].is_leader(),
            "{id} joined last and does not lead"
        );
    }
    group.check_plans();

    // Zone a dies.
    let before = replica_sets(&all.holdings());
    for id in ["a1", "a2"] {
        group.members.remove(id).expect("member").kill().await;
        let now = tokio::time::Instant::now();
        all.set(id, BTreeSet::new(), now);
        primaries.set(id, BTreeSet::new(), now);
    }
    let four = ["b1", "b2", "c1", "c2"];
    wait_spread(
        &all,
        &primaries,
        &four,
        bound,
        "60 items spread over zones b and c",
    )
    .await;
    // Every new primary held the item before: promoted, not cold.
    for (w, p) in primaries_of(&primaries.holdings()) {
        assert!(
            before[&w].contains(&p),
            "{w}: its primary {p} held no replica of it before the outage: cold"
        );
    }
    let plans = group.check_plans();
    let cold: usize = plans.iter().map(|p| p.cold_primaries).sum();
    assert_eq!(cold, 0, "cold primaries after the outage: {plans:?}");
    let promoted: usize = plans.iter().map(|p| p.promotions).sum();
    assert!(promoted >= 20, "zone a's 20 primaries promoted: {plans:?}");
    let gap = primaries.longest_unowned();
    assert!(gap <= bound, "an item without a primary for {gap:?}");

    // Zone a comes back: the replicas spread over it again, moving only what
    // it must.
    let config: &dyn Fn(&str) -> MemberConfig = &config;
    zone_returns(store, root, &mut group, (&all, &primaries), config, bound).await;
    if exclusive {
        primaries.assert_clean();
    } else {
        // The default mode's make-before-break moves overlap; they never
        // leave an item without a primary.
        let f = primaries.figures();
        assert_eq!(
            f.longest_gap, gap,
            "a planned move left an item without a primary: {f:?}"
        );
    }
    group.halt().await;
    gap
}

/// Zone a's members start again: the replicas spread over the three zones
/// again with the fewest moves (20 primaries and 20 secondaries go to a1
/// and a2) when one plan does it, and nothing is placed from scratch.
async fn zone_returns(
    store: &dyn ClusterStore,
    root: &str,
    group: &mut Group,
    (all, primaries): (&AckedLedger, &AckedLedger),
    config: &dyn Fn(&str) -> MemberConfig,
    bound: Duration,
) {
    let six: Vec<&str> = MEMBERS.iter().map(|(m, _)| *m).collect();
    let held = all.holdings();
    let owners_before = primaries_of(&primaries.holdings());
    for id in ["a1", "a2"] {
        let m = spawn_member(store, root, &config(id)).await;
        all.follow_replicas(id, &m);
        primaries.follow(id, &m);
        group.join(id, m);
    }
    wait_spread(
        all,
        primaries,
        &six,
        bound,
        "60 items spread over 3 zones again",
    )
    .await;
    let back = group.check_plans();
    let placed: usize = back.iter().map(|p| p.placed).sum();
    assert_eq!(placed, 0, "every item had a live replica: {back:?}");
    let after = all.holdings();
    let moved_in: usize = after
        .iter()
        .map(|(m, items)| {
            items
                .difference(held.get(m).unwrap_or(&BTreeSet::new()))
                .count()
        })
        .sum();
    let changed = primaries_of(&primaries.holdings())
        .iter()
        .filter(|(w, p)| owners_before.get(*w) != Some(*p))
        .count();
    if back.len() == 1 {
        // Both joined within one soak: the plan is the fewest moves.
        assert_eq!((moved_in, changed), (40, 20), "{back:?}");
    }
}

/// Waits (at most [`WAIT`]) until a member of `group` leads.
async fn wait_leader(group: &Group) {
    let led = tokio::time::timeout(WAIT, async {
        let mut watches: Vec<_> = group
            .members
            .values()
            .map(crate::member::MemberHandle::leading)
            .collect();
        while !group
            .members
            .values()
            .any(crate::member::MemberHandle::is_leader)
        {
            futures_select_any(watches.iter_mut().map(|w| Box::pin(w.changed()))).await;
        }
    })
    .await;
    assert!(led.is_ok(), "no member led within {WAIT:?}");
}

/// Waits until the ledgers show the items spread over `live` (see [`spread`]).
async fn wait_spread(
    all: &AckedLedger,
    primaries: &AckedLedger,
    live: &[&str],
    bound: Duration,
    what: &str,
) {
    let bound = bound.max(WAIT);
    // Either ledger changing may complete the picture (a promotion changes
    // the primaries only).
    let done = tokio::select! {
        done = all.try_wait(bound, |h| spread(h, &primaries.holdings(), live)) => done,
        done = primaries.try_wait(bound, |p| spread(&all.holdings(), p, live)) => done,
    };
    assert!(
        done,
        "timed out after {bound:?} waiting for {what}: replicas {:?}, primaries {:?}",
        all.holdings(),
        primaries.holdings()
    );
}

//! Balance checks: whether the assignments the store holds, or the members'
//! settled workloads, place every item exactly once on a live member, each
//! member within one of the others; and the waits for it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use leader_core::{Layout, MemberHandle};
use tokio::sync::Notify;
use worker_core::TxnOp;

use super::STAGE_TIMEOUT;

/// True when `holdings` (member → its items) hold exactly `items` distinct
/// items, only on `live` members, each at `floor` or `ceil` of items / live.
pub(super) fn balanced<'a>(
    holdings: impl Iterator<Item = (&'a str, &'a str)>,
    live: &BTreeSet<String>,
    items: usize,
) -> bool {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    let mut total = 0;
    for (member, item) in holdings {
        if !live.contains(member) {
            return false;
        }
        *counts.entry(member).or_default() += 1;
        seen.insert(item);
        total += 1;
    }
    let (lo, hi) = (items / live.len(), items.div_ceil(live.len()));
    total == items
        && seen.len() == items
        && live
            .iter()
            .all(|m| (lo..=hi).contains(counts.get(m.as_str()).unwrap_or(&0)))
}

/// The observed assignment keys as (member, item) pairs.
pub(super) fn assignment_pairs<'a>(
    keys: &'a BTreeSet<String>,
    prefix: &'a str,
) -> impl Iterator<Item = (&'a str, &'a str)> {
    keys.iter()
        .filter_map(move |k| k.strip_prefix(prefix).and_then(|rest| rest.split_once('/')))
}

/// Waits until the settled workloads of `live` members are balanced.
pub(super) async fn workers_balanced(
    members: &BTreeMap<String, MemberHandle>,
    live: &BTreeSet<String>,
    items: usize,
    notify: &Notify,
    what: &str,
) -> Result<Instant, String> {
    let fut = async {
        loop {
            let notified = notify.notified();
            let loads: Vec<(&str, Arc<worker_core::Workload>)> = live
                .iter()
                .filter_map(|id| {
                    members
                        .get(id)
                        .map(|m| (id.as_str(), m.worker().workload()))
                })
                .collect();
            // Counts first (cheap); the item-by-item check only when they fit.
            let (lo, hi) = (items / live.len(), items.div_ceil(live.len()));
            let ok = loads.len() == live.len()
                && loads.iter().map(|(_, w)| w.len()).sum::<usize>() == items
                && loads.iter().all(|(_, w)| (lo..=hi).contains(&w.len()))
                && balanced(
                    loads
                        .iter()
                        .flat_map(|(id, w)| w.keys().map(move |k| (*id, k.as_ref()))),
                    live,
                    items,
                );
            if ok {
                return Instant::now();
            }
            notified.await;
        }
    };
    tokio::time::timeout(STAGE_TIMEOUT, fut)
        .await
        .map_err(|_| format!("{what}: not within {STAGE_TIMEOUT:?}"))
}

/// Waits until every member's settled workload holds the values the
/// assignment puts of `txns` wrote for its items.
pub(super) async fn workloads_hold(
    members: &BTreeMap<String, MemberHandle>,
    layout: &Layout,
    txns: &[Vec<TxnOp>],
    notify: &Notify,
) -> Result<(), String> {
    let written: BTreeMap<&str, &bytes::Bytes> = txns
        .iter()
        .flatten()
        .filter_map(|op| match op {
            TxnOp::Put { key, value } if key.starts_with(&layout.assignments) => {
                Some((key.as_str(), value))
            }
            _ => None,
        })
        .collect();
    let fut = async {
        loop {
            let notified = notify.notified();
            let held = members.iter().all(|(id, m)| {
                m.worker().workload().iter().all(|(work, value)| {
                    written
                        .get(layout.assignment_key(id, work).as_str())
                        .is_none_or(|v| *v == value)
                })
            });
            if held {
                return;
            }
            notified.await;
        }
    };
    tokio::time::timeout(STAGE_TIMEOUT, fut)
        .await
        .map_err(|_| format!("workloads not back within {STAGE_TIMEOUT:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The set of `ids`.
    fn live(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn balanced_needs_every_item_once_on_live_members_within_one() {
        let two = live(&["a", "b"]);
        assert!(balanced(
            [("a", "1"), ("a", "2"), ("b", "3")].into_iter(),
            &two,
            3
        ));
        // An item twice.
        assert!(!balanced(
            [("a", "1"), ("b", "1"), ("b", "3")].into_iter(),
            &two,
            3
        ));
        // Off balance.
        assert!(!balanced(
            [("a", "1"), ("a", "2"), ("a", "3"), ("b", "4")].into_iter(),
            &two,
            4
        ));
        // On a member that is not live.
        assert!(!balanced(
            [("a", "1"), ("c", "2"), ("b", "3")].into_iter(),
            &two,
            3
        ));
    }

    #[test]
    fn assignment_keys_split_into_member_and_item() {
        let keys: BTreeSet<String> = ["p/m1/w1", "p/m2/w2", "other/m1/w3"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let pairs: Vec<_> = assignment_pairs(&keys, "p/").collect();
        assert_eq!(pairs, vec![("m1", "w1"), ("m2", "w2")]);
    }
}

//! The assignment planner (placeholder; filled in next).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use worker_core::WorkId;

/// A member's id (its instance id).
pub type MemberId = Arc<str>;

/// Current owners: work id -> member id.
pub type Assignment = BTreeMap<WorkId, MemberId>;

/// The result of [`plan()`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// The new assignment.
    pub assignment: Assignment,
    /// Items whose owner was a live member and changed.
    pub moved: usize,
    /// Items that had no owner or whose owner is gone.
    pub placed: usize,
    /// `(item, old owner)` keys to delete, sorted.
    pub revoked: Vec<(WorkId, MemberId)>,
    /// `(item, new owner)` keys to put, sorted.
    pub assigned: Vec<(WorkId, MemberId)>,
}

/// Per-member `(floor, ceil)` of its weighted quota.
pub fn quotas(n_items: usize, members: &BTreeMap<MemberId, u32>) -> BTreeMap<MemberId, (usize, usize)> {
    let _ = (n_items, members);
    BTreeMap::new()
}

/// Plans a new assignment.
pub fn plan(items: &BTreeSet<WorkId>, members: &BTreeMap<MemberId, u32>, current: &Assignment) -> Plan {
    let _ = (items, members, current);
    Plan::default()
}

/// The fewest moves any balanced assignment needs.
pub fn min_moves(items: &BTreeSet<WorkId>, members: &BTreeMap<MemberId, u32>, current: &Assignment) -> usize {
    let _ = (items, members, current);
    0
}

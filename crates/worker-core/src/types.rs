//! Plain data exchanged between the stores, the core and the application.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use crate::envelope::Role;

/// A store position: Consul's `X-Consul-Index` or etcd's revision.
///
/// Positions only grow while the store keeps its history; a backend reports
/// [`WatchEvent::Lost`] when it cannot resume from one.
pub type Revision = u64;

/// The id of one work item: the last path segment of an assignment key.
pub type WorkId = Arc<str>;

/// A member's workload: work ids with the value the leader attached to each.
///
/// A `BTreeMap` so that iteration (and the JSON output) is sorted.
pub type Workload = BTreeMap<WorkId, Bytes>;

/// One key/value pair read from the store.
///
/// Equality compares the key and the value only: `revision` says when the
/// key was created, not what it is.
#[derive(Clone)]
pub struct KvEntry {
    /// The full key, as bytes (etcd keys need not be UTF-8).
    pub key: Vec<u8>,
    /// The value attached to the key.
    pub value: Bytes,
    /// The store position at which the key was created (etcd
    /// `create_revision`, Consul `CreateIndex`, memory the revision of the
    /// write that created it; rewriting a key keeps it), filled in by
    /// [`KvWatch::list`](crate::KvWatch::list); 0 where not known.
    pub revision: Revision,
}

impl PartialEq for KvEntry {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key && self.value == other.value
    }
}

impl Eq for KvEntry {}

impl KvEntry {
    /// Builds an entry from anything key-like and value-like (revision 0).
    pub fn new(key: impl Into<Vec<u8>>, value: impl Into<Bytes>) -> Self {
        Self::at(key, value, 0)
    }

    /// Builds an entry created at `revision`.
    pub fn at(key: impl Into<Vec<u8>>, value: impl Into<Bytes>, revision: Revision) -> Self {
        Self {
            key: key.into(),
            value: value.into(),
            revision,
        }
    }
}

impl fmt::Debug for KvEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvEntry")
            .field("key", &String::from_utf8_lossy(&self.key))
            .field("value_len", &self.value.len())
            .field("revision", &self.revision)
            .finish()
    }
}

/// Everything under a prefix at one store position.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The position the snapshot was read at; a watch resumes after it.
    pub revision: Revision,
    /// The entries under the prefix, in any order.
    pub entries: Vec<KvEntry>,
}

/// One change to a key under a watched prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvChange {
    /// The key was created or its value replaced.
    Put(KvEntry),
    /// The key was deleted.
    Delete {
        /// The deleted key.
        key: Vec<u8>,
    },
}

/// What a [`KvStream`](crate::KvStream) yields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    /// Incremental changes (etcd). All of them happened at or before `revision`,
    /// which is the position to resume after.
    Changes {
        /// The store position after these changes.
        revision: Revision,
        /// The changes, oldest first.
        changes: Vec<KvChange>,
    },
    /// A complete new picture of the prefix (a Consul blocking query answer).
    /// The core diffs it against what it holds.
    Snapshot(Snapshot),
    /// Nothing changed under the prefix up to `revision` (a blocking query
    /// that timed out, an etcd progress notification).
    Progress {
        /// The store position known to be current.
        revision: Revision,
    },
    /// The store can no longer resume from the position the watch was opened at
    /// (Consul index went backwards, etcd revision compacted, watch cancelled).
    /// The core relists; it never resumes silently.
    Lost {
        /// Why the position was lost, for the log.
        reason: String,
    },
}

/// The member currently holding leadership.
///
/// Two observations are the same leader when `id` and `term` are equal;
/// `name` is for display only.
#[derive(Clone, Debug)]
pub struct Leader {
    /// The leader's identity as the store records it (Consul session id or the
    /// value of the lock key; etcd election proposal).
    pub id: String,
    /// A number that changes whenever leadership is taken anew (Consul
    /// `ModifyIndex` of the leader key, etcd create revision of the leader key).
    pub term: u64,
    /// The leader's own name where the store keeps one apart from `id`
    /// (Consul: the leader key's value, a member's instance id); `None`
    /// where `id` is already the name.
    pub name: Option<String>,
}

impl Leader {
    /// The name to show: `name`, else `id`.
    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.id)
    }
}

impl PartialEq for Leader {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id && self.term == other.term
    }
}

impl Eq for Leader {}

impl std::hash::Hash for Leader {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.id.hash(state);
        self.term.hash(state);
    }
}

/// A settled change, as published to the application.
///
/// Values are the application's bytes: with replicas, the role an assignment
/// key's value carries in its envelope ([`Envelope`](crate::Envelope)) is
/// taken off and reported apart, in `added_secondaries`, `promoted` and
/// `demoted`. A role change alone is not a value change (the item is not in
/// `changed`); an item whose value and role both change is in both lists.
/// With one replica per item every item is a primary and the role lists stay
/// empty. Every list is sorted by work id.
///
/// Non-exhaustive: a later release may say more about a change; read the
/// fields, and build one with `Default` and field assignments where a test
/// needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkloadChange {
    /// The store position the published set was observed at.
    pub revision: Revision,
    /// Work ids that were not in the previous settled workload, with values.
    pub added: Vec<(WorkId, Bytes)>,
    /// Work ids that are no longer assigned.
    pub removed: Vec<WorkId>,
    /// Work ids whose value changed, with the new value.
    pub changed: Vec<(WorkId, Bytes)>,
    /// True for the first publication of a worker (the first sync), which may
    /// be empty, and for the first message of a new [`changes`] subscription.
    ///
    /// [`changes`]: crate::WorkerHandle::changes
    pub initial: bool,
    /// The work ids of `added` that arrive as secondaries (standbys); the
    /// others of `added` arrive as primaries.
    pub added_secondaries: Vec<WorkId>,
    /// Work ids held before and after, promoted from secondary to primary.
    pub promoted: Vec<WorkId>,
    /// Work ids held before and after, demoted from primary to secondary.
    pub demoted: Vec<WorkId>,
}

/// How the role of an item still held compares with its role before a
/// (coalesced) change.
#[derive(Clone, Copy)]
enum RoleNet {
    /// Unchanged.
    Same,
    /// Changed to this role (from the other one).
    To(Role),
    /// This role, after a removal and a new assignment: the role before is
    /// not known, so it is reported as a change to this role.
    Reset(Role),
}

impl RoleNet {
    /// This net change followed by a change of role to `to`. `valued`: the
    /// item's value changed too.
    ///
    /// A role change that goes back is dropped only for an item whose value
    /// did not change: such a role change comes straight from the worker,
    /// which knows the role before. Where the value changed, the role before
    /// may be unknown (a removal and a new assignment, coalesced earlier into
    /// `changed` and the role it came back with), so the role it ends with is
    /// reported.
    fn then(self, to: Role, valued: bool) -> RoleNet {
        match self {
            // Back to the role it had at the start.
            RoleNet::To(r) if r != to && !valued => RoleNet::Same,
            RoleNet::Same | RoleNet::To(_) => RoleNet::To(to),
            RoleNet::Reset(_) => RoleNet::Reset(to),
        }
    }
}

/// An item's net change over one or more changes.
enum Net {
    Added(Bytes, Role),
    Removed,
    /// Held before and after: the new value if it changed, and the role.
    Kept(Option<Bytes>, RoleNet),
}

impl WorkloadChange {
    /// True when the change adds, removes and changes nothing, values and
    /// roles alike.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.changed.is_empty()
            && self.added_secondaries.is_empty()
            && self.promoted.is_empty()
            && self.demoted.is_empty()
    }

    /// The role an item of `added` arrives with.
    pub fn added_role(&self, id: &str) -> Role {
        if self.added_secondaries.iter().any(|s| &**s == id) {
            Role::Secondary
        } else {
            Role::Primary
        }
    }

    /// This change followed by `next`, as one change: applying the result
    /// to a workload (and its roles) gives what applying `self` then `next`
    /// gives. Used to coalesce the queue of a subscriber that falls behind.
    /// An item removed by `self` and added again by `next` comes out as
    /// `changed` (with the new value, which may equal the one it had before)
    /// and as `promoted` or `demoted` by the role it came back with (which
    /// may be the role it had before); one added by `self` and removed by
    /// `next` comes out as nothing, and so does one promoted by `self` and
    /// demoted by `next` (or the other way round) whose value did not change
    /// (when it did, the item is in `changed` and in the list of the role it
    /// ended with).
    /// The revision is `next`'s; the result is `initial` when `self` is.
    #[must_use]
    pub fn then(self, next: WorkloadChange) -> WorkloadChange {
        let mut sum: BTreeMap<WorkId, Net> = BTreeMap::new();
        let secondaries: BTreeSet<WorkId> = self.added_secondaries.into_iter().collect();
        for (id, v) in self.added {
            let role = if secondaries.contains(&id) {
                Role::Secondary
            } else {
                Role::Primary
            };
            sum.insert(id, Net::Added(v, role));
        }
        for id in self.removed {
            sum.insert(id, Net::Removed);
        }
        for (id, v) in self.changed {
            sum.insert(id, Net::Kept(Some(v), RoleNet::Same));
        }
        let roles = |promoted: Vec<WorkId>, demoted: Vec<WorkId>| {
            promoted
                .into_iter()
                .map(|id| (id, Role::Primary))
                .chain(demoted.into_iter().map(|id| (id, Role::Secondary)))
        };
        for (id, to) in roles(self.promoted, self.demoted) {
            match sum.get_mut(&id) {
                Some(Net::Kept(value, role)) => *role = role.then(to, value.is_some()),
                _ => {
                    sum.insert(id, Net::Kept(None, RoleNet::To(to)));
                }
            }
        }
        for id in next.removed {
            match sum.get(&id) {
                Some(Net::Added(..)) => {
                    sum.remove(&id);
                }
                _ => {
                    sum.insert(id, Net::Removed);
                }
            }
        }
        let secondaries: BTreeSet<WorkId> = next.added_secondaries.into_iter().collect();
        for (id, v) in next.added {
            let role = if secondaries.contains(&id) {
                Role::Secondary
            } else {
                Role::Primary
            };
            // Absent before `next`: absent before `self` too, unless `self`
            // removed it.
            let entry = match sum.get(&id) {
                Some(Net::Removed | Net::Kept(..)) => Net::Kept(Some(v), RoleNet::Reset(role)),
                Some(Net::Added(..)) | None => Net::Added(v, role),
            };
            sum.insert(id, entry);
        }
        for (id, v) in next.changed {
            // Present before `next`: new to `self`'s base if `self` added it.
            match sum.get_mut(&id) {
                Some(Net::Added(value, _)) => *value = v,
                Some(Net::Kept(value, _)) => *value = Some(v),
                Some(Net::Removed) | None => {
                    sum.insert(id, Net::Kept(Some(v), RoleNet::Same));
                }
            }
        }
        for (id, to) in roles(next.promoted, next.demoted) {
            match sum.get_mut(&id) {
                Some(Net::Added(_, role)) => *role = to,
                Some(Net::Kept(value, role)) => *role = role.then(to, value.is_some()),
                Some(Net::Removed) | None => {
                    sum.insert(id, Net::Kept(None, RoleNet::To(to)));
                }
            }
        }
        Self::from_net(sum, next.revision, self.initial)
    }

    /// The change that the net changes `sum` make.
    fn from_net(sum: BTreeMap<WorkId, Net>, revision: Revision, initial: bool) -> WorkloadChange {
        let mut out = WorkloadChange {
            revision,
            initial,
            ..WorkloadChange::default()
        };
        for (id, n) in sum {
            match n {
                Net::Added(v, role) => {
                    if role == Role::Secondary {
                        out.added_secondaries.push(id.clone());
                    }
                    out.added.push((id, v));
                }
                Net::Removed => out.removed.push(id),
                Net::Kept(value, role) => {
                    let to = match role {
                        RoleNet::Same => None,
                        RoleNet::To(r) | RoleNet::Reset(r) => Some(r),
                    };
                    match to {
                        Some(Role::Primary) => out.promoted.push(id.clone()),
                        Some(Role::Secondary) => out.demoted.push(id.clone()),
                        None => {}
                    }
                    if let Some(v) = value {
                        out.changed.push((id, v));
                    }
                }
            }
        }
        out
    }

    /// Applies this change to a workload (values only; see
    /// [`apply_roles_to`](Self::apply_roles_to) for the roles).
    pub fn apply_to(&self, workload: &mut Workload) {
        for id in &self.removed {
            workload.remove(id);
        }
        for (id, value) in self.added.iter().chain(&self.changed) {
            workload.insert(id.clone(), value.clone());
        }
    }

    /// Applies the role part of this change to the set of items held as
    /// secondaries (every other item of the workload is a primary).
    pub fn apply_roles_to(&self, secondaries: &mut BTreeSet<WorkId>) {
        for id in self
            .removed
            .iter()
            .chain(self.added.iter().map(|(id, _)| id))
        {
            secondaries.remove(id);
        }
        for id in &self.promoted {
            secondaries.remove(id);
        }
        for id in self.added_secondaries.iter().chain(&self.demoted) {
            secondaries.insert(id.clone());
        }
    }
}

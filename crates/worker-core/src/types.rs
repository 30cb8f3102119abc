//! Plain data exchanged between the stores, the core and the application.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

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
/// Non-exhaustive: a later release may say more about a change (roles, for
/// example); read the fields, and build one with `Default` and field
/// assignments where a test needs it.
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
}

impl WorkloadChange {
    /// True when the change adds, removes and changes nothing.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }

    /// This change followed by `next`, as one change: applying the result
    /// to a workload gives what applying `self` then `next` gives. Used to
    /// coalesce the queue of a subscriber that falls behind. An item removed
    /// by `self` and added again by `next` comes out as `changed` (with the
    /// new value, which may equal the one it had before); one added by `self`
    /// and removed by `next` comes out as nothing. The revision is `next`'s;
    /// the result is `initial` when `self` is.
    #[must_use]
    pub fn then(self, next: WorkloadChange) -> WorkloadChange {
        enum Net {
            Added(Bytes),
            Removed,
            Changed(Bytes),
        }
        let mut sum: BTreeMap<WorkId, Net> = BTreeMap::new();
        for (id, v) in self.added {
            sum.insert(id, Net::Added(v));
        }
        for id in self.removed {
            sum.insert(id, Net::Removed);
        }
        for (id, v) in self.changed {
            sum.insert(id, Net::Changed(v));
        }
        for id in next.removed {
            match sum.get(&id) {
                Some(Net::Added(_)) => {
                    sum.remove(&id);
                }
                _ => {
                    sum.insert(id, Net::Removed);
                }
            }
        }
        for (id, v) in next.added {
            // Absent before `next`: absent before `self` too, unless `self`
            // removed it.
            let entry = match sum.get(&id) {
                Some(Net::Removed | Net::Changed(_)) => Net::Changed(v),
                Some(Net::Added(_)) | None => Net::Added(v),
            };
            sum.insert(id, entry);
        }
        for (id, v) in next.changed {
            // Present before `next`: new to `self`'s base if `self` added it.
            let entry = match sum.get(&id) {
                Some(Net::Added(_)) => Net::Added(v),
                _ => Net::Changed(v),
            };
            sum.insert(id, entry);
        }
        let mut out = WorkloadChange {
            revision: next.revision,
            initial: self.initial,
            ..WorkloadChange::default()
        };
        for (id, n) in sum {
            match n {
                Net::Added(v) => out.added.push((id, v)),
                Net::Removed => out.removed.push(id),
                Net::Changed(v) => out.changed.push((id, v)),
            }
        }
        out
    }

    /// Applies this change to a workload.
    pub fn apply_to(&self, workload: &mut Workload) {
        for id in &self.removed {
            workload.remove(id);
        }
        for (id, value) in self.added.iter().chain(&self.changed) {
            workload.insert(id.clone(), value.clone());
        }
    }
}

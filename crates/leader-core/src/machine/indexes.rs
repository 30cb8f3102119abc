//! The indexes the reconcile loop asks of on every event ([`Indexes`]),
//! kept on every change, and the tests' check of everything kept
//! incrementally against a recomputation from scratch
//! ([`LeaderMachine::check_indexes`]).

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use worker_core::{Envelope, Role, WorkId};

use super::handoff::{owed_indexes, Waits};
use super::members::parse_good;
use super::LeaderMachine;
use crate::layout::MemberMeta;
use crate::plan::MemberId;
use crate::replicas::Replicas;

/// What the reconcile loop asks of `current`, `desired` and `items` on every
/// event, kept up to date on each change of them (a read, an applied
/// transaction, a plan, an items picture) instead of recomputed per event.
/// [`Indexes::build`] is the slower truth the tests compare it with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Indexes {
    /// The members holding a primary's assignment key of each item (with one
    /// replica: every key).
    pub(super) owners: BTreeMap<WorkId, BTreeSet<MemberId>>,
    /// How many assignment keys each member holds.
    pub(super) held: BTreeMap<MemberId, usize>,
    /// Assignment keys the plan does not want (the item is not planned on
    /// that member), and primaries' keys the plan wants as a secondary's
    /// (demotions), in `current`'s order.
    pub(super) misplaced: BTreeSet<(MemberId, WorkId)>,
    /// Planned replicas (of items with a value) whose assignment key is
    /// missing or holds another value or role, as (member, item): ordered by
    /// member,
    /// so that the assigns of one transaction go to as few members as
    /// possible. Each member then receives its new items in one or two
    /// changes (one soak, one acknowledgement), not a few at a time in every
    /// transaction of the write: at start-up, with the plan spreading
    /// neighbouring items over all members, that was every member waking,
    /// soaking and writing its acknowledgement again all through the write.
    pub(super) unplaced: BTreeSet<(MemberId, WorkId)>,
    /// Planned replicas (keys) of items that have a value.
    pub(super) wanted: usize,
}

/// The assignment keys in the store: (member, work) -> value.
type Current = BTreeMap<(MemberId, WorkId), Bytes>;
/// The last plan: item -> its replicas.
pub(super) type Desired = BTreeMap<WorkId, Replicas>;
/// The items plans use: work -> value (without an envelope).
type Items = BTreeMap<WorkId, Bytes>;

impl Indexes {
    /// The indexes computed from scratch.
    fn build(current: Option<&Current>, desired: Option<&Desired>, items: Option<&Items>) -> Self {
        let mut idx = Self::default();
        if let Some(current) = current {
            for ((m, w), v) in current {
                if is_primary(v) {
                    idx.owners.entry(w.clone()).or_default().insert(m.clone());
                }
                *idx.held.entry(m.clone()).or_default() += 1;
                if misplaced(wanted_role(desired, m, w), v) {
                    idx.misplaced.insert((m.clone(), w.clone()));
                }
            }
        }
        if let (Some(desired), Some(items)) = (desired, items) {
            for (w, r) in desired {
                let Some(v) = items.get(w) else { continue };
                for (m, role) in roles(r) {
                    idx.wanted += 1;
                    let placed = current.and_then(|c| c.get(&(m.clone(), w.clone())));
                    if !placed.is_some_and(|p| Envelope::holds(p, role, v)) {
                        idx.unplaced.insert((m.clone(), w.clone()));
                    }
                }
            }
        }
        idx
    }

    /// Updates the indexes after `current`'s key `(member, work)` changed
    /// (written, rewritten or deleted); `existed`: it was there before.
    pub(super) fn key_changed(
        &mut self,
        member: &MemberId,
        work: &WorkId,
        existed: bool,
        current: &Current,
        desired: Option<&Desired>,
        items: Option<&Items>,
    ) {
        let key = (member.clone(), work.clone());
        let stored = current.get(&key);
        let primary = stored.is_some_and(|v| is_primary(v));
        let owners = self.owners.entry(work.clone()).or_default();
        if primary {
            owners.insert(member.clone());
        } else {
            owners.remove(member);
        }
        if owners.is_empty() {
            self.owners.remove(work);
        }
        let present = stored.is_some();
        if present && !existed {
            *self.held.entry(member.clone()).or_default() += 1;
        } else if !present && existed {
            if let Some(n) = self.held.get_mut(member) {
                *n -= 1;
                if *n == 0 {
                    self.held.remove(member);
                }
            }
        }
        let role = wanted_role(desired, member, work);
        match stored {
            Some(v) if misplaced(role, v) => {
                self.misplaced.insert(key.clone());
            }
            _ => {
                self.misplaced.remove(&key);
            }
        }
        let value = items.and_then(|i| i.get(work));
        if let (Some(role), Some(v)) = (role, value) {
            if stored.is_some_and(|p| Envelope::holds(p, role, v)) {
                self.unplaced.remove(&key);
            } else {
                self.unplaced.insert(key);
            }
        }
    }
}

/// Whether an assignment key's value gives its holder the primary role.
pub(super) fn is_primary(value: &[u8]) -> bool {
    Envelope::role_of(value).0 == Role::Primary
}

/// The role the plan gives `member` for `work`, if any.
pub(super) fn wanted_role(
    desired: Option<&Desired>,
    member: &MemberId,
    work: &WorkId,
) -> Option<Role> {
    let r = desired?.get(work)?;
    if r.primary.as_ref() == Some(member) {
        Some(Role::Primary)
    } else if r.secondaries.contains(member) {
        Some(Role::Secondary)
    } else {
        None
    }
}

/// Whether a key holding `value` is one the reconcile loop revokes: the plan
/// does not want it, or wants a secondary where a primary is (a demotion).
pub(super) fn misplaced(role: Option<Role>, value: &[u8]) -> bool {
    match role {
        None => true,
        Some(Role::Secondary) => is_primary(value),
        Some(Role::Primary) => false,
    }
}

/// Each replica of `r` with its role: the primary first.
pub(super) fn roles(r: &Replicas) -> impl Iterator<Item = (&MemberId, Role)> {
    r.primary
        .iter()
        .map(|m| (m, Role::Primary))
        .chain(r.secondaries.iter().map(|m| (m, Role::Secondary)))
}

impl LeaderMachine {
    /// Rebuilds the indexes: after a read, a plan or a new items picture
    /// (each `O(items)` already).
    pub(super) fn reindex(&mut self) {
        self.idx = Indexes::build(
            self.current.as_ref(),
            self.desired.as_ref(),
            self.items.as_ref(),
        );
    }

    /// Tests only: take every members picture whole, as the slower truth
    /// the usual path (only what changed) is compared with.
    #[doc(hidden)]
    pub fn set_whole_pictures(&mut self, whole: bool) {
        self.whole_pictures = whole;
    }

    /// Tests only: whether the incremental indexes equal a recomputation
    /// from scratch (the slower truth); `Err` describes the first
    /// difference.
    #[doc(hidden)]
    pub fn check_indexes(&self) -> Result<(), String> {
        let truth = Indexes::build(
            self.current.as_ref(),
            self.desired.as_ref(),
            self.items.as_ref(),
        );
        if !self.owed.keys().eq(self.owed_times.keys()) {
            return Err("owed_times names other entries than owed".to_owned());
        }
        let owed = owed_indexes(&self.owed, &self.owed_times);
        if owed
            != (
                self.owed_by.clone(),
                self.owed_since.clone(),
                self.owed_fenced.clone(),
            )
        {
            return Err(format!(
                "owed indexes differ from a recomputation: kept {:?}, truth {owed:?}",
                (&self.owed_by, &self.owed_since, &self.owed_fenced)
            ));
        }
        // The members, acknowledgements and sessions as the whole last
        // picture says (the slower truth of `members_delta`).
        if let Some(kept) = &self.members {
            let (mut members, mut acks, mut sessions) =
                (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
            for (key, value) in &self.last_members {
                let Ok(id) = self.layout.parse_member(key) else {
                    continue;
                };
                let id = MemberId::from(id);
                let meta = parse_good(value).unwrap_or(MemberMeta {
                    acked: Some(0),
                    ..MemberMeta::default()
                });
                members.insert(id.clone(), meta.effective_weight());
                acks.insert(id.clone(), meta.acked);
                if let Some(s) = meta.session {
                    sessions.insert(id, s);
                }
            }
            if (&members, &acks, &sessions) != (kept, &self.acks, &self.sessions) {
                return Err(format!(
                    "members differ from the last picture's: kept {:?}, truth {:?}",
                    (kept, &self.acks, &self.sessions),
                    (&members, &acks, &sessions)
                ));
            }
        }
        if let Some(quiet) = &self.quiet {
            // The skipped scans would find nothing, and wait for no more
            // than was noted.
            let mut waits = Waits::default();
            let assigns = self.scan_assigns(self.last_now, &mut waits);
            let (cleanup, done) = self.scan_cleanup(self.last_now, &mut waits);
            if assigns.is_some() || !cleanup.is_empty() || !done.is_empty() || waits.other {
                return Err(format!(
                    "scans skipped as quiet would find: assigns {assigns:?}, clean-up \
                     {cleanup:?}, moves to forget {done:?}, other waits {}",
                    waits.other
                ));
            }
            if let Some((m, lowest)) = quiet
                .iter()
                .find(|(m, lowest)| !matches!(self.acks.get(*m), Some(Some(a)) if a < *lowest))
            {
                return Err(format!(
                    "quiet, yet {m}'s acknowledgement {:?} reached {lowest}",
                    self.acks.get(m)
                ));
            }
        }
        if truth == self.idx {
            return Ok(());
        }
        Err(format!(
            "indexes differ from a recomputation:\n kept: {:?}\n truth: {truth:?}",
            self.idx
        ))
    }
}

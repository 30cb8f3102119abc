//! The indexes the reconcile loop asks of on every event ([`Indexes`]),
//! kept on every change, and the tests' check of everything kept
//! incrementally against a recomputation from scratch
//! ([`LeaderMachine::check_indexes`]).

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use worker_core::WorkId;

use super::handoff::{owed_indexes, Waits};
use super::members::parse_good;
use super::LeaderMachine;
use crate::layout::MemberMeta;
use crate::plan::MemberId;

/// What the reconcile loop asks of `current`, `desired` and `items` on every
/// event, kept up to date on each change of them (a read, an applied
/// transaction, a plan, an items picture) instead of recomputed per event.
/// [`Indexes::build`] is the slower truth the tests compare it with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Indexes {
    /// The members holding an assignment key of each item.
    pub(super) owners: BTreeMap<WorkId, BTreeSet<MemberId>>,
    /// How many assignment keys each member holds.
    pub(super) held: BTreeMap<MemberId, usize>,
    /// Assignment keys the plan does not want (the item is not planned on
    /// that member), in `current`'s order.
    pub(super) misplaced: BTreeSet<(MemberId, WorkId)>,
    /// Planned items (with a value) whose assignment key on their target is
    /// missing or holds another value, as (target, item): ordered by target,
    /// so that the assigns of one transaction go to as few members as
    /// possible. Each member then receives its new items in one or two
    /// changes (one soak, one acknowledgement), not a few at a time in every
    /// transaction of the write: at start-up, with the plan spreading
    /// neighbouring items over all members, that was every member waking,
    /// soaking and writing its acknowledgement again all through the write.
    pub(super) unplaced: BTreeSet<(MemberId, WorkId)>,
    /// Planned items that have a value.
    pub(super) wanted: usize,
}

/// The assignment keys in the store: (member, work) -> value.
type Current = BTreeMap<(MemberId, WorkId), Bytes>;
/// The last plan: item -> member.
type Desired = BTreeMap<WorkId, MemberId>;
/// The items plans use: work -> value.
type Items = BTreeMap<WorkId, Bytes>;

impl Indexes {
    /// The indexes computed from scratch.
    fn build(current: Option<&Current>, desired: Option<&Desired>, items: Option<&Items>) -> Self {
        let mut idx = Self::default();
        if let Some(current) = current {
            for (m, w) in current.keys() {
                idx.owners.entry(w.clone()).or_default().insert(m.clone());
                *idx.held.entry(m.clone()).or_default() += 1;
                if desired.and_then(|d| d.get(w)) != Some(m) {
                    idx.misplaced.insert((m.clone(), w.clone()));
                }
            }
        }
        if let (Some(desired), Some(items)) = (desired, items) {
            for (w, m) in desired {
                let Some(v) = items.get(w) else { continue };
                idx.wanted += 1;
                if current.and_then(|c| c.get(&(m.clone(), w.clone()))) != Some(v) {
                    idx.unplaced.insert((m.clone(), w.clone()));
                }
            }
        }
        idx
    }

    /// Updates the indexes after `current`'s key `(member, work)` changed
    /// (written, rewritten or deleted).
    pub(super) fn key_changed(
        &mut self,
        member: &MemberId,
        work: &WorkId,
        current: &Current,
        desired: Option<&Desired>,
        items: Option<&Items>,
    ) {
        let key = (member.clone(), work.clone());
        let present = current.contains_key(&key);
        let owners = self.owners.entry(work.clone()).or_default();
        let was = if present {
            !owners.insert(member.clone())
        } else {
            owners.remove(member)
        };
        if owners.is_empty() {
            self.owners.remove(work);
        }
        if present && !was {
            *self.held.entry(member.clone()).or_default() += 1;
        } else if !present && was {
            if let Some(n) = self.held.get_mut(member) {
                *n -= 1;
                if *n == 0 {
                    self.held.remove(member);
                }
            }
        }
        let target = desired.and_then(|d| d.get(work));
        if present && target != Some(member) {
            self.misplaced.insert(key);
        } else {
            self.misplaced.remove(&key);
        }
        let value = items.and_then(|i| i.get(work));
        if let (Some(t), Some(v)) = (target, value) {
            let planned = (t.clone(), work.clone());
            if current.get(&planned) == Some(v) {
                self.unplaced.remove(&planned);
            } else {
                self.unplaced.insert(planned);
            }
        }
    }
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

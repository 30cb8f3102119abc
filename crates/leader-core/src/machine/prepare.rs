//! Make-before-break moves ([`LeaderTiming::prepare`](super::LeaderTiming::prepare)).
//!
//! A planned move of an item's primary role from a live member `P` that
//! acknowledges to a member `T` that acknowledges goes in stages:
//!
//! 1. **Preparing**: the reconcile loop's target for the item is the plan's
//!    with `P` still primary and `T` a secondary: `T`'s key is written as a
//!    secondary's, `P` keeps the item. `T` is *ready* once its acknowledged
//!    position reaches a position at which that key is in place.
//! 2. Ready: the target becomes the plan's. In exclusive mode the ordinary
//!    handoff follows (`P` demoted or revoked with a handoff record, its
//!    acknowledgement awaited, then `T` promoted): nobody is active between
//!    `P`'s acknowledgement and `T`'s promotion, one store round trip (a
//!    worker publishes a promotion of an item it holds at once). In the
//!    default mode, **overlap**: `T` is promoted first, while `P` still holds
//!    the primary's key, and `P`'s key is revoked (no record: nothing waits
//!    for it) once `T` acknowledged its promotion, so someone is active all
//!    along; both are for `T`'s acknowledgement, one round trip and `P`'s
//!    soak.
//!
//! The move is over once `P`'s primary key is gone (default mode) or `T`
//! acknowledged its promotion (exclusive mode).
//!
//! A `T` that is not ready (or has not acknowledged its promotion) within
//! `handoff_timeout` has its session ended, as a member
//! that does not acknowledge a revoke: it leaves the members, and the next
//! plan picks another target. Moves from a member that is gone, to or from a
//! member that does not acknowledge, or of an item already in a handoff are
//! not staged.

use std::collections::BTreeMap;
use std::time::Instant;

use worker_core::{Envelope, Role, WorkId};

use super::indexes::{is_primary, Desired};
use super::{Action, LeaderMachine};
use crate::plan::MemberId;
use crate::replicas::Replicas;

/// Where a staged move stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stage {
    /// The target holds (or is to hold) a secondary's key; its readiness is
    /// awaited.
    Preparing,
    /// Default mode: the target is promoted while the old primary keeps its
    /// key; `Some(position)` once the promotion is applied, which the target
    /// must acknowledge before the old primary's key is revoked.
    Overlap(Option<u64>),
    /// Exclusive mode: the ordinary handoff (the old primary revoked with a
    /// record, its acknowledgement, the promotion); `Some(position)` once
    /// the promotion is applied. The move is over when the target
    /// acknowledged it: a leader that drains waits for that, so that the
    /// target does not see the leader go (and wait `leader_settle`) before
    /// it has published its promotion.
    Handoff(Option<u64>),
}

/// One staged move.
#[derive(Debug, Clone)]
pub(super) struct Prep {
    /// The primary when the move was staged.
    pub(super) from: MemberId,
    /// The plan's new primary.
    pub(super) target: MemberId,
    /// The plan's replicas of the item.
    pub(super) planned: Replicas,
    /// A position at which the target's secondary key is in place, once
    /// known.
    pub(super) at: Option<u64>,
    /// When the move was staged.
    pub(super) since: Instant,
    /// Where it stands.
    pub(super) stage: Stage,
}

impl Prep {
    /// The replicas while preparing: the old primary keeps the role, the
    /// target is a secondary.
    fn staged(&self) -> Replicas {
        let mut secondaries: Vec<MemberId> = self
            .planned
            .secondaries
            .iter()
            .filter(|m| **m != self.from && **m != self.target)
            .cloned()
            .collect();
        secondaries.push(self.target.clone());
        Replicas {
            primary: Some(self.from.clone()),
            secondaries,
        }
    }
}

impl LeaderMachine {
    /// Whether `member` is live and reports acknowledgements.
    fn reports(&self, member: &MemberId) -> bool {
        self.is_live(member) && self.acks.get(member).is_some_and(Option::is_some)
    }

    /// Stages the plan's moves (see the [module docs](self)): rewrites
    /// `desired` for the moves still preparing, keeps the stage of moves
    /// planned again unchanged, forgets the others.
    pub(super) fn stage(&mut self, desired: &mut Desired, now: Instant) {
        self.staged_generation += 1;
        self.touch.clear();
        let old = std::mem::take(&mut self.preparing);
        if !self.timing.prepare || !self.revoke_first {
            return;
        }
        let (Some(current), Some(items)) = (self.current.as_ref(), self.items.as_ref()) else {
            return;
        };
        let mut staged = BTreeMap::new();
        for (work, planned) in desired.iter_mut() {
            let Some(target) = planned.primary.clone() else {
                continue;
            };
            let Some(owners) = self.idx.owners.get(work) else {
                continue;
            };
            // An overlapping move goes on as it was, whatever the plan now
            // says (the new primary may not be active yet: revoking it, or
            // the old one, could leave the item active nowhere); the item is
            // planned again once the move is over.
            if let Some(p) = old
                .get(work)
                .filter(|p| matches!(p.stage, Stage::Overlap(_)))
            {
                let pair = owners.iter().all(|o| *o == p.from || *o == p.target);
                if pair
                    && owners.contains(&p.from)
                    && self.reports(&p.from)
                    && self.reports(&p.target)
                {
                    if p.target != target {
                        self.replan_after_overlap = true;
                        planned.clone_from(&p.planned);
                    }
                    staged.insert(work.clone(), p.clone());
                    continue;
                }
            }
            // A move planned again keeps its stage.
            if let Some(p) = old.get(work) {
                let overlap = matches!(p.stage, Stage::Overlap(_));
                let same = p.target == target
                    && owners.contains(&p.from)
                    && owners
                        .iter()
                        .all(|o| *o == p.from || (overlap && *o == target));
                if same && self.reports(&p.from) && self.reports(&target) {
                    let prep = Prep {
                        planned: planned.clone(),
                        ..p.clone()
                    };
                    if prep.stage == Stage::Preparing {
                        *planned = prep.staged();
                    }
                    staged.insert(work.clone(), prep);
                    continue;
                }
            }
            let mut iter = owners.iter();
            let (Some(from), None) = (iter.next(), iter.next()) else {
                continue; // no primary, or two (found on taking office)
            };
            if *from == target
                || !self.reports(from)
                || !self.reports(&target)
                || self.is_owed(work)
            {
                continue;
            }
            // An item whose secondary's value would not fit a transaction
            // moves as before.
            let Some(value) = items.get(work) else {
                continue;
            };
            if self.refusal(work, &Envelope::secondary(value)).is_some() {
                continue;
            }
            // A target that already holds a secondary's key gets it written
            // again: the position of that write is one it acknowledges (its
            // acknowledged position moves only with its own keys).
            let placed = current
                .get(&(target.clone(), work.clone()))
                .is_some_and(|v| !is_primary(v));
            if placed {
                self.touch.insert(work.clone());
            }
            let prep = Prep {
                from: from.clone(),
                target: target.clone(),
                planned: planned.clone(),
                at: None,
                since: now,
                stage: Stage::Preparing,
            };
            *planned = prep.staged();
            staged.insert(work.clone(), prep);
        }
        self.preparing = staged;
    }

    /// Moves staged moves on: a target's secondary key written (its
    /// position known), a target ready (the plan's replicas become the
    /// target), a promotion applied or acknowledged, an old primary's key
    /// gone (the move is over). `O(staged moves)`.
    pub(super) fn advance_staged(&mut self, now: Instant) {
        if self.preparing.is_empty() {
            return;
        }
        let mut preparing = std::mem::take(&mut self.preparing);
        let before = preparing.len();
        let mut ready = Vec::new();
        let mut touch = Vec::new();
        if let Some(current) = self.current.as_ref() {
            preparing.retain(|work, prep| {
                let target_key = current.get(&(prep.target.clone(), work.clone()));
                let acked = self.acks.get(&prep.target).copied().flatten();
                match prep.stage {
                    Stage::Preparing => {
                        if !self.is_live(&prep.from) {
                            // Gone: no longer a planned move; the plan's
                            // replicas take over (a failover).
                            ready.push((work.clone(), prep.planned.clone()));
                            return false;
                        }
                        // The key is there but no write of this leader put
                        // it (one whose outcome it did not learn, or a
                        // read): written again, for a known position.
                        if prep.at.is_none() && target_key.is_some_and(|v| !is_primary(v)) {
                            touch.push(work.clone());
                        }
                        let acknowledged = prep.at.is_some_and(|at| acked.is_some_and(|a| a >= at));
                        if !acknowledged {
                            return true;
                        }
                        ready.push((work.clone(), prep.planned.clone()));
                        prep.stage = if self.timing.exclusive.is_some() {
                            Stage::Handoff(None) // the ordinary handoff follows
                        } else {
                            Stage::Overlap(None)
                        };
                        true
                    }
                    Stage::Handoff(promoted) => {
                        if !self.is_live(&prep.target) {
                            return false;
                        }
                        match promoted {
                            None if target_key.is_some_and(|v| is_primary(v)) => {
                                prep.stage = Stage::Handoff(Some(self.sequence));
                                true
                            }
                            Some(at) => acked.is_none_or(|a| a < at),
                            None => true,
                        }
                    }
                    Stage::Overlap(promoted) => {
                        let from_primary = current
                            .get(&(prep.from.clone(), work.clone()))
                            .is_some_and(|v| is_primary(v));
                        if !from_primary {
                            return false; // the move is over
                        }
                        if promoted.is_none() && target_key.is_some_and(|v| is_primary(v)) {
                            prep.stage = Stage::Overlap(Some(self.sequence));
                        }
                        true
                    }
                }
            });
        }
        if preparing.len() != before {
            self.staged_generation += 1;
        }
        self.preparing = preparing;
        for work in touch {
            if self.touch.insert(work) {
                self.quiet = None;
            }
        }
        for (work, planned) in ready {
            self.set_desired_item(&work, planned);
        }
        let overlapping = self
            .preparing
            .values()
            .any(|p| matches!(p.stage, Stage::Overlap(_)));
        if self.replan_after_overlap && !overlapping {
            self.replan_after_overlap = false;
            self.changed(now);
        }
        self.end_unready_sessions(now);
    }

    /// An applied write put `member`'s key of `work` with `value`: the
    /// position of a staged move's target (its secondary's key written).
    pub(super) fn staged_put(&mut self, member: &MemberId, work: &WorkId, value: &[u8]) {
        let Some(prep) = self.preparing.get_mut(work) else {
            return;
        };
        if prep.target == *member && prep.stage == Stage::Preparing && !is_primary(value) {
            prep.at = Some(self.sequence);
            self.touch.remove(work);
        }
    }

    /// Default mode: whether the old primary's key of `work`, held by
    /// `member`, waits for the staged move's target to acknowledge its
    /// promotion; `Some(false)`: the move's revoke may go, without a record.
    pub(super) fn overlap_revoke(&self, member: &MemberId, work: &WorkId) -> Option<bool> {
        let prep = self.preparing.get(work)?;
        if prep.from != *member {
            return None;
        }
        let promoted = match prep.stage {
            Stage::Preparing => return Some(true), // the old primary stays
            Stage::Handoff(_) => return None,      // the ordinary handoff
            Stage::Overlap(promoted) => promoted,
        };
        if !self.overlap_wait {
            return Some(false);
        }
        let acked = self.acks.get(&prep.target).copied().flatten();
        let clear = promoted.is_some_and(|at| acked.is_some_and(|a| a >= at));
        Some(!clear)
    }

    /// Default mode: whether `target`'s promotion of `work` may be written
    /// while the old primary still holds its key.
    pub(super) fn overlap_promotion(&self, target: &MemberId, work: &WorkId) -> bool {
        self.preparing
            .get(work)
            .is_some_and(|p| p.target == *target && matches!(p.stage, Stage::Overlap(_)))
    }

    /// Replaces the reconcile loop's target for one item and keeps the
    /// indexes in step (the keys of the members named before or after).
    fn set_desired_item(&mut self, work: &WorkId, replicas: Replicas) {
        let (Some(desired), Some(current)) = (self.desired.as_mut(), self.current.as_ref()) else {
            return;
        };
        let mut members: Vec<MemberId> = Vec::new();
        for r in [Some(&replicas), desired.get(work)].into_iter().flatten() {
            members.extend(r.primary.iter().cloned());
            members.extend(r.secondaries.iter().cloned());
        }
        let count = |r: &Replicas| usize::from(r.primary.is_some()) + r.secondaries.len();
        let wanted = count(&replicas);
        let old = desired.insert(work.clone(), replicas);
        members.sort();
        members.dedup();
        let has_value = self.items.as_ref().is_some_and(|i| i.contains_key(work));
        if has_value {
            self.idx.wanted += wanted;
            self.idx.wanted -= old.as_ref().map_or(0, count);
        }
        for m in members {
            let key = (m.clone(), work.clone());
            // Recomputed as for a key that changed, with its presence as is.
            self.idx.unplaced.remove(&key);
            let existed = current.contains_key(&key);
            self.idx.key_changed(
                &m,
                work,
                existed,
                current,
                self.desired.as_ref(),
                self.items.as_ref(),
            );
        }
        self.quiet = None;
    }

    /// Ends the session of a target that was not ready, or has not
    /// acknowledged its promotion, within `handoff_timeout` (once per
    /// timeout, as for a member that does not acknowledge a revoke).
    fn end_unready_sessions(&mut self, now: Instant) {
        let timeout = self.timing.handoff_timeout;
        // A handoff waiting for the old primary's acknowledgement is the
        // owed moves' business (`end_stuck_sessions`).
        let stuck: Vec<MemberId> = self
            .preparing
            .values()
            .filter(|p| now >= p.since + timeout && p.stage != Stage::Handoff(None))
            .map(|p| p.target.clone())
            .collect();
        for member in stuck {
            let Some(session) = self.sessions.get(&member).cloned() else {
                continue;
            };
            if self.ask_end_session(&member, &session, now) {
                self.out.push_back(Action::EndSession { member, session });
            }
        }
    }

    /// When the first staged move times out, if any is staged.
    pub(super) fn staged_timeout(&self) -> Option<Instant> {
        self.preparing
            .values()
            .map(|p| p.since + self.timing.handoff_timeout)
            .filter(|at| *at > self.last_now)
            .min()
    }

    /// Tests and the simulator: the staged moves, as (item, old primary,
    /// target, whether the target is promoted or to be).
    #[doc(hidden)]
    pub fn staged(&self) -> impl Iterator<Item = (&WorkId, &MemberId, &MemberId, Role)> {
        self.preparing.iter().map(|(w, p)| {
            let role = match p.stage {
                Stage::Preparing => Role::Secondary,
                Stage::Overlap(_) | Stage::Handoff(_) => Role::Primary,
            };
            (w, &p.from, &p.target, role)
        })
    }
}

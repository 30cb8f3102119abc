//! Handoff tracking: the moves waiting for their old owner's
//! acknowledgement (`owed`) with their memos and indexes (when each was
//! first known, per old owner, the ones whose session this leader ended),
//! whether a move may go on ([`Clear`]), and the sessions ended for moves
//! that timed out.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use std::time::Instant;
use worker_core::WorkId;

use super::{Action, LeaderMachine};
use crate::plan::MemberId;

/// A session the leader ended because a handoff timed out.
#[derive(Debug, Clone)]
pub(super) struct Ending {
    /// The session ended.
    pub(super) session: String,
    /// When the leader asked to end it.
    pub(super) asked: Instant,
    /// The leader saw the session gone (the key absent or bound to another
    /// session).
    pub(super) seen: bool,
}

#[derive(Debug, Clone, Copy)]
/// The times of one owed entry (a move waiting for its handoff).
pub(super) struct OwedTimes {
    /// When this leader first knew of the move.
    pub(super) since: Instant,
    /// When the leader saw the session of the old owner gone after it ended
    /// it for this move.
    pub(super) fenced: Option<Instant>,
}

/// What the moves passed by a scan of assigns and clean-up wait for.
#[derive(Default)]
pub(super) struct Waits {
    /// Per old owner that reports, the lowest position one of its moves
    /// waits for it to acknowledge.
    pub(super) acks: BTreeMap<MemberId, u64>,
    /// Some move waits for something else (time: a margin, a fenced
    /// owner's wait).
    pub(super) other: bool,
}

/// Whether an owed item may go to another member.
enum Clear {
    /// Wait, for a reason time or another input can end.
    Wait,
    /// Wait for the old owner, which reports, to acknowledge this position
    /// (`None`: a move whose revoke position is unknown, which no
    /// acknowledgement clears).
    AwaitAck(Option<u64>),
    /// Go: nothing to wait for.
    Go,
    /// Go, guarded on this member's key being absent.
    Guard(MemberId),
}

impl LeaderMachine {
    /// Whether some move of `work` waits for its handoff.
    pub(super) fn is_owed(&self, work: &WorkId) -> bool {
        self.owed
            .range((work.clone(), self.no_member.clone())..)
            .next()
            .is_some_and(|((w, _), _)| w == work)
    }

    /// Forgets when a member left once nothing refers to it any more: it
    /// owns no assignment key, no move waits for it, and its
    /// `rebalance_delay` is over. Keeps the map as small as the members that
    /// still matter.
    pub(super) fn prune_absent(&mut self) {
        if self.absent_since.is_empty() {
            return;
        }
        let mut needed: BTreeSet<&MemberId> = self.owed_by.keys().collect();
        needed.extend(self.departed.keys());
        needed.extend(self.idx.held.keys());
        let needed: BTreeSet<MemberId> = needed.into_iter().cloned().collect();
        self.absent_since.retain(|m, _| needed.contains(m));
    }

    /// Whether `member` is in the members picture (has a member key).
    pub(super) fn is_live(&self, member: &MemberId) -> bool {
        self.members
            .as_ref()
            .is_some_and(|m| m.contains_key(member))
    }

    /// When `member` was seen leaving, or when this leader took office for
    /// one it never saw.
    pub(super) fn absent_from(&self, member: &MemberId) -> Instant {
        self.absent_since
            .get(member)
            .copied()
            .unwrap_or(self.office_at)
    }

    /// Exclusive mode: how long after the leader saw `member`'s session end
    /// the member may still believe in its lease: its whole TTL (it releases
    /// at `deadline − margin`, its deadline is the send time of its last
    /// successful renewal plus the TTL, and that send came before the store
    /// ended the session). The simulator's safeguard switch makes it the
    /// margin only, which holds only when sessions end at their TTL.
    pub(super) fn gone_wait(&self, member: &MemberId) -> Duration {
        let margin = self.timing.exclusive.unwrap_or_default();
        if !self.lease_wait {
            return margin;
        }
        self.ttls
            .get(member)
            .copied()
            .unwrap_or(self.timing.member_ttl)
            .max(margin)
    }

    /// May the item `work`, revoked from `from` at `revoked_at`, go to
    /// another member?
    fn clearance(
        &self,
        work: &WorkId,
        from: &MemberId,
        revoked_at: Option<u64>,
        now: Instant,
    ) -> Clear {
        if let Some(acked) = self.acks.get(from) {
            match (acked, revoked_at) {
                // It does not report: nothing to wait for.
                (None, _) => return Clear::Go,
                (Some(a), Some(r)) if *a >= r => return Clear::Go,
                _ => {}
            }
        }
        // This leader ended its session after the revoke (the handoff timed
        // out): the member is fenced and, registered anew, reads its
        // assignments afresh, without this item.
        let key = (work.clone(), from.clone());
        if let Some(fenced) = self.owed_times.get(&key).and_then(|t| t.fenced) {
            return match self.timing.exclusive {
                Some(_) if now < fenced + self.gone_wait(from) => Clear::Wait,
                _ => Clear::Go,
            };
        }
        if self.acks.contains_key(from) {
            return Clear::AwaitAck(revoked_at);
        }
        match self.timing.exclusive {
            None => Clear::Go,
            Some(_) if now >= self.absent_from(from) + self.gone_wait(from) => {
                Clear::Guard(from.clone())
            }
            Some(_) => Clear::Wait,
        }
    }

    /// Handoffs from live, reporting members that timed out: asks to end
    /// those members' sessions (again only after another timeout).
    pub(super) fn end_stuck_sessions(&mut self, now: Instant) {
        let timeout = self.timing.handoff_timeout;
        let mut stuck: Vec<MemberId> = Vec::new();
        // Only the moves known for a whole timeout, in `owed`'s order.
        let mut due: Vec<(WorkId, MemberId)> = self
            .owed_since
            .iter()
            .take_while(|(since, _, _)| now >= *since + timeout)
            .map(|(_, w, m)| (w.clone(), m.clone()))
            .collect();
        due.sort();
        for key in &due {
            let (Some(at), Some(t)) = (self.owed.get(key), self.owed_times.get(key)) else {
                continue;
            };
            let (work, from) = key;
            if t.fenced.is_some()
                || now < t.since + timeout
                || stuck.contains(from)
                || !self.acks.get(from).is_some_and(Option::is_some)
                || !matches!(
                    self.clearance(work, from, *at, now),
                    Clear::Wait | Clear::AwaitAck(_)
                )
            {
                continue;
            }
            stuck.push(from.clone());
        }
        for member in stuck {
            let Some(session) = self.sessions.get(&member).cloned() else {
                continue; // its key does not name its session
            };
            if self.ask_end_session(&member, &session, now) {
                self.out.push_back(Action::EndSession { member, session });
            }
        }
    }

    /// Records that this leader ends `member`'s `session` at `now`; false
    /// when it already asked to end that session within the last
    /// `handoff_timeout` (nothing to do).
    pub(super) fn ask_end_session(
        &mut self,
        member: &MemberId,
        session: &str,
        now: Instant,
    ) -> bool {
        let timeout = self.timing.handoff_timeout;
        let asked = self
            .ending
            .get(member)
            .is_some_and(|e| e.session == session && now < e.asked + timeout);
        if asked {
            return false;
        }
        self.ending.insert(
            member.clone(),
            Ending {
                session: session.to_owned(),
                asked: now,
                seen: false,
            },
        );
        true
    }

    /// Forgets the sessions ended and TTLs of members that no longer
    /// matter: not live, owing no move, holding no key. `O(members)`.
    pub(super) fn track_owed(&mut self) {
        if !self.track_due {
            return;
        }
        self.track_due = false;
        let (owed_by, held) = (&self.owed_by, &self.idx.held);
        let live = self.members.as_ref();
        let departed = &self.departed;
        let keep = |m: &MemberId| {
            owed_by.contains_key(m)
                || held.contains_key(m)
                || departed.contains_key(m)
                || live.is_some_and(|l| l.contains_key(m))
        };
        self.ending.retain(|m, _| keep(m));
        self.ttls.retain(|m, _| keep(m));
        self.zones.retain(|m, _| keep(m));
        let (acks, members) = (&self.acks, self.members.as_ref());
        self.unacked_writes.retain(|m, at| {
            members.is_some_and(|l| l.contains_key(m))
                && acks.get(m).copied().flatten().is_some_and(|a| a < *at)
        });
    }

    /// A move of `key.0` from `key.1` is owed from now (if it is not yet).
    pub(super) fn owe(&mut self, key: (WorkId, MemberId), now: Instant) {
        if self.owed.contains_key(&key) {
            return;
        }
        self.owed.insert(key.clone(), None);
        self.owed_generation += 1;
        self.quiet = None;
        *self.owed_by.entry(key.1.clone()).or_default() += 1;
        if !self.owed_times.contains_key(&key) {
            self.owed_since.insert((now, key.0.clone(), key.1.clone()));
            self.owed_times.insert(
                key,
                OwedTimes {
                    since: now,
                    fenced: None,
                },
            );
        }
    }

    /// Forgets the moves of `work`: `O(log owed)` for each, not a pass over
    /// every move.
    pub(super) fn forget_owed(&mut self, work: &WorkId) {
        self.quiet = None;
        let keys: Vec<(WorkId, MemberId)> = self
            .owed
            .range((work.clone(), self.no_member.clone())..)
            .take_while(|((w, _), _)| w == work)
            .map(|(k, _)| k.clone())
            .collect();
        if !keys.is_empty() {
            self.track_due = true;
        }
        for k in keys {
            self.owed.remove(&k);
            self.owed_generation += 1;
            if let Some(n) = self.owed_by.get_mut(&k.1) {
                *n -= 1;
                if *n == 0 {
                    self.owed_by.remove(&k.1);
                }
            }
            if let Some(t) = self.owed_times.remove(&k) {
                self.owed_since.remove(&(t.since, k.0.clone(), k.1.clone()));
            }
            self.owed_fenced.remove(&k);
        }
    }

    /// After a read replaced `owed`: the times of the entries still owed
    /// are kept, new ones are known from `now`; the indexes are rebuilt
    /// (`O(owed)`, as the read).
    pub(super) fn resync_owed(&mut self, now: Instant) {
        self.owed_times.retain(|k, _| self.owed.contains_key(k));
        for k in self.owed.keys() {
            self.owed_times.entry(k.clone()).or_insert(OwedTimes {
                since: now,
                fenced: None,
            });
        }
        let (by, since, fenced) = owed_indexes(&self.owed, &self.owed_times);
        self.owed_by = by;
        self.owed_since = since;
        self.owed_fenced = fenced;
    }

    /// Whether the owed entries of `work` (other than from `target`) are
    /// clear: (some must still wait, guards needed).
    pub(super) fn owed_state(
        &self,
        work: &WorkId,
        target: Option<&MemberId>,
        now: Instant,
        waits: &mut Waits,
    ) -> (bool, Vec<MemberId>) {
        let mut wait = false;
        let mut needs = Vec::new();
        for ((_, from), at) in self
            .owed
            .range((work.clone(), self.no_member.clone())..)
            .take_while(|((w, _), _)| w == work)
        {
            if Some(from) == target {
                continue;
            }
            match self.clearance(work, from, *at, now) {
                Clear::Wait => {
                    wait = true;
                    waits.other = true;
                }
                Clear::AwaitAck(position) => {
                    wait = true;
                    let lowest = waits.acks.entry(from.clone()).or_insert(u64::MAX);
                    *lowest = (*lowest).min(position.unwrap_or(u64::MAX));
                }
                Clear::Go => {}
                Clear::Guard(m) => needs.push(m),
            }
        }
        (wait, needs)
    }
}

/// The owed entries' indexes: entries per old owner, entries by `since`,
/// entries fenced.
type OwedIndexes = (
    BTreeMap<MemberId, usize>,
    BTreeSet<(Instant, WorkId, MemberId)>,
    BTreeSet<(WorkId, MemberId)>,
);

/// The indexes of the owed entries computed from scratch: entries per old
/// owner, entries by `since`, entries fenced.
pub(super) fn owed_indexes(
    owed: &BTreeMap<(WorkId, MemberId), Option<u64>>,
    times: &BTreeMap<(WorkId, MemberId), OwedTimes>,
) -> OwedIndexes {
    let mut by: BTreeMap<MemberId, usize> = BTreeMap::new();
    for (_, m) in owed.keys() {
        *by.entry(m.clone()).or_default() += 1;
    }
    let since = times
        .iter()
        .map(|((w, m), t)| (t.since, w.clone(), m.clone()))
        .collect();
    let fenced = times
        .iter()
        .filter(|(_, t)| t.fenced.is_some())
        .map(|(k, _)| k.clone())
        .collect();
    (by, since, fenced)
}

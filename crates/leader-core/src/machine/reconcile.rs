//! Plan execution: making the plan ([`plan_now`](LeaderMachine::plan_now))
//! and the reconcile loop that turns it into fenced writes, one transaction
//! at a time: revokes (with handoff records for moves), then assigns whose
//! handoff is clear, then clean-up of handoff records.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use std::time::Instant;
use worker_core::{Envelope, Role, TxnOp, WorkId};

use super::handoff::Waits;
use super::indexes::{is_primary, roles, wanted_role, Desired};
use super::limits::fits;
use super::{Action, LeaderMachine, PlanReport, Reading, ReplicaInput};
use crate::plan::{min_moves, plan, Assignment, MemberId};
use crate::replicas::{plan_replicas, ReplicaAssignment, ReplicaMember, Replicas};

impl LeaderMachine {
    /// Sends the next transaction if none is in flight and one is due.
    pub(super) fn pump(&mut self, now: Instant) {
        if !self.stepped_down {
            self.track_owed();
            self.end_stuck_sessions(now);
            self.advance_staged(now);
        }
        if self.stepped_down
            || self.in_flight.is_some()
            || self.reading != Reading::Done
            || !self.ready()
            || self.desired.is_none()
        {
            return;
        }
        let ops = if self.revoke_first {
            self.next_revokes(now).or_else(|| self.next_settles(now))
        } else {
            self.unguarded_write()
        };
        if let Some(mut ops) = ops {
            if self.sequence_check {
                ops.insert(
                    0,
                    TxnOp::Sequence {
                        key: self.layout.sequence.clone(),
                        index: self.sequence,
                        value: self.sequence_bytes(),
                    },
                );
            }
            self.in_flight = Some(ops.clone());
            self.out.push_back(Action::Write(ops));
        }
        self.track_owed();
    }

    /// Revokes of keys the plan does not want, with handoff records for
    /// moves, at most `max_moves_in_flight` moves at once.
    fn next_revokes(&mut self, now: Instant) -> Option<Vec<TxnOp>> {
        let desired = self.desired.as_ref()?;
        // Moves in flight count only against a limit: without one
        // (the default), they are not counted (`O(owed)`).
        let limited = self.timing.max_moves_in_flight != usize::MAX;
        let owed = self.owed.keys().take(if limited { usize::MAX } else { 0 });
        let live_owed: BTreeSet<&WorkId> = owed
            .clone()
            .filter(|(_, from)| self.is_live(from))
            .map(|(w, _)| w)
            .collect();
        // A move stuck past the handoff timeout no longer holds up the others.
        let timeout = self.timing.handoff_timeout;
        let stuck = owed
            .filter(|k| self.is_live(&k.1))
            .filter(|k| {
                self.owed_times
                    .get(*k)
                    .is_some_and(|t| t.fenced.is_some() || now >= t.since + timeout)
            })
            .count();
        let mut moves = live_owed.len().saturating_sub(stuck);
        let mut ops = Vec::new();
        let (limits, mut used) = (self.plan_limits(), 0);
        let mut new_owed = Vec::new();
        // Items that got a handoff record in this transaction: a
        // transaction names a key once (etcd refuses a txn that names one
        // twice; Consul would keep the first record's position).
        let mut recorded: BTreeSet<&WorkId> = BTreeSet::new();
        let (current, items) = (self.current.as_ref()?, self.items.as_ref()?);
        // The keys the plan does not want, and primaries it wants as
        // secondaries, in `current`'s order.
        for (member, work) in &self.idx.misplaced {
            let target = desired.get(work).and_then(|r| r.primary.as_ref());
            let live = self.is_live(member);
            let reports = self.acks.get(member).is_some_and(Option::is_some);
            // Only a primary's role moves: a secondary leaves freely.
            let primary = current
                .get(&(member.clone(), work.clone()))
                .is_some_and(|v| is_primary(v));
            let mut record = primary && (reports || (!live && self.timing.exclusive.is_some()));
            // A make-before-break move of the default mode: the old primary
            // goes once the new one acknowledged its promotion, and nothing
            // waits for it.
            match self.overlap_revoke(member, work) {
                Some(true) => continue,
                Some(false) => record = false,
                None => {}
            }
            // A demotion: the member keeps the item as a secondary.
            let demote = wanted_role(Some(desired), member, work) == Some(Role::Secondary);
            let demoted_value = if demote {
                match items.get(work) {
                    Some(v) => Some(Envelope::secondary(v)),
                    None => continue,
                }
            } else {
                None
            };
            // An item under two members (found on taking office): one record
            // at a time. The next owner is revoked once the record of the
            // first is cleared (`next_cleanup`), with a record of its own.
            if record && (recorded.contains(work) || self.records.contains(work)) {
                continue;
            }
            if limited && record && live && target.is_some() && !live_owed.contains(work) {
                if moves >= self.timing.max_moves_in_flight {
                    continue;
                }
                moves += 1;
            }
            let key = self.layout.assignment_key(member, work);
            let mut add = vec![match demoted_value {
                Some(value) => TxnOp::Put { key, value },
                None => TxnOp::Delete { key },
            }];
            if record {
                add.push(TxnOp::Put {
                    key: self.layout.handoff_key(work),
                    value: Bytes::copy_from_slice(member.as_bytes()),
                });
            }
            if !fits(&limits, &mut used, &ops, &add) {
                break;
            }
            ops.extend(add);
            if record {
                recorded.insert(work);
                new_owed.push((work.clone(), member.clone()));
            }
        }
        for key in new_owed {
            self.owe(key, now);
        }
        (!ops.is_empty()).then_some(ops)
    }

    /// Assigns whose handoff is clear, then clean-up of handoff records no
    /// longer needed; nothing while [`quiet`](Self::quiet) holds, which a
    /// scan that finds nothing sets.
    fn next_settles(&mut self, now: Instant) -> Option<Vec<TxnOp>> {
        if self.quiet.is_some() {
            return None;
        }
        let mut waits = Waits::default();
        if let Some(ops) = self.scan_assigns(now, &mut waits) {
            return Some(ops);
        }
        let (ops, done) = self.scan_cleanup(now, &mut waits);
        for work in &done {
            self.forget_owed(work);
        }
        if !ops.is_empty() {
            return Some(ops);
        }
        if done.is_empty() && !waits.other {
            self.quiet = Some(waits.acks);
        }
        None
    }

    /// Assigns whose handoff is clear.
    pub(super) fn scan_assigns(&self, now: Instant, waits: &mut Waits) -> Option<Vec<TxnOp>> {
        let desired = self.desired.as_ref()?;
        let (current, items) = (self.current.as_ref()?, self.items.as_ref()?);
        let owners = &self.idx.owners;
        let mut ops = Vec::new();
        let (limits, mut used) = (self.plan_limits(), 0);
        let mut guards: BTreeSet<MemberId> = BTreeSet::new();
        // Staged moves' targets that already hold their secondary's key:
        // the same value again, for a position they acknowledge.
        for work in &self.touch {
            let Some(target) = self.preparing.get(work).map(|p| &p.target) else {
                continue;
            };
            let key = (target.clone(), work.clone());
            let Some(held) = current.get(&key) else {
                continue;
            };
            // A key to be written anyway (a new value) is not written twice:
            // one transaction names a key once.
            if is_primary(held) || self.idx.unplaced.contains(&key) {
                continue;
            }
            let add = [TxnOp::Put {
                key: self.layout.assignment_key(target, work),
                value: respelled(held),
            }];
            if !fits(&limits, &mut used, &ops, &add) {
                break;
            }
            ops.extend(add);
        }
        // The planned replicas not in place, by member.
        for (target, work) in &self.idx.unplaced {
            let Some(value) = items.get(work) else {
                continue;
            };
            let Some(role) = wanted_role(Some(desired), target, work) else {
                continue;
            };
            let key = (target.clone(), work.clone());
            let placed = current.get(&key);
            if placed.is_some_and(|p| Envelope::holds(p, role, value)) {
                continue;
            }
            let placed_primary = placed.is_some_and(|p| is_primary(p));
            if role == Role::Secondary {
                // A demotion goes with the revokes (with its record); a
                // secondary is placed freely.
                if placed_primary {
                    continue;
                }
                let add = [TxnOp::Put {
                    key: self.layout.assignment_key(target, work),
                    value: Envelope::secondary(value),
                }];
                if !fits(&limits, &mut used, &ops, &add) {
                    break;
                }
                ops.extend(add);
                continue;
            }
            // A new primary (a member without the key, or a secondary
            // promoted) waits for every other primary to be revoked and
            // acknowledged; a primary's new value does not.
            if !placed_primary {
                let others = owners
                    .get(work)
                    .is_some_and(|o| o.iter().any(|m| m != target));
                if others && !self.overlap_promotion(target, work) {
                    continue; // its revoke comes first
                }
                let (wait, needs) = self.owed_state(work, Some(target), now, waits);
                if wait {
                    continue;
                }
                let new_guards: Vec<MemberId> =
                    needs.into_iter().filter(|m| !guards.contains(m)).collect();
                let mut add: Vec<TxnOp> = new_guards
                    .iter()
                    .map(|m| TxnOp::Absent {
                        key: self.layout.member_key(m),
                    })
                    .collect();
                if self.records.contains(work) {
                    add.push(TxnOp::Delete {
                        key: self.layout.handoff_key(work),
                    });
                }
                add.push(TxnOp::Put {
                    key: self.layout.assignment_key(target, work),
                    value: value.clone(),
                });
                if !fits(&limits, &mut used, &ops, &add) {
                    break;
                }
                guards.extend(new_guards);
                ops.extend(add);
                continue;
            }
            let add = [TxnOp::Put {
                key: self.layout.assignment_key(target, work),
                value: value.clone(),
            }];
            if !fits(&limits, &mut used, &ops, &add) {
                break;
            }
            ops.extend(add);
        }
        (!ops.is_empty()).then_some(ops)
    }

    /// Handoff records no longer needed: items no longer wanted, or already
    /// with their target, once clear: (their deletes, the moves to forget
    /// that have no record).
    pub(super) fn scan_cleanup(
        &self,
        now: Instant,
        waits: &mut Waits,
    ) -> (Vec<TxnOp>, Vec<WorkId>) {
        let (Some(desired), Some(_), Some(items)) = (
            self.desired.as_ref(),
            self.current.as_ref(),
            self.items.as_ref(),
        ) else {
            return (Vec::new(), Vec::new());
        };
        let owners = &self.idx.owners;
        let none = BTreeSet::new();
        let mut ops = Vec::new();
        let (limits, mut used) = (self.plan_limits(), 0);
        let mut done_owed: Vec<WorkId> = Vec::new();
        // The owed items, each once (`owed` is ordered by item).
        let mut owed_works: Vec<&WorkId> = self.owed.keys().map(|(w, _)| w).collect();
        owed_works.dedup();
        // Records that name no member to wait for (their value is not a
        // member id): nothing waits on them; they go.
        for work in self.records.iter().filter(|w| !self.is_owed(w)) {
            let add = [TxnOp::Delete {
                key: self.layout.handoff_key(work),
            }];
            if !fits(&limits, &mut used, &ops, &add) {
                break;
            }
            ops.extend(add);
        }
        for work in owed_works {
            let target = desired
                .get(work)
                .and_then(|r| r.primary.as_ref())
                .filter(|_| items.contains_key(work));
            let holders = owners.get(work).unwrap_or(&none);
            let settled = match target {
                None => holders.is_empty(),
                Some(t) => holders.contains(t),
            };
            // Still under another member that must be revoked first (an item
            // found under two members): once this record is clear it goes,
            // so that the next revoke can write its own.
            let blocked = holders.iter().any(|m| Some(m) != target);
            if !settled && !blocked {
                continue;
            }
            // No assign follows, so no guard is needed: a clear owner (one
            // that is gone, past the margin) is enough.
            let (wait, _) = self.owed_state(work, target, now, waits);
            if wait {
                continue;
            }
            if self.records.contains(work) {
                let add = [TxnOp::Delete {
                    key: self.layout.handoff_key(work),
                }];
                if !fits(&limits, &mut used, &ops, &add) {
                    break;
                }
                ops.extend(add);
            } else {
                done_owed.push(work.clone());
            }
        }
        (ops, done_owed)
    }

    /// Simulator only (revoke-first off): every assign before any revoke,
    /// no handoff.
    fn unguarded_write(&mut self) -> Option<Vec<TxnOp>> {
        let (desired, current, items) = (
            self.desired.as_ref()?,
            self.current.as_ref()?,
            self.items.as_ref()?,
        );
        let layout = &self.layout;
        let mut ops: Vec<TxnOp> = desired
            .iter()
            .filter_map(|(w, r)| Some((w, r, items.get(w)?)))
            .flat_map(|(w, r, v)| {
                roles(r).filter_map(move |(m, role)| {
                    let placed = current.get(&(m.clone(), w.clone()));
                    (!placed.is_some_and(|p| Envelope::holds(p, role, v))).then(|| TxnOp::Put {
                        key: layout.assignment_key(m, w),
                        value: Envelope::for_role(role, v),
                    })
                })
            })
            .collect();
        if ops.is_empty() {
            ops = current
                .keys()
                .filter(|(m, w)| {
                    wanted_role(Some(desired), m, w).is_none() || !items.contains_key(w)
                })
                .map(|(m, w)| TxnOp::Delete {
                    key: self.layout.assignment_key(m, w),
                })
                .collect();
        }
        let mut fitting = Vec::new();
        let (limits, mut used) = (self.plan_limits(), 0);
        for op in ops {
            if !fits(&limits, &mut used, &fitting, std::slice::from_ref(&op)) {
                break;
            }
            fitting.push(op);
        }
        (!fitting.is_empty()).then_some(fitting)
    }

    /// Plans once everything is read: the new target of the reconcile loop
    /// (reported as [`Action::Planned`]), the soak over.
    pub(super) fn plan_now(&mut self, now: Instant) {
        if !self.ready() {
            return; // planned as soon as everything is read
        }
        // On taking office, owners that are not live get the delay too,
        // counted from when this leader took office.
        if let Some(took_office) = self.took_office.take() {
            let until = took_office + self.timing.rebalance_delay;
            if until > now {
                let live = self.members.clone().unwrap_or_default();
                let owners: BTreeSet<MemberId> = self
                    .current
                    .iter()
                    .flat_map(|c| c.keys().map(|(m, _)| m.clone()))
                    .filter(|m| !live.contains_key(m))
                    .collect();
                for m in owners {
                    self.departed.entry(m).or_insert((1, until));
                }
            }
        }
        self.prune_absent();
        let members = self.effective().unwrap_or_default();
        let members = &members;
        let (Some(items), Some(current)) = (&self.items, &self.current) else {
            return;
        };
        self.soak = None;
        let replicated = self.timing.replicas > 1 || !self.item_replicas.is_empty();
        let (desired, mut report, input) = if replicated {
            self.plan_replicated(members, items, current)
        } else {
            let (d, r) = self.plan_single(members, items, current);
            (d, r, None)
        };
        self.last_replica_input = input;
        let revokes = current
            .iter()
            .filter(|((m, w), v)| super::indexes::misplaced(wanted_role(Some(&desired), m, w), v))
            .count();
        let puts = desired
            .iter()
            .filter_map(|(w, r)| Some((w, r, items.get(w)?)))
            .flat_map(|(w, r, v)| roles(r).map(move |(m, role)| (w, m, role, v)))
            .filter(|(w, m, role, v)| {
                !current
                    .get(&((*m).clone(), (*w).clone()))
                    .is_some_and(|p| Envelope::holds(p, *role, v))
            })
            .count();
        let per = self.plan_limits().max_ops.max(1);
        report.members = members.len();
        report.items = items.len();
        report.revokes = revokes;
        report.puts = puts;
        report.transactions = revokes.div_ceil(per) + puts.div_ceil(per);
        self.out.push_back(Action::Planned(report));
        let mut desired = desired;
        self.stage(&mut desired, now);
        self.desired = Some(desired);
        self.reindex();
    }

    /// One owner per item ([`plan()`]): the plan with one replica.
    fn plan_single(
        &self,
        members: &BTreeMap<MemberId, u32>,
        items: &BTreeMap<WorkId, Bytes>,
        current: &BTreeMap<(MemberId, WorkId), Bytes>,
    ) -> (Desired, PlanReport) {
        // One owner per item for the planner: a live owner first, the
        // smallest id among equals; extra keys are revoked by the reconcile
        // loop. An item in handoff counts as its target's.
        // A secondary's key (a make-before-break move's target) counts only
        // for an item without a primary.
        let mut owners = Assignment::new();
        let mut primaries: BTreeSet<&WorkId> = BTreeSet::new();
        for ((member, work), value) in current {
            let live = members.contains_key(member);
            let primary = is_primary(value);
            let better = match owners.get(work) {
                None => true,
                Some(existing) => {
                    let existing_live = members.contains_key(existing);
                    if primary == primaries.contains(work) {
                        live && !existing_live
                    } else {
                        primary
                    }
                }
            };
            if better {
                owners.insert(work.clone(), member.clone());
                if primary {
                    primaries.insert(work);
                }
            }
        }
        if let Some(desired) = &self.desired {
            for (work, r) in desired {
                let Some(member) = &r.primary else { continue };
                if !owners.contains_key(work) && members.contains_key(member) && self.is_owed(work)
                {
                    owners.insert(work.clone(), member.clone());
                }
            }
        }
        let ids: BTreeSet<WorkId> = items.keys().cloned().collect();
        let p = plan(&ids, members, &owners);
        let min = min_moves(&ids, members, &owners);
        let desired: Desired = p
            .assignment
            .into_iter()
            .map(|(w, m)| {
                let r = Replicas {
                    primary: Some(m),
                    secondaries: Vec::new(),
                };
                (w, r)
            })
            .collect();
        let report = PlanReport {
            moved: p.moved,
            placed: p.placed,
            min_moves: min,
            took: Duration::ZERO,
            ..PlanReport::default()
        };
        (desired, report)
    }

    /// Replicas ([`plan_replicas`]): a primary and secondaries per item,
    /// spread over the members' zones.
    fn plan_replicated(
        &self,
        members: &BTreeMap<MemberId, u32>,
        items: &BTreeMap<WorkId, Bytes>,
        current: &BTreeMap<(MemberId, WorkId), Bytes>,
    ) -> (Desired, PlanReport, Option<ReplicaInput>) {
        let planned: BTreeMap<MemberId, ReplicaMember> = members
            .iter()
            .map(|(m, w)| {
                let member = ReplicaMember {
                    weight: *w,
                    zone: self.zones.get(m).cloned(),
                };
                (m.clone(), member)
            })
            .collect();
        // The replicas in the store: one primary per item (a live one
        // first; extra primaries are revoked by the reconcile loop), the
        // secondaries. An item in handoff counts as its target's.
        let mut state = ReplicaAssignment::new();
        for ((member, work), value) in current {
            let r = state.entry(work.clone()).or_default();
            if is_primary(value) {
                let live = members.contains_key(member);
                match &r.primary {
                    Some(existing) if members.contains_key(existing) || !live => {}
                    _ => r.primary = Some(member.clone()),
                }
            } else {
                r.secondaries.push(member.clone());
            }
        }
        if let Some(desired) = &self.desired {
            for (work, d) in desired {
                let Some(target) = &d.primary else { continue };
                if !members.contains_key(target) || !self.is_owed(work) {
                    continue;
                }
                let r = state.entry(work.clone()).or_default();
                if r.primary.is_none() {
                    r.secondaries.retain(|s| s != target);
                    r.primary = Some(target.clone());
                }
            }
        }
        let counts: BTreeMap<WorkId, u32> = items
            .keys()
            .map(|w| {
                let n = self.item_replicas.get(w).copied();
                (w.clone(), n.unwrap_or(self.timing.replicas))
            })
            .collect();
        let p = plan_replicas(&counts, &planned, &state);
        // Small inputs are kept for the simulator's brute force.
        let (n, m) = (
            counts.len(),
            planned.values().filter(|m| m.weight > 0).count(),
        );
        let small = n * m <= 32 && (m as u64).checked_pow(n as u32).is_some_and(|p| p <= 4_096);
        let input = small.then(|| (counts.clone(), planned.clone(), state.clone()));
        let moved = p.primaries_changed + p.secondaries_moved;
        let report = PlanReport {
            moved,
            placed: p.placed,
            min_moves: moved,
            cold_primaries: p.cold_primaries,
            promotions: p.promotions,
            secondaries_moved: p.secondaries_moved,
            took: Duration::ZERO,
            ..PlanReport::default()
        };
        (p.state, report, input)
    }
}

/// A secondary's value spelled the other way: `\0coordinator:,role=secondary\n`
/// for the usual `\0coordinator:role=secondary\n` and back. Every reader
/// parses both as the same role and bytes (an empty setting is skipped);
/// the store sees a new value, which it gives a new position (Consul keeps
/// a key's `ModifyIndex` when a write leaves its value as it was), so the
/// member's acknowledged position moves past the rewrite.
fn respelled(held: &Bytes) -> Bytes {
    let (_, payload) = Envelope::role_of(held);
    let usual = Envelope::secondary(payload);
    if *held == usual {
        let mut v = Vec::with_capacity(held.len() + 1);
        v.extend_from_slice(worker_core::ENVELOPE_MAGIC);
        v.extend_from_slice(b",role=secondary\n");
        v.extend_from_slice(payload);
        Bytes::from(v)
    } else {
        usual
    }
}

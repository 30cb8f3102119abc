//! Every invariant the simulator checks, numbered as in `docs/testing.md`;
//! the first that breaks ends the run (`violation`).
//!
//! | invariant | checked by | when |
//! |---|---|---|
//! | 1. the store never applies a write of a member that does not lead | `check_fenced_write` | every transaction the store applies (late ones too) |
//! | 2. at no revision is an item under two members (the ownership ledger) | `check_owners` | every transaction the store applies |
//! | 3. every published settled set was in the store at its revision | `check_publication` | every publication |
//! | 4. nothing is published after halt | `check_publication` | every publication |
//! | 5. no member believes it leads without its session, nor longer than `unbacked_bound` after the store ended it | `check_step` | every step |
//! | 6. after the quiet period: one leader, every item on one live member, no stale assignment or handoff record, balanced, every member settled on its assignment | `check_converged`, `check_records`, `member_unsettled`, `refused` | end of the run |
//! | 7. exclusive runs: no item in two members' acknowledged workloads | `check_exclusive` (from `check_step`) | every step that changed an application's workload |
//! | 8. every leader transaction is one the store takes | `txn_refused` | every transaction that reaches the store |
//! | 10. planned runs of the default mode: an item active somewhere stays active somewhere | `check_active_somewhere` (from `check_step`) | every step that changed an application's workload |

use std::collections::BTreeMap;

use std::collections::BTreeSet;

use bytes::Bytes;
use worker_core::{Envelope, Fence, Role, TxnOp, TxnOutcome, WorkId, Workload};

use super::clock::SEC;
use super::node::Life;
use super::Sim;
use crate::store::{Applied, Nanos};

impl Sim {
    /// Records that an invariant broke (the first one ends the run).
    pub(super) fn violation(&mut self, what: String) {
        if self.failure.is_none() {
            self.failure = Some(what);
        }
    }

    /// After every step: a member that believes it leads holds that session,
    /// and the store has not ended it for longer than a member needs to
    /// notice (paused time excluded).
    pub(super) fn check_step(&mut self) {
        if self.cfg.replicas > 1 && self.store.revision() != self.orphan_rev {
            self.orphan_rev = self.store.revision();
            self.observe_orphans();
        }
        if self.app_dirty {
            self.app_dirty = false;
            if self.exclusive {
                self.check_exclusive();
            } else if self.cfg.planned {
                self.check_active_somewhere();
            }
        }
        self.leave_drained();
        let bound = self.unbacked_bound();
        for n in 0..self.nodes.len() {
            let node = &self.nodes[n];
            if node.life != Life::Up {
                continue;
            }
            let Some(fence) = node.member.leading().cloned() else {
                self.nodes[n].unbacked_since = None;
                continue;
            };
            let paused = node.paused;
            if node.member.session() != Some(fence.session()) {
                let what = format!(
                    "{} leads with {} but holds no such session",
                    node.id,
                    fence.session()
                );
                self.violation(what);
                return;
            }
            if self.store.session_live(fence.session()) {
                self.nodes[n].unbacked_since = None;
                continue;
            }
            if paused {
                continue;
            }
            let since = *self.nodes[n].unbacked_since.get_or_insert(self.now);
            if self.now - since > bound {
                let what = format!(
                    "{} believes it leads (term {}) {} s after its session ended",
                    self.nodes[n].id,
                    fence.term(),
                    (self.now - since) / SEC
                );
                self.violation(what);
                return;
            }
        }
    }

    /// How long a member may go on believing it leads after the store ended
    /// its session (paused time excluded): a store that ends a session early
    /// (expiry forced, a cut-off member) is noticed at the latest when
    /// renewals have failed for a whole TTL, i.e. TTL + one renewal retry
    /// (at most TTL/10) + one request timeout, plus latency.
    pub fn unbacked_bound(&self) -> Nanos {
        self.p.ttl + self.p.ttl / 10 + self.p.request_timeout + 2 * self.p.spike_max + SEC
    }

    /// Invariant 10, planned runs of the default mode:
    /// an item active somewhere (primary in an acknowledged workload) stays
    /// active somewhere while it is an item: a drain, a join or a
    /// rebalance promotes the new primary before the old one lets go.
    fn check_active_somewhere(&mut self) {
        let active: BTreeSet<WorkId> = self
            .nodes
            .iter()
            .flat_map(|n| n.app.iter())
            .filter(|(_, v)| Envelope::role_of(v).0 == Role::Primary)
            .map(|(w, _)| w.clone())
            .collect();
        let work = self.layout.work.clone();
        // An item whose secondary's value would not fit a transaction moves
        // revoke-first (it cannot be prepared).
        let preparable = |w: &WorkId| {
            self.store.get(&format!("{work}{w}")).is_some_and(|v| {
                let secondary = Envelope::secondary(Envelope::split(v).map_or(&v[..], |(_, p)| p));
                leader_core::machine::refusal(&self.layout, &self.limits, w, &secondary).is_none()
            })
        };
        let lost = self
            .active
            .difference(&active)
            .find(|w| preparable(w))
            .cloned();
        self.active = active;
        if let Some(w) = lost {
            self.violation(format!(
                "item {w} is active nowhere during a planned move (no member holds it as primary in its acknowledged workload)"
            ));
        }
    }

    /// Exclusive runs: no item is in two members' acknowledged workloads
    /// (what their applications hold) as primary; secondaries may overlap.
    fn check_exclusive(&mut self) {
        let mut holder: BTreeMap<&WorkId, &str> = BTreeMap::new();
        let mut twice = None;
        'all: for node in &self.nodes {
            let primaries = node
                .app
                .iter()
                .filter(|(_, v)| Envelope::role_of(v).0 == Role::Primary);
            for (w, _) in primaries {
                if let Some(other) = holder.insert(w, &node.id) {
                    twice = Some(format!(
                        "exclusive: item {w} is in the acknowledged workloads of {other} and {} as primary",
                        node.id
                    ));
                    break 'all;
                }
            }
        }
        if let Some(what) = twice {
            self.violation(what);
        }
    }

    /// Replicas, a plan small enough for the brute force
    /// (`leader_core::conformance::replica_truth`): its (cold primaries,
    /// primaries changed, secondaries moved) is the least any valid plan of
    /// the same input makes, whenever one exists.
    pub(super) fn check_fewest(
        &mut self,
        id: &str,
        r: &leader_core::machine::PlanReport,
        input: &leader_core::machine::ReplicaInput,
    ) {
        use leader_core::conformance::replica_truth::{facts, full_minimum};
        let (items, members, current) = input;
        let Some(best) = full_minimum(&facts(items, members, current)) else {
            return;
        };
        let made = (
            r.cold_primaries,
            r.moved - r.secondaries_moved,
            r.secondaries_moved,
        );
        self.fewest_checked += 1;
        if made != best {
            self.violation(format!(
                "{id}'s plan makes (cold, changed, secondaries moved) {made:?}; the fewest is {best:?}"
            ));
        }
    }

    /// Replicas: which items have a secondary on a live member (its member
    /// key present) and no primary on one, since when; the longest such
    /// time is kept. One that lasts longer than the quiet period after the
    /// later of its start and the last fault is a violation (faults that
    /// keep coming may delay a promotion without bound).
    fn observe_orphans(&mut self) {
        let keys: BTreeSet<String> = self
            .store
            .range(&self.layout.members)
            .map(|(k, _)| k.clone())
            .collect();
        if keys.difference(&self.member_keys).next().is_some() {
            // A member (re)registered: it holds nothing, and the primaries
            // the balance gives it are cold.
            self.after_outage = false;
        }
        self.member_keys = keys;
        let prefix = self.layout.assignments.clone();
        let mut primary: BTreeSet<String> = BTreeSet::new();
        let mut secondary: BTreeSet<String> = BTreeSet::new();
        for (k, v) in self.store.range(&prefix) {
            let Some((m, w)) = k[prefix.len()..].split_once('/') else {
                continue;
            };
            if self.store.get(&self.layout.member_key(m)).is_none() {
                continue;
            }
            match Envelope::role_of(v).0 {
                Role::Primary => primary.insert(w.to_owned()),
                Role::Secondary => secondary.insert(w.to_owned()),
            };
        }
        let now = self.now;
        let mut longest = self.longest_orphaned;
        self.orphaned.retain(|w, since| {
            let still = secondary.contains(w) && !primary.contains(w);
            if !still {
                longest = longest.max(now - *since);
            }
            still
        });
        for w in secondary.difference(&primary) {
            self.orphaned.entry(w.clone()).or_insert(now);
        }
        let mut past_faults = 0;
        for since in self.orphaned.values() {
            longest = longest.max(now - since);
            past_faults = past_faults.max(now - (*since).max(self.last_fault_at));
        }
        self.longest_orphaned = longest;
        if past_faults > self.p.quiet_period() {
            self.violation(format!(
                "replicas: an item had a live secondary and no live primary for {} s after the last fault",
                past_faults / SEC
            ));
        }
    }

    /// Whether the cluster is settled: one member leads, its machine's last
    /// plan is in the store (nothing to write, no move in flight), and the
    /// member keys are those that plan counted.
    pub(super) fn cluster_settled(&self) -> bool {
        let leaders: Vec<&super::node::Lead> = self
            .nodes
            .iter()
            .filter(|n| n.life == Life::Up)
            .filter_map(|n| n.lead.as_ref())
            .collect();
        let keys: BTreeSet<String> = self
            .store
            .range(&self.layout.members)
            .map(|(k, _)| k.clone())
            .collect();
        matches!(leaders.as_slice(), [l] if !l.machine.writing())
            && self.planned_member_keys.as_ref() == Some(&keys)
    }

    /// A zone outage of members `hit`: counts the items whose every replica
    /// on a live member was in that zone although they had two or more
    /// (the spread should have kept one elsewhere); when the cluster was
    /// `settled` (the plan in the store), one such item is a violation.
    pub(super) fn check_zone_outage(&mut self, hit: &[usize], settled: bool) {
        let prefix = self.layout.assignments.clone();
        let ids: BTreeMap<&str, usize> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id.as_str(), i))
            .collect();
        let mut replicas: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (k, _) in self.store.range(&prefix) {
            let Some((m, w)) = k[prefix.len()..].split_once('/') else {
                continue;
            };
            // Live as the leader sees it: the member key is there.
            if let Some(&i) = ids.get(m) {
                if self.store.get(&self.layout.member_key(m)).is_some() {
                    replicas.entry(w.to_owned()).or_default().push(i);
                }
            }
        }
        let lost = replicas
            .values()
            .filter(|r| r.len() >= 2 && r.iter().all(|i| hit.contains(i)))
            .count();
        // Only when a member of another zone lives on (its key is there)
        // could the plan have spread the items beyond this one.
        let zone = hit.first().and_then(|&i| self.zone_of(i));
        let survivors = (0..self.nodes.len())
            .filter(|&i| {
                self.zone_of(i) != zone
                    && (self.store)
                        .get(&self.layout.member_key(&self.nodes[i].id))
                        .is_some()
            })
            .count();
        let settled = settled && survivors > 0;
        self.lost_every_replica += lost as u64;
        if settled && lost > 0 {
            self.violation(format!(
                "a zone outage took every live replica of {lost} items of 2 or more replicas, the plan in the store"
            ));
        }
    }

    /// At no revision is an item under two members (with replicas: as
    /// primary).
    pub(super) fn check_owners(&mut self, a: &Applied) {
        let prefix = self.layout.assignments.clone();
        for (k, v) in &a.changes {
            if v.is_none() {
                continue;
            }
            let Some((_, work)) = k
                .strip_prefix(prefix.as_str())
                .and_then(|r| r.split_once('/'))
            else {
                continue;
            };
            let owners: Vec<String> = self
                .store
                .range(&prefix)
                .filter(|(key, _)| key.rsplit_once('/').is_some_and(|(_, w)| w == work))
                .filter(|(_, v)| Envelope::role_of(v).0 == Role::Primary)
                .map(|(key, _)| key.clone())
                .collect();
            // The default mode's make-before-break moves promote the new
            // primary before the old one's key goes: two at most.
            let most = if self.cfg.prepare && !self.exclusive {
                2
            } else {
                1
            };
            if owners.len() > most {
                self.violation(format!(
                    "item {work} is under two members at revision {}: {owners:?}",
                    a.rev
                ));
                return;
            }
        }
    }
    /// Invariant 1, at every transaction the store applies: the store never
    /// applies a write of a member that does not lead (`holds`: its fence
    /// held when the transaction arrived), whatever the fence check did.
    pub(super) fn check_fenced_write(
        &mut self,
        id: &str,
        fence: &Fence,
        holds: bool,
        outcome: &TxnOutcome,
    ) {
        if matches!(outcome, TxnOutcome::Applied { .. }) && !holds {
            self.violation(format!(
                "the store applied a write of {id} (term {}), which does not lead",
                fence.term()
            ));
        }
    }

    /// Invariant 8: member `id` sent a transaction the store refuses (past
    /// its limits, or naming a key twice), which the leader would rebuild
    /// forever.
    pub(super) fn txn_refused(&mut self, id: &str, ops: &[TxnOp]) {
        let what = format!(
            "{id} sent a transaction the store refuses ({} ops, {} bytes, limits {:?}): [{}]",
            ops.len(),
            self.limits.bytes(ops),
            self.limits,
            self.ops_summary(ops)
        );
        self.violation(what);
    }

    /// Invariants 3 and 4, at every publication of member `id`'s worker:
    /// nothing is published after halt, and the settled set published
    /// (`before` items before it) is the member's assignment in the store
    /// (under `prefix`) at the revision the change names.
    pub(super) fn check_publication(
        &mut self,
        id: &str,
        halted: bool,
        prefix: &str,
        revision: u64,
        settled: &Workload,
        before: usize,
    ) {
        if halted {
            self.violation(format!("{id} published after halt"));
            return;
        }
        let seen = self.store.assigned_at(prefix, revision);
        if seen != *settled {
            self.violation(format!(
                "{id} published a set never in the store at revision {}: {:?} (store: {:?}; before: {before} items)",
                revision,
                settled.keys().collect::<Vec<_>>(),
                seen.keys().collect::<Vec<_>>()
            ));
        }
    }

    /// After the quiet period: one leader, every item on exactly one live
    /// member, balanced, and every member's settled workload is its assignment.
    pub(super) fn check_converged(&mut self) {
        let a_prefix = self.layout.assignments.clone();
        let live: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].life == Life::Up)
            .collect();
        let Some(leader) = self.store.leader_session() else {
            self.violation("no leader after the quiet period".into());
            return;
        };
        let leaders: Vec<&str> = live
            .iter()
            .filter(|i| self.nodes[**i].member.leading().is_some())
            .map(|i| self.nodes[*i].id.as_str())
            .collect();
        if leaders.len() != 1
            || live
                .iter()
                .filter_map(|i| self.nodes[*i].member.leading())
                .any(|f| *f.session() != leader)
        {
            let what = format!("after the quiet period, members believing they lead: {leaders:?}");
            self.violation(what);
            return;
        }
        let items: Vec<String> = self
            .store
            .range(&self.layout.work)
            .map(|(k, _)| k[self.layout.work.len()..].to_owned())
            .collect();
        // Items too large to assign: held by nobody, or still by the one
        // member that had them before they grew.
        let refused: Vec<String> = self
            .store
            .range(&self.layout.work)
            .filter(|(k, v)| self.refused(&k[self.layout.work.len()..], v))
            .map(|(k, _)| k[self.layout.work.len()..].to_owned())
            .collect();
        let mut count: BTreeMap<String, usize> = BTreeMap::new();
        let mut owners: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (k, _) in self.store.range(&a_prefix) {
            if let Some((m, w)) = k[a_prefix.len()..].split_once('/') {
                owners.entry(w.to_owned()).or_default().push(m.to_owned());
                *count.entry(m.to_owned()).or_default() += 1;
            }
        }
        for n in &live {
            let node = &self.nodes[*n];
            let Some(s) = node.member.session() else {
                let what = format!("after the quiet period {} has no session", node.id);
                self.violation(what);
                return;
            };
            if !self.store.session_live(s) {
                let what = format!("after the quiet period {}'s session {s} is gone", node.id);
                self.violation(what);
                return;
            }
        }
        let live_ids: Vec<String> = live.iter().map(|i| self.nodes[*i].id.clone()).collect();
        if self.cfg.replicas > 1 {
            self.converged_replicas(&live, &items, &refused);
            return;
        }
        for w in &items {
            match owners.get(w).map(Vec::as_slice) {
                Some([m]) if live_ids.contains(m) => {}
                None if refused.contains(w) => {}
                other => {
                    let what = format!("after the quiet period item {w} is held by {other:?}");
                    self.violation(what);
                    return;
                }
            }
        }
        if owners.keys().any(|w| !items.contains(w)) {
            let what =
                format!("after the quiet period assignments of gone items remain: {owners:?}");
            self.violation(what);
            return;
        }
        if !self.check_records(&items) {
            return;
        }
        let counts: Vec<usize> = live_ids
            .iter()
            .map(|m| count.get(m).copied().unwrap_or(0))
            .collect();
        if counts.iter().max().unwrap_or(&0) - counts.iter().min().unwrap_or(&0) > 1 {
            self.violation(format!(
                "after the quiet period counts are unbalanced: {live_ids:?} {counts:?}"
            ));
            return;
        }
        for n in live {
            if let Some(what) = self.member_unsettled(n) {
                self.violation(what);
                return;
            }
        }
    }

    /// After the quiet period, with replicas: the replicas, the members'
    /// workloads and the handoff records.
    fn converged_replicas(&mut self, live: &[usize], items: &[String], refused: &[String]) {
        match (self.replicas_unconverged(live, items, refused))
            .or_else(|| live.iter().find_map(|&n| self.member_unsettled(n)))
        {
            Some(what) => self.violation(what),
            None => _ = self.check_records(items),
        }
    }

    /// After the quiet period, with replicas: what is wrong with the
    /// replicas in the store, if anything. Every item (but refused ones) has
    /// `min(replicas, live)` replicas on distinct live members, one of them
    /// primary; at most `c` in a zone (`c` the smallest cap the live zones
    /// allow); primaries balanced within one, and replicas too when every
    /// live zone has as many members; no replica of a gone item.
    fn replicas_unconverged(
        &self,
        live: &[usize],
        items: &[String],
        refused: &[String],
    ) -> Option<String> {
        let prefix = self.layout.assignments.clone();
        let zone: BTreeMap<String, Option<String>> = live
            .iter()
            .map(|&i| (self.nodes[i].id.clone(), self.zone_of(i)))
            .collect();
        let mut sizes: BTreeMap<Option<String>, usize> = BTreeMap::new();
        for z in zone.values() {
            *sizes.entry(z.clone()).or_default() += 1;
        }
        let r = (self.cfg.replicas as usize).min(live.len());
        let cap = (1..=r)
            .find(|&c| sizes.values().map(|&s| s.min(c)).sum::<usize>() >= r)
            .unwrap_or(r);
        let mut held: BTreeMap<String, Vec<(String, Role)>> = BTreeMap::new();
        for (k, v) in self.store.range(&prefix) {
            if let Some((m, w)) = k[prefix.len()..].split_once('/') {
                let role = Envelope::role_of(v).0;
                held.entry(w.to_owned())
                    .or_default()
                    .push((m.to_owned(), role));
            }
        }
        let mut primaries: BTreeMap<&str, usize> = zone.keys().map(|m| (m.as_str(), 0)).collect();
        let mut totals = primaries.clone();
        for w in items {
            let reps = held.get(w).map(Vec::as_slice).unwrap_or_default();
            if reps.is_empty() && refused.contains(w) {
                continue;
            }
            let on_live = reps.iter().all(|(m, _)| zone.contains_key(m));
            let n_primary = reps.iter().filter(|(_, r)| *r == Role::Primary).count();
            let mut per_zone: BTreeMap<&Option<String>, usize> = BTreeMap::new();
            for (m, _) in reps.iter().filter(|(m, _)| zone.contains_key(m)) {
                *per_zone.entry(&zone[m]).or_default() += 1;
            }
            if !on_live || reps.len() != r || n_primary != 1 || per_zone.values().any(|&n| n > cap)
            {
                return Some(format!(
                    "after the quiet period item {w} has replicas {reps:?} (want {r} on live members, one primary, at most {cap} per zone; zones {zone:?})"
                ));
            }
            for (m, role) in reps {
                *totals.get_mut(m.as_str()).expect("live") += 1;
                if *role == Role::Primary {
                    *primaries.get_mut(m.as_str()).expect("live") += 1;
                }
            }
        }
        if held.keys().any(|w| !items.contains(w)) {
            return Some(format!(
                "after the quiet period replicas of gone items remain: {:?}",
                held.keys()
                    .filter(|w| !items.contains(w))
                    .collect::<Vec<_>>()
            ));
        }
        let spread = |c: &BTreeMap<&str, usize>| {
            c.values().max().unwrap_or(&0) - c.values().min().unwrap_or(&0)
        };
        let even_zones = sizes.values().collect::<BTreeSet<_>>().len() <= 1;
        if spread(&primaries) > 1 || (even_zones && spread(&totals) > 1) {
            return Some(format!(
                "after the quiet period replicas are unbalanced: primaries {primaries:?}, all {totals:?}"
            ));
        }
        None
    }

    /// After the quiet period: no handoff record is left (of an item that
    /// exists or of one deleted meanwhile); the count is also kept in
    /// `Outcome::stale_records`.
    fn check_records(&mut self, items: &[String]) -> bool {
        let records: Vec<String> = self
            .store
            .range(&self.layout.handoff)
            .map(|(k, _)| k[self.layout.handoff.len()..].to_owned())
            .collect();
        let (stale, of_items): (Vec<String>, Vec<String>) =
            records.into_iter().partition(|w| !items.contains(w));
        self.stale_records = stale.len() as u64;
        if !of_items.is_empty() || !stale.is_empty() {
            let what = format!(
                "after the quiet period handoff records remain: of items {of_items:?}, of deleted items {stale:?}"
            );
            self.violation(what);
            return false;
        }
        true
    }

    /// After the quiet period: what is wrong with member `n`'s workload, if
    /// anything (its application holds its settled workload, which is its
    /// assignment).
    fn member_unsettled(&self, n: usize) -> Option<String> {
        let node = &self.nodes[n];
        let now = self
            .store
            .assigned_at(node.worker.member_prefix(), self.store.revision());
        let settled = node.settled_raw();
        if node.held || node.restoring.is_some() || node.app != settled {
            return Some(format!(
                "after the quiet period {} holds {:?} (released {}, restoring {:?}) but settled {:?}",
                node.id,
                node.app.keys().collect::<Vec<_>>(),
                node.held,
                node.restoring,
                node.settled.keys().collect::<Vec<_>>()
            ));
        }
        if settled != now || !node.worker.is_synced() {
            return Some(format!(
                "after the quiet period {} has settled {:?} but is assigned {:?}",
                node.id,
                node.settled.keys().collect::<Vec<_>>(),
                now.keys().collect::<Vec<_>>()
            ));
        }
        None
    }

    /// Whether the leader must refuse `work` with `value` (its assignment
    /// cannot fit a transaction): an independent statement of the rule in
    /// docs/leader.md, for the convergence check.
    fn refused(&self, work: &str, value: &Bytes) -> bool {
        let id = "m".repeat(worker_core::MAX_INSTANCE_ID_LEN);
        // With secondaries, the largest value written is a secondary's.
        let value = if self.cfg.replicas > 1 {
            Envelope::secondary(value)
        } else {
            value.clone()
        };
        let worst = [
            // The simulated leaders write the position each transaction
            // expects to the sequence key, at most 20 digits.
            TxnOp::Sequence {
                key: self.layout.sequence.clone(),
                index: 0,
                value: Bytes::from(format!("{{\"after\":{}}}", u64::MAX)),
            },
            TxnOp::Absent {
                key: self.layout.member_key(&id),
            },
            TxnOp::Delete {
                key: self.layout.handoff_key(work),
            },
            TxnOp::Put {
                key: self.layout.assignment_key(&id, work),
                value,
            },
        ];
        !self.limits.fit(&worst)
    }
}

//! What the tokio drivers (`worker.rs`, `member.rs`, `leader.rs`,
//! `follow.rs`) do with the machines' actions: each becomes a store request,
//! a change of what the application holds, or the start or end of a term;
//! and their timers: due ones handled, the next one armed.

use std::time::Duration;

use leader_core::follow::{FollowAction, PrefixFollower, FOLLOW_SEED};
use leader_core::machine::{Action as LeadAction, LeaderMachine};
use leader_core::{MemberAction, MemberMeta};
use worker_core::machine::Action as WorkAction;
use worker_core::{Fence, SessionId, Workload};

use super::clock::{to_global, MS};
use super::node::{raw, Lead, Life, Restoring};
use super::requests::{Req, Slot};
use super::{Kind, Sim};

/// A key for the trace (`?` if it is not UTF-8).
fn lossy(k: &[u8]) -> &str {
    std::str::from_utf8(k).unwrap_or("?")
}

impl Sim {
    /// Carries out every action the node's machines ask for.
    #[allow(clippy::too_many_lines)] // one arm per action
    pub(super) fn drive(&mut self, n: usize) {
        loop {
            let mut any = false;
            while let Some(a) = self.nodes[n].worker.poll() {
                any = true;
                self.worker_action(n, a);
            }
            self.after_worker(n);
            while let Some(a) = self.nodes[n].member.poll() {
                any = true;
                let id = self.nodes[n].id.clone();
                match a {
                    MemberAction::Register => {
                        // As `member.rs`: a member-key write in flight is
                        // dropped; the registration writes the key afresh.
                        let meta = self.meta_now(n);
                        let node = &mut self.nodes[n];
                        node.written = None;
                        node.meta_in_flight = false;
                        node.gens[Slot::MemberKey as usize] += 1;
                        node.registering = true;
                        node.pending_meta = Some(meta.clone());
                        let key = self.layout.member_key(&id);
                        self.send(n, Slot::Register, Req::Register(key, meta.to_bytes()));
                    }
                    MemberAction::Renew(s) => self.send(n, Slot::Renew, Req::Renew(s)),
                    MemberAction::Observe => self.send(n, Slot::Observe, Req::ObserveLeader),
                    MemberAction::Campaign(s) => {
                        self.send(n, Slot::Campaign, Req::Campaign(s, id));
                    }
                    MemberAction::Lead(fence) => {
                        tr!(self, "{id} leads (term {})", fence.term());
                        self.stop_leading(n);
                        self.start_leading(n, fence);
                    }
                    MemberAction::StopLeading { resign } => {
                        tr!(self, "{id} stops leading");
                        self.stop_leading(n);
                        if let Some(f) = resign {
                            self.send(n, Slot::Oneway, Req::Resign(f));
                        }
                    }
                    MemberAction::Close(s) => self.send(n, Slot::Oneway, Req::Close(s)),
                    MemberAction::Halted => {
                        tr!(self, "{id} halted");
                    }
                    MemberAction::Release if self.cfg.controls.release => {
                        tr!(self, "{id} releases its workload");
                        self.releases += 1;
                        let node = &mut self.nodes[n];
                        if node.restoring.take().is_some() {
                            node.resync_owed = true;
                        }
                        if !node.held {
                            node.held = true;
                            self.set_app(n, Workload::new());
                        }
                    }
                    MemberAction::Release => {
                        tr!(self, "{id} would release (control: release off)");
                    }
                    MemberAction::Restore { resync } => {
                        tr!(self, "{id} restores (resync {resync})");
                        let node = &mut self.nodes[n];
                        if resync || node.resync_owed {
                            node.resync_owed = false;
                            node.restoring = Some(Restoring::Listing);
                            node.worker.resync();
                        } else if node.held && node.restoring.is_none() {
                            node.held = false;
                            let settled =
                                raw(&node.worker.settled(), &node.worker.settled_secondaries());
                            self.set_app(n, settled);
                        }
                    }
                    other => {
                        unreachable!("a machine action the simulator does not carry out: {other:?}")
                    }
                }
            }
            any |= self.drive_lead(n);
            if !any {
                break;
            }
        }
        self.after_worker(n);
        self.write_member_key(n);
        self.rearm(n);
    }

    /// Carries out one action of node `n`'s worker machine, as `worker.rs` does; a publication is checked against the store.
    fn worker_action(&mut self, n: usize, a: WorkAction) {
        let prefix = self.nodes[n].worker.member_prefix().to_owned();
        match a {
            WorkAction::List => self.send(n, Slot::WorkerKv, Req::List(prefix)),
            WorkAction::Watch { after } => self.send(n, Slot::WorkerKv, Req::Watch(prefix, after)),
            WorkAction::ObserveLeader => self.send(n, Slot::WorkerLeader, Req::ObserveLeader),
            WorkAction::IgnoredKey { key, .. } => {
                let id = self.nodes[n].id.clone();
                tr!(self, "{id} ignores {}", lossy(&key));
            }
            WorkAction::Publish(change) => {
                self.publications += 1;
                let node = &mut self.nodes[n];
                let id = node.id.clone();
                let halted = node.worker.is_halted() || node.member.halted();
                let before = node.settled.len();
                change.apply_to(&mut node.settled);
                change.apply_roles_to(&mut node.settled_secondaries);
                let settled = node.settled_raw();
                if !node.held {
                    // `worker.rs` publishes it to the application.
                    self.set_app(n, settled.clone());
                }
                tr!(
                    self,
                    "{id} publishes rev {} +{} -{} ~{} = {} items",
                    change.revision,
                    change.added.len(),
                    change.removed.len(),
                    change.changed.len(),
                    settled.len()
                );
                self.check_publication(&id, halted, &prefix, change.revision, &settled, before);
            }
            other => unreachable!("a machine action the simulator does not carry out: {other:?}"),
        }
    }

    /// What `worker.rs` does after each input: ends a resyncing restore once
    /// the fresh read has settled, and passes the settled position on.
    fn after_worker(&mut self, n: usize) {
        let node = &mut self.nodes[n];
        if node.life != Life::Up {
            return;
        }
        let position = node.worker.settled_position();
        if node.restoring == Some(Restoring::Settling) && position.is_some() {
            node.restoring = None;
            node.held = false;
            let settled = raw(&node.worker.settled(), &node.worker.settled_secondaries());
            let id = node.id.clone();
            tr!(self, "{id} restored after a fresh read");
            self.set_app(n, settled);
        }
        let node = &mut self.nodes[n];
        if let Some(p) = position {
            node.position = node.position.max(p);
        }
    }

    /// A plan of leader `id`: counted, checked against the brute force when
    /// small (`input`), traced.
    fn planned(
        &mut self,
        id: &str,
        r: &leader_core::machine::PlanReport,
        input: Option<&leader_core::machine::ReplicaInput>,
    ) {
        self.plans += 1;
        if let Some(input) = input {
            self.check_fewest(id, r, input);
        }
        self.cold_primaries += r.cold_primaries as u64;
        if self.after_outage {
            self.cold_after_outage += r.cold_primaries as u64;
        }
        self.planned_member_keys = Some(
            self.store
                .range(&self.layout.members)
                .map(|(k, _)| k.clone())
                .collect(),
        );
        self.promotions += r.promotions as u64;
        tr!(
            self,
            "{id} planned: {} members {} items moved {} placed {} revokes {} puts {} txns {}",
            r.members,
            r.items,
            r.moved,
            r.placed,
            r.revokes,
            r.puts,
            r.transactions
        );
    }

    /// Sets what node `n`'s application holds.
    pub(super) fn set_app(&mut self, n: usize, app: Workload) {
        if self.nodes[n].app != app {
            self.nodes[n].app = app;
            self.app_dirty = true;
        }
    }

    /// The member key's value as it should be now (`member.rs`: weight 1,
    /// the acknowledged position).
    fn meta_now(&self, n: usize) -> MemberMeta {
        MemberMeta {
            acked: Some(self.nodes[n].position),
            ttl_ms: Some(self.p.ttl / MS),
            zone: self.zone_of(n),
            draining: self.nodes[n].draining.is_some(),
            ..MemberMeta::default()
        }
    }

    /// Keeps the member key as it should be, one write at a time, as
    /// `member.rs` does (auto-ack).
    fn write_member_key(&mut self, n: usize) {
        let local = self.local_now(n);
        let meta = self.meta_now(n);
        let node = &mut self.nodes[n];
        if node.life != Life::Up
            || node.member.halted()
            || node.registering
            || node.meta_in_flight
            || node.meta_retry_at.is_some_and(|t| local < t)
            || node.written.as_ref() == Some(&meta)
        {
            return;
        }
        let Some(session) = node.member.session().cloned() else {
            return;
        };
        node.meta_retry_at = None;
        node.meta_in_flight = true;
        node.pending_meta = Some(meta.clone());
        let key = self.layout.member_key(&node.id);
        self.send(
            n,
            Slot::MemberKey,
            Req::PutBound(session, key, meta.to_bytes()),
        );
    }

    /// Node `n` takes office with `fence`: a fresh leader machine and two followers, as the leader task starts them.
    #[allow(clippy::many_single_char_names)]
    fn start_leading(&mut self, n: usize, fence: Fence) {
        let (_, _, lt) = self.timing();
        let t = self.std_at(n);
        let mut machine =
            LeaderMachine::new(self.layout.clone(), lt, self.max_ops, t).with_limits(self.limits);
        machine.set_safeguards(self.cfg.safeguards);
        let backoff = (
            Duration::from_millis(100),
            Duration::from_nanos(self.p.backoff_max),
        );
        let lead = Lead {
            fence,
            machine,
            members: PrefixFollower::new(&*self.layout.members, backoff, FOLLOW_SEED),
            items: PrefixFollower::new(&*self.layout.work, backoff, FOLLOW_SEED),
        };
        self.nodes[n].lead = Some(lead);
        // The followers' and the machine's first reads go out now, as the
        // leader task starts them.
        self.drive_lead(n);
    }

    /// Node `n` leaves office: its leader machine and followers are dropped, with their requests and watches.
    fn stop_leading(&mut self, n: usize) {
        if self.nodes[n].lead.take().is_some() {
            for slot in [
                Slot::LeadList,
                Slot::LeadWrite,
                Slot::LeadHandoffs,
                Slot::FollowMembers,
                Slot::FollowItems,
            ] {
                self.cancel_watch(n, slot);
                self.nodes[n].gens[slot as usize] += 1;
            }
        }
    }

    /// Carries out what the leader's followers and machine ask for; true if
    /// they asked for anything.
    fn drive_lead(&mut self, n: usize) -> bool {
        let mut any = false;
        for slot in [Slot::FollowMembers, Slot::FollowItems] {
            loop {
                let t = self.std_at(n);
                let Some(lead) = &mut self.nodes[n].lead else {
                    return any;
                };
                let f = lead.follower(slot);
                let Some(a) = f.poll() else { break };
                any = true;
                match a {
                    FollowAction::List => {
                        let req = Req::List(f.prefix().to_owned());
                        self.send(n, slot, req);
                    }
                    FollowAction::Watch { after } => {
                        let req = Req::Watch(f.prefix().to_owned(), after);
                        self.send(n, slot, req);
                    }
                    FollowAction::Publish(map) => {
                        let entries = map.iter().map(|(k, v)| (k.as_ref(), v));
                        if slot == Slot::FollowMembers {
                            lead.machine.handle_members(t, entries);
                        } else {
                            lead.machine.handle_items(t, entries);
                        }
                    }
                    other => {
                        unreachable!("a machine action the simulator does not carry out: {other:?}")
                    }
                }
            }
        }
        let mut lead_actions = Vec::new();
        let mut input = None;
        if let Some(lead) = &mut self.nodes[n].lead {
            while let Some(a) = lead.machine.poll() {
                if matches!(a, LeadAction::Planned(_)) {
                    input = lead.machine.last_replica_input().cloned();
                }
                lead_actions.push((a, lead.fence.clone()));
            }
        }
        for (a, fence) in lead_actions {
            any = true;
            let id = self.nodes[n].id.clone();
            match a {
                LeadAction::ListAssignments => {
                    self.send(n, Slot::LeadList, Req::ListAssignments);
                }
                LeadAction::ListHandoffs => {
                    let prefix = self.layout.handoff.clone();
                    self.send(n, Slot::LeadHandoffs, Req::List(prefix));
                }
                LeadAction::Write(ops) => self.send(n, Slot::LeadWrite, Req::Txn(fence, ops)),
                LeadAction::Planned(r) => self.planned(&id, &r, input.as_ref()),
                LeadAction::EndSession { member, session } => {
                    tr!(
                        self,
                        "{id} ends {member}'s session {session}: handoff timed out"
                    );
                    self.send(n, Slot::Oneway, Req::Close(SessionId(session)));
                }
                LeadAction::BadKey { key, .. } => tr!(self, "{id} bad key {key}"),
                LeadAction::Refused { work, bytes, .. } => {
                    tr!(self, "{id} refuses {work} ({bytes} bytes)");
                }
                LeadAction::BadMemberValue { member, .. } => {
                    tr!(self, "{id} bad member value {member}");
                }
                LeadAction::StepDown => {
                    tr!(self, "{id} fenced: steps down");
                    self.stop_leading(n);
                    let t = self.std_at(n);
                    self.nodes[n].member.handle_leader_ended(t);
                }
                other => {
                    unreachable!("a machine action the simulator does not carry out: {other:?}")
                }
            }
        }
        any
    }

    /// Calls `handle_timeout` of each of node `n`'s machines whose timer is due.
    pub(super) fn timeout(&mut self, n: usize) {
        let (s, t) = (self.std_at(n), self.std_at(n));
        let node = &mut self.nodes[n];
        if node.worker.poll_timeout().is_some_and(|d| d <= s) {
            node.worker.handle_timeout(s);
        }
        if node.member.poll_timeout().is_some_and(|d| d <= t) {
            node.member.handle_timeout(t);
        }
        if let Some(lead) = &mut node.lead {
            if lead.machine.poll_timeout().is_some_and(|d| d <= t) {
                lead.machine.handle_timeout(t);
            }
            for f in [&mut lead.members, &mut lead.items] {
                if f.poll_timeout().is_some_and(|d| d <= t) {
                    f.handle_timeout(t);
                }
            }
        }
    }

    /// Queues a wake-up of node `n` at its machines' earliest timer, if that changed.
    fn rearm(&mut self, n: usize) {
        let node = &self.nodes[n];
        if node.life != Life::Up {
            return;
        }
        let mut next = [
            node.worker.poll_timeout().map(|i| self.nanos_of_std(n, i)),
            node.member.poll_timeout().map(|i| self.nanos_of_std(n, i)),
            // A member-key retry that is due but waits for something else
            // (a registration) arms nothing: see `write_member_key`.
            node.meta_retry_at
                .map(|l| to_global(node.ppm, l))
                .filter(|g| *g > self.now),
        ]
        .into_iter()
        .flatten()
        .min();
        if let Some(lead) = &node.lead {
            let more = [
                lead.machine.poll_timeout(),
                lead.members.poll_timeout(),
                lead.items.poll_timeout(),
            ]
            .map(|i| i.map(|i| self.nanos_of_std(n, i)));
            next = next.into_iter().chain(more.into_iter().flatten()).min();
        }
        let next = next.map(|t| t.max(self.now));
        if next != node.armed {
            let inc = node.inc;
            self.nodes[n].armed = next;
            if let Some(t) = next {
                self.push(t, Kind::Wake(n, inc));
            }
        }
    }
}

//! One simulated member ([`Node`]): its real machines, its driver's state
//! (requests in flight, timers, the member key) and what its application
//! holds; joining the cluster, and the machines' timing.

use std::time::Duration;

use leader_core::follow::PrefixFollower;
use leader_core::machine::{LeaderMachine, LeaderTiming};
use leader_core::{MemberMachine, MemberMeta, MemberTiming};
use rand::Rng;
use worker_core::machine::{Machine, Timing};
use worker_core::{Fence, Workload};

use super::clock::to_local;
use super::requests::{Slot, SLOTS};
use super::{Ev, Sim};
use crate::store::Nanos;

/// One simulated member: its machines, what its driver keeps, what its application holds.
#[derive(Debug)]
#[allow(clippy::struct_excessive_bools)] // independent facts of one simulated machine
pub(super) struct Node {
    /// Its instance id (`m0`, `m1`, …).
    pub(super) id: String,
    /// Its incarnation: one more at every crash, so that what was meant for the one before is dropped.
    pub(super) inc: u32,
    /// Up, crashed or left.
    pub(super) life: Life,
    /// Paused: it processes nothing, its events pile up in `backlog`.
    pub(super) paused: bool,
    /// When the current pause began.
    pub(super) paused_at: Nanos,
    /// The events that came while it was paused, in order.
    pub(super) backlog: Vec<Ev>,
    /// Cut off from the store.
    pub(super) partitioned: bool,
    /// The real worker machine.
    pub(super) worker: Machine,
    /// The real member machine.
    pub(super) member: MemberMachine,
    /// While it leads: the leader machine and its followers.
    pub(super) lead: Option<Lead>,
    /// Per request slot, the generation of the request in flight: an answer to an older one is dropped.
    pub(super) gens: [u64; SLOTS],
    /// When its timers are due next (global time), if a wake-up is queued.
    pub(super) armed: Option<Nanos>,
    /// The settled workload its worker published.
    pub(super) settled: Workload,
    /// The items of `settled` held as secondaries.
    pub(super) settled_secondaries: std::collections::BTreeSet<worker_core::WorkId>,
    /// Since when this member believes it leads while the store says its
    /// session is gone (paused time excluded).
    pub(super) unbacked_since: Option<Nanos>,
    /// This machine's clock rate error, parts per million.
    pub(super) ppm: i64,
    /// What the application holds: the acknowledged workload.
    pub(super) app: Workload,
    /// Exclusive mode: the application holds nothing (released, restoring).
    pub(super) held: bool,
    /// A restore that reads afresh first.
    pub(super) restoring: Option<Restoring>,
    /// A resync was asked for and a release cut it short: the next restore
    /// resyncs too (as `worker.rs` does).
    pub(super) resync_owed: bool,
    /// The worker's settled position (what the member acknowledges).
    pub(super) position: u64,
    /// The member key as written for the live session.
    pub(super) written: Option<MemberMeta>,
    /// The member key write in flight, or the one registration writes.
    pub(super) pending_meta: Option<MemberMeta>,
    /// A registration is in flight.
    pub(super) registering: bool,
    /// A member-key write is in flight.
    pub(super) meta_in_flight: bool,
    /// After a failed member-key write: not before this (local time).
    pub(super) meta_retry_at: Option<Nanos>,
    /// Draining since then (global time): its key says so, and it leaves
    /// once it holds nothing, acknowledged, and no handoff record names it.
    pub(super) draining: Option<Nanos>,
}

/// Whether a member runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Life {
    /// Running.
    Up,
    /// Crashed; it restarts.
    Down,
    /// Left the cluster (halted); it does not come back.
    Halted,
}

/// A restore that reads afresh first (as `worker.rs` does it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Restoring {
    /// Waiting for the list asked for.
    Listing,
    /// Listed: waiting for what it showed to settle.
    Settling,
}

/// What a member runs while it leads.
#[derive(Debug)]
pub(super) struct Lead {
    /// The fence of its term.
    pub(super) fence: Fence,
    /// The real leader machine.
    pub(super) machine: LeaderMachine,
    /// The follower of the members prefix.
    pub(super) members: PrefixFollower,
    /// The follower of the work prefix.
    pub(super) items: PrefixFollower,
}

impl Lead {
    /// The follower that `slot` (`FollowMembers` or `FollowItems`) serves.
    pub(super) fn follower(&mut self, slot: Slot) -> &mut PrefixFollower {
        if slot == Slot::FollowMembers {
            &mut self.members
        } else {
            &mut self.items
        }
    }
}

impl Sim {
    /// A new member joins: fresh machines, a clock drawn within the drift.
    pub(super) fn join(&mut self) {
        let n = self.nodes.len();
        let id = format!("m{n}");
        let drift = i64::from(self.p.drift_ppm);
        let ppm = self.rng.random_range(-drift..=drift);
        let (worker, member) = self.fresh(&id, ppm);
        tr!(self, "{id} starts (clock {ppm:+} ppm)");
        self.nodes.push(Node {
            id,
            inc: 0,
            life: Life::Up,
            paused: false,
            paused_at: 0,
            backlog: Vec::new(),
            partitioned: false,
            worker,
            member,
            lead: None,
            gens: [0; SLOTS],
            armed: None,
            settled: Workload::new(),
            settled_secondaries: std::collections::BTreeSet::new(),
            unbacked_since: None,
            ppm,
            app: Workload::new(),
            held: self.exclusive,
            restoring: None,
            resync_owed: false,
            position: 0,
            written: None,
            pending_meta: None,
            registering: false,
            meta_in_flight: false,
            meta_retry_at: None,
            draining: None,
        });
        self.drive(n);
    }

    /// Fresh machines for member `id`, whose clock is `ppm` off.
    pub(super) fn fresh(&mut self, id: &str, ppm: i64) -> (Machine, MemberMachine) {
        let (w, m, _) = self.timing();
        let mut worker = Machine::new(&self.layout.assignments, id, w, self.rng.random())
            .expect("valid worker config");
        worker.set_safeguards(self.cfg.safeguards);
        let now = self.base + Duration::from_nanos(to_local(ppm, self.now));
        let member = MemberMachine::new(m, true, self.rng.random(), now);
        (worker, member)
    }

    /// The timing of the worker, member and leader machines, from the run's `Params`.
    pub(super) fn timing(&self) -> (Timing, MemberTiming, LeaderTiming) {
        let d = Duration::from_nanos;
        let w = Timing {
            soak: d(self.p.soak),
            max_soak: d(self.p.soak * 10),
            leader_settle: d(self.p.leader_settle),
            backoff_min: Duration::from_millis(100),
            backoff_max: d(self.p.backoff_max),
        };
        let m = {
            let mut t = MemberTiming::new(d(self.p.ttl));
            t.backoff_max = d(self.p.backoff_max);
            t.exclusive = self.exclusive.then(|| d(self.p.margin));
            t
        };
        let mut l = LeaderTiming::with_soak(d(self.p.leader_soak));
        // The quiet period counts on a repair read within 10 leader soaks.
        l.verify_every = l.max_soak;
        l.backoff_max = d(self.p.backoff_max);
        l.exclusive = self.exclusive.then(|| d(self.p.margin));
        l.replicas = self.cfg.replicas.max(1);
        l.prepare = self.cfg.prepare;
        (w, m, l)
    }

    /// Whether what was meant for incarnation `inc` of node `n` still reaches it.
    pub(super) fn deliverable(&self, n: usize, inc: u32) -> bool {
        let node = &self.nodes[n];
        node.inc == inc && node.life == Life::Up
    }
}

impl Node {
    /// The settled workload as the store holds it: each secondary's value in
    /// its role envelope (what the application holds, `app`, is kept so).
    pub(super) fn settled_raw(&self) -> Workload {
        raw(&self.settled, &self.settled_secondaries)
    }
}

/// `workload` with the values of `secondaries` in their role envelope.
pub(super) fn raw(
    workload: &Workload,
    secondaries: &std::collections::BTreeSet<worker_core::WorkId>,
) -> Workload {
    workload
        .iter()
        .map(|(id, v)| {
            let v = if secondaries.contains(id) {
                worker_core::Envelope::secondary(v)
            } else {
                v.clone()
            };
            (id.clone(), v)
        })
        .collect()
}

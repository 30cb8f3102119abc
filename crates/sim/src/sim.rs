//! The cluster: N members, each running the real worker `Machine`, the real
//! `MemberMachine` and (while it leads) the real `LeaderMachine` with two real
//! `PrefixFollower`s (members, items); the simulator does what their tokio
//! drivers do: it turns their actions into store requests with seeded
//! latencies and feeds the outcomes back. One event queue ordered by (time,
//! sequence); every random choice from one seeded RNG.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::Duration;

use bytes::Bytes;
use leader_core::follow::{FollowAction, PrefixFollower, FOLLOW_SEED};
use leader_core::machine::{Action as LeadAction, LeaderMachine, LeaderRead, LeaderTiming};
use leader_core::{Layout, MemberAction, MemberMachine, MemberMeta, MemberTiming};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use worker_core::machine::{Action as WorkAction, Machine, Timing};
use worker_core::{
    Fence, KvChange, KvEntry, Leader, Safeguards, SessionId, Snapshot, TxnLimits, TxnOp,
    TxnOutcome, WatchEvent, WorkId, Workload,
};

use crate::store::{Applied, Flavor, Nanos, Store};
use crate::trace::Trace;

const MS: Nanos = 1_000_000;
const SEC: Nanos = 1_000_000_000;

/// The timing every simulated member uses, and the fault rates.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    /// Session TTL.
    pub ttl: Nanos,
    /// Worker soak (max soak is 10 ×).
    pub soak: Nanos,
    /// Worker leader settle.
    pub leader_settle: Nanos,
    /// Leader soak (max soak is 10 ×).
    pub leader_soak: Nanos,
    /// Largest retry delay (every backoff).
    pub backoff_max: Nanos,
    /// How long a request to an unreachable store takes to fail.
    pub request_timeout: Nanos,
    /// How long a silent or cut-off watch takes to be detected.
    pub watch_timeout: Nanos,
    /// Longest added latency of a latency fault, one way.
    pub spike_max: Nanos,
    /// Mean time between faults.
    pub fault_gap: Nanos,
    /// Exclusive runs: the self-fencing margin of members and leader.
    pub margin: Nanos,
    /// Largest clock-rate error of a member, in parts per million: each
    /// member's clock runs at a rate drawn from `1 ± drift_ppm / 10^6`.
    pub drift_ppm: u32,
    /// Exclusive runs: the longest pause (a pause longer than the margins
    /// allow breaks any lease-based self-fencing; see `docs/testing.md`).
    pub exclusive_pause_max: Nanos,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            ttl: 10 * SEC,
            soak: 500 * MS,
            leader_settle: 2 * SEC,
            leader_soak: SEC,
            backoff_max: 10 * SEC,
            request_timeout: 3 * SEC,
            watch_timeout: 10 * SEC,
            spike_max: 2 * SEC,
            fault_gap: 15 * SEC,
            margin: 2 * SEC,
            drift_ppm: 10_000,
            exclusive_pause_max: 2 * SEC,
        }
    }
}

impl Params {
    /// The quiet period after the last fault within which the cluster must
    /// have converged (see `docs/testing.md` for the derivation):
    /// stale sessions expire (TTL); a member learns its session is gone at its
    /// next renewal (TTL/3) or after a TTL of failed renewals, and registers
    /// again (one backoff); the campaign after a backoff; the leader's max soak;
    /// one retry of each write at most a backoff; the workers' leader settle
    /// and max soak; each watch detection and lost-position backoff.
    pub fn quiet_period(&self) -> Nanos {
        2 * self.ttl
            + self.ttl / 3
            + 3 * self.backoff_max
            + 10 * self.leader_soak
            + self.leader_settle
            + 10 * self.soak
            + self.watch_timeout
            + 2 * self.request_timeout
            + 2 * self.spike_max
    }
}

/// One simulated run's settings.
#[derive(Debug, Clone, Copy)]
pub struct RunConfig {
    /// The seed: every random choice comes from it.
    pub seed: u64,
    /// Simulated seconds (faults until `seconds - quiet`, then quiet).
    pub seconds: u64,
    /// Safeguards (all on in a normal run).
    pub safeguards: Safeguards,
    /// Print every trace line.
    pub echo: bool,
    /// Timing.
    pub params: Params,
    /// Exclusive mode (SPEC §8): `None` draws it per seed (half of them),
    /// `Some` forces it on or off.
    pub exclusive: Option<bool>,
    /// The exclusivity controls (all on in a normal run).
    pub controls: Controls,
}

/// Switches of exclusive mode the simulator turns off to prove that the
/// exclusivity invariant notices (the simulator's side of a driver; no
/// product code reads them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Controls {
    /// Members carry out `MemberAction::Release` (off: a member keeps its
    /// workload when it cannot renew its session).
    pub release: bool,
    /// Pauses in exclusive runs are bounded by `Params::exclusive_pause_max`
    /// (off: 1–30 s, as in other runs).
    pub bounded_pauses: bool,
}

impl Default for Controls {
    fn default() -> Self {
        Self {
            release: true,
            bounded_pauses: true,
        }
    }
}

impl RunConfig {
    /// A normal run of `seconds` with `seed`.
    pub fn new(seed: u64, seconds: u64) -> Self {
        Self {
            seed,
            seconds,
            safeguards: Safeguards::default(),
            echo: false,
            params: Params::default(),
            exclusive: None,
            controls: Controls::default(),
        }
    }
}

/// What a run that passed produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Digest of the trace.
    pub digest: u64,
    /// Trace lines.
    pub lines: u64,
    /// Events processed.
    pub events: u64,
    /// Simulated nanoseconds.
    pub simulated: Nanos,
    /// Plans made.
    pub plans: u64,
    /// Publications.
    pub publications: u64,
    /// Faults injected.
    pub faults: u64,
    /// Whether the run was in exclusive mode.
    pub exclusive: bool,
    /// Member-key writes that reported a new acknowledged position.
    pub acks: u64,
    /// Releases carried out (exclusive runs).
    pub releases: u64,
    /// Handoff records of deleted items left after the quiet period (a
    /// known product bug; see `docs/testing.md`).
    pub stale_records: u64,
}

/// An invariant broke.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The seed.
    pub seed: u64,
    /// Simulated time of the failure.
    pub at: Nanos,
    /// Which invariant, and how.
    pub what: String,
    /// The last trace lines.
    pub trace: Vec<String>,
    /// Whether the run was in exclusive mode.
    pub exclusive: bool,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "simulation failed: seed {} ({}) at {}.{:06} s: {}",
            self.seed,
            if self.exclusive {
                "exclusive"
            } else {
                "not exclusive"
            },
            self.at / SEC,
            (self.at % SEC) / 1000,
            self.what
        )?;
        writeln!(
            f,
            "replay: SIM_SEED={} SIM_EXCLUSIVE={} cargo test -p coordinator-sim --test sim replay -- --nocapture",
            self.seed,
            u8::from(self.exclusive)
        )?;
        writeln!(f, "last {} trace lines:", self.trace.len())?;
        for l in &self.trace {
            writeln!(f, "  {l}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Slot {
    WorkerKv = 0,
    WorkerLeader,
    Register,
    Renew,
    Observe,
    Campaign,
    LeadList,
    LeadWrite,
    FollowMembers,
    FollowItems,
    MemberKey,
    Oneway,
    LeadHandoffs,
}
const SLOTS: usize = 13;

#[derive(Debug, Clone)]
enum Req {
    List(String),
    Watch(String, u64),
    ObserveLeader,
    Register(String, Bytes),
    Renew(SessionId),
    Close(SessionId),
    Campaign(SessionId, String),
    Resign(Fence),
    Txn(Fence, Vec<TxnOp>),
    /// A transaction whose sender already got an error: the store applies
    /// it now, and nobody hears of it.
    LateTxn(Fence, Vec<TxnOp>),
    /// The leader's consistent read: members, assignments, handoff records
    /// and the sequence key.
    ListAssignments,
    /// A member-key write bound to the session.
    PutBound(SessionId, String, Bytes),
}

#[derive(Debug, Clone)]
enum Msg {
    Snapshot(Snapshot),
    Watch(WatchEvent),
    Leader(Option<Leader>),
    Session(SessionId),
    Renewed(bool),
    Campaign(Option<Fence>),
    Txn(TxnOutcome),
    /// The leader's consistent read.
    Read(LeaderRead),
    /// A bound write: applied, or not (the session is gone).
    Written(bool),
    Err(&'static str),
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    Crash,
    Restart(usize),
    Pause,
    Resume(usize),
    Partition,
    Heal(usize),
    Errors,
    ErrorsEnd,
    Latency,
    LatencyEnd,
    ExpireSession,
    LeaderLossMidWrite,
    Compact,
    IndexBackwards,
    SilentWatch,
    ItemPut,
    ItemDelete,
    Leave,
    Join,
}

#[derive(Debug)]
enum Kind {
    Wake(usize, u32),
    Arrive {
        node: usize,
        inc: u32,
        slot: Slot,
        gen: u64,
        req: Req,
    },
    Reply {
        node: usize,
        inc: u32,
        slot: Slot,
        gen: u64,
        stream: bool,
        msg: Msg,
    },
    Expire(SessionId),
    Fault(Fault),
}

#[derive(Debug)]
struct Ev {
    at: Nanos,
    seq: u64,
    kind: Kind,
}
impl PartialEq for Ev {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Ev {}
impl PartialOrd for Ev {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Ev {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// An open watch or leader observation at the store.
#[derive(Debug)]
struct Watch {
    inc: u32,
    gen: u64,
    /// `None`: a leader observation.
    prefix: Option<String>,
    silent: bool,
    free_at: Nanos,
    last_leader: Option<Leader>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Life {
    Up,
    Down,
    Halted,
}

#[derive(Debug)]
struct Lead {
    fence: Fence,
    machine: LeaderMachine,
    members: PrefixFollower,
    items: PrefixFollower,
}

impl Lead {
    fn follower(&mut self, slot: Slot) -> &mut PrefixFollower {
        if slot == Slot::FollowMembers {
            &mut self.members
        } else {
            &mut self.items
        }
    }
}

#[derive(Debug)]
#[allow(clippy::struct_excessive_bools)] // independent facts of one simulated machine
struct Node {
    id: String,
    inc: u32,
    life: Life,
    paused: bool,
    paused_at: Nanos,
    backlog: Vec<Ev>,
    partitioned: bool,
    worker: Machine,
    member: MemberMachine,
    lead: Option<Lead>,
    gens: [u64; SLOTS],
    armed: Option<Nanos>,
    settled: Workload,
    /// Since when this member believes it leads while the store says its
    /// session is gone (paused time excluded).
    unbacked_since: Option<Nanos>,
    /// This machine's clock rate error, parts per million.
    ppm: i64,
    /// What the application holds: the acknowledged workload.
    app: Workload,
    /// Exclusive mode: the application holds nothing (released, restoring).
    held: bool,
    /// A restore that reads afresh first.
    restoring: Option<Restoring>,
    /// A resync was asked for and a release cut it short: the next restore
    /// resyncs too (as `worker.rs` does).
    resync_owed: bool,
    /// The worker's settled position (what the member acknowledges).
    position: u64,
    /// The member key as written for the live session.
    written: Option<MemberMeta>,
    /// The member key write in flight, or the one registration writes.
    pending_meta: Option<MemberMeta>,
    registering: bool,
    meta_in_flight: bool,
    /// After a failed member-key write: not before this (local time).
    meta_retry_at: Option<Nanos>,
}

/// A restore that reads afresh first (as `worker.rs` does it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Restoring {
    /// Waiting for the list asked for.
    Listing,
    /// Listed: waiting for what it showed to settle.
    Settling,
}

/// A machine's local time at global time `g`, for a clock `ppm` off.
fn to_local(ppm: i64, g: Nanos) -> Nanos {
    let g = i128::from(g);
    (g + g * i128::from(ppm) / 1_000_000) as Nanos
}

/// The earliest global time at which the clock `ppm` off shows `l`.
fn to_global(ppm: i64, l: Nanos) -> Nanos {
    let (l, den) = (i128::from(l), 1_000_000 + i128::from(ppm));
    let mut g = (l * 1_000_000 + den - 1) / den;
    while to_local(ppm, g as Nanos) < l as Nanos {
        g += 1;
    }
    while g > 0 && to_local(ppm, (g - 1) as Nanos) >= l as Nanos {
        g -= 1;
    }
    g as Nanos
}

/// The store's transaction limits of a run: `max_ops` operations (at least
/// 4: the leader takes the sequence check and a move's guard, record and
/// assignment in one transaction; every real store takes more) and, for half
/// the seeds, a
/// byte limit small enough that large item values need several
/// transactions and the largest cannot fit any. Drawn from a stream of its
/// own, so that the seeds without a byte limit replay as they did before it
/// was modelled.
fn draw_limits(seed: u64, max_ops: usize, flavor: Flavor) -> TxnLimits {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x000b_17e5_0000_0000);
    if rng.random_bool(0.5) {
        TxnLimits {
            max_ops: max_ops.max(4),
            max_bytes: [600, 900, 2000][rng.random_range(0..3)],
            max_value: 1500,
            op_overhead: 16,
            base64_values: flavor == Flavor::Consul,
        }
    } else {
        TxnLimits::ops(max_ops.max(4))
    }
}

/// A running simulation.
pub struct Sim {
    cfg: RunConfig,
    p: Params,
    base: std::time::Instant,
    now: Nanos,
    seq: u64,
    queue: BinaryHeap<Reverse<Ev>>,
    rng: SmallRng,
    /// Draws of the delayed-apply fault (a stream of its own, so that the
    /// other draws of a seed stay as they were without it).
    late_rng: SmallRng,
    store: Store,
    layout: Layout,
    max_ops: usize,
    /// What one transaction may carry at the store (operations, and for
    /// half the seeds bytes too).
    limits: TxnLimits,
    nodes: Vec<Node>,
    watches: BTreeMap<(usize, Slot), Watch>,
    trace: Trace,
    error_rate: f64,
    extra_latency: Nanos,
    mid_write_loss: bool,
    fault_end: Nanos,
    next_item: u64,
    failure: Option<String>,
    events: u64,
    plans: u64,
    publications: u64,
    faults: u64,
    exclusive: bool,
    /// An application's workload changed since the exclusivity check.
    app_dirty: bool,
    acks: u64,
    releases: u64,
    stale_records: u64,
}

macro_rules! tr {
    ($sim:expr, $($arg:tt)*) => {{
        let at = $sim.now;
        $sim.trace.line(at, format_args!($($arg)*));
    }};
}

fn lossy(k: &[u8]) -> &str {
    std::str::from_utf8(k).unwrap_or("?")
}

impl Sim {
    /// A cluster for `cfg`: 3 to 5 members, 4 to 24 items.
    pub fn new(cfg: RunConfig) -> Self {
        let mut rng = SmallRng::seed_from_u64(cfg.seed ^ 0x5157_c0de_0000_0000);
        let layout = Layout::default();
        let flavor = if rng.random_bool(0.5) {
            Flavor::Etcd
        } else {
            Flavor::Consul
        };
        let mut store = Store::new(flavor, &layout.assignments, &layout.leader);
        store.fence_check = cfg.safeguards.fence;
        let max_ops = [2, 3, 4, 8, 127][rng.random_range(0..5)];
        let limits = draw_limits(cfg.seed, max_ops, flavor);
        let drawn = rng.random_bool(0.5);
        let exclusive = cfg.exclusive.unwrap_or(drawn);
        let mut trace = Trace::default();
        trace.echo = cfg.echo;
        let p = cfg.params;
        let total = cfg.seconds * SEC;
        let mut sim = Self {
            cfg,
            p,
            base: std::time::Instant::now(),
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            rng,
            late_rng: SmallRng::seed_from_u64(cfg.seed ^ 0x1a7e_0000_0000_0000),
            store,
            layout,
            max_ops,
            limits,
            nodes: Vec::new(),
            watches: BTreeMap::new(),
            trace,
            error_rate: 0.0,
            extra_latency: 0,
            mid_write_loss: false,
            fault_end: total.saturating_sub(p.quiet_period()),
            next_item: 0,
            failure: None,
            events: 0,
            plans: 0,
            publications: 0,
            faults: 0,
            exclusive,
            app_dirty: false,
            acks: 0,
            releases: 0,
            stale_records: 0,
        };
        tr!(
            sim,
            "seed {} flavor {:?} max_ops {} exclusive {}",
            cfg.seed,
            flavor,
            max_ops,
            exclusive
        );
        let items = sim.rng.random_range(4..=24);
        for _ in 0..items {
            sim.put_item();
        }
        let members = sim.rng.random_range(3..=5);
        for _ in 0..members {
            sim.join();
        }
        // The fault schedule: exponential gaps until the quiet period.
        let mut t = 5 * SEC;
        loop {
            let gap = -(1.0 - sim.rng.random::<f64>()).ln() * sim.p.fault_gap as f64;
            t += gap as Nanos + 1;
            if t >= sim.fault_end {
                break;
            }
            let f = match sim.rng.random_range(0..100) {
                0..=9 => Fault::Crash,
                10..=21 => Fault::Pause,
                22..=31 => Fault::Partition,
                32..=37 => Fault::Errors,
                38..=42 => Fault::Latency,
                43..=47 => Fault::ExpireSession,
                48..=54 => Fault::LeaderLossMidWrite,
                55..=62 => Fault::Compact,
                63..=67 => Fault::IndexBackwards,
                68..=72 => Fault::SilentWatch,
                73..=81 => Fault::ItemPut,
                82..=87 => Fault::ItemDelete,
                88..=93 => Fault::Leave,
                _ => Fault::Join,
            };
            sim.push(t, Kind::Fault(f));
        }
        sim
    }

    fn push(&mut self, at: Nanos, kind: Kind) {
        self.seq += 1;
        self.queue.push(Reverse(Ev {
            at,
            seq: self.seq,
            kind,
        }));
    }

    /// Node `n`'s clock now (a machine's `Instant`s are on its own clock).
    fn local_now(&self, n: usize) -> Nanos {
        to_local(self.nodes[n].ppm, self.now)
    }
    fn std_at(&self, n: usize) -> std::time::Instant {
        self.base + Duration::from_nanos(self.local_now(n))
    }
    fn tok_at(&self, n: usize) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.std_at(n))
    }
    /// The global time at which node `n`'s clock reaches `i`.
    fn nanos_of_std(&self, n: usize, i: std::time::Instant) -> Nanos {
        let l = i.saturating_duration_since(self.base).as_nanos() as Nanos;
        to_global(self.nodes[n].ppm, l)
    }
    fn nanos_of_tok(&self, n: usize, i: tokio::time::Instant) -> Nanos {
        self.nanos_of_std(n, i.into_std())
    }

    fn latency(&mut self) -> Nanos {
        let base = self.rng.random_range(200_000..5 * MS);
        let extra = if self.extra_latency > 0 {
            self.rng.random_range(0..=self.extra_latency)
        } else {
            0
        };
        base + extra
    }

    fn timing(&self) -> (Timing, MemberTiming, LeaderTiming) {
        let d = Duration::from_nanos;
        let w = Timing {
            soak: d(self.p.soak),
            max_soak: d(self.p.soak * 10),
            leader_settle: d(self.p.leader_settle),
            backoff_min: Duration::from_millis(100),
            backoff_max: d(self.p.backoff_max),
        };
        let m = MemberTiming {
            ttl: d(self.p.ttl),
            backoff_min: Duration::from_millis(100),
            backoff_max: d(self.p.backoff_max),
            exclusive: self.exclusive.then(|| d(self.p.margin)),
        };
        let mut l = LeaderTiming::with_soak(d(self.p.leader_soak));
        // The quiet period counts on a repair read within 10 leader soaks.
        l.verify_every = l.max_soak;
        l.backoff_max = d(self.p.backoff_max);
        l.exclusive = self.exclusive.then(|| d(self.p.margin));
        (w, m, l)
    }

    /// Fresh machines for member `id`, whose clock is `ppm` off.
    fn fresh(&mut self, id: &str, ppm: i64) -> (Machine, MemberMachine) {
        let (w, m, _) = self.timing();
        let mut worker = Machine::new(&self.layout.assignments, id, w, self.rng.random())
            .expect("valid worker config");
        worker.set_safeguards(self.cfg.safeguards);
        let now = self.base + Duration::from_nanos(to_local(ppm, self.now));
        let now = tokio::time::Instant::from_std(now);
        let member = MemberMachine::new(m, true, self.rng.random(), now);
        (worker, member)
    }

    // ----- running -----

    /// Runs to the end; `Err` names the first broken invariant.
    pub fn run(mut self) -> Result<Outcome, Box<Failure>> {
        let end = self.cfg.seconds * SEC;
        while let Some(Reverse(ev)) = self.queue.pop() {
            if ev.at > end {
                break;
            }
            self.now = ev.at;
            self.events += 1;
            self.step(ev);
            if self.failure.is_none() {
                self.check_step();
            }
            if let Some(what) = self.failure.take() {
                return Err(self.fail(what));
            }
        }
        self.now = end;
        self.check_converged();
        if let Some(what) = self.failure.take() {
            return Err(self.fail(what));
        }
        Ok(Outcome {
            digest: self.trace.digest(),
            lines: self.trace.lines(),
            events: self.events,
            simulated: end,
            plans: self.plans,
            publications: self.publications,
            faults: self.faults,
            exclusive: self.exclusive,
            acks: self.acks,
            releases: self.releases,
            stale_records: self.stale_records,
        })
    }

    #[allow(clippy::unnecessary_box_returns)] // `run` returns it boxed: it is large
    fn fail(&mut self, what: String) -> Box<Failure> {
        tr!(self, "VIOLATION: {what}");
        Box::new(Failure {
            seed: self.cfg.seed,
            at: self.now,
            what,
            trace: self.trace.recent().cloned().collect(),
            exclusive: self.exclusive,
        })
    }

    fn violation(&mut self, what: String) {
        if self.failure.is_none() {
            self.failure = Some(what);
        }
    }

    fn step(&mut self, ev: Ev) {
        match ev.kind {
            Kind::Wake(n, inc) => {
                if !self.deliverable(n, inc) {
                    return;
                }
                if self.nodes[n].paused {
                    self.nodes[n].backlog.push(ev);
                    return;
                }
                if self.nodes[n].armed != Some(self.now) {
                    return;
                }
                self.nodes[n].armed = None;
                self.timeout(n);
                self.drive(n);
            }
            Kind::Arrive {
                node,
                inc,
                slot,
                gen,
                req,
            } => self.arrive(node, inc, slot, gen, req),
            Kind::Reply {
                node,
                inc,
                slot,
                gen,
                stream,
                msg,
            } => {
                if !self.deliverable(node, inc) {
                    return;
                }
                if self.nodes[node].paused {
                    self.nodes[node].backlog.push(Ev {
                        at: ev.at,
                        seq: ev.seq,
                        kind: Kind::Reply {
                            node,
                            inc,
                            slot,
                            gen,
                            stream,
                            msg,
                        },
                    });
                    return;
                }
                if self.nodes[node].gens[slot as usize] != gen {
                    return;
                }
                let msg = if self.nodes[node].partitioned && !matches!(msg, Msg::Err(_)) {
                    if stream {
                        return; // the cut-off watch's error is already on its way
                    }
                    Msg::Err("reply lost (partition)")
                } else {
                    msg
                };
                self.reply(node, slot, msg);
                self.drive(node);
            }
            Kind::Expire(session) => {
                if let Some(a) = self.store.expire_if_due(&session, self.now) {
                    tr!(self, "store: session {session} expired");
                    self.applied(&a);
                }
            }
            Kind::Fault(f) => self.fault(f),
        }
    }

    fn deliverable(&self, n: usize, inc: u32) -> bool {
        let node = &self.nodes[n];
        node.inc == inc && node.life == Life::Up
    }

    // ----- requests and the store -----

    fn send(&mut self, n: usize, slot: Slot, req: Req) {
        self.cancel_watch(n, slot);
        let node = &mut self.nodes[n];
        node.gens[slot as usize] += 1;
        let (gen, inc, cut) = (node.gens[slot as usize], node.inc, node.partitioned);
        if cut {
            if slot == Slot::Oneway {
                return; // lost; nobody waits for an answer
            }
            let at = self.now + self.p.request_timeout;
            self.reply_at(
                at,
                n,
                inc,
                slot,
                gen,
                Msg::Err("store unreachable (partition)"),
            );
            return;
        }
        let at = self.now + self.latency();
        self.push(
            at,
            Kind::Arrive {
                node: n,
                inc,
                slot,
                gen,
                req,
            },
        );
    }

    fn respond(&mut self, node: usize, inc: u32, slot: Slot, gen: u64, msg: Msg) {
        if slot == Slot::Oneway {
            return;
        }
        let at = self.now + self.latency();
        self.reply_at(at, node, inc, slot, gen, msg);
    }

    /// Delivers a one-shot reply (not a stream event) to `node` at `at`.
    fn reply_at(&mut self, at: Nanos, node: usize, inc: u32, slot: Slot, gen: u64, msg: Msg) {
        self.push(
            at,
            Kind::Reply {
                node,
                inc,
                slot,
                gen,
                stream: false,
                msg,
            },
        );
    }

    fn cancel_watch(&mut self, n: usize, slot: Slot) {
        self.watches.remove(&(n, slot));
    }

    #[allow(clippy::too_many_lines)] // one arm per request kind
    fn arrive(&mut self, n: usize, inc: u32, slot: Slot, gen: u64, req: Req) {
        if let Req::LateTxn(fence, ops) = req {
            // Already at the store: no fault reaches it any more.
            let id = self.nodes[n].id.clone();
            tr!(self, "store: a late txn of {id} is applied now");
            self.store_txn(n, &fence, &ops);
            return;
        }
        if self.nodes[n].partitioned {
            if slot != Slot::Oneway {
                let at = self.now + self.p.request_timeout;
                self.reply_at(at, n, inc, slot, gen, Msg::Err("request lost (partition)"));
            }
            return;
        }
        if self.error_rate > 0.0 && self.rng.random_bool(self.error_rate) {
            self.respond(n, inc, slot, gen, Msg::Err("store error"));
            return;
        }
        // In an error window, a transaction may reach the store and wait
        // there (a slow Raft apply, a proposal that commits after a
        // timeout): its sender gets an error now, the store applies it
        // 0.1–5 s later.
        if self.error_rate > 0.0
            && matches!(req, Req::Txn(..))
            && self.late_rng.random_bool(self.error_rate)
        {
            if let Req::Txn(fence, ops) = req {
                let at = self.now + self.late_rng.random_range(100 * MS..=10 * SEC);
                let id = self.nodes[n].id.clone();
                tr!(
                    self,
                    "fault: a txn of {id} waits at the store; its sender times out"
                );
                self.push(
                    at,
                    Kind::Arrive {
                        node: n,
                        inc,
                        slot: Slot::Oneway,
                        gen: 0,
                        req: Req::LateTxn(fence, ops),
                    },
                );
            }
            self.respond(n, inc, slot, gen, Msg::Err("request timed out"));
            return;
        }
        // In an error window, a reply may also be lost after the store acted.
        let lose_reply = self.error_rate > 0.0 && self.rng.random_bool(self.error_rate / 2.0);
        let id = self.nodes[n].id.clone();
        let msg = match req {
            Req::List(prefix) => Msg::Snapshot(self.store.list(&prefix)),
            Req::Watch(prefix, after) => {
                let alive = self.deliverable(n, inc) && self.nodes[n].gens[slot as usize] == gen;
                if alive {
                    self.open_watch(n, inc, slot, gen, prefix, after);
                }
                return;
            }
            Req::ObserveLeader => {
                if self.deliverable(n, inc) && self.nodes[n].gens[slot as usize] == gen {
                    let current = self.store.leader();
                    self.watches.insert(
                        (n, slot),
                        Watch {
                            inc,
                            gen,
                            prefix: None,
                            silent: false,
                            free_at: 0,
                            last_leader: current.clone(),
                        },
                    );
                    self.deliver(n, slot, Msg::Leader(current));
                }
                return;
            }
            Req::Register(key, value) => {
                let s = self.store.open_session(self.p.ttl, self.now);
                let at = self.now + self.p.ttl;
                self.push(at, Kind::Expire(s.clone()));
                if let Some(a) = self.store.put_bound(&s, &key, value) {
                    tr!(self, "store: {id} registered {s}");
                    self.applied(&a);
                    Msg::Session(s)
                } else {
                    if let Some(a) = self.store.end_session(&s) {
                        self.applied(&a);
                    }
                    Msg::Err("member key held by another session")
                }
            }
            Req::Renew(s) => {
                let ok = self.store.renew(&s, self.now);
                if ok {
                    let at = self.now + self.p.ttl;
                    self.push(at, Kind::Expire(s));
                }
                Msg::Renewed(ok)
            }
            Req::Close(s) => {
                if let Some(a) = self.store.end_session(&s) {
                    tr!(self, "store: {id} closed {s}");
                    self.applied(&a);
                }
                return;
            }
            Req::Campaign(s, value) => {
                let (fence, changed) = self.store.try_lead(&s, &value);
                if changed {
                    tr!(
                        self,
                        "store: {id} leads, term {}",
                        fence.as_ref().map_or(0, Fence::term)
                    );
                    self.leader_changed();
                }
                Msg::Campaign(fence)
            }
            Req::Resign(fence) => {
                if self.store.resign(&fence) {
                    tr!(self, "store: {id} resigned term {}", fence.term());
                    self.leader_changed();
                }
                return;
            }
            Req::ListAssignments => {
                let read = |prefix: &str| self.store.list(prefix).entries;
                Msg::Read(LeaderRead {
                    members: read(&self.layout.members),
                    assignments: read(&self.layout.assignments),
                    records: read(&self.layout.handoff),
                    sequence: self.store.modified(&self.layout.sequence),
                })
            }
            Req::LateTxn(..) => unreachable!("handled above"),
            Req::PutBound(session, key, value) => match self.store.put_bound(&session, &key, value)
            {
                Some(a) => {
                    self.applied(&a);
                    Msg::Written(true)
                }
                None => Msg::Written(false),
            },
            Req::Txn(_, ops) if !self.txn_accepted(&ops) => {
                // The store refuses it whole, as etcd refuses a request past
                // `--max-request-bytes` or naming a key twice, and Consul one
                // past `txn_max_req_len`: the leader would rebuild it forever.
                let what = format!(
                    "{id} sent a transaction the store refuses ({} ops, {} bytes, limits {:?}): [{}]",
                    ops.len(),
                    self.limits.bytes(&ops),
                    self.limits,
                    self.ops_summary(&ops)
                );
                self.violation(what);
                Msg::Err("transaction refused by the store")
            }
            Req::Txn(fence, ops) => {
                let outcome = self.store_txn(n, &fence, &ops);
                if self.mid_write_loss && matches!(outcome, TxnOutcome::Applied { .. }) {
                    self.mid_write_loss = false;
                    tr!(
                        self,
                        "fault: leader {id} loses its session between two chunks"
                    );
                    if let Some(a) = self.store.end_session(&fence.session) {
                        self.applied(&a);
                    }
                }
                Msg::Txn(outcome)
            }
        };
        if lose_reply {
            self.respond(n, inc, slot, gen, Msg::Err("reply lost (store error)"));
        } else {
            self.respond(n, inc, slot, gen, msg);
        }
    }

    /// A fenced transaction at the store, with invariant 1 and the owners
    /// checked.
    fn store_txn(&mut self, n: usize, fence: &Fence, ops: &[TxnOp]) -> TxnOutcome {
        let id = self.nodes[n].id.clone();
        let holds = self.store.holds(fence);
        let (outcome, a) = self.store.txn(fence, ops);
        let listed = self.ops_summary(ops);
        tr!(
            self,
            "store: txn of {id} term {} [{listed}] -> {:?}",
            fence.term(),
            outcome
        );
        if matches!(outcome, TxnOutcome::Applied { .. }) && !holds {
            self.violation(format!(
                "the store applied a write of {id} (term {}), which does not lead",
                fence.term()
            ));
        }
        self.applied(&a);
        self.check_owners(&a);
        outcome
    }

    /// A short form of a transaction for the trace: `+a/m1/w3` puts an
    /// assignment, `-` deletes, `+h/w3` / `-h/w3` a handoff record,
    /// `!m/m1` guards on a member key being absent.
    fn ops_summary(&self, ops: &[TxnOp]) -> String {
        let short = |k: &str| {
            if let Some(r) = k.strip_prefix(self.layout.assignments.as_str()) {
                format!("a/{r}")
            } else if let Some(r) = k.strip_prefix(self.layout.handoff.as_str()) {
                format!("h/{r}")
            } else if let Some(r) = k.strip_prefix(self.layout.members.as_str()) {
                format!("m/{r}")
            } else {
                k.to_owned()
            }
        };
        let parts: Vec<String> = ops
            .iter()
            .map(|op| match op {
                TxnOp::Put { key, .. } => format!("+{}", short(key)),
                TxnOp::Delete { key } => format!("-{}", short(key)),
                TxnOp::Absent { key } => format!("!{}", short(key)),
                TxnOp::Sequence { index, .. } => format!("#{index}"),
            })
            .collect();
        parts.join(" ")
    }

    fn open_watch(&mut self, n: usize, inc: u32, slot: Slot, gen: u64, prefix: String, after: u64) {
        let Some(backlog) = self.store.changes_after(&prefix, after) else {
            let c = self.store.compacted();
            // Registered (silent) until the member drops it, so that a
            // partition that swallows the answer still breaks the stream.
            self.watches.insert(
                (n, slot),
                Watch {
                    inc,
                    gen,
                    prefix: Some(prefix),
                    silent: false,
                    free_at: 0,
                    last_leader: None,
                },
            );
            self.deliver(
                n,
                slot,
                Msg::Watch(WatchEvent::Lost {
                    reason: format!("revision {after} compacted (up to {c})"),
                }),
            );
            if let Some(w) = self.watches.get_mut(&(n, slot)) {
                w.silent = true;
            }
            return;
        };
        self.watches.insert(
            (n, slot),
            Watch {
                inc,
                gen,
                prefix: Some(prefix.clone()),
                silent: false,
                free_at: 0,
                last_leader: None,
            },
        );
        if !backlog.is_empty() {
            let rev = self.store.revision();
            let msg = self.kv_event(&prefix, rev, &backlog);
            self.deliver(n, slot, msg);
        }
    }

    fn kv_event(&self, prefix: &str, rev: u64, changes: &[(u64, String, Option<Bytes>)]) -> Msg {
        match self.store.flavor {
            Flavor::Etcd => Msg::Watch(WatchEvent::Changes {
                revision: rev,
                changes: changes
                    .iter()
                    .map(|(_, k, v)| match v {
                        Some(v) => KvChange::Put(KvEntry::new(k.as_bytes().to_vec(), v.clone())),
                        None => KvChange::Delete {
                            key: k.as_bytes().to_vec(),
                        },
                    })
                    .collect(),
            }),
            Flavor::Consul => Msg::Watch(WatchEvent::Snapshot(self.store.list(prefix))),
        }
    }

    /// Sends `msg` down the open watch `(n, slot)`, in order.
    fn deliver(&mut self, n: usize, slot: Slot, msg: Msg) {
        let lat = self.latency();
        let Some(w) = self.watches.get_mut(&(n, slot)) else {
            return;
        };
        let at = (self.now + lat).max(w.free_at);
        w.free_at = at;
        let (inc, gen) = (w.inc, w.gen);
        self.push(
            at,
            Kind::Reply {
                node: n,
                inc,
                slot,
                gen,
                stream: true,
                msg,
            },
        );
    }

    /// Tells the watches about a write.
    fn applied(&mut self, a: &Applied) {
        if a.leader_changed {
            self.leader_changed();
        }
        if a.changes.is_empty() {
            return;
        }
        let targets: Vec<((usize, Slot), String)> = self
            .watches
            .iter()
            .filter(|(_, w)| !w.silent)
            .filter_map(|(k, w)| w.prefix.clone().map(|p| (*k, p)))
            .filter(|(_, p)| a.changes.iter().any(|(k, _)| k.starts_with(p.as_str())))
            .collect();
        for ((n, slot), prefix) in targets {
            let changes: Vec<(u64, String, Option<Bytes>)> = a
                .changes
                .iter()
                .filter(|(k, _)| k.starts_with(prefix.as_str()))
                .map(|(k, v)| (a.rev, k.clone(), v.clone()))
                .collect();
            let msg = self.kv_event(&prefix, a.rev, &changes);
            self.deliver(n, slot, msg);
        }
    }

    fn leader_changed(&mut self) {
        let current = self.store.leader();
        let targets: Vec<(usize, Slot)> = self
            .watches
            .iter_mut()
            .filter(|(_, w)| w.prefix.is_none() && !w.silent && w.last_leader != current)
            .map(|(k, w)| {
                w.last_leader.clone_from(&current);
                *k
            })
            .collect();
        for (n, slot) in targets {
            self.deliver(n, slot, Msg::Leader(current.clone()));
        }
    }

    /// At no revision is an item under two members.
    fn check_owners(&mut self, a: &Applied) {
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
                .map(|(key, _)| key.clone())
                .collect();
            if owners.len() > 1 {
                self.violation(format!(
                    "item {work} is under two members at revision {}: {owners:?}",
                    a.rev
                ));
                return;
            }
        }
    }

    // ----- the members -----

    fn join(&mut self) {
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
        });
        self.drive(n);
    }

    /// Whether the store takes a transaction: within its limits, no key
    /// named twice.
    fn txn_accepted(&self, ops: &[TxnOp]) -> bool {
        let mut keys = std::collections::BTreeSet::new();
        self.limits.fit(ops) && ops.iter().all(|op| keys.insert(op.key()))
    }

    /// An item value: mostly short; with a byte limit, now and then large
    /// (up to past what any transaction can carry).
    fn item_value(&mut self, tag: u32) -> Bytes {
        if self.limits.max_bytes != usize::MAX && self.rng.random_bool(0.2) {
            let len = self.rng.random_range(100..1400);
            let mut v = format!("v{tag}:").into_bytes();
            v.resize(len, b'.');
            Bytes::from(v)
        } else {
            Bytes::from(format!("v{tag}"))
        }
    }

    /// Whether the leader must refuse `work` with `value` (its assignment
    /// cannot fit a transaction): an independent statement of the rule in
    /// docs/leader.md, for the convergence check.
    fn refused(&self, work: &str, value: &Bytes) -> bool {
        let id = "m".repeat(worker_core::MAX_INSTANCE_ID_LEN);
        let worst = [
            // The simulated leaders write an empty value to the sequence key.
            TxnOp::Sequence {
                key: self.layout.sequence.clone(),
                index: 0,
                value: Bytes::new(),
            },
            TxnOp::Absent {
                key: self.layout.member_key(&id),
            },
            TxnOp::Delete {
                key: self.layout.handoff_key(work),
            },
            TxnOp::Put {
                key: self.layout.assignment_key(&id, work),
                value: value.clone(),
            },
        ];
        !self.limits.fit(&worst)
    }

    fn put_item(&mut self) {
        self.next_item += 1;
        let key = self.layout.work_key(&format!("w{}", self.next_item));
        let tag = self.rng.random_range(0..3);
        let value = self.item_value(tag);
        let a = self.store.put(&key, value);
        tr!(self, "operator: put {key}");
        self.applied(&a);
    }

    fn timeout(&mut self, n: usize) {
        let (s, t) = (self.std_at(n), self.tok_at(n));
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

    fn rearm(&mut self, n: usize) {
        let node = &self.nodes[n];
        if node.life != Life::Up {
            return;
        }
        let mut next = [
            node.worker.poll_timeout().map(|i| self.nanos_of_std(n, i)),
            node.member.poll_timeout().map(|i| self.nanos_of_tok(n, i)),
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
            .map(|i| i.map(|i| self.nanos_of_tok(n, i)));
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

    #[allow(clippy::too_many_lines)] // one arm per slot
    fn reply(&mut self, n: usize, slot: Slot, msg: Msg) {
        let (s, t) = (self.std_at(n), self.tok_at(n));
        let id = self.nodes[n].id.clone();
        match (slot, msg) {
            (Slot::WorkerKv, Msg::Snapshot(snap)) => {
                let node = &mut self.nodes[n];
                if node.restoring == Some(Restoring::Listing) {
                    node.restoring = Some(Restoring::Settling);
                }
                node.worker.handle_list(s, &snap);
            }
            (Slot::WorkerKv, Msg::Watch(ev)) => {
                if let WatchEvent::Lost { reason } = &ev {
                    tr!(self, "{id} worker: position lost ({reason})");
                }
                self.nodes[n].worker.handle_watch(s, ev);
            }
            (Slot::WorkerKv, Msg::Err(e)) => {
                tr!(self, "{id} worker: kv error: {e}");
                self.nodes[n].worker.handle_kv_error(s);
            }
            (Slot::WorkerLeader, Msg::Leader(l)) => {
                tr!(self, "{id} worker: leader {:?}", l.as_ref().map(|l| l.term));
                self.nodes[n].worker.handle_leader(s, l);
            }
            (Slot::WorkerLeader, Msg::Err(_)) => {
                self.nodes[n].worker.handle_leader_error(s);
            }
            (Slot::Register, Msg::Session(sid)) => {
                let node = &mut self.nodes[n];
                node.registering = false;
                node.written = node.pending_meta.take();
                node.member.handle_registered::<()>(t, Ok(sid));
            }
            (Slot::Register, Msg::Err(e)) => {
                tr!(self, "{id} register failed: {e}");
                let node = &mut self.nodes[n];
                node.registering = false;
                node.pending_meta = None;
                node.member.handle_registered::<()>(t, Err(()));
            }
            (Slot::MemberKey, msg) => {
                let retry = self.local_now(n) + 100 * MS;
                let node = &mut self.nodes[n];
                node.meta_in_flight = false;
                let meta = node.pending_meta.take();
                match msg {
                    Msg::Written(true) => {
                        let acked = meta.as_ref().and_then(|m| m.acked).unwrap_or(0);
                        node.written = meta;
                        self.acks += 1;
                        tr!(self, "{id} acked {acked}");
                    }
                    Msg::Written(false) => {
                        // As `member.rs`: the session is gone; released at
                        // once, registered anew.
                        node.meta_retry_at = Some(retry);
                        if let Some(session) = node.member.session().cloned() {
                            tr!(self, "{id} member key not written: session {session} gone");
                            self.nodes[n].member.handle_session_gone(t, &session);
                        }
                    }
                    Msg::Err(_) => node.meta_retry_at = Some(retry),
                    other => unreachable!("member key write got {other:?}"),
                }
            }
            (Slot::Renew, Msg::Renewed(ok)) => {
                if !ok {
                    tr!(self, "{id} session gone");
                }
                self.nodes[n].member.handle_renewed::<()>(t, Ok(ok));
            }
            (Slot::Renew, Msg::Err(_)) => self.nodes[n].member.handle_renewed::<()>(t, Err(())),
            (Slot::Observe, Msg::Leader(l)) => {
                self.nodes[n].member.handle_observed::<()>(t, Ok(l));
            }
            (Slot::Observe, Msg::Err(_)) => {
                self.nodes[n].gens[Slot::Observe as usize] += 1;
                self.nodes[n].member.handle_observed::<()>(t, Err(()));
            }
            (Slot::Campaign, Msg::Campaign(f)) => {
                self.nodes[n].member.handle_campaign::<()>(t, Ok(f));
            }
            (Slot::Campaign, Msg::Err(_)) => self.nodes[n].member.handle_campaign::<()>(t, Err(())),
            (Slot::LeadList, Msg::Read(read)) => {
                if let Some(lead) = &mut self.nodes[n].lead {
                    lead.machine.handle_read(t, &read);
                }
            }
            (Slot::LeadList, Msg::Err(_)) => {
                if let Some(lead) = &mut self.nodes[n].lead {
                    lead.machine.handle_assignments_error(t);
                }
            }
            (Slot::LeadHandoffs, Msg::Snapshot(snap)) => {
                if let Some(lead) = &mut self.nodes[n].lead {
                    lead.machine.handle_handoffs(
                        t,
                        snap.entries
                            .iter()
                            .map(|e| (e.key.as_slice(), &e.value, e.revision)),
                    );
                }
            }
            (Slot::LeadHandoffs, Msg::Err(_)) => {
                if let Some(lead) = &mut self.nodes[n].lead {
                    lead.machine.handle_handoffs_error(t);
                }
            }
            (Slot::LeadWrite, Msg::Txn(o)) => {
                if let Some(lead) = &mut self.nodes[n].lead {
                    lead.machine.handle_write::<()>(t, Ok(o));
                }
            }
            (Slot::LeadWrite, Msg::Err(_)) => {
                if let Some(lead) = &mut self.nodes[n].lead {
                    lead.machine.handle_write::<()>(t, Err(()));
                }
            }
            (Slot::FollowMembers | Slot::FollowItems, msg) => self.follow(n, slot, msg),
            (slot, msg) => unreachable!("{slot:?} got {msg:?}"),
        }
    }

    /// A reply or watch event for a prefix follower, as `follow.rs` hands it
    /// over; after a failure the follower's watch is dropped, as the tokio
    /// driver drops its stream.
    fn follow(&mut self, n: usize, slot: Slot, msg: Msg) {
        let t = self.tok_at(n);
        let Some(lead) = &mut self.nodes[n].lead else {
            return;
        };
        let f = lead.follower(slot);
        let failed = match msg {
            Msg::Snapshot(s) => {
                f.handle_list(t, s);
                false
            }
            Msg::Watch(ev) => f.handle_watch(t, ev).is_some(),
            // A list or a watch failed: the follower knows which it awaits.
            Msg::Err(_) => f
                .handle_list_error(t)
                .or_else(|| f.handle_watch_error(t))
                .is_some(),
            other => unreachable!("follower got {other:?}"),
        };
        if failed {
            self.cancel_watch(n, slot);
            self.nodes[n].gens[slot as usize] += 1;
        }
    }

    #[allow(clippy::many_single_char_names)]
    fn start_leading(&mut self, n: usize, fence: Fence) {
        let (_, _, lt) = self.timing();
        let t = self.tok_at(n);
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

    /// Carries out every action the node's machines ask for.
    #[allow(clippy::too_many_lines)] // one arm per action
    fn drive(&mut self, n: usize) {
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
                            let settled = node.worker.settled();
                            self.set_app(n, settled);
                        }
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
            let settled = node.worker.settled();
            let id = node.id.clone();
            tr!(self, "{id} restored after a fresh read");
            self.set_app(n, settled);
        }
        let node = &mut self.nodes[n];
        if let Some(p) = position {
            node.position = node.position.max(p);
        }
    }

    /// The member key's value as it should be now (`member.rs`: weight 1,
    /// the acknowledged position).
    fn meta_now(&self, n: usize) -> MemberMeta {
        MemberMeta {
            acked: Some(self.nodes[n].position),
            ttl_ms: Some(self.p.ttl / MS),
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

    /// Sets what node `n`'s application holds.
    fn set_app(&mut self, n: usize, app: Workload) {
        if self.nodes[n].app != app {
            self.nodes[n].app = app;
            self.app_dirty = true;
        }
    }

    /// Carries out what the leader's followers and machine ask for; true if
    /// they asked for anything.
    fn drive_lead(&mut self, n: usize) -> bool {
        let mut any = false;
        for slot in [Slot::FollowMembers, Slot::FollowItems] {
            loop {
                let t = self.tok_at(n);
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
                }
            }
        }
        let mut lead_actions = Vec::new();
        if let Some(lead) = &mut self.nodes[n].lead {
            while let Some(a) = lead.machine.poll() {
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
                LeadAction::Planned(r) => {
                    self.plans += 1;
                    tr!(
                            self,
                            "{id} planned: {} members {} items moved {} placed {} revokes {} puts {} txns {}",
                            r.members, r.items, r.moved, r.placed, r.revokes, r.puts, r.transactions
                        );
                }
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
                    let t = self.tok_at(n);
                    self.nodes[n].member.handle_leader_ended(t);
                }
            }
        }
        any
    }

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
                let settled = node.settled.clone();
                if !node.held {
                    // `worker.rs` publishes it to the application.
                    let mut app = node.app.clone();
                    change.apply_to(&mut app);
                    self.set_app(n, app);
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
                if halted {
                    self.violation(format!("{id} published after halt"));
                    return;
                }
                let seen = self.store.assigned_at(&prefix, change.revision);
                if seen != settled {
                    self.violation(format!(
                        "{id} published a set never in the store at revision {}: {:?} (store: {:?}; before: {before} items)",
                        change.revision,
                        settled.keys().collect::<Vec<_>>(),
                        seen.keys().collect::<Vec<_>>()
                    ));
                }
            }
        }
    }

    // ----- faults -----

    fn pick(&mut self, f: impl Fn(&Node) -> bool) -> Option<usize> {
        let c: Vec<usize> = (0..self.nodes.len())
            .filter(|i| f(&self.nodes[*i]))
            .collect();
        if c.is_empty() {
            None
        } else {
            Some(c[self.rng.random_range(0..c.len())])
        }
    }

    /// A target: the leader half the time, else any member that is up.
    fn target(&mut self) -> Option<usize> {
        let ok = |x: &Node| x.life == Life::Up && !x.paused && !x.partitioned;
        if self.rng.random_bool(0.5) {
            if let Some(i) = self.pick(|x| ok(x) && x.lead.is_some()) {
                return Some(i);
            }
        }
        self.pick(ok)
    }

    fn until(&mut self, max: Nanos) -> Nanos {
        let d = self.rng.random_range(SEC..=max);
        (self.now + d).min(self.fault_end)
    }

    #[allow(clippy::too_many_lines)] // one arm per fault
    fn fault(&mut self, f: Fault) {
        self.faults += 1;
        let up = self.nodes.iter().filter(|x| x.life == Life::Up).count();
        match f {
            Fault::Crash => {
                if up <= 1 {
                    return;
                }
                let Some(n) = self.target() else { return };
                let id = self.nodes[n].id.clone();
                tr!(self, "fault: {id} crashes");
                let node = &mut self.nodes[n];
                node.life = Life::Down;
                node.inc += 1;
                node.lead = None;
                node.armed = None;
                self.watches.retain(|(i, _), _| *i != n);
                // A member that is down holds nothing.
                self.set_app(n, Workload::new());
                let at = self.until(3 * self.p.ttl);
                self.push(at, Kind::Fault(Fault::Restart(n)));
            }
            Fault::Restart(n) => {
                let id = self.nodes[n].id.clone();
                tr!(self, "fault: {id} restarts");
                let (worker, member) = self.fresh(&id, self.nodes[n].ppm);
                let exclusive = self.exclusive;
                let node = &mut self.nodes[n];
                node.life = Life::Up;
                node.worker = worker;
                node.member = member;
                node.settled = Workload::new();
                node.unbacked_since = None;
                node.held = exclusive;
                node.restoring = None;
                node.resync_owed = false;
                node.position = 0;
                node.written = None;
                node.pending_meta = None;
                node.registering = false;
                node.meta_in_flight = false;
                node.meta_retry_at = None;
                self.drive(n);
            }
            Fault::Pause => {
                let Some(n) = self.target() else { return };
                let id = self.nodes[n].id.clone();
                tr!(self, "fault: {id} pauses");
                self.nodes[n].paused = true;
                self.nodes[n].paused_at = self.now;
                let at = if self.exclusive && self.cfg.controls.bounded_pauses {
                    let d = self.rng.random_range(MS..=self.p.exclusive_pause_max);
                    (self.now + d).min(self.fault_end)
                } else {
                    self.until(3 * self.p.ttl)
                };
                self.push(at, Kind::Fault(Fault::Resume(n)));
            }
            Fault::Resume(n) => {
                let id = self.nodes[n].id.clone();
                tr!(self, "fault: {id} resumes");
                let node = &mut self.nodes[n];
                node.paused = false;
                if let Some(u) = &mut node.unbacked_since {
                    *u += self.now - node.paused_at;
                }
                let backlog = std::mem::take(&mut node.backlog);
                let inc = node.inc;
                for ev in backlog {
                    self.push(self.now, ev.kind);
                }
                // The timers piled up: all due now.
                self.nodes[n].armed = Some(self.now);
                self.push(self.now, Kind::Wake(n, inc));
            }
            Fault::Partition => {
                let Some(n) = self.target() else { return };
                self.partition(n);
            }
            Fault::Heal(n) => {
                let id = self.nodes[n].id.clone();
                tr!(self, "fault: {id} reaches the store again");
                self.nodes[n].partitioned = false;
            }
            Fault::Errors => {
                self.error_rate = self.rng.random_range(0.1..0.6);
                tr!(self, "fault: store errors at {:.2}", self.error_rate);
                let at = self.until(30 * SEC);
                self.push(at, Kind::Fault(Fault::ErrorsEnd));
            }
            Fault::ErrorsEnd => {
                tr!(self, "fault: store errors end");
                self.error_rate = 0.0;
            }
            Fault::Latency => {
                self.extra_latency = self.rng.random_range(MS..=self.p.spike_max);
                tr!(
                    self,
                    "fault: latency up to {} ms more",
                    self.extra_latency / MS
                );
                let at = self.until(30 * SEC);
                self.push(at, Kind::Fault(Fault::LatencyEnd));
            }
            Fault::LatencyEnd => {
                tr!(self, "fault: latency back to normal");
                self.extra_latency = 0;
            }
            Fault::ExpireSession => {
                let Some(n) = self.target() else { return };
                if let Some(s) = self.nodes[n].member.session().cloned() {
                    let id = self.nodes[n].id.clone();
                    // Half of the time the member is cut off first, so that
                    // it cannot hear of it: an operator destroying its
                    // session, or its node deregistered, during a partition.
                    if self.rng.random_bool(0.5) {
                        self.partition(n);
                        tr!(
                            self,
                            "fault: the store ends cut-off {id}'s session {s} (an operator, a node deregistration)"
                        );
                    } else {
                        tr!(self, "fault: the store ends {id}'s session {s}");
                    }
                    if let Some(a) = self.store.end_session(&s) {
                        self.applied(&a);
                    }
                }
            }
            Fault::LeaderLossMidWrite => {
                tr!(
                    self,
                    "fault: the leader will lose its session after its next chunk"
                );
                self.mid_write_loss = true;
                // Make the leader write: change an item's value.
                self.change_item();
            }
            Fault::Compact => {
                let to = self.store.revision();
                tr!(self, "fault: compaction up to {to}");
                self.store.compact(to);
            }
            Fault::IndexBackwards => {
                let keys: Vec<(usize, Slot)> = self
                    .watches
                    .iter()
                    .filter(|(_, w)| w.prefix.is_some())
                    .map(|(k, _)| *k)
                    .collect();
                if keys.is_empty() {
                    return;
                }
                let (n, slot) = keys[self.rng.random_range(0..keys.len())];
                let id = self.nodes[n].id.clone();
                tr!(
                    self,
                    "fault: {id}'s {slot:?} watch sees the index go backwards"
                );
                self.deliver(
                    n,
                    slot,
                    Msg::Watch(WatchEvent::Lost {
                        reason: "index went backwards".into(),
                    }),
                );
                if let Some(w) = self.watches.get_mut(&(n, slot)) {
                    w.silent = true;
                }
            }
            Fault::SilentWatch => {
                let keys: Vec<(usize, Slot)> = self.watches.keys().copied().collect();
                if keys.is_empty() {
                    return;
                }
                let (n, slot) = keys[self.rng.random_range(0..keys.len())];
                let id = self.nodes[n].id.clone();
                tr!(self, "fault: {id}'s {slot:?} watch goes silent");
                if let Some(w) = self.watches.get_mut(&(n, slot)) {
                    w.silent = true;
                    let (inc, gen) = (w.inc, w.gen);
                    let at = self.now + self.p.watch_timeout;
                    self.reply_at(at, n, inc, slot, gen, Msg::Err("watch silent: timed out"));
                }
            }
            Fault::ItemPut => {
                if self.rng.random_bool(0.5) {
                    self.put_item();
                } else {
                    self.change_item();
                }
            }
            Fault::ItemDelete => {
                let keys: Vec<String> = self
                    .store
                    .range(&self.layout.work)
                    .map(|(k, _)| k.clone())
                    .collect();
                if keys.len() > 1 {
                    let k = keys[self.rng.random_range(0..keys.len())].clone();
                    tr!(self, "operator: delete {k}");
                    let a = self.store.delete(&k);
                    self.applied(&a);
                }
            }
            Fault::Leave => {
                if up <= 2 {
                    return;
                }
                let Some(n) = self.target() else { return };
                let id = self.nodes[n].id.clone();
                tr!(self, "fault: {id} leaves (halt)");
                self.nodes[n].worker.halt();
                self.nodes[n].member.halt();
                self.drive(n);
                let node = &mut self.nodes[n];
                node.life = Life::Halted;
                node.armed = None;
                self.watches.retain(|(i, _), _| *i != n);
                // Its worker halted: the application stops every item.
                self.set_app(n, Workload::new());
            }
            Fault::Join => {
                if up < 7 {
                    self.join();
                }
            }
        }
    }

    /// Cuts member `n` off from the store until a heal (scheduled here).
    fn partition(&mut self, n: usize) {
        let id = self.nodes[n].id.clone();
        tr!(self, "fault: {id} cut off from the store");
        self.nodes[n].partitioned = true;
        let cut: Vec<(Slot, u32, u64)> = self
            .watches
            .iter()
            .filter(|((i, _), _)| *i == n)
            .map(|((_, s), w)| (*s, w.inc, w.gen))
            .collect();
        for (slot, inc, gen) in cut {
            self.watches.remove(&(n, slot));
            let at = self.now + self.p.watch_timeout;
            self.reply_at(
                at,
                n,
                inc,
                slot,
                gen,
                Msg::Err("watch timed out (partition)"),
            );
        }
        let at = self.until(3 * self.p.ttl);
        self.push(at, Kind::Fault(Fault::Heal(n)));
    }

    fn change_item(&mut self) {
        let keys: Vec<String> = self
            .store
            .range(&self.layout.work)
            .map(|(k, _)| k.clone())
            .collect();
        if keys.is_empty() {
            return;
        }
        let k = keys[self.rng.random_range(0..keys.len())].clone();
        let tag = self.rng.random_range(0..1000);
        let v = self.item_value(tag);
        tr!(self, "operator: change {k}");
        let a = self.store.put(&k, v);
        self.applied(&a);
    }

    // ----- invariants -----

    /// How long a member may go on believing it leads after the store ended
    /// its session (paused time excluded): a store that ends a session early
    /// (expiry forced, a cut-off member) is noticed at the latest when
    /// renewals have failed for a whole TTL, i.e. TTL + one renewal retry
    /// (at most TTL/10) + one request timeout, plus latency.
    pub fn unbacked_bound(&self) -> Nanos {
        self.p.ttl + self.p.ttl / 10 + self.p.request_timeout + 2 * self.p.spike_max + SEC
    }

    /// After every step: a member that believes it leads holds that session,
    /// and the store has not ended it for longer than a member needs to
    /// notice (paused time excluded).
    fn check_step(&mut self) {
        if self.app_dirty {
            self.app_dirty = false;
            if self.exclusive {
                self.check_exclusive();
            }
        }
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
            if node.member.session() != Some(&fence.session) {
                let what = format!(
                    "{} leads with {} but holds no such session",
                    node.id, fence.session
                );
                self.violation(what);
                return;
            }
            if self.store.session_live(&fence.session) {
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

    /// Exclusive runs: no item is in two members' acknowledged workloads
    /// (what their applications hold).
    fn check_exclusive(&mut self) {
        let mut holder: BTreeMap<&WorkId, &str> = BTreeMap::new();
        let mut twice = None;
        'all: for node in &self.nodes {
            for w in node.app.keys() {
                if let Some(other) = holder.insert(w, &node.id) {
                    twice = Some(format!(
                        "exclusive: item {w} is in the acknowledged workloads of {other} and {}",
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

    /// After the quiet period: one leader, every item on exactly one live
    /// member, balanced, and every member's settled workload is its assignment.
    fn check_converged(&mut self) {
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
                .any(|f| f.session != leader)
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

    /// After the quiet period: what is wrong with member `n`'s workload, if
    /// anything (its application holds its settled workload, which is its
    /// assignment).
    fn member_unsettled(&self, n: usize) -> Option<String> {
        let node = &self.nodes[n];
        let now = self
            .store
            .assigned_at(node.worker.member_prefix(), self.store.revision());
        if node.held || node.restoring.is_some() || node.app != node.settled {
            return Some(format!(
                "after the quiet period {} holds {:?} (released {}, restoring {:?}) but settled {:?}",
                node.id,
                node.app.keys().collect::<Vec<_>>(),
                node.held,
                node.restoring,
                node.settled.keys().collect::<Vec<_>>()
            ));
        }
        if node.settled != now || !node.worker.is_synced() {
            return Some(format!(
                "after the quiet period {} has settled {:?} but is assigned {:?}",
                node.id,
                node.settled.keys().collect::<Vec<_>>(),
                now.keys().collect::<Vec<_>>()
            ));
        }
        None
    }
}

/// Runs one seed.
pub fn run(cfg: RunConfig) -> Result<Outcome, Box<Failure>> {
    Sim::new(cfg).run()
}

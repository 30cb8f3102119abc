//! The cluster: N members, each running the real worker `Machine`, the real
//! `MemberMachine` and (while it leads) the real `LeaderMachine` with two real
//! `PrefixFollower`s (members, items); the simulator does what their tokio
//! drivers do: it turns their actions into store requests with seeded
//! latencies and feeds the outcomes back. One event queue ordered by (time,
//! sequence); every random choice from one seeded RNG.
//!
//! This file holds the [`Sim`] itself, its event queue and how a run is set
//! up; the rest is in one file per concern:
//!
//! | file (`src/sim/`) | what |
//! |---|---|
//! | `config.rs` | a run's settings ([`Params`], [`RunConfig`], [`Controls`]) and the store limits drawn per seed |
//! | `outcome.rs` | what a run reports ([`Outcome`], [`Failure`]) |
//! | `clock.rs` | virtual time and each member's drifting clock |
//! | `node.rs` | one simulated member: its machines and what its driver and application hold |
//! | `runner.rs` | the event loop: events in time order, timers, the checks after every step |
//! | `driver.rs` | the machines' actions carried out as their tokio drivers do |
//! | `replies.rs` | store answers and watch events fed back to the machines |
//! | `requests.rs` | requests and watches between members and the store model, with latency |
//! | `faults.rs` | which faults exist, how they are drawn and scheduled, and what each does |
//! | `invariants.rs` | every invariant the simulator checks |

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use leader_core::Layout;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use worker_core::{SessionId, TxnLimits, WorkId};

use crate::store::{Flavor, Nanos, Store};
use crate::trace::Trace;

/// Adds a line to the run's trace, at the simulated time now.
macro_rules! tr {
    ($sim:expr, $($arg:tt)*) => {{
        let at = $sim.now;
        $sim.trace.line(at, format_args!($($arg)*));
    }};
}

mod clock;
mod config;
mod driver;
mod faults;
mod invariants;
mod node;
mod outcome;
mod replies;
mod requests;
mod runner;

use clock::SEC;
use config::draw_limits;
pub use config::{Controls, Params, RunConfig};
use faults::Fault;
use node::Node;
pub use outcome::{Failure, Outcome};
use requests::{Msg, Req, Slot, Watch};

/// A running simulation.
#[allow(clippy::struct_excessive_bools)] // independent flags of one run
pub struct Sim {
    /// The run's settings.
    cfg: RunConfig,
    /// The timing and fault rates (`cfg.params`).
    p: Params,
    /// The real instant that stands for virtual time 0 on every member's clock.
    base: std::time::Instant,
    /// Global virtual time now.
    now: Nanos,
    /// The last event sequence number handed out.
    seq: u64,
    /// The event queue, earliest first.
    queue: BinaryHeap<Reverse<Ev>>,
    /// Every random choice of the run but the delayed apply and the limits.
    rng: SmallRng,
    /// Draws of the delayed-apply fault (a stream of its own, so that the
    /// other draws of a seed stay as they were without it).
    late_rng: SmallRng,
    /// The store model.
    store: Store,
    /// The key layout every member uses.
    layout: Layout,
    /// The leader's operations per transaction.
    max_ops: usize,
    /// What one transaction may carry at the store (operations, and for
    /// half the seeds bytes too).
    limits: TxnLimits,
    /// The members, by index (`m0`, `m1`, …).
    nodes: Vec<Node>,
    /// The open watches and leader observations at the store.
    watches: BTreeMap<(usize, Slot), Watch>,
    /// The trace of the run.
    trace: Trace,
    /// Store-error fault: the share of requests that fail (0 outside one).
    error_rate: f64,
    /// Latency fault: the largest added latency (0 outside one).
    extra_latency: Nanos,
    /// The leader loses its session after its next applied transaction.
    mid_write_loss: bool,
    /// When the faults stop and the quiet period begins.
    fault_end: Nanos,
    /// The number of the last item put.
    next_item: u64,
    /// The first invariant that broke, if any.
    failure: Option<String>,
    /// Events processed.
    events: u64,
    /// Plans made.
    plans: u64,
    /// Publications of the workers.
    publications: u64,
    /// Faults injected.
    faults: u64,
    /// Whether the run is in exclusive mode.
    exclusive: bool,
    /// An application's workload changed since the exclusivity check.
    app_dirty: bool,
    /// Planned runs: the items active somewhere at the last check.
    active: BTreeSet<WorkId>,
    /// Member-key writes that reported a new acknowledged position.
    acks: u64,
    /// Releases carried out.
    releases: u64,
    /// Handoff records of deleted items left after the quiet period.
    stale_records: u64,
    /// Cold primaries the leaders' plans reported (replicas).
    cold_primaries: u64,
    /// Promotions the leaders' plans reported (replicas).
    promotions: u64,
    /// Zone outages injected.
    zone_outages: u64,
    /// Drains that ended with the member holding nothing.
    drains: u64,
    /// Since the last zone outage of a settled cluster no member joined or
    /// registered again (a member key that appeared).
    after_outage: bool,
    /// Cold primaries the plans made while `after_outage`: the zones left
    /// may force some (two survivors in one zone, each primary of items whose
    /// only other replica was in the zone that died, must take primaries
    /// neither holds to stay balanced).
    cold_after_outage: u64,
    /// Replica plans checked against the brute force.
    fewest_checked: u64,
    /// The member keys in the store when the last plan was made.
    planned_member_keys: Option<BTreeSet<String>>,
    /// The member keys in the store at the last observation.
    member_keys: BTreeSet<String>,
    /// Since when each item has had no primary on a live member while a
    /// secondary of it was on one (replicas).
    orphaned: BTreeMap<String, Nanos>,
    /// The longest such time seen.
    longest_orphaned: Nanos,
    /// When the last fault (or the end of one) happened.
    last_fault_at: Nanos,
    /// The store revision the orphans were last observed at.
    orphan_rev: u64,
    /// Items whose every live replica a zone outage took, though they had
    /// two or more.
    lost_every_replica: u64,
}

/// What happens at an instant of the run.
#[derive(Debug)]
enum Kind {
    /// Member `.0`'s timers are due (incarnation `.1`).
    Wake(usize, u32),
    /// A request of member `node` (incarnation `inc`) reaches the store.
    Arrive {
        /// The sender.
        node: usize,
        /// The sender's incarnation when it sent it.
        inc: u32,
        /// Which of the sender's requests.
        slot: Slot,
        /// The slot's generation when it was sent (a newer one drops it).
        gen: u64,
        /// The request.
        req: Req,
    },
    /// An answer or a watch event reaches member `node`.
    Reply {
        /// The receiver.
        node: usize,
        /// The receiver's incarnation when it was sent.
        inc: u32,
        /// Which of the receiver's requests or watches it answers.
        slot: Slot,
        /// The slot's generation it answers (a newer one drops it).
        gen: u64,
        /// A watch event rather than a one-shot answer.
        stream: bool,
        /// The answer.
        msg: Msg,
    },
    /// The store checks whether a session's TTL ran out.
    Expire(SessionId),
    /// A fault of the schedule, or the end of one.
    Fault(Fault),
}

/// An event of the queue, ordered by (time, sequence).
#[derive(Debug)]
struct Ev {
    /// When (global virtual time).
    at: Nanos,
    /// Order among events at the same time: the order they were pushed.
    seq: u64,
    /// What happens.
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
            active: BTreeSet::new(),
            acks: 0,
            releases: 0,
            stale_records: 0,
            cold_primaries: 0,
            promotions: 0,
            zone_outages: 0,
            drains: 0,
            after_outage: false,
            cold_after_outage: 0,
            member_keys: BTreeSet::new(),
            planned_member_keys: None,
            fewest_checked: 0,
            orphaned: BTreeMap::new(),
            longest_orphaned: 0,
            orphan_rev: 0,
            last_fault_at: 0,
            lost_every_replica: 0,
        };
        tr!(
            sim,
            "seed {} flavor {:?} max_ops {} exclusive {}",
            cfg.seed,
            flavor,
            max_ops,
            exclusive
        );
        if cfg.replicas > 1 || cfg.zones > 1 {
            tr!(sim, "replicas {} zones {}", cfg.replicas, cfg.zones);
        }
        let items = sim.rng.random_range(4..=24);
        for _ in 0..items {
            sim.put_item();
        }
        let members = sim.rng.random_range(3..=5);
        for _ in 0..members {
            sim.join();
        }
        sim.schedule_faults();
        sim
    }

    /// Queues `kind` at `at`, after every event already queued for that time.
    fn push(&mut self, at: Nanos, kind: Kind) {
        self.seq += 1;
        self.queue.push(Reverse(Ev {
            at,
            seq: self.seq,
            kind,
        }));
    }
}

/// Runs one seed.
pub fn run(cfg: RunConfig) -> Result<Outcome, Box<Failure>> {
    Sim::new(cfg).run()
}

//! A run's settings: the timing every member uses and the fault rates
//! ([`Params`]), the seed and switches of one run ([`RunConfig`],
//! [`Controls`]), and the store's transaction limits drawn per seed.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use worker_core::{Safeguards, TxnLimits};

use super::clock::{MS, SEC};
use crate::store::{Flavor, Nanos};

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
    /// Replicas per item (the leaders' `replicas`): 1, the default, is one
    /// owner per item.
    pub replicas: u32,
    /// Zones the members are spread over (member `mi` in zone `z{i % zones}`;
    /// 1: no zone named, as before). With more than one, a zone outage is
    /// among the faults.
    pub zones: u32,
    /// The leaders' make-before-break moves (`LeaderTiming::prepare`; on,
    /// as in the product, by default).
    pub prepare: bool,
    /// Planned events only: drains (each drained member starts again with
    /// the same id once it left), joins and item changes, no failure. Such
    /// a run also checks that no planned move leaves an item active nowhere
    /// (default mode, with `prepare`).
    pub planned: bool,
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
            replicas: 1,
            zones: 1,
            prepare: true,
            planned: false,
        }
    }
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

/// The store's transaction limits of a run: `max_ops` operations (at least
/// 4: the leader takes the sequence check and a move's guard, record and
/// assignment in one transaction; every real store takes more) and, for half
/// the seeds, a
/// byte limit small enough that large item values need several
/// transactions and the largest cannot fit any. Drawn from a stream of its
/// own, so that the seeds without a byte limit replay as they did before it
/// was modelled.
pub(super) fn draw_limits(seed: u64, max_ops: usize, flavor: Flavor) -> TxnLimits {
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

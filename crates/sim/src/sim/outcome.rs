//! What a run reports: an [`Outcome`] when every invariant held, a
//! [`Failure`] (seed, time, which invariant, the last trace lines) when one
//! broke.

use super::clock::SEC;
use crate::store::Nanos;

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
    /// Replicas: cold primaries the plans reported.
    pub cold_primaries: u64,
    /// Replicas: promotions the plans reported.
    pub promotions: u64,
    /// Zone outages injected.
    pub zone_outages: u64,
    /// Drains that ended with the member holding nothing (not timed out).
    pub drains: u64,
    /// Replica plans small enough to be checked against the brute force.
    pub fewest_checked: u64,
    /// Replicas: cold primaries planned after a zone outage before any
    /// member (re)registered.
    pub cold_after_outage: u64,
    /// Replicas: items whose every live replica a zone outage took, though
    /// they had two or more.
    pub lost_every_replica: u64,
    /// Replicas: the longest an item had a live secondary and no live
    /// primary.
    pub longest_orphaned: Nanos,
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

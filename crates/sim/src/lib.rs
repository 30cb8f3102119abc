//! Deterministic simulation of a whole coordinator cluster (issue 11).
//!
//! N members, each with the real worker [`Machine`](worker_core::machine::Machine),
//! the real [`MemberMachine`](leader_core::MemberMachine) and, while it leads,
//! the real [`LeaderMachine`](leader_core::LeaderMachine) with its two
//! [`PrefixFollower`](leader_core::follow::PrefixFollower)s, run in one thread on
//! a virtual clock against a [store model](store), under a seeded fault
//! schedule, with invariants checked after every step. See `docs/testing.md`.
//!
//! ```
//! let outcome = coordinator_sim::run(coordinator_sim::RunConfig::new(1, 300)).unwrap();
//! assert!(outcome.events > 0);
//! ```

pub mod sim;
pub mod store;
pub mod trace;

pub use sim::{run, Controls, Failure, Outcome, Params, RunConfig};
pub use worker_core::Safeguards;

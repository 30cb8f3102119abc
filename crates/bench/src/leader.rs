//! Scenario 4: the leader half on a real store. N full members (each with a
//! connection of its own, as N processes would have) spread the work items;
//! the leader's start-up transactions are replayed by a bare loop of
//! `FencedWrite::apply` calls for a rate to compare with; one member that
//! does not lead is killed (no resignation, no session close: its session /
//! lease expires as after SIGKILL) and the way its items reach the survivors
//! is timed in four parts; then a member joins; then a tenth more items are
//! added at once; then the whole cluster idles while its store requests and
//! CPU are counted; last, the followers are killed at once to weigh them and
//! the leader.
//!
//! Two observers of the bench's own (not counted, on their own thread) follow
//! the members prefix and the assignments prefix and time-stamp every change
//! of their key sets; the members' settled workloads are read from their
//! workers; every fenced transaction a member sends is timed by a wrapper
//! around its writer.
//!
//! The rooms: [`settings`] (what `main` sets), [`scenario`] (the run of one
//! size), [`cluster`] (the members' connections and feeds), [`observer`]
//! (the bench's observers), [`recording`] (the members' transactions,
//! timed), [`bare`] (the bare loop), [`balance`] (the balance checks and
//! waits), [`outcome`] (what is measured) and [`report`] (tables and
//! verdicts).

mod balance;
mod bare;
mod cluster;
mod observer;
mod outcome;
mod recording;
mod report;
mod scenario;
mod settings;

use std::time::Duration;

pub use cluster::Lanes;
pub use report::{table, verdicts};
pub use scenario::run;
pub use settings::Params;

/// Longest wait for any one stage.
const STAGE_TIMEOUT: Duration = Duration::from_secs(300);

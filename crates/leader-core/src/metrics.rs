//! The leader half's metrics, recorded through the [`metrics`] facade.
//!
//! Like the worker's ([`worker_core::metrics`]), they carry the label
//! `instance_id`, and the library installs no recorder: the application
//! installs the exporter it likes. `docs/operations.md` lists them.

use ::metrics::{counter, describe_counter, describe_gauge, gauge, Unit};
use tokio::sync::watch;
use worker_core::{Fence, StoreError};

use crate::machine::PlanReport;

/// Gauge: 1 while this member leads, else 0.
pub const IS_LEADER: &str = "coordinator_member_is_leader";
/// Counter: plans this member made while leading (a plan may move nothing).
pub const PLANS: &str = "coordinator_leader_plans_total";
/// Counter: items the plans took from a live member and gave to another.
pub const ITEMS_MOVED: &str = "coordinator_leader_items_moved_total";
/// Counter: items the plans gave an owner because they had no live one
/// (new items, items of members that left).
pub const ITEMS_PLACED: &str = "coordinator_leader_items_placed_total";
/// Counter: fenced writes the store rejected (this member had lost its
/// leadership; it stepped down).
pub const FENCED_WRITES: &str = "coordinator_leader_fenced_writes_total";
/// Counter: failed session renewals, by `reason`: `error` (the store request
/// failed) or `expired` (the session was gone, found by a renewal, a
/// member-key write or the member key vanishing; the member registers
/// again).
pub const RENEW_FAILURES: &str = "coordinator_member_renew_failures_total";

/// Gauge: items in handoff while this member leads (revoked from their old
/// owner, not yet assigned to the new one).
pub const HANDOFFS: &str = "coordinator_leader_handoffs_in_flight";
/// Gauge: work items refused while this member leads, because a transaction
/// that assigns one would exceed the store's limits (its value is too
/// large).
pub const ITEMS_REFUSED: &str = "coordinator_leader_items_refused";
/// Gauge: work items no live member holds, while this member leads
/// (unassigned, in handoff, refused, or held by a member that left);
/// refreshed at most once a second.
pub const ITEMS_UNOWNED: &str = "coordinator_leader_items_unowned";
/// Counter: times this member released its whole workload (exclusive mode:
/// it could not renew its session in time, or lost it).
pub const RELEASES: &str = "coordinator_member_releases_total";

/// Describes the leader half's metrics to the installed recorder. Called
/// whenever a member starts.
pub fn describe() {
    describe_gauge!(IS_LEADER, Unit::Count, "1 while this member leads, else 0.");
    describe_counter!(PLANS, Unit::Count, "Plans made while leading.");
    describe_counter!(
        ITEMS_MOVED,
        Unit::Count,
        "Items the plans moved from a live member to another."
    );
    describe_counter!(
        ITEMS_PLACED,
        Unit::Count,
        "Items the plans gave an owner because they had no live one."
    );
    describe_counter!(
        FENCED_WRITES,
        Unit::Count,
        "Fenced writes the store rejected (leadership lost)."
    );
    describe_counter!(
        RENEW_FAILURES,
        Unit::Count,
        "Failed session renewals, by reason (error, expired)."
    );
    describe_gauge!(
        HANDOFFS,
        Unit::Count,
        "Items in handoff while this member leads."
    );
    describe_gauge!(
        ITEMS_REFUSED,
        Unit::Count,
        "Work items refused while this member leads (too large to assign)."
    );
    describe_gauge!(
        ITEMS_UNOWNED,
        Unit::Count,
        "Work items no live member holds, while this member leads."
    );
    describe_counter!(
        RELEASES,
        Unit::Count,
        "Times this member released its whole workload (exclusive mode)."
    );
}

/// The number of items in handoff, while leading.
pub(crate) fn handoffs(instance_id: &str, n: usize) {
    gauge!(HANDOFFS, "instance_id" => instance_id.to_owned()).set(n as f64);
}

/// The number of items refused, while leading.
pub(crate) fn refused(instance_id: &str, n: usize) {
    gauge!(ITEMS_REFUSED, "instance_id" => instance_id.to_owned()).set(n as f64);
}

/// The number of items no live member holds, while leading.
pub(crate) fn unowned(instance_id: &str, n: usize) {
    gauge!(ITEMS_UNOWNED, "instance_id" => instance_id.to_owned()).set(n as f64);
}

/// Exclusive mode: the member released its workload.
pub(crate) fn released(instance_id: &str) {
    counter!(RELEASES, "instance_id" => instance_id.to_owned()).increment(1);
}

/// Follows whether the member leads into [`IS_LEADER`] until the member ends
/// (then 0). Starts the member's counters at 0.
pub(crate) fn follow_leading(instance_id: &str, mut leading: watch::Receiver<Option<Fence>>) {
    describe();
    let id = instance_id.to_owned();
    for name in [PLANS, ITEMS_MOVED, ITEMS_PLACED, FENCED_WRITES] {
        counter!(name, "instance_id" => id.clone()).absolute(0);
    }
    for reason in ["error", "expired"] {
        counter!(RENEW_FAILURES, "instance_id" => id.clone(), "reason" => reason).absolute(0);
    }
    let is_leader = gauge!(IS_LEADER, "instance_id" => id);
    tokio::spawn(async move {
        loop {
            is_leader.set(if leading.borrow_and_update().is_some() {
                1.0
            } else {
                0.0
            });
            if leading.changed().await.is_err() {
                is_leader.set(0.0);
                return;
            }
        }
    });
}

/// A plan was made.
pub(crate) fn planned(instance_id: &str, report: &PlanReport) {
    counter!(PLANS, "instance_id" => instance_id.to_owned()).increment(1);
    counter!(ITEMS_MOVED, "instance_id" => instance_id.to_owned()).increment(report.moved as u64);
    counter!(ITEMS_PLACED, "instance_id" => instance_id.to_owned()).increment(report.placed as u64);
}

/// A fenced write was rejected: the leader steps down.
pub(crate) fn fenced(instance_id: &str) {
    counter!(FENCED_WRITES, "instance_id" => instance_id.to_owned()).increment(1);
}

/// A store request of `op` failed.
pub(crate) fn store_error(instance_id: &str, op: &'static str, error: &StoreError) {
    worker_core::metrics::store_error(instance_id, op, error);
}

/// Counts the error of a store request of `op`, if it failed.
pub(crate) fn store_result<T>(instance_id: &str, op: &'static str, result: &Result<T, StoreError>) {
    if let Err(e) = result {
        store_error(instance_id, op, e);
    }
}

/// The outcome of a session renewal: `Ok(false)` is an expired session.
pub(crate) fn renewed(instance_id: &str, result: &Result<bool, StoreError>) {
    let reason = match result {
        Ok(true) => return,
        Ok(false) => "expired",
        Err(e) => {
            store_error(instance_id, "renew", e);
            "error"
        }
    };
    counter!(RENEW_FAILURES, "instance_id" => instance_id.to_owned(), "reason" => reason)
        .increment(1);
}

//! The worker's metrics, recorded through the [`metrics`] facade.
//!
//! The library installs no recorder: an application that wants the figures
//! installs the exporter it likes (Prometheus, `StatsD`, ...) **before** it
//! spawns workers; without one every call below costs next to nothing. The
//! `coordinator` program serves them for Prometheus on `--http-addr`.
//!
//! Every metric carries the label `instance_id` (a process may run several
//! members). The names are the constants of this module; `docs/operations.md`
//! lists them with their types, labels and meaning.

use std::sync::Arc;

use ::metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use ::metrics::{SharedString, Unit};
use tokio::time::Instant;

use crate::error::StoreError;

/// Gauge: items in the member's settled workload (what the application holds).
pub const SETTLED_ITEMS: &str = "coordinator_settled_items";
/// Histogram (seconds): from the first observation of a change that differs
/// from the settled workload to its publication (soak, `max_soak` and the
/// leader settle included).
pub const PUBLICATION_DELAY: &str = "coordinator_publication_delay_seconds";
/// Counter: settled changes published to the application (the first sync included).
pub const PUBLICATIONS: &str = "coordinator_publications_total";
/// Counter: failed store requests, by `op` and `kind` (see [`error_kind`]).
pub const STORE_ERRORS: &str = "coordinator_store_errors_total";
/// Counter: relists after a lost watch position (Consul index went backwards,
/// etcd compaction).
pub const RELISTS: &str = "coordinator_relists_total";
/// Counter: changes of the leader as this member's worker observes them
/// (a leader appearing, going, or another term).
pub const LEADER_CHANGES: &str = "coordinator_leader_changes_total";

/// The value of the `kind` label of [`STORE_ERRORS`] for `error`:
/// `unavailable`, `permission_denied`, `timeout` or `protocol` (the
/// memory store's injected faults are `unavailable`).
pub fn error_kind(error: &StoreError) -> &'static str {
    match error {
        StoreError::Unavailable(_) => "unavailable",
        StoreError::PermissionDenied(_) => "permission_denied",
        StoreError::Timeout(_) => "timeout",
        StoreError::Protocol(_) => "protocol",
    }
}

/// Counts a failed store request of `op` (e.g. `assignments`, `leader`) for
/// `instance_id` in [`STORE_ERRORS`].
pub fn store_error(instance_id: &str, op: &'static str, error: &StoreError) {
    counter!(STORE_ERRORS, "instance_id" => instance_id.to_owned(), "op" => op, "kind" => error_kind(error))
        .increment(1);
}

/// Describes the worker's metrics to the installed recorder (type, unit and
/// help text). Called whenever a worker starts; call it yourself after
/// installing a recorder if no worker starts after that.
pub fn describe() {
    describe_gauge!(
        SETTLED_ITEMS,
        Unit::Count,
        "Items in the member's settled workload."
    );
    describe_histogram!(
        PUBLICATION_DELAY,
        Unit::Seconds,
        "From the first observation of a change to its publication (soak and leader settle included)."
    );
    describe_counter!(
        PUBLICATIONS,
        Unit::Count,
        "Settled changes published to the application."
    );
    describe_counter!(
        STORE_ERRORS,
        Unit::Count,
        "Failed store requests, by operation and kind."
    );
    describe_counter!(RELISTS, Unit::Count, "Relists after a lost watch position.");
    describe_counter!(
        LEADER_CHANGES,
        Unit::Count,
        "Changes of the leader as this member's worker observes them."
    );
}

/// What one worker records; the driver calls it at each event.
pub(crate) struct WorkerMetrics {
    id: SharedString,
    /// When the machine began holding a change it has not published yet.
    pending_since: Option<Instant>,
}

impl WorkerMetrics {
    pub(crate) fn new(instance_id: &str) -> Self {
        describe();
        let id = SharedString::from(Arc::<str>::from(instance_id));
        gauge!(SETTLED_ITEMS, "instance_id" => id.clone()).set(0.0);
        counter!(PUBLICATIONS, "instance_id" => id.clone()).absolute(0);
        counter!(RELISTS, "instance_id" => id.clone()).absolute(0);
        counter!(LEADER_CHANGES, "instance_id" => id.clone()).absolute(0);
        Self {
            id,
            pending_since: None,
        }
    }

    /// Whether the machine holds an unpublished change, after each round of
    /// actions: the first round that says so starts the publication clock.
    pub(crate) fn pending(&mut self, pending: bool) {
        if !pending {
            self.pending_since = None;
        } else if self.pending_since.is_none() {
            self.pending_since = Some(Instant::now());
        }
    }

    /// A change was published: the settled workload now holds `settled_items` items.
    pub(crate) fn published(&mut self, settled_items: usize) {
        counter!(PUBLICATIONS, "instance_id" => self.id.clone()).increment(1);
        gauge!(SETTLED_ITEMS, "instance_id" => self.id.clone()).set(settled_items as f64);
        if let Some(since) = self.pending_since.take() {
            histogram!(PUBLICATION_DELAY, "instance_id" => self.id.clone())
                .record(since.elapsed().as_secs_f64());
        }
    }

    /// The watch position was lost: the worker relists.
    pub(crate) fn relist(&self) {
        counter!(RELISTS, "instance_id" => self.id.clone()).increment(1);
    }

    /// The observed leader changed.
    pub(crate) fn leader_changed(&self) {
        counter!(LEADER_CHANGES, "instance_id" => self.id.clone()).increment(1);
    }

    /// A store request of `op` failed.
    pub(crate) fn store_error(&self, op: &'static str, error: &StoreError) {
        counter!(STORE_ERRORS, "instance_id" => self.id.clone(), "op" => op, "kind" => error_kind(error))
            .increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_store_error_has_a_kind() {
        assert_eq!(
            error_kind(&StoreError::Timeout(std::time::Duration::from_secs(1))),
            "timeout"
        );
        assert_eq!(error_kind(&StoreError::unavailable("x")), "unavailable");
        assert_eq!(
            error_kind(&StoreError::permission_denied("x")),
            "permission_denied"
        );
        assert_eq!(error_kind(&StoreError::protocol("x")), "protocol");
        assert_eq!(error_kind(&StoreError::injected("x")), "unavailable");
    }
}

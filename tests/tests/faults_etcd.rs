//! Fault scenarios on a real Etcd server, each checked against the common invariants
//! (see `coordinator_e2e::scenario`) and measured for the table in `docs/operations.md`.
//!
//! The scenarios of this binary run one at a time (`coordinator_e2e::serial`): their
//! timings and the process CPU figure must not be disturbed by each other.

use coordinator_e2e::faults;
use coordinator_e2e::{serial, StoreKind};

const KIND: StoreKind = StoreKind::Etcd;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_sigkill_and_restart() {
    let _serial = serial().await;
    faults::kill_and_restart(KIND).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_unreachable_for_30_s() {
    let _serial = serial().await;
    faults::unreachable(KIND).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn black_holed_connection_is_detected_and_recovered() {
    let _serial = serial().await;
    faults::black_hole(KIND).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_latency_500_ms_each_way() {
    let _serial = serial().await;
    faults::latency(KIND).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_past_the_workers_revision_while_cut_off() {
    let _serial = serial().await;
    faults::etcd_compaction_while_cut_off().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_member_cluster_loses_the_member_in_use() {
    let _serial = serial().await;
    faults::etcd_member_loss().await;
}

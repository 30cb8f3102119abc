//! Fault scenarios on a real Consul server, each checked against the common invariants
//! (see `coordinator_e2e::scenario`) and measured for the table in `docs/operations.md`.
//!
//! The scenarios of this binary run one at a time (`coordinator_e2e::serial`): their
//! timings and the process CPU figure must not be disturbed by each other.

use coordinator_e2e::faults;
use coordinator_e2e::{serial, StoreKind};

const KIND: StoreKind = StoreKind::Consul;

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
async fn snapshot_restore_index_goes_backwards() {
    let _serial = serial().await;
    faults::consul_snapshot_restore().await;
}

//! The core's conformance suite on the memory backend (Consul's and etcd's run
//! in their crates' tests against real servers).

use worker_core::conformance::{self, MemoryConformance};

#[tokio::test]
async fn list_and_watch() {
    conformance::list_and_watch(&MemoryConformance::default(), "c/").await;
}

#[tokio::test]
async fn own_keys_only() {
    conformance::own_keys_only(&MemoryConformance::default(), "c/").await;
}

#[tokio::test]
async fn leader_observed() {
    conformance::leader_observed(&MemoryConformance::default()).await;
}

#[tokio::test]
async fn worker_end_to_end() {
    conformance::worker_end_to_end(&MemoryConformance::default(), "c/").await;
}

#[tokio::test]
async fn run_all_on_one_store() {
    conformance::run_all(&MemoryConformance::default(), "all/").await;
}

//! A three-member cluster: the member the worker uses dies.

use std::sync::Arc;
use std::time::Duration;

use backend_etcd::EtcdConfig;
use test_support::EtcdCluster;

use crate::common::{
    backend, campaign, ids, init_tracing, plain_client, spawn_worker, unique, wait_count,
    wait_workload, CountingKv, Counts,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_when_the_connected_member_dies() {
    init_tracing();
    let mut cluster = EtcdCluster::start(3).await;
    let endpoints = cluster.endpoints();
    let election = unique("ha/leader");
    let etcd = backend(
        EtcdConfig::new(endpoints.clone())
            .with_election(&election)
            .with_keepalive(Duration::from_secs(3)),
    )
    .await;
    let client = plain_client(&endpoints).await;
    campaign(&client, &election, "leader-1").await;
    let p = format!("{}/", unique("ha"));
    let m = format!("{p}m1/");
    cluster.put(&format!("{m}w1"), "1").await;
    let counts = Counts::default();
    let kv = Arc::new(CountingKv {
        inner: Arc::new(etcd.clone()),
        counts: counts.clone(),
    });
    let worker = spawn_worker(&p, kv, &etcd, Duration::from_millis(200));
    wait_workload(&worker, &["w1"], "first sync").await;

    let used = etcd.current_endpoint();
    let victim = endpoints
        .iter()
        .position(|e| *e == used)
        .expect("current endpoint is one of the cluster's");
    let errors_before = Counts::get(&counts.stream_errors);
    cluster.kill(victim);
    wait_count(
        "the worker to notice the dead member",
        &counts.stream_errors,
        |n| n > errors_before,
    )
    .await;
    assert_eq!(ids(&worker), ["w1"].map(String::from).into());

    // A change made after the kill is published through another member. (If the
    // victim was the raft leader, writes fail until a new one is elected: retry.)
    let key = format!("{m}w2");
    test_support::poll_until("a write after the kill", crate::common::WAIT, || {
        let mut put = cluster.etcdctl(["put", "--", key.as_str(), "2"]);
        async move { put.output().await.ok().filter(|o| o.status.success()) }
    })
    .await;
    wait_workload(&worker, &["w1", "w2"], "a change after the member died").await;
    assert_ne!(etcd.current_endpoint(), used, "still on the dead member");
    worker.halt().await;
}

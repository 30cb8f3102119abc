//! Outages: a silent or reset connection with compaction meanwhile, a dead
//! stream, a restart of a single-member etcd.

use std::sync::Arc;
use std::time::Duration;

use backend_etcd::EtcdConfig;
use test_support::{EtcdServer, FaultProxy, ProxyMode};
use worker_core::{KvWatch, StoreError};

use crate::common::{
    addr_of, backend, campaign, ids, init_tracing, plain_client, spawn_worker, unique, wait_count,
    wait_workload, CountingKv, Counts, WAIT,
};

/// Short keep-alive so that dead streams are found quickly in tests. Below
/// 10 s, so watches probe with progress requests as well as pinging.
const KEEPALIVE: Duration = Duration::from_secs(2);

/// The default keep-alive: HTTP/2 pings alone (every 5 s of silence, 5 s for
/// the answer), no store request while idle.
const PING_KEEPALIVE: Duration = backend_etcd::DEFAULT_KEEPALIVE;

/// Extra time over a bound before a test fails (a loaded 2-core machine).
const SLACK: Duration = Duration::from_secs(2);

/// While the worker cannot reach etcd (the proxy in `mode`), assignments change
/// many times and the history is compacted past the worker's revision; when the
/// way opens again the worker relists and converges on the current assignments.
async fn compaction_while_cut_off(mode: ProxyMode) {
    init_tracing();
    let server = EtcdServer::start().await;
    let proxy = FaultProxy::start(addr_of(&server.client_url())).await;
    let election = unique("cut/leader");
    let etcd = backend(
        EtcdConfig::new(vec![proxy.http_url()])
            .with_election(&election)
            .with_keepalive(KEEPALIVE),
    )
    .await;
    let client = plain_client(&server.client_urls()).await;
    campaign(&client, &election, "leader-1").await;
    let p = format!("{}/", unique("cut"));
    let m = format!("{p}m1/");
    server.put(&format!("{m}w1"), "1").await;
    server.put(&format!("{m}w2"), "2").await;

    let counts = Counts::default();
    let kv = Arc::new(CountingKv {
        inner: Arc::new(etcd.clone()),
        counts: counts.clone(),
    });
    let worker = spawn_worker(&p, kv, &etcd, Duration::from_millis(200));
    wait_workload(&worker, &["w1", "w2"], "first sync").await;
    let lists_before = Counts::get(&counts.lists);
    let errors_before = Counts::get(&counts.stream_errors);

    proxy.set_mode(mode);
    server.del(&format!("{m}w1")).await;
    for i in 0..30 {
        server.put(&format!("{m}x{i}"), &format!("v{i}")).await;
        if i > 0 {
            server.del(&format!("{m}x{}", i - 1)).await;
        }
        server.put(&format!("{p}m10/noise"), &format!("{i}")).await;
    }
    server.put(&format!("{m}w3"), "3").await;
    let rev = server.get_revision().await;
    server.compact(rev).await;

    // The worker finds its stream dead (silent or reset) and keeps its set.
    wait_count(
        "the worker to notice the broken watch",
        &counts.stream_errors,
        |n| n > errors_before,
    )
    .await;
    assert_eq!(
        ids(&worker),
        ["w1", "w2"].map(String::from).into(),
        "settled set changed while cut off"
    );

    proxy.set_mode(ProxyMode::PassThrough);
    wait_workload(
        &worker,
        &["w2", "w3", "x29"],
        "convergence after the outage",
    )
    .await;
    assert!(
        Counts::get(&counts.lost) >= 1,
        "the compacted position was not reported as lost"
    );
    assert!(
        Counts::get(&counts.lists) > lists_before,
        "the worker did not relist"
    );
    worker.halt().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_during_black_hole_relists_and_converges() {
    compaction_while_cut_off(ProxyMode::BlackHole).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_during_resets_relists_and_converges() {
    compaction_while_cut_off(ProxyMode::Reset).await;
}

/// A watch whose connection goes silent fails within the keep-alive bound
/// instead of waiting forever (a short bound: progress requests and pings).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_watch_is_detected() {
    silent_watch_detected_within(KEEPALIVE, KEEPALIVE * 3).await;
}

/// The same with the default bound, where only HTTP/2 keep-alive pings watch
/// the connection: the dead one is still found within `keepalive`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_watch_is_detected_by_pings() {
    silent_watch_detected_within(PING_KEEPALIVE, PING_KEEPALIVE + SLACK).await;
}

async fn silent_watch_detected_within(keepalive: Duration, bound: Duration) {
    init_tracing();
    let server = EtcdServer::start().await;
    let proxy = FaultProxy::start(addr_of(&server.client_url())).await;
    let etcd = backend(EtcdConfig::new(vec![proxy.http_url()]).with_keepalive(keepalive)).await;
    let m = format!("{}/m1/", unique("silent"));
    let snap = etcd.list(&m).await.expect("list");
    let mut stream = etcd.watch(&m, snap.revision).await.expect("watch");
    proxy.set_mode(ProxyMode::BlackHole);
    let started = tokio::time::Instant::now();
    let r = tokio::time::timeout(WAIT, async {
        loop {
            if let Err(e) = stream.next().await {
                return e;
            }
        }
    })
    .await
    .expect("a silent stream was not detected");
    let took = started.elapsed();
    assert!(matches!(r, StoreError::Timeout(_)), "{r:?}");
    assert!(took < bound, "detection took {took:?}");
    // And a list through the black hole is bounded too.
    let r = tokio::time::timeout(WAIT, etcd.list(&m))
        .await
        .expect("list hung");
    assert!(r.is_err(), "{r:?}");
    proxy.set_mode(ProxyMode::PassThrough);
    test_support::poll_until("list to work again", WAIT, || {
        let etcd = etcd.clone();
        let m = m.clone();
        async move { etcd.list(&m).await.ok() }
    })
    .await;
}

/// A healthy watch with nothing to report is not taken for a dead one: the
/// progress probes (and pings) are answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_watch_stays_open() {
    init_tracing();
    let server = EtcdServer::start().await;
    let keepalive = KEEPALIVE;
    let etcd = backend(EtcdConfig::new(server.client_urls()).with_keepalive(keepalive)).await;
    let m = format!("{}/m1/", unique("idle"));
    let snap = etcd.list(&m).await.expect("list");
    let mut stream = etcd.watch(&m, snap.revision).await.expect("watch");
    // A bounded look at a non-event: three keep-alive periods without a failure.
    let quiet = tokio::time::timeout(keepalive * 3, async {
        loop {
            let ev = stream.next().await;
            assert!(
                matches!(ev, Ok(worker_core::WatchEvent::Progress { .. })),
                "idle watch yielded {ev:?}"
            );
        }
    })
    .await;
    assert!(quiet.is_err());
    let key = format!("{m}w1");
    server.put(&key, "1").await;
    let ev = tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("no event after the idle time")
        .expect("stream");
    assert!(
        matches!(ev, worker_core::WatchEvent::Changes { .. }),
        "{ev:?}"
    );
}

/// With the default bound an idle healthy watch yields nothing at all (no
/// progress probes, so no answers to them) for longer than three ping
/// intervals, and is not closed by etcd for pinging too often; it then still
/// delivers a change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_watch_is_kept_by_pings_alone() {
    init_tracing();
    let server = EtcdServer::start().await;
    let etcd = backend(EtcdConfig::new(server.client_urls()).with_keepalive(PING_KEEPALIVE)).await;
    let m = format!("{}/m1/", unique("idle-ping"));
    let snap = etcd.list(&m).await.expect("list");
    let mut stream = etcd.watch(&m, snap.revision).await.expect("watch");
    let quiet = tokio::time::timeout(Duration::from_secs(17), stream.next()).await;
    assert!(quiet.is_err(), "idle watch yielded {quiet:?}");
    let key = format!("{m}w1");
    server.put(&key, "1").await;
    let ev = tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("no event after the idle time")
        .expect("stream");
    assert!(
        matches!(ev, worker_core::WatchEvent::Changes { .. }),
        "{ev:?}"
    );
}

/// SIGKILL of a single-member etcd, then a start on the same data: the settled
/// set is kept during the outage and the worker converges afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_member_restart_keeps_then_converges() {
    init_tracing();
    let mut server = EtcdServer::start().await;
    let election = unique("restart/leader");
    let etcd = backend(
        EtcdConfig::new(server.client_urls())
            .with_election(&election)
            .with_keepalive(KEEPALIVE),
    )
    .await;
    {
        let client = plain_client(&server.client_urls()).await;
        campaign(&client, &election, "leader-1").await;
    }
    let p = format!("{}/", unique("restart"));
    let m = format!("{p}m1/");
    server.put(&format!("{m}w1"), "1").await;
    let counts = Counts::default();
    let kv = Arc::new(CountingKv {
        inner: Arc::new(etcd.clone()),
        counts: counts.clone(),
    });
    let worker = spawn_worker(&p, kv, &etcd, Duration::from_millis(200));
    wait_workload(&worker, &["w1"], "first sync").await;
    let errors_before = Counts::get(&counts.stream_errors);

    server.kill();
    wait_count(
        "the worker to notice the outage",
        &counts.stream_errors,
        |n| n > errors_before,
    )
    .await;
    let failures_at_kill = Counts::get(&counts.list_errors) + Counts::get(&counts.stream_errors);
    assert_eq!(ids(&worker), ["w1"].map(String::from).into());
    assert!(worker.is_ready());

    server.restart().await;
    server.put(&format!("{m}w2"), "2").await;
    wait_workload(&worker, &["w1", "w2"], "convergence after the restart").await;
    // Retries were spaced by backoff, not a tight loop.
    let failures = Counts::get(&counts.list_errors) + Counts::get(&counts.stream_errors);
    assert!(
        failures - failures_at_kill < 200,
        "{failures} failures: tight loop?"
    );
    worker.halt().await;
}

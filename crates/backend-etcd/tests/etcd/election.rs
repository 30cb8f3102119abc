//! Leadership from `etcdctl elect`.

use std::sync::Arc;
use std::time::Duration;

use backend_etcd::EtcdConfig;
use etcd_client::{ProclaimOptions, ResignOptions};
use test_support::EtcdServer;
use worker_core::LeaderWait;

use crate::common::{
    backend, init_tracing, plain_client, spawn_worker, unique, wait_workload, ElectChild, WAIT,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_elect_leads_and_resigning_makes_the_worker_wait() {
    init_tracing();
    let server = EtcdServer::start().await;
    let election = unique("elect/leader");
    let etcd = backend(EtcdConfig::new(server.client_urls()).with_election(&election)).await;
    let p = format!("{}/", unique("elect"));
    let m = format!("{p}m1/");
    server.put(&format!("{m}w1"), "1").await;
    let settle = Duration::from_millis(1500);
    let worker = spawn_worker(&p, Arc::new(etcd.clone()), &etcd, settle);
    let mut leader = worker.leader_watch();

    // No leader yet: no first sync.
    let early = tokio::time::timeout(Duration::from_secs(1), worker.ready()).await;
    assert!(early.is_err(), "ready without a leader");

    let mut alpha = ElectChild::start(server.cluster(), &election, "alpha");
    alpha.wait_elected().await;
    let seen = tokio::time::timeout(
        WAIT,
        leader.wait_for(|l| l.as_ref().is_some_and(|l| l.id == "alpha")),
    )
    .await
    .expect("worker did not see alpha")
    .expect("worker ended")
    .clone()
    .expect("a leader");
    assert_eq!(etcd.leader().await.expect("leader").as_ref(), Some(&seen));
    wait_workload(&worker, &["w1"], "first sync under alpha").await;

    // beta queues behind alpha; alpha resigns; beta leads with a new term.
    let mut beta = ElectChild::start(server.cluster(), &election, "beta");
    test_support::poll_until("beta's campaign key", WAIT, || async {
        let out = server
            .ctl([
                "get",
                "--prefix",
                "--keys-only",
                "-w",
                "json",
                &format!("{election}/"),
            ])
            .await;
        out.contains("\"count\":2").then_some(())
    })
    .await;
    alpha.resign().await;
    beta.wait_elected().await;
    let b = tokio::time::timeout(
        WAIT,
        leader.wait_for(|l| l.as_ref().is_some_and(|l| l.id == "beta")),
    )
    .await
    .expect("worker did not see beta")
    .expect("worker ended")
    .clone()
    .expect("a leader");
    assert!(b.term > seen.term, "{b:?} after {seen:?}");

    // beta resigns: no leader; a change is observed but not published.
    beta.resign().await;
    tokio::time::timeout(WAIT, leader.wait_for(Option::is_none))
        .await
        .expect("worker did not see the resignation")
        .expect("worker ended");
    let mut changes = worker.changes();
    let _initial = changes.next().await;
    server.put(&format!("{m}w2"), "2").await;
    let quiet = tokio::time::timeout(Duration::from_secs(2), changes.next()).await;
    assert!(quiet.is_err(), "published without a leader: {quiet:?}");

    // gamma: a new leader; the change is published only after leader_settle.
    let mut gamma = ElectChild::start(server.cluster(), &election, "gamma");
    gamma.wait_elected().await;
    tokio::time::timeout(
        WAIT,
        leader.wait_for(|l| l.as_ref().is_some_and(|l| l.id == "gamma")),
    )
    .await
    .expect("worker did not see gamma")
    .expect("worker ended");
    let seen_at = tokio::time::Instant::now();
    let change = tokio::time::timeout(WAIT, changes.next())
        .await
        .expect("nothing published under gamma")
        .expect("worker ended");
    let waited = seen_at.elapsed();
    assert_eq!(change.added.len(), 1);
    assert_eq!(&*change.added[0].0, "w2");
    assert!(
        waited >= settle.mul_f64(0.8),
        "published {waited:?} after the new leader, before leader_settle {settle:?}"
    );
    worker.halt().await;
    gamma.resign().await;
}

/// etcd's count of open watchers (its `/metrics` gauge), read over plain HTTP.
async fn watchers(client_url: &str) -> u64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = crate::common::addr_of(client_url);
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: etcd\r\n\r\n")
        .await
        .expect("write");
    let mut body = String::new();
    conn.read_to_string(&mut body).await.expect("read");
    body.lines()
        .find_map(|l| l.strip_prefix("etcd_debugging_mvcc_watcher_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .expect("etcd_debugging_mvcc_watcher_total in /metrics")
}

/// Every `observe()` stream of one backend value (and its clones) shares one
/// election watch; each stream still sees each change, and each sees a failure;
/// the shared watch ends when the last stream is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_streams_share_one_watch() {
    use test_support::{FaultProxy, ProxyMode};
    init_tracing();
    let server = EtcdServer::start().await;
    let proxy = FaultProxy::start(crate::common::addr_of(&server.client_url())).await;
    let election = unique("shared/leader");
    let etcd = backend(
        EtcdConfig::new(vec![proxy.http_url()])
            .with_election(&election)
            .with_keepalive(Duration::from_secs(2)),
    )
    .await;
    let before = watchers(&server.client_url()).await;
    let mut streams = Vec::new();
    for _ in 0..10 {
        let mut s = etcd.clone().observe().await.expect("observe");
        let first = tokio::time::timeout(WAIT, s.next()).await.expect("first");
        assert_eq!(first.expect("no error"), None);
        streams.push(s);
    }
    assert_eq!(watchers(&server.client_url()).await, before + 1);

    let client = crate::common::plain_client(&server.client_urls()).await;
    crate::common::campaign(&client, &election, "leader-1").await;
    for s in &mut streams {
        let l = tokio::time::timeout(WAIT, s.next())
            .await
            .expect("leader not seen")
            .expect("no error")
            .expect("a leader");
        assert_eq!(l.id, "leader-1");
    }

    // A broken connection reaches every stream; reopened ones recover.
    proxy.set_mode(ProxyMode::Reset);
    for s in &mut streams {
        let r = tokio::time::timeout(WAIT, s.next()).await.expect("hung");
        assert!(r.is_err(), "{r:?}");
    }
    proxy.set_mode(ProxyMode::PassThrough);
    for s in &mut streams {
        *s = test_support::poll_until("a reopened observation", WAIT, || {
            let etcd = etcd.clone();
            async move {
                let mut s = etcd.observe().await.ok()?;
                match s.next().await {
                    Ok(Some(l)) if l.id == "leader-1" => Some(s),
                    _ => None,
                }
            }
        })
        .await;
    }
    assert_eq!(watchers(&server.client_url()).await, before + 1);
    drop(streams);
    test_support::poll_until("the shared watch to end", WAIT, || async {
        (watchers(&server.client_url()).await == before).then_some(())
    })
    .await;
}

/// A `Proclaim` by the leader (same key, same create revision, new value) is
/// not a new leader: the term is what identifies one. Workers keep committing
/// (no `leader_settle` pause) and streams report nothing for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proclaim_by_the_same_leader_is_not_a_new_leader() {
    init_tracing();
    let server = EtcdServer::start().await;
    let election = unique("proclaim/leader");
    let etcd = backend(EtcdConfig::new(server.client_urls()).with_election(&election)).await;
    let p = format!("{}/", unique("proclaim"));
    server.put(&format!("{p}m1/w1"), "1").await;

    let mut client = plain_client(&server.client_urls()).await;
    let lease = client.lease_grant(300, None).await.expect("lease").id();
    let won = tokio::time::timeout(WAIT, client.campaign(election.as_str(), "alpha", lease))
        .await
        .expect("campaign timed out")
        .expect("campaign");
    let key = won.leader().expect("the leader key").clone();

    let mut stream = etcd.observe().await.expect("observe");
    let alpha = tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("no first state")
        .expect("first state")
        .expect("a leader");
    assert_eq!(alpha.id, "alpha");

    // A leader_settle far beyond every wait below: a pause would be seen.
    let worker = spawn_worker(&p, Arc::new(etcd.clone()), &etcd, Duration::from_secs(600));
    wait_workload(&worker, &["w1"], "first sync under alpha").await;

    client
        .proclaim(
            "alpha-v2",
            Some(ProclaimOptions::new().with_leader(key.clone())),
        )
        .await
        .expect("proclaim");
    let leader_key = String::from_utf8(key.key().to_vec()).expect("UTF-8 key");
    assert_eq!(server.get(&leader_key).await.as_deref(), Some("alpha-v2"));
    // The same leader, with the id its term began with.
    assert_eq!(etcd.leader().await.expect("leader"), Some(alpha.clone()));

    // The worker does not pause: a change is published within the wait bound.
    server.put(&format!("{p}m1/w2"), "2").await;
    wait_workload(&worker, &["w1", "w2"], "a change after the proclaim").await;
    assert_eq!(*worker.leader_watch().borrow(), Some(alpha.clone()));

    // The stream's next state is the resignation, not the proclaim.
    client
        .resign(Some(ResignOptions::new().with_leader(key)))
        .await
        .expect("resign");
    let next = tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("no state after the resignation")
        .expect("state");
    assert_eq!(next, None, "the proclaim was reported as a new leader");
    worker.halt().await;
}

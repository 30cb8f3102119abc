//! Authentication and TLS.

use std::sync::Arc;
use std::time::Duration;

use backend_etcd::EtcdConfig;
use test_support::{EtcdServer, TestPki};
use worker_core::{KvWatch, LeaderWait, StoreError};

use crate::common::{
    backend, init_tracing, spawn_worker, unique, wait_count, wait_workload, CountingKv, Counts,
    ElectChild, WAIT,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_and_password() {
    init_tracing();
    let mut server = EtcdServer::start().await;
    server.enable_auth("coordinator", "s3cret-pw").await;
    let election = unique("auth/leader");
    let p = format!("{}/", unique("auth"));
    server.put(&format!("{p}m1/w1"), "1").await;
    let mut elect = ElectChild::start(server.cluster(), &election, "leader-1");
    elect.wait_elected().await;

    // The right password: the worker syncs and follows changes.
    let etcd = backend(
        EtcdConfig::new(server.client_urls())
            .with_user("coordinator", "s3cret-pw")
            .with_election(&election),
    )
    .await;
    let worker = spawn_worker(
        &p,
        Arc::new(etcd.clone()),
        &etcd,
        Duration::from_millis(200),
    );
    wait_workload(&worker, &["w1"], "first sync with auth").await;
    server.put(&format!("{p}m1/w2"), "2").await;
    wait_workload(&worker, &["w1", "w2"], "a change with auth").await;
    worker.halt().await;

    // A wrong password: a clear PermissionDenied, retried with backoff.
    let bad = backend(
        EtcdConfig::new(server.client_urls())
            .with_user("coordinator", "wrong")
            .with_election(&election),
    )
    .await;
    let e = bad.list(&p).await.unwrap_err();
    assert!(matches!(e, StoreError::PermissionDenied(_)), "{e:?}");
    assert!(e.to_string().contains("permission denied"), "{e}");
    let chain = worker_core::ErrorChain(&e).to_string();
    assert!(!chain.contains("wrong"), "password in error: {chain}");
    let e = bad.leader().await.unwrap_err();
    assert!(matches!(e, StoreError::PermissionDenied(_)), "{e:?}");

    let counts = Counts::default();
    let kv = Arc::new(CountingKv {
        inner: Arc::new(bad.clone()),
        counts: counts.clone(),
    });
    let worker = spawn_worker(&p, kv, &bad, Duration::from_millis(200));
    // No leader can be read either, so the worker waits for one; give it a
    // leader-independent look at its list attempts: none may happen in a tight loop.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let attempts = Counts::get(&counts.lists);
    assert!(
        attempts <= 20,
        "{attempts} list attempts in 3 s: tight loop"
    );
    assert!(attempts >= 2, "{attempts} list attempts in 3 s: no retry");
    assert!(!worker.is_ready(), "published without being able to read");
    worker.halt().await;
    elect.resign().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_ca() {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::generate(dir.path());
    let server = EtcdServer::builder()
        .tls(pki.tls_files(), false)
        .start_server()
        .await;
    assert!(server.client_url().starts_with("https://"));
    let p = format!("{}/m1/", unique("tls"));
    server.put(&format!("{p}w1"), "1").await;

    // HTTPS with only a CA: no client certificate is presented.
    let etcd = backend(EtcdConfig::new(server.client_urls()).with_ca_cert(&pki.ca_cert)).await;
    let snap = etcd.list(&p).await.expect("list over HTTPS");
    assert_eq!(snap.entries.len(), 1);
    let mut stream = etcd
        .watch(&p, snap.revision)
        .await
        .expect("watch over HTTPS");
    server.put(&format!("{p}w2"), "2").await;
    let ev = tokio::time::timeout(crate::common::WAIT, stream.next())
        .await
        .expect("no event over HTTPS")
        .expect("stream");
    assert!(
        matches!(ev, worker_core::WatchEvent::Changes { .. }),
        "{ev:?}"
    );

    // A CA that did not sign the server's certificate: refused.
    let wrong_ca =
        backend(EtcdConfig::new(server.client_urls()).with_ca_cert(&pki.untrusted_ca_cert)).await;
    let e = wrong_ca.list(&p).await.unwrap_err();
    let chain = worker_core::ErrorChain(&e).to_string();
    assert!(chain.contains("certificate"), "{chain}");

    // No CA file: the system trust store does not know the test CA either.
    let system_roots = backend(EtcdConfig::new(server.client_urls())).await;
    assert!(system_roots.list(&p).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_required() {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::generate(dir.path());
    let server = EtcdServer::builder()
        .tls(pki.tls_files(), true)
        .start_server()
        .await;
    let election = unique("mtls/leader");
    let p = format!("{}/", unique("mtls"));
    server.put(&format!("{p}m1/w1"), "1").await;
    let mut elect = ElectChild::start(server.cluster(), &election, "leader-1");
    elect.wait_elected().await;

    let etcd = backend(
        EtcdConfig::new(server.client_urls())
            .with_ca_cert(&pki.ca_cert)
            .with_client_cert(&pki.client_cert, &pki.client_key)
            .with_election(&election),
    )
    .await;
    let worker = spawn_worker(
        &p,
        Arc::new(etcd.clone()),
        &etcd,
        Duration::from_millis(200),
    );
    wait_workload(&worker, &["w1"], "first sync with a client certificate").await;
    worker.halt().await;

    // Without a client certificate: refused, retried with backoff.
    let anonymous = backend(EtcdConfig::new(server.client_urls()).with_ca_cert(&pki.ca_cert)).await;
    let e = anonymous.list(&p).await.unwrap_err();
    eprintln!(
        "no client certificate: {:?}: {}",
        e,
        worker_core::ErrorChain(&e)
    );
    let counts = Counts::default();
    let kv = Arc::new(CountingKv {
        inner: Arc::new(anonymous.clone()),
        counts: counts.clone(),
    });
    let worker = spawn_worker(&p, kv, &anonymous, Duration::from_millis(200));
    wait_count("a refused list", &counts.list_errors, |n| n >= 1).await;
    assert!(!worker.is_ready());
    worker.halt().await;
    elect.resign().await;
}

/// An auth token that expires while the worker's watch is open costs no
/// relist: when the watch is reopened, etcd refuses the old token at creation;
/// the backend authenticates again and reopens it from the same revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_is_refreshed_without_a_relist() {
    init_tracing();
    let mut server = EtcdServer::builder()
        .auth_token_ttl(Duration::from_secs(1))
        .start_server()
        .await;
    server.enable_auth("coordinator", "s3cret-pw").await;
    let election = unique("ttl/leader");
    let p = format!("{}/", unique("ttl"));
    server.put(&format!("{p}m1/w1"), "1").await;
    let mut elect = ElectChild::start(server.cluster(), &election, "leader-1");
    elect.wait_elected().await;

    let etcd = backend(
        EtcdConfig::new(server.client_urls())
            .with_user("coordinator", "s3cret-pw")
            .with_election(&election),
    )
    .await;
    let counts = Counts::default();
    let kv = Arc::new(CountingKv {
        inner: Arc::new(etcd.clone()),
        counts: counts.clone(),
    });
    let worker = spawn_worker(&p, kv, &etcd, Duration::from_millis(200));
    wait_workload(&worker, &["w1"], "first sync with auth").await;
    assert_eq!(Counts::get(&counts.lists), 1);

    // The worker's only token (one authentication, then only open watches,
    // which never use it again) expires: etcd logs it.
    test_support::poll_until("etcd expires the worker's token", WAIT, || {
        let log = server.cluster().log_tail(0, 400);
        let expired = log
            .lines()
            .any(|l| l.contains("deleted a simple token") && l.contains("\"coordinator\""));
        async move { expired.then_some(()) }
    })
    .await;

    // The watch's connection breaks; the worker reopens it from its revision.
    counts.break_stream.notify_one();
    wait_count("the injected stream failure", &counts.stream_errors, |n| {
        n >= 1
    })
    .await;
    server.put(&format!("{p}m1/w2"), "2").await;
    wait_workload(&worker, &["w1", "w2"], "a change after the token expired").await;
    assert_eq!(Counts::get(&counts.lists), 1, "relisted");
    assert_eq!(Counts::get(&counts.lost), 0, "position reported lost");
    assert!(etcd.token_refreshes() >= 1, "no token refresh");
    worker.halt().await;
    elect.resign().await;
}

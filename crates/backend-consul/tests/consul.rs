//! The Consul backend against real Consul agents (never mocks).
//!
//! Every wait on an expected event is bounded ([`common::EVENT_TIMEOUT`]);
//! waits on non-events are short fixed windows that a broken backend fails.

mod common;

use std::sync::Arc;
use std::time::Duration;

use backend_consul::{ConsulBackend, ConsulConfig};
use common::{bounded, config_for, init_tracing, Store};
use test_support::ConsulAgent;
use worker_core::{
    conformance, KvStream, KvWatch, LeaderWait, StoreError, WatchEvent, Worker, WorkerConfig,
    WorkloadChange,
};

fn worker_config(prefix: &str, id: &str) -> WorkerConfig {
    WorkerConfig::new(id)
        .prefix(prefix)
        .soak(Duration::from_millis(100))
        .leader_settle(Duration::from_millis(200))
        .backoff(Duration::from_millis(100), Duration::from_secs(2))
}

fn ids(change: &WorkloadChange) -> (Vec<String>, Vec<String>) {
    (
        change.added.iter().map(|(k, _)| k.to_string()).collect(),
        change.removed.iter().map(ToString::to_string).collect(),
    )
}

fn workload_ids(worker: &worker_core::WorkerHandle) -> Vec<String> {
    worker.workload().keys().map(ToString::to_string).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_passes_on_consul() {
    init_tracing();
    let agent = Arc::new(ConsulAgent::start_dev().await);
    let mut config = config_for(&agent);
    config.leader_key = "conf/leader".into();
    let store = Store::new(agent.clone(), ConsulBackend::new(config).unwrap());
    conformance::run_all(&store, "conf/").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_member_prefix_blocks_instead_of_polling() {
    init_tracing();
    let agent = Arc::new(ConsulAgent::start_dev().await);
    let member = "idle/assign/m1/";
    let proxy = common::CountingProxy::start(
        ([127, 0, 0, 1], agent.port()).into(),
        &format!("GET /v1/kv/{member}?"),
    )
    .await;
    let mut config = ConsulConfig::new(vec![proxy.url()]);
    config.leader_key = "idle/leader".into();
    let store = Store::new(agent.clone(), ConsulBackend::new(config).unwrap());
    conformance::ConformanceStore::take_leadership(&store, "leader").await;

    let worker = Worker::spawn(
        &worker_config("idle/assign/", "m1"),
        Arc::new(store.backend.clone()),
        Arc::new(store.backend.clone()),
    )
    .unwrap();
    let workload = bounded("first sync", worker.ready()).await.unwrap();
    assert!(workload.is_empty());
    let at_ready = proxy.count();
    assert!(at_ready >= 1, "the worker read through the proxy");
    // Nothing changes for 3 s: a blocking query stays open; a polling loop
    // (index lost on the 404, or 0 not clamped) would read again and again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let reads = proxy.count() - at_ready;
    assert!(reads <= 2, "{reads} KV reads of the empty prefix in 3 s");
    // And the blocked read does wake for a change.
    let mut changes = worker.changes();
    let _initial = changes.next().await;
    agent.kv_put(&format!("{member}w1"), "x").await;
    let c = bounded("w1 added", changes.next()).await.unwrap();
    assert_eq!(ids(&c).0, ["w1"]);
    worker.halt().await;
}

/// Opens a watch of `member` and returns a task reading its first event.
async fn first_event(
    backend: &ConsulBackend,
    member: &str,
) -> tokio::task::JoinHandle<Result<WatchEvent, StoreError>> {
    let snapshot = backend.list(member).await.unwrap();
    let mut stream: Box<dyn KvStream> = backend.watch(member, snapshot.revision).await.unwrap();
    tokio::spawn(async move { stream.next().await })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_elsewhere_do_not_wake_a_member_read() {
    init_tracing();
    let agent = Arc::new(ConsulAgent::start_dev().await);
    let backend = ConsulBackend::new(config_for(&agent)).unwrap();
    // m1 empty (Consul answers an empty prefix with the whole store's index)
    // and m1 holding a key.
    for (case, seed) in [("empty", false), ("held", true)] {
        let base = format!("wake-{case}/");
        let member = format!("{base}m1/");
        if seed {
            agent.kv_put(&format!("{member}w0"), "0").await;
        }
        let mut read = first_event(&backend, &member).await;
        for key in ["m10/x", "m1x", "m2/y", "other/m1/z"] {
            agent.kv_put(&format!("{base}{key}"), "no").await;
        }
        agent.kv_put(&format!("other-{case}/m1/w"), "no").await;
        // Non-event window: the read must still be pending.
        let quiet = tokio::time::timeout(Duration::from_secs(3), &mut read).await;
        assert!(quiet.is_err(), "{case}: woken by foreign writes: {quiet:?}");
        agent.kv_put(&format!("{member}mine"), "yes").await;
        let event = bounded("m1's own write", read).await.unwrap().unwrap();
        let WatchEvent::Snapshot(s) = event else {
            panic!("{case}: expected a snapshot, got {event:?}");
        };
        assert!(s
            .entries
            .iter()
            .all(|e| e.key.starts_with(member.as_bytes())));
        assert!(s.entries.iter().any(|e| e.key.ends_with(b"/mine")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_going_backwards_after_snapshot_restore_is_recovered() {
    init_tracing();
    let agent = Arc::new(ConsulAgent::builder().server_mode().start().await);
    let mut config = config_for(&agent);
    config.leader_key = "snap/leader".into();
    let store = Store::new(agent.clone(), ConsulBackend::new(config).unwrap());
    conformance::ConformanceStore::take_leadership(&store, "leader").await;
    let member = "snap/assign/m1/";
    agent.kv_put(&format!("{member}a"), "1").await;

    let worker = Worker::spawn(
        &worker_config("snap/assign/", "m1"),
        Arc::new(store.backend.clone()),
        Arc::new(store.backend.clone()),
    )
    .unwrap();
    bounded("first sync", worker.ready()).await.unwrap();
    assert_eq!(workload_ids(&worker), ["a"]);

    let file = agent.dir().join("backup.snap");
    let file = file.to_str().unwrap();
    agent.cli(["snapshot", "save", file]).await;

    let mut watch = worker.watch();
    agent.kv_delete(&format!("{member}a")).await;
    agent.kv_put(&format!("{member}b"), "2").await;
    agent.kv_put(&format!("{member}c"), "3").await;
    bounded("b and c settled", async {
        while workload_ids(&worker) != ["b", "c"] {
            watch.changed().await.unwrap();
        }
    })
    .await;

    // A raw stream on the same prefix must report the lost position.
    let snapshot = store.backend.list(member).await.unwrap();
    let mut stream = store
        .backend
        .watch(member, snapshot.revision)
        .await
        .unwrap();
    let lost = tokio::spawn(async move {
        loop {
            match stream.next().await {
                Ok(WatchEvent::Lost { reason }) => return Ok(reason),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    });

    agent.cli(["snapshot", "restore", file]).await;
    let reason = bounded("Lost after restore", lost).await.unwrap().unwrap();
    assert!(reason.contains("backwards"), "{reason}");
    bounded("the restored assignments", async {
        while workload_ids(&worker) != ["a"] {
            watch.changed().await.unwrap();
        }
    })
    .await;
    worker.halt().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_restart_keeps_the_workload_and_resumes() {
    init_tracing();
    let agent = ConsulAgent::builder().server_mode().start().await;
    let mut config = config_for(&agent);
    config.leader_key = "rs/leader".into();
    let backend = ConsulBackend::new(config).unwrap();
    let admin = common::admin_client(&agent);
    common::take_leadership(&admin, "rs/leader", "leader").await;
    let member = "rs/assign/m1/";
    agent.kv_put(&format!("{member}a"), "1").await;
    agent.kv_put(&format!("{member}b"), "2").await;

    let worker = Worker::spawn(
        &worker_config("rs/assign/", "m1"),
        Arc::new(backend.clone()),
        Arc::new(backend.clone()),
    )
    .unwrap();
    bounded("first sync", worker.ready()).await.unwrap();
    assert_eq!(workload_ids(&worker), ["a", "b"]);
    let mut changes = worker.changes();
    let _initial = changes.next().await;

    let mut agent = agent;
    agent.kill();
    // The backend sees the outage.
    let err = bounded("an error while the agent is down", backend.list(member))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    // During the outage nothing is published and the workload stays.
    let quiet = tokio::time::timeout(Duration::from_secs(3), changes.next()).await;
    assert!(quiet.is_err(), "published during the outage: {quiet:?}");
    assert_eq!(workload_ids(&worker), ["a", "b"]);

    agent.restart().await;
    agent.kv_put(&format!("{member}c"), "3").await;
    let c = bounded("c after the restart", changes.next())
        .await
        .unwrap();
    assert_eq!(ids(&c), (vec!["c".to_owned()], vec![]), "{c:?}");
    assert_eq!(workload_ids(&worker), ["a", "b", "c"]);
    worker.halt().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_token_is_needed_and_permission_errors_are_reported() {
    init_tracing();
    let agent = ConsulAgent::builder()
        .acl_master_token("master-token-for-tests")
        .start()
        .await;
    let rules = r#"key_prefix "acl/" { policy = "read" }"#;
    agent
        .cli([
            "acl", "policy", "create", "-name", "read-acl", "-rules", rules,
        ])
        .await;
    let out = agent
        .cli([
            "acl",
            "token",
            "create",
            "-policy-name",
            "read-acl",
            "-format",
            "json",
        ])
        .await;
    let token: serde_json::Value = serde_json::from_str(&out).unwrap();
    let secret = token["SecretID"].as_str().unwrap().to_owned();

    let admin = common::admin_client(&agent);
    common::take_leadership(&admin, "acl/leader", "leader").await;
    agent.kv_put("acl/assign/m1/w1", "1").await;

    let dir = tempfile::tempdir().unwrap();
    let with = |token: Option<&str>| {
        let mut config = ConsulConfig::new(vec![agent.http_addr()]);
        config.leader_key = "acl/leader".into();
        config.token = token.map(str::to_owned);
        config
    };

    // Allowed token, from a file.
    let mut config = with(None);
    config.token_file = Some(common::write_file(
        dir.path(),
        "token",
        &format!("{secret}\n"),
    ));
    let good = ConsulBackend::new(config).unwrap();
    let worker = Worker::spawn(
        &worker_config("acl/assign/", "m1"),
        Arc::new(good.clone()),
        Arc::new(good),
    )
    .unwrap();
    bounded("first sync with the token", worker.ready())
        .await
        .unwrap();
    assert_eq!(workload_ids(&worker), ["w1"]);
    worker.halt().await;

    // No token (anonymous, default deny) and a wrong one.
    let none = ConsulBackend::new(with(None)).unwrap();
    let err = none.leader().await.unwrap_err();
    assert!(matches!(err, StoreError::PermissionDenied(_)), "{err:?}");
    let wrong = ConsulBackend::new(with(Some("00000000-0000-0000-0000-000000000000"))).unwrap();
    let err = wrong.list("acl/assign/m1/").await.unwrap_err();
    assert!(matches!(err, StoreError::PermissionDenied(_)), "{err:?}");
    let err = wrong.leader().await.unwrap_err();
    assert!(matches!(err, StoreError::PermissionDenied(_)), "{err:?}");
    assert!(!format!("{err:?} {err}").contains(&secret));

    // Workers without access stay alive, retrying, and publish nothing.
    for backend in [none, wrong] {
        let worker = Worker::spawn(
            &worker_config("acl/assign/", "m1"),
            Arc::new(backend.clone()),
            Arc::new(backend),
        )
        .unwrap();
        let ready = tokio::time::timeout(Duration::from_secs(3), worker.ready()).await;
        assert!(
            ready.is_err(),
            "a worker without access published: {ready:?}"
        );
        assert!(!worker.is_ready());
        worker.halt().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_ca_and_mutual_tls() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let pki = test_support::TestPki::generate(dir.path());

    // HTTPS only, no client certificates required.
    let agent = Arc::new(
        ConsulAgent::builder()
            .tls(pki.tls_files(), false)
            .start()
            .await,
    );
    let mut config = ConsulConfig::new(vec![agent.http_addr()]);
    config.ca_cert = Some(pki.ca_cert.clone());
    config.leader_key = "tls/leader".into();
    let backend = ConsulBackend::new(config.clone()).unwrap();
    let store = Store::new(agent.clone(), backend);
    conformance::list_and_watch(&store, "tls/").await;
    // Without the CA the agent's certificate is not trusted.
    let mut untrusting = config.clone();
    untrusting.ca_cert = Some(pki.untrusted_ca_cert.clone());
    let err = ConsulBackend::new(untrusting)
        .unwrap()
        .list("tls/")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    drop(store);
    drop(agent);

    // verify_incoming: a client certificate is required.
    let agent = Arc::new(
        ConsulAgent::builder()
            .tls(pki.tls_files(), true)
            .start()
            .await,
    );
    let mut config = ConsulConfig::new(vec![agent.http_addr()]);
    config.ca_cert = Some(pki.ca_cert.clone());
    config.leader_key = "mtls/leader".into();
    let without_cert = ConsulBackend::new(config.clone()).unwrap();
    let err = without_cert.list("mtls/").await.unwrap_err();
    // The agent closes the connection; the client sees no more than that.
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    config.client_cert = Some(pki.client_cert.clone());
    config.client_key = Some(pki.client_key.clone());
    let store = Store::new(agent.clone(), ConsulBackend::new(config).unwrap());
    conformance::list_and_watch(&store, "mtls/").await;
    conformance::leader_observed(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consul_lock_is_a_leader() {
    init_tracing();
    let agent = ConsulAgent::start_dev().await;
    let mut config = config_for(&agent);
    config.leader_key = "locks/svc/.lock".into();
    let backend = ConsulBackend::new(config).unwrap();
    assert_eq!(backend.leader().await.unwrap(), None);

    let dir = tempfile::tempdir().unwrap();
    let stop = dir.path().join("stop");
    let mut lock = agent
        .command([
            "lock",
            "locks/svc",
            &format!("while [ ! -e '{}' ]; do sleep 0.05; done", stop.display()),
        ])
        .spawn()
        .expect("run consul lock");

    agent.kv_put("locks/assign/m1/w1", "1").await;
    let worker = Worker::spawn(
        &worker_config("locks/assign/", "m1"),
        Arc::new(backend.clone()),
        Arc::new(backend.clone()),
    )
    .unwrap();
    bounded("first sync under the consul lock", worker.ready())
        .await
        .unwrap();
    assert_eq!(workload_ids(&worker), ["w1"]);
    let leader = worker.leader().expect("the worker saw the lock holder");
    assert_eq!(backend.leader().await.unwrap().as_ref(), Some(&leader));

    // The child ends: consul lock releases the lock and exits.
    std::fs::write(&stop, "").unwrap();
    let status = bounded("consul lock to exit", lock.wait()).await.unwrap();
    assert!(status.success(), "consul lock: {status}");
    let mut leader_watch = worker.leader_watch();
    bounded(
        "the worker to see no leader",
        leader_watch.wait_for(Option::is_none),
    )
    .await
    .unwrap();
    // Without a leader the worker waits: a change is not committed.
    let mut changes = worker.changes();
    let _initial = changes.next().await;
    agent.kv_put("locks/assign/m1/w2", "2").await;
    let quiet = tokio::time::timeout(Duration::from_secs(2), changes.next()).await;
    assert!(quiet.is_err(), "published without a leader: {quiet:?}");
    worker.halt().await;
}

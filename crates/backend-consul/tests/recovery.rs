//! How the Consul backend recovers, on real agents: an agent replaced by a
//! fresh one (the index goes backwards under a connected worker), a
//! black-holed first endpoint, a read dropped mid-request, and what it logs.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use backend_consul::{ConsulBackend, ConsulConfig};
use common::{bounded, config_for, init_tracing};
use test_support::{ConsulAgent, FaultProxy, ProxyMode};
use worker_core::{KvWatch, StoreError, WatchEvent, Worker, WorkerConfig, WorkerHandle};

fn worker_config(prefix: &str, id: &str) -> WorkerConfig {
    WorkerConfig::new(id)
        .prefix(prefix)
        .soak(Duration::from_millis(100))
        .leader_settle(Duration::from_millis(200))
        .backoff(Duration::from_millis(100), Duration::from_secs(2))
}

fn workload_ids(worker: &WorkerHandle) -> Vec<String> {
    worker.workload().keys().map(ToString::to_string).collect()
}

/// Waits (at most `within`) until the worker's settled workload is `want`.
async fn settles_to(worker: &WorkerHandle, want: &[&str], within: Duration) {
    let mut watch = worker.watch();
    let waited = tokio::time::timeout(within, async {
        while workload_ids(worker) != want {
            watch.changed().await.unwrap();
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "workload {:?} after {within:?}, expected {want:?}",
        workload_ids(worker)
    );
}

/// The must-show case of an index going backwards under a connected worker:
/// a dev agent pushed to a high index, killed, and replaced by a fresh agent
/// on the same port (index back near 0). A change written on the fresh agent
/// is published within 10 s, and later changes are followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_agent_in_place_of_the_old_one_is_followed() {
    init_tracing();
    let mut agent = ConsulAgent::start_dev().await;
    let mut config = config_for(&agent);
    config.leader_key = "fresh/leader".into();
    let backend = ConsulBackend::new(config).unwrap();
    let admin = common::admin_client(&agent);
    common::take_leadership(&admin, "fresh/leader", "leader").await;
    let member = "fresh/assign/m1/";
    // Writes elsewhere push the index up; the member's key is written last,
    // so the index of the member's prefix is high too.
    for i in 0..300 {
        agent.kv_put(&format!("fresh/noise/{i}"), "x").await;
    }
    agent.kv_put(&format!("{member}a"), "1").await;
    let high = agent.kv_index(member).await;
    assert!(high > 300, "index {high}");

    let worker = Worker::spawn(
        &worker_config("fresh/assign/", "m1"),
        Arc::new(backend.clone()),
        Arc::new(backend.clone()),
    )
    .unwrap();
    bounded("first sync", worker.ready()).await.unwrap();
    assert_eq!(workload_ids(&worker), ["a"]);

    // A fresh agent on the same port: an empty store at a low index.
    agent.restart().await;
    let fresh = agent.kv_index(member).await;
    assert!(
        fresh < high / 2,
        "the fresh agent's index {fresh} vs {high}"
    );
    common::take_leadership(&admin, "fresh/leader", "leader").await;
    agent.kv_put(&format!("{member}b"), "2").await;
    settles_to(&worker, &["b"], Duration::from_secs(10)).await;

    // And it follows what comes after.
    agent.kv_put(&format!("{member}c"), "3").await;
    settles_to(&worker, &["b", "c"], Duration::from_secs(10)).await;
    agent.kv_delete(&format!("{member}b")).await;
    settles_to(&worker, &["c"], Duration::from_secs(10)).await;
    worker.halt().await;
}

/// With `endpoints = [A, B]` and A black-holed (connections accepted, nothing
/// answered), the request to A times out and the backend moves on to B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_first_endpoint_fails_over_to_the_second() {
    init_tracing();
    let agent = ConsulAgent::start_dev().await;
    let admin = common::admin_client(&agent);
    common::take_leadership(&admin, "fo/leader", "leader").await;
    let member = "fo/assign/m1/";
    agent.kv_put(&format!("{member}a"), "1").await;

    let hole = FaultProxy::start(([127, 0, 0, 1], agent.port()).into()).await;
    hole.set_mode(ProxyMode::BlackHole);
    let mut config = ConsulConfig::new(vec![hole.http_url(), agent.http_addr()]);
    config.leader_key = "fo/leader".into();
    let backend = ConsulBackend::new(config).unwrap();

    // The first read goes to A and times out (a typed timeout, not text).
    let err = bounded("the read through the black hole", backend.list(member))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Timeout(_)), "{err:?}");
    assert!(hole.accepted() >= 1, "the first endpoint was tried first");
    // The next goes to B.
    let snapshot = bounded("the read after failover", backend.list(member))
        .await
        .unwrap();
    assert_eq!(snapshot.entries.len(), 1);

    // A worker on a new backend with the same endpoints settles through B.
    let mut config = ConsulConfig::new(vec![hole.http_url(), agent.http_addr()]);
    config.leader_key = "fo/leader".into();
    let backend = ConsulBackend::new(config).unwrap();
    let worker = Worker::spawn(
        &worker_config("fo/assign/", "m1"),
        Arc::new(backend.clone()),
        Arc::new(backend),
    )
    .unwrap();
    bounded("first sync through the second endpoint", worker.ready())
        .await
        .unwrap();
    assert_eq!(workload_ids(&worker), ["a"]);
    agent.kv_put(&format!("{member}b"), "2").await;
    settles_to(&worker, &["a", "b"], Duration::from_secs(10)).await;
    worker.halt().await;
}

/// `KvStream::next` is cancel safe: a call dropped while its request is in
/// flight loses nothing. Here what it must not lose is the first read's index
/// check: the stream resumes from a position the agent never reached (as
/// after the agent was replaced), so the check must report `Lost` at once
/// even after a first call was dropped mid-request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_read_loses_nothing() {
    init_tracing();
    let agent = ConsulAgent::start_dev().await;
    let proxy = FaultProxy::start(([127, 0, 0, 1], agent.port()).into()).await;
    let backend = ConsulBackend::new(ConsulConfig::new(vec![proxy.http_url()])).unwrap();
    let member = "cs/assign/m1/";
    agent.kv_put(&format!("{member}a"), "1").await;
    let snapshot = backend.list(member).await.unwrap();
    let beyond = snapshot.revision + 1000;
    let mut stream = backend.watch(member, beyond).await.unwrap();

    proxy.set_mode(ProxyMode::BlackHole);
    // Pending for the whole window: its request is in flight (the rate
    // limiter has tokens to spare), and the call is dropped mid-request.
    let dropped = tokio::time::timeout(Duration::from_millis(500), stream.next()).await;
    assert!(
        dropped.is_err(),
        "answered through a black hole: {dropped:?}"
    );

    proxy.set_mode(ProxyMode::PassThrough);
    let event = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("the index check was lost with the dropped call: the read blocks")
        .unwrap();
    assert!(
        matches!(&event, WatchEvent::Lost { reason } if reason.contains("backwards")),
        "{event:?}"
    );
}

/// Records the level and target of every event at INFO or above.
#[derive(Clone, Default)]
struct Loud(Arc<Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Loud {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let meta = event.metadata();
        if *meta.level() <= tracing::Level::INFO {
            self.0
                .lock()
                .unwrap()
                .push(format!("{} {}", meta.level(), meta.target()));
        }
    }
}

/// Answers the backend handles as a matter of course (a 404 on an empty
/// prefix, blocking queries, a change) log nothing at INFO or above, neither
/// from the backend nor from the client libraries it uses.
#[tokio::test(flavor = "current_thread")]
async fn handled_answers_log_nothing_at_info_or_above() {
    use tracing_subscriber::layer::SubscriberExt;

    let agent = ConsulAgent::start_dev().await;
    let loud = Loud::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(loud.clone()));
    let backend = ConsulBackend::new(config_for(&agent)).unwrap();
    let member = "quiet/assign/m1/";
    let empty = backend.list(member).await.unwrap();
    assert!(empty.entries.is_empty());
    let mut stream = backend.watch(member, empty.revision).await.unwrap();
    // No change: the stream checks the index, then blocks (a short window
    // for a non-event; the call is cancel safe).
    let quiet = tokio::time::timeout(Duration::from_millis(500), stream.next()).await;
    assert!(quiet.is_err(), "an event without a change: {quiet:?}");
    agent.kv_put(&format!("{member}w"), "1").await;
    let event = bounded("the change", stream.next()).await.unwrap();
    assert!(
        matches!(&event, WatchEvent::Snapshot(s) if s.entries.len() == 1),
        "{event:?}"
    );
    let logged = loud.0.lock().unwrap().clone();
    assert!(logged.is_empty(), "logged at INFO or above: {logged:?}");
}

//! The library's metrics on the memory store, read through a Prometheus
//! recorder set as the thread's default: the tests run on a current-thread
//! runtime, so every task of the worker or member records into it. Each check
//! follows the event it counts (a publication, a change of leadership).

use std::time::Duration;

use coordinator::{Backend, BackendKind, Config, MemoryStore};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(20);

/// The value of `series` in the rendered page, as written.
fn value(handle: &PrometheusHandle, series: &str) -> Option<String> {
    handle
        .render()
        .lines()
        .find_map(|l| Some(l.strip_prefix(series)?.strip_prefix(' ')?.to_owned()))
}

/// The next settled change, within [`WAIT`].
async fn next(changes: &mut coordinator::Changes) -> coordinator::WorkloadChange {
    timeout(WAIT, changes.next())
        .await
        .expect("a change in time")
        .expect("the worker runs")
}

#[tokio::test(flavor = "current_thread")]
async fn worker_counts_publications_errors_and_relists() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let _guard = metrics::set_default_local_recorder(&recorder);

    let store = MemoryStore::new();
    store.set_leader("leader-1");
    store.put("a/m1/w1", "1");
    let mut config = Config::new(BackendKind::Memory, "m1");
    config.prefix = "a/".into();
    config.soak = Duration::from_millis(20);
    let worker = Backend::memory(store.clone())
        .spawn_worker(&config)
        .unwrap();
    let mut changes = worker.changes();
    next(&mut changes).await;
    let id = "{instance_id=\"m1\"}";
    assert_eq!(
        value(&handle, &format!("coordinator_settled_items{id}")).as_deref(),
        Some("1")
    );
    assert_eq!(
        value(&handle, &format!("coordinator_publications_total{id}")).as_deref(),
        Some("1")
    );
    assert_eq!(
        value(&handle, &format!("coordinator_relists_total{id}")).as_deref(),
        Some("0")
    );

    // The history the worker would resume from is compacted away (it relists
    // and publishes the change made meanwhile), and the next request fails
    // (it retries after a backoff).
    store.put("a/m1/w2", "2");
    store.compact(store.revision());
    store.fail_next(1);
    let change = next(&mut changes).await;
    assert_eq!(&*change.added[0].0, "w2");
    assert_eq!(
        value(&handle, &format!("coordinator_settled_items{id}")).as_deref(),
        Some("2")
    );
    assert_eq!(
        value(&handle, &format!("coordinator_publications_total{id}")).as_deref(),
        Some("2")
    );
    assert_eq!(
        value(&handle, &format!("coordinator_relists_total{id}")).as_deref(),
        Some("1")
    );
    let errors = value(
        &handle,
        "coordinator_store_errors_total{instance_id=\"m1\",op=\"assignments\",kind=\"unavailable\"}",
    );
    assert!(errors.is_some_and(|n| n != "0"), "{}", handle.render());
    assert_eq!(
        value(
            &handle,
            &format!("coordinator_publication_delay_seconds_count{id}")
        )
        .as_deref(),
        Some("2")
    );
    worker.halt().await;
}

#[tokio::test(flavor = "current_thread")]
async fn member_counts_plans_leadership_and_expired_sessions() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let _guard = metrics::set_default_local_recorder(&recorder);

    let store = MemoryStore::new();
    let mut config = Config::new(BackendKind::Memory, "m1");
    config.soak = Duration::from_millis(20);
    config.leader_settle = Some(Duration::from_millis(20));
    config.leader_soak = Duration::from_millis(20);
    config.ttl = Duration::from_millis(600);
    for i in 0..5 {
        store.put(format!("{}w{i}", config.work_prefix), "");
    }
    let member = Backend::memory(store.clone())
        .spawn_member(&config)
        .unwrap();
    let mut leading = member.leading();
    let mut watch = member.worker().watch();
    timeout(WAIT, async {
        while watch.current().workload.len() < 5 {
            watch.changed().await.expect("running");
        }
    })
    .await
    .expect("m1 holds the 5 items");
    let id = "{instance_id=\"m1\"}";
    assert_eq!(
        value(&handle, &format!("coordinator_member_is_leader{id}")).as_deref(),
        Some("1")
    );
    assert_eq!(
        value(
            &handle,
            &format!("coordinator_leader_items_placed_total{id}")
        )
        .as_deref(),
        Some("5")
    );
    assert_eq!(
        value(
            &handle,
            &format!("coordinator_leader_items_moved_total{id}")
        )
        .as_deref(),
        Some("0")
    );
    assert_ne!(
        value(&handle, &format!("coordinator_leader_plans_total{id}")).as_deref(),
        Some("0")
    );

    // The session expires under the member: it stops leading, finds out at
    // its next renewal, registers again and leads again.
    let expired = "coordinator_member_renew_failures_total{instance_id=\"m1\",reason=\"expired\"}";
    assert_eq!(value(&handle, expired).as_deref(), Some("0"));
    for session in store.live_sessions() {
        store.expire_session(&session);
    }
    timeout(WAIT, async {
        leading.wait_for(Option::is_none).await.expect("running");
        leading.wait_for(Option::is_some).await.expect("running");
    })
    .await
    .expect("m1 leads again");
    assert_eq!(
        value(&handle, expired).as_deref(),
        Some("1"),
        "{}",
        handle.render()
    );
    member.halt().await;
}

/// `coordinator_leader_items_unowned`: a leader that can place nothing (its
/// only member takes no work) counts every item as unowned, and the gauge
/// drops to 0 once it no longer leads.
#[tokio::test(flavor = "current_thread")]
async fn leader_counts_items_no_member_holds() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let _guard = metrics::set_default_local_recorder(&recorder);

    let store = MemoryStore::new();
    let mut config = Config::new(BackendKind::Memory, "m1");
    config.soak = Duration::from_millis(20);
    config.leader_settle = Some(Duration::from_millis(20));
    config.leader_soak = Duration::from_millis(20);
    config.weight = 0;
    for i in 0..3 {
        store.put(format!("{}w{i}", config.work_prefix), "");
    }
    let member = Backend::memory(store.clone())
        .spawn_member(&config)
        .unwrap();
    let series = "coordinator_leader_items_unowned{instance_id=\"m1\"}";
    timeout(WAIT, async {
        while value(&handle, series).as_deref() != Some("3") {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("3 unowned items never counted: {}", handle.render()));
    member.halt().await;
    assert_eq!(value(&handle, series).as_deref(), Some("0"));
}

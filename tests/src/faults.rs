//! The fault scenarios both stores go through, and the store-specific ones. Each returns what
//! it measured after checking the invariants ([`Harness::finish`]).

use std::time::Duration;

use test_support::{ConsulAgent, EtcdCluster, ProxyMode};
use tokio::time::Instant;

use crate::scenario::{lost, warn_or_lost, Expect, Harness, Measured, Path, KNOBS};
use crate::stores::{StoreKind, StoreServer};
use crate::{capture, EVENT_TIMEOUT};

/// How long the "store unreachable" fault lasts.
pub const UNREACHABLE_FOR: Duration = Duration::from_secs(30);

/// How long a store killed with SIGKILL stays down before it is restarted.
pub const KILLED_FOR: Duration = Duration::from_secs(5);

/// Added latency in each direction.
pub const LATENCY: Duration = Duration::from_millis(500);

/// Detection bound for a connection that breaks (reset, closed by a dying store): the
/// error surfaces on the next read, at once.
pub const BROKEN_CONNECTION_BOUND: Duration = Duration::from_secs(1);

/// Starts a store: Consul in server mode when `persistent` (KV survives a restart), else
/// dev mode; a single etcd member.
pub async fn start_store(kind: StoreKind, persistent: bool) -> StoreServer {
    match kind {
        StoreKind::Consul => {
            let builder = ConsulAgent::builder();
            let builder = if persistent {
                builder.server_mode()
            } else {
                builder
            };
            StoreServer::Consul(builder.start().await)
        }
        StoreKind::Etcd => StoreServer::Etcd(EtcdCluster::start(1).await),
    }
}

/// The store is killed with SIGKILL, stays down [`KILLED_FOR`], and is restarted with its data; an
/// assignment is added right after it is back.
pub async fn kill_and_restart(kind: StoreKind) -> Measured {
    let store = start_store(kind, true).await;
    let mut h = Harness::start(store, "kill", Path::Proxy, &[("a", "1"), ("b", "2")]).await;
    let mut fault = h.begin_fault("store SIGKILL, restarted after 5 s");
    h.store.kill(0);
    tokio::time::sleep(KILLED_FOR).await;
    h.store.restart(0).await;
    fault.heal();
    h.put("c", "3").await;
    let mut expect = Expect::new("1-kill-restart");
    expect.detection_bound = Some(BROKEN_CONNECTION_BOUND);
    expect.recovery_note = String::from("(store ready → converged)");
    h.finish(&fault, &expect).await
}

/// The store is unreachable for [`UNREACHABLE_FOR`] (every connection reset); the test
/// changes the assignments meanwhile.
pub async fn unreachable(kind: StoreKind) -> Measured {
    let store = start_store(kind, false).await;
    let mut h = Harness::start(store, "unreach", Path::Proxy, &[("a", "1"), ("b", "2")]).await;
    let mut fault = h.begin_fault("store unreachable 30 s (connections reset)");
    h.proxy().set_mode(ProxyMode::Reset);
    h.del("a").await;
    h.put("c", "3").await;
    tokio::time::sleep(UNREACHABLE_FOR).await;
    h.proxy().set_mode(ProxyMode::PassThrough);
    fault.heal();
    let mut expect = Expect::new("2-unreachable");
    expect.detection_bound = Some(BROKEN_CONNECTION_BOUND);
    h.finish(&fault, &expect).await
}

/// The worker's connections are black-holed (open, silent, no reset) for longer than the
/// detection bound; the test changes the assignments meanwhile.
pub async fn black_hole(kind: StoreKind) -> Measured {
    let store = start_store(kind, false).await;
    let mut h = Harness::start(store, "hole", Path::Proxy, &[("a", "1"), ("b", "2")]).await;
    let bound = KNOBS.black_hole_bound(kind);
    let hold = bound + Duration::from_secs(4);
    let mut fault = h.begin_fault(&format!(
        "black-holed connection (no reset), {} s",
        hold.as_secs()
    ));
    h.proxy().set_mode(ProxyMode::BlackHole);
    h.put("c", "3").await;
    tokio::time::sleep(hold).await;
    h.proxy().set_mode(ProxyMode::PassThrough);
    fault.heal();
    let mut expect = Expect::new("3-black-hole");
    expect.detection_bound = Some(bound);
    expect.detection_note = format!("(bound {})", crate::report::secs(bound));
    h.finish(&fault, &expect).await
}

/// [`LATENCY`] added in each direction for 10 s; the test adds an assignment under the
/// latency and measures how long it takes to be published. Nothing may fail meanwhile.
pub async fn latency(kind: StoreKind) -> Measured {
    let store = start_store(kind, false).await;
    let mut h = Harness::start(store, "delay", Path::Proxy, &[("a", "1")]).await;
    let mut fault = h.begin_fault("500 ms added latency each way, 10 s");
    h.proxy().set_mode(ProxyMode::Delay(LATENCY));
    // Let the open requests pick up the latency first.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let written = Instant::now();
    h.put("b", "2").await;
    let published = h.await_converged(written, EVENT_TIMEOUT).await;
    let lag = published.at.saturating_duration_since(written);
    let rest = Duration::from_secs(10).saturating_sub(fault.start.elapsed());
    tokio::time::sleep(rest).await;
    h.proxy().set_mode(ProxyMode::PassThrough);
    fault.heal();
    h.put("c", "3").await;
    let mut expect = Expect::new("4-latency");
    expect.quiet_during_fault = false;
    expect.detection_note = String::from("(no error: nothing to detect)");
    expect.published_note = format!(
        "— the change made under latency was published {} after the write",
        crate::report::secs(lag)
    );
    let m = h.finish(&fault, &expect).await;
    assert_eq!(
        m.warnings, 0,
        "latency alone must not cause errors; first: {:?}",
        m.first_warning
    );
    assert_eq!(m.published_during.len(), 1, "{m:?}");
    m
}

/// Consul: a snapshot is restored, so the index goes backwards; the worker must relist and
/// publish the restored contents.
pub async fn consul_snapshot_restore() -> Measured {
    let store = start_store(StoreKind::Consul, true).await;
    let mut h = Harness::start(store, "restore", Path::Proxy, &[("a", "1")]).await;
    let saved = h.intended.clone();
    let file = h.store.consul().dir().join("backup.snap");
    let file = file.to_str().expect("UTF-8 path").to_owned();
    h.store.consul().cli(["snapshot", "save", &file]).await;
    let since = Instant::now();
    h.del("a").await;
    h.put("b", "2").await;
    h.put("c", "3").await;
    h.await_converged(since, EVENT_TIMEOUT).await;

    let mut fault = h.begin_fault("Consul snapshot restore (index goes backwards)");
    h.store.consul().cli(["snapshot", "restore", &file]).await;
    h.restored(saved);
    fault.heal_at(fault.start);
    let mut expect = Expect::new("5-snapshot-restore");
    expect.detected_by = lost;
    expect.detection_bound = Some(KNOBS.convergence_bound());
    expect.detection_note = String::from("(`watch position lost`)");
    expect.recovery_note = String::from("(restore → converged)");
    h.finish(&fault, &expect).await
}

/// etcd: while the worker is cut off, the assignments change and the history is compacted
/// past the worker's revision; after healing it must relist.
pub async fn etcd_compaction_while_cut_off() -> Measured {
    let store = start_store(StoreKind::Etcd, false).await;
    let mut h = Harness::start(store, "compact", Path::Proxy, &[("a", "1"), ("b", "2")]).await;
    let mut fault = h.begin_fault("etcd compaction past the worker's revision while cut off");
    h.proxy().set_mode(ProxyMode::Reset);
    h.del("a").await;
    h.put("c", "3").await;
    h.put("c", "4").await;
    let revision = h.store.etcd().get_revision().await;
    h.store.etcd().compact(revision).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    h.proxy().set_mode(ProxyMode::PassThrough);
    let healed = fault.heal();
    let mut expect = Expect::new("6-compaction");
    expect.detection_bound = Some(BROKEN_CONNECTION_BOUND);
    let m = h.finish(&fault, &expect).await;
    let relist = capture::of_worker(&h.member, healed)
        .into_iter()
        .find(lost)
        .expect("the worker must relist after the compaction");
    eprintln!(
        "relisted {:?} after healing: {}",
        relist.at.saturating_duration_since(healed),
        relist.text
    );
    m
}

/// etcd: a three-member cluster loses the member the worker is connected to (SIGKILL); the
/// test adds an assignment through the survivors at once.
pub async fn etcd_member_loss() -> Measured {
    let cluster = EtcdCluster::start(3).await;
    let endpoints = cluster.client_urls();
    let store = StoreServer::Etcd(cluster);
    let mut h = Harness::start(
        store,
        "member",
        Path::Direct(endpoints.clone()),
        &[("a", "1"), ("b", "2")],
    )
    .await;
    let in_use = h
        .etcd_backend
        .as_ref()
        .expect("etcd backend")
        .current_endpoint();
    let i = endpoints
        .iter()
        .position(|e| *e == in_use)
        .expect("endpoint in use");
    let mut fault = h.begin_fault("3-member etcd loses the member in use (SIGKILL)");
    h.store.kill(i);
    fault.heal_at(fault.start);
    // The test's own write waits for the survivors to elect a raft leader if the lost
    // member led; the worker cannot publish it before it is written.
    h.put("c", "3").await;
    let written = fault.start.elapsed();
    let mut expect = Expect::new("7-member-loss");
    expect.detected_by = warn_or_lost;
    expect.detection_bound = Some(KNOBS.etcd_keepalive);
    // Detection, failover to the next member, a raft election if the lost member led.
    expect.recovery_bound =
        KNOBS.etcd_keepalive + KNOBS.convergence_bound() + Duration::from_secs(2);
    expect.recovery_note = format!(
        "(kill → converged, via another member; the write itself completed {} after the kill)",
        crate::report::secs(written)
    );
    let m = h.finish(&fault, &expect).await;
    let now_using = h
        .etcd_backend
        .as_ref()
        .expect("etcd backend")
        .current_endpoint();
    assert_ne!(
        now_using, in_use,
        "the backend must have moved to another member"
    );
    m
}

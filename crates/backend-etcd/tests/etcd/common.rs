//! Helpers shared by the etcd integration tests.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backend_etcd::{EtcdBackend, EtcdConfig};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use test_support::EtcdCluster;
use tokio::io::{AsyncBufReadExt, BufReader};
use worker_core::{
    KvStream, KvWatch, Revision, Snapshot, StoreError, WatchEvent, WorkerConfig, WorkerHandle,
};

/// Bound on waiting for an expected event (loaded 2-core machine).
pub const WAIT: Duration = Duration::from_secs(30);

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A fresh key prefix per test.
pub fn unique(name: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// The `host:port` of an `http(s)://host:port` URL.
pub fn addr_of(url: &str) -> SocketAddr {
    url.split("://")
        .nth(1)
        .unwrap_or(url)
        .parse()
        .unwrap_or_else(|e| panic!("not an address: {url}: {e}"))
}

/// Connects the backend under test.
pub async fn backend(config: EtcdConfig) -> EtcdBackend {
    EtcdBackend::connect(config).await.expect("connect")
}

/// A plain etcd-client client (the harness's own writer / campaigner).
pub async fn plain_client(endpoints: &[String]) -> etcd_client::Client {
    etcd_client::Client::connect(endpoints, None)
        .await
        .expect("connect plain client")
}

/// Campaigns in `election` with a fresh lease (TTL 300 s, enough for any
/// test); returns the lease, whose revocation resigns.
pub async fn campaign(client: &etcd_client::Client, election: &str, id: &str) -> i64 {
    let mut c = client.clone();
    let lease = c.lease_grant(300, None).await.expect("lease grant").id();
    tokio::time::timeout(WAIT, c.campaign(election, id, lease))
        .await
        .expect("campaign timed out")
        .expect("campaign");
    lease
}

/// Counts what the worker asks of a backend, to check relists and backoff.
#[derive(Clone, Default)]
pub struct Counts {
    pub lists: Arc<AtomicUsize>,
    pub list_errors: Arc<AtomicUsize>,
    pub watches: Arc<AtomicUsize>,
    pub stream_errors: Arc<AtomicUsize>,
    pub lost: Arc<AtomicUsize>,
    /// Notified: the open stream (or the next one) fails once with an injected
    /// error, as when its connection is reset; the worker then resumes from its
    /// revision without relisting.
    pub break_stream: Arc<tokio::sync::Notify>,
}

impl Counts {
    pub fn get(c: &AtomicUsize) -> usize {
        c.load(Ordering::SeqCst)
    }
}

/// A [`KvWatch`] that counts calls and outcomes of the one it wraps.
pub struct CountingKv {
    pub inner: Arc<dyn KvWatch>,
    pub counts: Counts,
}

#[async_trait]
impl KvWatch for CountingKv {
    async fn list(&self, prefix: &str) -> Result<Snapshot, StoreError> {
        self.counts.lists.fetch_add(1, Ordering::SeqCst);
        let r = self.inner.list(prefix).await;
        if r.is_err() {
            self.counts.list_errors.fetch_add(1, Ordering::SeqCst);
        }
        r
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<Box<dyn KvStream>, StoreError> {
        self.counts.watches.fetch_add(1, Ordering::SeqCst);
        match self.inner.watch(prefix, after).await {
            Ok(inner) => Ok(Box::new(CountingStream {
                inner,
                counts: self.counts.clone(),
            })),
            Err(e) => {
                self.counts.stream_errors.fetch_add(1, Ordering::SeqCst);
                Err(e)
            }
        }
    }
}

struct CountingStream {
    inner: Box<dyn KvStream>,
    counts: Counts,
}

#[async_trait]
impl KvStream for CountingStream {
    async fn next(&mut self) -> Result<WatchEvent, StoreError> {
        let r = tokio::select! {
            biased;
            () = self.counts.break_stream.notified() => {
                Err(StoreError::injected("watch connection reset by the test"))
            }
            r = self.inner.next() => r,
        };
        match &r {
            Err(_) => {
                self.counts.stream_errors.fetch_add(1, Ordering::SeqCst);
            }
            Ok(WatchEvent::Lost { .. }) => {
                self.counts.lost.fetch_add(1, Ordering::SeqCst);
            }
            Ok(_) => {}
        }
        r
    }
}

/// Spawns a worker for `m1` under `prefix` on `kv` and `backend` (leader),
/// with short timers.
pub fn spawn_worker(
    prefix: &str,
    kv: Arc<dyn KvWatch>,
    backend: &EtcdBackend,
    settle: Duration,
) -> WorkerHandle {
    let config = WorkerConfig::new("m1")
        .prefix(prefix)
        .soak(Duration::from_millis(100))
        .leader_settle(settle)
        .backoff(Duration::from_millis(100), Duration::from_secs(2));
    worker_core::Worker::spawn(&config, kv, Arc::new(backend.clone())).expect("worker config")
}

/// The settled work ids.
pub fn ids(worker: &WorkerHandle) -> BTreeSet<String> {
    worker.workload().keys().map(ToString::to_string).collect()
}

fn set(expected: &[&str]) -> BTreeSet<String> {
    expected.iter().map(|s| (*s).to_owned()).collect()
}

/// Waits until the worker's settled workload is exactly `expected`.
pub async fn wait_workload(worker: &WorkerHandle, expected: &[&str], what: &str) {
    let expected = set(expected);
    let mut watch = worker.watch();
    let r = tokio::time::timeout(WAIT, async {
        loop {
            let current: BTreeSet<String> = watch
                .current()
                .workload
                .keys()
                .map(ToString::to_string)
                .collect();
            if watch.current().ready && current == expected {
                return;
            }
            watch.changed().await.expect("worker halted");
        }
    })
    .await;
    assert!(
        r.is_ok(),
        "timed out after {WAIT:?} waiting for {what}: settled {:?}, expected {expected:?}",
        ids(worker)
    );
}

/// Waits until `cond` holds for the counter, polling (the counters have no
/// notification); bounded.
pub async fn wait_count(what: &str, counter: &AtomicUsize, cond: impl Fn(usize) -> bool) {
    test_support::poll_until(what, WAIT, || {
        let done = cond(counter.load(Ordering::SeqCst));
        async move { done.then_some(()) }
    })
    .await;
}

/// `etcdctl elect NAME PROPOSAL` as a child process.
pub struct ElectChild {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl ElectChild {
    /// Starts campaigning (returns at once; see [`ElectChild::wait_elected`]).
    pub fn start(cluster: &EtcdCluster, election: &str, proposal: &str) -> Self {
        let mut child = cluster
            .etcdctl(["elect", election, proposal])
            .spawn()
            .expect("spawn etcdctl elect");
        let stdout = child.stdout.take().expect("stdout piped");
        Self {
            child,
            lines: BufReader::new(stdout).lines(),
        }
    }

    /// Waits until etcdctl says it was elected (it prints the leader key).
    pub async fn wait_elected(&mut self) {
        let line = tokio::time::timeout(WAIT, self.lines.next_line())
            .await
            .expect("etcdctl elect: not elected in time")
            .expect("read etcdctl output");
        assert!(line.is_some(), "etcdctl elect exited without being elected");
    }

    /// SIGINT: etcdctl resigns and exits. Waits for the exit.
    pub async fn resign(mut self) {
        let pid = self.child.id().expect("etcdctl elect running");
        kill(Pid::from_raw(i32::try_from(pid).unwrap()), Signal::SIGINT).expect("SIGINT");
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("etcdctl elect did not exit after SIGINT")
            .expect("wait etcdctl");
        assert!(status.success(), "etcdctl elect failed: {status}");
    }
}

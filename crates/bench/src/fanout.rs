//! Scenario 3: many workers in one process on one store, and a bulk reassignment.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use worker_core::{Worker, WorkerConfig, WorkerHandle};

use crate::measure::{fmt_ms, other_process_cpu_ns, process_cpu_us};
use crate::proxy::{CountingProxy, Counts};
use crate::rt::Lane;
use crate::stores::{Kind, Op, Store};

const PREFIX: &str = "bench/fanout/";
const SYNC_TIMEOUT: Duration = Duration::from_secs(300);

/// Settings of the fan-out scenario.
#[derive(Debug, Clone)]
pub struct Params {
    /// Worker counts to run (each on a fresh store).
    pub workers: Vec<usize>,
    /// Items assigned, then all reassigned at once.
    pub items: usize,
    /// Length of the idle window.
    pub idle: Duration,
    /// Consul blocking-query `wait` given to the workers.
    pub consul_wait: Duration,
    /// The workers' soak.
    pub soak: Duration,
}

/// Figures of one window.
#[derive(Debug, Clone, Copy, Default)]
pub struct Window {
    /// Length (s).
    pub secs: f64,
    /// Store requests counted by the proxy.
    pub counts: Counts,
    /// Store CPU (cores busy on average).
    pub store_cpu: f64,
    /// The workers' process CPU (cores busy on average).
    pub client_cpu: f64,
}

impl Window {
    fn rps(&self) -> f64 {
        self.counts.requests as f64 / self.secs
    }
}

/// What one worker count on one store gave.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The store.
    pub kind: Kind,
    /// Workers in the process.
    pub workers: usize,
    /// Items reassigned.
    pub items: usize,
    /// Spawn of all workers → all have their first settled set.
    pub first_sync: Result<Duration, String>,
    /// Bulk reassignment start → every worker settled on its new set.
    pub settle: Result<Duration, String>,
    /// How long the bulk writes themselves took.
    pub write: Duration,
    /// The idle window.
    pub idle: Window,
    /// The change window (bulk start → all settled).
    pub change: Window,
    /// The soak.
    pub soak: Duration,
    /// Consul `wait`.
    pub consul_wait: Duration,
}

struct Meter {
    proxy_counts: Counts,
    store_ns: u64,
    client_us: u64,
    at: Instant,
}

impl Meter {
    fn now(proxy: &CountingProxy, pid: u32) -> Self {
        Self {
            proxy_counts: proxy.counts(),
            store_ns: other_process_cpu_ns(pid),
            client_us: process_cpu_us(),
            at: Instant::now(),
        }
    }

    fn window_to(&self, later: &Meter) -> Window {
        let secs = later.at.duration_since(self.at).as_secs_f64();
        Window {
            secs,
            counts: later.proxy_counts.since(self.proxy_counts),
            store_cpu: (later.store_ns - self.store_ns) as f64 / 1e9 / secs,
            client_cpu: (later.client_us - self.client_us) as f64 / 1e6 / secs,
        }
    }
}

fn owner(item: usize, workers: usize, shifted: bool) -> usize {
    (item + usize::from(shifted)) % workers
}

async fn all_settled(
    watches: Vec<(worker_core::WorkloadWatch, BTreeSet<String>)>,
) -> Result<(), String> {
    let mut tasks = Vec::new();
    for (mut watch, target) in watches {
        tasks.push(tokio::spawn(async move {
            loop {
                let current = watch.current();
                if current.ready
                    && current.workload.len() == target.len()
                    && target
                        .iter()
                        .all(|id| current.workload.contains_key(id.as_str()))
                {
                    return true;
                }
                if watch.changed().await.is_err() {
                    return false;
                }
            }
        }));
    }
    for t in tasks {
        if !t.await.unwrap_or(false) {
            return Err("a worker halted".to_owned());
        }
    }
    Ok(())
}

fn targets(workers: usize, items: usize, shifted: bool) -> Vec<BTreeSet<String>> {
    let mut t = vec![BTreeSet::new(); workers];
    for k in 0..items {
        t[owner(k, workers, shifted)].insert(format!("item-{k}"));
    }
    t
}

/// Runs the scenario for one worker count on a fresh store.
#[allow(clippy::too_many_lines)] // One straight sequence of measurements, easier to follow whole.
pub async fn run(kind: Kind, workers: usize, params: &Params, writer_lane: &Lane) -> Outcome {
    eprintln!(
        "[fanout] {kind}: {workers} workers, {} items: starting the store",
        params.items
    );
    let store = Store::start(kind).await;
    let writer = store.writer(writer_lane.clone()).await;
    writer.make_leader().await;
    let key = |member: usize, k: usize| format!("{PREFIX}fw{member}/item-{k}");
    writer
        .bulk(
            (0..params.items)
                .map(|k| Op::Put(key(owner(k, workers, false), k), format!("params-{k}")))
                .collect(),
        )
        .await;
    let (target, protocol) = store.proxy_target();
    let proxy = CountingProxy::start(target, protocol).await;
    let pid = store.pid();
    // One backend shared by all the workers of the process, as an application would.
    let (kv, leader) = store.backend(&proxy.url(), Some(params.consul_wait)).await;
    let mut outcome = Outcome {
        kind,
        workers,
        items: params.items,
        first_sync: Err("not reached".to_owned()),
        settle: Err("not reached".to_owned()),
        write: Duration::ZERO,
        idle: Window::default(),
        change: Window::default(),
        soak: params.soak,
        consul_wait: params.consul_wait,
    };

    let t = Instant::now();
    let handles: Vec<WorkerHandle> = (0..workers)
        .map(|j| {
            let config = WorkerConfig::new(format!("fw{j}"))
                .prefix(PREFIX)
                .soak(params.soak)
                .leader_settle(Duration::ZERO);
            Worker::spawn(&config, kv.clone(), leader.clone()).expect("worker config")
        })
        .collect();
    let initial: Vec<_> = handles
        .iter()
        .map(WorkerHandle::watch)
        .zip(targets(workers, params.items, false))
        .collect();
    match tokio::time::timeout(SYNC_TIMEOUT, all_settled(initial)).await {
        Ok(Ok(())) => outcome.first_sync = Ok(t.elapsed()),
        Ok(Err(e)) => outcome.first_sync = Err(e),
        Err(_) => outcome.first_sync = Err(format!("not within {SYNC_TIMEOUT:?}")),
    }
    eprintln!(
        "[fanout] {kind}: {workers} workers: first sync {:?}",
        outcome.first_sync
    );
    if outcome.first_sync.is_ok() {
        tokio::time::sleep(Duration::from_secs(2)).await;
        eprintln!("[fanout] {kind}: idle for {:?}", params.idle);
        let m0 = Meter::now(&proxy, pid);
        tokio::time::sleep(params.idle).await;
        outcome.idle = m0.window_to(&Meter::now(&proxy, pid));

        let watches: Vec<_> = handles
            .iter()
            .map(WorkerHandle::watch)
            .zip(targets(workers, params.items, true))
            .collect();
        let ops: Vec<Op> = (0..params.items)
            .flat_map(|k| {
                [
                    Op::Del(key(owner(k, workers, false), k)),
                    Op::Put(key(owner(k, workers, true), k), format!("params-{k}")),
                ]
            })
            .collect();
        eprintln!("[fanout] {kind}: reassigning every item");
        let waiter = tokio::spawn(tokio::time::timeout(SYNC_TIMEOUT, all_settled(watches)));
        let m0 = Meter::now(&proxy, pid);
        let t = Instant::now();
        writer.bulk(ops).await;
        outcome.write = t.elapsed();
        let done = waiter.await.expect("waiter");
        let m1 = Meter::now(&proxy, pid);
        outcome.settle = match done {
            Ok(Ok(())) => Ok(m1.at.duration_since(m0.at)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!("not within {SYNC_TIMEOUT:?}")),
        };
        outcome.change = m0.window_to(&m1);
        eprintln!(
            "[fanout] {kind}: {workers} workers: all settled {:?}",
            outcome.settle
        );
    }
    for h in handles {
        h.halt().await;
    }
    drop(proxy);
    drop(store);
    outcome
}

/// The scenario's table, in markdown.
pub fn table(outcomes: &[Outcome]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| store | workers | items moved | first sync of all | bulk writes took | all settled (− soak) | idle: requests/s | idle: per worker per wait | idle: store CPU | change: requests/s | change: store CPU | change: workers' process CPU |"
    );
    let _ = writeln!(
        s,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for o in outcomes {
        let first = o.first_sync.as_ref().map_or_else(
            |e| format!("FAILED: {e}"),
            |d| fmt_ms(d.as_secs_f64() * 1e3),
        );
        let settle = o.settle.as_ref().map_or_else(
            |e| format!("FAILED: {e}"),
            |d| {
                format!(
                    "{} ({})",
                    fmt_ms(d.as_secs_f64() * 1e3),
                    fmt_ms((d.saturating_sub(o.soak)).as_secs_f64() * 1e3)
                )
            },
        );
        let per_wait = match o.kind {
            Kind::Consul => format!(
                "{:.2} (wait {} s)",
                o.idle.counts.requests as f64
                    / o.workers as f64
                    / (o.idle.secs / o.consul_wait.as_secs_f64()),
                o.consul_wait.as_secs()
            ),
            Kind::Etcd => format!(
                "{} requests + {} pings in {:.0} s",
                o.idle.counts.requests, o.idle.counts.pings, o.idle.secs
            ),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {first} | {} | {settle} | {:.1} | {per_wait} | {:.1} % | {:.0} | {:.0} % | {:.0} % |",
            o.kind,
            o.workers,
            o.items,
            fmt_ms(o.write.as_secs_f64() * 1e3),
            o.idle.rps(),
            o.idle.store_cpu * 100.0,
            o.change.rps(),
            o.change.store_cpu * 100.0,
            o.change.client_cpu * 100.0,
        );
    }
    s
}

/// The targets of issue 5 for this scenario.
pub fn verdicts(outcomes: &[Outcome]) -> Vec<String> {
    outcomes
        .iter()
        .filter(|o| o.first_sync.is_ok())
        .map(|o| match o.kind {
            Kind::Consul => {
                let per = o.idle.counts.requests as f64
                    / o.workers as f64
                    / (o.idle.secs / o.consul_wait.as_secs_f64());
                format!(
                    "fan-out Consul {} workers idle: {per:.2} requests per worker per wait period — target ≤ 1: {}",
                    o.workers,
                    if per <= 1.0 { "met" } else { "MISSED" }
                )
            }
            Kind::Etcd => format!(
                "fan-out etcd {} workers idle: {} requests ({:.2}/s) and {} pings in {:.0} s — target no polling: {}",
                o.workers,
                o.idle.counts.requests,
                o.idle.rps(),
                o.idle.counts.pings,
                o.idle.secs,
                if o.idle.counts.requests == 0 { "met" } else { "MISSED" }
            ),
        })
        .collect()
}

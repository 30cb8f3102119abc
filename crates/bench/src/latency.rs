//! Scenario 1: reaction latency of a worker, next to the store's own
//! notification latency for the same PUTs.

use std::fmt::Write as _;
use std::time::Duration;

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use worker_core::{Worker, WorkerConfig};

use crate::measure::{fmt_ms, p50_90_99, wall_ns};
use crate::rt::Lane;
use crate::stores::{Kind, Store};

const PREFIX: &str = "bench/latency/";
const MEMBER: &str = "m1";
/// Items the member holds during the measurement (besides the one being changed).
const BASE_ITEMS: usize = 10;
/// Changes made first and not counted (connections warm, watchers established).
const WARMUP: usize = 5;
/// Longest wait for one observer to see one change.
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings of the latency scenario.
#[derive(Debug, Clone)]
pub struct Params {
    /// Measured PUTs per store and soak.
    pub changes: usize,
    /// Soaks to run with (the reaction is reported minus the soak).
    pub soaks: Vec<Duration>,
}

/// What one store gave.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The store.
    pub kind: Kind,
    /// The soak used by the worker.
    pub soak: Duration,
    /// Worker publication − PUT start − soak, per change (ms).
    pub worker: Vec<f64>,
    /// Bare blocking query / bare watch, per change (ms).
    pub bare: Vec<f64>,
    /// The store's own watcher tool, per change (ms).
    pub native: Vec<f64>,
    /// Worker − bare on the same PUT (ms).
    pub paired_over_bare: Vec<f64>,
    /// Changes an observer missed (timed out).
    pub missed: usize,
}

async fn next_within(rx: &mut UnboundedReceiver<i64>) -> Option<i64> {
    tokio::time::timeout(EVENT_TIMEOUT, rx.recv())
        .await
        .ok()
        .flatten()
}

fn drain(rx: &mut UnboundedReceiver<i64>) {
    while rx.try_recv().is_ok() {}
}

/// Runs the scenario on one store, once per soak.
pub async fn run(
    kind: Kind,
    params: &Params,
    writer_lane: &Lane,
    watch_lane: &Lane,
) -> Vec<Outcome> {
    eprintln!("[latency] {kind}: starting the store");
    let store = Store::start(kind).await;
    let writer = store.writer(writer_lane.clone()).await;
    writer.make_leader().await;
    let member_prefix = format!("{PREFIX}{MEMBER}/");
    for i in 0..BASE_ITEMS {
        writer.put(&format!("{member_prefix}base-{i}"), "p").await;
    }

    let (native_tx, mut native_rx) = unbounded_channel();
    let native = store.native_watch(&member_prefix, watch_lane, native_tx);
    let (bare_tx, mut bare_rx) = unbounded_channel();
    let bare = store.bare_watch(&member_prefix, watch_lane, bare_tx);
    if kind == Kind::Consul {
        // `consul watch` calls its handler once at start with the current state.
        let _ = next_within(&mut native_rx).await;
    }
    // Let `etcdctl watch` and the bare watch be established before the first PUT.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut outcomes = Vec::new();
    for &soak in &params.soaks {
        let (kv, leader) = store.backend(&store.endpoint(), None).await;
        let config = WorkerConfig::new(MEMBER)
            .prefix(PREFIX)
            .soak(soak)
            .leader_settle(Duration::ZERO);
        let worker = Worker::spawn(&config, kv, leader).expect("worker config");
        worker.ready().await.expect("worker ready");
        let mut changes = worker.changes();
        let (pub_tx, mut pub_rx) = unbounded_channel();
        let consumer = tokio::spawn(async move {
            while let Some(change) = changes.next().await {
                let at = wall_ns();
                if !change.initial && pub_tx.send(at).is_err() {
                    return;
                }
            }
        });
        eprintln!(
            "[latency] {kind}: soak {soak:?}: {} changes (+{WARMUP} warm-up)",
            params.changes
        );
        let mut out = Outcome {
            kind,
            soak,
            worker: Vec::new(),
            bare: Vec::new(),
            native: Vec::new(),
            paired_over_bare: Vec::new(),
            missed: 0,
        };
        let soak_ms = soak.as_secs_f64() * 1e3;
        for i in 0..params.changes + WARMUP {
            for rx in [&mut pub_rx, &mut bare_rx, &mut native_rx] {
                drain(rx);
            }
            let key = format!("{member_prefix}item-{i}");
            let start = writer.put(&key, &format!("params-{i}")).await;
            let w = next_within(&mut pub_rx).await;
            let b = next_within(&mut bare_rx).await;
            let n = next_within(&mut native_rx).await;
            if i >= WARMUP {
                let ms = |t: i64| (t - start) as f64 / 1e6;
                match (w, b, n) {
                    (Some(w), Some(b), Some(n)) => {
                        out.worker.push(ms(w) - soak_ms);
                        out.bare.push(ms(b));
                        out.native.push(ms(n));
                        out.paired_over_bare.push(ms(w) - soak_ms - ms(b));
                    }
                    _ => out.missed += 1,
                }
            }
            // Undo the change (not timed) and let every observer see it.
            writer.del(&key).await;
            let _ = next_within(&mut pub_rx).await;
            let _ = next_within(&mut bare_rx).await;
            let _ = next_within(&mut native_rx).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        consumer.abort();
        worker.halt().await;
        outcomes.push(out);
    }
    native.abort();
    bare.abort();
    drop(store);
    outcomes
}

/// The scenario's table, in markdown.
pub fn table(outcomes: &[Outcome]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| store | soak | observer | p50 | p90 | p99 | worker ÷ this (p50) | worker − this (p50 / p99 of pairs) |"
    );
    let _ = writeln!(s, "|---|---:|---|---:|---:|---:|---:|---:|");
    for o in outcomes {
        let w = p50_90_99(&o.worker);
        let b = p50_90_99(&o.bare);
        let n = p50_90_99(&o.native);
        let pairs = p50_90_99(&o.paired_over_bare);
        let (bare_name, native_name) = match o.kind {
            Kind::Consul => ("bare blocking GET", "`consul watch` + handler"),
            Kind::Etcd => ("bare etcd-client watch", "`etcdctl watch`"),
        };
        let soak = format!("{} ms", o.soak.as_millis());
        let n_changes = o.worker.len();
        let _ = writeln!(
            s,
            "| {} | {soak} | **coordinator worker** (publication − soak, n={n_changes}{}) | {} | {} | {} | 1.00 | |",
            o.kind,
            if o.missed > 0 { format!(", {} missed", o.missed) } else { String::new() },
            fmt_ms(w[0]),
            fmt_ms(w[1]),
            fmt_ms(w[2]),
        );
        let _ = writeln!(
            s,
            "| {} | | {bare_name} | {} | {} | {} | {:.2} | {} / {} |",
            o.kind,
            fmt_ms(b[0]),
            fmt_ms(b[1]),
            fmt_ms(b[2]),
            w[0] / b[0],
            fmt_ms(pairs[0]),
            fmt_ms(pairs[2]),
        );
        let _ = writeln!(
            s,
            "| {} | | {native_name} | {} | {} | {} | {:.2} | |",
            o.kind,
            fmt_ms(n[0]),
            fmt_ms(n[1]),
            fmt_ms(n[2]),
            w[0] / n[0],
        );
    }
    s
}

/// One line per store and soak: the targets of issue 5 for this scenario.
pub fn verdicts(outcomes: &[Outcome]) -> Vec<String> {
    let mut v = Vec::new();
    for o in outcomes {
        let w = p50_90_99(&o.worker);
        let b = p50_90_99(&o.bare);
        let n = p50_90_99(&o.native);
        let pairs = p50_90_99(&o.paired_over_bare);
        let over_p99 = w[2] - b[2];
        v.push(format!(
            "latency {} soak {} ms: overhead over bare at p99 = {} (p99 of per-PUT pairs {}) — target ≤ 1 ms: {}; worker p50 {} vs native p50 {} — target no slower: {}",
            o.kind,
            o.soak.as_millis(),
            fmt_ms(over_p99),
            fmt_ms(pairs[2]),
            if over_p99 <= 1.0 { "met" } else { "MISSED" },
            fmt_ms(w[0]),
            fmt_ms(n[0]),
            if w[0] <= n[0] { "met" } else { "MISSED" },
        ));
    }
    v
}

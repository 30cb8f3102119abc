//! Scenario 2: one member holding 1,000 / 10,000 / 100,000 items.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde::Deserialize;
use worker_core::{Changes, Worker, WorkerConfig};

use crate::measure::{fmt_bytes, fmt_ms, fmt_us, process_cpu_us, rss_bytes, thread_cpu_us, Allocs};
use crate::rt::Lane;
use crate::stores::{Kind, Op, Store, Writer};

const PREFIX: &str = "bench/scale/";
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const CHANGE_TIMEOUT: Duration = Duration::from_secs(60);

/// Settings of the scale scenario.
#[derive(Debug, Clone)]
pub struct Params {
    /// Workload sizes.
    pub sizes: Vec<usize>,
    /// Add + remove cycles measured per size on etcd.
    pub etcd_cycles: usize,
    /// Add + remove cycles measured per size on Consul (each answer holds the
    /// whole workload, so fewer at large sizes): `consul_cycles / (size / 1000)`, at least 3.
    pub consul_cycles: usize,
}

/// What one size on one store gave.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The store.
    pub kind: Kind,
    /// Items assigned to the member.
    pub items: usize,
    /// Spawn → first settled set (soak 0), or why it was not reached.
    pub first: Result<Duration, String>,
    /// Worker CPU per single-key change (µs).
    pub cpu_us: f64,
    /// Allocations per single-key change.
    pub allocs: f64,
    /// Bytes allocated per single-key change.
    pub alloc_bytes: f64,
    /// Live heap per assigned item after the first sync (bytes).
    pub heap_per_item: f64,
    /// Resident memory per assigned item after the first sync (bytes).
    pub rss_per_item: f64,
    /// Consul: CPU of decoding the same answer with `serde_json` alone (µs).
    pub serde_us: Option<f64>,
    /// Single-key changes measured.
    pub changes: usize,
}

/// A Consul KV entry as a program would decode it with serde alone.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
#[allow(dead_code)] // Fields are decoded, as a user's program would, not read here.
struct RawPair {
    key: String,
    value: Option<String>,
    flags: u64,
    create_index: u64,
    modify_index: u64,
    lock_index: u64,
    session: Option<String>,
}

async fn next_change(changes: &mut Changes) {
    tokio::time::timeout(CHANGE_TIMEOUT, changes.next())
        .await
        .expect("worker published no change in time")
        .expect("worker halted");
}

/// Cost of the benchmark's own loop (writer + waiting) per single-key change,
/// without any worker: (CPU µs, allocations, bytes).
async fn harness_cost(writer: &Writer, cycles: usize) -> (f64, f64, f64) {
    let key = format!("{PREFIX}none/extra");
    let (c0, l0, a0) = (
        process_cpu_us(),
        writer.lane().cpu_us().await,
        Allocs::now(),
    );
    for _ in 0..cycles {
        writer.put(&key, "x").await;
        writer.del(&key).await;
    }
    let a = Allocs::now().since(a0);
    let cpu = (process_cpu_us() - c0).saturating_sub(writer.lane().cpu_us().await - l0);
    let n = (2 * cycles) as f64;
    (cpu as f64 / n, a.count as f64 / n, a.bytes as f64 / n)
}

/// Runs the scenario on one store.
#[allow(clippy::too_many_lines)] // One straight sequence of measurements, easier to follow whole.
pub async fn run(kind: Kind, params: &Params, writer_lane: &Lane) -> Vec<Outcome> {
    eprintln!("[scale] {kind}: starting the store");
    let store = Store::start(kind).await;
    let writer = store.writer(writer_lane.clone()).await;
    writer.make_leader().await;
    harness_cost(&writer, 20).await; // warm-up
    let base = harness_cost(&writer, 200).await;
    let mut outcomes = Vec::new();
    for &items in &params.sizes {
        let member = format!("s{items}");
        let member_prefix = format!("{PREFIX}{member}/");
        eprintln!("[scale] {kind}: loading {items} items");
        writer
            .bulk(
                (0..items)
                    .map(|k| Op::Put(format!("{member_prefix}item-{k:06}"), format!("params-{k}")))
                    .collect(),
            )
            .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (heap0, rss0) = (Allocs::now().live, rss_bytes());
        let (kv, leader) = store.backend(&store.endpoint(), None).await;
        let config = WorkerConfig::new(&member)
            .prefix(PREFIX)
            .soak(Duration::ZERO)
            .leader_settle(Duration::ZERO);
        let t = Instant::now();
        let worker = Worker::spawn(&config, kv, leader).expect("worker config");
        let ready = tokio::time::timeout(READY_TIMEOUT, worker.ready()).await;
        let first = match ready {
            Ok(Ok(w)) if w.len() == items => Ok(t.elapsed()),
            Ok(Ok(w)) => Err(format!("first set had {} items", w.len())),
            Ok(Err(_)) => Err("worker halted".to_owned()),
            Err(_) => Err(format!(
                "no first set within {READY_TIMEOUT:?} (see the warnings above)"
            )),
        };
        let mut out = Outcome {
            kind,
            items,
            first: first.clone(),
            cpu_us: f64::NAN,
            allocs: f64::NAN,
            alloc_bytes: f64::NAN,
            heap_per_item: f64::NAN,
            rss_per_item: f64::NAN,
            serde_us: None,
            changes: 0,
        };
        if let Err(e) = &first {
            eprintln!("[scale] {kind} {items}: {e}");
            worker.halt().await;
            outcomes.push(out);
            continue;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        out.heap_per_item = (Allocs::now().live - heap0) as f64 / items as f64;
        out.rss_per_item = (rss_bytes() as f64 - rss0 as f64) / items as f64;

        let cycles = match kind {
            Kind::Etcd => params.etcd_cycles,
            Kind::Consul => (params.consul_cycles * 1000 / items.max(1000)).max(3),
        };
        eprintln!(
            "[scale] {kind}: {items} items: first set in {first:?}; {cycles} add/remove cycles"
        );
        let mut changes = worker.changes();
        next_change(&mut changes).await; // the initial item
        let key = format!("{member_prefix}extra");
        for _ in 0..2 {
            writer.put(&key, "x").await;
            next_change(&mut changes).await;
            writer.del(&key).await;
            next_change(&mut changes).await;
        }
        let (c0, l0, a0) = (
            process_cpu_us(),
            writer.lane().cpu_us().await,
            Allocs::now(),
        );
        for _ in 0..cycles {
            writer.put(&key, "x").await;
            next_change(&mut changes).await;
            writer.del(&key).await;
            next_change(&mut changes).await;
        }
        let a = Allocs::now().since(a0);
        let cpu = (process_cpu_us() - c0).saturating_sub(writer.lane().cpu_us().await - l0);
        let n = (2 * cycles) as f64;
        out.changes = 2 * cycles;
        out.cpu_us = (cpu as f64 / n - base.0).max(0.0);
        out.allocs = (a.count as f64 / n - base.1).max(0.0);
        out.alloc_bytes = (a.bytes as f64 / n - base.2).max(0.0);
        drop(changes);
        worker.halt().await;

        if kind == Kind::Consul {
            let body = writer.consul_raw(&member_prefix).await;
            let reps = (200_000 / items).clamp(3, 200);
            let decode = || serde_json::from_slice::<Vec<RawPair>>(&body).expect("decode");
            assert_eq!(decode().len(), items);
            let t0 = thread_cpu_us();
            for _ in 0..reps {
                std::hint::black_box(decode());
            }
            out.serde_us = Some((thread_cpu_us() - t0) as f64 / reps as f64);
        }
        outcomes.push(out);
    }
    drop(store);
    outcomes
}

/// The scenario's table, in markdown.
pub fn table(outcomes: &[Outcome]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| store | items | first settled set (soak 0) | worker CPU / single-key change | allocations / change | bytes allocated / change | live heap / item | RSS / item | `serde_json` decode of the same answer | worker ÷ serde |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for o in outcomes {
        let first = match &o.first {
            Ok(d) => fmt_ms(d.as_secs_f64() * 1e3),
            Err(e) => format!("FAILED: {e}"),
        };
        let (serde, ratio) = match o.serde_us {
            Some(us) => (fmt_us(us), format!("{:.2}", o.cpu_us / us)),
            None => ("—".to_owned(), "—".to_owned()),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {first} | {} (n={}) | {} | {} | {} | {} | {serde} | {ratio} |",
            o.kind,
            o.items,
            fmt_us(o.cpu_us),
            o.changes,
            if o.allocs.is_nan() {
                "n/a".to_owned()
            } else {
                format!("{:.0}", o.allocs)
            },
            fmt_bytes(o.alloc_bytes),
            fmt_bytes(o.heap_per_item),
            fmt_bytes(o.rss_per_item),
        );
    }
    s
}

/// The targets of issue 5 for this scenario.
pub fn verdicts(outcomes: &[Outcome]) -> Vec<String> {
    let mut v = Vec::new();
    let etcd: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.kind == Kind::Etcd && o.first.is_ok())
        .collect();
    if let (Some(small), Some(large)) = (etcd.first(), etcd.last()) {
        if large.items > small.items {
            let growth = large.cpu_us / small.cpu_us;
            v.push(format!(
                "scale etcd: single-key change costs {} at {} items and {} at {} items ({growth:.2}×) — target: does not grow: {}",
                fmt_us(small.cpu_us),
                small.items,
                fmt_us(large.cpu_us),
                large.items,
                if growth <= 1.5 { "met" } else { "MISSED" },
            ));
        }
    }
    for o in outcomes
        .iter()
        .filter(|o| o.kind == Kind::Etcd && o.first.is_err())
    {
        v.push(format!(
            "scale etcd {} items: MISSED, {}",
            o.items,
            o.first.clone().unwrap_err()
        ));
    }
    for o in outcomes.iter().filter(|o| o.kind == Kind::Consul) {
        match (o.serde_us, &o.first) {
            (Some(us), Ok(_)) => {
                let r = o.cpu_us / us;
                v.push(format!(
                    "scale Consul {} items: worker {} per change vs serde_json {} ({r:.2}×) — target ≤ 1.5×: {}",
                    o.items,
                    fmt_us(o.cpu_us),
                    fmt_us(us),
                    if r <= 1.5 { "met" } else { "MISSED" },
                ));
            }
            (_, Err(e)) => v.push(format!("scale Consul {} items: MISSED, {e}", o.items)),
            _ => {}
        }
    }
    v
}

#![allow(missing_docs)] // criterion_group! generates undocumented items.
//! Benchmarks of the `LeaderMachine` at 100,000 items, driven with an explicit `now` as the
//! tests do: (a) one member holds everything and a second joins; (b) 1,000 members hold
//! 100 items each and one more joins. The driver is a model of the store: each `Write` is
//! applied (handoff records get the transaction's position), each `ListHandoffs` is answered,
//! and once the machine is idle the old owners acknowledge the last position.
//!
//! Figures: `ack` is one acknowledgement event (`handle_members` with the new positions, then
//! draining what it asks for: the first assign transaction), `ack (nothing clears)` is an
//! acknowledgement of the joining member while the moves still wait, `write` one applied
//! transaction (`handle_write` and draining), `move` the whole move from the plan
//! (excluded) to the last write. Per-event figures are also printed as mean and max over
//! one whole move.
//!
//! Run: `cargo bench -p kv-coordinator-leader --bench machine` (`-- --quick` for a short run;
//! `MACHINE_BENCH_ONCE=1` prints the figures of one move per case and skips criterion).

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use leader_core::machine::{Action, LeaderMachine, LeaderTiming};
use leader_core::Layout;
use std::time::Instant;
use worker_core::{TxnOp, TxnOutcome};

const ITEMS: usize = 100_000;
const SOAK: Duration = Duration::from_secs(1);
const MAX_OPS: usize = 128;

fn member_id(i: usize) -> String {
    format!("member-{i:04}")
}

/// The store as the bench models it.
struct Store {
    layout: Layout,
    revision: u64,
    /// Handoff records: key -> (value, creation position).
    records: BTreeMap<Vec<u8>, (Bytes, u64)>,
    /// Members: id -> acknowledged position.
    acks: BTreeMap<String, u64>,
    now: Instant,
}

impl Store {
    fn members(&self, m: &mut LeaderMachine) {
        let kv = self.members_picture();
        m.handle_members(self.now, kv.iter().map(|(k, v)| (k.as_slice(), v)));
    }

    /// The members picture as the follower hands it (built outside the
    /// measured calls).
    fn members_picture(&self) -> Vec<(Vec<u8>, Bytes)> {
        self.acks
            .iter()
            .map(|(id, a)| {
                (
                    self.layout.member_key(id).into_bytes(),
                    Bytes::from(format!(r#"{{"weight":1,"acked":{a}}}"#)),
                )
            })
            .collect()
    }

    /// Carries out what the machine asks for until it is idle; returns the
    /// transactions applied and the time each event took.
    fn drain(&mut self, m: &mut LeaderMachine, events: &mut Vec<Duration>) -> usize {
        let mut writes = 0;
        loop {
            let actions: Vec<Action> = std::iter::from_fn(|| m.poll()).collect();
            if actions.is_empty() {
                return writes;
            }
            for a in actions {
                match a {
                    Action::Write(ops) => {
                        self.revision += 1;
                        for op in &ops {
                            if op.key().starts_with(self.layout.handoff.as_str()) {
                                match op {
                                    TxnOp::Put { key, value } => {
                                        self.records.insert(
                                            key.as_bytes().to_vec(),
                                            (value.clone(), self.revision),
                                        );
                                    }
                                    TxnOp::Delete { key } => {
                                        self.records.remove(key.as_bytes());
                                    }
                                    _ => {}
                                }
                            }
                        }
                        writes += 1;
                        let start = std::time::Instant::now();
                        m.handle_write::<()>(
                            self.now,
                            Ok(TxnOutcome::Applied {
                                revision: self.revision,
                            }),
                        );
                        events.push(start.elapsed());
                    }
                    Action::ListHandoffs => {
                        let rec: Vec<(&[u8], &Bytes, u64)> = self
                            .records
                            .iter()
                            .map(|(k, (v, r))| (k.as_slice(), v, *r))
                            .collect();
                        m.handle_handoffs(self.now, rec);
                    }
                    Action::Planned(_) => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
    }
}

/// A machine that leads `members` members holding the 100,000 items evenly
/// (planned, idle), and the store model.
fn settled(members: usize) -> (LeaderMachine, Store) {
    let t0 = Instant::now();
    let layout = Layout::default();
    let mut m = LeaderMachine::new(layout.clone(), LeaderTiming::with_soak(SOAK), MAX_OPS, t0);
    assert_eq!(m.poll(), Some(Action::ListAssignments));
    let mut store = Store {
        layout: layout.clone(),
        revision: 1,
        records: BTreeMap::new(),
        acks: (0..members).map(|i| (member_id(i), 1)).collect(),
        now: t0,
    };
    store.members(&mut m);
    let items: Vec<(Vec<u8>, Bytes)> = (0..ITEMS)
        .map(|i| {
            (
                layout.work_key(&format!("work-{i:07}")).into_bytes(),
                Bytes::from("v"),
            )
        })
        .collect();
    m.handle_items(t0, items.iter().map(|(k, v)| (k.as_slice(), v)));
    let assigned: Vec<(Vec<u8>, Bytes)> = (0..ITEMS)
        .map(|i| {
            let key = layout.assignment_key(&member_id(i % members), &format!("work-{i:07}"));
            (key.into_bytes(), Bytes::from("v"))
        })
        .collect();
    m.handle_assignments(
        t0,
        assigned.iter().map(|(k, v)| (k.as_slice(), v)),
        std::iter::empty(),
    );
    store.now = t0 + SOAK;
    m.handle_timeout(store.now);
    let mut ev = Vec::new();
    store.drain(&mut m, &mut ev);
    assert!(!m.writing(), "settled before the join");
    (m, store)
}

#[derive(Default)]
struct Run {
    join: Duration,
    ack: Duration,
    ack_nothing: Duration,
    writes: Vec<Duration>,
    moved: Duration,
}

/// One member joins a settled cluster of `members`; the move runs to the end.
fn join(members: usize) -> Run {
    let (mut m, mut store) = settled(members);
    let mut run = Run::default();
    store.acks.insert("member-new".to_owned(), 1);
    store.now += Duration::from_secs(1);
    let kv = store.members_picture();
    let t = std::time::Instant::now();
    m.handle_members(store.now, kv.iter().map(|(k, v)| (k.as_slice(), v)));
    let _: Vec<Action> = std::iter::from_fn(|| m.poll()).collect();
    run.join = t.elapsed();
    store.now += SOAK;
    m.handle_timeout(store.now);
    let start = std::time::Instant::now();
    // The revokes.
    store.drain(&mut m, &mut run.writes);
    assert!(m.writing(), "the moves wait for acknowledgements");
    // The new member acknowledges something: nothing clears.
    store.acks.insert("member-new".to_owned(), 2);
    let kv = store.members_picture();
    let t = std::time::Instant::now();
    m.handle_members(store.now, kv.iter().map(|(k, v)| (k.as_slice(), v)));
    let _: Vec<Action> = std::iter::from_fn(|| m.poll()).collect();
    run.ack_nothing = t.elapsed();
    // The old owners acknowledge the last revoke.
    for (id, a) in &mut store.acks {
        if id != "member-new" {
            *a = store.revision;
        }
    }
    let kv = store.members_picture();
    let t = std::time::Instant::now();
    m.handle_members(store.now, kv.iter().map(|(k, v)| (k.as_slice(), v)));
    let first: Vec<Action> = std::iter::from_fn(|| m.poll()).collect();
    run.ack = t.elapsed();
    for a in first {
        m_push(&mut m, &mut store, a, &mut run.writes);
    }
    store.drain(&mut m, &mut run.writes);
    run.moved = start.elapsed();
    assert!(!m.writing(), "the move ends");
    run
}

/// Carries out one action taken from the machine (the first write after the ack).
fn m_push(m: &mut LeaderMachine, store: &mut Store, a: Action, ev: &mut Vec<Duration>) {
    if let Action::Write(ops) = a {
        store.revision += 1;
        for op in &ops {
            if let TxnOp::Delete { key } = op {
                store.records.remove(key.as_bytes());
            }
        }
        let t = std::time::Instant::now();
        m.handle_write::<()>(
            store.now,
            Ok(TxnOutcome::Applied {
                revision: store.revision,
            }),
        );
        ev.push(t.elapsed());
    }
}

fn report(label: &str, runs: &[Run]) {
    let writes: Vec<Duration> = runs.iter().flat_map(|r| r.writes.iter().copied()).collect();
    let mean = writes.iter().sum::<Duration>() / u32::try_from(writes.len().max(1)).unwrap();
    let max = writes.iter().max().copied().unwrap_or_default();
    let n = u32::try_from(runs.len()).unwrap();
    eprintln!(
        "{label}: join (the members event) {:?}, ack {:?}, ack (nothing clears) {:?}, write mean {mean:?} max {max:?} ({} writes per move), whole move {:?} (means over {n} runs)",
        runs.iter().map(|r| r.join).sum::<Duration>() / n,
        runs.iter().map(|r| r.ack).sum::<Duration>() / n,
        runs.iter().map(|r| r.ack_nothing).sum::<Duration>() / n,
        writes.len() / runs.len(),
        runs.iter().map(|r| r.moved).sum::<Duration>() / n,
    );
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("machine");
    g.sample_size(10);
    for (label, members) in [("1to2x100000", 1), ("1000to1001x100000", 1_000)] {
        // One whole move first, with figures per event.
        report(label, &[join(members)]);
        if std::env::var_os("MACHINE_BENCH_ONCE").is_some() {
            continue; // the figures of one move only (e.g. on slow code)
        }
        let mut runs = Vec::new();
        g.bench_function(format!("{label}/ack"), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        let r = join(members);
                        let d = r.ack;
                        runs.push(r);
                        d
                    })
                    .sum()
            });
        });
        g.bench_function(format!("{label}/move"), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| join(members).moved).sum());
        });
        report(label, &runs);
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

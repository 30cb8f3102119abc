//! The leader machine's incremental indexes (owners per item, keys per
//! member, keys the plan does not want, items not in place) against a
//! recomputation from scratch, the slower truth, after every event of random
//! sequences: member changes with acknowledgements, item changes, reads,
//! write outcomes, handoff reads and timeouts.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use leader_core::machine::{Action, LeaderMachine, LeaderTiming};
use leader_core::Layout;
use proptest::prelude::*;
use std::time::Instant;
use worker_core::{TxnOp, TxnOutcome};

#[derive(Debug, Clone)]
enum Event {
    /// Which of 4 members are live (bit mask) and what each acknowledged.
    Members(u8, [u8; 4]),
    /// Which of 8 items exist, and one value byte.
    Items(u8, u8),
    /// A key written by someone else: (member, item).
    Stray(u8, u8),
    /// Time passes (ms).
    Tick(u16),
    /// The outcome of a write in flight: 0..6 applied, 7 conflict, 8 error.
    Outcome(u8),
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        (any::<u8>(), any::<[u8; 4]>()).prop_map(|(m, a)| Event::Members(m, a)),
        (any::<u8>(), 0u8..3).prop_map(|(i, v)| Event::Items(i, v)),
        (0u8..4, 0u8..8).prop_map(|(m, i)| Event::Stray(m, i)),
        (0u16..5000).prop_map(Event::Tick),
        (0u8..9).prop_map(Event::Outcome),
        (0u8..9).prop_map(Event::Outcome),
    ]
}

struct Store {
    layout: Layout,
    revision: u64,
    assignments: BTreeMap<String, Bytes>,
    records: BTreeMap<String, (Bytes, u64)>,
    pending: Option<Vec<TxnOp>>,
    list: bool,
    handoffs: bool,
}

impl Store {
    fn apply(&mut self, ops: &[TxnOp]) {
        self.revision += 1;
        for op in ops {
            let key = op.key().to_owned();
            let handoff = key.starts_with(self.layout.handoff.as_str());
            match op {
                TxnOp::Put { value, .. } if handoff => {
                    self.records.insert(key, (value.clone(), self.revision));
                }
                TxnOp::Put { value, .. } => {
                    self.assignments.insert(key, value.clone());
                }
                TxnOp::Delete { .. } if handoff => {
                    self.records.remove(&key);
                }
                TxnOp::Delete { .. } => {
                    self.assignments.remove(&key);
                }
                _ => {}
            }
        }
    }

    /// Notes what the machine asked for.
    fn take(&mut self, asked: Vec<Action>) {
        for a in asked {
            match a {
                Action::Write(ops) => self.pending = Some(ops),
                Action::ListAssignments => self.list = true,
                Action::ListHandoffs => self.handoffs = true,
                _ => {}
            }
        }
    }

    /// Answers the reads asked for.
    fn answer(&mut self, ms: &mut [LeaderMachine; 2], now: Instant) {
        if std::mem::take(&mut self.list) {
            let kv: Vec<(Vec<u8>, Bytes)> = self
                .assignments
                .iter()
                .map(|(k, v)| (k.clone().into_bytes(), v.clone()))
                .collect();
            let rec: Vec<(Vec<u8>, Bytes, u64)> = self
                .records
                .iter()
                .map(|(k, (v, r))| (k.clone().into_bytes(), v.clone(), *r))
                .collect();
            for m in ms.iter_mut() {
                m.handle_assignments(
                    now,
                    kv.iter().map(|(k, v)| (k.as_slice(), v)),
                    rec.iter().map(|(k, v, r)| (k.as_slice(), v, *r)),
                );
            }
        }
        if std::mem::take(&mut self.handoffs) {
            let rec: Vec<(Vec<u8>, Bytes, u64)> = self
                .records
                .iter()
                .map(|(k, (v, r))| (k.clone().into_bytes(), v.clone(), *r))
                .collect();
            for m in ms.iter_mut() {
                m.handle_handoffs(now, rec.iter().map(|(k, v, r)| (k.as_slice(), v, *r)));
            }
        }
    }
}

#[allow(clippy::too_many_lines)] // One event loop over both machines, easier to follow whole.
fn run(events: &[Event], max_moves: usize, exclusive: bool) {
    let t0 = Instant::now();
    let layout = Layout::default();
    let mut timing = LeaderTiming::with_soak(Duration::from_millis(500));
    timing.max_moves_in_flight = max_moves;
    timing.rebalance_delay = Duration::from_millis(700);
    timing.handoff_timeout = Duration::from_secs(4);
    if exclusive {
        timing.exclusive = Some(Duration::from_millis(200));
        timing.member_ttl = Duration::from_secs(2);
    }
    // The machine under test, and the same taking every members picture
    // whole (the slower truth): they must ask for the same things.
    let mut pair = [
        LeaderMachine::new(layout.clone(), timing, 5, t0),
        LeaderMachine::new(layout.clone(), timing, 5, t0),
    ];
    pair[1].set_whole_pictures(true);
    let mut store = Store {
        layout: layout.clone(),
        revision: 1,
        assignments: BTreeMap::new(),
        records: BTreeMap::new(),
        pending: None,
        list: false,
        handoffs: false,
    };
    let mut now = t0;
    let mut shown: Option<(u64, Vec<String>)> = None;
    {
        let [m, truth] = &mut pair;
        let asked: Vec<Action> = std::iter::from_fn(|| m.poll()).collect();
        let _: Vec<Action> = std::iter::from_fn(|| truth.poll()).collect();
        store.take(asked);
    }
    for e in events {
        match e {
            Event::Members(mask, acks) => {
                let kv: Vec<(Vec<u8>, Bytes)> = (0..4)
                    .filter(|i| mask & (1 << i) != 0)
                    .map(|i| {
                        let value = if acks[i] % 5 == 0 {
                            r#"{"weight":1}"#.to_owned()
                        } else {
                            let a = store.revision.saturating_sub(u64::from(acks[i] % 4));
                            format!(r#"{{"weight":1,"acked":{a},"session":"s{i}"}}"#)
                        };
                        (
                            layout.member_key(&format!("m{i}")).into_bytes(),
                            Bytes::from(value),
                        )
                    })
                    .collect();
                for m in &mut pair {
                    m.handle_members(now, kv.iter().map(|(k, v)| (k.as_slice(), v)));
                }
            }
            Event::Items(mask, value) => {
                let kv: Vec<(Vec<u8>, Bytes)> = (0..8)
                    .filter(|i| mask & (1 << i) != 0)
                    .map(|i| {
                        (
                            layout.work_key(&format!("w{i}")).into_bytes(),
                            Bytes::from(format!("v{}", (i + value) % 3)),
                        )
                    })
                    .collect();
                for m in &mut pair {
                    m.handle_items(now, kv.iter().map(|(k, v)| (k.as_slice(), v)));
                }
            }
            Event::Stray(member, item) => {
                store.assignments.insert(
                    layout.assignment_key(&format!("m{member}"), &format!("w{item}")),
                    Bytes::from("v0"),
                );
                store.revision += 1;
            }
            Event::Tick(ms) => {
                now += Duration::from_millis(u64::from(*ms));
                for m in &mut pair {
                    m.handle_timeout(now);
                }
            }
            Event::Outcome(o) => {
                if let Some(ops) = store.pending.take() {
                    match o {
                        0..=6 => {
                            store.apply(&ops);
                            for m in &mut pair {
                                m.handle_write::<()>(
                                    now,
                                    Ok(TxnOutcome::Applied {
                                        revision: store.revision,
                                    }),
                                );
                            }
                        }
                        7 => {
                            for m in &mut pair {
                                m.handle_write::<()>(now, Ok(TxnOutcome::Conflict));
                            }
                        }
                        _ => {
                            for m in &mut pair {
                                m.handle_write(now, Err::<TxnOutcome, _>("timed out"));
                            }
                        }
                    }
                } else {
                    store.answer(&mut pair, now);
                }
            }
        }
        for m in &pair {
            if let Err(diff) = m.check_indexes() {
                panic!("after {e:?}: {diff}");
            }
        }
        // Both ask for the same; the truth's requests are dropped.
        let [m, truth] = &mut pair;
        let asked: Vec<Action> = std::iter::from_fn(|| m.poll()).collect();
        let truth_asked: Vec<Action> = std::iter::from_fn(|| truth.poll()).collect();
        assert_eq!(
            format!("{asked:?}"),
            format!("{truth_asked:?}"),
            "after {e:?}: what changed and the whole picture ask for different things"
        );
        store.take(asked);
        // The moves in flight never change without a new generation (a
        // driver shows them only when it moves).
        let list: Vec<String> = m.handoffs().map(|(w, f)| format!("{w:?}<-{f:?}")).collect();
        if let Some((generation, before)) = &shown {
            if *generation == m.handoffs_generation() {
                assert_eq!(
                    before, &list,
                    "after {e:?}: moves changed, generation did not"
                );
            }
        }
        shown = Some((m.handoffs_generation(), list));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn indexes_match_a_recomputation(
        events in proptest::collection::vec(event(), 1..120),
        max_moves in prop_oneof![Just(usize::MAX), 1usize..3],
        exclusive in any::<bool>(),
    ) {
        run(&events, max_moves, exclusive);
    }
}

//! Randomized checks of the state machine over generated event sequences.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;
use worker_core::machine::{Action, Machine, Timing};
use worker_core::{KvChange, KvEntry, Leader, Snapshot, WatchEvent, Workload};

#[derive(Debug, Clone)]
enum Ev {
    Put(u8, u8),
    Del(u8),
    Foreign(u8),
    Snap(Vec<(u8, u8)>),
    Advance(u64),
    Leader(Option<u8>),
    KvError,
    LeaderError,
    Lost,
    Halt,
}

fn ev() -> impl Strategy<Value = Ev> {
    prop_oneof![
        6 => (0u8..8, 0u8..3).prop_map(|(k, v)| Ev::Put(k, v)),
        4 => (0u8..8).prop_map(Ev::Del),
        1 => (0u8..4).prop_map(Ev::Foreign),
        2 => proptest::collection::vec((0u8..8, 0u8..3), 0..6).prop_map(Ev::Snap),
        8 => (0u64..1500).prop_map(Ev::Advance),
        2 => proptest::option::weighted(0.7, 0u8..3).prop_map(Ev::Leader),
        1 => Just(Ev::KvError),
        1 => Just(Ev::LeaderError),
        1 => Just(Ev::Lost),
        1 => Just(Ev::Halt),
    ]
}

fn key(k: u8) -> String {
    format!("p/m1/w{k}")
}

fn val(v: u8) -> Bytes {
    Bytes::from(vec![b'a' + v])
}

fn timing() -> Timing {
    Timing {
        soak: Duration::from_millis(500),
        max_soak: Duration::from_secs(2),
        leader_settle: Duration::from_secs(1),
        backoff_min: Duration::from_millis(100),
        backoff_max: Duration::from_secs(2),
    }
}

struct Run {
    m: Machine,
    now: Instant,
    rev: u64,
    /// Every set the machine was shown, as full workloads.
    observed: Vec<Workload>,
    /// The model of the store's contents under the member prefix.
    store: Workload,
    /// The application's view, built only from published changes.
    app: Workload,
    published: usize,
    halted: bool,
}

impl Run {
    fn drain(&mut self) -> Result<(), TestCaseError> {
        while let Some(a) = self.m.poll() {
            if let Action::Publish(c) = a {
                prop_assert!(!self.halted, "published after halt");
                c.apply_to(&mut self.app);
                self.published += 1;
                prop_assert!(
                    self.observed.contains(&self.app),
                    "published a set that was never observed: {:?}",
                    self.app
                );
            }
        }
        Ok(())
    }

    fn observe_store(&mut self) {
        self.observed.push(self.store.clone());
    }

    fn advance(&mut self, d: Duration) -> Result<(), TestCaseError> {
        let end = self.now + d;
        while let Some(t) = self.m.poll_timeout() {
            if t > end {
                break;
            }
            self.now = self.now.max(t);
            self.m.handle_timeout(self.now);
            self.drain()?;
        }
        self.now = end;
        Ok(())
    }

    fn step(&mut self, e: &Ev) -> Result<(), TestCaseError> {
        let now = self.now;
        match e {
            Ev::Put(k, v) => {
                self.rev += 1;
                self.store.insert(format!("w{k}").into(), val(*v));
                self.observe_store();
                self.m.handle_watch(
                    now,
                    WatchEvent::Changes {
                        revision: self.rev,
                        changes: vec![KvChange::Put(KvEntry::new(key(*k), val(*v)))],
                    },
                );
            }
            Ev::Del(k) => {
                self.rev += 1;
                self.store.remove(format!("w{k}").as_str());
                self.observe_store();
                self.m.handle_watch(
                    now,
                    WatchEvent::Changes {
                        revision: self.rev,
                        changes: vec![KvChange::Delete {
                            key: key(*k).into(),
                        }],
                    },
                );
            }
            Ev::Foreign(k) => {
                self.rev += 1;
                let keys = ["p/m10/w", "p/m1/a/b", "p/m1/", "q/m1/w"];
                self.m.handle_watch(
                    now,
                    WatchEvent::Changes {
                        revision: self.rev,
                        changes: vec![KvChange::Put(KvEntry::new(keys[*k as usize], "x"))],
                    },
                );
            }
            Ev::Snap(items) => {
                self.rev += 1;
                self.store = items
                    .iter()
                    .map(|(k, v)| (format!("w{k}").into(), val(*v)))
                    .collect::<BTreeMap<_, _>>();
                self.observe_store();
                let entries = self
                    .store
                    .iter()
                    .map(|(k, v)| KvEntry::new(format!("p/m1/{k}"), v.clone()))
                    .collect();
                self.m.handle_list(
                    now,
                    &Snapshot {
                        revision: self.rev,
                        entries,
                    },
                );
            }
            Ev::Advance(ms) => self.advance(Duration::from_millis(*ms))?,
            Ev::Leader(l) => self.m.handle_leader(
                now,
                l.map(|t| Leader {
                    id: "L".into(),
                    term: u64::from(t),
                    name: None,
                }),
            ),
            Ev::KvError => {
                self.m.handle_kv_error(now);
            }
            Ev::LeaderError => {
                self.m.handle_leader_error(now);
            }
            Ev::Lost => self
                .m
                .handle_watch(now, WatchEvent::Lost { reason: "x".into() }),
            Ev::Halt => {
                self.m.halt();
                self.halted = true;
            }
        }
        self.drain()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10_000, ..ProptestConfig::default() })]

    #[test]
    fn published_sets_were_observed_and_quiet_converges(events in proptest::collection::vec(ev(), 1..60)) {
        let mut r = Run {
            m: Machine::new("p/", "m1", timing(), 3).unwrap(),
            now: Instant::now(),
            rev: 0,
            observed: Vec::new(),
            store: Workload::new(),
            app: Workload::new(),
            published: 0,
            halted: false,
        };
        // The first list.
        r.step(&Ev::Snap(Vec::new()))?;
        for e in &events {
            r.step(e)?;
            if !r.halted {
                prop_assert_eq!(&r.app, &r.m.settled(), "application view and machine disagree");
            }
        }
        if r.halted {
            let before = r.published;
            r.step(&Ev::Put(1, 1))?;
            r.step(&Ev::Leader(Some(0)))?;
            r.advance(Duration::from_secs(60))?;
            prop_assert_eq!(r.published, before, "published after halt");
            return Ok(());
        }
        // A leader present and settled, then a quiet period >= soak: the settled
        // set equals the last observation.
        if r.m.leader().is_none() {
            r.step(&Ev::Leader(Some(0)))?;
        }
        r.advance(timing().leader_settle + timing().backoff_max)?;
        r.advance(timing().soak)?;
        prop_assert!(r.m.is_synced(), "never synced");
        prop_assert_eq!(&r.app, &r.store, "settled set is not the last observation after a quiet period");
    }
}

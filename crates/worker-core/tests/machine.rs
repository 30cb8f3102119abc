//! Pure state-machine tests: one or more per rule of SPEC §2, time advanced by hand.

use std::time::{Duration, Instant};

use bytes::Bytes;
use worker_core::machine::{Action, LeaderPhase, Machine, Timing};
use worker_core::{KvChange, KvEntry, Leader, Snapshot, WatchEvent, WorkloadChange};

const MS: Duration = Duration::from_millis(1);

fn timing() -> Timing {
    Timing {
        soak: 500 * MS,
        max_soak: 5000 * MS,
        leader_settle: 5000 * MS,
        backoff_min: 100 * MS,
        backoff_max: 10_000 * MS,
    }
}

struct T {
    m: Machine,
    now: Instant,
    published: Vec<WorkloadChange>,
    actions: Vec<Action>,
    rev: u64,
}

#[allow(clippy::unnecessary_wraps)] // reads as the input the machine takes
fn leader(id: &str, term: u64) -> Option<Leader> {
    Some(Leader {
        id: id.into(),
        term,
        name: None,
    })
}

fn entries(prefix: &str, ids: &[&str]) -> Vec<KvEntry> {
    ids.iter()
        .map(|id| KvEntry::new(format!("{prefix}{id}"), Bytes::from_static(b"v")))
        .collect()
}

impl T {
    fn new(prefix: &str, id: &str, timing: Timing) -> Self {
        let mut t = Self {
            m: Machine::new(prefix, id, timing, 1).unwrap(),
            now: Instant::now(),
            published: Vec::new(),
            actions: Vec::new(),
            rev: 10,
        };
        t.drain();
        t
    }

    /// A worker with a leader present from the start and the first (empty or
    /// given) list published.
    fn synced(ids: &[&str]) -> Self {
        let mut t = Self::new("p/", "m1", timing());
        t.m.handle_leader(t.now, leader("L", 1));
        t.list(ids);
        t.advance(500 * MS);
        assert_eq!(t.published.len(), 1, "first sync");
        t.published.clear();
        t
    }

    fn drain(&mut self) {
        while let Some(a) = self.m.poll() {
            match a {
                Action::Publish(c) => self.published.push(c),
                other => self.actions.push(other),
            }
        }
    }

    fn list(&mut self, ids: &[&str]) {
        self.rev += 1;
        self.m.handle_list(
            self.now,
            &Snapshot {
                revision: self.rev,
                entries: entries("p/m1/", ids),
            },
        );
        self.drain();
    }

    /// A Consul-style full picture of the member's keys.
    fn see(&mut self, ids: &[&str]) {
        self.rev += 1;
        self.m.handle_watch(
            self.now,
            WatchEvent::Snapshot(Snapshot {
                revision: self.rev,
                entries: entries("p/m1/", ids),
            }),
        );
        self.drain();
    }

    fn put(&mut self, key: &str, value: &'static [u8]) {
        self.rev += 1;
        self.m.handle_watch(
            self.now,
            WatchEvent::Changes {
                revision: self.rev,
                changes: vec![KvChange::Put(KvEntry::new(key, Bytes::from_static(value)))],
            },
        );
        self.drain();
    }

    fn del(&mut self, key: &str) {
        self.rev += 1;
        self.m.handle_watch(
            self.now,
            WatchEvent::Changes {
                revision: self.rev,
                changes: vec![KvChange::Delete { key: key.into() }],
            },
        );
        self.drain();
    }

    /// Advances the clock by `d`, firing every timer on the way in order.
    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        while let Some(t) = self.m.poll_timeout() {
            if t > end {
                break;
            }
            self.now = self.now.max(t);
            self.m.handle_timeout(self.now);
            self.drain();
        }
        self.now = end;
    }

    fn settled_ids(&self) -> Vec<String> {
        self.m.settled().keys().map(ToString::to_string).collect()
    }
}

fn ids(v: &[(worker_core::WorkId, Bytes)]) -> Vec<String> {
    v.iter().map(|(k, _)| k.to_string()).collect()
}

#[test]
fn starts_by_observing_leader_and_listing() {
    let t = T::new("p/", "m1", timing());
    assert_eq!(t.actions, vec![Action::ObserveLeader, Action::List]);
    assert_eq!(t.m.poll_timeout(), None);
}

#[test]
fn first_sync_publishes_empty_set_after_soak() {
    let mut t = T::new("p/", "m1", timing());
    t.m.handle_leader(t.now, leader("L", 1));
    t.list(&[]);
    assert!(t.actions.contains(&Action::Watch { after: 11 }));
    t.advance(499 * MS);
    assert!(t.published.is_empty());
    t.advance(MS);
    assert_eq!(t.published.len(), 1);
    assert!(t.published[0].initial && t.published[0].is_empty());
    assert_eq!(t.published[0].revision, 11);
    assert!(t.m.is_synced());
}

#[test]
fn change_soaks_then_commits() {
    let mut t = T::synced(&["a"]);
    t.see(&["a", "b"]);
    t.advance(499 * MS);
    assert!(t.published.is_empty());
    t.advance(MS);
    assert_eq!(t.published.len(), 1);
    assert_eq!(ids(&t.published[0].added), ["b"]);
    assert!(t.published[0].removed.is_empty());
    assert!(!t.published[0].initial);
}

#[test]
fn new_candidate_restarts_soak_and_newest_wins() {
    let mut t = T::synced(&["a"]);
    t.see(&["a", "b"]);
    t.advance(300 * MS);
    t.see(&["a", "b", "c"]);
    t.advance(300 * MS);
    assert!(
        t.published.is_empty(),
        "soak must restart on a new candidate"
    );
    t.advance(200 * MS);
    assert_eq!(t.published.len(), 1);
    assert_eq!(ids(&t.published[0].added), ["b", "c"]);
}

#[test]
fn flip_back_publishes_nothing() {
    let mut t = T::synced(&["a"]);
    t.see(&["a", "b"]);
    t.advance(200 * MS);
    t.see(&["a"]);
    assert!(!t.m.is_pending(), "flip-back cancels the soak");
    t.advance(10_000 * MS);
    assert!(t.published.is_empty());
    assert_eq!(t.settled_ids(), ["a"]);
}

#[test]
fn flip_back_with_incremental_changes_publishes_nothing() {
    let mut t = T::synced(&["a"]);
    t.put("p/m1/b", b"v");
    t.put("p/m1/a", b"other");
    t.advance(100 * MS);
    t.del("p/m1/b");
    t.put("p/m1/a", b"v");
    t.advance(10_000 * MS);
    assert!(t.published.is_empty());
}

#[test]
fn equal_observation_does_not_extend_soak() {
    let mut t = T::synced(&["a"]);
    t.see(&["a", "b"]);
    t.advance(400 * MS);
    t.see(&["a", "b"]); // Consul answers again with the same set
    t.advance(100 * MS);
    assert_eq!(
        t.published.len(),
        1,
        "an equal observation must not extend the soak"
    );
}

#[test]
fn max_soak_commits_newest_candidate_under_constant_change() {
    // Changes every 100 ms with soak 500 ms: without the cap nothing would commit.
    let mut t = T::synced(&[]);
    let start = t.now;
    let mut n = 0;
    while t.published.is_empty() {
        n += 1;
        let id = format!("w{n}");
        t.put(&format!("p/m1/{id}"), b"v");
        t.advance(100 * MS);
        assert!(n < 1000);
    }
    let c = &t.published[0];
    // Committed at max_soak (5 s) after the first change, with the newest candidate.
    assert_eq!(t.now.duration_since(start), 5000 * MS);
    assert_eq!(
        c.added.len(),
        50,
        "the newest candidate at the cap: {:?}",
        ids(&c.added)
    );
    assert_eq!(c.added.len(), t.m.observed().len());
}

#[test]
fn member_m1_ignores_m10() {
    let mut t = T::synced(&["a"]);
    t.put("p/m10/x", b"v");
    t.put("p/m1x", b"v");
    t.advance(10_000 * MS);
    assert!(t.published.is_empty());
    assert_eq!(t.settled_ids(), ["a"]);
    t.see(&["a"]);
    assert!(!t.m.is_pending());
}

#[test]
fn foreign_keys_are_reported_once_and_ignored() {
    let mut t = T::synced(&[]);
    for _ in 0..3 {
        t.put("p/m1/a/b", b"v");
        t.put("p/m1/", b"v");
    }
    let reported: Vec<_> = t
        .actions
        .iter()
        .filter(|a| matches!(a, Action::IgnoredKey { .. }))
        .collect();
    assert_eq!(reported.len(), 2, "{reported:?}");
    t.advance(10_000 * MS);
    assert!(t.published.is_empty());
}

#[test]
fn prefix_with_regex_metacharacters() {
    let mut m = Machine::new("svc.a+b/(x)/", "m1", timing(), 1).unwrap();
    let now = Instant::now();
    m.handle_leader(now, leader("L", 1));
    m.handle_list(
        now,
        &Snapshot {
            revision: 1,
            entries: vec![
                KvEntry::new("svc.a+b/(x)/m1/w1", "v"),
                KvEntry::new("svcXab/(x)/m1/w2", "v"),
            ],
        },
    );
    m.handle_timeout(now + 500 * MS);
    let published: Vec<_> = std::iter::from_fn(|| m.poll())
        .filter_map(|a| match a {
            Action::Publish(c) => Some(c),
            _ => None,
        })
        .collect();
    assert_eq!(ids(&published[0].added), ["w1"]);
}

#[test]
fn waits_for_leader_then_settle_before_first_commit() {
    let mut t = T::new("p/", "m1", timing());
    t.list(&["a"]);
    t.m.handle_leader(t.now, None);
    t.advance(60_000 * MS);
    assert!(t.published.is_empty(), "no commit without a leader");
    t.m.handle_leader(t.now, leader("L", 1));
    assert!(matches!(t.m.leader_phase(), LeaderPhase::Settling { .. }));
    t.advance(4999 * MS);
    assert!(t.published.is_empty(), "no commit during leader_settle");
    t.advance(MS);
    assert_eq!(t.published.len(), 1);
    assert_eq!(ids(&t.published[0].added), ["a"]);
}

#[test]
fn leader_lost_then_back_holds_commits_until_settled() {
    let mut t = T::synced(&["a"]);
    t.m.handle_leader(t.now, None);
    t.see(&["a", "b"]);
    t.advance(60_000 * MS);
    assert!(t.published.is_empty(), "nothing committed without a leader");
    assert_eq!(
        t.settled_ids(),
        ["a"],
        "settled workload kept while there is no leader"
    );
    t.m.handle_leader(t.now, leader("L2", 2));
    t.advance(4999 * MS);
    assert!(t.published.is_empty());
    t.advance(MS);
    assert_eq!(t.published.len(), 1);
    assert_eq!(ids(&t.published[0].added), ["b"]);
}

#[test]
fn changes_during_settle_soak_from_the_last_change() {
    let mut t = T::synced(&["a"]);
    t.m.handle_leader(t.now, None);
    t.m.handle_leader(t.now, leader("L2", 2));
    t.advance(4800 * MS);
    t.see(&["a", "b"]); // the new leader rewrites assignments
    t.advance(200 * MS); // settle over, but b changed 200 ms ago
    assert!(t.published.is_empty());
    t.advance(300 * MS);
    assert_eq!(t.published.len(), 1);
}

#[test]
fn leader_replaced_applies_settle_again() {
    let mut t = T::synced(&["a"]);
    t.m.handle_leader(t.now, leader("L", 2)); // new term, same id
    t.see(&["a", "b"]);
    t.advance(4999 * MS);
    assert!(t.published.is_empty());
    t.advance(MS);
    assert_eq!(t.published.len(), 1);
}

#[test]
fn same_leader_reported_again_changes_nothing() {
    let mut t = T::synced(&["a"]);
    t.m.handle_leader(t.now, leader("L", 1));
    assert_eq!(t.m.leader_phase(), LeaderPhase::Present);
}

#[test]
fn store_errors_keep_settled_set_and_backoff_grows_then_resets() {
    let mut t = T::synced(&["a", "b"]);
    let mut delays = Vec::new();
    for _ in 0..10 {
        let d = t.m.handle_kv_error(t.now);
        delays.push(d);
        t.advance(d);
        // After each backoff the machine resumes the watch from the last position.
        assert!(
            matches!(t.actions.last(), Some(Action::Watch { after }) if *after == 11),
            "{:?}",
            t.actions.last()
        );
    }
    assert_eq!(delays[0], 100 * MS);
    assert!(
        delays[9] > 1000 * MS && delays[9] <= 10_000 * MS,
        "{delays:?}"
    );
    for (i, d) in delays.iter().enumerate() {
        let cap = (100 * MS * 2u32.pow(i as u32)).min(10_000 * MS);
        assert!(
            *d >= 100 * MS && *d <= cap,
            "delay {i} = {d:?} over cap {cap:?}"
        );
    }
    assert!(t.published.is_empty(), "an outage publishes nothing");
    assert_eq!(t.settled_ids(), ["a", "b"]);
    // Success resets the backoff.
    t.see(&["a", "b"]);
    assert_eq!(t.m.kv_failures(), 0);
    assert_eq!(t.m.handle_kv_error(t.now), 100 * MS);
}

#[test]
fn errors_before_first_list_retry_the_list() {
    let mut t = T::new("p/", "m1", timing());
    t.actions.clear();
    let d = t.m.handle_kv_error(t.now);
    t.advance(d);
    assert_eq!(t.actions, vec![Action::List]);
}

#[test]
fn leader_errors_back_off_and_reobserve_keeping_state() {
    let mut t = T::synced(&["a"]);
    t.actions.clear();
    let d = t.m.handle_leader_error(t.now);
    assert_eq!(
        t.m.leader_phase(),
        LeaderPhase::Present,
        "state kept on error"
    );
    t.advance(d);
    assert_eq!(t.actions, vec![Action::ObserveLeader]);
}

#[test]
fn lost_position_relists_and_converges() {
    let mut t = T::synced(&["a", "b"]);
    t.actions.clear();
    t.m.handle_watch(
        t.now,
        WatchEvent::Lost {
            reason: "compacted".into(),
        },
    );
    t.drain();
    assert_eq!(t.actions, vec![Action::List]);
    t.list(&["b", "c"]);
    t.advance(500 * MS);
    assert_eq!(t.published.len(), 1);
    assert_eq!(ids(&t.published[0].added), ["c"]);
    assert_eq!(
        t.published[0]
            .removed
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["a"]
    );
}

#[test]
fn repeated_lost_positions_back_off() {
    let mut t = T::synced(&[]);
    t.actions.clear();
    t.m.handle_watch(t.now, WatchEvent::Lost { reason: "x".into() });
    t.drain();
    t.list(&[]);
    t.actions.clear();
    t.m.handle_watch(t.now, WatchEvent::Lost { reason: "x".into() });
    t.drain();
    assert!(
        t.actions.is_empty(),
        "second loss in a row must wait: {:?}",
        t.actions
    );
    t.advance(100 * MS);
    assert_eq!(t.actions, vec![Action::List]);
}

/// A watch that is lost again after every relist (e.g. a store that keeps
/// cancelling it) must back off more and more, not relist every `backoff_min`.
#[test]
fn repeated_lost_positions_grow_the_backoff_until_real_progress() {
    let mut t = T::synced(&["a"]);
    t.actions.clear();
    // The first loss relists at once; every later one in the streak waits.
    t.m.handle_watch(t.now, WatchEvent::Lost { reason: "x".into() });
    t.drain();
    assert_eq!(t.actions, vec![Action::List]);
    let mut delays = Vec::new();
    for _ in 0..12 {
        t.actions.clear();
        t.list(&["a"]);
        assert!(matches!(t.actions.as_slice(), [Action::Watch { .. }]));
        t.actions.clear();
        t.m.handle_watch(t.now, WatchEvent::Lost { reason: "x".into() });
        t.drain();
        assert!(t.actions.is_empty(), "{:?}", t.actions);
        let at = t.m.poll_timeout().expect("backing off");
        delays.push(at - t.now);
        t.advance(at - t.now);
        assert_eq!(t.actions, vec![Action::List], "relist after the delay");
    }
    for (i, d) in delays.iter().enumerate() {
        let cap = (100 * MS * 2u32.pow(i as u32)).min(10_000 * MS);
        assert!(
            *d >= 100 * MS && *d <= cap,
            "delay {i} = {d:?} over cap {cap:?}"
        );
    }
    assert!(
        delays[8..].iter().all(|d| *d > 1000 * MS),
        "the backoff grows with the streak: {delays:?}"
    );
    assert!(t.published.is_empty());
    // Real progress (an event on the new watch) resets it.
    t.actions.clear();
    t.list(&["a"]);
    t.put("p/m1/b", b"v");
    assert_eq!(t.m.kv_failures(), 0);
    t.m.handle_watch(t.now, WatchEvent::Lost { reason: "x".into() });
    t.drain();
    assert_eq!(
        t.actions.last(),
        Some(&Action::List),
        "first loss after progress relists at once"
    );
}

#[test]
fn value_change_is_published_as_changed() {
    let mut t = T::synced(&["a"]);
    t.put("p/m1/a", b"new");
    t.advance(500 * MS);
    assert_eq!(ids(&t.published[0].changed), ["a"]);
    assert_eq!(&t.published[0].changed[0].1[..], b"new");
}

#[test]
fn published_revision_is_where_the_set_was_observed() {
    let mut t = T::synced(&[]);
    t.put("p/m1/a", b"v");
    let rev = t.rev;
    t.m.handle_watch(t.now, WatchEvent::Progress { revision: rev + 50 });
    t.advance(500 * MS);
    assert_eq!(t.published[0].revision, rev);
}

#[test]
fn nothing_after_halt() {
    let mut t = T::synced(&["a"]);
    t.see(&["a", "b"]);
    t.m.halt();
    assert_eq!(t.m.poll_timeout(), None);
    t.see(&["a", "b", "c"]);
    t.m.handle_leader(t.now, None);
    t.advance(60_000 * MS);
    t.m.handle_timeout(t.now);
    t.drain();
    assert!(t.published.is_empty());
    assert!(t.m.poll().is_none());
}

#[test]
fn bad_config_is_rejected_with_the_field() {
    let e = Machine::new("p/", "a/b", timing(), 1).unwrap_err();
    assert_eq!(e.field, "instance_id");
    let e = Machine::new(
        "p/",
        "m1",
        Timing {
            max_soak: 10 * MS,
            ..timing()
        },
        1,
    )
    .unwrap_err();
    assert_eq!(e.field, "max_soak");
}

#[test]
fn unsorted_snapshot_answers_are_diffed_correctly() {
    let mut t = T::synced(&["a", "c"]);
    t.see(&["d", "c", "b"]);
    t.advance(500 * MS);
    assert_eq!(ids(&t.published[0].added), ["b", "d"]);
    assert_eq!(
        t.published[0]
            .removed
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["a"]
    );
    t.see(&["c", "d", "b"]);
    assert!(!t.m.is_pending(), "same set in another order is no change");
}

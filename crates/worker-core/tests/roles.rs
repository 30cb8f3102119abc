//! Roles (replicas): the envelope comes off the published values, and role
//! changes are reported as `added_secondaries`, `promoted` and `demoted`.
//! Pure machine tests with time advanced by hand, `then()` coalescing, and
//! the tokio driver on the memory backend with tokio's paused clock.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;
use worker_core::machine::{Action, Machine, Timing};
use worker_core::{
    Envelope, KvChange, KvEntry, Leader, MemoryStore, Role, Snapshot, WatchEvent, WorkId, Worker,
    WorkerConfig, Workload, WorkloadChange,
};

const MS: Duration = Duration::from_millis(1);
const SOAK: Duration = Duration::from_millis(500);

fn timing() -> Timing {
    Timing {
        soak: SOAK,
        max_soak: 10 * SOAK,
        leader_settle: 5000 * MS,
        backoff_min: 100 * MS,
        backoff_max: 10_000 * MS,
    }
}

fn primary(payload: &'static str) -> Bytes {
    Bytes::from_static(payload.as_bytes())
}

fn secondary(payload: &str) -> Bytes {
    Envelope::secondary(payload.as_bytes())
}

fn ids(v: &[WorkId]) -> Vec<&str> {
    v.iter().map(|k| &**k).collect()
}

fn valued(v: &[(WorkId, Bytes)]) -> Vec<(&str, &[u8])> {
    v.iter().map(|(k, b)| (&**k, &b[..])).collect()
}

/// A machine for `m1` under `p/`, with a leader from the start.
struct T {
    m: Machine,
    now: Instant,
    rev: u64,
    published: Vec<WorkloadChange>,
}

impl T {
    /// Synced on `entries` (work id, value), the first publication read.
    fn synced(entries: &[(&str, Bytes)]) -> (Self, WorkloadChange) {
        let mut t = Self {
            m: Machine::new("p/", "m1", timing(), 1).unwrap(),
            now: Instant::now(),
            rev: 10,
            published: Vec::new(),
        };
        t.m.handle_leader(
            t.now,
            Some(Leader {
                id: "L".into(),
                term: 1,
                name: None,
            }),
        );
        t.rev += 1;
        let snapshot = Snapshot {
            revision: t.rev,
            entries: entries
                .iter()
                .map(|(id, v)| KvEntry::new(format!("p/m1/{id}"), v.clone()))
                .collect(),
        };
        t.m.handle_list(t.now, &snapshot);
        t.drain();
        t.advance(SOAK);
        assert_eq!(t.published.len(), 1, "first sync");
        let first = t.published.remove(0);
        assert!(first.initial);
        (t, first)
    }

    fn drain(&mut self) {
        while let Some(a) = self.m.poll() {
            if let Action::Publish(c) = a {
                self.published.push(c);
            }
        }
    }

    fn put(&mut self, id: &str, value: Bytes) {
        self.rev += 1;
        self.m.handle_watch(
            self.now,
            WatchEvent::Changes {
                revision: self.rev,
                changes: vec![KvChange::Put(KvEntry::new(format!("p/m1/{id}"), value))],
            },
        );
        self.drain();
    }

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

    /// The one change published by now.
    fn one(&mut self) -> WorkloadChange {
        assert_eq!(self.published.len(), 1, "{:?}", self.published);
        self.published.remove(0)
    }
}

fn set(ids: &[&str]) -> BTreeSet<WorkId> {
    ids.iter().map(|s| WorkId::from(*s)).collect()
}

#[test]
fn the_first_sync_strips_the_envelope_and_names_the_secondaries() {
    let (t, first) = T::synced(&[("a", primary("pa")), ("b", secondary("pb"))]);
    assert_eq!(valued(&first.added), [("a", &b"pa"[..]), ("b", b"pb")]);
    assert_eq!(ids(&first.added_secondaries), ["b"]);
    assert_eq!(first.added_role("a"), Role::Primary);
    assert_eq!(first.added_role("b"), Role::Secondary);
    assert!(first.promoted.is_empty() && first.demoted.is_empty());
    assert_eq!(t.m.settled().get("b").unwrap(), &Bytes::from_static(b"pb"));
    assert_eq!(t.m.settled_secondaries(), set(&["b"]));
}

#[test]
fn an_item_added_as_a_secondary() {
    let (mut t, _) = T::synced(&[("a", primary("pa"))]);
    t.put("b", secondary("pb"));
    t.advance(499 * MS);
    assert!(t.published.is_empty(), "an addition soaks");
    t.advance(MS);
    let c = t.one();
    assert_eq!(valued(&c.added), [("b", &b"pb"[..])]);
    assert_eq!(ids(&c.added_secondaries), ["b"]);
    assert!(c.changed.is_empty() && c.promoted.is_empty() && c.demoted.is_empty());
    assert!(!c.is_empty());
}

#[test]
fn a_promotion_alone_is_published_at_once_and_is_not_a_value_change() {
    let (mut t, _) = T::synced(&[("a", primary("pa")), ("b", secondary("pb"))]);
    let before = t.m.settled_position().unwrap();
    t.put("b", primary("pb"));
    let c = t.one();
    assert_eq!(ids(&c.promoted), ["b"]);
    assert!(c.demoted.is_empty() && c.added.is_empty() && c.removed.is_empty());
    assert!(c.changed.is_empty(), "the value did not change");
    assert!(!c.is_empty());
    assert_eq!(c.revision, t.rev);
    let after = t.m.settled_position().unwrap();
    assert!(after > before, "the settled position covers the promotion");
    assert_eq!(after, t.rev);
    assert!(t.m.settled_secondaries().is_empty());
}

#[test]
fn a_promotion_publishes_what_else_is_pending_at_once() {
    let (mut t, _) = T::synced(&[("a", primary("pa")), ("b", secondary("pb"))]);
    t.put("c", secondary("pc"));
    t.put("a", secondary("pa"));
    assert_eq!(t.m.settled_position(), None, "a change is pending");
    t.advance(SOAK / 2);
    assert!(t.published.is_empty(), "a demotion and an addition soak");
    t.put("b", primary("pb"));
    let c = t.one();
    assert_eq!(ids(&c.demoted), ["a"]);
    assert_eq!(ids(&c.promoted), ["b"]);
    assert_eq!(valued(&c.added), [("c", &b"pc"[..])]);
    assert_eq!(ids(&c.added_secondaries), ["c"]);
    assert_eq!(t.m.settled_position(), Some(t.rev));
    // A promotion whose value changes too soaks.
    t.put("c", primary("pc2"));
    assert!(t.published.is_empty());
    t.advance(SOAK);
    let c = t.one();
    assert_eq!(ids(&c.promoted), ["c"]);
    assert_eq!(valued(&c.changed), [("c", &b"pc2"[..])]);
}

#[test]
fn a_demotion_with_a_new_value_is_both() {
    let (mut t, _) = T::synced(&[("a", primary("pa"))]);
    t.put("a", secondary("pa2"));
    t.advance(SOAK);
    let c = t.one();
    assert_eq!(ids(&c.demoted), ["a"]);
    assert_eq!(valued(&c.changed), [("a", &b"pa2"[..])]);
    assert!(c.promoted.is_empty() && c.added_secondaries.is_empty());
    assert_eq!(t.m.settled_secondaries(), set(&["a"]));
    assert_eq!(t.m.settled().get("a").unwrap(), &Bytes::from_static(b"pa2"));
}

#[test]
fn a_role_that_flips_back_within_the_soak_publishes_nothing() {
    let (mut t, _) = T::synced(&[("a", primary("pa"))]);
    t.put("a", secondary("pa"));
    t.advance(SOAK / 2);
    t.put("a", primary("pa"));
    t.advance(10 * SOAK);
    assert!(t.published.is_empty(), "{:?}", t.published);
    assert_eq!(t.m.settled_position(), Some(t.rev));
}

#[test]
fn an_envelope_that_says_primary_is_the_bare_value() {
    let (mut t, _) = T::synced(&[("a", primary("pa"))]);
    // The same role and bytes, spelled differently: not a change.
    t.put("a", Bytes::from_static(b"\0coordinator:role=primary\npa"));
    t.advance(10 * SOAK);
    assert!(t.published.is_empty(), "{:?}", t.published);
    assert_eq!(t.m.settled_position(), Some(t.rev));
}

fn change(f: impl FnOnce(&mut WorkloadChange)) -> WorkloadChange {
    let mut c = WorkloadChange::default();
    f(&mut c);
    c
}

fn id(s: &str) -> WorkId {
    WorkId::from(s)
}

fn v(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

/// Applies `changes` in order to a workload and its secondaries.
fn apply(
    start: &(Workload, BTreeSet<WorkId>),
    changes: &[&WorkloadChange],
) -> (Workload, BTreeSet<WorkId>) {
    let (mut w, mut s) = start.clone();
    for c in changes {
        c.apply_to(&mut w);
        c.apply_roles_to(&mut s);
    }
    (w, s)
}

#[test]
fn then_coalesces_roles() {
    let start: (Workload, BTreeSet<WorkId>) = (
        [(id("p"), v("1")), (id("s"), v("1")), (id("r"), v("1"))]
            .into_iter()
            .collect(),
        set(&["s", "r"]),
    );
    // Promotion then demotion: back where it was, nothing left.
    let a = change(|c| c.promoted = vec![id("s")]);
    let b = change(|c| c.demoted = vec![id("s")]);
    let ab = a.clone().then(b.clone());
    assert!(ab.is_empty(), "{ab:?}");
    assert_eq!(apply(&start, &[&ab]), apply(&start, &[&a, &b]));

    // Added as a secondary, then promoted: added as a primary.
    let a = change(|c| {
        c.added = vec![(id("n"), v("1"))];
        c.added_secondaries = vec![id("n")];
    });
    let b = change(|c| c.promoted = vec![id("n")]);
    let ab = a.clone().then(b.clone());
    assert_eq!(ab.added.len(), 1);
    assert!(
        ab.added_secondaries.is_empty() && ab.promoted.is_empty(),
        "{ab:?}"
    );
    assert_eq!(apply(&start, &[&ab]), apply(&start, &[&a, &b]));

    // Added as a primary, then demoted: added as a secondary.
    let b = change(|c| c.demoted = vec![id("n")]);
    let a = change(|c| c.added = vec![(id("n"), v("1"))]);
    let ab = a.clone().then(b.clone());
    assert_eq!(ids(&ab.added_secondaries), ["n"]);
    assert!(ab.demoted.is_empty(), "{ab:?}");
    assert_eq!(apply(&start, &[&ab]), apply(&start, &[&a, &b]));

    // A value change, then a promotion: both.
    let a = change(|c| c.changed = vec![(id("r"), v("2"))]);
    let b = change(|c| c.promoted = vec![id("r")]);
    let ab = a.clone().then(b.clone());
    assert_eq!(valued(&ab.changed), [("r", &b"2"[..])]);
    assert_eq!(ids(&ab.promoted), ["r"]);
    assert_eq!(apply(&start, &[&ab]), apply(&start, &[&a, &b]));

    // Demoted, then removed: removed.
    let a = change(|c| c.demoted = vec![id("p")]);
    let b = change(|c| c.removed = vec![id("p")]);
    let ab = a.clone().then(b.clone());
    assert_eq!(ids(&ab.removed), ["p"]);
    assert!(ab.demoted.is_empty(), "{ab:?}");
    assert_eq!(apply(&start, &[&ab]), apply(&start, &[&a, &b]));

    // Removed, then added back as a secondary, then promoted: the role it
    // had before is unknown to `then`, so the result names the final role.
    let a = change(|c| c.removed = vec![id("s")]);
    let b = change(|c| {
        c.added = vec![(id("s"), v("3"))];
        c.added_secondaries = vec![id("s")];
    });
    let d = change(|c| c.promoted = vec![id("s")]);
    let abd = a.clone().then(b.clone()).then(d.clone());
    assert_eq!(ids(&abd.promoted), ["s"]);
    assert_eq!(valued(&abd.changed), [("s", &b"3"[..])]);
    assert_eq!(apply(&start, &[&abd]), apply(&start, &[&a, &b, &d]));
    let ab = a.clone().then(b.clone());
    assert_eq!(ids(&ab.demoted), ["s"]);
    assert_eq!(apply(&start, &[&ab]), apply(&start, &[&a, &b]));
    // And from a base where it was a primary.
    let a = change(|c| c.removed = vec![id("p")]);
    let b = change(|c| c.added = vec![(id("p"), v("1"))]);
    let e = change(|c| c.demoted = vec![id("p")]);
    let abe = a.clone().then(b.clone()).then(e.clone());
    assert_eq!(ids(&abe.demoted), ["p"]);
    assert_eq!(apply(&start, &[&abe]), apply(&start, &[&a, &b, &e]));

    // Role lists of several changes come out sorted.
    let a = change(|c| c.demoted = vec![id("p")]);
    let b = change(|c| c.promoted = vec![id("r"), id("s")]);
    let ab = a.clone().then(b.clone());
    assert_eq!(ids(&ab.promoted), ["r", "s"]);
    assert_eq!(ids(&ab.demoted), ["p"]);
    assert_eq!(apply(&start, &[&ab]), apply(&start, &[&a, &b]));
}

#[test]
fn a_role_flip_back_with_a_value_change_reports_the_final_role() {
    let start: (Workload, BTreeSet<WorkId>) =
        ([(id("s"), v("1"))].into_iter().collect(), set(&["s"]));
    let a = change(|c| {
        c.changed = vec![(id("s"), v("2"))];
        c.promoted = vec![id("s")];
    });
    let b = change(|c| c.demoted = vec![id("s")]);
    let ab = a.clone().then(b.clone());
    assert_eq!(valued(&ab.changed), [("s", &b"2"[..])]);
    assert_eq!(ids(&ab.demoted), ["s"]);
    assert_eq!(apply(&start, &[&ab]), apply(&start, &[&a, &b]));
}

/// The change from `a` to `b`, values and roles, as the worker publishes it.
fn diff(
    a: &(Workload, BTreeSet<WorkId>),
    b: &(Workload, BTreeSet<WorkId>),
    revision: u64,
) -> WorkloadChange {
    let mut c = WorkloadChange::default();
    c.revision = revision;
    for (id, v) in &b.0 {
        let secondary = b.1.contains(id);
        match a.0.get(id) {
            None => {
                c.added.push((id.clone(), v.clone()));
                if secondary {
                    c.added_secondaries.push(id.clone());
                }
            }
            Some(old) => {
                if old != v {
                    c.changed.push((id.clone(), v.clone()));
                }
                match (a.1.contains(id), secondary) {
                    (true, false) => c.promoted.push(id.clone()),
                    (false, true) => c.demoted.push(id.clone()),
                    _ => {}
                }
            }
        }
    }
    c.removed =
        a.0.keys()
            .filter(|id| !b.0.contains_key(*id))
            .cloned()
            .collect();
    c
}

fn state(items: &std::collections::BTreeMap<u8, (u8, bool)>) -> (Workload, BTreeSet<WorkId>) {
    let w = items
        .iter()
        .map(|(k, (v, _))| (WorkId::from(format!("w{k}")), Bytes::from(vec![*v])))
        .collect();
    let s = items
        .iter()
        .filter(|(_, (_, sec))| *sec)
        .map(|(k, _)| WorkId::from(format!("w{k}")))
        .collect();
    (w, s)
}

fn sorted(v: &[WorkId]) -> bool {
    v.windows(2).all(|w| w[0] < w[1])
}

proptest! {
    /// Coalescing with `then`, folded from the left or from the right, and
    /// applied to the start, ends where applying each change in order ends.
    #[test]
    fn then_composes_roles(states in prop::collection::vec(
        prop::collection::btree_map(0u8..5, (0u8..2, any::<bool>()), 0..5), 2..8)) {
        let states: Vec<_> = states.iter().map(state).collect();
        let changes: Vec<WorkloadChange> = states
            .windows(2)
            .enumerate()
            .map(|(i, w)| diff(&w[0], &w[1], i as u64 + 1))
            .collect();
        let refs: Vec<&WorkloadChange> = changes.iter().collect();
        let last = states.last().expect("last").clone();
        prop_assert_eq!(&apply(&states[0], &refs), &last);
        let left = changes.iter().cloned().reduce(WorkloadChange::then).expect("one");
        let right = changes
            .iter()
            .rev()
            .cloned()
            .reduce(|later, earlier| earlier.then(later))
            .expect("one");
        for composed in [&left, &right] {
            prop_assert_eq!(&apply(&states[0], &[composed]), &last, "{:?}", composed);
            prop_assert!(sorted(&composed.promoted) && sorted(&composed.demoted));
            prop_assert!(sorted(&composed.added_secondaries));
            prop_assert!(composed.added_secondaries.iter().all(|s| composed.added.iter().any(|(a, _)| a == s)));
        }
        // Without a change of value in between, a role that goes back and
        // forth comes out as nothing.
        if states.iter().all(|s| s.0 == states[0].0) && last == states[0] {
            prop_assert!(left.is_empty(), "{:?}", left);
        }
    }
}

#[test]
fn is_empty_counts_roles() {
    assert!(WorkloadChange::default().is_empty());
    assert!(!change(|c| c.promoted = vec![id("a")]).is_empty());
    assert!(!change(|c| c.demoted = vec![id("a")]).is_empty());
}

// ----- the tokio driver -----

const P: &str = "svc/assignments/";

fn worker(store: &MemoryStore) -> (worker_core::WorkerHandle, worker_core::ReleaseSwitch) {
    let config = WorkerConfig::new("m1").prefix(P);
    Worker::spawn_with_switch(&config, Arc::new(store.clone()), Arc::new(store.clone()), 5).unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_key_switching_roles_is_published_and_acknowledged() {
    let store = MemoryStore::new();
    store.set_leader("L");
    store.put(format!("{P}m1/a"), "pa");
    store.put(format!("{P}m1/b"), secondary("pb"));
    let (w, switch) = worker(&store);
    let mut changes = w.changes();
    let first = changes.next().await.unwrap();
    assert_eq!(valued(&first.added), [("a", &b"pa"[..]), ("b", b"pb")]);
    assert_eq!(ids(&first.added_secondaries), ["b"]);
    assert_eq!(*w.secondaries(), set(&["b"]));
    assert_eq!(w.workload()["b"], Bytes::from_static(b"pb"));
    let mut position = w.position();
    position.wait_for(|p| *p == store.revision()).await.unwrap();

    // a is demoted, then b promoted, in one write each: the promotion is
    // published at once, with the demotion.
    let t0 = tokio::time::Instant::now();
    store.put(format!("{P}m1/a"), secondary("pa"));
    let promoted_at = store.put(format!("{P}m1/b"), "pb");
    let c = changes.next().await.unwrap();
    assert_eq!(t0.elapsed(), Duration::ZERO, "a promotion does not soak");
    assert_eq!(ids(&c.promoted), ["b"]);
    assert_eq!(ids(&c.demoted), ["a"]);
    assert!(c.added.is_empty() && c.removed.is_empty() && c.changed.is_empty());
    assert_eq!(c.revision, promoted_at);
    assert_eq!(*w.secondaries(), set(&["a"]));
    assert_eq!(w.workload()["a"], Bytes::from_static(b"pa"), "no envelope");
    assert_eq!(*w.observer().secondaries(), set(&["a"]));
    position.wait_for(|p| *p == promoted_at).await.unwrap();

    // A new subscriber's first change holds the roles too.
    let mut late = w.changes();
    let init = late.next().await.unwrap();
    assert!(init.initial);
    assert_eq!(ids(&init.added_secondaries), ["a"]);

    // A release drops everything, secondaries included.
    w.release();
    let c = changes.next().await.unwrap();
    assert_eq!(ids(&c.removed), ["a", "b"]);
    assert!(w.workload().is_empty() && w.secondaries().is_empty());
    // And a restore brings them back with their roles.
    switch.restore(false);
    let c = changes.next().await.unwrap();
    assert_eq!(valued(&c.added), [("a", &b"pa"[..]), ("b", b"pb")]);
    assert_eq!(ids(&c.added_secondaries), ["a"]);
    assert_eq!(*w.secondaries(), set(&["a"]));
    w.halt().await;
}

//! The leader machine with an explicit `now`: soak, revoke-first writes
//! split to the store's limit, retries, fencing, and continuing from what a
//! previous leader wrote.
#![allow(clippy::unchecked_time_subtraction)] // instants of a test run, far above any subtracted duration

use std::time::Duration;

use bytes::Bytes;
use leader_core::machine::{Action, LeaderMachine, LeaderTiming};
use leader_core::{Layout, LeaderRead};
use std::time::Instant;
use worker_core::{KvEntry, TxnOp, TxnOutcome};

const SOAK: Duration = Duration::from_secs(3);

fn kv(pairs: &[(&str, &str)]) -> Vec<(Vec<u8>, Bytes)> {
    pairs
        .iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), Bytes::from(v.to_string())))
        .collect()
}

fn feed(
    m: &mut LeaderMachine,
    now: Instant,
    members: &[&str],
    items: usize,
    assignments: &[(&str, &str)],
) {
    let members: Vec<(String, String)> = members
        .iter()
        .map(|id| (format!("service/coordinator/members/{id}"), "{}".to_owned()))
        .collect();
    let members: Vec<(&str, &str)> = members
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let items: Vec<(String, String)> = (0..items)
        .map(|i| (format!("service/coordinator/work/w{i:02}"), format!("v{i}")))
        .collect();
    let items: Vec<(&str, &str)> = items
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let a: Vec<(String, String)> = assignments
        .iter()
        .map(|(m, w)| {
            (
                format!("service/coordinator/assignments/{m}/{w}"),
                "v".to_owned(),
            )
        })
        .collect();
    let a: Vec<(&str, &str)> = a.iter().map(|(x, y)| (x.as_str(), y.as_str())).collect();
    let (mk, ik, ak) = (kv(&members), kv(&items), kv(&a));
    m.handle_members(now, mk.iter().map(|(k, v)| (k.as_slice(), v)));
    m.handle_items(now, ik.iter().map(|(k, v)| (k.as_slice(), v)));
    m.handle_assignments(
        now,
        ak.iter().map(|(k, v)| (k.as_slice(), v)),
        std::iter::empty(),
    );
}

/// Answers a read with `members` and what the machine believes is in the
/// store.
fn answer_as_believed(m: &mut LeaderMachine, now: Instant, members: &[(Vec<u8>, Bytes)]) {
    let layout = Layout::default();
    let believed: Vec<(Vec<u8>, Bytes)> = m
        .assignment()
        .expect("read before")
        .iter()
        .map(|((member, work), v)| (layout.assignment_key(member, work).into_bytes(), v.clone()))
        .collect();
    let seq = m.sequence();
    m.handle_read(
        now,
        &leader_core::LeaderRead {
            members: members
                .iter()
                .map(|(k, v)| worker_core::KvEntry::new(k.clone(), v.clone()))
                .collect(),
            assignments: believed
                .into_iter()
                .map(|(k, v)| worker_core::KvEntry::new(k, v))
                .collect(),
            records: Vec::new(),
            sequence: seq,
        },
    );
}

fn drain(m: &mut LeaderMachine) -> Vec<Action> {
    std::iter::from_fn(|| m.poll()).collect()
}

/// The transactions written, without their sequence check (which every
/// one carries first; see `every_write_carries_the_sequence_check`).
fn writes(actions: &[Action]) -> Vec<Vec<TxnOp>> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Write(ops) => {
                assert!(
                    matches!(ops.first(), Some(TxnOp::Sequence { .. })),
                    "no sequence check first: {ops:?}"
                );
                Some(ops[1..].to_vec())
            }
            _ => None,
        })
        .collect()
}

/// A new machine whose first action (read the assignments) is taken.
fn machine(now: Instant, max_ops: usize) -> LeaderMachine {
    let mut m = LeaderMachine::new(
        Layout::default(),
        LeaderTiming::with_soak(SOAK),
        max_ops,
        now,
    );
    assert_eq!(drain(&mut m), vec![Action::ListAssignments]);
    m
}

#[test]
fn the_assignments_are_read_on_taking_office_and_again_after_a_failed_read() {
    let t0 = Instant::now();
    let mut m = machine(t0, 64);
    let members: Vec<(Vec<u8>, Bytes)> = kv(&[("service/coordinator/members/m1", "{}")]);
    let items: Vec<(Vec<u8>, Bytes)> = kv(&[("service/coordinator/work/w1", "v")]);
    m.handle_members(t0, members.iter().map(|(k, v)| (k.as_slice(), v)));
    m.handle_items(t0, items.iter().map(|(k, v)| (k.as_slice(), v)));
    // The read fails: read again after the backoff (100 ms the first time).
    let delay = m.handle_assignments_error(t0).expect("a read was awaited");
    assert_eq!(delay, Duration::from_millis(100));
    assert_eq!(m.handle_assignments_error(t0), None, "no read in flight");
    assert_eq!(m.poll_timeout(), Some(t0 + delay));
    m.handle_timeout(t0 + delay.saturating_sub(Duration::from_millis(1)));
    assert!(drain(&mut m).is_empty());
    m.handle_timeout(t0 + delay);
    assert_eq!(drain(&mut m), vec![Action::ListAssignments]);
    // Failing again backs off longer (jittered between the floor and 200 ms).
    let t1 = t0 + delay;
    let second = m.handle_assignments_error(t1).expect("a read was awaited");
    assert!(second >= Duration::from_millis(100) && second <= Duration::from_millis(200));
    m.handle_timeout(t1 + second);
    assert_eq!(drain(&mut m), vec![Action::ListAssignments]);
    // Read at last: no more retries; the plan comes after the soak.
    let t2 = t1 + second;
    m.handle_assignments(t2, std::iter::empty(), std::iter::empty());
    assert_eq!(m.poll_timeout(), Some(t2 + SOAK));
    m.handle_timeout(t2 + SOAK);
    let actions = drain(&mut m);
    assert!(
        matches!(actions.first(), Some(Action::Planned(r)) if r.placed == 1),
        "{actions:?}"
    );
    assert!(!actions.contains(&Action::ListAssignments));
}

#[test]
fn plans_only_after_the_soak_and_once_everything_is_read() {
    let t0 = Instant::now();
    let mut m = machine(t0, 64);
    assert_eq!(m.poll_timeout(), None, "nothing read yet: no deadline");
    feed(&mut m, t0, &["m1", "m2", "m3"], 30, &[]);
    assert_eq!(m.poll_timeout(), Some(t0 + SOAK));
    m.handle_timeout(t0 + SOAK.saturating_sub(Duration::from_millis(1)));
    assert!(drain(&mut m).is_empty(), "nothing before the soak is over");
    // A change restarts the soak.
    let t1 = t0 + Duration::from_secs(2);
    feed(&mut m, t1, &["m1", "m2", "m3", "m4"], 30, &[]);
    assert_eq!(m.poll_timeout(), Some(t1 + SOAK));
    m.handle_timeout(t1 + SOAK);
    let actions = drain(&mut m);
    let Some(Action::Planned(report)) = actions.first() else {
        panic!("expected a plan first: {actions:?}");
    };
    assert_eq!(report.items, 30);
    assert_eq!(report.members, 4);
    assert_eq!(report.placed, 30);
    assert_eq!(report.moved, 0);
    assert_eq!(report.puts, 30);
    assert_eq!(writes(&actions).len(), 1, "one transaction at a time");
}

#[test]
fn changes_that_never_stop_are_planned_at_max_soak() {
    let t0 = Instant::now();
    let mut m = machine(t0, 64);
    let mut now = t0;
    for i in 0..40 {
        now = t0 + Duration::from_secs(i);
        feed(&mut m, now, &["m1"], usize::try_from(i).unwrap() + 1, &[]);
        m.handle_timeout(now);
        if drain(&mut m)
            .iter()
            .any(|a| matches!(a, Action::Planned(_)))
        {
            assert_eq!(now, t0 + SOAK * 10, "planned at max_soak");
            return;
        }
    }
    panic!("never planned while changes kept coming (last {now:?})");
}

#[test]
fn writes_go_revoke_first_in_chunks_of_the_store_limit() {
    let t0 = Instant::now();
    let mut m = machine(t0, 4);
    // m1 holds w00..w09; m2 joins: 5 move (revoke from m1, put on m2).
    let held: Vec<(String, String)> = (0..10)
        .map(|i| ("m1".to_owned(), format!("w{i:02}")))
        .collect();
    let held: Vec<(&str, &str)> = held.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    feed(&mut m, t0, &["m1", "m2"], 10, &held);
    m.handle_timeout(t0 + SOAK);
    let mut all = Vec::new();
    let mut now = t0 + SOAK;
    let actions = drain(&mut m);
    let Some(Action::Planned(report)) = actions.first() else {
        panic!("no plan: {actions:?}");
    };
    assert_eq!(report.moved, 5);
    assert_eq!(report.min_moves, 5);
    let mut pending = writes(&actions);
    while let Some(chunk) = pending.pop() {
        assert!(chunk.len() <= 4, "chunk over the limit: {chunk:?}");
        all.push(chunk);
        now += Duration::from_millis(10);
        m.handle_write(now, Ok::<_, ()>(TxnOutcome::Applied { revision: 1 }));
        pending = writes(&drain(&mut m));
    }
    let ops: Vec<&TxnOp> = all.iter().flatten().collect();
    let last_delete = ops
        .iter()
        .rposition(|o| matches!(o, TxnOp::Delete { .. }))
        .unwrap();
    let first_put = ops
        .iter()
        .position(|o| matches!(o, TxnOp::Put { .. }))
        .unwrap();
    assert!(
        last_delete < first_put,
        "every revoke before any assign: {ops:?}"
    );
    // The item values are the items' (the puts copy "v<i>", the old keys had "v").
    let puts = ops
        .iter()
        .filter(|o| matches!(o, TxnOp::Put { .. }))
        .count();
    assert_eq!(
        puts, 10,
        "5 moved + 5 kept whose value differs from the item's"
    );
    assert!(!m.writing());
    // Planning again on the written state moves nothing.
    let a = m.assignment().unwrap().clone();
    let mut again = machine(now, 4);
    let pairs: Vec<(String, String)> = a
        .keys()
        .map(|(mm, w)| (mm.to_string(), w.to_string()))
        .collect();
    let pairs: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(x, y)| (x.as_str(), y.as_str()))
        .collect();
    feed(&mut again, now, &["m1", "m2"], 10, &pairs);
    again.handle_timeout(now + SOAK);
    let actions = drain(&mut again);
    let Some(Action::Planned(r)) = actions.first() else {
        panic!("{actions:?}")
    };
    assert_eq!(
        (r.moved, r.placed, r.revokes),
        (0, 0, 0),
        "a new leader moves nothing: {r:?}"
    );
}

#[test]
fn a_failed_write_reads_the_store_again_after_a_backoff_and_a_fenced_one_steps_down() {
    let t0 = Instant::now();
    let mut m = machine(t0, 64);
    feed(&mut m, t0, &["m1"], 3, &[]);
    m.handle_timeout(t0 + SOAK);
    let first = writes(&drain(&mut m));
    assert_eq!(first.len(), 1);
    let t1 = t0 + SOAK;
    m.handle_write(t1, Err::<TxnOutcome, _>("connection reset"));
    let retry = m.poll_timeout().expect("a retry deadline");
    assert!(
        retry >= t1 + Duration::from_millis(100) && retry <= t1 + Duration::from_secs(1),
        "{retry:?}"
    );
    m.handle_timeout(retry);
    // The outcome is unknown: the store is read again, then the difference
    // is written (here nothing had been applied: the same puts).
    assert_eq!(drain(&mut m), vec![Action::ListAssignments]);
    m.handle_assignments(retry, std::iter::empty(), std::iter::empty());
    assert_eq!(writes(&drain(&mut m)), first, "the same transaction again");
    m.handle_write(retry, Ok::<_, ()>(TxnOutcome::Fenced));
    assert_eq!(drain(&mut m), vec![Action::StepDown]);
    assert!(m.stepped_down());
    assert_eq!(m.poll_timeout(), None);
    feed(&mut m, retry, &["m1", "m2"], 5, &[]);
    m.handle_timeout(retry + SOAK * 20);
    assert!(drain(&mut m).is_empty(), "nothing after stepping down");
}

#[test]
fn duplicate_owners_and_bad_keys_are_cleaned_up_or_skipped_once() {
    let t0 = Instant::now();
    let mut m = machine(t0, 64);
    // w00 under two members (a broken earlier writer), one key for a dead member.
    feed(
        &mut m,
        t0,
        &["m1", "m2"],
        2,
        &[("m1", "w00"), ("m2", "w00"), ("gone", "w01")],
    );
    let bad = kv(&[
        ("service/coordinator/work/a/b", "x"),
        ("service/coordinator/work/w00", "v0"),
    ]);
    m.handle_items(t0, bad.iter().map(|(k, v)| (k.as_slice(), v)));
    m.handle_items(t0, bad.iter().map(|(k, v)| (k.as_slice(), v)));
    m.handle_timeout(t0 + SOAK);
    let actions = drain(&mut m);
    let bad_keys: Vec<_> = actions
        .iter()
        .filter(|a| matches!(a, Action::BadKey { .. }))
        .collect();
    assert_eq!(bad_keys.len(), 1, "reported once: {actions:?}");
    let ops: Vec<TxnOp> = writes(&actions).into_iter().flatten().collect();
    let deletes: Vec<&str> = ops
        .iter()
        .filter_map(|o| match o {
            TxnOp::Delete { key } => Some(key.as_str()),
            TxnOp::Put { .. } | TxnOp::Absent { .. } | TxnOp::Sequence { .. } => None,
        })
        .collect();
    assert!(
        deletes.contains(&"service/coordinator/assignments/gone/w01"),
        "{ops:?}"
    );
    assert_eq!(
        deletes.iter().filter(|k| k.ends_with("/w00")).count(),
        1,
        "one of the two owners of w00 is revoked: {ops:?}"
    );
}

#[test]
fn a_member_back_within_the_rebalance_delay_moves_nothing() {
    const DELAY: Duration = Duration::from_secs(30);
    let t0 = Instant::now();
    let timing = {
        let mut t = LeaderTiming::with_soak(SOAK);
        t.rebalance_delay = DELAY;
        t
    };
    let mut m = LeaderMachine::new(Layout::default(), timing, 64, t0);
    assert_eq!(drain(&mut m), vec![Action::ListAssignments]);
    let held: Vec<(String, String)> = (0..6)
        .map(|i| {
            (
                if i % 2 == 0 { "m1" } else { "m2" }.to_owned(),
                format!("w{i:02}"),
            )
        })
        .collect();
    let held: Vec<(&str, &str)> = held.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    feed(&mut m, t0, &["m1", "m2"], 6, &held);
    m.handle_timeout(t0 + SOAK);
    let actions = drain(&mut m);
    let Some(Action::Planned(first)) = actions.first() else {
        panic!("{actions:?}")
    };
    assert_eq!((first.moved, first.placed, first.revokes), (0, 0, 0));
    // Assignments hold values "v"; items "v<i>": let the rewrite land.
    let mut now = t0 + SOAK;
    let mut pending = writes(&actions);
    while !pending.is_empty() {
        m.handle_write(now, Ok::<_, ()>(TxnOutcome::Applied { revision: 1 }));
        pending = writes(&drain(&mut m));
    }

    // m2 leaves (its session expired) and comes back within the delay.
    now += Duration::from_secs(5);
    let only_m1 = kv(&[("service/coordinator/members/m1", "{}")]);
    m.handle_members(now, only_m1.iter().map(|(k, v)| (k.as_slice(), v)));
    // No soak: the next deadline is the idle re-read (`verify_every` after
    // the last write), then the delay.
    assert_eq!(
        m.poll_timeout(),
        Some(now + (timing.verify_every - Duration::from_secs(5))),
        "no soak, only the periodic read and the delay"
    );
    m.handle_timeout(now + SOAK);
    assert!(
        drain(&mut m).is_empty(),
        "nothing planned while m2 may come back"
    );
    now += Duration::from_secs(10);
    let both = kv(&[
        ("service/coordinator/members/m1", "{}"),
        ("service/coordinator/members/m2", "{}"),
    ]);
    m.handle_members(now, both.iter().map(|(k, v)| (k.as_slice(), v)));
    assert_eq!(
        m.poll_timeout(),
        Some(t0 + SOAK + 10 * SOAK),
        "back within the delay: nothing to do but the periodic read"
    );
    m.handle_timeout(now + DELAY * 2);
    assert_eq!(
        drain(&mut m),
        vec![Action::ListAssignments],
        "zero moves, not even a plan; only the periodic read"
    );
    answer_as_believed(&mut m, now + DELAY * 2, &both);
    assert!(drain(&mut m).is_empty(), "the store is as believed");

    // m2 leaves for good: after the delay and a soak, its items are placed.
    now += Duration::from_secs(1);
    m.handle_members(now, only_m1.iter().map(|(k, v)| (k.as_slice(), v)));
    m.handle_timeout(now + DELAY);
    assert!(drain(&mut m).is_empty(), "the delay is over: a soak starts");
    m.handle_timeout(now + DELAY + SOAK);
    let actions = drain(&mut m);
    let Some(Action::Planned(r)) = actions.first() else {
        panic!("{actions:?}")
    };
    assert_eq!((r.members, r.moved, r.placed), (1, 0, 3), "{r:?}");
}

#[test]
fn transactions_are_cut_by_bytes_and_an_item_that_cannot_fit_is_refused() {
    // A store that takes 4 KiB a transaction, base64 values (Consul-like).
    let limits = worker_core::TxnLimits {
        max_ops: 64,
        max_bytes: 4096,
        max_value: 4096,
        op_overhead: 40,
        base64_values: true,
    };
    let t0 = Instant::now();
    let mut m = LeaderMachine::new(Layout::default(), LeaderTiming::with_soak(SOAK), 64, t0)
        .with_limits(limits);
    assert_eq!(drain(&mut m), vec![Action::ListAssignments]);
    let mut work: Vec<(String, Bytes)> = (0..10)
        .map(|i| {
            (
                format!("service/coordinator/work/w{i}"),
                Bytes::from(vec![b'x'; 1000]),
            )
        })
        .collect();
    // 3.3 KiB of raw value: 4.4 KiB in base64, more than one transaction.
    work.push((
        "service/coordinator/work/huge".into(),
        Bytes::from(vec![b'x'; 3300]),
    ));
    let members = kv(&[("service/coordinator/members/m1", "{}")]);
    m.handle_members(t0, members.iter().map(|(k, v)| (k.as_slice(), v)));
    m.handle_items(t0, work.iter().map(|(k, v)| (k.as_bytes(), v)));
    let refused: Vec<Action> = drain(&mut m);
    assert!(
        refused.iter().any(
            |a| matches!(a, Action::Refused { work, bytes, .. } if work == "huge" && *bytes > 4096)
        ),
        "{refused:?}"
    );
    assert_eq!(m.refused().len(), 1);
    m.handle_assignments(t0, std::iter::empty(), std::iter::empty());
    m.handle_timeout(t0 + SOAK);
    let mut now = t0 + SOAK;
    let mut pending = writes(&drain(&mut m));
    let mut puts = Vec::new();
    while let Some(chunk) = pending.pop() {
        assert!(limits.fit(&chunk), "over the limits: {chunk:?}");
        puts.extend(chunk.iter().map(|op| op.key().to_owned()));
        now += Duration::from_millis(10);
        m.handle_write(now, Ok::<_, ()>(TxnOutcome::Applied { revision: 1 }));
        pending = writes(&drain(&mut m));
    }
    assert_eq!(puts.len(), 10, "every item that fits is placed: {puts:?}");
    assert!(!puts.iter().any(|k| k.ends_with("/huge")));
    assert!(!m.writing(), "nothing is retried");
    // The value shrinks: it is placed.
    work.last_mut().expect("huge").1 = Bytes::from_static(b"small now");
    m.handle_items(now, work.iter().map(|(k, v)| (k.as_bytes(), v)));
    assert!(m.refused().is_empty());
    m.handle_timeout(now + SOAK);
    let w = writes(&drain(&mut m));
    assert_eq!(w.len(), 1);
    assert_eq!(w[0][0].key(), "service/coordinator/assignments/m1/huge");
}

#[test]
fn a_refused_item_that_is_assigned_keeps_its_value() {
    let limits = worker_core::TxnLimits {
        max_bytes: 2048,
        op_overhead: 16,
        ..worker_core::TxnLimits::ops(64)
    };
    let t0 = Instant::now();
    let mut m = LeaderMachine::new(Layout::default(), LeaderTiming::with_soak(SOAK), 64, t0)
        .with_limits(limits);
    let _ = drain(&mut m);
    let members = kv(&[
        ("service/coordinator/members/m1", "{}"),
        ("service/coordinator/members/m2", "{}"),
    ]);
    m.handle_members(t0, members.iter().map(|(k, v)| (k.as_slice(), v)));
    let big = Bytes::from(vec![b'y'; 4000]);
    let items = [
        ("service/coordinator/work/a".to_owned(), big),
        ("service/coordinator/work/b".to_owned(), Bytes::from("v")),
    ];
    m.handle_items(t0, items.iter().map(|(k, v)| (k.as_bytes(), v)));
    // `a` was assigned to m1 with a small value before it grew.
    let current = kv(&[
        ("service/coordinator/assignments/m1/a", "old"),
        ("service/coordinator/assignments/m1/b", "v"),
    ]);
    m.handle_assignments(
        t0,
        current.iter().map(|(k, v)| (k.as_slice(), v)),
        std::iter::empty(),
    );
    m.handle_timeout(t0 + SOAK);
    let mut now = t0 + SOAK;
    let mut pending = writes(&drain(&mut m));
    let mut all = Vec::new();
    while let Some(chunk) = pending.pop() {
        all.extend(chunk);
        now += Duration::from_millis(10);
        m.handle_write(now, Ok::<_, ()>(TxnOutcome::Applied { revision: 1 }));
        pending = writes(&drain(&mut m));
    }
    // Balanced, whichever item moves: `a` is never written with the value
    // that does not fit, only with the one it had; nothing is lost.
    assert!(
        all.iter().all(
            |op| !matches!(op, TxnOp::Put { key, value } if key.ends_with("/a") && value != "old")
        ),
        "{all:?}"
    );
    let mut placed: Vec<&str> = m
        .assignment()
        .expect("read")
        .keys()
        .map(|(_, w)| w.as_ref())
        .collect();
    placed.sort_unstable();
    assert_eq!(placed, ["a", "b"], "both still held");
    assert!(!m.writing());
    assert_eq!(m.refused().len(), 1);
}

/// The sequence index of each transaction written.
fn sequence_indexes(actions: &[Action]) -> Vec<u64> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Write(ops) => match ops.first() {
                Some(TxnOp::Sequence { key, index, .. }) => {
                    assert_eq!(key, "service/coordinator/sequence");
                    Some(*index)
                }
                other => panic!("no sequence check first: {other:?}"),
            },
            _ => None,
        })
        .collect()
}

#[test]
fn every_write_carries_the_sequence_check_and_expects_what_it_last_learned() {
    let t0 = Instant::now();
    // 4 operations per transaction: 3 for the plan, 1 for the check.
    let mut m = machine(t0, 4);
    let member = |id: &str| KvEntry::new(format!("service/coordinator/members/{id}"), "{}");
    let items = kv(&[
        ("service/coordinator/work/w1", "v1"),
        ("service/coordinator/work/w2", "v2"),
        ("service/coordinator/work/w3", "v3"),
        ("service/coordinator/work/w4", "v4"),
    ]);
    m.handle_items(t0, items.iter().map(|(k, v)| (k.as_slice(), v)));
    // The read: the sequence key was last written at 40.
    m.handle_read(
        t0,
        &LeaderRead {
            members: vec![member("m1")],
            sequence: 40,
            ..LeaderRead::default()
        },
    );
    assert_eq!(
        m.members().map(std::collections::BTreeMap::len),
        Some(1),
        "the read's members"
    );
    m.handle_timeout(t0 + SOAK);
    let actions = drain(&mut m);
    assert_eq!(sequence_indexes(&actions), vec![40]);
    assert_eq!(writes(&actions)[0].len(), 3, "one slot is the check's");
    // Applied at 57: the next transaction expects 57.
    m.handle_write(t0 + SOAK, Ok::<_, ()>(TxnOutcome::Applied { revision: 57 }));
    let actions = drain(&mut m);
    assert_eq!(sequence_indexes(&actions), vec![57]);
    // No answer: read again (after a backoff), and expect what the read says.
    m.handle_write(t0 + SOAK, Err::<TxnOutcome, _>(()));
    assert!(drain(&mut m).is_empty(), "nothing is resent");
    let at = m.poll_timeout().expect("a retry");
    m.handle_timeout(at);
    assert_eq!(drain(&mut m), vec![Action::ListAssignments]);
    m.handle_read(
        at,
        &LeaderRead {
            members: vec![member("m1")],
            assignments: vec![
                KvEntry::new("service/coordinator/assignments/m1/w1", "v1"),
                KvEntry::new("service/coordinator/assignments/m1/w2", "v2"),
                KvEntry::new("service/coordinator/assignments/m1/w3", "v3"),
            ],
            sequence: 61,
            ..LeaderRead::default()
        },
    );
    let actions = drain(&mut m);
    assert_eq!(sequence_indexes(&actions), vec![61], "{actions:?}");
    assert_eq!(
        writes(&actions),
        vec![vec![TxnOp::Put {
            key: "service/coordinator/assignments/m1/w4".into(),
            value: Bytes::from("v4"),
        }]]
    );
    // A failed check (the sequence key moved): read again, decide anew.
    m.handle_write(at, Ok::<_, ()>(TxnOutcome::Conflict));
    let again = m.poll_timeout().expect("a retry");
    m.handle_timeout(again);
    assert_eq!(drain(&mut m), vec![Action::ListAssignments]);
}

#[test]
fn an_idle_leader_reads_again_and_repairs_what_it_did_not_write() {
    let t0 = Instant::now();
    let mut m = machine(t0, 64);
    feed(&mut m, t0, &["m1"], 1, &[]);
    m.handle_timeout(t0 + SOAK);
    let actions = drain(&mut m);
    assert_eq!(writes(&actions).len(), 1);
    m.handle_write(t0 + SOAK, Ok::<_, ()>(TxnOutcome::Applied { revision: 5 }));
    assert!(drain(&mut m).is_empty());
    // Idle: the next deadline is the periodic read, `verify_every` after the
    // write (not tied to the soak).
    let due = t0 + SOAK + leader_core::DEFAULT_VERIFY_EVERY;
    assert_eq!(m.poll_timeout(), Some(due));
    m.handle_timeout(due);
    assert_eq!(drain(&mut m), vec![Action::ListAssignments]);
    // An operator put w00 on m9 too.
    m.handle_read(
        due,
        &LeaderRead {
            members: vec![KvEntry::new("service/coordinator/members/m1", "{}")],
            assignments: vec![
                KvEntry::new("service/coordinator/assignments/m1/w00", "v0"),
                KvEntry::new("service/coordinator/assignments/m9/w00", "v0"),
            ],
            sequence: 5,
            ..LeaderRead::default()
        },
    );
    m.handle_timeout(due + SOAK);
    let actions = drain(&mut m);
    assert_eq!(
        writes(&actions),
        vec![vec![TxnOp::Delete {
            key: "service/coordinator/assignments/m9/w00".into()
        }]],
        "{actions:?}"
    );
    assert_eq!(sequence_indexes(&actions), vec![5]);
}

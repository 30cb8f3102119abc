//! The acknowledged handoff in the leader machine, with an explicit `now`:
//! a move is revoke (with a handoff record), wait for the old owner's
//! acknowledgement, then assign; throttling; exclusive mode's wait and
//! guard; a new leader continuing from the records.

use std::time::Duration;

use bytes::Bytes;
use leader_core::machine::{Action, LeaderMachine, LeaderTiming};
use leader_core::Layout;
use std::time::Instant;
use worker_core::{TxnOp, TxnOutcome};

const SOAK: Duration = Duration::from_secs(3);
const A: &str = "service/coordinator/assignments/";

/// A member key: `(id, acked position or None)`.
fn members(m: &mut LeaderMachine, now: Instant, list: &[(&str, Option<u64>)]) {
    let kv: Vec<(Vec<u8>, Bytes)> = list
        .iter()
        .map(|(id, acked)| {
            let value = match acked {
                Some(a) => format!(r#"{{"weight":1,"acked":{a}}}"#),
                None => r#"{"weight":1}"#.to_owned(),
            };
            (
                format!("service/coordinator/members/{id}").into_bytes(),
                Bytes::from(value),
            )
        })
        .collect();
    m.handle_members(now, kv.iter().map(|(k, v)| (k.as_slice(), v)));
}

fn items(m: &mut LeaderMachine, now: Instant, n: usize) {
    let kv: Vec<(Vec<u8>, Bytes)> = (0..n)
        .map(|i| {
            (
                format!("service/coordinator/work/w{i}").into_bytes(),
                Bytes::from("v"),
            )
        })
        .collect();
    m.handle_items(now, kv.iter().map(|(k, v)| (k.as_slice(), v)));
}

fn assignments(
    m: &mut LeaderMachine,
    now: Instant,
    owned: &[(&str, usize)],
    records: &[(&str, &str, u64)],
) {
    let kv: Vec<(Vec<u8>, Bytes)> = owned
        .iter()
        .map(|(member, i)| (format!("{A}{member}/w{i}").into_bytes(), Bytes::from("v")))
        .collect();
    let rec: Vec<(Vec<u8>, Bytes, u64)> = records
        .iter()
        .map(|(work, from, rev)| {
            (
                format!("service/coordinator/handoff/{work}").into_bytes(),
                Bytes::from(from.to_string()),
                *rev,
            )
        })
        .collect();
    m.handle_assignments(
        now,
        kv.iter().map(|(k, v)| (k.as_slice(), v)),
        rec.iter().map(|(k, v, r)| (k.as_slice(), v, *r)),
    );
}

/// The transactions written, without the sequence check each carries first;
/// each names a key at most once (etcd refuses a txn that names one twice).
fn writes(m: &mut LeaderMachine) -> Vec<Vec<TxnOp>> {
    let w: Vec<Vec<TxnOp>> = std::iter::from_fn(|| m.poll())
        .filter_map(|a| match a {
            Action::Write(mut ops) => {
                assert!(
                    matches!(ops.first(), Some(TxnOp::Sequence { .. })),
                    "no sequence check first: {ops:?}"
                );
                ops.remove(0);
                Some(ops)
            }
            _ => None,
        })
        .collect();
    for ops in &w {
        let keys: std::collections::BTreeSet<&str> = ops.iter().map(TxnOp::key).collect();
        assert_eq!(keys.len(), ops.len(), "a key named twice: {ops:?}");
    }
    w
}

/// Member keys with their raw values.
fn raw_members(m: &mut LeaderMachine, now: Instant, list: &[(&str, &str)]) {
    let kv: Vec<(Vec<u8>, Bytes)> = list
        .iter()
        .map(|(id, value)| {
            (
                format!("service/coordinator/members/{id}").into_bytes(),
                Bytes::from(value.to_string()),
            )
        })
        .collect();
    m.handle_members(now, kv.iter().map(|(k, v)| (k.as_slice(), v)));
}

fn one_write(m: &mut LeaderMachine) -> Vec<TxnOp> {
    let mut w = writes(m);
    assert_eq!(w.len(), 1, "exactly one transaction: {w:?}");
    w.remove(0)
}

fn keys(ops: &[TxnOp], kind: &str) -> Vec<String> {
    ops.iter()
        .filter(|op| {
            matches!(
                (op, kind),
                (TxnOp::Put { .. }, "put")
                    | (TxnOp::Delete { .. }, "delete")
                    | (TxnOp::Absent { .. }, "absent")
            )
        })
        .map(|op| op.key().to_owned())
        .collect()
}

/// A machine of the revoke, acknowledgement, assign protocol (no
/// make-before-break: `prepare.rs`'s tests cover that).
fn machine(mut timing: LeaderTiming, now: Instant) -> LeaderMachine {
    timing.prepare = false;
    let mut m = LeaderMachine::new(Layout::default(), timing, 64, now);
    assert_eq!(m.poll(), Some(Action::ListAssignments));
    m
}

fn applied(m: &mut LeaderMachine, now: Instant, revision: u64) {
    m.handle_write::<()>(now, Ok(TxnOutcome::Applied { revision }));
}

/// A revoke transaction `ops` was applied at `revision`: the machine asks to
/// read the handoff records back, and gets them with that creation position.
fn revoke_applied(m: &mut LeaderMachine, now: Instant, ops: &[TxnOp], revision: u64) {
    applied(m, now, revision);
    let actions: Vec<Action> = std::iter::from_fn(|| m.poll()).collect();
    assert!(
        actions.contains(&Action::ListHandoffs),
        "the records are read back: {actions:?}"
    );
    assert!(
        !actions.iter().any(|a| matches!(a, Action::Write(_))),
        "nothing is written before they are: {actions:?}"
    );
    let records: Vec<(Vec<u8>, Bytes, u64)> = ops
        .iter()
        .filter_map(|op| match op {
            TxnOp::Put { key, value } if key.starts_with("service/coordinator/handoff/") => {
                Some((key.as_bytes().to_vec(), value.clone(), revision))
            }
            _ => None,
        })
        .collect();
    m.handle_handoffs(now, records.iter().map(|(k, v, r)| (k.as_slice(), v, *r)));
}

#[test]
fn a_move_waits_for_the_old_owners_acknowledgement_of_the_revoke() {
    let t0 = Instant::now();
    let mut m = machine(LeaderTiming::with_soak(SOAK), t0);
    members(&mut m, t0, &[("a", Some(5)), ("b", Some(5))]);
    items(&mut m, t0, 4);
    assignments(&mut m, t0, &[("a", 0), ("a", 1), ("a", 2), ("a", 3)], &[]);
    m.handle_timeout(t0 + SOAK);
    // Step one: revoke two items from a, each with its handoff record.
    let revoke = one_write(&mut m);
    assert_eq!(keys(&revoke, "delete").len(), 2, "{revoke:?}");
    let records = keys(&revoke, "put");
    assert_eq!(records.len(), 2, "{revoke:?}");
    assert!(records
        .iter()
        .all(|k| k.starts_with("service/coordinator/handoff/w")));
    let t1 = t0 + SOAK;
    revoke_applied(&mut m, t1, &revoke, 10);
    // Nothing goes to b while a has not acknowledged position 10.
    assert!(writes(&mut m).is_empty());
    assert!(m.writing());
    assert_eq!(m.handoffs().count(), 2);
    members(&mut m, t1, &[("a", Some(9)), ("b", Some(6))]);
    assert!(writes(&mut m).is_empty(), "9 is before the revoke");
    // Step two: a acknowledged the revoke; b gets the items and the records go.
    members(&mut m, t1, &[("a", Some(10)), ("b", Some(6))]);
    let assign = one_write(&mut m);
    let puts = keys(&assign, "put");
    assert_eq!(puts.len(), 2, "{assign:?}");
    assert!(puts.iter().all(|k| k.starts_with(&format!("{A}b/"))));
    assert_eq!(
        keys(&assign, "delete"),
        records,
        "the records go with the assign"
    );
    applied(&mut m, t1, 11);
    assert!(writes(&mut m).is_empty());
    assert!(!m.writing());
    assert_eq!(m.handoffs().count(), 0);
}

#[test]
fn members_that_do_not_report_and_new_items_need_no_wait() {
    let t0 = Instant::now();
    let mut m = machine(LeaderTiming::with_soak(SOAK), t0);
    members(&mut m, t0, &[("a", None), ("b", Some(1))]);
    items(&mut m, t0, 4);
    assignments(&mut m, t0, &[("a", 0), ("a", 1), ("a", 2)], &[]);
    m.handle_timeout(t0 + SOAK);
    // a does not report: a plain revoke, no record, then the assigns at once
    // (w3 is new and needs no wait either).
    let revoke = one_write(&mut m);
    assert_eq!(keys(&revoke, "put"), Vec::<String>::new());
    assert_eq!(keys(&revoke, "delete").len(), 1);
    applied(&mut m, t0 + SOAK, 7);
    let assign = one_write(&mut m);
    assert_eq!(keys(&assign, "put").len(), 2, "{assign:?}");
}

#[test]
fn at_most_max_moves_in_flight_items_are_in_handoff() {
    let t0 = Instant::now();
    let timing = {
        let mut t = LeaderTiming::with_soak(SOAK);
        t.max_moves_in_flight = 1;
        t
    };
    let mut m = machine(timing, t0);
    members(&mut m, t0, &[("a", Some(1)), ("b", Some(1))]);
    items(&mut m, t0, 4);
    assignments(&mut m, t0, &[("a", 0), ("a", 1), ("a", 2), ("a", 3)], &[]);
    m.handle_timeout(t0 + SOAK);
    let mut rev = 10;
    let mut moved = 0;
    for _ in 0..2 {
        let revoke = one_write(&mut m);
        assert_eq!(
            keys(&revoke, "delete").len(),
            1,
            "one move at a time: {revoke:?}"
        );
        revoke_applied(&mut m, t0 + SOAK, &revoke, rev);
        assert!(
            writes(&mut m).is_empty(),
            "the next move waits for this one"
        );
        members(&mut m, t0 + SOAK, &[("a", Some(rev)), ("b", Some(rev))]);
        let assign = one_write(&mut m);
        assert_eq!(keys(&assign, "put").len(), 1);
        applied(&mut m, t0 + SOAK, rev + 1);
        rev += 2;
        moved += 1;
    }
    assert_eq!(moved, 2);
    assert!(writes(&mut m).is_empty());
    assert!(!m.writing());
}

#[test]
fn exclusive_mode_waits_a_ttl_after_a_member_is_gone_and_guards_on_its_key() {
    let t0 = Instant::now();
    let margin = Duration::from_secs(2);
    let ttl = Duration::from_secs(7); // longer than the soak
    let timing = {
        let mut t = LeaderTiming::with_soak(SOAK);
        t.exclusive = Some(margin);
        t.member_ttl = ttl;
        t
    };
    let mut m = machine(timing, t0);
    members(&mut m, t0, &[("a", Some(1)), ("b", Some(1))]);
    items(&mut m, t0, 2);
    assignments(&mut m, t0, &[("a", 0), ("b", 1)], &[]);
    m.handle_timeout(t0 + SOAK);
    assert!(writes(&mut m).is_empty(), "balanced already");
    // a is gone (its session expired) at t1.
    let t1 = t0 + SOAK + Duration::from_secs(1);
    members(&mut m, t1, &[("b", Some(1))]);
    m.handle_timeout(t1 + SOAK);
    let revoke = one_write(&mut m);
    assert_eq!(keys(&revoke, "delete"), vec![format!("{A}a/w0")]);
    revoke_applied(&mut m, t1 + SOAK, &revoke, 20);
    assert!(writes(&mut m).is_empty());
    // Not before a whole TTL has passed since a's key vanished (the store
    // may have ended its session early, while a still believes in it).
    let at = m.poll_timeout().expect("the wait's end is a timeout");
    assert_eq!(at, t1 + ttl);
    m.handle_timeout(t1 + ttl.saturating_sub(Duration::from_millis(1)));
    assert!(writes(&mut m).is_empty());
    m.handle_timeout(t1 + ttl);
    let assign = one_write(&mut m);
    assert_eq!(keys(&assign, "put"), vec![format!("{A}b/w0")]);
    assert_eq!(
        keys(&assign, "absent"),
        vec!["service/coordinator/members/a".to_owned()],
        "guarded on a's key still being absent"
    );
    // a came back meanwhile: the guard fails, nothing is applied, and the
    // leader reads the store again and decides anew (a's acknowledgement
    // now counts).
    let t2 = t1 + ttl;
    m.handle_write::<()>(t2, Ok(TxnOutcome::Conflict));
    members(&mut m, t2, &[("a", Some(15)), ("b", Some(1))]);
    let retry = m.poll_timeout().expect("a read is due");
    m.handle_timeout(retry);
    assert_eq!(m.poll(), Some(Action::ListAssignments));
    assignments(&mut m, retry, &[("b", 1)], &[("w0", "a", 20)]);
    assert!(
        writes(&mut m).is_empty(),
        "a is live again and has not acknowledged the revoke at 20"
    );
    members(&mut m, retry, &[("a", Some(20)), ("b", Some(1))]);
    let w = one_write(&mut m);
    assert!(keys(&w, "absent").is_empty(), "{w:?}");
}

#[test]
fn a_new_leader_continues_the_handoffs_it_finds() {
    let t0 = Instant::now();
    let mut m = machine(LeaderTiming::with_soak(SOAK), t0);
    members(&mut m, t0, &[("a", Some(30)), ("b", Some(40))]);
    items(&mut m, t0, 2);
    // w1 was revoked from a at 31 by the previous leader; b should get it.
    assignments(&mut m, t0, &[("a", 0)], &[("w1", "a", 31)]);
    m.handle_timeout(t0 + SOAK);
    assert!(writes(&mut m).is_empty(), "a acknowledged only 30");
    assert_eq!(m.handoffs().count(), 1);
    members(&mut m, t0 + SOAK, &[("a", Some(31)), ("b", Some(40))]);
    let w = one_write(&mut m);
    assert_eq!(keys(&w, "put").len(), 1, "{w:?}");
    assert_eq!(
        keys(&w, "delete"),
        vec!["service/coordinator/handoff/w1".to_owned()]
    );
}

#[test]
fn after_an_unknown_outcome_the_store_is_read_again_and_the_record_says_when_the_revoke_was() {
    let t0 = Instant::now();
    let mut m = machine(LeaderTiming::with_soak(SOAK), t0);
    members(&mut m, t0, &[("a", Some(5)), ("b", Some(5))]);
    items(&mut m, t0, 2);
    assignments(&mut m, t0, &[("a", 0), ("a", 1)], &[]);
    m.handle_timeout(t0 + SOAK);
    let revoke = one_write(&mut m);
    assert_eq!(keys(&revoke, "delete").len(), 1);
    // The reply is lost: nothing is resent blindly; the store is read again.
    let t1 = t0 + SOAK;
    m.handle_write(t1, Err::<TxnOutcome, _>("timed out"));
    assert!(writes(&mut m).is_empty());
    let at = m.poll_timeout().expect("a read is due");
    m.handle_timeout(at);
    assert_eq!(m.poll(), Some(Action::ListAssignments));
    // It had been applied at 510: the record was created then.
    assignments(&mut m, at, &[("a", 0)], &[("w1", "a", 510)]);
    assert!(writes(&mut m).is_empty(), "a acknowledged only 5");
    members(&mut m, at, &[("a", Some(510)), ("b", Some(5))]);
    let assign = one_write(&mut m);
    assert_eq!(keys(&assign, "put"), vec![format!("{A}b/w1")]);
}

#[test]
fn an_item_found_under_two_members_is_revoked_one_record_at_a_time() {
    // A takeover finds w0 under a and b (both live, reporting, draining);
    // c is its target. One transaction never names handoff/w0 twice: a is
    // revoked with its record; once a acknowledged, the record goes; then b
    // is revoked with a record of its own; once b acknowledged, c gets it.
    let t0 = Instant::now();
    let mut m = machine(LeaderTiming::with_soak(SOAK), t0);
    let leaving = |acked: u64| format!(r#"{{"weight":1,"draining":true,"acked":{acked}}}"#);
    let (a5, b5) = (leaving(5), leaving(5));
    raw_members(
        &mut m,
        t0,
        &[("a", &a5), ("b", &b5), ("c", r#"{"weight":1,"acked":5}"#)],
    );
    items(&mut m, t0, 1);
    assignments(&mut m, t0, &[("a", 0), ("b", 0)], &[]);
    let t1 = t0 + SOAK;
    m.handle_timeout(t1);
    let first = one_write(&mut m);
    assert_eq!(keys(&first, "delete"), vec![format!("{A}a/w0")]);
    assert_eq!(
        keys(&first, "put"),
        vec!["service/coordinator/handoff/w0".to_owned()]
    );
    revoke_applied(&mut m, t1, &first, 10);
    assert!(writes(&mut m).is_empty(), "a has not acknowledged 10");
    let (a10, b10) = (leaving(10), leaving(10));
    raw_members(
        &mut m,
        t1,
        &[("a", &a10), ("b", &b5), ("c", r#"{"weight":1,"acked":5}"#)],
    );
    let clear = one_write(&mut m);
    assert_eq!(
        clear,
        vec![TxnOp::Delete {
            key: "service/coordinator/handoff/w0".into()
        }]
    );
    applied(&mut m, t1, 11);
    let second = one_write(&mut m);
    assert_eq!(keys(&second, "delete"), vec![format!("{A}b/w0")]);
    revoke_applied(&mut m, t1, &second, 12);
    raw_members(
        &mut m,
        t1,
        &[("a", &a10), ("b", &b10), ("c", r#"{"weight":1,"acked":5}"#)],
    );
    assert!(
        writes(&mut m).is_empty(),
        "b acknowledged 10, not its revoke at 12"
    );
    let b12 = leaving(12);
    raw_members(
        &mut m,
        t1,
        &[("a", &a10), ("b", &b12), ("c", r#"{"weight":1,"acked":5}"#)],
    );
    let assign = one_write(&mut m);
    assert_eq!(keys(&assign, "put"), vec![format!("{A}c/w0")]);
    applied(&mut m, t1, 13);
    assert!(writes(&mut m).is_empty());
    assert!(!m.writing());
}

#[test]
fn a_member_value_that_does_not_parse_fails_safe() {
    // a's member key holds something this version cannot read: a move away
    // from it still waits for its acknowledgement (with a record), it is
    // not taken as a member that does not report.
    let t0 = Instant::now();
    let mut m = machine(LeaderTiming::with_soak(SOAK), t0);
    raw_members(
        &mut m,
        t0,
        &[
            ("a", r#"{"weight":"heavy"}"#),
            ("b", r#"{"weight":1,"acked":1}"#),
        ],
    );
    let reported: Vec<Action> = std::iter::from_fn(|| m.poll()).collect();
    assert!(
        reported
            .iter()
            .any(|a| matches!(a, Action::BadMemberValue { member, .. } if member == "a")),
        "{reported:?}"
    );
    items(&mut m, t0, 2);
    assignments(&mut m, t0, &[("a", 0), ("a", 1)], &[]);
    m.handle_timeout(t0 + SOAK);
    let revoke = one_write(&mut m);
    assert_eq!(
        keys(&revoke, "put").len(),
        1,
        "the revoke carries a handoff record: {revoke:?}"
    );
    revoke_applied(&mut m, t0 + SOAK, &revoke, 10);
    m.handle_timeout(t0 + SOAK * 10);
    assert!(
        writes(&mut m).is_empty(),
        "nothing goes to b before a acknowledged"
    );
    assert_eq!(m.handoffs().count(), 1);
    // a writes a value this version reads, with the acknowledgement: the
    // move proceeds.
    raw_members(
        &mut m,
        t0 + SOAK * 10,
        &[
            ("a", r#"{"weight":1,"acked":10}"#),
            ("b", r#"{"weight":1,"acked":1}"#),
        ],
    );
    let assign = one_write(&mut m);
    assert_eq!(keys(&assign, "put"), vec![format!("{A}b/w1")]);
}

#[test]
fn a_record_that_names_no_member_is_cleaned_up() {
    // A record of an item that is gone, whose value names no member (a hand
    // edit): nothing can wait on it, and it is deleted.
    let t0 = Instant::now();
    let mut m = machine(LeaderTiming::with_soak(SOAK), t0);
    members(&mut m, t0, &[("a", Some(1))]);
    items(&mut m, t0, 1);
    assignments(&mut m, t0, &[("a", 0)], &[("gone", "not a member/id", 3)]);
    m.handle_timeout(t0 + SOAK);
    let w = one_write(&mut m);
    assert_eq!(
        w,
        vec![TxnOp::Delete {
            key: "service/coordinator/handoff/gone".into()
        }]
    );
    applied(&mut m, t0 + SOAK, 4);
    assert!(writes(&mut m).is_empty());
    assert!(!m.writing());
}

#[test]
fn what_the_leader_remembers_of_members_and_bad_keys_does_not_grow() {
    let t0 = Instant::now();
    let timing = {
        let mut t = LeaderTiming::with_soak(SOAK);
        t.exclusive = Some(Duration::from_secs(1));
        t
    };
    let mut m = machine(timing, t0);
    items(&mut m, t0, 0);
    assignments(&mut m, t0, &[], &[]);
    let mut now = t0;
    // 50 members come and go, each with a bad sibling key; nothing is
    // assigned to them.
    for i in 0..50 {
        now += Duration::from_secs(1);
        let id = format!("m{i}");
        let bad = format!("{id}/nested");
        raw_members(&mut m, now, &[(&id, r#"{"weight":1}"#), (&bad, "")]);
        raw_members(&mut m, now, &[]);
        m.handle_timeout(now + SOAK);
        now += SOAK;
        // Answer the leader's periodic re-read of the store (nothing there).
        let actions: Vec<Action> = std::iter::from_fn(|| m.poll()).collect();
        if actions.contains(&Action::ListAssignments) {
            assignments(&mut m, now, &[], &[]);
        }
    }
    let f = m.footprint();
    assert!(f.absent <= 1, "members that left are forgotten: {f:?}");
    assert_eq!(f.reported, 0, "bad keys that are gone are forgotten: {f:?}");
    // A bad key that comes back is reported again.
    raw_members(&mut m, now, &[("m1/nested", "")]);
    let again: Vec<Action> = std::iter::from_fn(|| m.poll()).collect();
    assert!(
        again.iter().any(|a| matches!(a, Action::BadKey { .. })),
        "{again:?}"
    );
}

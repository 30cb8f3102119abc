//! The acknowledged handoff in the leader machine, with an explicit `now`:
//! a move is revoke (with a handoff record), wait for the old owner's
//! acknowledgement, then assign; throttling; exclusive mode's margin and
//! guard; a new leader continuing from the records.

use std::time::Duration;

use bytes::Bytes;
use leader_core::machine::{Action, LeaderMachine, LeaderTiming};
use leader_core::Layout;
use tokio::time::Instant;
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

/// The transactions written, without the sequence check each carries first.
fn writes(m: &mut LeaderMachine) -> Vec<Vec<TxnOp>> {
    std::iter::from_fn(|| m.poll())
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
        .collect()
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

fn machine(timing: LeaderTiming, now: Instant) -> LeaderMachine {
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
    let timing = LeaderTiming {
        max_moves_in_flight: 1,
        ..LeaderTiming::with_soak(SOAK)
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
fn exclusive_mode_waits_the_margin_after_a_member_is_gone_and_guards_on_its_key() {
    let t0 = Instant::now();
    let margin = Duration::from_secs(5); // longer than the soak
    let timing = LeaderTiming {
        exclusive: Some(margin),
        ..LeaderTiming::with_soak(SOAK)
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
    // Not before the margin has passed since a's key vanished.
    let at = m.poll_timeout().expect("the margin's end is a timeout");
    assert_eq!(at, t1 + margin);
    m.handle_timeout(t1 + margin - Duration::from_millis(1));
    assert!(writes(&mut m).is_empty());
    m.handle_timeout(t1 + margin);
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
    let t2 = t1 + margin;
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

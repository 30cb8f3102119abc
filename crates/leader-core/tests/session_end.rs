//! Sessions that end before their TTL, in the leader machine with an
//! explicit `now`: in exclusive mode a gone member's items wait the member's
//! whole TTL after its key vanished (the store may end a session early, an
//! operator or a node deregistration, while the member, cut off, still
//! believes in its lease); a handoff that a live member never acknowledges
//! ends that member's session after `handoff_timeout`, and then proceeds as
//! for a gone member.
#![allow(clippy::unchecked_time_subtraction)] // instants of a test run, far above any subtracted duration

use std::time::Duration;

use bytes::Bytes;
use leader_core::machine::{Action, LeaderMachine, LeaderTiming};
use leader_core::Layout;
use std::time::Instant;
use worker_core::{TxnOp, TxnOutcome};

const SOAK: Duration = Duration::from_secs(3);
const A: &str = "service/coordinator/assignments/";

/// A member key: `(id, its JSON)`.
fn members(m: &mut LeaderMachine, now: Instant, list: &[(&str, &str)]) {
    let kv: Vec<(Vec<u8>, Bytes)> = list
        .iter()
        .map(|(id, json)| {
            (
                format!("service/coordinator/members/{id}").into_bytes(),
                Bytes::from(json.to_string()),
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

fn assignments(m: &mut LeaderMachine, now: Instant, owned: &[(&str, usize)]) {
    let kv: Vec<(Vec<u8>, Bytes)> = owned
        .iter()
        .map(|(member, i)| (format!("{A}{member}/w{i}").into_bytes(), Bytes::from("v")))
        .collect();
    m.handle_assignments(
        now,
        kv.iter().map(|(k, v)| (k.as_slice(), v)),
        std::iter::empty(),
    );
}

fn actions(m: &mut LeaderMachine) -> Vec<Action> {
    std::iter::from_fn(|| m.poll()).collect()
}

fn writes(all: &[Action]) -> Vec<Vec<TxnOp>> {
    all.iter()
        .filter_map(|a| match a {
            Action::Write(ops) => Some(ops.clone()),
            _ => None,
        })
        .collect()
}

fn puts(ops: &[TxnOp]) -> Vec<String> {
    ops.iter()
        .filter(|op| matches!(op, TxnOp::Put { .. }) && op.key().starts_with(A))
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

/// A revoke transaction `ops` was applied at `revision`; the records are
/// read back with that creation position.
fn revoke_applied(m: &mut LeaderMachine, now: Instant, ops: &[TxnOp], revision: u64) {
    m.handle_write::<()>(now, Ok(TxnOutcome::Applied { revision }));
    let all = actions(m);
    assert!(all.contains(&Action::ListHandoffs), "{all:?}");
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

/// Exclusive mode: member `a` (TTL 20 s, as its key says) is cut off and the
/// store ends its session at once (an operator's `consul session destroy`, a
/// node deregistration, `etcdctl lease revoke`). Its last renewal was sent
/// just before, so it believes in its lease for almost 20 s more and
/// releases only at its deadline − margin. The leader gives its items away
/// only a whole TTL after it saw the key vanish, not a margin after.
#[test]
fn exclusive_mode_waits_the_gone_members_whole_ttl_after_its_key_vanished() {
    let t0 = Instant::now();
    let margin = Duration::from_secs(2);
    let ttl = Duration::from_secs(20);
    let timing = {
        let mut t = LeaderTiming::with_soak(SOAK);
        t.exclusive = Some(margin);
        t.member_ttl = Duration::from_secs(10); // the leader's own: a's key says more
        t
    };
    let mut m = machine(timing, t0);
    let a = r#"{"weight":1,"acked":1,"ttl_ms":20000}"#;
    let b = r#"{"weight":1,"acked":1,"ttl_ms":20000}"#;
    members(&mut m, t0, &[("a", a), ("b", b)]);
    items(&mut m, t0, 2);
    assignments(&mut m, t0, &[("a", 0), ("b", 1)]);
    m.handle_timeout(t0 + SOAK);
    assert!(writes(&actions(&mut m)).is_empty(), "balanced already");
    // The store ended a's session at t1: its key vanishes.
    let t1 = t0 + SOAK + Duration::from_secs(1);
    members(&mut m, t1, &[("b", b)]);
    m.handle_timeout(t1 + SOAK);
    let w = writes(&actions(&mut m));
    assert_eq!(w.len(), 1, "{w:?}");
    revoke_applied(&mut m, t1 + SOAK, &w[0], 20);
    assert!(writes(&actions(&mut m)).is_empty());
    // a still believes in its lease until t1 + ttl − margin at the latest.
    let at = m.poll_timeout().expect("the wait's end is a timeout");
    assert_eq!(at, t1 + ttl, "a whole TTL of a (its key said 20 s)");
    for late in [
        t1 + margin,
        t1 + ttl - margin,
        t1 + ttl - Duration::from_millis(1),
    ] {
        m.handle_timeout(late);
        assert!(
            writes(&actions(&mut m)).is_empty(),
            "nothing for b {:?} after a's key vanished",
            late - t1
        );
    }
    m.handle_timeout(t1 + ttl);
    let w = writes(&actions(&mut m));
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(puts(&w[0]), vec![format!("{A}b/w0")]);
    assert!(
        w[0].iter().any(
            |op| matches!(op, TxnOp::Absent { key } if key == "service/coordinator/members/a")
        ),
        "still guarded on a's key being absent: {w:?}"
    );
}

/// Without `ttl_ms` in the member key, the leader assumes its own TTL.
#[test]
fn a_member_key_without_its_ttl_gets_the_leaders_ttl() {
    let t0 = Instant::now();
    let timing = {
        let mut t = LeaderTiming::with_soak(SOAK);
        t.exclusive = Some(Duration::from_secs(2));
        t.member_ttl = Duration::from_secs(12);
        t
    };
    let mut m = machine(timing, t0);
    members(
        &mut m,
        t0,
        &[("a", r#"{"acked":1}"#), ("b", r#"{"acked":1}"#)],
    );
    items(&mut m, t0, 2);
    assignments(&mut m, t0, &[("a", 0), ("b", 1)]);
    m.handle_timeout(t0 + SOAK);
    actions(&mut m);
    let t1 = t0 + SOAK;
    members(&mut m, t1, &[("b", r#"{"acked":1}"#)]);
    m.handle_timeout(t1 + SOAK);
    let w = writes(&actions(&mut m));
    revoke_applied(&mut m, t1 + SOAK, &w[0], 20);
    assert_eq!(m.poll_timeout(), Some(t1 + Duration::from_secs(12)));
}

/// `a` is live and reports, but never acknowledges the revoke (a hung
/// handler): after `handoff_timeout` the leader ends a's session (named in
/// its key), and the move proceeds as for a gone member: at once outside
/// exclusive mode, a whole TTL after the session was seen gone in it, even
/// if a registered again meanwhile (it then reads its assignments afresh).
#[test]
fn a_handoff_that_times_out_ends_the_members_session_then_proceeds() {
    for exclusive in [false, true] {
        let t0 = Instant::now();
        let timeout = Duration::from_secs(60);
        let ttl = Duration::from_secs(15);
        let timing = {
            let mut t = LeaderTiming::with_soak(SOAK);
            t.exclusive = exclusive.then_some(Duration::from_secs(3));
            t.handoff_timeout = timeout;
            t.member_ttl = ttl;
            // No periodic re-read of the store in between.
            t.verify_every = Duration::from_secs(3600);
            t
        };
        let mut m = machine(timing, t0);
        let a1 = r#"{"acked":5,"ttl_ms":15000,"session":"s-a1"}"#;
        let b = r#"{"acked":5,"ttl_ms":15000,"session":"s-b"}"#;
        members(&mut m, t0, &[("a", a1)]);
        items(&mut m, t0, 2);
        assignments(&mut m, t0, &[("a", 0), ("a", 1)]);
        m.handle_timeout(t0 + SOAK);
        actions(&mut m);
        // b joins: one item moves from a to b.
        let t1 = t0 + SOAK;
        members(&mut m, t1, &[("a", a1), ("b", b)]);
        m.handle_timeout(t1 + SOAK);
        let w = writes(&actions(&mut m));
        assert_eq!(w.len(), 1, "the revoke: {w:?}");
        let moved = w[0]
            .iter()
            .find(|op| matches!(op, TxnOp::Delete { .. }))
            .map(|op| op.key().rsplit('/').next().unwrap_or_default().to_owned())
            .expect("a revoke");
        let t2 = t1 + SOAK;
        revoke_applied(&mut m, t2, &w[0], 10);
        assert!(writes(&actions(&mut m)).is_empty(), "waits for a's ack");
        // a never acknowledges 10.
        assert_eq!(m.poll_timeout(), Some(t2 + timeout));
        m.handle_timeout(t2 + timeout - Duration::from_millis(1));
        assert!(actions(&mut m).is_empty());
        let t3 = t2 + timeout;
        m.handle_timeout(t3);
        let all = actions(&mut m);
        assert_eq!(
            all,
            vec![Action::EndSession {
                member: "a".into(),
                session: "s-a1".into()
            }],
            "exclusive {exclusive}"
        );
        // Asked once.
        m.handle_timeout(t3 + Duration::from_secs(1));
        assert!(actions(&mut m).is_empty());
        // The key vanishes; a registers again at once with a new session and
        // still does not acknowledge 10.
        let t4 = t3 + Duration::from_millis(50);
        members(&mut m, t4, &[("b", b)]);
        let a2 = r#"{"acked":6,"ttl_ms":15000,"session":"s-a2"}"#;
        let after = actions(&mut m);
        let w = writes(&after);
        if exclusive {
            assert!(w.is_empty(), "exclusive: a whole TTL first: {after:?}");
            members(&mut m, t4, &[("a", a2), ("b", b)]);
            assert!(writes(&actions(&mut m)).is_empty());
            // (The soak after the member changes comes and plans nothing.)
            while let Some(at) = m.poll_timeout().filter(|at| *at < t4 + ttl) {
                m.handle_timeout(at);
                assert!(writes(&actions(&mut m)).is_empty(), "at {:?}", at - t4);
            }
            assert_eq!(m.poll_timeout(), Some(t4 + ttl));
            m.handle_timeout(t4 + ttl - Duration::from_millis(1));
            assert!(writes(&actions(&mut m)).is_empty());
            m.handle_timeout(t4 + ttl);
            let w = writes(&actions(&mut m));
            assert_eq!(w.len(), 1, "{w:?}");
            assert_eq!(puts(&w[0]), vec![format!("{A}b/{moved}")]);
            assert!(
                !w[0].iter().any(|op| matches!(op, TxnOp::Absent { .. })),
                "a's new session reads afresh: no guard needed: {w:?}"
            );
        } else {
            assert_eq!(w.len(), 1, "{after:?}");
            assert_eq!(puts(&w[0]), vec![format!("{A}b/{moved}")]);
        }
    }
}

/// A move stuck past the handoff timeout does not hold up the others'
/// moves under `max_moves_in_flight`.
#[test]
fn a_stuck_move_stops_counting_against_max_moves_in_flight() {
    let t0 = Instant::now();
    let timeout = Duration::from_secs(60);
    let timing = {
        let mut t = LeaderTiming::with_soak(SOAK);
        t.handoff_timeout = timeout;
        t.max_moves_in_flight = 1;
        t
    };
    let mut m = machine(timing, t0);
    // a has 4 items, c none: 2 move to b and c... one at a time.
    let a = r#"{"acked":5}"#; // names no session: cannot be ended
    let b = r#"{"acked":5}"#;
    members(&mut m, t0, &[("a", a), ("b", b)]);
    items(&mut m, t0, 4);
    assignments(&mut m, t0, &[("a", 0), ("a", 1), ("a", 2), ("a", 3)]);
    m.handle_timeout(t0 + SOAK);
    let w = writes(&actions(&mut m));
    assert_eq!(w.len(), 1, "{w:?}");
    let revokes = w[0]
        .iter()
        .filter(|op| matches!(op, TxnOp::Delete { .. }))
        .count();
    assert_eq!(revokes, 1, "one move at a time");
    let t1 = t0 + SOAK;
    revoke_applied(&mut m, t1, &w[0], 10);
    assert!(writes(&actions(&mut m)).is_empty(), "the next waits");
    m.handle_timeout(t1 + timeout);
    let all = actions(&mut m);
    let w = writes(&all);
    assert_eq!(w.len(), 1, "the next move goes: {all:?}");
    let revokes = w[0]
        .iter()
        .filter(|op| matches!(op, TxnOp::Delete { .. }))
        .count();
    assert_eq!(revokes, 1, "{w:?}");
}

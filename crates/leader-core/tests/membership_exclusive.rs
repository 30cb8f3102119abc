//! The member machine in exclusive mode, with an explicit `now`: a session
//! the store ended (learnt from a member-key write or the member's own key
//! vanishing) releases at once; a renewal answered after deadline − margin
//! does not restore; halt releases before it closes the session; a session
//! given up on after failed renewals is closed before registering anew.
#![allow(clippy::unchecked_time_subtraction)] // instants of a test run, far above any subtracted duration

use std::time::Duration;

use leader_core::{MemberAction, MemberMachine, MemberTiming};
use std::time::Instant;
use worker_core::SessionId;

const TTL: Duration = Duration::from_secs(15);
const MARGIN: Duration = Duration::from_secs(3);

fn sid(s: &str) -> SessionId {
    SessionId(s.to_owned())
}

fn drain(m: &mut MemberMachine) -> Vec<MemberAction> {
    std::iter::from_fn(|| m.poll()).collect()
}

/// A member that may not lead (no campaign in the way), registered at `t0`
/// with session `s1` and holding its workload.
fn holding(t0: Instant) -> MemberMachine {
    let mut m = MemberMachine::new(
        {
            let mut t = MemberTiming::new(TTL);
            t.backoff_max = Duration::from_secs(10);
            t.exclusive = Some(MARGIN);
            t
        },
        false,
        7,
        t0,
    );
    assert_eq!(
        drain(&mut m),
        [MemberAction::Register, MemberAction::Observe]
    );
    m.handle_registered::<()>(t0, Ok(sid("s1")));
    assert_eq!(drain(&mut m), [MemberAction::Restore { resync: true }]);
    assert!(!m.released());
    m
}

#[test]
fn a_session_the_store_ended_releases_at_once_and_registers_anew() {
    let t0 = Instant::now();
    let mut m = holding(t0);
    let t1 = t0 + Duration::from_secs(1);
    // A member-key write says the session is gone (or the member saw its own
    // key vanish): long before its deadline − margin.
    m.handle_session_gone(t1, &sid("s1"));
    assert_eq!(
        drain(&mut m),
        [
            MemberAction::Release,
            MemberAction::Close(sid("s1")),
            MemberAction::Register
        ],
        "released at once; the session closed (best effort) before registering anew"
    );
    assert!(m.released());
    assert!(m.session().is_none());
    // An old session's news changes nothing.
    m.handle_session_gone(t1, &sid("s0"));
    assert!(drain(&mut m).is_empty());
    m.handle_registered::<()>(t1, Ok(sid("s2")));
    assert_eq!(drain(&mut m), [MemberAction::Restore { resync: true }]);
    m.handle_session_gone(t1, &sid("s1"));
    assert!(drain(&mut m).is_empty(), "s1 is not the live session");
}

#[test]
fn a_renewal_answered_after_deadline_minus_margin_does_not_restore() {
    let t0 = Instant::now();
    let mut m = holding(t0);
    // The renewal at TTL/3 is sent, and no answer comes for a long time.
    let sent = t0 + TTL / 3;
    m.handle_timeout(sent);
    assert_eq!(drain(&mut m), [MemberAction::Renew(sid("s1"))]);
    let release = t0 + TTL - MARGIN;
    assert_eq!(m.poll_timeout(), Some(release));
    m.handle_timeout(release);
    assert_eq!(drain(&mut m), [MemberAction::Release]);
    // The answer comes after the new deadline − margin (sent + TTL − margin):
    // the lease it extended is already too short to hold anything.
    let late = sent + TTL - MARGIN + Duration::from_millis(10);
    m.handle_renewed::<()>(late, Ok(true));
    assert!(
        drain(&mut m).is_empty(),
        "no restore that the next timer releases again"
    );
    assert!(m.released());
    // The next renewal, answered in time, restores.
    let next = m.poll_timeout().expect("the next renewal");
    m.handle_timeout(next);
    assert_eq!(drain(&mut m), [MemberAction::Renew(sid("s1"))]);
    m.handle_renewed::<()>(next + Duration::from_millis(5), Ok(true));
    assert_eq!(drain(&mut m), [MemberAction::Restore { resync: false }]);
}

#[test]
fn halt_releases_before_the_session_is_closed() {
    let t0 = Instant::now();
    let mut m = holding(t0);
    m.halt();
    assert_eq!(
        drain(&mut m),
        [
            MemberAction::Release,
            MemberAction::Close(sid("s1")),
            MemberAction::Halted
        ]
    );
}

#[test]
fn a_session_given_up_after_failed_renewals_is_closed_before_registering_anew() {
    let t0 = Instant::now();
    let mut m = holding(t0);
    let mut now = t0 + TTL / 3;
    m.handle_timeout(now);
    drain(&mut m);
    let mut seen = Vec::new();
    for _ in 0..1000 {
        m.handle_renewed(now, Err::<bool, _>("unreachable"));
        seen.extend(drain(&mut m));
        if seen.contains(&MemberAction::Register) {
            break;
        }
        now = m.poll_timeout().expect("a retry or the release");
        m.handle_timeout(now);
        seen.extend(
            drain(&mut m)
                .into_iter()
                .filter(|a| *a != MemberAction::Renew(sid("s1"))),
        );
    }
    assert_eq!(
        seen,
        [
            MemberAction::Release,
            MemberAction::Close(sid("s1")),
            MemberAction::Register
        ]
    );
}

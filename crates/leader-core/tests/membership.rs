//! The member machine with an explicit `now`: registration, renewals every
//! TTL/3, session loss, stale observations, stepping down and halting.

use std::time::Duration;

use leader_core::{MemberAction, MemberMachine, MemberTiming};
use std::time::Instant;
use worker_core::{Fence, Leader, SessionId};

const TTL: Duration = Duration::from_secs(15);

fn machine() -> MemberMachine {
    MemberMachine::new(MemberTiming::new(TTL), true, 7, Instant::now())
}

fn drain(m: &mut MemberMachine) -> Vec<MemberAction> {
    std::iter::from_fn(|| m.poll()).collect()
}

fn sid(s: &str) -> SessionId {
    SessionId(s.to_owned())
}

fn fence(session: &str, term: u64) -> Fence {
    Fence::new(
        sid(session),
        "leader",
        Leader {
            id: "m1".into(),
            term,
            name: None,
        },
        term,
    )
}

/// Registers with session `s1` at `t0` and wins the election with term 5.
fn leading(t0: Instant) -> MemberMachine {
    let mut m = machine();
    assert_eq!(
        drain(&mut m),
        [MemberAction::Register, MemberAction::Observe]
    );
    m.handle_registered::<()>(t0, Ok(sid("s1")));
    assert_eq!(m.poll_timeout(), Some(t0), "campaign at once");
    m.handle_timeout(t0);
    assert_eq!(drain(&mut m), [MemberAction::Campaign(sid("s1"))]);
    m.handle_campaign::<()>(t0, Ok(Some(fence("s1", 5))));
    assert_eq!(drain(&mut m), [MemberAction::Lead(fence("s1", 5))]);
    m
}

#[test]
fn renews_every_third_of_the_ttl() {
    let t0 = Instant::now();
    let mut m = leading(t0);
    assert_eq!(m.poll_timeout(), Some(t0 + TTL / 3));
    m.handle_timeout(t0 + TTL / 3);
    assert_eq!(drain(&mut m), [MemberAction::Renew(sid("s1"))]);
    assert_eq!(
        m.poll_timeout(),
        None,
        "nothing while the renewal is in flight"
    );
    let t1 = t0 + TTL / 3 + Duration::from_millis(3);
    m.handle_renewed::<()>(t1, Ok(true));
    assert_eq!(m.poll_timeout(), Some(t1 + TTL / 3));
    assert!(drain(&mut m).is_empty());
}

#[test]
fn a_gone_session_ends_the_leadership_and_registers_again() {
    let t0 = Instant::now();
    let mut m = leading(t0);
    m.handle_timeout(t0 + TTL / 3);
    drain(&mut m);
    m.handle_renewed::<()>(t0 + TTL / 3, Ok(false));
    assert_eq!(
        drain(&mut m),
        [
            MemberAction::StopLeading { resign: None },
            MemberAction::Register
        ]
    );
    assert!(m.leading().is_none());
    assert!(m.session().is_none());
    // A campaign answer for the old session that arrives late is ignored.
    m.handle_campaign::<()>(t0 + TTL, Ok(Some(fence("s1", 5))));
    assert!(drain(&mut m).is_empty());
    m.handle_registered::<()>(t0 + TTL, Ok(sid("s2")));
    m.handle_timeout(t0 + TTL);
    assert_eq!(drain(&mut m), [MemberAction::Campaign(sid("s2"))]);
}

#[test]
fn renewal_errors_retry_quickly_and_give_the_session_up_after_a_ttl() {
    let t0 = Instant::now();
    let mut m = leading(t0);
    let mut now = t0 + TTL / 3;
    m.handle_timeout(now);
    drain(&mut m);
    let mut retries = 0;
    loop {
        m.handle_renewed(now, Err::<bool, _>("unreachable"));
        let actions = drain(&mut m);
        if !actions.is_empty() {
            // The old session is closed (best effort) before registering
            // anew: on Consul it would hold the member key for up to 2 × TTL.
            assert_eq!(
                actions,
                [
                    MemberAction::StopLeading { resign: None },
                    MemberAction::Close(sid("s1")),
                    MemberAction::Register
                ]
            );
            assert!(now >= t0 + TTL, "given up only after a whole TTL ({now:?})");
            break;
        }
        let next = m.poll_timeout().expect("a retry");
        assert!(next - now <= TTL / 10, "retry within TTL/10");
        now = next;
        m.handle_timeout(now);
        assert_eq!(drain(&mut m), [MemberAction::Renew(sid("s1"))]);
        retries += 1;
        assert!(retries < 1000);
    }
    assert!(retries >= 5, "{retries} retries");
}

#[test]
fn a_stale_observation_is_checked_with_the_election_before_stepping_down() {
    let t0 = Instant::now();
    let mut m = leading(t0);
    let t1 = t0 + Duration::from_secs(1);
    // The observation still shows no leader (it lags): ask, do not stop.
    m.handle_observed::<()>(t1, Ok(None));
    assert!(drain(&mut m).is_empty());
    m.handle_timeout(t1);
    assert_eq!(drain(&mut m), [MemberAction::Campaign(sid("s1"))]);
    m.handle_campaign::<()>(t1, Ok(Some(fence("s1", 5))));
    assert!(drain(&mut m).is_empty(), "same term: keep leading");
    assert!(m.leading().is_some());
    // The observation shows our own term: nothing to do.
    m.handle_observed::<()>(
        t1,
        Ok(Some(Leader {
            id: "m1".into(),
            term: 5,
            name: None,
        })),
    );
    m.handle_timeout(t1);
    assert!(drain(&mut m).is_empty());
    // Another term, and the election agrees: stop.
    m.handle_observed::<()>(
        t1,
        Ok(Some(Leader {
            id: "m2".into(),
            term: 9,
            name: None,
        })),
    );
    m.handle_timeout(t1);
    assert_eq!(drain(&mut m), [MemberAction::Campaign(sid("s1"))]);
    m.handle_campaign::<()>(t1, Ok(None));
    assert_eq!(drain(&mut m), [MemberAction::StopLeading { resign: None }]);
    assert!(m.leading().is_none());
}

#[test]
fn a_fenced_leader_campaigns_again_after_the_minimum_backoff() {
    let t0 = Instant::now();
    let mut m = leading(t0);
    let t1 = t0 + Duration::from_secs(2);
    m.handle_leader_ended(t1);
    assert!(m.leading().is_none());
    assert_eq!(m.poll_timeout(), Some(t1 + Duration::from_millis(100)));
    m.handle_timeout(t1 + Duration::from_millis(100));
    assert_eq!(drain(&mut m), [MemberAction::Campaign(sid("s1"))]);
}

#[test]
fn halting_resigns_then_closes_the_session() {
    let t0 = Instant::now();
    let mut m = leading(t0);
    m.halt();
    assert_eq!(
        drain(&mut m),
        [
            MemberAction::StopLeading {
                resign: Some(fence("s1", 5))
            },
            MemberAction::Close(sid("s1")),
            MemberAction::Halted,
        ]
    );
    assert_eq!(m.poll_timeout(), None);
    m.handle_observed::<()>(t0, Ok(None));
    m.handle_timeout(t0 + TTL);
    assert!(drain(&mut m).is_empty(), "nothing after halt");
}

#[test]
fn failed_registrations_and_observations_back_off() {
    let t0 = Instant::now();
    let mut m = machine();
    drain(&mut m);
    m.handle_registered(t0, Err::<SessionId, _>("refused"));
    m.handle_observed(t0, Err::<Option<Leader>, _>("refused"));
    let next = m.poll_timeout().expect("retries");
    assert!(
        next > t0 && next <= t0 + Duration::from_millis(200),
        "{next:?}"
    );
    m.handle_timeout(t0 + Duration::from_millis(200));
    let actions = drain(&mut m);
    assert!(actions.contains(&MemberAction::Register), "{actions:?}");
    assert!(actions.contains(&MemberAction::Observe), "{actions:?}");
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, MemberAction::Campaign(_))),
        "no campaign without a session"
    );
}

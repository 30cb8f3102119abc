//! A member's session and candidacy as a pure state machine: no I/O, no
//! clock, no tasks. The tokio driver (`member.rs`) carries out its actions
//! and reports their outcomes, in the worker's and the leader's shape.
//!
//! | state | input | next |
//! |---|---|---|
//! | start | — | `Register` (open a session, write the member key bound to it); `Observe` |
//! | registering | registered | session live: renew every TTL/3; campaign at once |
//! | registering | error | `Register` again after a backoff |
//! | live | renewal: still there | next renewal in TTL/3 |
//! | live | renewal: session gone | stop leading (no resignation: the store already ended it); `Register` |
//! | live | the member key could not be written (session gone), or the member saw its own key vanish | the same, at once, with a `Close` of the old session first (best effort) |
//! | live | renewal errors for a whole TTL | as if gone (the store may have expired it), but first `Close` the old session (best effort: on Consul a lingering session would hold the member key and the leader key for up to 2 × TTL); `Register` |
//! | live | renewal error, within the TTL | renew again after a short backoff (at most TTL/10) |
//! | not leading | observation (any) | campaign |
//! | leading | observation of another term or none | campaign to check (a stale observation must not end a leadership the store still grants) |
//! | campaigning | won | `Lead(fence)` (a different term while leading: stop the old loop first) |
//! | campaigning, leading | not won | `StopLeading` |
//! | leading | the leader loop ended (fenced) | campaign after the minimum backoff |
//! | any | halt | (exclusive) `Release` first; `StopLeading` with resignation; `Close` the session; `Halted` |
//!
//! Exclusive mode (`exclusive: Some(margin)`) adds self-fencing. The lease
//! deadline is the time a successful registration or renewal was *sent* plus
//! the TTL: the store cannot expire the session before it (its clock starts
//! when it receives the request, later). The member starts released and:
//!
//! | state | input | next |
//! |---|---|---|
//! | released | registered | `Restore { resync: true }` (a new session: read the assignments afresh) |
//! | released | renewal: still there, answered before the new deadline − margin | `Restore { resync: false }` (the session never ended) |
//! | released | renewal: still there, answered at or after the new deadline − margin | stays released (a restore would be released again at once) |
//! | holding | time reaches deadline − margin | `Release` |
//! | holding | session gone / lost | `Release` |
//! | holding | halt | `Release` (before the session is closed) |

use std::collections::VecDeque;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::SeedableRng;
use std::time::Instant;
use worker_core::{Backoff, Fence, Leader, SessionId};

/// The member's timing.
///
/// Non-exhaustive: start from [`MemberTiming::new`] and set the public fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemberTiming {
    /// Session / lease TTL; renewals every TTL/3.
    pub ttl: Duration,
    /// First retry delay after a failed store call.
    pub backoff_min: Duration,
    /// Largest retry delay.
    pub backoff_max: Duration,
    /// Exclusive mode: `Some(margin)`, release the workload `margin` before
    /// the lease deadline unless renewed. `None`: keep it through outages.
    pub exclusive: Option<Duration>,
}

impl MemberTiming {
    /// Sessions of `ttl`, retries from 100 ms up to 10 s, not exclusive;
    /// set the public fields for more.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            exclusive: None,
        }
    }
}

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MemberAction {
    /// Open a session with the TTL and write the member key bound to it;
    /// report with [`MemberMachine::handle_registered`].
    Register,
    /// Renew the session; report with [`MemberMachine::handle_renewed`].
    Renew(SessionId),
    /// (Re)open the leadership observation and report each observation (or
    /// its failure) with [`MemberMachine::handle_observed`].
    Observe,
    /// Try to lead with the session; report with [`MemberMachine::handle_campaign`].
    Campaign(SessionId),
    /// Start the leader loop with this fence; report its end with
    /// [`MemberMachine::handle_leader_ended`].
    Lead(Fence),
    /// Stop the leader loop now; resign with the fence when one is given.
    StopLeading {
        /// The fence to resign with (on halt), or `None` when the
        /// leadership is already gone.
        resign: Option<Fence>,
    },
    /// Close the session (its keys go with it).
    Close(SessionId),
    /// Exclusive mode: release the whole workload now (the lease may end
    /// before it can be renewed).
    Release,
    /// Exclusive mode: the lease is renewed; publish the workload again,
    /// after reading the assignments afresh when `resync` (a new session).
    Restore {
        /// Read the assignments afresh first.
        resync: bool,
    },
    /// Nothing more comes.
    Halted,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Session {
    /// No session; `Register` is due at `retry_at` (or in flight when `None`).
    Absent { retry_at: Option<Instant> },
    /// A live session.
    Live {
        id: SessionId,
        renewed_at: Instant,
        /// When to renew next; `None` while a renewal is in flight.
        renew_at: Option<Instant>,
    },
}

/// A member's session and candidacy. See the [module docs](self).
#[derive(Debug)]
#[allow(clippy::struct_excessive_bools)] // independent flags of one machine
pub struct MemberMachine {
    timing: MemberTiming,
    campaign: bool,
    session: Session,
    /// When to reopen the observation; `None` while it is open.
    observe_at: Option<Instant>,
    /// When to campaign; `None` when not wanted or in flight.
    campaign_at: Option<Instant>,
    campaigning: bool,
    leading: Option<Fence>,
    halted: bool,
    register_backoff: Backoff,
    renew_backoff: Backoff,
    observe_backoff: Backoff,
    campaign_backoff: Backoff,
    rng: SmallRng,
    out: VecDeque<MemberAction>,
    /// When the Register / Renew in flight was asked for.
    sent_at: Instant,
    /// The store cannot end the session before this.
    lease_until: Option<Instant>,
    /// Exclusive mode: the workload is released.
    released: bool,
}

impl MemberMachine {
    /// A member starting at `now`; `campaign` says whether it may lead.
    /// `seed` feeds the backoff jitter (derive it from the instance id).
    pub fn new(timing: MemberTiming, campaign: bool, seed: u64, now: Instant) -> Self {
        let backoff = || Backoff::new(timing.backoff_min, timing.backoff_max);
        let mut out = VecDeque::new();
        out.push_back(MemberAction::Register);
        out.push_back(MemberAction::Observe);
        Self {
            timing,
            campaign,
            session: Session::Absent { retry_at: None },
            observe_at: None,
            campaign_at: None,
            campaigning: false,
            leading: None,
            halted: false,
            register_backoff: backoff(),
            renew_backoff: backoff(),
            observe_backoff: backoff(),
            campaign_backoff: backoff(),
            rng: SmallRng::seed_from_u64(seed),
            out,
            sent_at: now,
            lease_until: None,
            released: timing.exclusive.is_some(),
        }
    }

    /// Exclusive mode: true while the workload is released.
    pub fn released(&self) -> bool {
        self.released
    }

    fn release(&mut self) {
        if self.timing.exclusive.is_some() && !self.released {
            self.released = true;
            self.out.push_back(MemberAction::Release);
        }
    }

    fn restore(&mut self, resync: bool) {
        if self.released {
            self.released = false;
            self.out.push_back(MemberAction::Restore { resync });
        }
    }

    fn release_at(&self) -> Option<Instant> {
        let margin = self.timing.exclusive?;
        if self.released {
            return None;
        }
        let until = self.lease_until?;
        Some(until.checked_sub(margin).unwrap_or(until))
    }

    /// The live session, if any.
    pub fn session(&self) -> Option<&SessionId> {
        match &self.session {
            Session::Live { id, .. } => Some(id),
            Session::Absent { .. } => None,
        }
    }

    /// The fence while this member leads.
    pub fn leading(&self) -> Option<&Fence> {
        self.leading.as_ref()
    }

    /// True once halted.
    pub fn halted(&self) -> bool {
        self.halted
    }

    fn renew_every(&self) -> Duration {
        self.timing.ttl / 3
    }

    fn want_campaign(&mut self, at: Instant) {
        if self.campaign && !self.halted {
            self.campaign_at = Some(self.campaign_at.map_or(at, |t| t.min(at)));
        }
    }

    fn stop_leading(&mut self) {
        if self.leading.take().is_some() {
            self.out
                .push_back(MemberAction::StopLeading { resign: None });
        }
    }

    fn session_lost(&mut self, now: Instant) {
        self.release();
        self.lease_until = None;
        self.stop_leading();
        if let Session::Live { id, .. } = &self.session {
            // Gone as far as this member knows; maybe not for the store.
            self.out.push_back(MemberAction::Close(id.clone()));
        }
        self.session = Session::Absent { retry_at: None };
        self.campaign_at = None;
        self.sent_at = now;
        self.out.push_back(MemberAction::Register);
    }

    /// The outcome of [`MemberAction::Register`].
    pub fn handle_registered<E>(&mut self, now: Instant, result: Result<SessionId, E>) {
        if self.halted {
            if let Ok(id) = result {
                self.out.push_back(MemberAction::Close(id));
            }
            return;
        }
        if let Ok(id) = result {
            self.register_backoff.reset();
            self.lease_until = Some(self.sent_at + self.timing.ttl);
            self.restore(true);
            self.session = Session::Live {
                id,
                renewed_at: now,
                renew_at: Some(now + self.renew_every()),
            };
            self.want_campaign(now);
        } else {
            let delay = self.register_backoff.next_delay(&mut self.rng);
            self.session = Session::Absent {
                retry_at: Some(now + delay),
            };
        }
    }

    /// The outcome of [`MemberAction::Renew`]: `Ok(false)` when the session is gone.
    #[allow(clippy::needless_pass_by_value)] // the driver hands over the outcome it got
    pub fn handle_renewed<E>(&mut self, now: Instant, result: Result<bool, E>) {
        if self.halted {
            return;
        }
        let ttl = self.timing.ttl;
        let every = self.renew_every();
        let Session::Live {
            renewed_at,
            renew_at,
            ..
        } = &mut self.session
        else {
            return;
        };
        match result {
            Ok(true) => {
                self.renew_backoff.reset();
                *renewed_at = now;
                *renew_at = Some(now + every);
                self.lease_until = Some(self.sent_at + ttl);
                // Answered too late: the new deadline − margin has already
                // passed, and a restore would be released again at once.
                let margin = self.timing.exclusive.unwrap_or_default();
                if now + margin < self.sent_at + ttl {
                    self.restore(false);
                }
            }
            Ok(false) => {
                // The store ended it: nothing to close.
                self.session = Session::Absent { retry_at: None };
                self.session_lost(now);
            }
            Err(_) if now >= *renewed_at + ttl => self.session_lost(now),
            Err(_) => {
                let delay = self.renew_backoff.next_delay(&mut self.rng).min(ttl / 10);
                *renew_at = Some(now + delay);
            }
        }
    }

    /// The store says `session` is gone though no renewal said so yet: a
    /// member-key write bound to it answered that it no longer exists, or
    /// the member saw its own key vanish. Released at once (exclusive mode),
    /// then registered anew, after a `Close` of the session (best effort: a
    /// key deleted by hand leaves the session alive, maybe holding the
    /// leader key). Ignored for a session that is not the live one.
    pub fn handle_session_gone(&mut self, now: Instant, session: &SessionId) {
        if self.halted || self.session() != Some(session) {
            return;
        }
        self.session_lost(now);
    }

    /// An observation of leadership, or the observation's failure (then it
    /// is reopened after a backoff).
    pub fn handle_observed<E>(&mut self, now: Instant, result: Result<Option<Leader>, E>) {
        if self.halted {
            return;
        }
        if let Ok(observed) = result {
            self.observe_backoff.reset();
            let same = match (&self.leading, &observed) {
                (Some(f), Some(o)) => o.term == f.term(),
                _ => false,
            };
            if !same {
                // Not leading: maybe this member can lead now. Leading but
                // shown otherwise: ask the election before stopping.
                self.want_campaign(now);
            }
        } else {
            let delay = self.observe_backoff.next_delay(&mut self.rng);
            self.observe_at = Some(now + delay);
        }
    }

    /// The outcome of [`MemberAction::Campaign`].
    pub fn handle_campaign<E>(&mut self, now: Instant, result: Result<Option<Fence>, E>) {
        self.campaigning = false;
        if self.halted {
            return;
        }
        match result {
            Ok(Some(fence)) => {
                self.campaign_backoff.reset();
                if self.session() != Some(fence.session()) {
                    return; // won with a session that has since been replaced
                }
                if self
                    .leading
                    .as_ref()
                    .is_some_and(|f| f.term() == fence.term())
                {
                    return; // still the same leadership
                }
                self.stop_leading();
                self.leading = Some(fence.clone());
                self.out.push_back(MemberAction::Lead(fence));
            }
            Ok(None) => {
                self.campaign_backoff.reset();
                self.stop_leading();
            }
            Err(_) => {
                let delay = self.campaign_backoff.next_delay(&mut self.rng);
                self.want_campaign(now + delay);
            }
        }
    }

    /// The leader loop ended by itself (a write was fenced).
    pub fn handle_leader_ended(&mut self, now: Instant) {
        if self.halted || self.leading.take().is_none() {
            return;
        }
        self.want_campaign(now + self.timing.backoff_min);
    }

    /// Leave: stop leading and resign, close the session.
    pub fn halt(&mut self) {
        if self.halted {
            return;
        }
        // The application gets its removal before the session is closed.
        self.release();
        self.halted = true;
        if let Some(fence) = self.leading.take() {
            self.out.push_back(MemberAction::StopLeading {
                resign: Some(fence),
            });
        }
        if let Session::Live { id, .. } = &self.session {
            self.out.push_back(MemberAction::Close(id.clone()));
        }
        self.session = Session::Absent { retry_at: None };
        self.out.push_back(MemberAction::Halted);
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.halted {
            return None;
        }
        let session = match &self.session {
            Session::Absent { retry_at } => *retry_at,
            Session::Live { renew_at, .. } => *renew_at,
        };
        let campaign = if self.campaigning || self.session().is_none() {
            None
        } else {
            self.campaign_at
        };
        [session, campaign, self.observe_at, self.release_at()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Time passed: register, renew, reobserve or campaign when due.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.halted {
            return;
        }
        if self.release_at().is_some_and(|t| now >= t) {
            self.release();
        }
        match &mut self.session {
            Session::Absent { retry_at } if retry_at.is_some_and(|t| now >= t) => {
                *retry_at = None;
                self.sent_at = now;
                self.out.push_back(MemberAction::Register);
            }
            Session::Live { id, renew_at, .. } if renew_at.is_some_and(|t| now >= t) => {
                *renew_at = None;
                self.sent_at = now;
                self.out.push_back(MemberAction::Renew(id.clone()));
            }
            _ => {}
        }
        if self.observe_at.is_some_and(|t| now >= t) {
            self.observe_at = None;
            self.out.push_back(MemberAction::Observe);
        }
        if !self.campaigning && self.campaign_at.is_some_and(|t| now >= t) {
            if let Some(id) = self.session().cloned() {
                self.campaign_at = None;
                self.campaigning = true;
                self.out.push_back(MemberAction::Campaign(id));
            }
        }
    }

    /// The next thing to do, if any. Drain after every input.
    pub fn poll(&mut self) -> Option<MemberAction> {
        self.out.pop_front()
    }
}

//! A member's settings ([`MemberConfig`]), their defaults and their
//! validation.

use std::time::Duration;

use worker_core::{validate_instance_id, ConfigError, WorkerConfig};

use crate::layout::{Layout, MemberMeta};
use crate::machine::LeaderTiming;

/// The default session / lease TTL: 5 s. With the default leader soak
/// ([`DEFAULT_LEADER_SOAK`](crate::DEFAULT_LEADER_SOAK)) and worker soak, a
/// dead member's items are settled on the others within 10 s; the member
/// renews every TTL/3, so three renewals in a row must fail before a live
/// member is taken for dead. On Consul it needs sessions bound to an agent
/// check (below 10 s a plain session TTL is refused); see `docs/leader.md`,
/// "Failover with the defaults".
pub const DEFAULT_TTL: Duration = Duration::from_secs(5);

/// The default `leader_settle` of a member's worker: 2 s, the default leader
/// soak and a second more. A new leader plans once its soak is over and its
/// writes are fenced, so a member's worker need not wait the 5 s a worker
/// following an unknown leader waits ([`WorkerConfig::new`]).
pub const DEFAULT_MEMBER_LEADER_SETTLE: Duration = Duration::from_secs(2);

/// The default drain timeout.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Settings of one member.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemberConfig {
    /// The worker's settings; its `instance_id` is the member's id and its
    /// `prefix` must equal `layout.assignments`. Its `leader_settle`
    /// defaults to [`DEFAULT_MEMBER_LEADER_SETTLE`].
    pub worker: WorkerConfig,
    /// Where the keys live. Default [`Layout::default`].
    pub layout: Layout,
    /// What the member key says (weight). Default weight 1.
    pub meta: MemberMeta,
    /// Session / lease TTL. Default [`DEFAULT_TTL`] (on Consul, below 10 s
    /// only with sessions bound to an agent check).
    pub ttl: Duration,
    /// The leader's soak and retry timing. Default
    /// [`DEFAULT_LEADER_SOAK`](crate::DEFAULT_LEADER_SOAK).
    pub leader: LeaderTiming,
    /// Whether this member may lead. Default true.
    pub campaign: bool,
    /// Exclusive mode: `Some(margin)`. See [`MemberConfig::exclusive`].
    pub exclusive: Option<Duration>,
    /// How long a drain waits for the items to move away before the member
    /// leaves anyway. Default [`DEFAULT_DRAIN_TIMEOUT`].
    pub drain_timeout: Duration,
    /// The application acknowledges settled changes itself
    /// ([`MemberHandle::ack`]); otherwise a change counts as applied once
    /// published. Default false.
    ///
    /// [`MemberHandle::ack`]: super::MemberHandle::ack
    pub manual_ack: bool,
    /// Take part in the acknowledged handoff (report `acked`). With false,
    /// moves away from this member do not wait for it: faster, but the old
    /// and the new owner may both hold an item for a moment. Default true.
    pub handoff: bool,
}

impl MemberConfig {
    /// A member `instance_id` with every other setting at its default.
    pub fn new(instance_id: impl Into<String>) -> Self {
        Self {
            worker: WorkerConfig::new(instance_id).leader_settle(DEFAULT_MEMBER_LEADER_SETTLE),
            layout: Layout::default(),
            meta: MemberMeta::default(),
            ttl: DEFAULT_TTL,
            leader: LeaderTiming::default(),
            campaign: true,
            exclusive: None,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            manual_ack: false,
            handoff: true,
        }
    }

    /// The member's id.
    pub fn instance_id(&self) -> &str {
        &self.worker.instance_id
    }

    /// Sets the key layout (and the worker's prefix with it).
    #[must_use]
    pub fn layout(mut self, layout: Layout) -> Self {
        self.worker.prefix.clone_from(&layout.assignments);
        self.layout = layout;
        self
    }

    /// Sets the member's weight.
    #[must_use]
    pub fn weight(mut self, weight: u32) -> Self {
        self.meta.weight = weight;
        self
    }

    /// Sets the member's zone (its failure domain), published in its member
    /// key.
    #[must_use]
    pub fn zone(mut self, zone: impl Into<String>) -> Self {
        self.meta.zone = Some(zone.into());
        self
    }

    /// Sets the session TTL.
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Sets how long a departed member's items stay assigned to it (see
    /// [`LeaderTiming::rebalance_delay`]).
    #[must_use]
    pub fn rebalance_delay(mut self, delay: Duration) -> Self {
        self.leader.rebalance_delay = delay;
        self
    }

    /// Sets the replicas per item (see [`LeaderTiming::replicas`]); at
    /// least 1.
    #[must_use]
    pub fn replicas(mut self, replicas: u32) -> Self {
        self.leader.replicas = replicas.max(1);
        self
    }

    /// Turns make-before-break moves on or off (see
    /// [`LeaderTiming::prepare`]; default on). Off, a planned move is
    /// revoke, acknowledgement, assign, and an application that holds one
    /// replica per item never sees a secondary.
    #[must_use]
    pub fn prepare(mut self, prepare: bool) -> Self {
        self.leader.prepare = prepare;
        self
    }

    /// Sets how many items may be in handoff at once (see
    /// [`LeaderTiming::max_moves_in_flight`]).
    #[must_use]
    pub fn max_moves_in_flight(mut self, n: usize) -> Self {
        self.leader.max_moves_in_flight = n.max(1);
        self
    }

    /// Exclusive mode with a safety `margin`: an item is never in two
    /// members' acknowledged workloads at once. This member releases its
    /// whole workload `margin` before its lease deadline unless it renewed
    /// (and starts released until registered) or at once when it learns its
    /// session is gone; as leader, it gives the items of a member that is
    /// gone to another only that member's whole TTL after its key vanished
    /// (the store may end a session early while the member, cut off, still
    /// believes in it). Every member of a cluster must use the same setting.
    #[must_use]
    pub fn exclusive(mut self, margin: Duration) -> Self {
        self.exclusive = Some(margin);
        self.leader.exclusive = Some(margin);
        self.worker.start_released = true;
        self
    }

    /// Sets how long a move from a live member may wait for its
    /// acknowledgement before the leader ends that member's session (see
    /// [`LeaderTiming::handoff_timeout`]).
    #[must_use]
    pub fn handoff_timeout(mut self, timeout: Duration) -> Self {
        self.leader.handoff_timeout = timeout;
        self
    }

    /// Sets the drain timeout.
    #[must_use]
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// The application acknowledges settled changes with
    /// [`MemberHandle::ack`] (for example after it applied them).
    ///
    /// [`MemberHandle::ack`]: super::MemberHandle::ack
    #[must_use]
    pub fn manual_ack(mut self, manual: bool) -> Self {
        self.manual_ack = manual;
        self
    }

    /// Whether to take part in the acknowledged handoff (see
    /// [`MemberConfig::handoff`](Self#structfield.handoff)).
    #[must_use]
    pub fn handoff(mut self, on: bool) -> Self {
        self.handoff = on;
        self
    }

    /// Sets the leader's soak (and max soak = 10 × soak).
    #[must_use]
    pub fn leader_soak(mut self, soak: Duration) -> Self {
        let t = self.leader;
        self.leader = LeaderTiming {
            soak,
            max_soak: soak.saturating_mul(10),
            ..t
        };
        self
    }

    /// Sets the worker's soak and leader settle.
    #[must_use]
    pub fn worker_timing(mut self, soak: Duration, leader_settle: Duration) -> Self {
        self.worker = self.worker.soak(soak).leader_settle(leader_settle);
        self
    }

    /// Checks every setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_instance_id(self.instance_id())?;
        self.layout.validate()?;
        if let Some(zone) = &self.meta.zone {
            MemberMeta::validate_zone(zone)?;
        }
        if self.worker.prefix != self.layout.assignments {
            return Err(ConfigError::new(
                "prefix",
                "the worker's prefix must be the layout's assignments prefix",
            ));
        }
        if self.ttl < Duration::from_millis(30) {
            return Err(ConfigError::new("ttl", "must be at least 30ms"));
        }
        if self.leader.max_moves_in_flight == 0 {
            return Err(ConfigError::new(
                "max_moves_in_flight",
                "must be at least 1 (leave it unset for no limit)",
            ));
        }
        if self.leader.max_soak < self.leader.soak {
            return Err(ConfigError::new(
                "leader_soak",
                format!(
                    "the leader's max soak ({:?}) is shorter than its soak ({:?})",
                    self.leader.max_soak, self.leader.soak
                ),
            ));
        }
        if self.leader.backoff_min.is_zero() || self.leader.backoff_min > self.leader.backoff_max {
            return Err(ConfigError::new(
                "leader.backoff_min",
                "must be more than 0 and at most leader.backoff_max",
            ));
        }
        // Exclusive mode is one setting seen in three places: the member
        // (self-fencing), its worker (starts released) and its leader (waits
        // before giving a gone member's items away). `exclusive()` sets all
        // three; fields set one by one must agree.
        if self.leader.exclusive != self.exclusive {
            return Err(ConfigError::new(
                "exclusive",
                format!(
                    "the member's exclusive margin ({:?}) and its leader's ({:?}) differ; set both with MemberConfig::exclusive",
                    self.exclusive, self.leader.exclusive
                ),
            ));
        }
        if self.exclusive.is_some() != self.worker.start_released {
            let why = if self.exclusive.is_some() {
                "exclusive mode needs the worker to start released (worker.start_released = true); set it with MemberConfig::exclusive"
            } else {
                "worker.start_released is only for exclusive mode: a member's worker that starts released would never be restored"
            };
            return Err(ConfigError::new("exclusive", why));
        }
        if self.leader.handoff_timeout.is_zero() {
            return Err(ConfigError::new("handoff_timeout", "must be more than 0"));
        }
        if self.exclusive.is_some() && !self.handoff {
            return Err(ConfigError::new(
                "exclusive",
                "needs the acknowledged handoff (handoff = true)",
            ));
        }
        if let Some(margin) = self.exclusive {
            if margin.is_zero() || margin >= self.ttl / 2 {
                return Err(ConfigError::new(
                    "exclusive_margin",
                    format!(
                        "{margin:?} must be more than 0 and less than half the TTL ({:?})",
                        self.ttl / 2
                    ),
                ));
            }
        }
        self.worker.timing()?;
        Ok(())
    }
}

//! Runtime configuration: which backend, where, and the worker's settings.
//!
//! Read from a TOML file ([`Config::from_toml_file`]), from `COORDINATOR_*`
//! environment variables ([`Config::from_env`]), or built in code. Durations
//! are written as `300ms`, `2s`, `1m`.
//!
//! ```
//! let config: coordinator::Config = toml::from_str(r#"
//!     backend = "memory"
//!     instance_id = "m1"
//!     soak = "200ms"
//! "#).unwrap();
//! assert_eq!(config.soak, std::time::Duration::from_millis(200));
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use worker_core::{validate_instance_id, ConfigError, WorkerConfig, DEFAULT_PREFIX};

/// The default leader key (Consul) or election name (etcd).
pub const DEFAULT_LEADER: &str = "service/coordinator/leader";

/// Which store the worker talks to.
///
/// Non-exhaustive: a later release may add a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum BackendKind {
    /// Consul's HTTP API (cargo feature `consul`, on by default).
    #[default]
    Consul,
    /// etcd's v3 gRPC API (cargo feature `etcd`).
    Etcd,
    /// The in-process memory store (always compiled in).
    Memory,
}

impl BackendKind {
    /// The backend's name as written in configs and flags.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Consul => "consul",
            Self::Etcd => "etcd",
            Self::Memory => "memory",
        }
    }

    /// Whether this build includes the backend.
    pub fn is_compiled_in(self) -> bool {
        match self {
            Self::Consul => cfg!(feature = "consul"),
            Self::Etcd => cfg!(feature = "etcd"),
            Self::Memory => true,
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A backend name that is not one of `consul`, `etcd` or `memory`; from
/// [`BackendKind`]'s `FromStr`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown backend {name:?}: expected consul, etcd or memory")]
pub struct ParseBackendKindError {
    name: String,
}

impl ParseBackendKindError {
    /// The name that was given.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl FromStr for BackendKind {
    type Err = ParseBackendKindError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "consul" => Ok(Self::Consul),
            "etcd" => Ok(Self::Etcd),
            "memory" => Ok(Self::Memory),
            other => Err(ParseBackendKindError {
                name: other.to_owned(),
            }),
        }
    }
}

/// Parses a duration such as `300ms`, `2s` or `1m`.
///
/// A negative duration (`-1s`) is refused as such, not as a syntax error.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.starts_with('-') {
        return Err(format!(
            "{s:?} is negative: a duration must be 0 or more (e.g. 300ms, 2s, 1m)"
        ));
    }
    humantime::parse_duration(t)
        .map_err(|e| format!("invalid duration {s:?} ({e}); write e.g. 300ms, 2s or 1m"))
}

/// The range of values each duration setting accepts (inclusive): the
/// bounds below which a setting cannot work and above which it is surely
/// a typo (`soak = "1000years"`). [`Config::validate`] checks them.
pub const DURATION_RANGES: &[(&str, Duration, Duration)] = &[
    ("soak", Duration::ZERO, Duration::from_secs(3600)),
    ("max_soak", Duration::ZERO, Duration::from_secs(6 * 3600)),
    ("leader_settle", Duration::ZERO, Duration::from_secs(3600)),
    (
        "consul_wait",
        Duration::from_secs(1),
        Duration::from_secs(600),
    ),
    (
        "etcd_keepalive",
        Duration::from_millis(200),
        Duration::from_secs(600),
    ),
    (
        "ttl",
        Duration::from_secs(1),
        Duration::from_secs(24 * 3600),
    ),
    ("leader_soak", Duration::ZERO, Duration::from_secs(3600)),
    (
        "rebalance_delay",
        Duration::ZERO,
        Duration::from_secs(7 * 24 * 3600),
    ),
    (
        "exclusive_margin",
        Duration::from_millis(1),
        Duration::from_secs(24 * 3600),
    ),
    (
        "drain_timeout",
        Duration::ZERO,
        Duration::from_secs(24 * 3600),
    ),
    (
        "handoff_timeout",
        Duration::from_secs(1),
        Duration::from_secs(7 * 24 * 3600),
    ),
];

/// Checks `value` of the duration setting `field` against [`DURATION_RANGES`].
pub fn check_duration(field: &'static str, value: Duration) -> Result<(), ConfigError> {
    let Some(&(_, lo, hi)) = DURATION_RANGES.iter().find(|(f, ..)| *f == field) else {
        return Ok(());
    };
    let show = |d: Duration| humantime::format_duration(d).to_string();
    if value < lo {
        return Err(ConfigError::new(
            field,
            format!(
                "{} is too short: give {} to {}",
                show(value),
                show(lo),
                show(hi)
            ),
        ));
    }
    if value > hi {
        return Err(ConfigError::new(
            field,
            format!(
                "{} is too long: give {} to {}",
                show(value),
                show(lo),
                show(hi)
            ),
        ));
    }
    Ok(())
}

/// Everything needed to run a worker against a chosen backend.
///
/// Non-exhaustive: build one with [`Config::new`], [`Config::from_env`] or
/// [`Config::from_toml_file`], then set the public fields.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
// The file's schema: each bool is an on/off setting of its own (`exclusive`,
// `handoff`, `session_check`, `prepare`), written `key = true` by operators.
#[allow(clippy::struct_excessive_bools)]
pub struct Config {
    /// Which backend. Default `consul`.
    #[serde(default)]
    pub backend: BackendKind,
    /// Store addresses, e.g. `http://127.0.0.1:8500` or several etcd members.
    /// Default: Consul `http://127.0.0.1:8500`, etcd `http://127.0.0.1:2379`.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// This member's id (required; a file may leave it to a flag or
    /// `COORDINATOR_INSTANCE_ID`).
    #[serde(default)]
    pub instance_id: String,
    /// Assignment prefix. Default `service/coordinator/assignments/`.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Consul leader key / etcd election name. Default `service/coordinator/leader`.
    #[serde(default = "default_leader")]
    pub leader: String,
    /// Soak time. Default 500 ms.
    #[serde(default = "default_soak", with = "humantime_serde")]
    pub soak: Duration,
    /// Starvation cap. Default 10 × soak.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_soak: Option<Duration>,
    /// Wait after a new leader. Default: for a worker alone 5 s; for a full
    /// member its `leader_soak` + 1 s (2 s), since a new leader writes its
    /// first plan, fenced, once its soak is over
    /// ([`Config::leader_settle_for`]).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub leader_settle: Option<Duration>,
    /// Consul blocking-query wait: a silent (black-holed) connection is noticed
    /// after `wait + wait/16 + 5 s`. Default 5 min; at most 10 min.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub consul_wait: Option<Duration>,
    /// etcd keep-alive: bounds each request and the detection of a silent watch
    /// stream. Default 10 s; at least 200 ms.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub etcd_keepalive: Option<Duration>,
    /// Consul ACL token file (else `CONSUL_HTTP_TOKEN`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) to verify the store's TLS certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS; needs `client_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS; needs `client_cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<PathBuf>,
    /// etcd user name; needs `password_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// File holding the etcd password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// The etcd password itself, for a caller that holds it (the program
    /// takes it from `ETCDCTL_USER=name:password` or `ETCDCTL_PASSWORD`).
    /// Never read from or written to a file, never shown by `Debug`; used
    /// when `password_file` is not set.
    #[serde(skip)]
    pub password: Option<String>,
    /// Members prefix (a full member only). Default `service/coordinator/members/`.
    #[serde(default = "default_members_prefix")]
    pub members_prefix: String,
    /// Work-items prefix (a full member only). Default `service/coordinator/work/`.
    #[serde(default = "default_work_prefix")]
    pub work_prefix: String,
    /// Session / lease TTL of a full member. Default 5 s. On Consul, below
    /// 10 s only with `session_check` (the default).
    #[serde(default = "default_ttl", with = "humantime_serde")]
    pub ttl: Duration,
    /// How long the leader lets member and item changes soak before planning. Default 1 s.
    #[serde(default = "default_leader_soak", with = "humantime_serde")]
    pub leader_soak: Duration,
    /// This member's relative share of the work. Default 1; 0 takes nothing.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// This member's failure domain (zone, rack, host group), published in
    /// its member key and shown by `status`. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Replicas per item (a leader setting, the same on every member): one
    /// primary and `replicas − 1` secondaries on distinct members, spread
    /// over zones. A work item's envelope may ask for another count. Default
    /// 1 (one owner per item).
    #[serde(default = "default_replicas")]
    pub replicas: u32,
    /// How long the items of a member that left stay assigned to it, so that
    /// a member restarted with the same id within it gets them back and
    /// nothing moves (a leader setting). Default 0.
    #[serde(default, with = "humantime_serde")]
    pub rebalance_delay: Duration,
    /// Handoff-records prefix (a full member only). Default `service/coordinator/handoff/`.
    #[serde(default = "default_handoff_prefix")]
    pub handoff_prefix: String,
    /// Drain-requests prefix (a full member only). Default `service/coordinator/drain/`.
    #[serde(default = "default_drain_prefix")]
    pub drain_prefix: String,
    /// The key every leader transaction checks and bumps (a full member
    /// only). Default `service/coordinator/sequence`.
    #[serde(default = "default_sequence_key")]
    pub sequence_key: String,
    /// Exclusive mode: an item is never in two members' acknowledged
    /// workloads at once; a member that cannot renew its session releases
    /// its workload before the store could expire it. Default false.
    #[serde(default)]
    pub exclusive: bool,
    /// Exclusive mode's safety margin for clock drift and release time.
    /// Default TTL/5.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub exclusive_margin: Option<Duration>,
    /// At most this many items in handoff at once (a leader setting).
    /// Default unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_moves_in_flight: Option<usize>,
    /// How long a draining member waits for its items to move away before it
    /// leaves anyway. Default 60 s.
    #[serde(default = "default_drain_timeout", with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// The store's largest transaction request, in bytes (Consul
    /// `limits.txn_max_req_len`, etcd `--max-request-bytes`): the leader's
    /// writes are cut to fit it. Default: the store's default (Consul
    /// 512 KiB, etcd 1.5 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub txn_max_bytes: Option<usize>,
    /// The store's most operations per transaction (etcd `--max-txn-ops`,
    /// default 128; Consul's 64 is fixed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub txn_max_ops: Option<usize>,
    /// The store's largest value, in bytes (Consul `kv_max_value_size`,
    /// default 512 KiB; etcd's is its request limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_max_bytes: Option<usize>,
    /// How long a move from a live member may wait for that member's
    /// acknowledgement before the leader ends its session (a leader
    /// setting). Default 5 min.
    #[serde(default = "default_handoff_timeout", with = "humantime_serde")]
    pub handoff_timeout: Duration,
    /// Whether this member writes acknowledgements so that a leader moves
    /// its items revoke, acknowledge, assign (a full member only). Default
    /// true; false makes moves faster where a short overlap of owners is
    /// harmless. Must be true in exclusive mode.
    #[serde(default = "default_true")]
    pub handoff: bool,
    /// Consul: bind a full member's session to a TTL health check on its
    /// agent (a service `coordinator-<instance id>`), so that a member that
    /// stops renewing loses its session after its TTL on time, not within
    /// Consul's lazy 1–2 × TTL; falls back to a plain session TTL (with a
    /// warning) where the ACL token lacks `service:write` on `coordinator`.
    /// Default true. Ignored by etcd (leases expire on time).
    #[serde(default = "default_true")]
    pub session_check: bool,
    /// Make-before-break planned moves (a leader setting): the new owner of
    /// an item's primary role first gets the item as a secondary
    /// (preparing) and becomes primary once it acknowledged it. Default
    /// true. False: every move is revoke, acknowledge, assign, and no
    /// secondary appears with one replica
    /// ([`LeaderTiming::prepare`](leader_core::machine::LeaderTiming::prepare)).
    #[serde(default = "default_true")]
    pub prepare: bool,
}

fn default_true() -> bool {
    true
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No secrets are held here (only file paths), but keep the output short.
        f.debug_struct("Config")
            .field("backend", &self.backend)
            .field("endpoints", &self.endpoints)
            .field("instance_id", &self.instance_id)
            .field("prefix", &self.prefix)
            .field("leader", &self.leader)
            .field("soak", &self.soak)
            .field("max_soak", &self.max_soak)
            .field("leader_settle", &self.leader_settle)
            .finish_non_exhaustive()
    }
}

fn default_handoff_prefix() -> String {
    leader_core::layout::DEFAULT_HANDOFF_PREFIX.to_owned()
}

fn default_drain_prefix() -> String {
    leader_core::layout::DEFAULT_DRAIN_PREFIX.to_owned()
}

fn default_sequence_key() -> String {
    leader_core::layout::DEFAULT_SEQUENCE_KEY.to_owned()
}

fn default_drain_timeout() -> Duration {
    leader_core::DEFAULT_DRAIN_TIMEOUT
}

fn default_handoff_timeout() -> Duration {
    leader_core::machine::DEFAULT_HANDOFF_TIMEOUT
}

fn default_prefix() -> String {
    DEFAULT_PREFIX.to_owned()
}
fn default_leader() -> String {
    DEFAULT_LEADER.to_owned()
}
fn default_members_prefix() -> String {
    leader_core::layout::DEFAULT_MEMBERS_PREFIX.to_owned()
}
fn default_work_prefix() -> String {
    leader_core::layout::DEFAULT_WORK_PREFIX.to_owned()
}
fn default_ttl() -> Duration {
    leader_core::DEFAULT_TTL
}
fn default_leader_soak() -> Duration {
    leader_core::DEFAULT_LEADER_SOAK
}
fn default_replicas() -> u32 {
    1
}

fn default_weight() -> u32 {
    1
}
fn default_soak() -> Duration {
    Duration::from_millis(500)
}
/// A worker's `leader_settle` when none is set: 5 s (SPEC §1).
pub const DEFAULT_WORKER_LEADER_SETTLE: Duration = Duration::from_secs(5);

/// A configuration that cannot be loaded or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for a [`Config`].
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the line.
        message: String,
    },
    /// An environment variable holds a bad value.
    #[error("invalid {var}: {reason}")]
    Env {
        /// The variable.
        var: &'static str,
        /// Why.
        reason: String,
    },
    /// A setting is invalid.
    #[error(transparent)]
    Invalid(#[from] ConfigError),
}

impl Config {
    /// A config for `instance_id` on `backend` with every other setting at its default.
    pub fn new(backend: BackendKind, instance_id: impl Into<String>) -> Self {
        Self {
            backend,
            endpoints: Vec::new(),
            instance_id: instance_id.into(),
            prefix: default_prefix(),
            leader: default_leader(),
            soak: default_soak(),
            max_soak: None,
            leader_settle: None,
            consul_wait: None,
            etcd_keepalive: None,
            token_file: None,
            ca_cert: None,
            client_cert: None,
            client_key: None,
            user: None,
            password_file: None,
            members_prefix: default_members_prefix(),
            work_prefix: default_work_prefix(),
            ttl: default_ttl(),
            leader_soak: default_leader_soak(),
            weight: default_weight(),
            replicas: default_replicas(),
            zone: None,
            rebalance_delay: Duration::ZERO,
            handoff_prefix: default_handoff_prefix(),
            drain_prefix: default_drain_prefix(),
            sequence_key: default_sequence_key(),
            exclusive: false,
            exclusive_margin: None,
            max_moves_in_flight: None,
            drain_timeout: default_drain_timeout(),
            txn_max_bytes: None,
            txn_max_ops: None,
            value_max_bytes: None,
            handoff_timeout: default_handoff_timeout(),
            password: None,
            handoff: true,
            session_check: true,
            prepare: true,
        }
    }

    /// Reads a TOML file and validates it.
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<Self, LoadError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config: Self = toml::from_str(&text).map_err(|e| LoadError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Reads `COORDINATOR_BACKEND`, `COORDINATOR_ENDPOINTS` (comma-separated),
    /// `COORDINATOR_INSTANCE_ID`, `COORDINATOR_PREFIX`, `COORDINATOR_LEADER`,
    /// `COORDINATOR_SOAK`, `COORDINATOR_MAX_SOAK`, `COORDINATOR_LEADER_SETTLE`,
    /// `COORDINATOR_CONSUL_WAIT`, `COORDINATOR_ETCD_KEEPALIVE`,
    /// `COORDINATOR_TOKEN_FILE`, `COORDINATOR_CA_CERT`, `COORDINATOR_CLIENT_CERT`,
    /// `COORDINATOR_CLIENT_KEY`, `COORDINATOR_USER`, `COORDINATOR_PASSWORD_FILE`,
    /// and for a full member `COORDINATOR_MEMBERS_PREFIX`, `COORDINATOR_WORK_PREFIX`,
    /// `COORDINATOR_TTL`, `COORDINATOR_LEADER_SOAK`, `COORDINATOR_WEIGHT`,
    /// `COORDINATOR_REBALANCE_DELAY`, `COORDINATOR_HANDOFF_PREFIX`,
    /// `COORDINATOR_DRAIN_PREFIX`, `COORDINATOR_EXCLUSIVE`,
    /// `COORDINATOR_EXCLUSIVE_MARGIN`, `COORDINATOR_DRAIN_TIMEOUT`,
    /// `COORDINATOR_HANDOFF_TIMEOUT`, `COORDINATOR_MAX_MOVES_IN_FLIGHT`,
    /// `COORDINATOR_HANDOFF`, `COORDINATOR_SESSION_CHECK`, `COORDINATOR_PREPARE`,
    /// `COORDINATOR_SEQUENCE_KEY`, `COORDINATOR_TXN_MAX_BYTES`,
    /// `COORDINATOR_TXN_MAX_OPS`, `COORDINATOR_VALUE_MAX_BYTES`.
    pub fn from_env() -> Result<Self, LoadError> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// Like [`from_env`](Self::from_env) with a custom variable lookup.
    #[allow(clippy::too_many_lines)] // one stanza per variable; they read best in one list
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Self, LoadError> {
        let instance_id = get("COORDINATOR_INSTANCE_ID").ok_or(LoadError::Env {
            var: "COORDINATOR_INSTANCE_ID",
            reason: "not set".into(),
        })?;
        let mut c = Self::new(BackendKind::default(), instance_id);
        if let Some(b) = get("COORDINATOR_BACKEND") {
            c.backend = b
                .parse()
                .map_err(|e: ParseBackendKindError| LoadError::Env {
                    var: "COORDINATOR_BACKEND",
                    reason: e.to_string(),
                })?;
        }
        if let Some(e) = get("COORDINATOR_ENDPOINTS") {
            c.endpoints = split_endpoints(&e);
        }
        if let Some(p) = get("COORDINATOR_PREFIX") {
            c.prefix = p;
        }
        if let Some(l) = get("COORDINATOR_LEADER") {
            c.leader = l;
        }
        let dur = |var: &'static str| -> Result<Option<Duration>, LoadError> {
            get(var)
                .map(|v| parse_duration(&v).map_err(|reason| LoadError::Env { var, reason }))
                .transpose()
        };
        if let Some(d) = dur("COORDINATOR_SOAK")? {
            c.soak = d;
        }
        c.max_soak = dur("COORDINATOR_MAX_SOAK")?;
        if let Some(d) = dur("COORDINATOR_LEADER_SETTLE")? {
            c.leader_settle = Some(d);
        }
        c.consul_wait = dur("COORDINATOR_CONSUL_WAIT")?;
        c.etcd_keepalive = dur("COORDINATOR_ETCD_KEEPALIVE")?;
        c.token_file = get("COORDINATOR_TOKEN_FILE").map(PathBuf::from);
        c.ca_cert = get("COORDINATOR_CA_CERT").map(PathBuf::from);
        c.client_cert = get("COORDINATOR_CLIENT_CERT").map(PathBuf::from);
        c.client_key = get("COORDINATOR_CLIENT_KEY").map(PathBuf::from);
        c.user = get("COORDINATOR_USER");
        c.password_file = get("COORDINATOR_PASSWORD_FILE").map(PathBuf::from);
        if let Some(p) = get("COORDINATOR_MEMBERS_PREFIX") {
            c.members_prefix = p;
        }
        if let Some(p) = get("COORDINATOR_WORK_PREFIX") {
            c.work_prefix = p;
        }
        if let Some(d) = dur("COORDINATOR_TTL")? {
            c.ttl = d;
        }
        if let Some(d) = dur("COORDINATOR_LEADER_SOAK")? {
            c.leader_soak = d;
        }
        if let Some(d) = dur("COORDINATOR_REBALANCE_DELAY")? {
            c.rebalance_delay = d;
        }
        if let Some(p) = get("COORDINATOR_HANDOFF_PREFIX") {
            c.handoff_prefix = p;
        }
        if let Some(p) = get("COORDINATOR_DRAIN_PREFIX") {
            c.drain_prefix = p;
        }
        if let Some(p) = get("COORDINATOR_SEQUENCE_KEY") {
            c.sequence_key = p;
        }
        if let Some(v) = get("COORDINATOR_EXCLUSIVE") {
            c.exclusive = parse_bool(&v).ok_or_else(|| LoadError::Env {
                var: "COORDINATOR_EXCLUSIVE",
                reason: format!("{v:?} is not true or false"),
            })?;
        }
        if let Some(v) = get("COORDINATOR_HANDOFF") {
            c.handoff = parse_bool(&v).ok_or_else(|| LoadError::Env {
                var: "COORDINATOR_HANDOFF",
                reason: format!("{v:?} is not true or false"),
            })?;
        }
        if let Some(v) = get("COORDINATOR_SESSION_CHECK") {
            c.session_check = parse_bool(&v).ok_or_else(|| LoadError::Env {
                var: "COORDINATOR_SESSION_CHECK",
                reason: format!("{v:?} is not true or false"),
            })?;
        }
        if let Some(v) = get("COORDINATOR_PREPARE") {
            c.prepare = parse_bool(&v).ok_or_else(|| LoadError::Env {
                var: "COORDINATOR_PREPARE",
                reason: format!("{v:?} is not true or false"),
            })?;
        }
        if let Some(d) = dur("COORDINATOR_EXCLUSIVE_MARGIN")? {
            c.exclusive_margin = Some(d);
        }
        if let Some(d) = dur("COORDINATOR_DRAIN_TIMEOUT")? {
            c.drain_timeout = d;
        }
        let count = |var: &'static str| -> Result<Option<usize>, LoadError> {
            get(var)
                .map(|n| {
                    n.trim().parse().map_err(|e| LoadError::Env {
                        var,
                        reason: format!("{n:?} is not a whole number ({e})"),
                    })
                })
                .transpose()
        };
        c.txn_max_bytes = count("COORDINATOR_TXN_MAX_BYTES")?;
        c.txn_max_ops = count("COORDINATOR_TXN_MAX_OPS")?;
        c.value_max_bytes = count("COORDINATOR_VALUE_MAX_BYTES")?;
        c.max_moves_in_flight = count("COORDINATOR_MAX_MOVES_IN_FLIGHT")?;
        if let Some(d) = dur("COORDINATOR_HANDOFF_TIMEOUT")? {
            c.handoff_timeout = d;
        }
        if let Some(z) = get("COORDINATOR_ZONE").filter(|z| !z.is_empty()) {
            c.zone = Some(z);
        }
        if let Some(r) = get("COORDINATOR_REPLICAS") {
            c.replicas = r.trim().parse().map_err(|_| LoadError::Env {
                var: "COORDINATOR_REPLICAS",
                reason: format!(
                    "{r:?} is not a whole number from 1 to {}",
                    worker_core::MAX_REPLICAS
                ),
            })?;
        }
        if let Some(w) = get("COORDINATOR_WEIGHT") {
            c.weight = w.trim().parse().map_err(|e| LoadError::Env {
                var: "COORDINATOR_WEIGHT",
                reason: format!("{w:?} is not a whole number from 0 to {} ({e})", u32::MAX),
            })?;
        }
        c.validate()?;
        Ok(c)
    }

    /// The endpoints, or the backend's default when none are given.
    pub fn endpoints_or_default(&self) -> Vec<String> {
        if !self.endpoints.is_empty() {
            return self.endpoints.clone();
        }
        match self.backend {
            BackendKind::Consul => vec!["http://127.0.0.1:8500".into()],
            BackendKind::Etcd => vec!["http://127.0.0.1:2379".into()],
            BackendKind::Memory => Vec::new(),
        }
    }

    /// The `leader_settle` in effect: the one set, else for a full member
    /// (`member`) `leader_soak` + 1 s, else [`DEFAULT_WORKER_LEADER_SETTLE`].
    pub fn leader_settle_for(&self, member: bool) -> Duration {
        match self.leader_settle {
            Some(d) => d,
            None if member => self.leader_soak.saturating_add(Duration::from_secs(1)),
            None => DEFAULT_WORKER_LEADER_SETTLE,
        }
    }

    /// The settings of a worker alone (`coordinator worker`).
    pub fn worker_config(&self) -> WorkerConfig {
        self.worker_config_for(false)
    }

    fn worker_config_for(&self, member: bool) -> WorkerConfig {
        let mut w = WorkerConfig::new(self.instance_id.clone())
            .prefix(self.prefix.clone())
            .soak(self.soak)
            .leader_settle(self.leader_settle_for(member));
        w.max_soak = self.max_soak;
        w
    }

    /// The key layout of a full member.
    pub fn layout(&self) -> leader_core::Layout {
        leader_core::Layout {
            members: self.members_prefix.clone(),
            leader: self.leader.clone(),
            work: self.work_prefix.clone(),
            assignments: self.prefix.clone(),
            handoff: self.handoff_prefix.clone(),
            drain: self.drain_prefix.clone(),
            sequence: self.sequence_key.clone(),
        }
    }

    /// The settings of a full member (worker, membership, leader).
    pub fn member_config(&self) -> Result<leader_core::MemberConfig, ConfigError> {
        let mut m = leader_core::MemberConfig::new(self.instance_id.clone())
            .layout(self.layout())
            .weight(self.weight)
            .ttl(self.ttl)
            .leader_soak(self.leader_soak)
            .rebalance_delay(self.rebalance_delay)
            .replicas(self.replicas)
            .drain_timeout(self.drain_timeout)
            .handoff_timeout(self.handoff_timeout)
            .prepare(self.prepare);
        m.worker = self.worker_config_for(true);
        if let Some(zone) = &self.zone {
            m = m.zone(zone.clone());
        }
        if let Some(n) = self.max_moves_in_flight {
            if n == 0 {
                return Err(ConfigError::new(
                    "max_moves_in_flight",
                    "must be at least 1 (leave it out for no limit)",
                ));
            }
            m = m.max_moves_in_flight(n);
        }
        if self.backend == BackendKind::Consul
            && !self.session_check
            && self.ttl < Duration::from_secs(10)
        {
            return Err(ConfigError::new(
                "ttl",
                format!(
                    "{:?} is below Consul's shortest session TTL (10s) without `session_check`: give 10s or more, or bind sessions to an agent check (Consul would round a plain session's TTL up, and the member would be wrong about its lease)",
                    self.ttl
                ),
            ));
        }
        if self.exclusive {
            m = m.exclusive(self.exclusive_margin.unwrap_or(self.ttl / 5));
        } else if self.exclusive_margin.is_some() {
            return Err(ConfigError::new(
                "exclusive_margin",
                "is only used in exclusive mode: add `exclusive`, or leave the margin out",
            ));
        }
        if !self.handoff {
            if self.exclusive {
                return Err(ConfigError::new(
                    "handoff",
                    "exclusive mode needs acknowledged handoffs: leave `handoff` on",
                ));
            }
            m = m.handoff(false);
        }
        m.validate()?;
        Ok(m)
    }

    /// Checks every setting that can be checked without the store.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_instance_id(&self.instance_id)?;
        self.worker_config().timing()?;
        if self.replicas == 0 || self.replicas > worker_core::MAX_REPLICAS {
            return Err(ConfigError::new(
                "replicas",
                format!(
                    "{} is outside 1..={} (1: one owner per item)",
                    self.replicas,
                    worker_core::MAX_REPLICAS
                ),
            ));
        }
        if let Some(zone) = &self.zone {
            leader_core::MemberMeta::validate_zone(zone)?;
        }
        if !self.backend.is_compiled_in() {
            return Err(ConfigError::new(
                "backend",
                format!(
                    "{} is not compiled into this build; enable the coordinator crate's `{}` cargo feature",
                    self.backend, self.backend
                ),
            ));
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            return Err(ConfigError::new(
                if self.client_cert.is_some() {
                    "client_cert"
                } else {
                    "client_key"
                },
                "`client_cert` and `client_key` must be given together",
            ));
        }
        if self.user.is_some() != (self.password_file.is_some() || self.password.is_some()) {
            return Err(ConfigError::new(
                "user",
                "`user` and `password_file` must be given together",
            ));
        }
        if self.txn_max_bytes.is_some_and(|n| n < 4096) {
            return Err(ConfigError::new(
                "txn_max_bytes",
                "must be at least 4096 (a transaction must hold one assignment)",
            ));
        }
        if self.value_max_bytes == Some(0) {
            return Err(ConfigError::new("value_max_bytes", "must be more than 0"));
        }
        if self.txn_max_ops.is_some_and(|n| n < 4) {
            return Err(ConfigError::new(
                "txn_max_ops",
                "must be at least 4 (a move takes up to three operations besides the fence)",
            ));
        }
        for e in &self.endpoints {
            check_endpoint(e).map_err(|reason| ConfigError::new("endpoints", reason))?;
        }
        if self.prefix.is_empty() {
            return Err(ConfigError::new(
                "prefix",
                "must not be empty: the member's keys are <prefix><instance id>/<work id>; the default is service/coordinator/assignments/",
            ));
        }
        if !self.prefix.ends_with('/') {
            return Err(ConfigError::new(
                "prefix",
                format!(
                    "{:?} must end with '/' (the member's keys are <prefix><instance id>/<work id>): write {:?}",
                    self.prefix,
                    format!("{}/", self.prefix)
                ),
            ));
        }
        for (field, value) in [
            ("soak", Some(self.soak)),
            ("max_soak", self.max_soak),
            ("leader_settle", self.leader_settle),
            ("consul_wait", self.consul_wait),
            ("etcd_keepalive", self.etcd_keepalive),
            ("ttl", Some(self.ttl)),
            ("leader_soak", Some(self.leader_soak)),
            ("rebalance_delay", Some(self.rebalance_delay)),
            ("exclusive_margin", self.exclusive_margin),
            ("drain_timeout", Some(self.drain_timeout)),
            ("handoff_timeout", Some(self.handoff_timeout)),
        ] {
            if let Some(v) = value {
                check_duration(field, v)?;
            }
        }
        Ok(())
    }
}

/// Reads a boolean as environment variables write it: `true`/`false`,
/// `1`/`0`, `yes`/`no`, `on`/`off` (any case); empty is false.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" | "" => Some(false),
        _ => None,
    }
}

/// Checks one store address: `http://` or `https://`, a host, and a port
/// from 1 to 65535 if one is given.
pub fn check_endpoint(e: &str) -> Result<(), String> {
    if e.trim().is_empty() {
        return Err("an address is empty: give URL[,URL...] (e.g. http://127.0.0.1:8500), or leave the setting out for the store's local default".to_owned());
    }
    if !(e.starts_with("http://") || e.starts_with("https://")) {
        return Err(format!("{e:?} must start with http:// or https://"));
    }
    let url = url::Url::parse(e).map_err(|err| match err {
        url::ParseError::InvalidPort => format!("{e:?} has a port out of range: give 1 to 65535"),
        other => format!("{e:?} is not a URL ({other})"),
    })?;
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{e:?} has no host"));
    }
    if url.port() == Some(0) {
        return Err(format!("{e:?} has port 0: give 1 to 65535"));
    }
    if url.path() != "/" && !url.path().is_empty() {
        return Err(format!(
            "{e:?} has a path ({}); give only scheme, host and port",
            url.path()
        ));
    }
    Ok(())
}

/// Splits a comma-separated endpoint list, dropping empty parts.
pub fn split_endpoints(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_with_defaults() {
        let c: Config = toml::from_str("instance_id = \"m1\"").unwrap();
        assert_eq!(c.backend, BackendKind::Consul);
        assert_eq!(c.prefix, DEFAULT_PREFIX);
        assert_eq!(c.soak, Duration::from_millis(500));
        assert_eq!(
            c.worker_config().timing().unwrap().max_soak,
            Duration::from_secs(5)
        );
    }

    #[test]
    fn bad_toml_names_the_field() {
        let e = toml::from_str::<Config>("instance_id = \"m1\"\nsoak = \"fast\"").unwrap_err();
        let e = e.to_string();
        assert!(e.contains("expected a duration"), "{e}");
        assert!(e.contains("soak"), "{e}");
        let e = toml::from_str::<Config>("instance_id = \"m1\"\nmax_soak = \"5parsecs\"")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("expected a duration") && e.contains("max_soak"),
            "{e}"
        );
        let e = toml::from_str::<Config>("instance_id = \"m1\"\nbackend = \"zk\"").unwrap_err();
        assert!(e.to_string().contains("zk"), "{e}");
        let e = toml::from_str::<Config>("instance_id = \"m1\"\nsoke = \"1s\"").unwrap_err();
        assert!(e.to_string().contains("soke"), "{e}");
    }

    #[test]
    fn env_config() {
        let vars = [
            ("COORDINATOR_INSTANCE_ID", "m2"),
            ("COORDINATOR_BACKEND", "memory"),
            ("COORDINATOR_SOAK", "2s"),
            ("COORDINATOR_ENDPOINTS", "http://a:1, http://b:2,"),
        ];
        let get = |k: &str| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        };
        let c = Config::from_vars(get).unwrap();
        assert_eq!(c.backend, BackendKind::Memory);
        assert_eq!(c.soak, Duration::from_secs(2));
        assert_eq!(c.endpoints, ["http://a:1", "http://b:2"]);
        let e = Config::from_vars(|k| {
            (k == "COORDINATOR_INSTANCE_ID")
                .then(|| "m1".into())
                .or_else(|| (k == "COORDINATOR_SOAK").then(|| "x".into()))
        })
        .unwrap_err();
        assert!(e.to_string().contains("COORDINATOR_SOAK"), "{e}");
    }

    #[test]
    fn validation_names_the_setting() {
        let mut c = Config::new(BackendKind::Memory, "a/b");
        assert_eq!(c.validate().unwrap_err().field, "instance_id");
        c.instance_id = "m1".into();
        c.client_cert = Some("c.pem".into());
        assert_eq!(c.validate().unwrap_err().field, "client_cert");
        c.client_cert = None;
        c.endpoints = vec!["127.0.0.1:8500".into()];
        assert_eq!(c.validate().unwrap_err().field, "endpoints");
    }

    #[test]
    fn member_handoff_settings() {
        let c: Config = toml::from_str(
            "instance_id = \"m1\"\nexclusive = true\nttl = \"10s\"\nmax_moves_in_flight = 4\ndrain_timeout = \"30s\"",
        )
        .unwrap();
        let m = c.member_config().unwrap();
        assert_eq!(m.exclusive, Some(Duration::from_secs(2)), "default TTL/5");
        assert_eq!(m.leader.exclusive, Some(Duration::from_secs(2)));
        assert!(m.worker.start_released);
        assert_eq!(m.leader.max_moves_in_flight, 4);
        assert_eq!(m.drain_timeout, Duration::from_secs(30));
        let mut c = Config::new(BackendKind::Memory, "m1");
        c.exclusive_margin = Some(Duration::from_secs(1));
        assert_eq!(c.member_config().unwrap_err().field, "exclusive_margin");
        c.exclusive = true;
        c.exclusive_margin = Some(c.ttl);
        assert_eq!(c.member_config().unwrap_err().field, "exclusive_margin");
        c.exclusive = false;
        c.exclusive_margin = None;
        c.max_moves_in_flight = Some(0);
        assert_eq!(c.member_config().unwrap_err().field, "max_moves_in_flight");
        let e = Config::from_vars(|k| match k {
            "COORDINATOR_INSTANCE_ID" => Some("m1".into()),
            "COORDINATOR_EXCLUSIVE" => Some("maybe".into()),
            _ => None,
        })
        .unwrap_err();
        assert!(e.to_string().contains("COORDINATOR_EXCLUSIVE"), "{e}");
    }

    #[test]
    fn a_member_ttl_consul_would_round_up_is_refused() {
        let mut c = Config::new(BackendKind::Consul, "m1");
        assert_eq!(c.ttl, Duration::from_secs(5));
        c.member_config()
            .expect("the default 5s, with sessions bound to a check");
        c.session_check = false;
        let e = c.member_config().unwrap_err();
        assert_eq!(e.field, "ttl");
        assert!(e.reason.contains("10s"), "{e}");
        assert!(e.reason.contains("`session_check`"), "{e}");
        c.ttl = Duration::from_secs(10);
        c.member_config().expect("10s is Consul's shortest");
        let mut c = Config::new(BackendKind::Etcd, "m1");
        c.ttl = Duration::from_secs(2);
        c.member_config().expect("etcd takes 2s");
    }

    #[test]
    fn leader_settle_defaults_to_the_worker_or_the_member_one() {
        let mut c = Config::new(BackendKind::Etcd, "m1");
        assert_eq!(c.worker_config().leader_settle, Duration::from_secs(5));
        let m = c.member_config().expect("defaults");
        assert_eq!(m.worker.leader_settle, Duration::from_secs(2));
        assert_eq!(m.leader.soak, Duration::from_secs(1));
        c.leader_soak = Duration::from_secs(4);
        assert_eq!(c.leader_settle_for(true), Duration::from_secs(5));
        c.leader_settle = Some(Duration::from_millis(700));
        assert_eq!(c.worker_config().leader_settle, Duration::from_millis(700));
        let m = c.member_config().expect("set");
        assert_eq!(m.worker.leader_settle, Duration::from_millis(700));
    }

    #[test]
    fn handoff_timeout_from_toml_env_and_default() {
        let c = Config::new(BackendKind::Memory, "m1");
        let m = c.member_config().unwrap();
        assert_eq!(m.leader.handoff_timeout, Duration::from_secs(300));
        let c: Config = toml::from_str("instance_id = \"m1\"\nhandoff_timeout = \"90s\"").unwrap();
        let m = c.member_config().unwrap();
        assert_eq!(m.leader.handoff_timeout, Duration::from_secs(90));
        let c = Config::from_vars(|k| match k {
            "COORDINATOR_INSTANCE_ID" => Some("m1".into()),
            "COORDINATOR_BACKEND" => Some("memory".into()),
            "COORDINATOR_HANDOFF_TIMEOUT" => Some("2m".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.handoff_timeout, Duration::from_secs(120));
        let mut c = Config::new(BackendKind::Memory, "m1");
        c.handoff_timeout = Duration::ZERO;
        assert_eq!(c.member_config().unwrap_err().field, "handoff_timeout");
    }

    #[test]
    fn prepare_from_toml_env_and_default() {
        let c = Config::new(BackendKind::Memory, "m1");
        assert!(c.prepare, "on by default");
        assert!(c.member_config().unwrap().leader.prepare);
        let c: Config = toml::from_str("instance_id = \"m1\"").unwrap();
        assert!(c.prepare, "on when the file leaves it out");
        let c: Config = toml::from_str("instance_id = \"m1\"\nprepare = false").unwrap();
        assert!(!c.member_config().unwrap().leader.prepare);
        let e = toml::from_str::<Config>("instance_id = \"m1\"\nprepare = \"maybe\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("prepare"), "{e}");
        for (v, want) in [
            ("false", false),
            ("0", false),
            ("off", false),
            ("yes", true),
        ] {
            let c = Config::from_vars(|k| match k {
                "COORDINATOR_INSTANCE_ID" => Some("m1".into()),
                "COORDINATOR_BACKEND" => Some("memory".into()),
                "COORDINATOR_PREPARE" => Some(v.into()),
                _ => None,
            })
            .unwrap();
            assert_eq!(c.prepare, want, "{v}");
            assert_eq!(c.member_config().unwrap().leader.prepare, want, "{v}");
        }
        let e = Config::from_vars(|k| match k {
            "COORDINATOR_INSTANCE_ID" => Some("m1".into()),
            "COORDINATOR_PREPARE" => Some("maybe".into()),
            _ => None,
        })
        .unwrap_err();
        assert!(e.to_string().contains("COORDINATOR_PREPARE"), "{e}");
        // Exclusive mode takes either.
        let mut c = Config::new(BackendKind::Memory, "m1");
        c.exclusive = true;
        c.prepare = false;
        let m = c.member_config().unwrap();
        assert!(!m.leader.prepare && m.leader.exclusive.is_some());
    }

    #[test]
    fn sequence_key_from_toml_and_env_and_checked_against_the_prefixes() {
        let c: Config = toml::from_str("instance_id = \"m1\"").unwrap();
        assert_eq!(c.layout().sequence, "service/coordinator/sequence");
        let c: Config = toml::from_str("instance_id = \"m1\"\nsequence_key = \"svc/seq\"").unwrap();
        assert_eq!(c.layout().sequence, "svc/seq");
        let c = Config::from_vars(|k| match k {
            "COORDINATOR_INSTANCE_ID" => Some("m1".into()),
            "COORDINATOR_SEQUENCE_KEY" => Some("service/coordinator/work/seq".into()),
            _ => None,
        })
        .unwrap();
        let e = c.layout().validate().unwrap_err();
        assert_eq!(e.field, "sequence_key", "{e}");
    }

    #[test]
    fn zone_from_toml_and_env_reaches_the_member_key() {
        let c: Config = toml::from_str("instance_id = \"m1\"\nzone = \"eu-1\"").unwrap();
        assert_eq!(
            c.member_config().unwrap().meta.zone.as_deref(),
            Some("eu-1")
        );
        let c = Config::from_vars(|k| match k {
            "COORDINATOR_INSTANCE_ID" => Some("m1".into()),
            "COORDINATOR_ZONE" => Some("rack-7".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.zone.as_deref(), Some("rack-7"));
        let e = Config::from_vars(|k| match k {
            "COORDINATOR_INSTANCE_ID" => Some("m1".into()),
            "COORDINATOR_ZONE" => Some("a\u{7}b".into()),
            _ => None,
        })
        .unwrap_err();
        assert!(e.to_string().contains("zone"), "{e}");
        assert_eq!(
            Config::new(BackendKind::Memory, "m1")
                .member_config()
                .unwrap()
                .meta
                .zone,
            None
        );
    }

    #[test]
    fn backend_not_compiled_in_is_a_clear_error() {
        for kind in [BackendKind::Consul, BackendKind::Etcd] {
            let c = Config::new(kind, "m1");
            if kind.is_compiled_in() {
                assert!(c.validate().is_ok());
            } else {
                let e = c.validate().unwrap_err();
                assert!(e.to_string().contains("cargo feature"), "{e}");
            }
        }
    }
}

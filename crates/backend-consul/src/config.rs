//! Settings of the Consul backend.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// The default leader key.
pub const DEFAULT_LEADER_KEY: &str = "service/coordinator/leader";

/// The default blocking-query wait.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(5 * 60);

/// Longest `wait` Consul honours (it caps longer ones at 10 minutes).
pub const MAX_WAIT: Duration = Duration::from_secs(10 * 60);

/// Settings of a [`ConsulBackend`](crate::ConsulBackend).
///
/// `Debug` redacts the token: it prints whether one is set, never its value.
///
/// ```
/// use backend_consul::ConsulConfig;
///
/// let mut config = ConsulConfig::new(vec!["http://127.0.0.1:8500".into()]);
/// config.leader_key = "locks/my-service/.lock".into();
/// config.token = Some("secret".into());
/// assert!(!format!("{config:?}").contains("secret"));
/// ```
///
/// Non-exhaustive: start from [`ConsulConfig::new`] and set the public fields.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsulConfig {
    /// HTTP(S) addresses of Consul agents, e.g. `http://127.0.0.1:8500` (a bare
    /// `host:port` means `http://host:port`). Requests go to the first; when
    /// one cannot be reached the backend moves on to the next, in order,
    /// wrapping around.
    pub endpoints: Vec<String>,
    /// ACL token sent as `X-Consul-Token`. Takes precedence over
    /// [`token_file`](Self::token_file) and the `CONSUL_HTTP_TOKEN` variable.
    /// Never logged.
    pub token: Option<String>,
    /// File holding the ACL token (read once at construction, surrounding
    /// whitespace trimmed). Used when [`token`](Self::token) is `None`.
    pub token_file: Option<PathBuf>,
    /// PEM file of the CA (or CAs) that signed the agent's certificate. When
    /// set, only these CAs are trusted for `https://` endpoints; otherwise the
    /// built-in web roots are.
    pub ca_cert: Option<PathBuf>,
    /// PEM client certificate presented to agents with `verify_incoming`
    /// (needs [`client_key`](Self::client_key)).
    pub client_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, RSA or SEC1) of [`client_cert`](Self::client_cert).
    pub client_key: Option<PathBuf>,
    /// How long one blocking query may wait for a change (Consul's `wait`
    /// parameter). Default 5 minutes; at most 10 minutes (Consul's cap).
    pub wait: Duration,
    /// The key whose holder (a Consul session) is the leader. Default
    /// [`DEFAULT_LEADER_KEY`]; give `PREFIX/.lock` to follow a lock taken
    /// with `consul lock PREFIX …`.
    pub leader_key: String,
    /// The agent's largest transaction request (`limits.txn_max_req_len`);
    /// fenced writes are cut to fit it. Default [`DEFAULT_TXN_MAX_BYTES`]
    /// (512 KiB, Consul's default).
    pub txn_max_bytes: usize,
    /// The agent's largest KV value (`kv_max_value_size`). Default
    /// [`DEFAULT_VALUE_MAX_BYTES`] (512 KiB, Consul's default).
    pub value_max_bytes: usize,
    /// Bind each session to a health check on the agent: the backend
    /// registers a service of this ID (name `coordinator`) with a TTL check
    /// as long as the session's TTL, passes the check at every renewal, and
    /// opens the session bound to that check and to the node's `serfHealth`.
    /// The agent turns the check critical on time, so a member that stops
    /// renewing loses its session after its TTL, not Consul's lazy 1–2 ×
    /// TTL. When the ACL token may not register the service (`service:write`),
    /// the backend falls back to a plain session TTL and says so at warn.
    /// Default `None`: plain session TTLs.
    pub session_check: Option<String>,
}

/// Consul's default `limits.txn_max_req_len`: 512 KiB.
pub const DEFAULT_TXN_MAX_BYTES: usize = 512 * 1024;
/// Consul's default `kv_max_value_size`: 512 KiB.
pub const DEFAULT_VALUE_MAX_BYTES: usize = 512 * 1024;

impl ConsulConfig {
    /// Settings for `endpoints`, with every other setting at its default: no
    /// token (unless `CONSUL_HTTP_TOKEN` is set), no TLS files, a 5-minute
    /// wait, and the leader key [`DEFAULT_LEADER_KEY`].
    pub fn new(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            token: None,
            token_file: None,
            ca_cert: None,
            client_cert: None,
            client_key: None,
            wait: DEFAULT_WAIT,
            leader_key: DEFAULT_LEADER_KEY.to_owned(),
            txn_max_bytes: DEFAULT_TXN_MAX_BYTES,
            value_max_bytes: DEFAULT_VALUE_MAX_BYTES,
            session_check: None,
        }
    }
}

impl Default for ConsulConfig {
    /// The local agent's default address, `http://127.0.0.1:8500`.
    fn default() -> Self {
        Self::new(vec!["http://127.0.0.1:8500".to_owned()])
    }
}

impl fmt::Debug for ConsulConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsulConfig")
            .field("endpoints", &self.endpoints)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_file", &self.token_file)
            .field("ca_cert", &self.ca_cert)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .field("wait", &self.wait)
            .field("leader_key", &self.leader_key)
            .field("txn_max_bytes", &self.txn_max_bytes)
            .field("value_max_bytes", &self.value_max_bytes)
            .field("session_check", &self.session_check)
            .finish()
    }
}

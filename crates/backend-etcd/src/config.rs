//! Settings of the etcd backend.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::EtcdError;

/// The default endpoint list: one local etcd.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:2379";

/// The default election name (the worker's `--leader` option).
pub const DEFAULT_ELECTION: &str = "service/coordinator/leader";

/// The default dead-connection bound ([`EtcdConfig::keepalive`]).
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(10);

/// The smallest accepted [`EtcdConfig::keepalive`].
pub const MIN_KEEPALIVE: Duration = Duration::from_millis(200);

/// Settings of an [`EtcdBackend`](crate::EtcdBackend).
///
/// ```
/// use std::time::Duration;
/// use backend_etcd::EtcdConfig;
///
/// let config = EtcdConfig::new(vec!["http://127.0.0.1:2379".into()])
///     .with_user("coordinator", "secret")
///     .with_election("svc/leader")
///     .with_keepalive(Duration::from_secs(5));
/// // The password never shows in logs.
/// assert!(!format!("{config:?}").contains("secret"));
/// ```
///
/// Non-exhaustive: start from [`EtcdConfig::new`] and set the public fields.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EtcdConfig {
    /// Client URLs of the etcd members, e.g. `http://127.0.0.1:2379`. Requests go to
    /// one member at a time and move to the next when it fails. A bare `host:port`
    /// means `https://` when a TLS file is set, `http://` otherwise.
    /// Default: [`DEFAULT_ENDPOINT`].
    pub endpoints: Vec<String>,
    /// User name for etcd authentication (with [`password`](Self::password)). Default: none.
    pub user: Option<String>,
    /// Password of [`user`](Self::user). Never logged: `Debug` prints `<redacted>`.
    pub password: Option<String>,
    /// PEM file of the CA that signed the members' certificates (HTTPS endpoints).
    /// Without it, HTTPS endpoints are verified against the system's trust store.
    pub ca_cert: Option<PathBuf>,
    /// PEM file of the client certificate presented to members that require one
    /// (`--client-cert-auth`); needs [`client_key`](Self::client_key).
    pub client_cert: Option<PathBuf>,
    /// PEM file of the key of [`client_cert`](Self::client_cert).
    pub client_key: Option<PathBuf>,
    /// Name of the etcd v3 election whose leader is the coordinator's leader
    /// (`etcdctl elect NAME PROPOSAL`). Default: [`DEFAULT_ELECTION`].
    pub election: String,
    /// Bound on detecting a dead connection, and on every single request.
    ///
    /// A connection with open calls that has read nothing for half of it is sent
    /// an HTTP/2 PING; when the other half passes without an answer the connection
    /// is closed, its watches are reported broken and reopened (on the next member,
    /// if there are several). etcd refuses pings more often than every 5 s, so
    /// below 10 s pings alone cannot meet the bound: then each watch that has heard
    /// nothing for half of it also sends a progress request (one store request per
    /// idle watch per half period; from 10 s up an idle backend sends none). Each
    /// read, watch open and authentication is given this long. Default:
    /// [`DEFAULT_KEEPALIVE`] (10 s); at least [`MIN_KEEPALIVE`].
    pub keepalive: Duration,
    /// The server's largest request (`--max-request-bytes`); fenced writes
    /// are cut to fit it. Default [`DEFAULT_MAX_REQUEST_BYTES`] (1.5 MiB,
    /// etcd's default).
    pub max_request_bytes: usize,
    /// The server's most operations per transaction (`--max-txn-ops`).
    /// Default [`DEFAULT_MAX_TXN_OPS`] (128, etcd's default).
    pub max_txn_ops: usize,
}

/// etcd's default `--max-request-bytes`: 1.5 MiB.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1_572_864;
/// etcd's default `--max-txn-ops`: 128.
pub const DEFAULT_MAX_TXN_OPS: usize = 128;

impl EtcdConfig {
    /// A config for `endpoints` with every other setting at its default.
    pub fn new(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            user: None,
            password: None,
            ca_cert: None,
            client_cert: None,
            client_key: None,
            election: DEFAULT_ELECTION.to_owned(),
            keepalive: DEFAULT_KEEPALIVE,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_txn_ops: DEFAULT_MAX_TXN_OPS,
        }
    }

    /// Sets the user name and password for etcd authentication.
    #[must_use]
    pub fn with_user(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self.password = Some(password.into());
        self
    }

    /// Sets the CA file used to verify the members (HTTPS endpoints).
    #[must_use]
    pub fn with_ca_cert(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_cert = Some(path.into());
        self
    }

    /// Sets the client certificate and its key (mutual TLS).
    #[must_use]
    pub fn with_client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.client_cert = Some(cert.into());
        self.client_key = Some(key.into());
        self
    }

    /// Sets the election name.
    #[must_use]
    pub fn with_election(mut self, election: impl Into<String>) -> Self {
        self.election = election.into();
        self
    }

    /// Sets the dead-connection bound.
    #[must_use]
    pub fn with_keepalive(mut self, keepalive: Duration) -> Self {
        self.keepalive = keepalive;
        self
    }

    /// Whether any TLS file is set.
    pub(crate) fn uses_tls(&self) -> bool {
        self.ca_cert.is_some() || self.client_cert.is_some() || self.client_key.is_some()
    }

    /// Checks the settings that need no file or network access.
    pub(crate) fn validate(&self) -> Result<(), EtcdError> {
        if self.endpoints.is_empty() {
            return Err(EtcdError::invalid("endpoints", "no endpoint given"));
        }
        if self.election.is_empty() {
            return Err(EtcdError::invalid("election", "must not be empty"));
        }
        if self.keepalive < MIN_KEEPALIVE {
            return Err(EtcdError::invalid(
                "keepalive",
                format!(
                    "{:?} is too short; it must be at least {MIN_KEEPALIVE:?}",
                    self.keepalive
                ),
            ));
        }
        match (&self.user, &self.password) {
            (Some(u), Some(_)) if u.is_empty() => {
                return Err(EtcdError::invalid("user", "must not be empty"));
            }
            (Some(_), None) => {
                return Err(EtcdError::invalid(
                    "password",
                    "a user is set without a password",
                ));
            }
            (None, Some(_)) => {
                return Err(EtcdError::invalid(
                    "user",
                    "a password is set without a user",
                ));
            }
            _ => {}
        }
        match (&self.client_cert, &self.client_key) {
            (Some(_), None) => Err(EtcdError::invalid(
                "client_key",
                "a client certificate is set without its key",
            )),
            (None, Some(_)) => Err(EtcdError::invalid(
                "client_cert",
                "a client key is set without its certificate",
            )),
            _ => Ok(()),
        }
    }
}

impl Default for EtcdConfig {
    fn default() -> Self {
        Self::new(vec![DEFAULT_ENDPOINT.to_owned()])
    }
}

impl fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("endpoints", &self.endpoints)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("ca_cert", &self.ca_cert)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .field("election", &self.election)
            .field("keepalive", &self.keepalive)
            .field("max_request_bytes", &self.max_request_bytes)
            .field("max_txn_ops", &self.max_txn_ops)
            .finish()
    }
}

/// Reads a PEM file named by `setting`, checking that it looks like PEM.
pub(crate) fn read_pem(setting: &'static str, path: &Path) -> Result<Vec<u8>, EtcdError> {
    let bytes = std::fs::read(path).map_err(|source| EtcdError::ReadFile {
        setting,
        path: path.to_owned(),
        source,
    })?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(EtcdError::invalid(
            setting,
            format!("{} is not a PEM file (no -----BEGIN line)", path.display()),
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_password() {
        let c = EtcdConfig::default().with_user("u", "hunter2");
        let s = format!("{c:?}");
        assert!(!s.contains("hunter2"), "{s}");
        assert!(s.contains("<redacted>"), "{s}");
    }

    #[test]
    fn validation_names_the_setting() {
        let e = EtcdConfig::new(vec![]).validate().unwrap_err();
        assert!(e.to_string().contains("endpoints"), "{e}");
        let c = EtcdConfig {
            client_cert: Some("c.pem".into()),
            ..EtcdConfig::default()
        };
        let e = c.validate().unwrap_err();
        assert!(e.to_string().contains("client_key"), "{e}");
        let e = EtcdConfig::default()
            .with_keepalive(Duration::ZERO)
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("keepalive"), "{e}");
        let c = EtcdConfig {
            user: Some("u".into()),
            ..EtcdConfig::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("password"));
        assert!(EtcdConfig::default().validate().is_ok());
    }

    #[test]
    fn read_pem_errors_name_setting_and_path() {
        let e = read_pem("ca_cert", Path::new("/nonexistent/ca.pem")).unwrap_err();
        let s = e.to_string();
        assert!(
            s.contains("ca_cert") && s.contains("/nonexistent/ca.pem"),
            "{s}"
        );
        assert!(std::error::Error::source(&e).is_some());
    }
}

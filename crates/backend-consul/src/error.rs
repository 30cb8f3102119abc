//! Errors of the Consul backend.

use std::path::PathBuf;

use worker_core::{BoxError, StoreError};

/// A configuration the Consul backend cannot use; returned by
/// [`ConsulBackend::new`](crate::ConsulBackend::new).
///
/// Each variant names the setting at fault. An unreachable agent is never a
/// `ConsulError`: it shows up later as
/// [`StoreError::Unavailable`](worker_core::StoreError::Unavailable) and is retried.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsulError {
    /// `endpoints` is empty.
    #[error("no Consul endpoint given (endpoints is empty)")]
    NoEndpoints,
    /// An endpoint is not an `http://` or `https://` URL of an agent.
    #[error("invalid Consul endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A file named by a setting cannot be read.
    #[error("cannot read {setting} file {}", path.display())]
    ReadFile {
        /// The setting (`token_file`, `ca_cert`, `client_cert`, `client_key`).
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
    /// A certificate or key file does not hold what its setting needs.
    #[error("{setting} file {} does not hold a usable {what}", path.display())]
    BadPem {
        /// The setting (`ca_cert`, `client_cert`).
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// What was expected (e.g. "PEM certificate").
        what: &'static str,
        /// The parser's complaint, when there is one.
        #[source]
        source: Option<BoxError>,
    },
    /// A setting has a value the backend cannot use.
    #[error("invalid {setting}: {reason}")]
    InvalidSetting {
        /// The setting.
        setting: &'static str,
        /// Why it is rejected.
        reason: &'static str,
    },
    /// The HTTP client could not be built from the TLS settings.
    #[error("cannot build the HTTP client from the TLS settings")]
    HttpClient(#[source] BoxError),
}

/// A non-2xx answer from Consul, kept as the source of a
/// [`StoreError`](worker_core::StoreError).
#[derive(Debug, thiserror::Error)]
#[error("Consul answered {status}: {message}")]
pub(crate) struct HttpStatusError {
    pub(crate) status: u16,
    pub(crate) message: String,
}

/// Who lacks a permission Consul refused: the ACL token.
pub(crate) const ACL_HOLDER: &str = "the ACL token lacks";

/// `e` with `needs()` (e.g. `key write on "a/b"`) named in front of its
/// cause when it is a missing permission ([`StoreError::is_missing_permission`]); any
/// other error unchanged.
pub(crate) fn naming(e: StoreError, needs: impl FnOnce() -> String) -> StoreError {
    e.naming_permission(ACL_HOLDER, needs)
}

/// An answer Consul should not have given (no index, undecodable body).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct ProtocolError(pub(crate) String);

/// A request that could not be exchanged with an agent (connect, TLS, a
/// broken connection), with the distinct causes of the client's error in one
/// message and no further source.
///
/// reqwest 0.11 and hyper 0.14 repeat each source's text in their own
/// `Display`, so walking their source chain prints the same cause three or
/// four times; the chain is flattened here so that each cause shows once.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct TransportError(String);

impl TransportError {
    /// Each error of `e`'s source chain whose text the message does not hold
    /// yet, joined with `": "`.
    pub(crate) fn new(e: &(dyn std::error::Error + 'static)) -> Self {
        let mut message = e.to_string();
        let mut source = e.source();
        while let Some(cause) = source {
            let text = cause.to_string();
            if !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            source = cause.source();
        }
        Self(message)
    }
}

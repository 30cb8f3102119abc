//! Errors of the core and the contract for backend errors.

use std::error::Error as StdError;
use std::fmt;

/// A boxed error from a backend's client library.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// An error reading from or watching a store.
///
/// Every variant is retried by the worker with backoff; the variants exist so
/// that logs and applications can tell an outage from a configuration problem.
/// The underlying cause is kept as [`source`](StdError::source), out of `Display`;
/// use [`ErrorChain`] to print the whole chain.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store could not be reached or the connection broke.
    #[error("store unreachable")]
    Unavailable(#[source] BoxError),
    /// The store refused the request: missing or wrong token, password or certificate.
    #[error("permission denied by the store (check the token, password or client certificate)")]
    PermissionDenied(#[source] BoxError),
    /// The request did not complete in time.
    #[error("store request timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// The store answered something the backend cannot use.
    #[error("unexpected answer from the store")]
    Protocol(#[source] BoxError),
    /// Injected by the memory backend for tests.
    #[error("injected fault: {0}")]
    Injected(String),
}

impl StoreError {
    /// Wraps any error as [`StoreError::Unavailable`].
    pub fn unavailable(e: impl Into<BoxError>) -> Self {
        Self::Unavailable(e.into())
    }

    /// Wraps any error as [`StoreError::Protocol`].
    pub fn protocol(e: impl Into<BoxError>) -> Self {
        Self::Protocol(e.into())
    }

    /// Wraps any error as [`StoreError::PermissionDenied`].
    pub fn permission_denied(e: impl Into<BoxError>) -> Self {
        Self::PermissionDenied(e.into())
    }
}

/// Displays an error followed by each of its sources: `a: b: c`.
pub struct ErrorChain<'a>(pub &'a (dyn StdError + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

/// A configuration value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct ConfigError {
    /// Which setting (e.g. `instance_id`, `soak`).
    pub field: &'static str,
    /// Why it is rejected.
    pub reason: String,
}

impl ConfigError {
    /// Builds a config error for `field`.
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

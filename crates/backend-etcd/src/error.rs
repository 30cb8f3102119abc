//! The backend's own errors and how etcd-client's errors map to [`StoreError`].

use std::error::Error as StdError;
use std::path::PathBuf;
use std::time::Duration;

use tonic::Code;
use worker_core::{BoxError, StoreError};

/// An etcd backend that cannot be built from its configuration.
///
/// Returned by [`EtcdBackend::connect`](crate::EtcdBackend::connect) only for a bad
/// configuration (the message names the setting); an unreachable etcd is not an
/// error there. The underlying cause is kept as [`source`](StdError::source).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EtcdError {
    /// A setting has a value that cannot be used.
    #[error("invalid etcd setting `{setting}`: {reason}")]
    Invalid {
        /// The setting (`endpoints`, `client_key`, …).
        setting: &'static str,
        /// Why it is rejected.
        reason: String,
    },
    /// A file named by a setting cannot be read.
    #[error("cannot read the file of etcd setting `{setting}`: {path}")]
    ReadFile {
        /// The setting (`ca_cert`, `client_cert`, `client_key`).
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// An endpoint cannot be used (not a URL, or TLS settings on an `http://` URL).
    #[error("invalid etcd endpoint {endpoint:?} (setting `endpoints`)")]
    Endpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What etcd-client or the backend found wrong with it.
        #[source]
        source: BoxError,
    },
}

impl EtcdError {
    pub(crate) fn invalid(setting: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            setting,
            reason: reason.into(),
        }
    }
}

/// Maps an etcd-client error to the core's error kinds.
pub(crate) fn store_error(e: etcd_client::Error) -> StoreError {
    use etcd_client::Error as E;
    match e {
        E::GRpcStatus(status) => status_error(status),
        E::TransportError(_)
        | E::IoError(_)
        | E::WatchError(_)
        | E::EndpointError(_)
        | E::LeaseKeepAliveError(_)
        | E::ElectError(_) => StoreError::unavailable(e),
        other => StoreError::protocol(other),
    }
}

/// Maps a gRPC status from etcd.
fn status_error(status: tonic::Status) -> StoreError {
    let message = status.message().to_ascii_lowercase();
    match status.code() {
        Code::Unauthenticated | Code::PermissionDenied => StoreError::permission_denied(status),
        // etcd answers a wrong password with InvalidArgument ("authentication failed,
        // invalid user ID or password"), a missing user with FailedPrecondition.
        Code::InvalidArgument | Code::FailedPrecondition
            if message.contains("authentication failed")
                || message.contains("user name")
                || message.contains("auth token")
                || message.contains("permission denied")
                || message.contains("user name is empty") =>
        {
            StoreError::permission_denied(status)
        }
        // A member without a raft leader, a connection that failed or was refused,
        // a request the server gave up on: another member (or a retry) may succeed.
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Cancelled
        | Code::Aborted
        | Code::ResourceExhausted
        | Code::Unknown => {
            if is_certificate_refusal(&status) {
                StoreError::permission_denied(status)
            } else {
                StoreError::unavailable(status)
            }
        }
        _ => StoreError::protocol(status),
    }
}

/// Whether the TLS handshake failed because the server refused our certificate
/// (or the lack of one): a fatal alert about certificates from the peer.
fn is_certificate_refusal(e: &(dyn StdError + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        let text = err.to_string().to_ascii_lowercase();
        if text.contains("alert") && text.contains("certificate") {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Whether `e` says the call's HTTP/2 connection was closed under it: hyper's
/// "keep-alive timed out", or h2's "stream closed because of a broken pipe"
/// (what open calls get when hyper drops a connection whose keep-alive PING
/// went unanswered).
pub(crate) fn is_connection_dropped(e: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    let start: &(dyn StdError + 'static) = match e {
        E::GRpcStatus(status) => status,
        E::TransportError(t) => t,
        E::IoError(io) => io,
        other => return mentions_dropped(&other.to_string()),
    };
    let mut cur = Some(start);
    while let Some(err) = cur {
        if mentions_dropped(&err.to_string()) {
            return true;
        }
        cur = err.source();
    }
    false
}

fn mentions_dropped(text: &str) -> bool {
    let text = text.to_ascii_lowercase();
    text.contains("keep-alive timed out") || text.contains("broken pipe")
}

/// Whether trying another member (or reconnecting) may help after `e`.
pub(crate) fn is_endpoint_failure(e: &StoreError) -> bool {
    matches!(e, StoreError::Unavailable(_) | StoreError::Timeout(_))
}

/// A request that did not complete within `bound`.
pub(crate) fn timeout(bound: Duration) -> StoreError {
    StoreError::Timeout(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_failures_are_permission_denied() {
        let e = store_error(etcd_client::Error::GRpcStatus(
            tonic::Status::invalid_argument(
                "etcdserver: authentication failed, invalid user ID or password",
            ),
        ));
        assert!(matches!(e, StoreError::PermissionDenied(_)), "{e:?}");
        let e = store_error(etcd_client::Error::GRpcStatus(
            tonic::Status::permission_denied("etcdserver: permission denied"),
        ));
        assert!(matches!(e, StoreError::PermissionDenied(_)), "{e:?}");
    }

    #[test]
    fn outages_are_unavailable() {
        let e = store_error(etcd_client::Error::GRpcStatus(tonic::Status::unavailable(
            "etcdserver: no leader",
        )));
        assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
        assert!(is_endpoint_failure(&e));
        let e = store_error(etcd_client::Error::GRpcStatus(tonic::Status::out_of_range(
            "etcdserver: mvcc: required revision has been compacted",
        )));
        assert!(matches!(e, StoreError::Protocol(_)), "{e:?}");
        assert!(!is_endpoint_failure(&e));
    }

    #[test]
    fn dropped_connections_are_recognised() {
        let status = tonic::Status::from_error(Box::new(std::io::Error::new(
            std::io::ErrorKind::BrokenPipe,
            "stream closed because of a broken pipe",
        )));
        assert!(is_connection_dropped(&etcd_client::Error::GRpcStatus(
            status
        )));
        assert!(!is_connection_dropped(&etcd_client::Error::GRpcStatus(
            tonic::Status::unavailable("etcdserver: no leader")
        )));
    }

    #[test]
    fn display_keeps_source_out() {
        let e = EtcdError::ReadFile {
            setting: "ca_cert",
            path: "/x/ca.pem".into(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "gone"),
        };
        assert!(!e.to_string().contains("gone"));
        assert_eq!(e.source().unwrap().to_string(), "gone");
    }
}

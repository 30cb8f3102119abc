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
///
/// The cause kept is a [`Cause`] chain, never etcd-client's wrapper (its
/// `Display` repeats the inner error's text and it has no `source`, so the rest
/// of the chain would be lost) nor tonic's status as is (its `Display` appends
/// its source, which it also returns as `source`).
pub(crate) fn store_error(e: etcd_client::Error) -> StoreError {
    use etcd_client::Error as E;
    match e {
        E::GRpcStatus(status) => status_error(&status),
        E::TransportError(t) if is_certificate_refusal(&t) => {
            StoreError::permission_denied(Cause::chain(None, Some(&t)))
        }
        E::TransportError(t) => StoreError::unavailable(Cause::chain(None, Some(&t))),
        E::IoError(io) => StoreError::unavailable(Cause::chain(None, Some(&io))),
        E::WatchError(_) | E::EndpointError(_) | E::LeaseKeepAliveError(_) | E::ElectError(_) => {
            StoreError::unavailable(e)
        }
        other => StoreError::protocol(other),
    }
}

/// Whether `e` is etcd refusing a request for a missing permission (not a wrong
/// password nor a refused certificate: those say something else).
pub(crate) fn is_missing_permission(e: &StoreError) -> bool {
    e.is_missing_permission()
}

/// `e` with `needs()` (e.g. `read on the prefix "a/"`) named in front of its cause when
/// it is a missing permission ([`is_missing_permission`]); any other error unchanged.
pub(crate) fn naming(e: StoreError, needs: impl FnOnce() -> String) -> StoreError {
    e.naming_permission("the user's roles lack", needs)
}

/// What etcd says when it refuses credentials with a status code it also uses
/// for unrelated errors (`InvalidArgument`, `FailedPrecondition`): the gRPC
/// answer carries nothing typed beyond the code, so these messages (etcd's
/// `rpctypes`, stable since 3.0) are the only way to tell them apart.
const AUTH_REFUSALS: [&str; 4] = [
    "authentication failed",
    "user name is empty",
    "user name not found",
    "permission denied",
];

/// Maps a gRPC status from etcd (or from the client's transport, as tonic
/// reports it).
fn status_error(status: &tonic::Status) -> StoreError {
    let cause = || {
        let head = format!("gRPC status {:?}", status.code());
        Cause::chain(Some((head, status.message())), status.source())
    };
    match status.code() {
        Code::Unauthenticated | Code::PermissionDenied => StoreError::permission_denied(cause()),
        Code::InvalidArgument | Code::FailedPrecondition
            if AUTH_REFUSALS.iter().any(|m| status.message().contains(m)) =>
        {
            StoreError::permission_denied(cause())
        }
        // A member without a raft leader, a connection that failed or was refused,
        // a request the server gave up on: another member (or a retry) may succeed.
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Cancelled
        | Code::Aborted
        | Code::ResourceExhausted
        | Code::Unknown => {
            if is_certificate_refusal(status) {
                StoreError::permission_denied(cause())
            } else {
                StoreError::unavailable(cause())
            }
        }
        _ => StoreError::protocol(cause()),
    }
}

/// One cause of an error, as text, with the cause behind it: a copy of a
/// dependency's error chain that prints each cause once.
///
/// tonic's and hyper's chains repeat themselves (a status whose message is its
/// source's text, `error trying to connect: tcp connect error` followed by
/// `tcp connect error`); a cause whose text was already printed earlier in the
/// chain is left out. The types are not kept: the backend classifies an error
/// before it builds its chain.
#[derive(Debug)]
pub(crate) struct Cause {
    text: String,
    source: Option<Box<Cause>>,
}

impl Cause {
    /// The chain of `head` (a text and a detail added unless the chain says it
    /// already) followed by `first` and its causes.
    fn chain(head: Option<(String, &str)>, first: Option<&(dyn StdError + 'static)>) -> Self {
        let mut texts: Vec<String> = Vec::new();
        let mut printed = String::new();
        for c in causes(first) {
            let text = c.to_string();
            if !text.is_empty() && !printed.contains(&text) {
                printed.push_str(&text);
                printed.push('\n');
                texts.push(text);
            }
        }
        if let Some((mut head, detail)) = head {
            if !detail.is_empty() && !printed.contains(detail) {
                head = format!("{head}: {detail}");
            }
            texts.insert(0, head);
        }
        let mut chain: Option<Box<Cause>> = None;
        for text in texts.into_iter().rev() {
            chain = Some(Box::new(Cause {
                text,
                source: chain,
            }));
        }
        chain.map_or_else(
            || Cause {
                text: "unknown error".to_owned(),
                source: None,
            },
            |c| *c,
        )
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl StdError for Cause {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|c| c as &(dyn StdError + 'static))
    }
}

/// `first` and each of its causes, looking inside the errors whose `source`
/// skips what they wrap: an `io::Error` (its `source` is the wrapped error's
/// source, not the wrapped error) and an `h2::Error` (no `source` at all).
fn causes<'a>(
    first: Option<&'a (dyn StdError + 'static)>,
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(first, |&e| {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref() {
                return Some(inner as &(dyn StdError + 'static));
            }
        }
        if let Some(io) = e.downcast_ref::<h2::Error>().and_then(h2::Error::get_io) {
            return Some(io as &(dyn StdError + 'static));
        }
        e.source()
    })
}

/// Whether the TLS handshake failed because the server refused our certificate
/// (or the lack of one): a fatal TLS alert about certificates from the peer.
fn is_certificate_refusal(e: &(dyn StdError + 'static)) -> bool {
    use rustls::AlertDescription as A;
    causes(Some(e)).any(|c| {
        matches!(
            c.downcast_ref::<rustls::Error>(),
            Some(rustls::Error::AlertReceived(
                A::BadCertificate
                    | A::UnsupportedCertificate
                    | A::CertificateRevoked
                    | A::CertificateExpired
                    | A::CertificateUnknown
                    | A::UnknownCA
                    | A::CertificateRequired
                    | A::AccessDenied
            ))
        )
    })
}

/// Whether `e` says the call's HTTP/2 connection was closed under it: hyper's
/// keep-alive timeout (a `hyper::Error` that is a timeout), or a stream h2
/// closed with a broken pipe (what open calls get when hyper drops a connection
/// whose keep-alive PING went unanswered). The caller only asks after a silence
/// long enough for the keep-alive to have fired.
pub(crate) fn is_connection_dropped(e: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    let start: &(dyn StdError + 'static) = match e {
        E::GRpcStatus(status) => status,
        E::TransportError(t) => t,
        E::IoError(io) => io,
        _ => return false,
    };
    causes(Some(start)).any(|c| {
        c.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_timeout)
            || c.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
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
    fn connection_drops_are_recognised_by_type_not_text() {
        // A broken pipe whatever its wording.
        let status = tonic::Status::from_error(Box::new(std::io::Error::new(
            std::io::ErrorKind::BrokenPipe,
            "connection went away",
        )));
        assert!(is_connection_dropped(&etcd_client::Error::GRpcStatus(
            status
        )));
        // Words alone, without the typed cause, are not a dropped connection.
        assert!(!is_connection_dropped(&etcd_client::Error::GRpcStatus(
            tonic::Status::unknown("keep-alive timed out, broken pipe")
        )));
    }

    #[test]
    fn certificate_refusals_are_recognised_by_type_not_text() {
        let alert = |d| {
            tonic::Status::from_error(Box::new(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                rustls::Error::AlertReceived(d),
            )))
        };
        let e = store_error(etcd_client::Error::GRpcStatus(alert(
            rustls::AlertDescription::UnknownCA,
        )));
        assert!(matches!(e, StoreError::PermissionDenied(_)), "{e:?}");
        let e = store_error(etcd_client::Error::GRpcStatus(alert(
            rustls::AlertDescription::CertificateRequired,
        )));
        assert!(matches!(e, StoreError::PermissionDenied(_)), "{e:?}");
        // Another alert is an outage like any other.
        let e = store_error(etcd_client::Error::GRpcStatus(alert(
            rustls::AlertDescription::InternalError,
        )));
        assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
        // A message that merely mentions a certificate alert is not one.
        let e = store_error(etcd_client::Error::GRpcStatus(tonic::Status::unavailable(
            "alert: certificate store reloading",
        )));
        assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
    }

    #[test]
    fn a_chain_prints_each_cause_once() {
        // tonic makes the message of a transport failure its source's text.
        let status = tonic::Status::from_error(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "tcp connect error",
        )));
        let e = store_error(etcd_client::Error::GRpcStatus(status));
        let chain = worker_core::ErrorChain(&e).to_string();
        assert_eq!(chain.matches("tcp connect error").count(), 1, "{chain}");
        assert_eq!(
            chain,
            "store unreachable: gRPC status Unknown: tcp connect error"
        );
        // A message of its own is kept.
        let e = store_error(etcd_client::Error::GRpcStatus(tonic::Status::unavailable(
            "etcdserver: no leader",
        )));
        let chain = worker_core::ErrorChain(&e).to_string();
        assert_eq!(
            chain,
            "store unreachable: gRPC status Unavailable: etcdserver: no leader"
        );
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

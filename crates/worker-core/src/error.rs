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
}

/// A fault the [`MemoryStore`](crate::MemoryStore) was told to inject
/// (`set_unavailable`, `fail_next`, a closed watch): the source of the
/// [`StoreError::Unavailable`] it then returns, so that a test can tell an
/// injected outage from any other with `downcast_ref`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("injected fault: {0}")]
pub struct InjectedFault(pub String);

impl StoreError {
    /// The outage a test injects: [`StoreError::Unavailable`] whose source
    /// is an [`InjectedFault`] saying `what`.
    pub fn injected(what: impl Into<String>) -> Self {
        StoreError::Unavailable(Box::new(InjectedFault(what.into())))
    }
}

/// A request the store refused for a missing permission, named: what the
/// request needed (`key write on "a/b"`), in front of the store's own
/// answer, which names neither the operation nor the key.
#[derive(Debug, thiserror::Error)]
#[error("{holder} {needs}")]
pub struct MissingPermission {
    /// Who lacks it, with the verb: `the ACL token lacks`, `the user's roles lack`.
    pub holder: &'static str,
    /// What the request needed: the operation and the key, prefix or API.
    pub needs: String,
    /// The store's answer.
    #[source]
    pub source: BoxError,
}

impl StoreError {
    /// Whether the store refused the request for a missing permission (its
    /// answer says "permission denied"), not for an unknown token, a wrong
    /// password or a refused certificate, which say something else.
    pub fn is_missing_permission(&self) -> bool {
        let Self::PermissionDenied(source) = self else {
            return false;
        };
        // Already named, or the store's answer somewhere down the chain.
        let mut cause: Option<&(dyn StdError + 'static)> = Some(&**source);
        while let Some(e) = cause {
            if e.is::<MissingPermission>()
                || e.to_string()
                    .to_ascii_lowercase()
                    .contains("permission denied")
            {
                return true;
            }
            cause = e.source();
        }
        false
    }

    /// This error with what the request needed (`needs()`, e.g. `key write
    /// on "a/b"`) named in front of its cause, as a [`MissingPermission`],
    /// when it is a missing permission; any other error unchanged.
    #[must_use]
    pub fn naming_permission(self, holder: &'static str, needs: impl FnOnce() -> String) -> Self {
        if !self.is_missing_permission() {
            return self;
        }
        // Named once: the first naming (closest to the request) says most.
        if let Self::PermissionDenied(source) = &self {
            if source.is::<MissingPermission>() {
                return self;
            }
        }
        match self {
            Self::PermissionDenied(source) => Self::PermissionDenied(Box::new(MissingPermission {
                holder,
                needs: needs(),
                source,
            })),
            other => other,
        }
    }

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
///
/// Each distinct cause appears once: a source whose text is already part of
/// the message printed before it is skipped (hyper, reqwest and others repeat
/// their source in their own `Display`); its own sources are still followed.
pub struct ErrorChain<'a>(pub &'a (dyn StdError + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut last = self.0.to_string();
        f.write_str(&last)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            let text = s.to_string();
            if !last.contains(&text) {
                write!(f, ": {text}")?;
                last = text;
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An error whose `Display` repeats its source's text, like hyper's and
    /// reqwest's "error trying to connect: tcp connect error: ...".
    #[derive(Debug)]
    struct Layer {
        text: String,
        source: Option<Box<Layer>>,
    }

    impl fmt::Display for Layer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(&self.text)
        }
    }

    impl StdError for Layer {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            self.source
                .as_deref()
                .map(|s| s as &(dyn StdError + 'static))
        }
    }

    fn chain(texts: &[&str]) -> Layer {
        let mut layer: Option<Box<Layer>> = None;
        for t in texts.iter().rev() {
            layer = Some(Box::new(Layer {
                text: (*t).to_owned(),
                source: layer,
            }));
        }
        *layer.expect("at least one")
    }

    #[test]
    fn each_distinct_cause_is_printed_once() {
        let e = chain(&[
            "store unreachable",
            "error sending request: error trying to connect: tcp connect error: Connection refused (os error 111)",
            "error trying to connect: tcp connect error: Connection refused (os error 111)",
            "tcp connect error: Connection refused (os error 111)",
            "Connection refused (os error 111)",
        ]);
        assert_eq!(
            ErrorChain(&e).to_string(),
            "store unreachable: error sending request: error trying to connect: tcp connect error: \
             Connection refused (os error 111)"
        );
    }

    #[test]
    fn distinct_causes_are_all_kept() {
        let e = chain(&["a", "b", "c"]);
        assert_eq!(ErrorChain(&e).to_string(), "a: b: c");
        // A cause not contained in the message before it is kept, even when
        // an earlier message contains it.
        let e = chain(&["x: c", "b", "c"]);
        assert_eq!(ErrorChain(&e).to_string(), "x: c: b: c");
    }
}

//! Sessions ([`Membership`]): TTL sessions with `behavior=delete` and no
//! lock-delay, optionally bound to a TTL check the backend registers on the
//! agent ([`SessionChecks`]), and the keys bound to them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use worker_core::{Membership, SessionId, StoreError};

use super::request::{lock_verb, send};
use crate::error::ProtocolError;
use crate::ConsulBackend;

/// Consul's smallest session TTL; shorter TTLs are rounded up to it.
pub const MIN_SESSION_TTL: Duration = Duration::from_secs(10);

/// The shortest member TTL with sessions bound to an agent check: 1 s (the
/// agent's TTL checks have no floor of their own; a second keeps a renewal
/// every third of it meaningful).
pub const MIN_CHECK_TTL: Duration = Duration::from_secs(1);

/// Consul's largest session TTL; longer TTLs are cut down to it.
pub const MAX_SESSION_TTL: Duration = Duration::from_secs(86_400);
/// The lock-delay of every session this backend opens: none. Fenced writes
/// (a `check-session` on the leader key in every transaction) already keep a
/// deposed leader from writing, and a lock-delay would only hold the leader
/// key (and a dead member's re-registration) back for that long after its
/// session ends. See `docs/consul.md`.
pub const LOCK_DELAY: &str = "0s";
/// The name of the sessions this backend opens (shown by `consul` tools).
pub const SESSION_NAME: &str = "coordinator member";

/// The TTL sent to Consul for `ttl`: whole seconds rounded up, within
/// [`MIN_SESSION_TTL`] and [`MAX_SESSION_TTL`].
pub(crate) fn session_ttl(ttl: Duration) -> Duration {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    Duration::from_secs(secs).clamp(MIN_SESSION_TTL, MAX_SESSION_TTL)
}

/// The check each session is bound to, when sessions are bound to an agent
/// check ([`ConsulConfig::session_check`](crate::ConsulConfig::session_check)).
#[derive(Debug)]
pub(crate) struct SessionChecks {
    /// The service ID registered on the agent, `None` for plain sessions.
    service: Option<String>,
    /// Whether registering works: `None` until tried, `Some(false)` once the
    /// ACL refused it (plain sessions from then on).
    allowed: Mutex<Option<bool>>,
    /// The check of each open session.
    by_session: Mutex<HashMap<String, String>>,
}

impl SessionChecks {
    /// No session yet; sessions bound to the check of `service` if given.
    pub(crate) fn new(service: Option<String>) -> Self {
        Self {
            service,
            allowed: Mutex::new(None),
            by_session: Mutex::new(HashMap::new()),
        }
    }

    /// The check `session` is bound to, if any.
    fn check_of(&self, session: &SessionId) -> Option<String> {
        self.by_session
            .lock()
            .expect("not poisoned")
            .get(&session.0)
            .cloned()
    }
}

/// The check ID Consul gives a service's one check: `service:<service id>`.
fn check_id(service: &str) -> String {
    format!("service:{service}")
}

/// How a check's TTL is written: whole milliseconds, at least
/// [`MIN_CHECK_TTL`].
fn check_ttl(ttl: Duration) -> String {
    format!("{}ms", ttl.max(MIN_CHECK_TTL).as_millis())
}

impl ConsulBackend {
    /// `PUT /v1/agent/check/pass/<check>`: `Ok(false)` when the agent does
    /// not know the check (it restarted, or the service was deregistered:
    /// Consul 1.8 answers 500 `CheckID … does not have associated TTL`,
    /// later versions `Unknown check` or 404).
    async fn pass_check(&self, check: &str) -> Result<bool, StoreError> {
        let answer = send(
            &self.inner.http,
            http::Method::PUT,
            &["agent", "check", "pass"],
            check,
            &[],
            Vec::new(),
            |s, body| {
                let body = String::from_utf8_lossy(body).to_ascii_lowercase();
                s == 404
                    || (s == 500
                        && (body.contains("unknown check")
                            || body.contains("does not have associated ttl")))
            },
        )
        .await?;
        Ok(answer.status == 200)
    }

    /// Registers (again) the service and its TTL check, passing: `Ok(Some(check))`,
    /// `Ok(None)` when the ACL refuses it (from then on sessions are plain).
    async fn register_check(
        &self,
        service: &str,
        ttl: Duration,
    ) -> Result<Option<String>, StoreError> {
        let checks = &self.inner.checks;
        if *checks.allowed.lock().expect("not poisoned") == Some(false) {
            return Ok(None);
        }
        let check = check_id(service);
        let body = json!({
            "ID": service,
            "Name": "coordinator",
            "Check": {
                "CheckID": check,
                "Name": "coordinator member session",
                "TTL": check_ttl(ttl),
                "Status": "passing",
                "DeregisterCriticalServiceAfter": "1m",
            },
        });
        let body = serde_json::to_vec(&body).map_err(StoreError::protocol)?;
        let result = send(
            &self.inner.http,
            http::Method::PUT,
            &["agent", "service", "register"],
            "",
            &[],
            body,
            |_, _| false,
        )
        .await;
        match result {
            Ok(_) => {
                // Registering again a service whose check the agent still
                // holds (a member restarted with the same id before the
                // service was reaped) keeps the old check's status, critical
                // after the death: Consul would refuse a session bound to it.
                // Passing it makes it what this member says.
                if !self.pass_check(&check).await? {
                    return Err(StoreError::protocol(ProtocolError(format!(
                        "the agent does not know the check {check} just registered"
                    ))));
                }
                let first = checks
                    .allowed
                    .lock()
                    .expect("not poisoned")
                    .replace(true)
                    .is_none();
                if first {
                    tracing::info!(check, ttl = %check_ttl(ttl), "sessions bound to the agent check {check} (TTL check) and serfHealth");
                }
                Ok(Some(check))
            }
            Err(e) if e.is_missing_permission() => {
                checks.allowed.lock().expect("not poisoned").replace(false);
                tracing::warn!(
                    service,
                    error = %worker_core::ErrorChain(&e),
                    session_ttl = ?session_ttl(ttl),
                    "the ACL token may not register the session's health check (service:write on \"coordinator\"): falling back to a plain session TTL of {:?}, expired by Consul within 1 to 2 × that TTL",
                    session_ttl(ttl)
                );
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

#[async_trait]
impl Membership for ConsulBackend {
    /// [`MIN_SESSION_TTL`] for plain sessions: Consul rounds shorter TTLs
    /// up to 10 s. With sessions bound to an agent check
    /// ([`ConsulConfig::session_check`](crate::ConsulConfig::session_check)),
    /// [`MIN_CHECK_TTL`]: the check's TTL is the member's, enforced by the
    /// agent on time, and the session's own TTL (rounded up to 10 s) is only
    /// a backstop that ends it later, never earlier. Should the ACL refuse
    /// the check, the member falls back to a plain session whose store-side
    /// TTL is longer than the member believes: its items then move later,
    /// never sooner.
    fn min_ttl(&self) -> Duration {
        if self.inner.checks.service.is_some() {
            MIN_CHECK_TTL
        } else {
            MIN_SESSION_TTL
        }
    }

    /// `PUT /v1/session/create` with `TTL` (rounded up to whole seconds and
    /// to Consul's minimum of 10 s), `Behavior: delete`, `LockDelay: 0s` and
    /// no node health checks: the session lives exactly while it is renewed
    /// (see `docs/consul.md`).
    ///
    /// With [`ConsulConfig::session_check`](crate::ConsulConfig::session_check),
    /// the session is also bound to the agent's TTL check of that service
    /// (registered first, passing) and to `serfHealth`: it ends as soon as
    /// either turns critical.
    async fn open_session(&self, ttl: Duration) -> Result<SessionId, StoreError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Created {
            #[serde(rename = "ID")]
            id: String,
        }
        let check = match self.inner.checks.service.clone() {
            Some(service) => self.register_check(&service, ttl).await?,
            None => None,
        };
        let body = match &check {
            Some(check) => json!({
                "Name": SESSION_NAME,
                "TTL": format!("{}s", session_ttl(ttl).as_secs()),
                "Behavior": "delete",
                "LockDelay": LOCK_DELAY,
                "NodeChecks": ["serfHealth"],
                "ServiceChecks": [{"ID": check}],
            }),
            None => json!({
                "Name": SESSION_NAME,
                "TTL": format!("{}s", session_ttl(ttl).as_secs()),
                "Behavior": "delete",
                "LockDelay": LOCK_DELAY,
                "NodeChecks": [],
            }),
        };
        let body = serde_json::to_vec(&body).map_err(StoreError::protocol)?;
        let answer = send(
            &self.inner.http,
            http::Method::PUT,
            &["session", "create"],
            "",
            &[],
            body,
            |_, _| false,
        )
        .await?;
        let created: Created =
            serde_json::from_slice(&answer.body).map_err(StoreError::protocol)?;
        if let Some(check) = check {
            self.inner
                .checks
                .by_session
                .lock()
                .expect("not poisoned")
                .insert(created.id.clone(), check);
        }
        Ok(SessionId(created.id))
    }

    /// `PUT /v1/session/renew/<id>`; a 404 (expired or destroyed) is
    /// `Ok(false)`. A session bound to an agent check passes the check first
    /// (`PUT /v1/agent/check/pass/<check>`); a check the agent no longer
    /// knows (the agent restarted) means the session is gone too.
    async fn renew_session(&self, session: &SessionId) -> Result<bool, StoreError> {
        if let Some(check) = self.inner.checks.check_of(session) {
            if !self.pass_check(&check).await? {
                return Ok(false);
            }
        }
        let answer = send(
            &self.inner.http,
            http::Method::PUT,
            &["session", "renew"],
            &session.0,
            &[],
            Vec::new(),
            |s, _| s == 404,
        )
        .await?;
        Ok(answer.status != 404)
    }

    /// `PUT /v1/session/destroy/<id>`: its keys are deleted (behavior
    /// `delete`); Consul answers `true` also for a session already gone.
    async fn close_session(&self, session: &SessionId) -> Result<(), StoreError> {
        send(
            &self.inner.http,
            http::Method::PUT,
            &["session", "destroy"],
            &session.0,
            &[],
            Vec::new(),
            |_, _| false,
        )
        .await?;
        let check = self
            .inner
            .checks
            .by_session
            .lock()
            .expect("not poisoned")
            .remove(&session.0);
        // The service is this member's; a new session registers it again.
        if let (Some(_), Some(service)) = (check, &self.inner.checks.service) {
            if let Err(e) = send(
                &self.inner.http,
                http::Method::PUT,
                &["agent", "service", "deregister"],
                service,
                &[],
                Vec::new(),
                |_, _| false,
            )
            .await
            {
                tracing::debug!(error = %worker_core::ErrorChain(&e), "deregistering the session's check failed");
            }
        }
        Ok(())
    }

    /// `PUT /v1/kv/<key>?acquire=<session>`: `false` when another session
    /// holds the key or the session is gone.
    async fn put_bound(
        &self,
        session: &SessionId,
        key: &str,
        value: Bytes,
    ) -> Result<bool, StoreError> {
        lock_verb(&self.inner.http, key, "acquire", session, value.to_vec()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_is_rounded_up_to_whole_seconds_within_consuls_range() {
        assert_eq!(session_ttl(Duration::from_secs(3)), MIN_SESSION_TTL);
        assert_eq!(
            session_ttl(Duration::from_millis(15_001)),
            Duration::from_secs(16)
        );
        assert_eq!(
            session_ttl(Duration::from_secs(15)),
            Duration::from_secs(15)
        );
        assert_eq!(session_ttl(Duration::from_secs(1 << 40)), MAX_SESSION_TTL);
    }

    #[test]
    fn the_shortest_ttl_is_consuls_or_the_checks() {
        let backend = ConsulBackend::new(crate::ConsulConfig::default()).expect("backend");
        assert_eq!(Membership::min_ttl(&backend), MIN_SESSION_TTL);
        let c = crate::ConsulConfig {
            session_check: Some("coordinator-m1".into()),
            ..Default::default()
        };
        let backend = ConsulBackend::new(c).expect("backend");
        assert_eq!(Membership::min_ttl(&backend), MIN_CHECK_TTL);
        assert_eq!(check_ttl(Duration::from_millis(300)), "1000ms");
        assert_eq!(check_ttl(Duration::from_secs(5)), "5000ms");
    }
}

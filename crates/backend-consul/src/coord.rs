//! The leader half on Consul: sessions, the leader key as an election,
//! fenced transactions and plain writes ([`Membership`], [`Election`],
//! [`FencedWrite`], [`KvWrite`]).
//!
//! Every request goes through the backend's HTTP clients ([`Http::endpoint`]):
//! the same token, TLS settings and endpoint failover as the KV reads. See
//! `docs/consul.md` ("Members, election and fenced writes") for the choices.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use bytes::Bytes;
use consulrs::api::kv::common::KVPair;
use serde::Deserialize;
use serde_json::json;
use tracing::debug;
use worker_core::{
    ConsistentRead, Election, Fence, FencedWrite, KeyVersion, KvEntry, KvWrite, Membership,
    MissingPermission, Revision, SessionId, StoreError, TxnLimits, TxnOp, TxnOutcome,
};

use crate::error::{naming, HttpStatusError, ProtocolError, TransportError, ACL_HOLDER};
use crate::http::Http;
use crate::{leader, ConsulBackend};

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
/// Operations in one Consul 1.8 transaction (`/v1/txn`), the fence included.
pub const MAX_TXN_OPS: usize = 64;
/// Operations of the fence in each transaction: `check-session` and
/// `check-index` on the leader key.
pub const FENCE_OPS: usize = 2;

/// Bound on one request (sessions, acquisitions, transactions, writes).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// An answer to [`send`]: the status, `X-Consul-Index` when present, the body.
struct Answer {
    status: u16,
    index: Option<Revision>,
    body: Bytes,
}

/// The TTL sent to Consul for `ttl`: whole seconds rounded up, within
/// [`MIN_SESSION_TTL`] and [`MAX_SESSION_TTL`].
pub(crate) fn session_ttl(ttl: Duration) -> Duration {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    Duration::from_secs(secs).clamp(MIN_SESSION_TTL, MAX_SESSION_TTL)
}

/// Sends `method /v1/<api…>/<key…>` (the key percent-encoded segment by
/// segment) with `query` and `body` on the backend's current endpoint.
///
/// A 2xx answer, or one `accept(status, body)` claims, is returned; otherwise
/// `401`/`403` are [`StoreError::PermissionDenied`], `429`/`5xx`
/// [`StoreError::Unavailable`], anything else a protocol error. A transport
/// failure, a timeout, a `429` or a `5xx` moves the backend to its next
/// endpoint, as for reads.
async fn send(
    http: &Http,
    method: http::Method,
    api: &[&str],
    key: &str,
    query: &[(&str, &str)],
    body: Vec<u8>,
    accept: impl Fn(u16, &[u8]) -> bool + Send,
) -> Result<Answer, StoreError> {
    let (slot, client) = http.endpoint();
    let mut url = url::Url::parse(&client.settings.address).map_err(StoreError::protocol)?;
    {
        let mut segments = url.path_segments_mut().map_err(|()| {
            StoreError::protocol(ProtocolError("endpoint cannot be a base".into()))
        })?;
        segments
            .pop_if_empty()
            .push(&format!("v{}", client.settings.version))
            .extend(api);
        if !key.is_empty() {
            segments.extend(key.split('/'));
        }
    }
    if !query.is_empty() {
        url.query_pairs_mut().extend_pairs(query);
    }
    let mut request = http::Request::builder()
        .method(method.clone())
        .uri(url.as_str())
        .body(body)
        .map_err(StoreError::protocol)?;
    if let Some(token) = &client.settings.token {
        // Marked sensitive so that no `Debug` of the request prints it.
        let mut value = http::HeaderValue::from_str(token).map_err(StoreError::protocol)?;
        value.set_sensitive(true);
        request.headers_mut().insert("X-Consul-Token", value);
    }
    let request = reqwest::Request::try_from(request).map_err(StoreError::protocol)?;
    debug!(endpoint = %client.settings.address, %method, ?api, key, "consul request");
    let sent = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let response = client.http.http.execute(request).await?;
        let status = response.status().as_u16();
        let index = response
            .headers()
            .get("X-Consul-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let body = response.bytes().await?;
        Ok::<_, reqwest::Error>(Answer {
            status,
            index,
            body,
        })
    })
    .await;
    let result = match sent {
        Err(_) => Err(StoreError::Timeout(REQUEST_TIMEOUT)),
        Ok(Err(e)) if e.is_timeout() => Err(StoreError::Timeout(REQUEST_TIMEOUT)),
        Ok(Err(e)) => Err(StoreError::unavailable(TransportError::new(&e))),
        Ok(Ok(answer))
            if (200..300).contains(&answer.status) || accept(answer.status, &answer.body) =>
        {
            Ok(answer)
        }
        Ok(Ok(answer)) => Err(naming(status_error(answer.status, &answer.body), || {
            needs(&method, api, key)
        })),
    };
    if matches!(
        result,
        Err(StoreError::Unavailable(_) | StoreError::Timeout(_))
    ) {
        http.fail_over(slot);
    }
    result
}

/// What a request refused by the ACLs needed, for its error: `key write on
/// "K"`, `session write …`.
fn needs(method: &http::Method, api: &[&str], key: &str) -> String {
    match api.first().copied() {
        Some("kv") if *method == http::Method::GET => format!("key read on {key:?}"),
        Some("kv") => format!("key write on {key:?}"),
        Some("session") => format!(
            "session write (/v1/session/{}: the token needs `session_prefix \"\" {{ policy = \"write\" }}`, \
             or session write on the agent's node)",
            api.get(1).unwrap_or(&"")
        ),
        _ => format!("a permission of /v1/{}", api.join("/")),
    }
}

/// What a rolled-back transaction operation refused by the ACLs needed:
/// the fence's two checks (indexes 0 and 1) read the fence's key, then
/// `ops[i - FENCE_OPS]`.
fn op_needs(fence_key: &str, ops: &[TxnOp], index: usize) -> String {
    match index.checked_sub(FENCE_OPS).map(|i| ops.get(i)) {
        None => format!("key read on {fence_key:?} (the leader key)"),
        Some(Some(TxnOp::Absent { key })) => format!("key read on {key:?}"),
        Some(Some(
            TxnOp::Put { key, .. } | TxnOp::Delete { key } | TxnOp::Sequence { key, .. },
        )) => format!("key write on {key:?}"),
        Some(None) => format!("the permission of transaction operation {index}"),
    }
}

/// The [`StoreError`] an unexpected status means.
fn status_error(status: u16, body: &[u8]) -> StoreError {
    let mut message = String::from_utf8_lossy(body).trim().to_owned();
    if message.len() > 200 {
        let mut end = 200;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    let error = HttpStatusError { status, message };
    match status {
        401 | 403 => StoreError::permission_denied(error),
        429 | 500..=599 => StoreError::unavailable(error),
        _ => StoreError::protocol(error),
    }
}

/// Whether an answer is Consul refusing a session that does not exist (an
/// acquisition or release with an expired or destroyed session: Consul 1.8
/// answers `500 invalid session "…"`).
fn invalid_session(status: u16, body: &[u8]) -> bool {
    status == 500
        && String::from_utf8_lossy(body)
            .to_ascii_lowercase()
            .contains("invalid session")
}

/// A `true` / `false` answer body (KV writes, acquisitions, releases).
fn boolean(answer: &Answer) -> Result<bool, StoreError> {
    serde_json::from_slice(&answer.body).map_err(StoreError::protocol)
}

/// `PUT /v1/kv/<key>?<verb>=<session>` with `value`: `Ok(false)` when
/// Consul refuses, also because the session does not exist.
async fn lock_verb(
    http: &Http,
    key: &str,
    verb: &str,
    session: &SessionId,
    value: Vec<u8>,
) -> Result<bool, StoreError> {
    let answer = send(
        http,
        http::Method::PUT,
        &["kv"],
        key,
        &[(verb, &session.0)],
        value,
        invalid_session,
    )
    .await?;
    if invalid_session(answer.status, &answer.body) {
        return Ok(false);
    }
    boolean(&answer)
}

/// The entry of `key`, if it exists.
async fn read_pair(http: &Http, key: &str) -> Result<Option<KVPair>, StoreError> {
    let answer = http.read(key, false, None).await?;
    if answer.body.is_empty() {
        return Ok(None);
    }
    let pairs: Vec<KVPair> = serde_json::from_slice(&answer.body).map_err(StoreError::protocol)?;
    Ok(pairs.into_iter().find(|p| p.key == key))
}

/// The fence of `session` on `key` as the key is now: `None` unless
/// `session` holds it. Its leader is what [`leader::leader_of`] (the
/// backend's [`LeaderWait`](worker_core::LeaderWait)) reports for it.
async fn fence_of(
    http: &Http,
    key: &str,
    session: &SessionId,
) -> Result<Option<Fence>, StoreError> {
    let pairs: Vec<KVPair> = read_pair(http, key).await?.into_iter().collect();
    let revision = pairs.first().map_or(0, |p| p.modify_index);
    Ok(leader::leader_of(key, &pairs)
        .filter(|leader| leader.id == session.0)
        .map(|leader| Fence::new(session.clone(), key, leader, revision)))
}

/// One error of a failed transaction.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TxnError {
    op_index: usize,
    what: String,
}

/// A transaction's answer (both the 200 and the 409 shapes).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct TxnAnswer {
    results: Option<Vec<TxnResult>>,
    errors: Option<Vec<TxnError>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct TxnResult {
    #[serde(rename = "KV")]
    kv: Option<TxnKv>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct TxnKv {
    key: String,
    value: Option<String>,
    create_index: u64,
    modify_index: u64,
}

impl TxnKv {
    fn value(&self) -> Result<Bytes, StoreError> {
        match &self.value {
            None => Ok(Bytes::new()),
            Some(v) => base64::engine::general_purpose::STANDARD
                .decode(v)
                .map(Bytes::from)
                .map_err(StoreError::protocol),
        }
    }
}

/// Whether a rolled-back operation's error is Consul refusing the token
/// (`Permission denied`, `ACL not found`): not a lost leadership, nor a
/// failed guard, but an error to report.
fn denied(error: &TxnError) -> bool {
    let what = error.what.to_ascii_lowercase();
    what.contains("permission denied") || what.contains("acl not found")
}

/// The JSON operation of `op` in a `/v1/txn` body.
fn txn_op(op: &TxnOp) -> serde_json::Value {
    match op {
        TxnOp::Put { key, value } => json!({"KV": {
            "Verb": "set",
            "Key": key,
            "Value": base64::engine::general_purpose::STANDARD.encode(value),
        }}),
        TxnOp::Delete { key } => json!({"KV": {"Verb": "delete", "Key": key}}),
        TxnOp::Absent { key } => json!({"KV": {"Verb": "check-not-exists", "Key": key}}),
        // `cas` with index 0 creates the key only if it does not exist.
        TxnOp::Sequence { key, index, value } => json!({"KV": {
            "Verb": "cas",
            "Key": key,
            "Index": index,
            "Value": base64::engine::general_purpose::STANDARD.encode(value),
        }}),
    }
}

/// Sends a transaction; `Ok(Err(errors))` when Consul rolled it back (409).
async fn txn(
    http: &Http,
    ops: &[serde_json::Value],
) -> Result<Result<(Option<Revision>, TxnAnswer), Vec<TxnError>>, StoreError> {
    let body = serde_json::to_vec(ops).map_err(StoreError::protocol)?;
    let answer = send(http, http::Method::PUT, &["txn"], "", &[], body, |s, _| {
        s == 409
    })
    .await?;
    let decoded: TxnAnswer = serde_json::from_slice(&answer.body).map_err(StoreError::protocol)?;
    if answer.status == 409 {
        return Ok(Err(decoded.errors.unwrap_or_default()));
    }
    Ok(Ok((answer.index, decoded)))
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
    pub(crate) fn new(service: Option<String>) -> Self {
        Self {
            service,
            allowed: Mutex::new(None),
            by_session: Mutex::new(HashMap::new()),
        }
    }

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

#[async_trait]
impl Election for ConsulBackend {
    /// `PUT /v1/kv/<election>?acquire=<session>` with `value`, then a read of
    /// the key for the fence: its leader is the session and the term
    /// `CreateIndex + LockIndex`, as [`LeaderWait`](worker_core::LeaderWait)
    /// reports it. A refused acquisition still gives the fence when the key
    /// is already held by `session` (acquiring again keeps the term: Consul
    /// does not count an acquisition by the holder).
    async fn try_lead(
        &self,
        election: &str,
        session: &SessionId,
        value: &str,
    ) -> Result<Option<Fence>, StoreError> {
        let http = &self.inner.http;
        // Already held by this session: the fence as it is. Acquiring again
        // would rewrite the key and move its ModifyIndex, fencing off the
        // leadership this session already runs.
        if let Some(fence) = fence_of(http, election, session).await? {
            return Ok(Some(fence));
        }
        let acquired = lock_verb(http, election, "acquire", session, value.into()).await?;
        let fence = fence_of(http, election, session).await?;
        if acquired && fence.is_none() {
            debug!(
                election,
                "the leader key was lost right after it was acquired"
            );
        }
        Ok(fence)
    }

    /// The leader key's value while a session holds it.
    async fn leader_value(&self, election: &str) -> Result<Option<String>, StoreError> {
        let Some(pair) = read_pair(&self.inner.http, election).await? else {
            return Ok(None);
        };
        if pair.session.as_deref().is_none_or(str::is_empty) {
            return Ok(None);
        }
        let value: Vec<u8> = match pair.value {
            Some(v) => v.try_into().map_err(StoreError::protocol)?,
            None => Vec::new(),
        };
        Ok(Some(String::from_utf8_lossy(&value).into_owned()))
    }

    /// `PUT /v1/kv/<key>?release=<session>`; not an error when the session
    /// no longer holds the key or is gone. With no lock-delay, another
    /// session can acquire the key at once.
    async fn resign(&self, fence: &Fence) -> Result<(), StoreError> {
        lock_verb(
            &self.inner.http,
            fence.key(),
            "release",
            fence.session(),
            Vec::new(),
        )
        .await?;
        Ok(())
    }
}

/// What a fenced transaction costs besides its operations (the fence's
/// operations, the JSON array): kept free of the request limit.
const TXN_RESERVE: usize = 1024;
/// What one operation costs besides its key and base64 value:
/// `{"KV":{"Verb":"delete","Key":"","Value":""}},` and room for escapes.
const OP_OVERHEAD: usize = 64;

/// The limits of a fenced transaction on an agent whose request limit is
/// `txn_max_bytes` and whose value limit is `value_max_bytes`.
pub(crate) fn txn_limits(txn_max_bytes: usize, value_max_bytes: usize) -> TxnLimits {
    TxnLimits {
        max_ops: MAX_TXN_OPS - FENCE_OPS,
        max_bytes: txn_max_bytes.saturating_sub(TXN_RESERVE),
        max_value: value_max_bytes,
        op_overhead: OP_OVERHEAD,
        base64_values: true,
    }
}

#[async_trait]
impl FencedWrite for ConsulBackend {
    /// 62: Consul 1.8 takes 64 operations per transaction, two of them the
    /// fence.
    fn max_ops(&self) -> usize {
        MAX_TXN_OPS - FENCE_OPS
    }

    /// 62 operations, the agent's request limit less a reserve for the fence
    /// (values count base64-encoded, as they travel), its value limit.
    fn limits(&self) -> TxnLimits {
        self.inner.limits
    }

    /// `PUT /v1/txn`: a `check-session` of the fence's key and session and a
    /// `check-index` of its `ModifyIndex` first, then a `set`, `delete`,
    /// `check-not-exists` or `cas` ([`TxnOp::Sequence`]) per operation.
    /// Consul applies all of it or nothing. A rollback caused by the fence
    /// (another session holds the key, or none does) is
    /// [`TxnOutcome::Fenced`]; one caused by a guard (`check-not-exists`,
    /// `cas`) [`TxnOutcome::Conflict`]; a refused token (`Permission
    /// denied`, also on the fence's operations) is
    /// [`StoreError::PermissionDenied`], anything else a protocol error.
    ///
    /// The revision is the `ModifyIndex` the results report for the
    /// sequence key when the transaction has a [`TxnOp::Sequence`] (every
    /// key a transaction writes gets its Raft index), else the answer's
    /// `X-Consul-Index`, else the highest `ModifyIndex` among the results.
    async fn apply(&self, fence: &Fence, ops: &[TxnOp]) -> Result<TxnOutcome, StoreError> {
        if ops.len() > self.max_ops() {
            return Err(StoreError::protocol(ProtocolError(format!(
                "{} operations in one transaction; Consul takes at most {} besides the fence",
                ops.len(),
                self.max_ops()
            ))));
        }
        let mut body = Vec::with_capacity(ops.len() + 1);
        body.push(json!({"KV": {
            "Verb": "check-session",
            "Key": fence.key(),
            "Session": fence.session().0,
        }}));
        // The key unchanged since this leadership began: a session that
        // resigned and won the key again has a newer ModifyIndex.
        body.push(json!({"KV": {
            "Verb": "check-index",
            "Key": fence.key(),
            "Index": fence.revision(),
        }}));
        body.extend(ops.iter().map(txn_op));
        match txn(&self.inner.http, &body).await? {
            Ok((index, answer)) => {
                let results = answer.results.unwrap_or_default();
                let kvs = || results.iter().filter_map(|r| r.kv.as_ref());
                let highest = kvs().map(|kv| kv.modify_index).max().unwrap_or(0);
                let sequence = ops.iter().find_map(|op| match op {
                    TxnOp::Sequence { key, .. } => Some(key),
                    _ => None,
                });
                let revision = match sequence {
                    Some(key) => kvs()
                        .find(|kv| kv.key == *key)
                        .map(|kv| kv.modify_index)
                        .ok_or_else(|| {
                            StoreError::protocol(ProtocolError(
                                "the transaction's answer has no result for the sequence key"
                                    .into(),
                            ))
                        })?,
                    None => index.unwrap_or(highest),
                };
                Ok(TxnOutcome::Applied { revision })
            }
            Err(errors) if errors.iter().any(denied) => {
                let mut lacks: Vec<String> = errors
                    .iter()
                    .filter(|e| denied(e))
                    .map(|e| op_needs(fence.key(), ops, e.op_index))
                    .collect();
                lacks.dedup();
                Err(StoreError::PermissionDenied(Box::new(MissingPermission {
                    holder: ACL_HOLDER,
                    needs: lacks.join(", and "),
                    source: Box::new(ProtocolError(format!(
                        "transaction refused: {}",
                        errors
                            .iter()
                            .map(|e| format!("op {}: {}", e.op_index, e.what))
                            .collect::<Vec<_>>()
                            .join("; ")
                    ))),
                })))
            }
            Err(errors) if !errors.is_empty() && errors.iter().any(|e| e.op_index < FENCE_OPS) => {
                debug!(key = %fence.key(), error = %errors[0].what, "fenced write rejected");
                Ok(TxnOutcome::Fenced)
            }
            Err(errors)
                if !errors.is_empty()
                    && errors.iter().all(|e| {
                        matches!(
                            ops.get(e.op_index - FENCE_OPS),
                            Some(TxnOp::Absent { .. } | TxnOp::Sequence { .. })
                        )
                    }) =>
            {
                debug!(error = %errors[0].what, "fenced write: a guard failed");
                Ok(TxnOutcome::Conflict)
            }
            Err(errors) => Err(StoreError::protocol(ProtocolError(format!(
                "transaction rolled back: {}",
                errors
                    .iter()
                    .map(|e| format!("op {}: {}", e.op_index, e.what))
                    .collect::<Vec<_>>()
                    .join("; ")
            )))),
        }
    }

    /// One read-only `PUT /v1/txn?consistent` of a `get-tree` per prefix and
    /// per key (a `get` would roll the read back for a missing key; the
    /// results of a key's `get-tree` are filtered to the key itself).
    /// Consul serves a read-only transaction from one snapshot of its state,
    /// so everything is read at one position. The revision is the highest
    /// `ModifyIndex` read (Consul sends no index for such a read).
    async fn read_consistent(
        &self,
        prefixes: &[&str],
        keys: &[&str],
    ) -> Result<ConsistentRead, StoreError> {
        let body: Vec<serde_json::Value> = prefixes
            .iter()
            .chain(keys)
            .map(|k| json!({"KV": {"Verb": "get-tree", "Key": k}}))
            .collect();
        let body = serde_json::to_vec(&body).map_err(StoreError::protocol)?;
        let answer = send(
            &self.inner.http,
            http::Method::PUT,
            &["txn"],
            "",
            &[("consistent", "")],
            body,
            |_, _| false,
        )
        .await?;
        let decoded: TxnAnswer =
            serde_json::from_slice(&answer.body).map_err(StoreError::protocol)?;
        // By key: a key under several of the prefixes (or the keys) read
        // comes once per `get-tree` that found it.
        let kvs: std::collections::BTreeMap<String, TxnKv> = decoded
            .results
            .unwrap_or_default()
            .into_iter()
            .filter_map(|r| r.kv)
            .map(|kv| (kv.key.clone(), kv))
            .collect();
        let mut read = ConsistentRead {
            revision: kvs.values().map(|kv| kv.modify_index).max().unwrap_or(0),
            ..ConsistentRead::default()
        };
        for prefix in prefixes {
            let mut entries = Vec::new();
            for kv in kvs.values().filter(|kv| kv.key.starts_with(prefix)) {
                entries.push(KvEntry::at(kv.key.as_bytes(), kv.value()?, kv.create_index));
            }
            read.prefixes.push(entries);
        }
        for key in keys {
            let found = kvs.get(*key);
            read.keys.push(match found {
                Some(kv) => Some(KeyVersion {
                    value: kv.value()?,
                    modified: kv.modify_index,
                }),
                None => None,
            });
        }
        Ok(read)
    }
}

#[async_trait]
impl KvWrite for ConsulBackend {
    /// `PUT /v1/kv/<key>`.
    async fn put_key(&self, key: &str, value: Bytes) -> Result<(), StoreError> {
        let answer = send(
            &self.inner.http,
            http::Method::PUT,
            &["kv"],
            key,
            &[],
            value.to_vec(),
            |_, _| false,
        )
        .await?;
        if boolean(&answer)? {
            Ok(())
        } else {
            Err(StoreError::protocol(ProtocolError(format!(
                "Consul refused to write {key:?}"
            ))))
        }
    }

    /// A transaction `get` + `delete` of `key`, so that whether the key
    /// existed is known atomically: the `get` of a missing key rolls the
    /// transaction back (`Ok(false)`, nothing to delete).
    async fn delete_key(&self, key: &str) -> Result<bool, StoreError> {
        let ops = [
            json!({"KV": {"Verb": "get", "Key": key}}),
            json!({"KV": {"Verb": "delete", "Key": key}}),
        ];
        match txn(&self.inner.http, &ops).await? {
            Ok(_) => Ok(true),
            Err(errors) if errors.iter().any(denied) => {
                Err(StoreError::PermissionDenied(Box::new(MissingPermission {
                    holder: ACL_HOLDER,
                    needs: format!("key read and write on {key:?}"),
                    source: Box::new(ProtocolError(format!(
                        "delete refused: {}",
                        errors
                            .iter()
                            .map(|e| e.what.as_str())
                            .collect::<Vec<_>>()
                            .join("; ")
                    ))),
                })))
            }
            Err(errors) if !errors.is_empty() && errors.iter().all(|e| e.op_index == 0) => {
                Ok(false)
            }
            Err(errors) => Err(StoreError::protocol(ProtocolError(format!(
                "delete of {key:?} rolled back: {}",
                errors
                    .iter()
                    .map(|e| e.what.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            )))),
        }
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

    #[test]
    fn invalid_session_answers_are_recognized() {
        assert!(invalid_session(500, b"invalid session \"abc\""));
        assert!(!invalid_session(500, b"No cluster leader"));
        assert!(!invalid_session(200, b"invalid session"));
    }

    #[test]
    fn txn_ops_encode_values_in_base64() {
        let op = txn_op(&TxnOp::Put {
            key: "a/b".into(),
            value: Bytes::from_static(b"hi"),
        });
        assert_eq!(op["KV"]["Verb"], "set");
        assert_eq!(op["KV"]["Value"], "aGk=");
        let op = txn_op(&TxnOp::Delete { key: "a/b".into() });
        assert_eq!(op["KV"]["Verb"], "delete");
    }
}

//! One request of the leader half: [`send`] puts it on the backend's current
//! endpoint and turns a refusal into a [`StoreError`] that names what the
//! token lacked; [`lock_verb`] and [`read_pair`] are the acquisitions,
//! releases and reads of one key that sessions and the election share.

use std::time::Duration;

use bytes::Bytes;
use consulrs::api::kv::common::KVPair;
use tracing::debug;
use worker_core::{Revision, SessionId, StoreError};

use crate::error::{naming, HttpStatusError, ProtocolError, TransportError};
use crate::http::Http;

/// Bound on one request (sessions, acquisitions, transactions, writes).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// An answer to [`send`]: the status, `X-Consul-Index` when present, the body.
pub(super) struct Answer {
    /// The HTTP status.
    pub(super) status: u16,
    /// `X-Consul-Index`, when the answer has one.
    pub(super) index: Option<Revision>,
    /// The body, undecoded.
    pub(super) body: Bytes,
}

/// Sends `method /v1/<api…>/<key…>` (the key percent-encoded segment by
/// segment) with `query` and `body` on the backend's current endpoint.
///
/// A 2xx answer, or one `accept(status, body)` claims, is returned; otherwise
/// `401`/`403` are [`StoreError::PermissionDenied`], `429`/`5xx`
/// [`StoreError::Unavailable`], anything else a protocol error. A transport
/// failure, a timeout, a `429` or a `5xx` moves the backend to its next
/// endpoint, as for reads.
pub(super) async fn send(
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
pub(super) fn boolean(answer: &Answer) -> Result<bool, StoreError> {
    serde_json::from_slice(&answer.body).map_err(StoreError::protocol)
}

/// `PUT /v1/kv/<key>?<verb>=<session>` with `value`: `Ok(false)` when
/// Consul refuses, also because the session does not exist.
pub(super) async fn lock_verb(
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
pub(super) async fn read_pair(http: &Http, key: &str) -> Result<Option<KVPair>, StoreError> {
    let answer = http.read(key, false, None).await?;
    if answer.body.is_empty() {
        return Ok(None);
    }
    let pairs: Vec<KVPair> = serde_json::from_slice(&answer.body).map_err(StoreError::protocol)?;
    Ok(pairs.into_iter().find(|p| p.key == key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_session_answers_are_recognized() {
        assert!(invalid_session(500, b"invalid session \"abc\""));
        assert!(!invalid_session(500, b"No cluster leader"));
        assert!(!invalid_session(200, b"invalid session"));
    }
}

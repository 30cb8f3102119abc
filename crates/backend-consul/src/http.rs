//! The HTTP side: building the client from the settings, sending KV reads,
//! and mapping answers and failures onto [`StoreError`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use consulrs::client::{ConsulClient, ConsulClientSettings};
use tracing::debug;
use worker_core::{Revision, StoreError};

use crate::config::{ConsulConfig, MAX_WAIT};
use crate::error::{naming, ConsulError, HttpStatusError, ProtocolError, TransportError};

/// Bound on a read that does not block (a list, the first leader read).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on establishing a connection (TCP + TLS).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Added to `wait + wait/16` (Consul adds up to `wait/16` of jitter) for the
/// timeout of a blocking query, so that a slow but healthy answer is not cut off.
const BLOCKING_MARGIN: Duration = Duration::from_secs(5);

/// One answer to a KV read: the `X-Consul-Index` and the JSON body (empty on
/// 404: no key), decoded by the caller ([`crate::decode`]).
#[derive(Debug)]
pub(crate) struct KvAnswer {
    pub(crate) index: Revision,
    pub(crate) body: Vec<u8>,
}

/// The consulrs clients (one per endpoint, sharing one reqwest client) and the
/// backend-wide settings.
pub(crate) struct Http {
    clients: Vec<ConsulClient>,
    current: AtomicUsize,
    wait: Duration,
}

impl Http {
    pub(crate) fn new(config: &ConsulConfig) -> Result<Self, ConsulError> {
        if config.endpoints.is_empty() {
            return Err(ConsulError::NoEndpoints);
        }
        if config.wait.is_zero() || config.wait > MAX_WAIT {
            return Err(ConsulError::InvalidSetting {
                setting: "wait",
                reason: "must be more than 0 and at most 10 minutes (Consul's cap)",
            });
        }
        let tls = config.ca_cert.is_some() || config.client_cert.is_some();
        let addresses = config
            .endpoints
            .iter()
            .map(|e| normalize_endpoint(e, tls))
            .collect::<Result<Vec<_>, _>>()?;
        let token = resolve_token(config)?;
        let http = build_reqwest(config)?;
        let clients = addresses
            .into_iter()
            .map(|address| {
                // The settings are filled in here rather than through consulrs's
                // builder, whose defaults read CONSUL_* variables behind our back.
                let settings = ConsulClientSettings {
                    address: address.clone(),
                    ca_certs: Vec::new(),
                    client_cert: None,
                    client_key: None,
                    token: token.clone(),
                    verify: true,
                    version: 1,
                };
                // `ConsulClient::new` would build its own reqwest client, whose
                // client-certificate setting fails while native-tls is compiled in
                // (rustify enables it); hand it the rustls client built above.
                ConsulClient {
                    http: rustify::clients::reqwest::Client::new(&address, http.clone()),
                    settings,
                }
            })
            .collect();
        Ok(Self {
            clients,
            current: AtomicUsize::new(0),
            wait: config.wait,
        })
    }

    /// The blocking-query wait.
    pub(crate) fn wait(&self) -> Duration {
        self.wait
    }

    /// Reads `key` (every key under it when `recurse`), blocking until the
    /// index passes `index` when one is given (0 is sent as 1: Consul answers
    /// `index=0` at once).
    ///
    /// Cancel safe: dropping the future abandons the request.
    pub(crate) async fn read(
        &self,
        key: &str,
        recurse: bool,
        index: Option<Revision>,
    ) -> Result<KvAnswer, StoreError> {
        let mut body = Vec::new();
        let index = self.read_into(key, recurse, index, &mut body).await?;
        Ok(KvAnswer { index, body })
    }

    /// [`read`](Self::read), with the body read into `body` (cleared first,
    /// left empty on a 404), returning the answer's `X-Consul-Index`: a caller
    /// that reads again and again recycles one buffer instead of allocating
    /// (and faulting in) a new one per answer.
    ///
    /// A failure that says nothing about the request itself (a connection
    /// that cannot be made or breaks, a timeout, a `5xx` such as "No cluster
    /// leader", a `429`) moves the backend to the next endpoint for the
    /// requests that follow; a refusal (`401`/`403`) or an unusable answer
    /// does not (another agent of the same cluster would answer the same).
    ///
    /// Cancel safe: dropping the future abandons the request; `body` may then
    /// hold part of an answer, which the next call clears.
    pub(crate) async fn read_into(
        &self,
        key: &str,
        recurse: bool,
        index: Option<Revision>,
        body: &mut Vec<u8>,
    ) -> Result<Revision, StoreError> {
        let slot = self.current.load(Ordering::Relaxed) % self.clients.len();
        let client = &self.clients[slot];
        let request = self.build_request(client, key, recurse, index)?;
        let timeout = match index {
            Some(_) => self.wait + self.wait / 16 + BLOCKING_MARGIN,
            None => REQUEST_TIMEOUT,
        };
        debug!(endpoint = %client.settings.address, key, recurse, ?index, "consul kv read");
        body.clear();
        // consulrs's own KV functions turn a non-2xx answer into an error
        // without its headers, so the `X-Consul-Index` of a 404 (an empty
        // prefix, which must still be blocked on) would be lost. The request
        // goes through the reqwest client consulrs exposes instead, which
        // keeps the headers of every answer and takes a per-request timeout.
        let sent = tokio::time::timeout(timeout, async {
            let mut response = client.http.http.execute(request).await?;
            let status = response.status();
            let index = response.headers().get("X-Consul-Index").cloned();
            if let Some(len) = response.content_length() {
                body.reserve(usize::try_from(len).unwrap_or(0));
            }
            while let Some(chunk) = response.chunk().await? {
                body.extend_from_slice(&chunk);
            }
            Ok::<_, reqwest::Error>((status, index))
        })
        .await;
        let result = match sent {
            Err(_) => Err(StoreError::Timeout(timeout)),
            Ok(Err(e)) => Err(map_reqwest_error(&e, timeout)),
            Ok(Ok((status, index))) => answer_index(status, index.as_ref(), body).map_err(|e| {
                naming(e, || {
                    if recurse {
                        format!("key read on the prefix {key:?}")
                    } else {
                        format!("key read on {key:?}")
                    }
                })
            }),
        };
        if let Err(error) = &result {
            if fails_over(error) && self.clients.len() > 1 {
                let next = (slot + 1) % self.clients.len();
                // Only the first of several requests failing on one endpoint moves on.
                if self
                    .current
                    .compare_exchange(slot, next, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
                {
                    debug!(
                        from = %client.settings.address,
                        to = %self.clients[next].settings.address,
                        "consul endpoint failed; moving to the next"
                    );
                }
            }
        }
        result
    }

    fn build_request(
        &self,
        client: &ConsulClient,
        key: &str,
        recurse: bool,
        index: Option<Revision>,
    ) -> Result<reqwest::Request, StoreError> {
        // The URL is built here, segment by segment, so that any key is
        // percent-encoded correctly: consulrs pastes the key into the path
        // unencoded, which breaks keys with spaces, `%`, `?`, `#` or non-ASCII.
        let mut url = url::Url::parse(&client.settings.address).map_err(StoreError::protocol)?;
        url.path_segments_mut()
            .map_err(|()| StoreError::protocol(ProtocolError("endpoint cannot be a base".into())))?
            .pop_if_empty()
            .extend([format!("v{}", client.settings.version).as_str(), "kv"])
            .extend(key.split('/'));
        if recurse {
            url.query_pairs_mut().append_pair("recurse", "true");
        }
        // The blocking-query parameters, set here rather than through
        // consulrs's `Features`, which logs two INFO lines per request.
        if let Some(index) = index {
            url.query_pairs_mut()
                .append_pair("index", &index.max(1).to_string())
                .append_pair("wait", &format!("{}ms", self.wait.as_millis()));
        }
        let mut request = http::Request::get(url.as_str())
            .body(Vec::new())
            .map_err(StoreError::protocol)?;
        if let Some(token) = &client.settings.token {
            // Validated in `resolve_token`; marked sensitive so that no `Debug`
            // of the request prints it.
            let mut value = http::HeaderValue::from_str(token).map_err(StoreError::protocol)?;
            value.set_sensitive(true);
            request.headers_mut().insert("X-Consul-Token", value);
        }
        reqwest::Request::try_from(request).map_err(StoreError::protocol)
    }
}

/// Access for requests other than KV reads (sessions, lock acquisition,
/// transactions, plain writes: `crate::coord`), so that they go through the
/// same clients, token, TLS and endpoint failover.
impl Http {
    /// The endpoint requests go to now: its slot (for
    /// [`fail_over`](Self::fail_over)) and its consulrs client.
    pub(crate) fn endpoint(&self) -> (usize, &ConsulClient) {
        let slot = self.current.load(Ordering::Relaxed) % self.clients.len();
        (slot, &self.clients[slot])
    }

    /// Moves the requests that follow from `slot` to the next endpoint, after
    /// a failure that says nothing about the request (only the first of
    /// several failures on one endpoint moves on).
    pub(crate) fn fail_over(&self, slot: usize) {
        if self.clients.len() > 1 {
            let _ = self.current.compare_exchange(
                slot,
                (slot + 1) % self.clients.len(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }
}

fn status_error(status: u16, body: &[u8]) -> HttpStatusError {
    let text = String::from_utf8_lossy(body);
    let mut message = text.trim().to_owned();
    if message.len() > 200 {
        let mut end = 200;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    HttpStatusError { status, message }
}

/// The `X-Consul-Index` of an answer, or the error its status means. The
/// body of a 404 (no key) is emptied.
fn answer_index(
    status: reqwest::StatusCode,
    index: Option<&http::HeaderValue>,
    body: &mut Vec<u8>,
) -> Result<Revision, StoreError> {
    match status.as_u16() {
        200 | 404 => {}
        code @ (401 | 403) => {
            return Err(StoreError::permission_denied(status_error(code, body)));
        }
        code @ (429 | 500..=599) => {
            return Err(StoreError::unavailable(status_error(code, body)));
        }
        code => return Err(StoreError::protocol(status_error(code, body))),
    }
    let index = index
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| {
            StoreError::protocol(ProtocolError(format!(
                "answer {status} without a valid X-Consul-Index header"
            )))
        })?;
    if status == reqwest::StatusCode::NOT_FOUND {
        body.clear();
    }
    Ok(index)
}

/// Whether `error` moves the backend to the next endpoint: the agent could
/// not be reached or did not answer in time (connect failures, broken
/// connections, TLS failures, timeouts), or answered that it cannot serve
/// now (`5xx`, `429`: both are [`StoreError::Unavailable`]).
fn fails_over(error: &StoreError) -> bool {
    matches!(error, StoreError::Unavailable(_) | StoreError::Timeout(_))
}

/// Classifies a reqwest failure by its type, not its text: `is_timeout`
/// (reqwest's own or the connect timeout) is a [`StoreError::Timeout`];
/// everything else (`is_connect`, a connection closed mid-answer, TLS
/// failures: an untrusted server certificate, or an agent with
/// `verify_incoming` closing the connection on a missing client certificate,
/// which reaches the client only as a closed channel) is
/// [`StoreError::Unavailable`].
fn map_reqwest_error(e: &reqwest::Error, timeout: Duration) -> StoreError {
    if e.is_timeout() {
        let bound = if e.is_connect() {
            CONNECT_TIMEOUT
        } else {
            timeout
        };
        return StoreError::Timeout(bound);
    }
    StoreError::unavailable(TransportError::new(e))
}

/// Checks an endpoint and returns it as `scheme://host:port` without a trailing slash. A
/// bare `host:port` means `https://` when TLS files are set (`tls`), `http://` otherwise; an
/// explicit `http://` endpoint with TLS files set is refused: the token would cross the
/// network in plain text while the settings ask for TLS.
fn normalize_endpoint(endpoint: &str, tls: bool) -> Result<String, ConsulError> {
    let invalid = |reason| ConsulError::InvalidEndpoint {
        endpoint: endpoint.to_owned(),
        reason,
    };
    let trimmed = endpoint.trim();
    if trimmed.is_empty() {
        return Err(invalid("empty"));
    }
    let with_scheme = if trimmed.contains("://") {
        trimmed.to_owned()
    } else if tls {
        format!("https://{trimmed}")
    } else {
        format!("http://{trimmed}")
    };
    let url = url::Url::parse(&with_scheme).map_err(|_| invalid("not a URL"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("the scheme must be http or https"));
    }
    if tls && url.scheme() == "http" {
        return Err(invalid(
            "ca_cert (--ca-cert) or client_cert (--client-cert) is set but the endpoint is \
             http://, which would send the token in plain text; use https://",
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("no host"));
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(invalid("must not have a query, fragment or user"));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

fn read_file(setting: &'static str, path: &Path) -> Result<Vec<u8>, ConsulError> {
    std::fs::read(path).map_err(|source| ConsulError::ReadFile {
        setting,
        path: path.to_owned(),
        source,
    })
}

/// The token by precedence: `token`, `token_file`, `CONSUL_HTTP_TOKEN`.
fn resolve_token(config: &ConsulConfig) -> Result<Option<String>, ConsulError> {
    let (setting, token) = if let Some(token) = &config.token {
        ("token", token.trim().to_owned())
    } else if let Some(path) = &config.token_file {
        let bytes = read_file("token_file", path)?;
        let text = String::from_utf8(bytes).map_err(|_| ConsulError::InvalidSetting {
            setting: "token_file",
            reason: "the file is not UTF-8 text",
        })?;
        let token = text.trim().to_owned();
        if token.is_empty() {
            return Err(ConsulError::InvalidSetting {
                setting: "token_file",
                reason: "the file is empty",
            });
        }
        ("token_file", token)
    } else {
        match std::env::var("CONSUL_HTTP_TOKEN") {
            Ok(token) if !token.trim().is_empty() => ("CONSUL_HTTP_TOKEN", token.trim().to_owned()),
            _ => return Ok(None),
        }
    };
    if token.is_empty() {
        return Ok(None);
    }
    if http::HeaderValue::from_str(&token).is_err() {
        return Err(ConsulError::InvalidSetting {
            setting,
            reason: "the token holds characters not allowed in an HTTP header",
        });
    }
    Ok(Some(token))
}

fn bad_pem(
    setting: &'static str,
    path: &Path,
    what: &'static str,
    source: Option<worker_core::BoxError>,
) -> ConsulError {
    ConsulError::BadPem {
        setting,
        path: PathBuf::from(path),
        what,
        source,
    }
}

/// The reqwest client: rustls, the CA when given, the client identity when
/// given, no system proxy, bounded connects.
fn build_reqwest(config: &ConsulConfig) -> Result<reqwest::Client, ConsulError> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .no_proxy()
        .connect_timeout(CONNECT_TIMEOUT)
        // Keep-alive probes find a dead peer under a long blocking query.
        .tcp_keepalive(Duration::from_secs(30));
    if let Some(path) = &config.ca_cert {
        let pem = read_file("ca_cert", path)?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| bad_pem("ca_cert", path, "PEM certificate", Some(e.into())))?;
        if certs.is_empty() {
            return Err(bad_pem("ca_cert", path, "PEM certificate", None));
        }
        builder = builder.tls_built_in_root_certs(false);
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    match (&config.client_cert, &config.client_key) {
        (Some(cert), Some(key)) => {
            let mut pem = read_file("client_cert", cert)?;
            if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                return Err(bad_pem("client_cert", cert, "PEM certificate", None));
            }
            let key_pem = read_file("client_key", key)?;
            if !String::from_utf8_lossy(&key_pem).contains("PRIVATE KEY-----") {
                return Err(bad_pem("client_key", key, "PEM private key", None));
            }
            pem.push(b'\n');
            pem.extend_from_slice(&key_pem);
            let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
                bad_pem(
                    "client_key",
                    key,
                    "PEM private key matching client_cert",
                    Some(e.into()),
                )
            })?;
            builder = builder.identity(identity);
        }
        (Some(_), None) => {
            return Err(ConsulError::InvalidSetting {
                setting: "client_key",
                reason: "client_cert is set but client_key is not",
            })
        }
        (None, Some(_)) => {
            return Err(ConsulError::InvalidSetting {
                setting: "client_cert",
                reason: "client_key is set but client_cert is not",
            })
        }
        (None, None) => {}
    }
    builder
        .build()
        .map_err(|e| ConsulError::HttpClient(e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_normalized_or_rejected() {
        assert_eq!(
            normalize_endpoint("http://127.0.0.1:8500/", false).unwrap(),
            "http://127.0.0.1:8500"
        );
        assert_eq!(
            normalize_endpoint("127.0.0.1:8500", false).unwrap(),
            "http://127.0.0.1:8500"
        );
        assert_eq!(
            normalize_endpoint("https://consul.local:8501", false).unwrap(),
            "https://consul.local:8501"
        );
        for bad in [
            "",
            "ftp://x:1",
            "http://",
            "http://h:1/?a=b",
            "http://u:p@h:1",
        ] {
            assert!(
                matches!(
                    normalize_endpoint(bad, false),
                    Err(ConsulError::InvalidEndpoint { .. })
                ),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn token_precedence_and_file_trimming() {
        let dir = std::env::temp_dir().join(format!("consul-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "  from-file\n").unwrap();
        let mut config = ConsulConfig::new(vec!["http://127.0.0.1:1".into()]);
        config.token_file = Some(file.clone());
        assert_eq!(
            resolve_token(&config).unwrap().as_deref(),
            Some("from-file")
        );
        config.token = Some("direct".into());
        assert_eq!(resolve_token(&config).unwrap().as_deref(), Some("direct"));
        config.token = None;
        config.token_file = Some(dir.join("missing"));
        let err = resolve_token(&config).unwrap_err();
        assert!(err.to_string().contains("token_file"), "{err}");
        std::fs::write(&file, "\n").unwrap();
        config.token_file = Some(file);
        assert!(matches!(
            resolve_token(&config),
            Err(ConsulError::InvalidSetting {
                setting: "token_file",
                ..
            })
        ));
        config.token_file = None;
        config.token = Some("bad\ntoken".into());
        let err = resolve_token(&config).unwrap_err();
        assert!(!err.to_string().contains("bad"), "token leaked: {err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bad_settings_name_the_setting() {
        let mut config = ConsulConfig::new(vec!["https://127.0.0.1:1".into()]);
        config.ca_cert = Some("/nonexistent/ca.pem".into());
        let err = Http::new(&config).err().unwrap();
        assert!(
            matches!(
                err,
                ConsulError::ReadFile {
                    setting: "ca_cert",
                    ..
                }
            ),
            "{err}"
        );

        let mut config = ConsulConfig::new(vec!["https://127.0.0.1:1".into()]);
        config.client_cert = Some("/nonexistent/c.pem".into());
        let err = Http::new(&config).err().unwrap();
        assert!(err.to_string().contains("client_key"), "{err}");

        let mut config = ConsulConfig::new(vec![]);
        assert!(matches!(Http::new(&config), Err(ConsulError::NoEndpoints)));
        config.endpoints.push("http://127.0.0.1:1".into());
        config.wait = Duration::ZERO;
        assert!(matches!(
            Http::new(&config),
            Err(ConsulError::InvalidSetting {
                setting: "wait",
                ..
            })
        ));
    }

    #[test]
    fn tls_files_with_an_http_endpoint_are_refused() {
        let mut config = ConsulConfig::new(vec!["http://127.0.0.1:8500".into()]);
        config.ca_cert = Some("/nonexistent/ca.pem".into());
        let err = Http::new(&config).err().unwrap();
        let text = err.to_string();
        for needle in ["ca_cert", "--ca-cert", "http://127.0.0.1:8500", "https://"] {
            assert!(text.contains(needle), "{needle:?} missing: {text}");
        }
        // A bare host:port means https:// when TLS files are set.
        assert_eq!(
            normalize_endpoint("127.0.0.1:8501", true).unwrap(),
            "https://127.0.0.1:8501"
        );
        assert!(normalize_endpoint("https://127.0.0.1:8501", true).is_ok());
        assert!(normalize_endpoint("http://127.0.0.1:8500", true).is_err());
    }

    #[test]
    fn which_failures_move_to_the_next_endpoint() {
        let status = |code: u16, body: &str| {
            let mut body = body.as_bytes().to_vec();
            answer_index(
                reqwest::StatusCode::from_u16(code).unwrap(),
                Some(&http::HeaderValue::from_static("7")),
                &mut body,
            )
        };
        for code in [500, 503, 429] {
            let err = status(code, "No cluster leader").unwrap_err();
            assert!(fails_over(&err), "{code}: {err:?}");
        }
        assert!(fails_over(&StoreError::Timeout(REQUEST_TIMEOUT)));
        for code in [401, 403, 400] {
            let err = status(code, "denied").unwrap_err();
            assert!(!fails_over(&err), "{code}: {err:?}");
        }
        assert_eq!(status(200, "[]").unwrap(), 7);
        assert_eq!(status(404, "").unwrap(), 7);
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_fails_over_and_each_cause_shows_once() {
        // Nothing listens on port 1 (connection refused) nor on port 2.
        let config = ConsulConfig::new(vec![
            "http://127.0.0.1:1".into(),
            "http://127.0.0.1:2".into(),
        ]);
        let http = Http::new(&config).unwrap();
        let err = http.read("p/", true, None).await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        let text = worker_core::ErrorChain(&err).to_string();
        assert_eq!(text.matches("Connection refused").count(), 1, "{text}");
        assert!(text.contains("127.0.0.1:1"), "{text}");
        // The next request goes to the second endpoint.
        let err = http.read("p/", true, None).await.unwrap_err();
        let text = worker_core::ErrorChain(&err).to_string();
        assert!(text.contains("127.0.0.1:2"), "{text}");
    }

    #[test]
    fn keys_are_percent_encoded_and_blocking_parameters_set() {
        let mut config = ConsulConfig::new(vec!["http://127.0.0.1:8500".into()]);
        config.token = Some("s3cret".into());
        let http = Http::new(&config).unwrap();
        let req = http
            .build_request(&http.clients[0], "svc.a+b/(x)/m 1/", true, Some(0))
            .unwrap();
        let url = req.url().as_str();
        assert!(
            url.starts_with("http://127.0.0.1:8500/v1/kv/svc.a+b/(x)/m%201/?"),
            "{url}"
        );
        assert!(url.contains("recurse=true"), "{url}");
        assert!(url.contains("index=1"), "0 must be sent as 1: {url}");
        assert!(url.contains("wait=300000ms"), "{url}");
        let token = req.headers().get("X-Consul-Token").unwrap();
        assert!(token.is_sensitive());
        assert!(!format!("{req:?}").contains("s3cret"));
    }
}

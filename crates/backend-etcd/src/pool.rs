//! One lazily connected etcd client per endpoint, and failover between them.
//!
//! Each endpoint gets its own [`Client`] (a gRPC channel that connects on first
//! use). Requests go to the current endpoint; when one fails in a way another
//! member might not (unreachable, timed out, no raft leader), that endpoint's
//! client is rebuilt (a fresh connection next time) and the next endpoint becomes
//! current. Authentication happens per endpoint on first use, so building the
//! pool never touches the network.

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use tracing::debug;
use worker_core::{ErrorChain, StoreError};

use crate::config::{read_pem, EtcdConfig};
use crate::error::{is_endpoint_failure, store_error, timeout, EtcdError};

/// HTTP/2 keep-alive pings are sent no more often than this: etcd's default
/// `--grpc-keepalive-min-time` is 5 s, and a connection that pings more often
/// (three times in a row while the server has nothing to send) is closed with
/// `GOAWAY too_many_pings`. hyper schedules the next ping `interval` after the
/// last frame read (the previous pong included), so pings reach etcd at least
/// `interval` plus one round trip apart.
pub(crate) const MIN_PING_INTERVAL: Duration = Duration::from_secs(5);

/// How dead connections are found for a given `keepalive` bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Liveness {
    /// Silence on a connection with open calls after which hyper sends an HTTP/2 PING.
    pub(crate) ping_interval: Duration,
    /// How long the PING's answer may take before the connection (and every call
    /// on it) is failed.
    pub(crate) ping_timeout: Duration,
    /// When pings alone cannot meet the bound (`keepalive` below
    /// `2 × MIN_PING_INTERVAL`): the silence after which a watch also sends a
    /// progress request (and the time its answer may take).
    pub(crate) probe_after: Option<Duration>,
}

impl Liveness {
    /// Pings every `keepalive − keepalive/2` (at least [`MIN_PING_INTERVAL`]) of
    /// silence, `keepalive/2` for the answer: a dead connection fails within
    /// `keepalive` when that interval is allowed, i.e. for `keepalive >= 10 s`,
    /// without a single store request. Shorter bounds add per-watch progress
    /// requests after `keepalive/2` of silence (the answer within the other half).
    pub(crate) fn for_keepalive(keepalive: Duration) -> Self {
        let ping_timeout = keepalive / 2;
        let ping_interval = keepalive
            .saturating_sub(ping_timeout)
            .max(MIN_PING_INTERVAL);
        let probe_after = (ping_interval + ping_timeout > keepalive).then_some(ping_timeout);
        Self {
            ping_interval,
            ping_timeout,
            probe_after,
        }
    }

    /// The shortest silence after which the keep-alive can fail a connection.
    pub(crate) fn ping_bound(&self) -> Duration {
        self.ping_interval + self.ping_timeout
    }
}

struct SlotState {
    client: Client,
    authenticated: bool,
    /// Bumped each time `client` is rebuilt: a call opened on an older client
    /// runs on a connection the pool gave up on.
    generation: u64,
}

struct Slot {
    url: String,
    state: tokio::sync::Mutex<SlotState>,
}

/// The endpoints and their clients. Holds the password: never `Debug`-printed.
pub(crate) struct Pool {
    slots: Vec<Slot>,
    current: AtomicUsize,
    /// Options without credentials (those are applied per slot, lazily).
    options: ConnectOptions,
    credentials: Option<(String, String)>,
    /// Authentications repeated because etcd refused a watch's token.
    token_refreshes: AtomicU64,
    /// Bound on each request, and on detecting a dead connection.
    pub(crate) request_timeout: Duration,
    /// How dead connections are detected.
    pub(crate) liveness: Liveness,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field(
                "endpoints",
                &self
                    .slots
                    .iter()
                    .map(|s| s.url.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("current", &self.current.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

fn normalize(endpoint: &str, tls: bool) -> String {
    let e = endpoint.trim();
    if e.contains("://") {
        e.to_owned()
    } else if tls {
        format!("https://{e}")
    } else {
        format!("http://{e}")
    }
}

impl Pool {
    /// Reads the TLS files and builds one (unconnected) client per endpoint.
    pub(crate) async fn new(config: &EtcdConfig) -> Result<Self, EtcdError> {
        config.validate()?;
        let keepalive = config.keepalive;
        let liveness = Liveness::for_keepalive(keepalive);
        // Pings only while calls are open (a watch always is): etcd does not
        // permit pings on a connection without calls (each is a strike towards
        // `too_many_pings`), and a connection without calls has nothing to lose.
        let mut options = ConnectOptions::new()
            .with_keep_alive(liveness.ping_interval, liveness.ping_timeout)
            .with_keep_alive_while_idle(false)
            .with_connect_timeout(keepalive)
            .with_require_leader(true)
            .with_auto_token_refresh(true);
        let uses_tls = config.uses_tls();
        let urls: Vec<String> = config
            .endpoints
            .iter()
            .map(|e| normalize(e, uses_tls))
            .collect();
        let any_https = urls.iter().any(|u| u.starts_with("https://"));
        if any_https {
            let mut tls = TlsOptions::new();
            match &config.ca_cert {
                Some(path) => {
                    tls = tls.ca_certificate(Certificate::from_pem(read_pem("ca_cert", path)?));
                }
                None => tls = tls.with_native_roots(),
            }
            if let (Some(cert), Some(key)) = (&config.client_cert, &config.client_key) {
                let cert = read_pem("client_cert", cert)?;
                let key = read_pem("client_key", key)?;
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            options = options.with_tls(tls);
        }
        let mut slots = Vec::with_capacity(urls.len());
        for (given, url) in config.endpoints.iter().zip(urls) {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(EtcdError::Endpoint {
                    endpoint: given.clone(),
                    source: "the scheme must be http:// or https://".into(),
                });
            }
            if url.starts_with("http://") && uses_tls {
                return Err(EtcdError::Endpoint {
                    endpoint: given.clone(),
                    source: "TLS files are set (ca_cert/client_cert) but the endpoint is \
                             http://; use https://"
                        .into(),
                });
            }
            let client = build_client(&url, &options)
                .await
                .map_err(|e| EtcdError::Endpoint {
                    endpoint: given.clone(),
                    source: Box::new(e),
                })?;
            slots.push(Slot {
                url,
                state: tokio::sync::Mutex::new(SlotState {
                    client,
                    authenticated: false,
                    generation: 0,
                }),
            });
        }
        let credentials = match (&config.user, &config.password) {
            (Some(u), Some(p)) => Some((u.clone(), p.clone())),
            _ => None,
        };
        Ok(Self {
            slots,
            current: AtomicUsize::new(0),
            options,
            credentials,
            token_refreshes: AtomicU64::new(0),
            request_timeout: keepalive,
            liveness,
        })
    }

    /// The URL of the endpoint requests go to now.
    pub(crate) fn current_url(&self) -> &str {
        &self.slots[self.current.load(Ordering::Relaxed) % self.slots.len()].url
    }

    /// Whether requests authenticate with a user and password.
    pub(crate) fn has_credentials(&self) -> bool {
        self.credentials.is_some()
    }

    /// Records an authentication repeated because etcd refused a watch's token.
    pub(crate) fn count_token_refresh(&self) {
        self.token_refreshes.fetch_add(1, Ordering::Relaxed);
    }

    /// How many times a watch's token was refused and authentication repeated.
    pub(crate) fn token_refreshes(&self) -> u64 {
        self.token_refreshes.load(Ordering::Relaxed)
    }

    /// How many endpoints there are.
    pub(crate) fn endpoints(&self) -> usize {
        self.slots.len()
    }

    /// The index of the endpoint requests go to now.
    pub(crate) fn current(&self) -> usize {
        self.current.load(Ordering::Relaxed) % self.slots.len()
    }

    /// Records that a request on endpoint `i` succeeded: it becomes current.
    pub(crate) fn succeeded(&self, i: usize) {
        self.current.store(i, Ordering::Relaxed);
    }

    /// The client of endpoint `i` and its generation (bumped each time
    /// [`failed`](Self::failed) rebuilds it), authenticated when credentials
    /// are set.
    pub(crate) async fn client_of(&self, i: usize) -> Result<(Client, u64), StoreError> {
        let mut state = self.slots[i].state.lock().await;
        if let Some((user, password)) = &self.credentials {
            if !state.authenticated {
                let mut client = state.client.clone();
                let auth = client.update_user(Some((user.clone(), password.clone())));
                match tokio::time::timeout(self.request_timeout, auth).await {
                    Err(_) => return Err(timeout(self.request_timeout)),
                    Ok(Err(e)) => return Err(store_error(e)),
                    Ok(Ok(())) => state.authenticated = true,
                }
            }
        }
        Ok((state.client.clone(), state.generation))
    }

    /// The generation of endpoint `i`'s client now.
    pub(crate) async fn generation(&self, i: usize) -> u64 {
        self.slots[i].state.lock().await.generation
    }

    /// The client of endpoint `i`, authenticated when credentials are set.
    async fn client(&self, i: usize) -> Result<Client, StoreError> {
        self.client_of(i).await.map(|(client, _)| client)
    }

    /// Records that a request on endpoint `i` failed with `e`: when another member
    /// might do better, rebuilds the endpoint's client and moves on to the next one.
    pub(crate) async fn failed(&self, i: usize, e: &StoreError) {
        if !is_endpoint_failure(e) {
            return;
        }
        let n = self.slots.len();
        let _ = self
            .current
            .compare_exchange(i, (i + 1) % n, Ordering::Relaxed, Ordering::Relaxed);
        debug!(
            endpoint = %self.slots[i].url,
            error = %ErrorChain(e),
            next = %self.current_url(),
            "etcd endpoint failed; reconnecting and trying the next one"
        );
        let mut state = self.slots[i].state.lock().await;
        if let Ok(client) = build_client(&self.slots[i].url, &self.options).await {
            state.client = client;
            state.authenticated = false;
            state.generation += 1;
        }
    }

    /// Runs `op` on the current endpoint, each try bounded by the request timeout;
    /// on an endpoint failure tries the other endpoints once each. Returns the
    /// result and the endpoint that produced it.
    pub(crate) async fn run<T, F, Fut>(&self, mut op: F) -> Result<(T, usize), StoreError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let n = self.slots.len();
        let start = self.current.load(Ordering::Relaxed) % n;
        let mut last = None;
        for k in 0..n {
            let i = (start + k) % n;
            let attempt = async {
                let client = self.client(i).await?;
                tokio::time::timeout(self.request_timeout, op(client))
                    .await
                    .map_err(|_| timeout(self.request_timeout))?
            };
            match attempt.await {
                Ok(v) => {
                    self.succeeded(i);
                    return Ok((v, i));
                }
                Err(e) if is_endpoint_failure(&e) => {
                    self.failed(i, &e).await;
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| timeout(self.request_timeout)))
    }
}

/// Builds a client for one endpoint. Without credentials this does no I/O:
/// the channel connects on first use.
async fn build_client(url: &str, options: &ConnectOptions) -> Result<Client, etcd_client::Error> {
    Client::connect([url], Some(options.clone())).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_meets_the_keepalive_bound() {
        let s = Duration::from_secs;
        // The default: pings alone, within the bound, never more often than etcd allows.
        let l = Liveness::for_keepalive(s(10));
        assert_eq!((l.ping_interval, l.ping_timeout), (s(5), s(5)));
        assert_eq!(l.probe_after, None);
        let l = Liveness::for_keepalive(s(30));
        assert_eq!((l.ping_interval, l.ping_timeout), (s(15), s(15)));
        assert_eq!(l.probe_after, None);
        // Shorter bounds cannot be met by pings: watches probe as well.
        let l = Liveness::for_keepalive(s(3));
        assert_eq!(l.ping_interval, MIN_PING_INTERVAL);
        assert_eq!(l.probe_after, Some(Duration::from_millis(1500)));
        let l = Liveness::for_keepalive(Duration::from_millis(9_990));
        assert_eq!(l.ping_interval, MIN_PING_INTERVAL);
        assert_eq!(l.probe_after, Some(Duration::from_millis(4_995)));
    }
}

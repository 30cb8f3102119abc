//! Helpers shared by the Consul integration tests: a consulrs client for the
//! test's own writes (sessions, lock acquisition), a [`ConformanceStore`] over
//! a real agent, and a proxy that counts HTTP requests.

#![allow(dead_code)] // Each test binary uses a different subset.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use backend_consul::{ConsulBackend, ConsulConfig};
use consulrs::api::kv::requests::SetKeyRequest;
use consulrs::api::session::requests::CreateSessionRequest;
use consulrs::client::{ConsulClient, ConsulClientSettings};
use test_support::ConsulAgent;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use worker_core::conformance::ConformanceStore;
use worker_core::{KvWatch, LeaderWait};

/// Bound on waits for expected events (generous for a loaded 2-core machine).
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Awaits `fut` for at most [`EVENT_TIMEOUT`], panicking with `what`.
pub async fn bounded<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(EVENT_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {EVENT_TIMEOUT:?} waiting for {what}"))
}

/// Backend settings aimed at `agent` (token and TLS files as the agent has them).
pub fn config_for(agent: &ConsulAgent) -> ConsulConfig {
    let mut config = ConsulConfig::new(vec![agent.http_addr()]);
    config.token = agent.token().map(str::to_owned);
    if let Some(tls) = agent.tls_files() {
        config.ca_cert = Some(tls.ca_cert.clone());
        config.client_cert = Some(tls.client_cert.clone());
        config.client_key = Some(tls.client_key.clone());
    }
    config
}

/// A consulrs client with the agent's master token and TLS files, for the
/// test's own writes. Its reqwest client is built here with rustls (consulrs's
/// own client-certificate setting fails while native-tls is compiled in).
pub fn admin_client(agent: &ConsulAgent) -> ConsulClient {
    let mut builder = reqwest::Client::builder().use_rustls_tls().no_proxy();
    if let Some(tls) = agent.tls_files() {
        let ca = std::fs::read(&tls.ca_cert).unwrap();
        builder = builder.add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap());
        let mut pem = std::fs::read(&tls.client_cert).unwrap();
        pem.push(b'\n');
        pem.extend(std::fs::read(&tls.client_key).unwrap());
        builder = builder.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    let address = agent.http_addr();
    ConsulClient {
        http: rustify::clients::reqwest::Client::new(&address, builder.build().unwrap()),
        settings: ConsulClientSettings {
            address,
            ca_certs: Vec::new(),
            client_cert: None,
            client_key: None,
            token: agent.token().map(str::to_owned),
            verify: true,
            version: 1,
        },
    }
}

/// Creates a session without health checks and lock delay (so that it
/// survives an agent restart and can be re-acquired at once).
pub async fn create_session(client: &ConsulClient, name: &str) -> String {
    let mut request = CreateSessionRequest::builder();
    request
        .name(name)
        .node_checks(Vec::<String>::new())
        .lock_delay("0s");
    consulrs::session::create(client, Some(&mut request))
        .await
        .expect("create session")
        .response
        .id
}

/// Acquires `key` for `session` with `value`; panics unless Consul says true.
pub async fn acquire(client: &ConsulClient, key: &str, session: &str, value: &[u8]) {
    let endpoint = SetKeyRequest::builder()
        .key(key)
        .value(value.to_vec())
        .acquire(session)
        .build()
        .unwrap();
    let got = consulrs::api::exec_with_result(client, endpoint)
        .await
        .expect("acquire");
    assert!(got.response, "could not acquire {key} for {session}");
}

/// Releases `key` held by `session`.
pub async fn release(client: &ConsulClient, key: &str, session: &str) {
    let endpoint = SetKeyRequest::builder()
        .key(key)
        .release(session)
        .build()
        .unwrap();
    consulrs::api::exec_with_result(client, endpoint)
        .await
        .expect("release");
}

/// Destroys a session.
pub async fn destroy_session(client: &ConsulClient, session: &str) {
    consulrs::session::delete(client, session, None)
        .await
        .expect("destroy session");
}

/// Takes leadership of `key` with a new session; returns the session id.
pub async fn take_leadership(client: &ConsulClient, key: &str, id: &str) -> String {
    let session = create_session(client, id).await;
    acquire(client, key, &session, id.as_bytes()).await;
    session
}

/// [`ConformanceStore`] over a real agent: writes through the harness's HTTP
/// helpers, leadership through a session holding the backend's leader key.
pub struct Store {
    pub agent: Arc<ConsulAgent>,
    pub backend: ConsulBackend,
    pub admin: ConsulClient,
    session: Mutex<Option<String>>,
}

impl Store {
    pub fn new(agent: Arc<ConsulAgent>, backend: ConsulBackend) -> Self {
        let admin = admin_client(&agent);
        Self {
            agent,
            backend,
            admin,
            session: Mutex::new(None),
        }
    }
}

#[async_trait]
impl ConformanceStore for Store {
    fn kv(&self) -> Arc<dyn KvWatch> {
        Arc::new(self.backend.clone())
    }
    fn leader_wait(&self) -> Arc<dyn LeaderWait> {
        Arc::new(self.backend.clone())
    }
    async fn put(&self, key: &str, value: &[u8]) {
        self.agent.kv_put(key, value).await;
    }
    async fn delete(&self, key: &str) {
        self.agent.kv_delete(key).await;
    }
    async fn take_leadership(&self, id: &str) {
        self.release_leadership().await;
        let session = take_leadership(&self.admin, self.backend.leader_key(), id).await;
        *self.session.lock().unwrap() = Some(session);
    }
    async fn release_leadership(&self) {
        let session = self.session.lock().unwrap().take();
        if let Some(session) = session {
            release(&self.admin, self.backend.leader_key(), &session).await;
            destroy_session(&self.admin, &session).await;
        }
    }
}

/// A TCP proxy that counts requests whose bytes contain `needle` (e.g.
/// `GET /v1/kv/p/m1/?`) on their way to the server.
pub struct CountingProxy {
    pub addr: SocketAddr,
    count: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl CountingProxy {
    pub async fn start(target: SocketAddr, needle: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let needle: Arc<[u8]> = needle.as_bytes().into();
        let counter = count.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                conns.spawn(forward(client, target, needle.clone(), counter.clone()));
            }
        });
        Self { addr, count, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests matching the needle so far.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(
    client: TcpStream,
    target: SocketAddr,
    needle: Arc<[u8]>,
    count: Arc<AtomicUsize>,
) {
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let (mut client_rd, mut client_wr) = client.into_split();
    let (mut server_rd, mut server_wr) = server.into_split();
    let up = async move {
        let mut buf = vec![0u8; 16 * 1024];
        // The tail of the previous chunk, so that a needle split across reads counts.
        let mut window: Vec<u8> = Vec::new();
        loop {
            let n = match client_rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            window.extend_from_slice(&buf[..n]);
            let mut start = 0;
            while let Some(pos) = find(&window[start..], &needle) {
                count.fetch_add(1, Ordering::SeqCst);
                start += pos + needle.len();
            }
            let keep = window.len().saturating_sub(needle.len()).max(start);
            window.drain(..keep);
            if server_wr.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = server_wr.shutdown().await;
    };
    let down = async move {
        let _ = tokio::io::copy(&mut server_rd, &mut client_wr).await;
        let _ = client_wr.shutdown().await;
    };
    tokio::join!(up, down);
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Writes `contents` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, contents: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

//! The two stores, started like the tests start them, with what the benchmark
//! needs around them: a plain client that writes, a leader, the worker's
//! backend, and the reference watchers (the stores' own tools and a bare
//! blocking query / bare watch).

use std::fmt;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use backend_consul::{ConsulBackend, ConsulConfig};
use backend_etcd::{EtcdBackend, EtcdConfig};
use test_support::{ConsulAgent, EtcdServer};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;
use worker_core::{KvWatch, LeaderWait};

use crate::measure::wall_ns;
use crate::rt::Lane;

/// Which store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Consul (HTTP, blocking queries).
    Consul,
    /// etcd v3 (gRPC, watches).
    Etcd,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Consul => "Consul",
            Kind::Etcd => "etcd",
        })
    }
}

/// Largest transaction each store accepts (Consul: 64 operations; etcd: `--max-txn-ops` 128).
fn txn_ops(kind: Kind) -> usize {
    match kind {
        Kind::Consul => 64,
        Kind::Etcd => 128,
    }
}

/// One write of a bulk change.
#[derive(Debug, Clone)]
pub enum Op {
    /// Set `key` to `value`.
    Put(String, String),
    /// Delete `key`.
    Del(String),
}

/// A running store.
pub struct Store {
    kind: Kind,
    consul: Option<ConsulAgent>,
    etcd: Option<EtcdServer>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("kind", &self.kind)
            .field("endpoint", &self.endpoint())
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Starts a fresh store on free loopback ports (Consul: a dev agent with
    /// logging at WARN and a per-client connection cap above what the
    /// largest runs open from the one loopback address; etcd: one member at
    /// its defaults).
    pub async fn start(kind: Kind) -> Self {
        match kind {
            Kind::Consul => Self {
                kind,
                consul: Some(
                    ConsulAgent::builder()
                        .extra_json(
                            r#"{"log_level":"WARN","limits":{"http_max_conns_per_client":16384}}"#,
                        )
                        .start()
                        .await,
                ),
                etcd: None,
            },
            Kind::Etcd => Self {
                kind,
                consul: None,
                etcd: Some(EtcdServer::start().await),
            },
        }
    }

    /// Where a counting proxy in front of this store forwards to, and what
    /// its clients speak there.
    pub fn proxy_target(&self) -> (std::net::SocketAddr, crate::proxy::Protocol) {
        let target = self
            .endpoint()
            .trim_start_matches("http://")
            .parse()
            .expect("store address");
        let protocol = match self.kind {
            Kind::Consul => crate::proxy::Protocol::Http1,
            Kind::Etcd => crate::proxy::Protocol::Http2,
        };
        (target, protocol)
    }

    /// Client URL of the store.
    pub fn endpoint(&self) -> String {
        match (&self.consul, &self.etcd) {
            (Some(c), _) => c.http_addr(),
            (_, Some(e)) => e.client_url(),
            _ => unreachable!("a store is Consul or etcd"),
        }
    }

    /// PID of the server process.
    pub fn pid(&self) -> u32 {
        match (&self.consul, &self.etcd) {
            (Some(c), _) => c.pid(),
            (_, Some(e)) => e.cluster().pid(0),
            _ => None,
        }
        .expect("the store is running")
    }

    /// The worker's backend on `endpoint` (Consul: with blocking-query `wait`).
    pub async fn backend(
        &self,
        endpoint: &str,
        consul_wait: Option<Duration>,
    ) -> (Arc<dyn KvWatch>, Arc<dyn LeaderWait>) {
        match self.kind {
            Kind::Consul => {
                let mut config = ConsulConfig::new(vec![endpoint.to_owned()]);
                if let Some(wait) = consul_wait {
                    config.wait = wait;
                }
                let b = ConsulBackend::new(config).expect("Consul backend");
                (Arc::new(b.clone()), Arc::new(b))
            }
            Kind::Etcd => {
                let b = EtcdBackend::connect(EtcdConfig::new(vec![endpoint.to_owned()]))
                    .await
                    .expect("etcd backend");
                (Arc::new(b.clone()), Arc::new(b))
            }
        }
    }

    /// A plain client on its own thread (`lane`): reqwest for Consul, etcd-client for etcd.
    pub async fn writer(&self, lane: Lane) -> Writer {
        let endpoint = self.endpoint();
        let inner = match self.kind {
            Kind::Consul => {
                lane.run(async move {
                    WriterInner::Consul {
                        http: plain_http(),
                        addr: endpoint,
                    }
                })
                .await
            }
            Kind::Etcd => {
                lane.run(async move {
                    WriterInner::Etcd {
                        client: Box::new(
                            etcd_client::Client::connect([endpoint], None)
                                .await
                                .expect("etcd client"),
                        ),
                    }
                })
                .await
            }
        };
        Writer {
            kind: self.kind,
            lane,
            inner: Arc::new(inner),
        }
    }

    /// The store's own watcher tool on `prefix`, run on `lane`: each event is
    /// sent as the wall-clock time it was seen at.
    ///
    /// Consul: `consul watch -type=keyprefix` with a handler that only runs
    /// `date +%s%N` into a file (its first, initial call is sent too).
    /// etcd: `etcdctl watch --prefix`, each event timestamped as its first
    /// output line is read.
    pub fn native_watch(
        &self,
        prefix: &str,
        lane: &Lane,
        tx: UnboundedSender<i64>,
    ) -> JoinHandle<()> {
        match (&self.consul, &self.etcd) {
            (Some(agent), _) => {
                let file = std::env::temp_dir().join(format!(
                    "coordinator-bench-{}-consul-watch.log",
                    std::process::id()
                ));
                let _ = std::fs::remove_file(&file);
                std::fs::write(&file, "").expect("create handler file");
                let handler = format!("date +%s%N >> {}", file.display());
                let mut cmd = agent.command([
                    "watch".to_owned(),
                    "-type=keyprefix".to_owned(),
                    format!("-prefix={prefix}"),
                    handler,
                ]);
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
                lane.spawn(async move {
                    let _child = cmd.spawn().expect("spawn consul watch");
                    let mut offset = 0;
                    let mut partial = String::new();
                    loop {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        let Ok(text) = std::fs::read_to_string(&file) else {
                            continue;
                        };
                        if text.len() <= offset {
                            continue;
                        }
                        partial.push_str(&text[offset..]);
                        offset = text.len();
                        while let Some(end) = partial.find('\n') {
                            let text_line: String = partial.drain(..=end).collect();
                            if let Ok(ns) = text_line.trim().parse::<i64>() {
                                if tx.send(ns).is_err() {
                                    let _ = std::fs::remove_file(&file);
                                    return;
                                }
                            }
                        }
                    }
                })
            }
            (_, Some(server)) => {
                let mut cmd = server.etcdctl(["watch", "--prefix", prefix]);
                cmd.stderr(Stdio::null());
                lane.spawn(async move {
                    let mut child = cmd.spawn().expect("spawn etcdctl watch");
                    let stdout = child.stdout.take().expect("piped stdout");
                    let mut lines = BufReader::new(stdout).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        if (line == "PUT" || line == "DELETE") && tx.send(wall_ns()).is_err() {
                            return;
                        }
                    }
                })
            }
            _ => unreachable!("a store is Consul or etcd"),
        }
    }

    /// The least a program can do to follow `prefix`, run on `lane`: a loop of
    /// raw recursive blocking GETs (Consul; the body is read, not decoded) or
    /// one etcd-client watch stream (etcd). Each answer with a newer index /
    /// each watch response with events is sent as its wall-clock arrival time.
    pub fn bare_watch(
        &self,
        prefix: &str,
        lane: &Lane,
        tx: UnboundedSender<i64>,
    ) -> JoinHandle<()> {
        let endpoint = self.endpoint();
        let prefix = prefix.to_owned();
        match self.kind {
            Kind::Consul => lane.spawn(async move {
                let http = plain_http();
                let url = format!("{endpoint}/v1/kv/{prefix}?recurse=true");
                let mut index = 0u64;
                loop {
                    let q = if index == 0 {
                        url.clone()
                    } else {
                        format!("{url}&index={index}&wait=300s")
                    };
                    let Ok(resp) = http.get(&q).send().await else {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    };
                    let got = resp
                        .headers()
                        .get("X-Consul-Index")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0);
                    let _ = resp.bytes().await;
                    let at = wall_ns();
                    if index != 0 && got > index && tx.send(at).is_err() {
                        return;
                    }
                    index = got;
                }
            }),
            Kind::Etcd => lane.spawn(async move {
                let mut client = etcd_client::Client::connect([endpoint], None)
                    .await
                    .expect("etcd client");
                let mut stream = client
                    .watch(
                        prefix.as_bytes(),
                        Some(etcd_client::WatchOptions::new().with_prefix()),
                    )
                    .await
                    .expect("etcd watch");
                while let Ok(Some(resp)) = stream.message().await {
                    if !resp.events().is_empty() && tx.send(wall_ns()).is_err() {
                        return;
                    }
                }
            }),
        }
    }
}

fn plain_http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("HTTP client")
}

enum WriterInner {
    Consul { http: reqwest::Client, addr: String },
    Etcd { client: Box<etcd_client::Client> },
}

/// A plain client of the store, running on its own thread.
#[derive(Clone)]
pub struct Writer {
    kind: Kind,
    lane: Lane,
    inner: Arc<WriterInner>,
}

impl fmt::Debug for Writer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Writer")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl Writer {
    /// The thread the writer runs on.
    pub fn lane(&self) -> &Lane {
        &self.lane
    }

    /// Writes `key` = `value`; returns the wall-clock time the request started at.
    pub async fn put(&self, key: &str, value: &str) -> i64 {
        let inner = self.inner.clone();
        let (key, value) = (key.to_owned(), value.to_owned());
        self.lane
            .run(async move {
                match &*inner {
                    WriterInner::Consul { http, addr } => {
                        let url = format!("{addr}/v1/kv/{key}");
                        let start = wall_ns();
                        let resp = http.put(url).body(value).send().await.expect("Consul PUT");
                        let body = resp.text().await.expect("Consul PUT answer");
                        assert_eq!(body.trim(), "true", "Consul PUT {key}");
                        start
                    }
                    WriterInner::Etcd { client } => {
                        let mut kv = client.kv_client();
                        let start = wall_ns();
                        kv.put(key, value, None).await.expect("etcd put");
                        start
                    }
                }
            })
            .await
    }

    /// Deletes `key`.
    pub async fn del(&self, key: &str) {
        let inner = self.inner.clone();
        let key = key.to_owned();
        self.lane
            .run(async move {
                match &*inner {
                    WriterInner::Consul { http, addr } => {
                        http.delete(format!("{addr}/v1/kv/{key}"))
                            .send()
                            .await
                            .expect("Consul DELETE");
                    }
                    WriterInner::Etcd { client } => {
                        client
                            .kv_client()
                            .delete(key, None)
                            .await
                            .expect("etcd delete");
                    }
                }
            })
            .await;
    }

    /// Applies `ops` in order, in transactions as large as the store takes.
    pub async fn bulk(&self, ops: Vec<Op>) {
        let inner = self.inner.clone();
        let chunk = txn_ops(self.kind);
        self.lane
            .run(async move {
                for part in ops.chunks(chunk) {
                    match &*inner {
                        WriterInner::Consul { http, addr } => {
                            let body: Vec<serde_json::Value> = part
                                .iter()
                                .map(|op| match op {
                                    Op::Put(k, v) => serde_json::json!({"KV": {
                                        "Verb": "set", "Key": k, "Value": base64(v.as_bytes())}}),
                                    Op::Del(k) => {
                                        serde_json::json!({"KV": {"Verb": "delete", "Key": k}})
                                    }
                                })
                                .collect();
                            let resp = http
                                .put(format!("{addr}/v1/txn"))
                                .body(serde_json::to_vec(&body).expect("txn JSON"))
                                .send()
                                .await
                                .expect("Consul txn");
                            let status = resp.status();
                            assert!(
                                status.is_success(),
                                "Consul txn: {status}: {}",
                                resp.text().await.unwrap_or_default()
                            );
                        }
                        WriterInner::Etcd { client } => {
                            let txn = etcd_client::Txn::new().and_then(
                                part.iter()
                                    .map(|op| match op {
                                        Op::Put(k, v) => {
                                            etcd_client::TxnOp::put(k.as_str(), v.as_str(), None)
                                        }
                                        Op::Del(k) => etcd_client::TxnOp::delete(k.as_str(), None),
                                    })
                                    .collect::<Vec<_>>(),
                            );
                            client.kv_client().txn(txn).await.expect("etcd txn");
                        }
                    }
                }
            })
            .await;
    }

    /// Consul only: the raw body of a recursive read of `prefix` (what a
    /// worker's blocking query receives).
    pub async fn consul_raw(&self, prefix: &str) -> Vec<u8> {
        let inner = self.inner.clone();
        let prefix = prefix.to_owned();
        self.lane
            .run(async move {
                let WriterInner::Consul { http, addr } = &*inner else {
                    panic!("consul_raw on etcd");
                };
                http.get(format!("{addr}/v1/kv/{prefix}?recurse=true"))
                    .send()
                    .await
                    .expect("Consul GET")
                    .bytes()
                    .await
                    .expect("Consul GET body")
                    .to_vec()
            })
            .await
    }

    /// Makes a leader exist: Consul: a session holding the default leader key;
    /// etcd: a key in the default election.
    pub async fn make_leader(&self) {
        let inner = self.inner.clone();
        self.lane
            .run(async move {
                match &*inner {
                    WriterInner::Consul { http, addr } => {
                        // Right after start the agent may not have registered its node
                        // yet ("Missing node registration"): retry for a while.
                        let mut tries = 0;
                        let session: serde_json::Value = loop {
                            let body = http
                                .put(format!("{addr}/v1/session/create"))
                                .body(r#"{"Name":"coordinator-bench"}"#)
                                .send()
                                .await
                                .expect("create session")
                                .bytes()
                                .await
                                .expect("session answer");
                            match serde_json::from_slice(&body) {
                                Ok(v) => break v,
                                Err(_) if tries < 200 => {
                                    tries += 1;
                                    tokio::time::sleep(Duration::from_millis(50)).await;
                                }
                                Err(e) => panic!(
                                    "session create: {e}: {}",
                                    String::from_utf8_lossy(&body)
                                ),
                            }
                        };
                        let id = session["ID"].as_str().expect("session id").to_owned();
                        let ok = http
                            .put(format!(
                                "{addr}/v1/kv/{}?acquire={id}",
                                backend_consul::DEFAULT_LEADER_KEY
                            ))
                            .body("bench-leader")
                            .send()
                            .await
                            .expect("acquire leader key")
                            .text()
                            .await
                            .expect("acquire answer");
                        assert_eq!(ok.trim(), "true", "leader key not acquired");
                    }
                    WriterInner::Etcd { client } => {
                        client
                            .kv_client()
                            .put(
                                format!("{}/bench", backend_etcd::DEFAULT_ELECTION),
                                "bench-leader",
                                None,
                            )
                            .await
                            .expect("etcd election key");
                    }
                }
            })
            .await;
    }
}

/// Standard base64 (Consul's transaction API takes values encoded so).
fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for c in input.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        out.push(char::from(T[(n >> 18) as usize & 63]));
        out.push(char::from(T[(n >> 12) as usize & 63]));
        out.push(if c.len() > 1 {
            char::from(T[(n >> 6) as usize & 63])
        } else {
            '='
        });
        out.push(if c.len() > 2 {
            char::from(T[n as usize & 63])
        } else {
            '='
        });
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_the_standard() {
        assert_eq!(super::base64(b"hello world"), "aGVsbG8gd29ybGQ=");
        assert_eq!(super::base64(b"b"), "Yg==");
        assert_eq!(super::base64(b""), "");
    }
}

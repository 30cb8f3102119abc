//! The real stores the suites run against, and the test's own direct access to them (never
//! through the worker's fault proxy): writes, bulk writes, and taking leadership.

use std::time::Duration;

use test_support::{ConsulAgent, EtcdCluster};

/// Which store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    /// Consul (HTTP API).
    Consul,
    /// etcd (v3 gRPC API).
    Etcd,
}

impl StoreKind {
    /// `consul` / `etcd`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Consul => "consul",
            Self::Etcd => "etcd",
        }
    }
}

/// A running store: a Consul agent or an etcd cluster (one or more members).
#[derive(Debug)]
pub enum StoreServer {
    /// A Consul agent.
    Consul(ConsulAgent),
    /// An etcd cluster.
    Etcd(EtcdCluster),
}

/// The Consul leader key / etcd election name used under namespace `ns`.
pub fn leader_name(ns: &str) -> String {
    format!("{ns}/leader")
}

/// The assignment prefix used under namespace `ns`.
pub fn assignment_prefix(ns: &str) -> String {
    format!("{ns}/assign/")
}

impl StoreServer {
    /// Which store this is.
    pub fn kind(&self) -> StoreKind {
        match self {
            Self::Consul(_) => StoreKind::Consul,
            Self::Etcd(_) => StoreKind::Etcd,
        }
    }

    /// The Consul agent; panics for etcd.
    pub fn consul(&self) -> &ConsulAgent {
        match self {
            Self::Consul(a) => a,
            Self::Etcd(_) => panic!("not a Consul store"),
        }
    }

    /// The etcd cluster; panics for Consul.
    pub fn etcd(&self) -> &EtcdCluster {
        match self {
            Self::Etcd(c) => c,
            Self::Consul(_) => panic!("not an etcd store"),
        }
    }

    /// The etcd cluster, mutably; panics for Consul.
    pub fn etcd_mut(&mut self) -> &mut EtcdCluster {
        match self {
            Self::Etcd(c) => c,
            Self::Consul(_) => panic!("not an etcd store"),
        }
    }

    /// The client URL of the store (member 0 for etcd).
    pub fn url(&self) -> String {
        match self {
            Self::Consul(a) => a.http_addr(),
            Self::Etcd(c) => c.client_url(0),
        }
    }

    /// The address of the store's client port (member 0 for etcd).
    pub fn socket_addr(&self) -> std::net::SocketAddr {
        let url = self.url();
        let hostport = url.rsplit("://").next().unwrap_or(&url);
        hostport.parse().expect("store address")
    }

    /// Writes `key` = `value` directly.
    pub async fn put(&self, key: &str, value: &str) {
        match self {
            Self::Consul(a) => a.kv_put(key, value).await,
            // etcdctl takes the value as an argument, limited to 128 KiB.
            Self::Etcd(c) if value.len() > 64 * 1024 => {
                etcd_put_many(c, &[(key.as_bytes().to_vec(), value.as_bytes().to_vec())]).await;
            }
            Self::Etcd(c) => etcdctl_retrying(c, &["put", "--", key, value]).await,
        }
    }

    /// Deletes `key` directly.
    pub async fn del(&self, key: &str) {
        match self {
            Self::Consul(a) => a.kv_delete(key).await,
            Self::Etcd(c) => etcdctl_retrying(c, &["del", "--", key]).await,
        }
    }

    /// Writes many keys (any bytes for etcd; UTF-8 for Consul) in transactions: 64 per
    /// Consul transaction, 128 per etcd transaction (each store's default limit).
    pub async fn put_many(&self, entries: &[(Vec<u8>, Vec<u8>)]) {
        match self {
            Self::Consul(a) => consul_put_many(a, entries).await,
            Self::Etcd(c) => etcd_put_many(c, entries).await,
        }
    }

    /// Makes `holder` the leader under namespace `ns`: on Consul a session (without health
    /// checks, so that it survives a restart) acquires the leader key; on etcd a key
    /// under the election prefix (no lease) holds the proposal.
    pub async fn take_leadership(&self, ns: &str, holder: &str) {
        let name = leader_name(ns);
        match self {
            Self::Consul(a) => consul_acquire(a, &name, holder).await,
            Self::Etcd(c) => {
                c.put(&format!("{name}/{holder}"), holder).await;
            }
        }
    }

    /// Kills the store (member `i` for etcd) with SIGKILL.
    pub fn kill(&mut self, i: usize) {
        match self {
            Self::Consul(a) => a.kill(),
            Self::Etcd(c) => c.kill(i),
        }
    }

    /// Restarts the store (member `i` for etcd) and waits until it is ready.
    pub async fn restart(&mut self, i: usize) {
        match self {
            Self::Consul(a) => a.restart().await,
            Self::Etcd(c) => c.restart(i).await,
        }
    }
}

/// Runs `etcdctl args` against the running members, retrying (for at most
/// [`crate::EVENT_TIMEOUT`]) while the cluster cannot serve it, e.g. during the raft election
/// that follows the loss of the leader member.
async fn etcdctl_retrying(cluster: &EtcdCluster, args: &[&str]) {
    let deadline = tokio::time::Instant::now() + crate::EVENT_TIMEOUT;
    loop {
        let out = cluster.etcdctl(args).output().await.expect("run etcdctl");
        if out.status.success() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "etcdctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A reqwest client for the test's own requests to `agent` (its TLS files and token).
fn consul_http(agent: &ConsulAgent) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .no_proxy()
        .timeout(Duration::from_secs(60));
    if let Some(tls) = agent.tls_files() {
        let ca = std::fs::read(&tls.ca_cert).expect("read CA");
        builder = builder.add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("CA"));
        let mut pem = std::fs::read(&tls.client_cert).expect("read client cert");
        pem.push(b'\n');
        pem.extend(std::fs::read(&tls.client_key).expect("read client key"));
        builder = builder.identity(reqwest::Identity::from_pem(&pem).expect("identity"));
    }
    builder.build().expect("reqwest client")
}

fn with_token(agent: &ConsulAgent, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    match agent.token() {
        Some(t) => req.header("X-Consul-Token", t),
        None => req,
    }
}

async fn consul_acquire(agent: &ConsulAgent, key: &str, holder: &str) {
    let http = consul_http(agent);
    let base = agent.http_addr();
    let body = serde_json::json!({ "Name": holder, "NodeChecks": [], "LockDelay": "0s" });
    // A fresh agent answers "Missing node registration" until it has registered itself.
    let deadline = tokio::time::Instant::now() + crate::EVENT_TIMEOUT;
    let text = loop {
        let resp = with_token(agent, http.put(format!("{base}/v1/session/create")))
            .body(body.to_string())
            .send()
            .await
            .expect("create session");
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if status.is_success() {
            break text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "session create: {status}: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let v: serde_json::Value = serde_json::from_str(&text).expect("session JSON");
    let session = v["ID"].as_str().expect("session ID").to_owned();
    let mut url = reqwest::Url::parse(&base).expect("base URL");
    url.path_segments_mut()
        .expect("base URL has a path")
        .extend(["v1", "kv"])
        .extend(key.split('/'));
    let resp = with_token(agent, http.put(url).query(&[("acquire", session.as_str())]))
        .body(holder.to_owned())
        .send()
        .await
        .expect("acquire");
    let text = resp.text().await.unwrap_or_default();
    assert_eq!(text.trim(), "true", "could not acquire {key}");
}

async fn consul_put_many(agent: &ConsulAgent, entries: &[(Vec<u8>, Vec<u8>)]) {
    let http = consul_http(agent);
    let url = format!("{}/v1/txn", agent.http_addr());
    for chunk in entries.chunks(64) {
        let ops: Vec<serde_json::Value> = chunk
            .iter()
            .map(|(k, v)| {
                let key = std::str::from_utf8(k).expect("Consul keys are UTF-8");
                serde_json::json!({ "KV": { "Verb": "set", "Key": key, "Value": base64(v) } })
            })
            .collect();
        let resp = with_token(agent, http.put(&url))
            .body(serde_json::Value::Array(ops).to_string())
            .send()
            .await
            .expect("consul txn");
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        assert!(status.is_success(), "consul txn: {status}: {text}");
    }
}

async fn etcd_put_many(cluster: &EtcdCluster, entries: &[(Vec<u8>, Vec<u8>)]) {
    let mut client = etcd_client::Client::connect(cluster.client_urls(), None)
        .await
        .expect("etcd client");
    for chunk in entries.chunks(128) {
        let ops: Vec<etcd_client::TxnOp> = chunk
            .iter()
            .map(|(k, v)| etcd_client::TxnOp::put(k.clone(), v.clone(), None))
            .collect();
        client
            .txn(etcd_client::Txn::new().and_then(ops))
            .await
            .expect("etcd txn");
    }
}

/// Standard base64 with padding.
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64() {
        assert_eq!(super::base64(b""), "");
        assert_eq!(super::base64(b"b"), "Yg==");
        assert_eq!(super::base64(b"hello world"), "aGVsbG8gd29ybGQ=");
    }
}

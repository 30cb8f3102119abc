//! Real etcd servers (one member or a cluster) on free loopback ports.

use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use crate::consul::run_checked;
use crate::pki::TlsFiles;
use crate::process::{is_port_conflict, ManagedProcess};
use crate::{free_ports, STARTUP_TIMEOUT};

/// Options for [`EtcdServer`] and [`EtcdCluster`]; start with [`EtcdServer::builder`] or
/// [`EtcdCluster::builder`].
#[derive(Clone, Debug)]
#[must_use]
pub struct EtcdBuilder {
    tls: Option<TlsFiles>,
    client_cert_auth: bool,
    start_timeout: Duration,
    auth_token_ttl: Option<Duration>,
}

impl Default for EtcdBuilder {
    fn default() -> Self {
        Self {
            tls: None,
            client_cert_auth: false,
            start_timeout: STARTUP_TIMEOUT,
            auth_token_ttl: None,
        }
    }
}

impl EtcdBuilder {
    /// Client URLs are `https://` with the given files (`--cert-file`, `--key-file`,
    /// `--trusted-ca-file`); `client_cert_auth` adds `--client-cert-auth`. Peers talk plain
    /// HTTP on loopback.
    pub fn tls(mut self, files: TlsFiles, client_cert_auth: bool) -> Self {
        self.tls = Some(files);
        self.client_cert_auth = client_cert_auth;
        self
    }

    /// Simple auth tokens that expire after `ttl` without use (`--auth-token=simple
    /// --auth-token-ttl`, whole seconds, at least 1; etcd's default is 300 s). Only matters
    /// once [`EtcdCluster::enable_auth`] has turned authentication on. Members then log at
    /// debug level, so that each expired token shows in the log ("deleted a simple token",
    /// with its `user-name`): a test can wait for that instead of sleeping.
    pub fn auth_token_ttl(mut self, ttl: Duration) -> Self {
        self.auth_token_ttl = Some(ttl);
        self
    }

    /// Bound on the wait for readiness at start and restart (default [`STARTUP_TIMEOUT`]).
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// Starts a single-member server and waits until `/health` says true.
    pub async fn start_server(self) -> EtcdServer {
        EtcdServer {
            cluster: EtcdCluster::launch(self, 1).await,
        }
    }

    /// Starts a cluster of `members` members and waits until every one's `/health` says true.
    pub async fn start_cluster(self, members: usize) -> EtcdCluster {
        EtcdCluster::launch(self, members).await
    }
}

#[derive(Debug)]
struct Member {
    name: String,
    client_port: u16,
    process: ProcessDebug,
}

struct ProcessDebug(ManagedProcess);

impl std::fmt::Debug for ProcessDebug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagedProcess")
            .field("pid", &self.0.pid())
            .field("log", &self.0.log_path())
            .finish()
    }
}

/// Credentials set up by [`EtcdCluster::enable_auth`].
#[derive(Clone, Debug)]
struct Auth {
    user: String,
    password: String,
}

/// A running etcd cluster on `127.0.0.1` (each member with its own data dir, kept across
/// restarts); every member is killed and the temporary directory removed on drop.
#[derive(Debug)]
pub struct EtcdCluster {
    options: EtcdBuilder,
    dir: TempDir,
    members: Vec<Member>,
    auth: Option<Auth>,
    client: reqwest::Client,
}

impl EtcdCluster {
    /// Options (TLS, timeouts).
    pub fn builder() -> EtcdBuilder {
        EtcdBuilder::default()
    }

    /// Starts a plain-HTTP cluster of `members` members.
    pub async fn start(members: usize) -> EtcdCluster {
        Self::builder().start_cluster(members).await
    }

    async fn launch(options: EtcdBuilder, count: usize) -> EtcdCluster {
        let mut attempt = 1;
        loop {
            match Self::try_launch(options.clone(), count).await {
                Ok(cluster) => return cluster,
                // Another process took one of the free ports first: try new ones.
                Err(failure) if attempt < 3 && is_port_conflict(&failure) => attempt += 1,
                Err(failure) => panic!("{failure}"),
            }
        }
    }

    async fn try_launch(options: EtcdBuilder, count: usize) -> Result<EtcdCluster, String> {
        assert!(count >= 1, "an etcd cluster needs at least one member");
        let dir = tempfile::Builder::new()
            .prefix("etcd-test-")
            .tempdir()
            .expect("create temp dir");
        let ports = free_ports(2 * count);
        let token = format!("test-support-{}", ports[0]);
        let initial_cluster = (0..count)
            .map(|i| format!("m{i}=http://127.0.0.1:{}", ports[2 * i + 1]))
            .collect::<Vec<_>>()
            .join(",");
        let scheme = if options.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let mut members = Vec::with_capacity(count);
        for i in 0..count {
            let name = format!("m{i}");
            let (client_port, peer_port) = (ports[2 * i], ports[2 * i + 1]);
            let client_url = format!("{scheme}://127.0.0.1:{client_port}");
            let peer_url = format!("http://127.0.0.1:{peer_port}");
            let data_dir = dir.path().join(format!("{name}.data"));
            let log_path = dir.path().join(format!("{name}.log"));
            let mut process =
                ManagedProcess::new(format!("etcd member {name}"), crate::etcd_bin(), log_path);
            process
                .env_remove_prefix("ETCD")
                .arg(format!("--name={name}"))
                .arg(format!("--data-dir={}", data_dir.display()))
                .arg(format!("--listen-client-urls={client_url}"))
                .arg(format!("--advertise-client-urls={client_url}"))
                .arg(format!("--listen-peer-urls={peer_url}"))
                .arg(format!("--initial-advertise-peer-urls={peer_url}"))
                .arg(format!("--initial-cluster={initial_cluster}"))
                .arg(format!("--initial-cluster-token={token}"))
                .arg("--initial-cluster-state=new")
                .arg("--logger=zap")
                .arg("--log-outputs=stderr");
            if let Some(ttl) = options.auth_token_ttl {
                process
                    .arg("--auth-token=simple")
                    .arg(format!("--auth-token-ttl={}", ttl.as_secs().max(1)))
                    .arg("--log-level=debug");
            }
            if let Some(tls) = &options.tls {
                process
                    .arg(format!("--cert-file={}", tls.server_cert.display()))
                    .arg(format!("--key-file={}", tls.server_key.display()));
                // etcd 3.4 asks every client for a certificate as soon as it has a
                // trusted CA, so the CA is given only when client certificates are required.
                if options.client_cert_auth {
                    process
                        .arg(format!("--trusted-ca-file={}", tls.ca_cert.display()))
                        .arg("--client-cert-auth");
                }
            }
            members.push(Member {
                name,
                client_port,
                process: ProcessDebug(process),
            });
        }
        let client = crate::http::client(options.tls.as_ref());
        let mut cluster = EtcdCluster {
            options,
            dir,
            members,
            auth: None,
            client,
        };
        for member in &mut cluster.members {
            member.process.0.spawn();
        }
        for i in 0..count {
            cluster.wait_healthy(i).await?;
        }
        Ok(cluster)
    }

    async fn health(&self, i: usize) -> Result<(), String> {
        let url = format!("{}/health", self.client_url(i));
        let resp = self
            .client
            .get(&url)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        let body = resp.text().await.map_err(|e| e.to_string())?;
        let value: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if value["health"] == "true" {
            Ok(())
        } else {
            Err(format!("unhealthy: {body}"))
        }
    }

    async fn wait_healthy(&mut self, i: usize) -> Result<(), String> {
        let timeout = self.options.start_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if !self.members[i].process.0.is_running() {
                return Err(self.members[i]
                    .process
                    .0
                    .failure("etcd exited during startup"));
            }
            let last_error = match self.health(i).await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(self.members[i].process.0.failure(&format!(
                    "not healthy after {timeout:?}; last probe error: {last_error}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Always false: a cluster has at least one member.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Client URL of member `i` (`http://127.0.0.1:P` or `https://…`).
    pub fn client_url(&self, i: usize) -> String {
        let scheme = if self.options.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}", self.members[i].client_port)
    }

    /// Client URLs of all members, in member order.
    pub fn client_urls(&self) -> Vec<String> {
        (0..self.members.len())
            .map(|i| self.client_url(i))
            .collect()
    }

    /// Same as [`EtcdCluster::client_urls`].
    pub fn endpoints(&self) -> Vec<String> {
        self.client_urls()
    }

    /// Member `i`'s name (`m0`, `m1`, …).
    pub fn member_name(&self, i: usize) -> &str {
        &self.members[i].name
    }

    /// The TLS files, when client URLs are HTTPS.
    pub fn tls_files(&self) -> Option<&TlsFiles> {
        self.options.tls.as_ref()
    }

    /// `(user, password)` given to [`EtcdCluster::enable_auth`], once auth is on.
    pub fn credentials(&self) -> Option<(String, String)> {
        self.auth
            .as_ref()
            .map(|a| (a.user.clone(), a.password.clone()))
    }

    /// The temporary directory holding data dirs (`mN.data`) and logs (`mN.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The last `lines` lines of member `i`'s log.
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        self.members[i].process.0.log_tail(lines)
    }

    /// Whether member `i`'s process is running.
    pub fn is_running(&mut self, i: usize) -> bool {
        self.members[i].process.0.is_running()
    }

    /// PID of member `i`, when running.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].process.0.pid()
    }

    /// Kills member `i` with SIGKILL and reaps it.
    pub fn kill(&mut self, i: usize) {
        self.members[i].process.0.kill();
    }

    /// Stops member `i` with SIGTERM, waiting up to 10 s before SIGKILL.
    pub async fn stop(&mut self, i: usize) {
        self.members[i]
            .process
            .0
            .stop(Duration::from_secs(10))
            .await;
    }

    /// Starts member `i` again (killing it first if it runs) with the same ports and data dir,
    /// and waits until its `/health` says true.
    pub async fn restart(&mut self, i: usize) {
        self.members[i].process.0.kill();
        self.members[i].process.0.spawn();
        if let Err(failure) = self.wait_healthy(i).await {
            panic!("{failure}");
        }
    }

    fn etcdctl_base(&self, endpoints: &[String]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(crate::etcdctl_bin());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ETCDCTL") {
                cmd.env_remove(&key);
            }
        }
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", endpoints.join(",")))
            .arg("--dial-timeout=5s")
            .arg("--command-timeout=30s")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        if let Some(tls) = &self.options.tls {
            cmd.arg(format!("--cacert={}", tls.ca_cert.display()))
                .arg(format!("--cert={}", tls.client_cert.display()))
                .arg(format!("--key={}", tls.client_key.display()));
        }
        if let Some(auth) = &self.auth {
            // The harness acts as root (compaction needs it); the password is shared.
            cmd.arg(format!("--user=root:{}", auth.password));
        }
        cmd
    }

    /// An `etcdctl` command (API v3) with `args`, aimed at the running members (all members
    /// when none runs), with TLS flags and, once auth is on, root credentials. Output piped.
    pub fn etcdctl<I, S>(&self, args: I) -> tokio::process::Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut running: Vec<String> = Vec::new();
        for (i, member) in self.members.iter().enumerate() {
            if member.process.0.pid().is_some() {
                running.push(self.client_url(i));
            }
        }
        if running.is_empty() {
            running = self.client_urls();
        }
        let mut cmd = self.etcdctl_base(&running);
        cmd.args(args);
        cmd
    }

    /// Like [`EtcdCluster::etcdctl`] but aimed at member `i` only.
    pub fn etcdctl_member<I, S>(&self, i: usize, args: I) -> tokio::process::Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.etcdctl_base(&[self.client_url(i)]);
        cmd.args(args);
        cmd
    }

    /// Runs `etcdctl` with `args` and returns stdout; panics with stderr on failure.
    pub async fn ctl<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<OsString> = args
            .into_iter()
            .map(|a| a.as_ref().to_os_string())
            .collect();
        run_checked(self.etcdctl(&args), &format!("etcdctl {args:?}")).await
    }

    async fn ctl_json<I, S>(&self, args: I) -> Value
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let out = self.ctl(args).await;
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("etcdctl JSON: {e}: {out}"))
    }

    /// Writes `key` = `value`; returns the revision of the write.
    pub async fn put(&self, key: &str, value: &str) -> i64 {
        let v = self.ctl_json(["put", "-w", "json", "--", key, value]).await;
        revision_of(&v)
    }

    /// Deletes `key`; returns how many keys were deleted.
    pub async fn del(&self, key: &str) -> i64 {
        let v = self.ctl_json(["del", "-w", "json", "--", key]).await;
        v["deleted"].as_i64().unwrap_or(0)
    }

    /// Deletes every key starting with `prefix`; returns how many keys were deleted.
    pub async fn del_prefix(&self, prefix: &str) -> i64 {
        let v = self
            .ctl_json(["del", "--prefix", "-w", "json", "--", prefix])
            .await;
        v["deleted"].as_i64().unwrap_or(0)
    }

    /// The value of `key` (as UTF-8, lossily), `None` when absent.
    pub async fn get(&self, key: &str) -> Option<String> {
        let v = self.ctl_json(["get", "-w", "json", "--", key]).await;
        let encoded = v["kvs"][0]["value"].as_str()?;
        Some(String::from_utf8_lossy(&base64_decode(encoded)).into_owned())
    }

    /// Compacts the key-value history up to `revision` (`--physical`: waits until done).
    pub async fn compact(&self, revision: i64) {
        self.ctl(["compact", "--physical", &revision.to_string()])
            .await;
    }

    /// The store's current revision.
    pub async fn get_revision(&self) -> i64 {
        let v = self
            .ctl_json(["get", "-w", "json", "--", "_test_support/revision-probe"])
            .await;
        revision_of(&v)
    }

    /// Index of the member that is the raft leader, as seen by the running members.
    pub async fn leader(&self) -> Option<usize> {
        let out = self.ctl(["endpoint", "status", "-w", "json"]).await;
        let statuses: Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("endpoint status: {e}: {out}"));
        let statuses = statuses.as_array()?;
        let leader = statuses
            .iter()
            .find_map(|s| s["Status"]["leader"].as_u64())?;
        statuses.iter().find_map(|s| {
            if s["Status"]["header"]["member_id"].as_u64() != Some(leader) {
                return None;
            }
            let endpoint = s["Endpoint"].as_str()?;
            self.client_urls().iter().position(|u| u == endpoint)
        })
    }

    /// Turns on authentication: creates `root` (role `root`) with `password`, and when `user`
    /// is not `root` also `user` with the same password and a role granting readwrite on all
    /// keys; then `auth enable`. Afterwards the harness's etcdctl commands act as root.
    pub async fn enable_auth(&mut self, user: &str, password: &str) {
        assert!(!user.contains(':'), "etcd user name must not contain ':'");
        let new_password = format!("--new-user-password={password}");
        self.ctl(["user", "add", "root", &new_password, "--interactive=false"])
            .await;
        self.ctl(["role", "add", "root"]).await;
        self.ctl(["user", "grant-role", "root", "root"]).await;
        if user != "root" {
            let role = format!("{user}-rw");
            self.ctl(["role", "add", &role]).await;
            self.ctl([
                "role",
                "grant-permission",
                &role,
                "readwrite",
                "--from-key",
                "",
            ])
            .await;
            self.ctl(["user", "add", user, &new_password, "--interactive=false"])
                .await;
            self.ctl(["user", "grant-role", user, &role]).await;
        }
        self.ctl(["auth", "enable"]).await;
        self.auth = Some(Auth {
            user: user.to_owned(),
            password: password.to_owned(),
        });
    }
}

fn revision_of(v: &Value) -> i64 {
    v["header"]["revision"]
        .as_i64()
        .unwrap_or_else(|| panic!("no header.revision in {v}"))
}

fn base64_decode(input: &str) -> Vec<u8> {
    fn val(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let mut out = Vec::with_capacity(input.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for v in input.bytes().filter_map(val) {
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// A single-member etcd server; see [`EtcdCluster`] for the full set of operations
/// ([`EtcdServer::cluster`]).
#[derive(Debug)]
pub struct EtcdServer {
    cluster: EtcdCluster,
}

impl EtcdServer {
    /// Options (TLS, timeouts); finish with [`EtcdBuilder::start_server`].
    pub fn builder() -> EtcdBuilder {
        EtcdBuilder::default()
    }

    /// Starts a plain-HTTP single-member server.
    pub async fn start() -> EtcdServer {
        Self::builder().start_server().await
    }

    /// The underlying one-member cluster.
    pub fn cluster(&self) -> &EtcdCluster {
        &self.cluster
    }

    /// The underlying one-member cluster, mutably.
    pub fn cluster_mut(&mut self) -> &mut EtcdCluster {
        &mut self.cluster
    }

    /// The client URL (`http://127.0.0.1:P` or `https://…`).
    pub fn client_url(&self) -> String {
        self.cluster.client_url(0)
    }

    /// The client URL as a one-element list.
    pub fn client_urls(&self) -> Vec<String> {
        self.cluster.client_urls()
    }

    /// `(user, password)` given to [`EtcdServer::enable_auth`], once auth is on.
    pub fn credentials(&self) -> Option<(String, String)> {
        self.cluster.credentials()
    }

    /// Kills the server with SIGKILL.
    pub fn kill(&mut self) {
        self.cluster.kill(0);
    }

    /// Stops the server with SIGTERM (SIGKILL after 10 s).
    pub async fn stop(&mut self) {
        self.cluster.stop(0).await;
    }

    /// Starts the server again with the same port and data dir, and waits until healthy.
    pub async fn restart(&mut self) {
        self.cluster.restart(0).await;
    }

    /// See [`EtcdCluster::etcdctl`].
    pub fn etcdctl<I, S>(&self, args: I) -> tokio::process::Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.cluster.etcdctl(args)
    }

    /// See [`EtcdCluster::ctl`].
    pub async fn ctl<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.cluster.ctl(args).await
    }

    /// See [`EtcdCluster::put`].
    pub async fn put(&self, key: &str, value: &str) -> i64 {
        self.cluster.put(key, value).await
    }

    /// See [`EtcdCluster::del`].
    pub async fn del(&self, key: &str) -> i64 {
        self.cluster.del(key).await
    }

    /// See [`EtcdCluster::del_prefix`].
    pub async fn del_prefix(&self, prefix: &str) -> i64 {
        self.cluster.del_prefix(prefix).await
    }

    /// See [`EtcdCluster::get`].
    pub async fn get(&self, key: &str) -> Option<String> {
        self.cluster.get(key).await
    }

    /// See [`EtcdCluster::compact`].
    pub async fn compact(&self, revision: i64) {
        self.cluster.compact(revision).await;
    }

    /// See [`EtcdCluster::get_revision`].
    pub async fn get_revision(&self) -> i64 {
        self.cluster.get_revision().await
    }

    /// See [`EtcdCluster::enable_auth`].
    pub async fn enable_auth(&mut self, user: &str, password: &str) {
        self.cluster.enable_auth(user, password).await;
    }
}

#[cfg(test)]
mod tests {
    use super::base64_decode;

    #[test]
    fn base64() {
        assert_eq!(base64_decode("Yg=="), b"b");
        assert_eq!(base64_decode("aGVsbG8gd29ybGQ="), b"hello world");
        assert_eq!(base64_decode(""), b"");
    }
}

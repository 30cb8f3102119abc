//! A real Consul agent on free loopback ports.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use tempfile::TempDir;

use crate::pki::TlsFiles;
use crate::process::{is_port_conflict, ManagedProcess};
use crate::{free_ports, STARTUP_TIMEOUT};

/// Key written (and deleted) by the readiness probe.
const PROBE_KEY: &str = "_test_support/ready-probe";

/// Options for a [`ConsulAgent`]; start with [`ConsulAgent::builder`].
#[derive(Clone, Debug)]
#[must_use]
pub struct ConsulBuilder {
    server_mode: bool,
    acl_master_token: Option<String>,
    tls: Option<TlsFiles>,
    verify_incoming: bool,
    extra_config: Vec<String>,
    start_timeout: Duration,
}

impl Default for ConsulBuilder {
    fn default() -> Self {
        Self {
            server_mode: false,
            acl_master_token: None,
            tls: None,
            verify_incoming: false,
            extra_config: Vec::new(),
            start_timeout: STARTUP_TIMEOUT,
        }
    }
}

impl ConsulBuilder {
    /// Server mode (`-server -bootstrap-expect 1 -data-dir D`) instead of `-dev`: KV survives
    /// [`ConsulAgent::restart`].
    pub fn server_mode(mut self) -> Self {
        self.server_mode = true;
        self
    }

    /// Enables ACLs with `default_policy = "deny"` and `token` as the master (and agent)
    /// token. The harness's own requests and [`ConsulAgent::command`] use this token.
    pub fn acl_master_token(mut self, token: impl Into<String>) -> Self {
        self.acl_master_token = Some(token.into());
        self
    }

    /// HTTPS only (the HTTP port is disabled) with the given files; `verify_incoming` requires
    /// client certificates signed by `files.ca_cert`.
    pub fn tls(mut self, files: TlsFiles, verify_incoming: bool) -> Self {
        self.tls = Some(files);
        self.verify_incoming = verify_incoming;
        self
    }

    /// Extra agent configuration as a JSON object (passed with `-config-file`), applied after
    /// the harness's own.
    pub fn extra_json(mut self, json: impl Into<String>) -> Self {
        self.extra_config.push(json.into());
        self
    }

    /// Bound on the wait for readiness at start and restart (default [`STARTUP_TIMEOUT`]).
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// Starts the agent and waits until it is ready: it has a raft leader, accepts a KV write,
    /// and its node is registered in the catalog (a session can be created).
    ///
    /// Panics (with the tail of the agent's log) when it does not become ready in time.
    pub async fn start(self) -> ConsulAgent {
        ConsulAgent::launch(self).await
    }
}

/// A running `consul agent` on `127.0.0.1`, killed (and its temporary directory removed) on
/// drop.
#[derive(Debug)]
pub struct ConsulAgent {
    options: ConsulBuilder,
    dir: TempDir,
    process: ManagedProcessDebug,
    port: u16,
    client: reqwest::Client,
}

/// Wrapper so that [`ConsulAgent`] can derive `Debug`.
struct ManagedProcessDebug(ManagedProcess);

impl std::fmt::Debug for ManagedProcessDebug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagedProcess")
            .field("pid", &self.0.pid())
            .field("log", &self.0.log_path())
            .finish()
    }
}

impl ConsulAgent {
    /// A dev-mode agent (`consul agent -dev`, KV in memory) on free ports.
    pub async fn start_dev() -> ConsulAgent {
        Self::builder().start().await
    }

    /// Options for dev mode, server mode, ACLs and TLS.
    pub fn builder() -> ConsulBuilder {
        ConsulBuilder::default()
    }

    async fn launch(options: ConsulBuilder) -> ConsulAgent {
        let mut attempt = 1;
        loop {
            match Self::try_launch(options.clone()).await {
                Ok(agent) => return agent,
                // Another process took one of the free ports first: try new ones.
                Err(failure) if attempt < 3 && is_port_conflict(&failure) => attempt += 1,
                Err(failure) => panic!("{failure}"),
            }
        }
    }

    async fn try_launch(options: ConsulBuilder) -> Result<ConsulAgent, String> {
        let dir = tempfile::Builder::new()
            .prefix("consul-test-")
            .tempdir()
            .expect("create temp dir");
        let ports = free_ports(4);
        let (port, server_port, lan_port, wan_port) = (ports[0], ports[1], ports[2], ports[3]);

        let mut config = json!({
            "disable_update_check": true,
            "disable_anonymous_signature": true,
            "log_level": "DEBUG",
        });
        if options.server_mode {
            config["performance"] = json!({ "raft_multiplier": 1 });
        }
        if let Some(token) = &options.acl_master_token {
            config["primary_datacenter"] = json!("dc1");
            config["acl"] = json!({
                "enabled": true,
                "default_policy": "deny",
                "down_policy": "extend-cache",
                "enable_token_persistence": true,
                "tokens": { "master": token, "agent": token },
            });
        }
        if let Some(tls) = &options.tls {
            config["ca_file"] = json!(tls.ca_cert);
            config["cert_file"] = json!(tls.server_cert);
            config["key_file"] = json!(tls.server_key);
            config["verify_incoming"] = json!(options.verify_incoming);
            config["verify_outgoing"] = json!(false);
        }
        let config_path = dir.path().join("harness.json");
        std::fs::write(&config_path, config.to_string()).expect("write consul config");

        let log_path = dir.path().join("consul.log");
        let mut process = ManagedProcess::new("consul agent", crate::consul_bin(), log_path);
        process
            .env_remove_prefix("CONSUL_")
            .arg("agent")
            .arg("-bind=127.0.0.1")
            .arg("-client=127.0.0.1")
            .arg("-node=test-support")
            .arg("-datacenter=dc1")
            .arg("-dns-port=-1")
            .arg("-grpc-port=-1")
            .arg(format!("-server-port={server_port}"))
            .arg(format!("-serf-lan-port={lan_port}"))
            .arg(format!("-serf-wan-port={wan_port}"));
        if options.tls.is_some() {
            process
                .arg("-http-port=-1")
                .arg(format!("-https-port={port}"));
        } else {
            process.arg(format!("-http-port={port}"));
        }
        if options.server_mode {
            let data = dir.path().join("data");
            std::fs::create_dir_all(&data).expect("create data dir");
            process
                .arg("-server")
                .arg("-bootstrap-expect=1")
                .arg(format!("-data-dir={}", data.display()));
        } else {
            process.arg("-dev");
        }
        process.arg(format!("-config-file={}", config_path.display()));
        for (i, extra) in options.extra_config.iter().enumerate() {
            let path = dir.path().join(format!("extra-{i}.json"));
            std::fs::write(&path, extra).expect("write extra consul config");
            process.arg(format!("-config-file={}", path.display()));
        }

        let client = crate::http::client(options.tls.as_ref());
        let mut agent = ConsulAgent {
            options,
            dir,
            process: ManagedProcessDebug(process),
            port,
            client,
        };
        agent.process.0.spawn();
        agent.wait_ready().await?;
        Ok(agent)
    }

    /// Waits (bounded by the start timeout) until the agent can serve what tests ask of it: a
    /// raft leader, a successful KV PUT, and a session created and destroyed (the agent's node
    /// is registered). This is the one readiness check: start and restart both use it.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + self.options.start_timeout;
        loop {
            if !self.process.0.is_running() {
                return Err(self.process.0.failure("consul agent exited during startup"));
            }
            let last_error = match self.probe().await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if tokio::time::Instant::now() >= deadline {
                let timeout = self.options.start_timeout;
                return Err(self.process.0.failure(&format!(
                    "not ready after {timeout:?}; last probe error: {last_error}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn probe(&self) -> Result<(), String> {
        let leader = self
            .request(reqwest::Method::GET, "/v1/status/leader")
            .send()
            .await
            .map_err(|e| format!("GET /v1/status/leader: {e}"))?;
        let status = leader.status();
        let body = leader.text().await.map_err(|e| e.to_string())?;
        if !status.is_success() || body.trim().trim_matches('"').is_empty() {
            return Err(format!("no leader yet ({status}: {body})"));
        }
        let put = self
            .request(reqwest::Method::PUT, &format!("/v1/kv/{PROBE_KEY}"))
            .body("ready")
            .send()
            .await
            .map_err(|e| format!("PUT probe key: {e}"))?;
        let status = put.status();
        let body = put.text().await.map_err(|e| e.to_string())?;
        if body.trim() != "true" {
            return Err(format!("probe PUT answered {status}: {body}"));
        }
        self.request(reqwest::Method::DELETE, &format!("/v1/kv/{PROBE_KEY}"))
            .send()
            .await
            .map_err(|e| format!("DELETE probe key: {e}"))?;
        self.probe_session().await
    }

    /// Creates and destroys a session with the default checks (`serfHealth` of this node),
    /// which only works once the leader has registered the agent's node in the catalog:
    /// before that, Consul answers `500 Missing node registration` (and `consul lock`, or a
    /// test's own session, would fail the same way).
    async fn probe_session(&self) -> Result<(), String> {
        let create = self
            .request(reqwest::Method::PUT, "/v1/session/create")
            .body(json!({ "Name": "test-support-ready-probe", "TTL": "60s" }).to_string())
            .send()
            .await
            .map_err(|e| format!("PUT /v1/session/create: {e}"))?;
        let status = create.status();
        let body = create.text().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("session create answered {status}: {body}"));
        }
        let id = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v["ID"].as_str().map(str::to_owned))
            .ok_or_else(|| format!("session create answered without an ID: {body}"))?;
        let destroy = self
            .request(reqwest::Method::PUT, &format!("/v1/session/destroy/{id}"))
            .send()
            .await
            .map_err(|e| format!("PUT /v1/session/destroy: {e}"))?;
        if !destroy.status().is_success() {
            return Err(format!("session destroy answered {}", destroy.status()));
        }
        Ok(())
    }

    fn request(&self, method: reqwest::Method, path_and_query: &str) -> reqwest::RequestBuilder {
        let mut req = self
            .client
            .request(method, format!("{}{path_and_query}", self.http_addr()));
        if let Some(token) = &self.options.acl_master_token {
            req = req.header("X-Consul-Token", token);
        }
        req
    }

    /// Base URL of the HTTP API: `http://127.0.0.1:P`, or `https://127.0.0.1:P` with TLS.
    pub fn http_addr(&self) -> String {
        let scheme = if self.options.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The HTTP (or HTTPS) port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The ACL master token, when ACLs are enabled.
    pub fn token(&self) -> Option<&str> {
        self.options.acl_master_token.as_deref()
    }

    /// The TLS files, when the agent serves HTTPS.
    pub fn tls_files(&self) -> Option<&TlsFiles> {
        self.options.tls.as_ref()
    }

    /// The temporary directory (config, `consul.log`, and `data/` in server mode).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Path of the log file holding the agent's stdout and stderr.
    pub fn log_path(&self) -> PathBuf {
        self.process.0.log_path().to_path_buf()
    }

    /// The last `lines` lines of the agent's log.
    pub fn log_tail(&self, lines: usize) -> String {
        self.process.0.log_tail(lines)
    }

    /// PID of the agent, when running.
    pub fn pid(&self) -> Option<u32> {
        self.process.0.pid()
    }

    /// Whether the agent process is running.
    pub fn is_running(&mut self) -> bool {
        self.process.0.is_running()
    }

    /// Kills the agent with SIGKILL (no graceful leave) and reaps it.
    pub fn kill(&mut self) {
        self.process.0.kill();
    }

    /// Stops the agent with SIGTERM, waiting up to 10 s before SIGKILL.
    pub async fn stop(&mut self) {
        self.process.0.stop(Duration::from_secs(10)).await;
    }

    /// Starts the agent again (killing it first if it runs) with the same ports, config and
    /// data dir, and waits until it is ready. In server mode the KV store survives; in dev
    /// mode (KV in memory) the new agent starts empty, with a low `X-Consul-Index`: a fresh
    /// agent on the same port, as when a cluster is rebuilt.
    pub async fn restart(&mut self) {
        self.process.0.kill();
        self.process.0.spawn();
        if let Err(failure) = self.wait_ready().await {
            panic!("{failure}");
        }
    }

    /// A `consul` CLI command with `args`, aimed at this agent: `CONSUL_HTTP_ADDR`, and when
    /// set `CONSUL_HTTP_TOKEN`, `CONSUL_CACERT`, `CONSUL_CLIENT_CERT`, `CONSUL_CLIENT_KEY`.
    /// Stdin is null, output is piped; the process is killed if the command is dropped.
    pub fn command<I, S>(&self, args: I) -> tokio::process::Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = tokio::process::Command::new(crate::consul_bin());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("CONSUL_") {
                cmd.env_remove(&key);
            }
        }
        cmd.args(args)
            .env("CONSUL_HTTP_ADDR", self.http_addr())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        if let Some(token) = self.token() {
            cmd.env("CONSUL_HTTP_TOKEN", token);
        }
        if let Some(tls) = &self.options.tls {
            cmd.env("CONSUL_CACERT", &tls.ca_cert)
                .env("CONSUL_CLIENT_CERT", &tls.client_cert)
                .env("CONSUL_CLIENT_KEY", &tls.client_key);
        }
        cmd
    }

    /// Runs the `consul` CLI with `args` against this agent and returns its stdout; panics
    /// with stderr when it fails or takes longer than 60 s.
    pub async fn cli<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let args: Vec<std::ffi::OsString> = args
            .into_iter()
            .map(|a| a.as_ref().to_os_string())
            .collect();
        run_checked(self.command(&args), &format!("consul {args:?}")).await
    }

    /// Creates an ACL policy `name` with `rules` (HCL) and a token for it,
    /// with the `consul` CLI and the agent's master token; returns the
    /// token's secret. Panics unless the agent has ACLs on.
    pub async fn acl_token(&self, name: &str, rules: &str) -> String {
        let rules_path = self.dir().join(format!("acl-{name}.hcl"));
        std::fs::write(&rules_path, rules).expect("write the policy rules");
        self.cli([
            "acl",
            "policy",
            "create",
            "-name",
            name,
            "-rules",
            &format!("@{}", rules_path.display()),
        ])
        .await;
        let out = self
            .cli([
                "acl",
                "token",
                "create",
                "-policy-name",
                name,
                "-format",
                "json",
            ])
            .await;
        let token: Value = serde_json::from_str(&out).expect("token JSON");
        token["SecretID"]
            .as_str()
            .expect("the token's SecretID")
            .to_owned()
    }

    fn kv_url(&self, key: &str) -> reqwest::Url {
        let mut url = reqwest::Url::parse(&self.http_addr()).expect("base URL");
        url.path_segments_mut()
            .expect("base URL has a path")
            .extend(["v1", "kv"])
            .extend(key.split('/'));
        url
    }

    async fn kv_request(
        &self,
        method: reqwest::Method,
        key: &str,
        query: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> (reqwest::StatusCode, Vec<u8>) {
        let mut req = self
            .client
            .request(method.clone(), self.kv_url(key))
            .query(query);
        if let Some(token) = self.token() {
            req = req.header("X-Consul-Token", token);
        }
        if let Some(body) = body {
            req = req.body(body);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("consul {method} {key:?}: {e}"));
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .unwrap_or_else(|e| panic!("consul {method} {key:?}: reading body: {e}"));
        (status, bytes.to_vec())
    }

    /// Writes `value` at `key` through the HTTP API; panics unless Consul answers `true`.
    pub async fn kv_put(&self, key: &str, value: impl AsRef<[u8]>) {
        let (status, body) = self
            .kv_request(
                reqwest::Method::PUT,
                key,
                &[],
                Some(value.as_ref().to_vec()),
            )
            .await;
        let text = String::from_utf8_lossy(&body);
        assert!(
            status.is_success() && text.trim() == "true",
            "consul PUT {key:?} failed: {status}: {text}"
        );
    }

    /// Reads the raw value at `key` (`None` when absent).
    pub async fn kv_get(&self, key: &str) -> Option<Vec<u8>> {
        let (status, body) = self
            .kv_request(reqwest::Method::GET, key, &[("raw", "true")], None)
            .await;
        if status == reqwest::StatusCode::NOT_FOUND {
            return None;
        }
        assert!(
            status.is_success(),
            "consul GET {key:?} failed: {status}: {}",
            String::from_utf8_lossy(&body)
        );
        Some(body)
    }

    /// Deletes `key` (succeeds when absent).
    pub async fn kv_delete(&self, key: &str) {
        let (status, body) = self
            .kv_request(reqwest::Method::DELETE, key, &[], None)
            .await;
        assert!(
            status.is_success(),
            "consul DELETE {key:?} failed: {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }

    /// Deletes every key starting with `prefix`.
    pub async fn kv_delete_recurse(&self, prefix: &str) {
        let (status, body) = self
            .kv_request(
                reqwest::Method::DELETE,
                prefix,
                &[("recurse", "true")],
                None,
            )
            .await;
        assert!(
            status.is_success(),
            "consul DELETE {prefix:?}?recurse failed: {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }

    /// The current `X-Consul-Index` of the KV store (from a read of `key`'s prefix).
    pub async fn kv_index(&self, key: &str) -> u64 {
        let mut req = self
            .client
            .get(self.kv_url(key))
            .query(&[("recurse", "true"), ("keys", "true")]);
        if let Some(token) = self.token() {
            req = req.header("X-Consul-Token", token);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("consul GET {key:?}: {e}"));
        resp.headers()
            .get("X-Consul-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no X-Consul-Index in answer {}", resp.status()))
    }

    /// The current raft leader's address as reported by `/v1/status/leader` (empty when none).
    pub async fn leader(&self) -> String {
        let resp = self
            .request(reqwest::Method::GET, "/v1/status/leader")
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET /v1/status/leader: {e}"));
        let text = resp.text().await.unwrap_or_default();
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        body.as_str().unwrap_or_default().to_owned()
    }
}

/// Runs `cmd` (output piped), panicking with its stderr unless it exits 0 within 60 s.
pub(crate) async fn run_checked(mut cmd: tokio::process::Command, what: &str) -> String {
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{what}: timed out after 60 s"))
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{what} failed ({}):\nstdout: {stdout}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

//! The program's settings, in layers: flags over `COORDINATOR_*` variables
//! over the `--config` file over the stores' own variables (`CONSUL_*`,
//! `ETCDCTL_*`) over the defaults. Each setting remembers where it came from,
//! so that a bad one is named the way the operator wrote it: `--soak`,
//! `COORDINATOR_SOAK`, or `soak in /etc/coordinator.toml`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::ArgMatches;
use coordinator::config::{check_endpoint, parse_bool, parse_duration, BackendKind};
use coordinator::{Config, ConfigError};
use serde::Deserialize;

use crate::usage_error;

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Origin {
    /// Nobody set it.
    Default,
    /// A store's own variable (`CONSUL_HTTP_ADDR`, `ETCDCTL_ENDPOINTS`, ...).
    StoreEnv(&'static str),
    /// The `--config` file.
    File(PathBuf),
    /// Our `COORDINATOR_*` variable.
    Env,
    /// The command line.
    Flag,
}

/// The log line format (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (tracing-subscriber's JSON format).
    Json,
}

impl LogFormat {
    fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Json => "json",
        }
    }
}

/// Settings of the program itself, not of the library: they live in the
/// same file, beside the library's keys.
#[derive(Debug, Clone, Default)]
pub(crate) struct Program {
    /// `http_addr`: where `/metrics`, `/healthz`, `/readyz` and `/status` are served.
    pub http_addr: Option<SocketAddr>,
    /// `exec`: the handler run for each settled change.
    pub exec: Vec<String>,
    /// `exec_timeout`: the longest a handler may run.
    pub exec_timeout: Option<Duration>,
    /// `log_format`.
    pub log_format: LogFormat,
    /// `connect_timeout`: how long `work`, `status` and `drain` wait for the store.
    pub connect_timeout: Duration,
}

/// The default of `connect_timeout`.
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The program's keys in a `--config` file (everything else is the library's [`Config`]).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ProgramFile {
    #[serde(default)]
    http_addr: Option<String>,
    #[serde(default)]
    exec: Option<Vec<String>>,
    #[serde(default, with = "humantime_serde")]
    exec_timeout: Option<Duration>,
    #[serde(default)]
    log_format: Option<LogFormat>,
    #[serde(default, with = "humantime_serde")]
    connect_timeout: Option<Duration>,
}

/// The program's keys, as written in a file and named in flags (`_` → `-`).
pub(crate) const PROGRAM_KEYS: &[&str] = &[
    "http_addr",
    "exec",
    "exec_timeout",
    "log_format",
    "connect_timeout",
];

/// The effective settings of one command and where each came from.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// The library's settings.
    pub config: Config,
    /// The program's own settings.
    pub program: Program,
    /// An admin command's settings (`work`, `status`, `drain`): they show
    /// `connect_timeout`, which only those commands use.
    pub admin: bool,
    origins: BTreeMap<&'static str, Origin>,
}

/// A failed start-up: the one line to print, already printed, and the exit code.
pub(crate) type Refused = ExitCode;

impl Settings {
    /// The defaults, or the file's settings when `file` is given.
    pub(crate) fn load(file: Option<&Path>) -> Result<Self, Refused> {
        let mut s = Self {
            config: Config::new(BackendKind::default(), String::new()),
            program: Program {
                connect_timeout: DEFAULT_CONNECT_TIMEOUT,
                ..Program::default()
            },
            admin: false,
            origins: BTreeMap::new(),
        };
        if let Some(path) = file {
            s.read_file(path)?;
        }
        Ok(s)
    }

    fn read_file(&mut self, path: &Path) -> Result<(), Refused> {
        let bad = |what: String| usage_error(&format!("config file {}: {what}", path.display()));
        let text =
            std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
        let mut table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| bad(e.to_string().trim().replace('\n', " ")))?;
        let mut program = toml::Table::new();
        for key in PROGRAM_KEYS {
            if let Some(v) = table.remove(*key) {
                program.insert((*key).to_owned(), v);
            }
        }
        let keys: Vec<String> = table.keys().cloned().collect();
        let config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| bad(e.to_string().trim().replace('\n', " ")))?;
        let p: ProgramFile = toml::Value::Table(program.clone())
            .try_into()
            .map_err(|e: toml::de::Error| bad(e.to_string().trim().replace('\n', " ")))?;
        self.config = config;
        for key in keys
            .iter()
            .map(String::as_str)
            .chain(program.keys().map(String::as_str))
        {
            if let Some(k) = known_key(key) {
                self.origins.insert(k, Origin::File(path.to_owned()));
            }
        }
        if let Some(a) = p.http_addr {
            self.program.http_addr = Some(
                crate::http::parse_addr(&a).map_err(|e| bad(format!("invalid http_addr: {e}")))?,
            );
        }
        if let Some(e) = p.exec {
            self.program.exec = e;
        }
        self.program.exec_timeout = p.exec_timeout.or(self.program.exec_timeout);
        if let Some(f) = p.log_format {
            self.program.log_format = f;
        }
        if let Some(t) = p.connect_timeout {
            self.program.connect_timeout = t;
        }
        Ok(())
    }

    /// Where `key` came from.
    pub(crate) fn origin(&self, key: &str) -> &Origin {
        self.origins.get(key).unwrap_or(&Origin::Default)
    }

    /// Records that `key` was set by the command line or our variable, as
    /// clap saw it.
    pub(crate) fn mark(&mut self, key: &'static str, matches: &ArgMatches) {
        let origin = match matches.value_source(key) {
            Some(ValueSource::EnvVariable) => Origin::Env,
            _ => Origin::Flag,
        };
        self.origins.insert(key, origin);
    }

    /// Records that `key` was set by our variable (read by the program, not by clap).
    pub(crate) fn mark_env(&mut self, key: &'static str) {
        self.origins.insert(key, Origin::Env);
    }

    /// Fills what nobody set from the stores' own variables, as `consul` and
    /// `etcdctl` read them: below our flags, variables and file.
    pub(crate) fn apply_store_env(
        &mut self,
        get: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(), Refused> {
        let unset = |s: &Self, k: &str| *s.origin(k) == Origin::Default;
        let bad = |var: &str, why: String| usage_error(&format!("invalid {var}: {why}"));
        let nonempty = |var: &str| get(var).filter(|v| !v.trim().is_empty());
        match self.config.backend {
            BackendKind::Consul => {
                let ssl = match nonempty("CONSUL_HTTP_SSL") {
                    Some(v) => parse_bool(&v).ok_or_else(|| {
                        bad("CONSUL_HTTP_SSL", format!("{v:?} is not true or false"))
                    })?,
                    None => false,
                };
                let scheme = if ssl { "https" } else { "http" };
                if unset(self, "endpoints") {
                    if let Some(addr) = nonempty("CONSUL_HTTP_ADDR") {
                        let addr = addr.trim();
                        let url = if addr.starts_with("unix://") {
                            return Err(bad(
                                "CONSUL_HTTP_ADDR",
                                format!("{addr:?}: a Unix socket is not supported; give the agent's HTTP address"),
                            ));
                        } else if addr.contains("://") {
                            addr.to_owned()
                        } else {
                            format!("{scheme}://{addr}")
                        };
                        check_endpoint(&url).map_err(|e| bad("CONSUL_HTTP_ADDR", e))?;
                        self.config.endpoints = vec![url];
                        self.origins
                            .insert("endpoints", Origin::StoreEnv("CONSUL_HTTP_ADDR"));
                    } else if ssl {
                        self.config.endpoints = vec!["https://127.0.0.1:8500".to_owned()];
                        self.origins
                            .insert("endpoints", Origin::StoreEnv("CONSUL_HTTP_SSL"));
                    }
                }
                // `consul` prefers CONSUL_HTTP_TOKEN (which the backend
                // reads itself) to CONSUL_HTTP_TOKEN_FILE.
                if unset(self, "token_file") && nonempty("CONSUL_HTTP_TOKEN").is_none() {
                    self.fill_path("token_file", "CONSUL_HTTP_TOKEN_FILE", get);
                }
                self.fill_path("ca_cert", "CONSUL_CACERT", get);
                self.fill_path("client_cert", "CONSUL_CLIENT_CERT", get);
                self.fill_path("client_key", "CONSUL_CLIENT_KEY", get);
            }
            BackendKind::Etcd => {
                self.fill_path("ca_cert", "ETCDCTL_CACERT", get);
                self.fill_path("client_cert", "ETCDCTL_CERT", get);
                self.fill_path("client_key", "ETCDCTL_KEY", get);
                if unset(self, "endpoints") {
                    if let Some(list) = get("ETCDCTL_ENDPOINTS") {
                        let tls =
                            self.config.ca_cert.is_some() || self.config.client_cert.is_some();
                        let mut endpoints = Vec::new();
                        for e in list.split(',') {
                            let e = e.trim();
                            let url = if e.contains("://") || e.is_empty() {
                                e.to_owned()
                            } else if tls {
                                format!("https://{e}")
                            } else {
                                format!("http://{e}")
                            };
                            check_endpoint(&url).map_err(|why| bad("ETCDCTL_ENDPOINTS", why))?;
                            endpoints.push(url);
                        }
                        self.config.endpoints = endpoints;
                        self.origins
                            .insert("endpoints", Origin::StoreEnv("ETCDCTL_ENDPOINTS"));
                    }
                }
                if unset(self, "user") {
                    if let Some(user) = nonempty("ETCDCTL_USER") {
                        let (name, password) = match user.split_once(':') {
                            Some((n, p)) => (n.to_owned(), Some(p.to_owned())),
                            None => (user.clone(), get("ETCDCTL_PASSWORD")),
                        };
                        if unset(self, "password_file") {
                            let Some(password) = password else {
                                return Err(bad(
                                    "ETCDCTL_USER",
                                    "has no password: write name:password, or set ETCDCTL_PASSWORD, or give --password-file".to_owned(),
                                ));
                            };
                            self.config.password = Some(password);
                        }
                        self.config.user = Some(name);
                        self.origins
                            .insert("user", Origin::StoreEnv("ETCDCTL_USER"));
                    }
                }
            }
            // The memory store (and any later one) reads no store variables.
            _ => {}
        }
        Ok(())
    }

    fn fill_path(
        &mut self,
        key: &'static str,
        var: &'static str,
        get: &dyn Fn(&str) -> Option<String>,
    ) {
        if *self.origin(key) != Origin::Default {
            return;
        }
        let Some(v) = get(var).filter(|v| !v.trim().is_empty()) else {
            return;
        };
        let path = Some(PathBuf::from(v));
        match key {
            "token_file" => self.config.token_file = path,
            "ca_cert" => self.config.ca_cert = path,
            "client_cert" => self.config.client_cert = path,
            "client_key" => self.config.client_key = path,
            _ => return,
        }
        self.origins.insert(key, Origin::StoreEnv(var));
    }

    /// How the operator wrote `key`: `--soak`, `COORDINATOR_SOAK`,
    /// `soak in FILE` or the store variable.
    pub(crate) fn name_of(&self, key: &str) -> String {
        match self.origin(key) {
            Origin::Flag if key == "http_addr" && alias_given("--metrics-addr") => {
                "--metrics-addr".to_owned()
            }
            Origin::Default | Origin::Flag => flag(key),
            Origin::Env => env_var(key),
            Origin::File(path) => format!("{key} in {}", path.display()),
            Origin::StoreEnv(var) => (*var).to_owned(),
        }
    }

    /// Fills in `leader_settle` when no layer set it: the default of a
    /// worker alone or of a full member (`--print-config` shows it, from
    /// "default").
    pub(crate) fn resolve_leader_settle(&mut self, member: bool) {
        if self.config.leader_settle.is_none() {
            self.config.leader_settle = Some(self.config.leader_settle_for(member));
        }
    }

    /// One line for a bad setting: which one (as the operator wrote it),
    /// why, and, through the reason, the fix. Other settings the reason
    /// names in backticks are spelled the same way.
    pub(crate) fn refuse(&self, e: &ConfigError) -> Refused {
        let key = e.field;
        let reason = respell(&e.reason, self.origin(key));
        usage_error(&format!("invalid {}: {reason}", self.name_of(key)))
    }

    /// The effective settings as TOML, each line saying where its value
    /// came from (for `--print-config`).
    pub(crate) fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::from(
            "# Effective settings: flags > COORDINATOR_* variables > --config file > CONSUL_*/ETCDCTL_* > defaults.\n",
        );
        let mut table = toml::Table::try_from(&self.config).unwrap_or_default();
        if let Some(a) = self.program.http_addr {
            table.insert("http_addr".into(), toml::Value::String(a.to_string()));
        }
        if !self.program.exec.is_empty() {
            table.insert(
                "exec".into(),
                toml::Value::Array(
                    self.program
                        .exec
                        .iter()
                        .cloned()
                        .map(toml::Value::String)
                        .collect(),
                ),
            );
        }
        if let Some(t) = self.program.exec_timeout {
            table.insert(
                "exec_timeout".into(),
                toml::Value::String(humantime::format_duration(t).to_string()),
            );
        }
        table.insert(
            "log_format".into(),
            toml::Value::String(self.program.log_format.as_str().into()),
        );
        if self.admin {
            table.insert(
                "connect_timeout".into(),
                toml::Value::String(
                    humantime::format_duration(self.program.connect_timeout).to_string(),
                ),
            );
        }
        for (key, value) in &table {
            let from = match self.origin(key) {
                Origin::Default => "default".to_owned(),
                Origin::Flag => flag(key),
                Origin::Env => env_var(key),
                Origin::File(p) => p.display().to_string(),
                Origin::StoreEnv(v) => (*v).to_owned(),
            };
            let _ = writeln!(out, "{key} = {value}  # {from}");
        }
        if self.config.password.is_some() {
            let _ = writeln!(
                out,
                "# password: set from ETCDCTL_USER or ETCDCTL_PASSWORD (not shown)"
            );
        }
        out
    }
}

/// Every key a file may hold, as a `'static` name.
fn known_key(key: &str) -> Option<&'static str> {
    config_keys()
        .iter()
        .chain(PROGRAM_KEYS)
        .copied()
        .find(|k| *k == key)
}

/// The library's keys, read off a serialized default config (every key,
/// optional ones included).
pub(crate) fn config_keys() -> &'static [&'static str] {
    &[
        "backend",
        "endpoints",
        "instance_id",
        "prefix",
        "leader",
        "soak",
        "max_soak",
        "leader_settle",
        "consul_wait",
        "etcd_keepalive",
        "token_file",
        "ca_cert",
        "client_cert",
        "client_key",
        "user",
        "password_file",
        "members_prefix",
        "work_prefix",
        "ttl",
        "leader_soak",
        "weight",
        "zone",
        "replicas",
        "rebalance_delay",
        "handoff_prefix",
        "drain_prefix",
        "sequence_key",
        "exclusive",
        "exclusive_margin",
        "max_moves_in_flight",
        "drain_timeout",
        "txn_max_bytes",
        "txn_max_ops",
        "value_max_bytes",
        "handoff_timeout",
        "handoff",
        "session_check",
        "prepare",
    ]
}

/// Whether the command line holds `alias` (`--metrics-addr` for `--http-addr`).
fn alias_given(alias: &str) -> bool {
    std::env::args().any(|a| a == alias || a.starts_with(&format!("{alias}=")))
}

/// `--key-name` of `key_name`.
pub(crate) fn flag(key: &str) -> String {
    format!("--{}", key.replace('_', "-"))
}

/// `COORDINATOR_KEY_NAME` of `key_name`.
pub(crate) fn env_var(key: &str) -> String {
    format!("COORDINATOR_{}", key.to_ascii_uppercase())
}

/// Rewrites the settings a reason names in backticks (`` `exclusive` ``)
/// in the spelling of `origin`: flags for flags, variables for variables.
fn respell(reason: &str, origin: &Origin) -> String {
    let mut out = String::new();
    let mut rest = reason;
    while let Some(start) = rest.find('`') {
        let Some(len) = rest[start + 1..].find('`') else {
            break;
        };
        let name = &rest[start + 1..start + 1 + len];
        out.push_str(&rest[..start]);
        match (known_key(name), origin) {
            (Some(k), Origin::Default | Origin::Flag) => out.push_str(&flag(k)),
            (Some(k), Origin::Env) => out.push_str(&env_var(k)),
            _ => out.push_str(name),
        }
        rest = &rest[start + 2 + len..];
    }
    out.push_str(rest);
    out
}

/// Parses a duration flag value.
pub(crate) fn duration(s: &str) -> Result<Duration, String> {
    parse_duration(s)
}

/// Parses `--weight`: a whole number from 0 up.
pub(crate) fn weight(s: &str) -> Result<u32, String> {
    let n: i64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number: it must be ≥ 0"))?;
    if n < 0 {
        return Err(format!("{s} must be ≥ 0 (0 takes no work)"));
    }
    u32::try_from(n).map_err(|_| format!("{s} is too large: at most {}", u32::MAX))
}

/// Parses `--replicas`: a whole number from 1 to [`MAX_REPLICAS`](coordinator::MAX_REPLICAS).
pub(crate) fn replicas(s: &str) -> Result<u32, String> {
    let max = coordinator::MAX_REPLICAS;
    match s.trim().parse::<u32>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "{s:?} is not a whole number from 1 to {max} (1: one owner per item)"
        )),
    }
}

/// Parses a boolean flag value (`--exclusive true`).
pub(crate) fn boolean(s: &str) -> Result<bool, String> {
    parse_bool(s).ok_or_else(|| format!("{s:?} is not true or false"))
}

/// Checks an `--exec` program: it exists and may be run. A bare name is
/// looked up on `PATH`.
pub(crate) fn check_exec(program: &str) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt as _;
    let candidates: Vec<PathBuf> = if program.contains('/') {
        vec![PathBuf::from(program)]
    } else {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).map(|d| d.join(program)).collect())
            .unwrap_or_default()
    };
    let mut not_executable = None;
    for c in &candidates {
        match std::fs::metadata(c) {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => return Ok(()),
            Ok(m) if m.is_dir() => not_executable = Some(format!("{} is a directory", c.display())),
            Ok(_) => {
                not_executable = Some(format!("{} is not executable: chmod +x it", c.display()));
            }
            Err(_) => {}
        }
    }
    Err(not_executable.unwrap_or_else(|| {
        if program.contains('/') {
            format!("{program} does not exist")
        } else {
            format!("{program:?} is not found on PATH")
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn respell_follows_the_origin() {
        let r = "is only used in exclusive mode: add `exclusive`, or leave the margin out";
        assert!(respell(r, &Origin::Flag).contains("add --exclusive,"));
        assert!(respell(r, &Origin::Env).contains("add COORDINATOR_EXCLUSIVE,"));
        assert!(respell(r, &Origin::File("f".into())).contains("add exclusive,"));
        assert_eq!(respell("no `ticks` here", &Origin::Flag), "no ticks here");
    }

    #[test]
    fn every_library_key_is_known() {
        let table = toml::Table::try_from(Config::new(BackendKind::Consul, "m1")).unwrap();
        for key in table.keys() {
            assert!(
                config_keys().contains(&key.as_str()),
                "{key} missing from config_keys()"
            );
        }
    }

    #[test]
    fn weight_says_why() {
        assert!(weight("-1").unwrap_err().contains("must be ≥ 0"));
        assert_eq!(weight("3"), Ok(3));
        assert!(weight("x").is_err());
    }
}

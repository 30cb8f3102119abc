//! The `coordinator` command-line program (SPEC §5).
//!
//! - `coordinator worker ...` runs one worker and prints one JSON line per
//!   settled change on stdout; logs go to stderr.
//! - `coordinator demo` runs a whole cluster in one process on the memory backend.
//!
//! Exit codes: 0 after SIGINT/SIGTERM (or a demo that ran to its end), 2 for a
//! bad flag or value (one line on stderr naming it), 1 for anything else.

mod admin;
mod demo;
mod exec;
mod http;
mod member;
mod prometheus;
mod worker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use coordinator::config::{parse_duration, BackendKind, DEFAULT_LEADER};
use coordinator::{Config, DEFAULT_PREFIX};

#[derive(Parser, Debug)]
#[command(
    name = "coordinator",
    version,
    about = "Know which work is assigned to this member, reliably and quickly."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
#[allow(clippy::large_enum_variant)] // parsed once at start-up
enum Cmd {
    /// Run one worker; print a JSON line for the first settled workload and every later change.
    Worker(WorkerArgs),
    /// Run a leader and several workers in one process on the memory backend.
    Demo(DemoArgs),
    /// Run a full member: register, campaign, assign while leader, print the settled workload as `worker` does.
    Member(member::MemberArgs),
    /// Manage work items: put ID [VALUE], rm ID, ls.
    Work(admin::WorkArgs),
    /// Print members, the leader and each member's items.
    Status(admin::StatusArgs),
    /// Ask a member to drain (hand its items over) and leave; wait until it left.
    Drain(admin::DrainArgs),
}

/// Where the store is and how to reach it: shared by every command that talks to one.
#[derive(Args, Debug, Clone)]
pub(crate) struct ConnArgs {
    /// Which store: consul, etcd or memory.
    #[arg(long, value_parser = parse_backend)]
    backend: BackendKind,
    /// Store addresses, comma-separated (default: the store's local address).
    #[arg(long, value_delimiter = ',')]
    endpoints: Vec<String>,
    /// File holding the Consul ACL token (else `CONSUL_HTTP_TOKEN`).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// CA certificate (PEM) for TLS.
    #[arg(long)]
    ca_cert: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(long, requires = "client_key")]
    client_cert: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS.
    #[arg(long, requires = "client_cert")]
    client_key: Option<PathBuf>,
    /// etcd user name.
    #[arg(long, requires = "password_file")]
    user: Option<String>,
    /// File holding the etcd password.
    #[arg(long, requires = "user")]
    password_file: Option<PathBuf>,
}

impl ConnArgs {
    /// A config for `instance_id` with these connection settings.
    pub(crate) fn config(self, instance_id: String) -> Config {
        let mut c = Config::new(self.backend, instance_id);
        c.endpoints = self
            .endpoints
            .into_iter()
            .filter(|e| !e.trim().is_empty())
            .collect();
        c.token_file = self.token_file;
        c.ca_cert = self.ca_cert;
        c.client_cert = self.client_cert;
        c.client_key = self.client_key;
        c.user = self.user;
        c.password_file = self.password_file;
        c
    }
}

/// Flags of `coordinator worker` (SPEC §5).
#[derive(Args, Debug, Clone)]
pub(crate) struct WorkerArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// This member's id.
    #[arg(long)]
    instance_id: String,
    /// Assignment prefix.
    #[arg(long, default_value = DEFAULT_PREFIX)]
    prefix: String,
    /// Consul leader key, or etcd election name.
    #[arg(long, default_value = DEFAULT_LEADER)]
    leader: String,
    /// Quiet time before a change is committed.
    #[arg(long, value_parser = parse_duration, default_value = "500ms", allow_hyphen_values = true)]
    soak: Duration,
    /// Longest a change may soak while changes keep coming (default 10 x soak).
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true)]
    max_soak: Option<Duration>,
    /// Extra wait after a new leader appears.
    #[arg(long, value_parser = parse_duration, default_value = "5s", allow_hyphen_values = true)]
    leader_settle: Duration,
    /// Consul blocking-query wait; a silent connection is noticed after wait + wait/16 + 5s (default 5m).
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true)]
    consul_wait: Option<Duration>,
    /// etcd keep-alive: request timeout and silent-stream detection (default 10s).
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true)]
    etcd_keepalive: Option<Duration>,
    #[command(flatten)]
    program: ProgramArgs,
}

/// Flags of the program itself (not library settings), for `worker` and `member`.
#[derive(Args, Debug, Clone)]
pub(crate) struct ProgramArgs {
    /// Serve /metrics (Prometheus), /healthz, /readyz and /status on
    /// HOST:PORT; `:PORT` listens on every interface. Off by default.
    #[arg(long, visible_alias = "metrics-addr", value_name = "HOST:PORT", value_parser = http::parse_addr)]
    http_addr: Option<SocketAddr>,
    /// Run CMD with ARGS for each settled change, one at a time, in order: the
    /// JSON line on its stdin, the change in COORDINATOR_* variables. Give it
    /// last: every argument after it belongs to CMD.
    #[arg(long, value_name = "CMD [ARGS...]", num_args = 1.., allow_hyphen_values = true)]
    exec: Vec<String>,
    /// Kill an `--exec` handler that runs longer than this (logged at warn;
    /// for `member`, its change is not acknowledged). Default: no limit.
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true)]
    exec_timeout: Option<Duration>,
}

impl ProgramArgs {
    /// Starts the HTTP endpoints if asked (`--http-addr`); a failure is a
    /// usage error (exit 2) naming `--http-addr`.
    pub(crate) fn serve_http(&self, config: &Config) -> Result<http::Http, ExitCode> {
        match self.http_addr {
            Some(addr) => http::Http::serve(addr, &config.instance_id, config.backend)
                .map_err(|e| usage_error(&format!("invalid --http-addr: {e}"))),
            None => Ok(http::Http::default()),
        }
    }

    /// The `--exec` handler, if one is given.
    pub(crate) fn handler(&self) -> Option<exec::Handler> {
        exec::Handler::new(&self.exec, self.exec_timeout)
    }
}

/// Flags of `coordinator demo`.
#[derive(Args, Debug, Clone)]
struct DemoArgs {
    /// Number of work items the leader spreads.
    #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    items: u32,
}

fn parse_backend(s: &str) -> Result<BackendKind, String> {
    s.parse()
}

/// Prints a one-line usage error naming the flag, and returns exit code 2.
fn usage_error(message: &str) -> ExitCode {
    eprintln!("coordinator: {}", message.trim().replace('\n', " "));
    ExitCode::from(2)
}

/// A bad setting, named by the flag that sets it: one line, exit code 2.
fn config_error(e: &coordinator::ConfigError) -> ExitCode {
    usage_error(&format!(
        "invalid --{}: {}",
        e.field.replace('_', "-"),
        e.reason
    ))
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                return if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                    ExitCode::from(2)
                } else {
                    ExitCode::SUCCESS
                };
            }
            // clap's message names the flag and the value; keep it on one line and
            // drop the usage hints that follow it.
            let text = e.to_string();
            let body = text
                .split("\n\nUsage:")
                .next()
                .and_then(|t| t.split("\n\nFor more information").next())
                .unwrap_or("invalid arguments");
            let one_line = body.split_whitespace().collect::<Vec<_>>().join(" ");
            return usage_error(one_line.trim_start_matches("error: "));
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("coordinator: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match cli.cmd {
        Cmd::Worker(args) => runtime.block_on(worker::run(args)),
        Cmd::Demo(args) => runtime.block_on(demo::run(args)),
        Cmd::Member(args) => runtime.block_on(member::run(args)),
        Cmd::Work(args) => runtime.block_on(admin::work(args)),
        Cmd::Status(args) => runtime.block_on(admin::status(args)),
        Cmd::Drain(args) => runtime.block_on(admin::drain(args)),
    };
    // The stdin reader of the memory backend sits in a blocking read: do not wait for it.
    runtime.shutdown_timeout(Duration::from_millis(100));
    code
}

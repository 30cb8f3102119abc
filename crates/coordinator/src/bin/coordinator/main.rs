//! The `coordinator` command-line program (SPEC §5).
//!
//! - `coordinator worker ...` runs one worker and prints one JSON line per
//!   settled change on stdout; logs go to stderr.
//! - `coordinator demo` runs a whole cluster in one process on the memory backend.
//!
//! Exit codes: 0 after SIGINT/SIGTERM (or a demo that ran to its end), 2 for a
//! bad flag or value (one line on stderr naming it), 1 for anything else.

// The flags' doc comments are their `--help` text, written for a terminal:
// variable and key names stay bare there, not in backticks.
#![allow(clippy::doc_markdown)]

mod admin;
mod demo;
mod exec;
mod http;
mod member;
mod prometheus;
mod run;
mod settings;
mod worker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::builder::{PossibleValuesParser, TypedValueParser as _};
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use coordinator::config::BackendKind;

use crate::settings::{LogFormat, Settings};

#[derive(Parser, Debug)]
#[command(
    name = "coordinator",
    version,
    about = "Know which work is assigned to this member, reliably and quickly.",
    after_help = "Settings: flags win over COORDINATOR_* variables, which win over the --config file, \
which wins over the stores' own variables (CONSUL_HTTP_ADDR, ETCDCTL_ENDPOINTS, ...) and the defaults. \
`--print-config` shows the effective settings and where each came from."
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
    /// Run a full member: register, campaign, assign while leader, print the settled workload as `worker` does.
    Member(member::MemberArgs),
    /// Manage work items: put ID [VALUE], rm ID, ls.
    Work(admin::WorkArgs),
    /// Print members, the leader and each member's items.
    Status(admin::StatusArgs),
    /// Ask a member to drain (hand its items over) and leave; wait until it left.
    Drain(admin::DrainArgs),
    /// Run a leader and several workers in one process on the memory backend.
    Demo(DemoArgs),
    /// Print a shell completion script (e.g. `coordinator completions bash > /etc/bash_completion.d/coordinator`).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) on stdout (e.g. `coordinator man > /usr/local/share/man/man1/coordinator.1`).
    Man,
}

/// The stores a command may be given: `worker` also takes the in-process
/// memory store; the others need a store other processes share.
fn backend_parser(with_memory: bool) -> impl clap::builder::TypedValueParser<Value = BackendKind> {
    let names: &[&'static str] = if with_memory {
        &["consul", "etcd", "memory"]
    } else {
        &["consul", "etcd"]
    };
    PossibleValuesParser::new(names)
        .map(|s| s.parse::<BackendKind>().expect("one of the names above"))
}

/// Where the store is and how to reach it: shared by every command that
/// talks to one. (`--backend` is each command's own: not all take `memory`.)
#[derive(Args, Debug, Clone)]
pub(crate) struct ConnArgs {
    /// Store addresses, comma-separated [default: CONSUL_HTTP_ADDR / ETCDCTL_ENDPOINTS, else the store's local address]
    #[arg(
        long,
        env = "COORDINATOR_ENDPOINTS",
        value_delimiter = ',',
        value_name = "URL[,URL...]"
    )]
    endpoints: Option<Vec<String>>,
    /// Read settings from this TOML file (the library's keys, plus http_addr, exec, exec_timeout, log_format, connect_timeout)
    #[arg(long, env = "COORDINATOR_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the effective settings as TOML, each with where it came from, and exit
    #[arg(long)]
    print_config: bool,
    /// File holding the Consul ACL token [default: CONSUL_HTTP_TOKEN, CONSUL_HTTP_TOKEN_FILE]
    #[arg(
        long,
        env = "COORDINATOR_TOKEN_FILE",
        value_name = "FILE",
        help_heading = "Connection"
    )]
    token_file: Option<PathBuf>,
    /// CA certificate (PEM) for TLS [default: CONSUL_CACERT / ETCDCTL_CACERT]
    #[arg(
        long,
        env = "COORDINATOR_CA_CERT",
        value_name = "FILE",
        help_heading = "Connection"
    )]
    ca_cert: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS, with --client-key [default: CONSUL_CLIENT_CERT / ETCDCTL_CERT]
    #[arg(
        long,
        env = "COORDINATOR_CLIENT_CERT",
        value_name = "FILE",
        help_heading = "Connection"
    )]
    client_cert: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS, with --client-cert [default: CONSUL_CLIENT_KEY / ETCDCTL_KEY]
    #[arg(
        long,
        env = "COORDINATOR_CLIENT_KEY",
        value_name = "FILE",
        help_heading = "Connection"
    )]
    client_key: Option<PathBuf>,
    /// etcd user name, with --password-file [default: ETCDCTL_USER]
    #[arg(long, env = "COORDINATOR_USER", help_heading = "Connection")]
    user: Option<String>,
    /// File holding the etcd password
    #[arg(
        long,
        env = "COORDINATOR_PASSWORD_FILE",
        value_name = "FILE",
        help_heading = "Connection"
    )]
    password_file: Option<PathBuf>,
}

/// Sets `$s.config.$field` from an optional flag value and records its origin.
macro_rules! put {
    ($s:ident, $m:ident, $field:ident = $value:expr) => {
        if let Some(v) = $value {
            $s.config.$field = v;
            $s.mark(stringify!($field), $m);
        }
    };
}
pub(crate) use put;

impl ConnArgs {
    /// The file's settings (or the defaults) with these flags on top.
    pub(crate) fn settings(
        &self,
        backend: Option<BackendKind>,
        m: &ArgMatches,
    ) -> Result<Settings, ExitCode> {
        let mut s = Settings::load(self.config.as_deref())?;
        put!(s, m, backend = backend);
        put!(s, m, endpoints = self.endpoints.clone());
        put!(s, m, token_file = self.token_file.clone().map(Some));
        put!(s, m, ca_cert = self.ca_cert.clone().map(Some));
        put!(s, m, client_cert = self.client_cert.clone().map(Some));
        put!(s, m, client_key = self.client_key.clone().map(Some));
        put!(s, m, user = self.user.clone().map(Some));
        put!(s, m, password_file = self.password_file.clone().map(Some));
        Ok(s)
    }
}

/// Flags of `coordinator worker` (SPEC §5).
#[derive(Args, Debug, Clone)]
pub(crate) struct WorkerArgs {
    /// This member's id (required: here, in COORDINATOR_INSTANCE_ID or in the --config file)
    #[arg(long, env = "COORDINATOR_INSTANCE_ID", value_name = "ID")]
    instance_id: Option<String>,
    /// Which store (memory: an in-process store fed by stdin commands `put KEY [VALUE]`, `del KEY`, `leader ID`, `no-leader`) [default: consul]
    #[arg(long, env = "COORDINATOR_BACKEND", value_parser = backend_parser(true))]
    backend: Option<BackendKind>,
    #[command(flatten)]
    conn: ConnArgs,
    #[command(flatten)]
    opts: WorkerOpts,
    #[command(flatten)]
    program: ProgramArgs,
}

/// The worker's settings, shared by `worker` and `member`.
#[derive(Args, Debug, Clone)]
pub(crate) struct WorkerOpts {
    /// Assignment prefix; must end with '/' [default: service/coordinator/assignments/]
    #[arg(long, env = "COORDINATOR_PREFIX", help_heading = "Keys")]
    prefix: Option<String>,
    /// Consul leader key, or etcd election name [default: service/coordinator/leader]
    #[arg(long, env = "COORDINATOR_LEADER", help_heading = "Keys")]
    leader: Option<String>,
    /// Quiet time before a change is committed [default: 500ms]
    #[arg(long, env = "COORDINATOR_SOAK", value_name = "DURATION", value_parser = settings::duration, allow_hyphen_values = true, help_heading = "Timing")]
    soak: Option<Duration>,
    /// Longest a change may soak while changes keep coming [default: 10 x soak]
    #[arg(long, env = "COORDINATOR_MAX_SOAK", value_name = "DURATION", value_parser = settings::duration, allow_hyphen_values = true, help_heading = "Timing")]
    max_soak: Option<Duration>,
    /// Extra wait after a new leader appears [default: 5s for a worker; for a member its leader soak + 1s]
    #[arg(long, env = "COORDINATOR_LEADER_SETTLE", value_name = "DURATION", value_parser = settings::duration, allow_hyphen_values = true, help_heading = "Timing")]
    leader_settle: Option<Duration>,
    /// Consul blocking-query wait; a silent connection is noticed after wait + wait/16 + 5s [default: 5m]
    #[arg(long, env = "COORDINATOR_CONSUL_WAIT", value_name = "DURATION", value_parser = settings::duration, allow_hyphen_values = true, help_heading = "Timing")]
    consul_wait: Option<Duration>,
    /// etcd keep-alive: request timeout and silent-stream detection [default: 10s]
    #[arg(long, env = "COORDINATOR_ETCD_KEEPALIVE", value_name = "DURATION", value_parser = settings::duration, allow_hyphen_values = true, help_heading = "Timing")]
    etcd_keepalive: Option<Duration>,
}

impl WorkerOpts {
    pub(crate) fn apply(&self, s: &mut Settings, m: &ArgMatches) {
        put!(s, m, prefix = self.prefix.clone());
        put!(s, m, leader = self.leader.clone());
        put!(s, m, soak = self.soak);
        put!(s, m, max_soak = self.max_soak.map(Some));
        put!(s, m, leader_settle = self.leader_settle.map(Some));
        put!(s, m, consul_wait = self.consul_wait.map(Some));
        put!(s, m, etcd_keepalive = self.etcd_keepalive.map(Some));
    }
}

/// Flags of the program itself (not library settings), for `worker` and `member`.
#[derive(Args, Debug, Clone)]
pub(crate) struct ProgramArgs {
    /// Serve /metrics, /healthz, /readyz and /status on HOST:PORT (`:PORT`: every interface) [default: off]
    #[arg(long, visible_alias = "metrics-addr", env = "COORDINATOR_HTTP_ADDR", value_name = "HOST:PORT", value_parser = http::parse_addr, help_heading = "Output")]
    http_addr: Option<SocketAddr>,
    /// Log line format on stderr [default: text]
    #[arg(
        long,
        env = "COORDINATOR_LOG_FORMAT",
        value_enum,
        help_heading = "Output"
    )]
    log_format: Option<LogFormat>,
    /// Kill an `--exec` handler that runs longer than this (for `member`, its change is not acknowledged) [default: no limit]
    #[arg(long, env = "COORDINATOR_EXEC_TIMEOUT", value_name = "DURATION", value_parser = settings::duration, allow_hyphen_values = true, help_heading = "Output")]
    exec_timeout: Option<Duration>,
    /// Run CMD with ARGS for each settled change, one at a time, in order: the
    /// JSON line on its stdin, the change in COORDINATOR_* variables. Give it
    /// last: every argument after it belongs to CMD. (COORDINATOR_EXEC: split
    /// at whitespace.)
    #[arg(long, value_name = "CMD [ARGS...]", num_args = 1.., allow_hyphen_values = true, help_heading = "Output")]
    exec: Vec<String>,
}

impl ProgramArgs {
    /// Puts these flags (and `COORDINATOR_EXEC`) over the file's program settings.
    pub(crate) fn apply(&self, s: &mut Settings, m: &ArgMatches) {
        if let Some(a) = self.http_addr {
            s.program.http_addr = Some(a);
            s.mark("http_addr", m);
        }
        if let Some(f) = self.log_format {
            s.program.log_format = f;
            s.mark("log_format", m);
        }
        if let Some(t) = self.exec_timeout {
            s.program.exec_timeout = Some(t);
            s.mark("exec_timeout", m);
        }
        if !self.exec.is_empty() {
            s.program.exec.clone_from(&self.exec);
            s.mark("exec", m);
        } else if let Some(cmd) = std::env::var("COORDINATOR_EXEC")
            .ok()
            .filter(|c| !c.trim().is_empty())
        {
            s.program.exec = cmd.split_whitespace().map(str::to_owned).collect();
            s.mark_env("exec");
        }
    }
}

/// Flags of `coordinator demo`.
#[derive(Args, Debug, Clone)]
struct DemoArgs {
    /// Number of work items the leader spreads.
    #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    items: u32,
}

/// The settings of `worker`: the file, then the flags and variables, then
/// the stores' variables; checked. `--print-config` prints them here.
pub(crate) fn worker_settings(args: &WorkerArgs, m: &ArgMatches) -> Result<Settings, ExitCode> {
    let mut s = args.conn.settings(args.backend, m)?;
    put!(s, m, instance_id = args.instance_id.clone());
    args.opts.apply(&mut s, m);
    args.program.apply(&mut s, m);
    s.resolve_leader_settle(false);
    Ok(s)
}

/// The last checks shared by `worker` and `member`, after every layer: the
/// stores' variables, `--print-config`, the instance id, the library's
/// validation and the `--exec` program. `Err(SUCCESS)` after `--print-config`.
pub(crate) fn finish_settings(
    mut s: Settings,
    conn: &ConnArgs,
    extra: impl FnOnce(&Settings) -> Result<(), coordinator::ConfigError>,
) -> Result<Settings, ExitCode> {
    s.apply_store_env(&|k| std::env::var(k).ok())?;
    if conn.print_config && write_out(s.render().as_bytes(), "the settings") != ExitCode::SUCCESS {
        return Err(ExitCode::FAILURE);
    }
    if s.config.instance_id.is_empty() {
        return Err(usage_error(
            "missing instance id: give --instance-id ID, COORDINATOR_INSTANCE_ID or instance_id in the --config file",
        ));
    }
    s.config
        .validate()
        .and_then(|()| extra(&s))
        .map_err(|e| s.refuse(&e))?;
    if let Some(program) = s.program.exec.first() {
        settings::check_exec(program)
            .map_err(|why| usage_error(&format!("invalid {}: {why}", s.name_of("exec"))))?;
    }
    if conn.print_config {
        return Err(ExitCode::SUCCESS);
    }
    Ok(s)
}

/// Prints a one-line usage error naming the flag, and returns exit code 2.
fn usage_error(message: &str) -> ExitCode {
    eprintln!("coordinator: {}", message.trim().replace('\n', " "));
    ExitCode::from(2)
}

/// The text of `--version`: the version, the commit, the compiled-in backends.
fn long_version() -> String {
    let backends: Vec<&str> = [BackendKind::Consul, BackendKind::Etcd, BackendKind::Memory]
        .into_iter()
        .filter(|b| b.is_compiled_in())
        .map(BackendKind::as_str)
        .collect();
    format!(
        "{} (commit {})\nbackends: {}\nmetrics: {}",
        env!("CARGO_PKG_VERSION"),
        env!("COORDINATOR_COMMIT"),
        backends.join(", "),
        if cfg!(feature = "prometheus") {
            "prometheus"
        } else {
            "none"
        },
    )
}

/// The command line with its generated texts filled in.
fn command() -> clap::Command {
    let version: &'static str = Box::leak(long_version().into_boxed_str());
    Cli::command().long_version(version)
}

/// A clap error on one line, naming the variable when the bad value came
/// from one rather than from the command line.
fn clap_error_line(e: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue};
    let text = e.to_string();
    let body = text
        .split("\n\nUsage:")
        .next()
        .and_then(|t| t.split("\n\nFor more information").next())
        .unwrap_or("invalid arguments");
    let mut line = body.split_whitespace().collect::<Vec<_>>().join(" ");
    line = line.trim_start_matches("error: ").to_owned();
    if let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) {
        let flag = arg.split(' ').next().unwrap_or(arg);
        if let Some(name) = flag.strip_prefix("--") {
            let var = settings::env_var(&name.replace('-', "_"));
            let given =
                |f: &str| std::env::args().any(|a| a == f || a.starts_with(&format!("{f}=")));
            if flag == "--http-addr" && given("--metrics-addr") {
                // Named as the operator wrote it: the alias.
                line = line.replace(&format!("'{arg}'"), "'--metrics-addr'");
            } else if !given(flag) && std::env::var_os(&var).is_some() {
                line = line.replace(&format!("'{arg}'"), &var);
            }
        }
    }
    line
}

fn main() -> ExitCode {
    let matches = match command().try_get_matches() {
        Ok(m) => m,
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
            return usage_error(&clap_error_line(&e));
        }
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => return usage_error(&clap_error_line(&e)),
    };
    // The matches of the command that runs (`work put`, not `work`): they
    // say whether a value came from a flag or a variable.
    let mut leaf = &matches;
    while let Some((_, sub)) = leaf.subcommand() {
        leaf = sub;
    }
    let leaf = leaf.clone();
    match cli.cmd {
        Cmd::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command(), "coordinator", &mut script);
            return write_out(&script, "the completion script");
        }
        Cmd::Man => {
            let mut page = Vec::new();
            if let Err(e) = clap_mangen::Man::new(command()).render(&mut page) {
                eprintln!("coordinator: cannot render the man page: {e}");
                return ExitCode::FAILURE;
            }
            return write_out(&page, "the man page");
        }
        _ => {}
    }
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
        Cmd::Worker(args) => runtime.block_on(worker::run(args, leaf)),
        Cmd::Demo(args) => runtime.block_on(demo::run(args)),
        Cmd::Member(args) => runtime.block_on(member::run(args, leaf)),
        Cmd::Work(args) => runtime.block_on(admin::work(args, leaf)),
        Cmd::Status(args) => runtime.block_on(admin::status(args, leaf)),
        Cmd::Drain(args) => runtime.block_on(admin::drain(args, leaf)),
        Cmd::Completions { .. } | Cmd::Man => unreachable!("handled above"),
    };
    // The stdin reader of the memory backend sits in a blocking read: do not wait for it.
    runtime.shutdown_timeout(Duration::from_millis(100));
    code
}

/// Writes `bytes` (`what`, for the error) to stdout whole. A reader that
/// left early (`| head`) is not an error: the output was not wanted further.
fn write_out(bytes: &[u8], what: &str) -> ExitCode {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("coordinator: cannot write {what}: {e}");
            ExitCode::FAILURE
        }
    }
}

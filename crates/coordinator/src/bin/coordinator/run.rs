//! What `coordinator worker` and `coordinator member` share to run: the
//! signals that stop them, their logs, the connection to the store, the
//! HTTP endpoints and `--exec` handler their settings ask for, and the
//! print loop that writes one JSON line per settled change (SPEC §5).

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::time::Duration;

use coordinator::{
    Backend, Changes, Error, ErrorChain, Revision, WorkId, Workload, WorkloadChange,
};
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::warn;

use crate::exec::{Handler, Job, OnHandled, Runner};
use crate::http::Http;
use crate::settings::{LogFormat, Settings};
use crate::usage_error;

/// One line of output (SPEC §5). Field order is part of the contract.
#[derive(Serialize)]
struct Line<'a> {
    instance_id: &'a str,
    revision: u64,
    workload: Vec<&'a str>,
    added: Vec<&'a str>,
    removed: Vec<&'a str>,
    /// Work ids whose value changed (an extension of SPEC §5's line).
    changed: Vec<&'a str>,
    /// With roles (SPEC §9): the items of `workload` held as primaries.
    #[serde(skip_serializing_if = "Option::is_none")]
    primary: Option<Vec<&'a str>>,
    /// With roles: the items of `workload` held as secondaries.
    #[serde(skip_serializing_if = "Option::is_none")]
    secondary: Option<Vec<&'a str>>,
}

/// What the print loop holds: the settled workload and the roles of its
/// items, as the changes so far made them.
#[derive(Debug, Default)]
pub(crate) struct Held {
    /// The settled workload.
    pub(crate) workload: Workload,
    /// The items of `workload` held as secondaries.
    pub(crate) secondaries: BTreeSet<WorkId>,
    /// Whether the lines carry `primary` and `secondary`: the configured
    /// `replicas` is above 1, or a secondary was seen; once on, it stays on
    /// so that scripts see one shape of line.
    pub(crate) roles: bool,
}

impl Held {
    /// Nothing held yet; roles on from the start when `replicas > 1`.
    pub(crate) fn new(replicas: u32) -> Self {
        Self {
            roles: replicas > 1,
            ..Self::default()
        }
    }

    /// Applies `change` (values and roles).
    pub(crate) fn apply(&mut self, change: &WorkloadChange) {
        change.apply_to(&mut self.workload);
        change.apply_roles_to(&mut self.secondaries);
        self.roles |= !self.secondaries.is_empty();
    }

    /// The items held as primaries, sorted.
    pub(crate) fn primaries(&self) -> impl Iterator<Item = &str> {
        self.workload
            .keys()
            .filter(|k| !self.secondaries.contains(*k))
            .map(|k| &**k)
    }

    /// The items held as secondaries, sorted.
    pub(crate) fn secondaries(&self) -> impl Iterator<Item = &str> {
        self.secondaries.iter().map(|k| &**k)
    }
}

/// Connects to the configured store; a bad setting or an unusable backend is
/// a usage error (exit 2) naming the setting as the operator wrote it. Ends
/// early (`Err(SUCCESS)`) on SIGINT/SIGTERM.
pub(crate) async fn connect(s: &Settings, shutdown: &mut Shutdown) -> Result<Backend, ExitCode> {
    let connected = tokio::select! {
        () = shutdown.recv() => return Err(ExitCode::SUCCESS),
        r = Backend::connect(&s.config) => r,
    };
    match connected {
        Ok(b) => Ok(b),
        Err(Error::Config(e)) => Err(s.refuse(&e)),
        Err(e) => Err(usage_error(&ErrorChain(&e).to_string())),
    }
}

/// The log filter when `RUST_LOG` is not set: our crates at info, every
/// dependency at warn, and none of rustify's / consulrs's lines (INFO chatter
/// per request, ERROR for answers the Consul backend handles itself).
pub(crate) const DEFAULT_LOG_FILTER: &str = "warn,coordinator=info,worker_core=info,\
backend_consul=info,backend_etcd=info,leader_core=info,rustify=off,consulrs=off";

fn default_filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER)
}

/// Whether log lines may be coloured: stderr is a terminal and `NO_COLOR`
/// is unset or empty (<https://no-color.org>).
fn colour() -> bool {
    use std::io::IsTerminal as _;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Logs to stderr in `format`; `RUST_LOG`, when set, replaces
/// [`DEFAULT_LOG_FILTER`].
pub(crate) fn init_logging(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default_filter());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(colour()).init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
}

/// Starts the HTTP endpoints if asked (`--http-addr`); a failure is a
/// usage error (exit 2) naming the setting as the operator wrote it.
pub(crate) fn serve_http(s: &Settings) -> Result<Http, ExitCode> {
    match s.program.http_addr {
        Some(addr) => Http::serve(addr, &s.config.instance_id, s.config.backend)
            .map_err(|e| usage_error(&format!("invalid {}: {e}", s.name_of("http_addr")))),
        None => Ok(Http::default()),
    }
}

/// The `--exec` handler, if one is given.
pub(crate) fn handler(s: &Settings) -> Option<Handler> {
    Handler::new(&s.program.exec, s.program.exec_timeout)
}

/// SIGINT and SIGTERM, registered when this is created: from then on either
/// signal is kept until [`recv`](Self::recv) sees it, instead of killing the
/// process.
pub(crate) struct Shutdown {
    #[cfg(unix)]
    signals: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Shutdown {
    /// Registers the handlers. Call first thing, inside the runtime.
    pub(crate) fn register() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let signals = signal(SignalKind::terminate())
                .and_then(|term| Ok((term, signal(SignalKind::interrupt())?)))
                .map_err(|e| eprintln!("coordinator: cannot handle signals: {e}"))
                .ok();
            Self { signals }
        }
        #[cfg(not(unix))]
        {
            Self {}
        }
    }

    /// Waits for SIGINT or SIGTERM. Cancel safe.
    pub(crate) async fn recv(&mut self) {
        self.recv_which().await;
    }

    /// Waits for SIGINT or SIGTERM and says which. Cancel safe.
    pub(crate) async fn recv_which(&mut self) -> Signal {
        #[cfg(unix)]
        {
            match &mut self.signals {
                Some((term, int)) => {
                    tokio::select! {
                        _ = term.recv() => Signal::Term,
                        _ = int.recv() => Signal::Int,
                    }
                }
                None => std::future::pending().await,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Signal::Int
        }
    }
}

/// Which signal arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    /// SIGTERM.
    Term,
    /// SIGINT (or Ctrl-C).
    Int,
}

/// How long lines still queued for stdout may take once the program stops.
const FLUSH_BOUND: Duration = Duration::from_millis(500);

/// Prints one JSON line per change until a signal, the end of `changes`, or a
/// closed stdout, and hands each change to `handler` (`--exec`) after its line.
/// Stdout is written by a task of its own through tokio's stdout, and the
/// handler runs in another, so a reader that stops reading or a slow handler
/// delays only the lines or the handlers, never the handling of a signal.
pub(crate) async fn print_until_stopped(
    instance_id: &str,
    replicas: u32,
    changes: Changes,
    handler: Option<Handler>,
    shutdown: &mut Shutdown,
) {
    print_until(
        instance_id,
        replicas,
        changes,
        handler,
        shutdown.recv(),
        None,
    )
    .await;
}

/// Prints one JSON line per change until `stop` completes, the end of
/// `changes`, or a closed stdout, and hands each change to `handler`
/// (`--exec`) after its line. `on_handled` hears of each change once its
/// line is out or, with a handler, once the handler exited 0 (a member
/// acknowledges the change then). With `replicas` above 1 the lines carry
/// the roles from the first one (see [`Held`]).
pub(crate) async fn print_until(
    instance_id: &str,
    replicas: u32,
    mut changes: Changes,
    handler: Option<Handler>,
    stop: impl std::future::Future<Output = ()>,
    on_handled: Option<OnHandled>,
) {
    let (on_written, on_success) = if handler.is_some() {
        (None, on_handled)
    } else {
        (on_handled, None)
    };
    let out = Output::spawn(on_written);
    let handlers = handler.map(|h| Runner::spawn(h, on_success));
    let mut held = Held::new(replicas);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            () = out.tx.closed() => {
                warn!(target: "coordinator::worker", "stdout closed; stopping");
                break;
            }
            change = changes.next() => {
                let Some(change) = change else { break };
                let line = json_line(instance_id, &mut held, &change);
                if let Some(h) = &handlers {
                    h.send(Job::new(instance_id, &line, &held, &change));
                }
                if !out.send(line, change.revision) {
                    warn!(target: "coordinator::worker", "stdout closed; stopping");
                    break;
                }
            }
        }
    }
    out.finish().await;
    if let Some(h) = handlers {
        h.finish().await;
    }
}

/// The stdout writer task and the queue feeding it.
struct Output {
    tx: mpsc::UnboundedSender<(String, Revision)>,
    task: JoinHandle<()>,
}

impl Output {
    fn spawn(on_written: Option<OnHandled>) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<(String, Revision)>();
        let task = tokio::spawn(async move {
            let mut stdout = tokio::io::stdout();
            while let Some((line, revision)) = rx.recv().await {
                if stdout.write_all(line.as_bytes()).await.is_err() || stdout.flush().await.is_err()
                {
                    return;
                }
                if let Some(f) = &on_written {
                    f(revision);
                }
            }
        });
        Self { tx, task }
    }

    /// Queues a line; false once stdout is closed.
    fn send(&self, line: String, revision: Revision) -> bool {
        self.tx.send((line, revision)).is_ok()
    }

    /// Lets the queued lines out, for at most [`FLUSH_BOUND`].
    async fn finish(self) {
        drop(self.tx);
        let _ = tokio::time::timeout(FLUSH_BOUND, self.task).await;
    }
}

/// Applies `change` to `held` and renders the JSON line (SPEC §5, with
/// `changed`; with roles, `primary` and `secondary` after it, SPEC §9),
/// newline included. Work ids are sorted in every list.
pub(crate) fn json_line(instance_id: &str, held: &mut Held, change: &WorkloadChange) -> String {
    fn sorted(mut v: Vec<&str>) -> Vec<&str> {
        v.sort_unstable();
        v
    }
    held.apply(change);
    let held = &*held;
    let line = Line {
        instance_id,
        revision: change.revision,
        workload: held.workload.keys().map(|k| &**k).collect(),
        added: sorted(change.added.iter().map(|(k, _)| &**k).collect()),
        removed: sorted(change.removed.iter().map(|k| &**k).collect()),
        changed: sorted(change.changed.iter().map(|(k, _)| &**k).collect()),
        primary: held.roles.then(|| held.primaries().collect()),
        secondary: held.roles.then(|| held.secondaries().collect()),
    };
    let mut text = serde_json::to_string(&line).expect("a line of strings and numbers");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use tracing::Level;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    #[test]
    fn default_filter_keeps_our_info_and_quiets_dependencies() {
        let subscriber = tracing_subscriber::registry().with(default_filter());
        tracing::subscriber::with_default(subscriber, || {
            macro_rules! ours_at_info {
                ($($target:literal),*) => {$(
                    assert!(tracing::enabled!(target: $target, Level::INFO), $target);
                    assert!(!tracing::enabled!(target: $target, Level::DEBUG), $target);
                )*};
            }
            ours_at_info!(
                "coordinator::worker",
                "worker_core::worker",
                "backend_consul::watch",
                "backend_etcd::watch",
                "leader_core::driver"
            );
            assert!(!tracing::enabled!(target: "rustify::endpoint", Level::INFO));
            assert!(!tracing::enabled!(target: "rustify::endpoint", Level::ERROR));
            assert!(!tracing::enabled!(target: "consulrs::client", Level::ERROR));
            assert!(!tracing::enabled!(target: "hyper::client", Level::INFO));
            assert!(tracing::enabled!(target: "hyper::client", Level::WARN));
            assert!(tracing::enabled!(target: "h2::proto", Level::ERROR));
        });
    }

    #[test]
    fn json_line_has_changed_after_removed_sorted() {
        let mut w = Held::new(1);
        let v = bytes::Bytes::from_static(b"v");
        let mut change = WorkloadChange::default();
        change.revision = 7;
        change.added = vec![("b".into(), v.clone()), ("a".into(), v.clone())];
        assert_eq!(
            json_line("m1", &mut w, &change),
            "{\"instance_id\":\"m1\",\"revision\":7,\"workload\":[\"a\",\"b\"],\
             \"added\":[\"a\",\"b\"],\"removed\":[],\"changed\":[]}\n"
        );
        let mut change = WorkloadChange::default();
        change.revision = 8;
        change.changed = vec![("b".into(), v.clone()), ("a".into(), v)];
        assert!(json_line("m1", &mut w, &change).ends_with("\"changed\":[\"a\",\"b\"]}\n"));
    }

    fn change(f: impl FnOnce(&mut WorkloadChange)) -> WorkloadChange {
        let mut c = WorkloadChange::default();
        f(&mut c);
        c
    }

    #[test]
    fn json_line_has_roles_after_changed_with_replicas() {
        let v = bytes::Bytes::from_static(b"v");
        let mut w = Held::new(2);
        let first = change(|c| {
            c.revision = 3;
            c.added = vec![("a".into(), v.clone())];
        });
        assert_eq!(
            json_line("m1", &mut w, &first),
            "{\"instance_id\":\"m1\",\"revision\":3,\"workload\":[\"a\"],\
             \"added\":[\"a\"],\"removed\":[],\"changed\":[],\
             \"primary\":[\"a\"],\"secondary\":[]}\n",
            "replicas > 1: roles from the first line"
        );
        let next = change(|c| {
            c.revision = 4;
            c.added = vec![("c".into(), v.clone()), ("b".into(), v.clone())];
            c.added_secondaries = vec!["b".into(), "c".into()];
            c.demoted = vec!["a".into()];
        });
        assert_eq!(
            json_line("m1", &mut w, &next),
            "{\"instance_id\":\"m1\",\"revision\":4,\"workload\":[\"a\",\"b\",\"c\"],\
             \"added\":[\"b\",\"c\"],\"removed\":[],\"changed\":[],\
             \"primary\":[],\"secondary\":[\"a\",\"b\",\"c\"]}\n"
        );
        let last = change(|c| {
            c.revision = 5;
            c.promoted = vec!["b".into()];
            c.removed = vec!["c".into()];
        });
        assert!(json_line("m1", &mut w, &last).ends_with(
            "\"removed\":[\"c\"],\"changed\":[],\"primary\":[\"b\"],\"secondary\":[\"a\"]}\n"
        ));
    }

    #[test]
    fn json_line_gains_roles_once_a_secondary_is_seen_and_keeps_them() {
        let v = bytes::Bytes::from_static(b"v");
        let mut w = Held::new(1);
        let plain = change(|c| c.added = vec![("a".into(), v.clone())]);
        let line = json_line("m1", &mut w, &plain);
        assert!(line.ends_with("\"changed\":[]}\n"), "{line}");
        let secondary = change(|c| {
            c.added = vec![("b".into(), v.clone())];
            c.added_secondaries = vec!["b".into()];
        });
        let line = json_line("m1", &mut w, &secondary);
        assert!(
            line.ends_with("\"primary\":[\"a\"],\"secondary\":[\"b\"]}\n"),
            "{line}"
        );
        let gone = change(|c| c.removed = vec!["b".into()]);
        let line = json_line("m1", &mut w, &gone);
        assert!(
            line.ends_with("\"primary\":[\"a\"],\"secondary\":[]}\n"),
            "the shape stays: {line}"
        );
    }
}

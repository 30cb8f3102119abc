//! What `coordinator worker` and `coordinator member` share to run: the
//! signals that stop them, their logs, the connection to the store, the
//! HTTP endpoints and `--exec` handler their settings ask for, and the
//! print loop that writes one JSON line per settled change (SPEC §5).

use std::process::ExitCode;
use std::time::Duration;

use coordinator::{Backend, Changes, Error, ErrorChain, Revision, Workload, WorkloadChange};
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
    changes: Changes,
    handler: Option<Handler>,
    shutdown: &mut Shutdown,
) {
    print_until(instance_id, changes, handler, shutdown.recv(), None).await;
}

/// Prints one JSON line per change until `stop` completes, the end of
/// `changes`, or a closed stdout, and hands each change to `handler`
/// (`--exec`) after its line. `on_handled` hears of each change once its
/// line is out or, with a handler, once the handler exited 0 (a member
/// acknowledges the change then).
pub(crate) async fn print_until(
    instance_id: &str,
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
    let mut workload = Workload::new();
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
                let line = json_line(instance_id, &mut workload, &change);
                if let Some(h) = &handlers {
                    h.send(Job::new(instance_id, &line, &workload, &change));
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

/// Applies `change` to `workload` and renders the JSON line (SPEC §5, with
/// `changed`), newline included. Work ids are sorted in every list.
pub(crate) fn json_line(
    instance_id: &str,
    workload: &mut Workload,
    change: &WorkloadChange,
) -> String {
    fn sorted(mut v: Vec<&str>) -> Vec<&str> {
        v.sort_unstable();
        v
    }
    change.apply_to(workload);
    let line = Line {
        instance_id,
        revision: change.revision,
        workload: workload.keys().map(|k| &**k).collect(),
        added: sorted(change.added.iter().map(|(k, _)| &**k).collect()),
        removed: sorted(change.removed.iter().map(|k| &**k).collect()),
        changed: sorted(change.changed.iter().map(|(k, _)| &**k).collect()),
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
        let mut w = Workload::new();
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
}

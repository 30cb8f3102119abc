//! `--exec CMD [ARGS...]`: a handler run for each settled change, like
//! `consul watch -handler`.
//!
//! The handler gets the change's JSON line (the one printed on stdout) on its
//! stdin and the change in `COORDINATOR_*` environment variables (with
//! roles, as the line has them, also `COORDINATOR_PRIMARY`,
//! `COORDINATOR_SECONDARY`, `COORDINATOR_PROMOTED` and
//! `COORDINATOR_DEMOTED`). Handlers run
//! one at a time, in the order of the changes, in a task of their own, so a
//! slow handler delays only the handlers after it, never the output or the
//! handling of a signal. A handler that fails is logged with its exit status,
//! and the next change is handled as usual.

use std::fmt;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use coordinator::{Revision, WorkloadChange};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::run::Held;

/// How long a handler still running when the program stops may take to end
/// before it is killed. Changes queued behind it are not handled.
pub(crate) const STOP_BOUND: Duration = Duration::from_secs(10);

/// The command to run for each change.
#[derive(Debug, Clone)]
pub(crate) struct Handler {
    program: String,
    args: Vec<String>,
    /// `--exec-timeout`: a handler running longer is killed.
    timeout: Option<Duration>,
}

/// Called with a change's revision once it is handled: its line written and
/// flushed, or, with `--exec`, its handler exited 0.
pub(crate) type OnHandled = Arc<dyn Fn(Revision) + Send + Sync>;

/// One settled change, ready for the handler.
#[derive(Debug)]
pub(crate) struct Job {
    /// The store revision of the change.
    pub(crate) revision: u64,
    /// The JSON line, newline included.
    line: String,
    env: Vec<(&'static str, String)>,
}

/// Why a handler did not succeed.
#[derive(Debug)]
pub(crate) enum HandlerError {
    /// The command could not be started.
    Spawn(std::io::Error),
    /// Waiting for it failed.
    Wait(std::io::Error),
    /// It ended with a status other than 0 (or was killed by a signal).
    Failed(ExitStatus),
    /// It ran longer than `--exec-timeout` and was killed.
    TimedOut(Duration),
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Spawn(e) => write!(f, "cannot start the handler: {e}"),
            Self::Wait(e) => write!(f, "cannot wait for the handler: {e}"),
            Self::Failed(status) => write!(f, "the handler ended with {status}"),
            Self::TimedOut(t) => write!(
                f,
                "the handler ran longer than --exec-timeout ({t:?}) and was killed"
            ),
        }
    }
}

/// Work ids, one per line, in the order given (sorted by the caller).
fn lines<'a>(ids: impl IntoIterator<Item = &'a str>) -> String {
    ids.into_iter().collect::<Vec<_>>().join("\n")
}

fn sorted<'a>(ids: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let mut v: Vec<&str> = ids.into_iter().collect();
    v.sort_unstable();
    v
}

impl Job {
    /// The job for `change`; `held` is the settled workload after it and
    /// `line` the JSON line printed for it. When the line carries roles, so
    /// does the environment.
    pub(crate) fn new(instance_id: &str, line: &str, held: &Held, change: &WorkloadChange) -> Self {
        let workload = &held.workload;
        let mut env = vec![
            ("COORDINATOR_INSTANCE_ID", instance_id.to_owned()),
            ("COORDINATOR_REVISION", change.revision.to_string()),
            ("COORDINATOR_INITIAL", change.initial.to_string()),
            ("COORDINATOR_WORKLOAD", lines(workload.keys().map(|k| &**k))),
            (
                "COORDINATOR_ADDED",
                lines(sorted(change.added.iter().map(|(k, _)| &**k))),
            ),
            (
                "COORDINATOR_REMOVED",
                lines(sorted(change.removed.iter().map(|k| &**k))),
            ),
            (
                "COORDINATOR_CHANGED",
                lines(sorted(change.changed.iter().map(|(k, _)| &**k))),
            ),
        ];
        if held.roles {
            env.extend([
                ("COORDINATOR_PRIMARY", lines(held.primaries())),
                ("COORDINATOR_SECONDARY", lines(held.secondaries())),
                (
                    "COORDINATOR_PROMOTED",
                    lines(sorted(change.promoted.iter().map(|k| &**k))),
                ),
                (
                    "COORDINATOR_DEMOTED",
                    lines(sorted(change.demoted.iter().map(|k| &**k))),
                ),
            ]);
        }
        Self {
            revision: change.revision,
            line: line.to_owned(),
            env,
        }
    }
}

impl Handler {
    /// `cmd` is the program followed by its arguments; `None` when empty.
    /// A handler running longer than `timeout` is killed.
    pub(crate) fn new(cmd: &[String], timeout: Option<Duration>) -> Option<Self> {
        let (program, args) = cmd.split_first()?;
        Some(Self {
            program: program.clone(),
            args: args.to_vec(),
            timeout,
        })
    }

    /// Runs the handler for `job` and waits until it has exited: `Ok` when
    /// it exited 0. Its stdout and stderr go to the program's stderr (stdout
    /// is for the JSON lines). Dropping the future kills the handler.
    pub(crate) async fn run(&self, job: &Job) -> Result<(), HandlerError> {
        let mut child = Command::new(&self.program)
            .args(&self.args)
            .envs(job.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(stderr())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(HandlerError::Spawn)?;
        let mut stdin = child.stdin.take().expect("piped");
        let line = job.line.as_bytes();
        let feed = async move {
            // A handler that does not read its stdin closes it by exiting:
            // that broken pipe is not an error.
            let _ = stdin.write_all(line).await;
            drop(stdin);
        };
        let waited = async {
            let ((), status) = tokio::join!(feed, child.wait());
            status
        };
        let status = match self.timeout {
            Some(limit) => {
                let Ok(status) = tokio::time::timeout(limit, waited).await else {
                    // Killed, and reaped so that no zombie is left.
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    return Err(HandlerError::TimedOut(limit));
                };
                status
            }
            None => waited.await,
        };
        match status {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(HandlerError::Failed(s)),
            Err(e) => Err(HandlerError::Wait(e)),
        }
    }
}

/// The program's stderr, for the handler's stdout.
fn stderr() -> Stdio {
    #[cfg(unix)]
    {
        use std::os::fd::AsFd;
        match std::io::stderr().as_fd().try_clone_to_owned() {
            Ok(fd) => Stdio::from(fd),
            Err(_) => Stdio::null(),
        }
    }
    #[cfg(not(unix))]
    {
        Stdio::null()
    }
}

/// Where the outcome of the handler for the change at `revision` lands: the
/// change counts as handled when `result` is `Ok` (the handler exited 0),
/// and only then is `on_success` (a member's acknowledgement) told.
fn handled(revision: u64, result: Result<(), HandlerError>, on_success: Option<&OnHandled>) {
    match result {
        Ok(()) => {
            debug!(revision, "handler done");
            if let Some(f) = on_success {
                f(revision);
            }
        }
        Err(e) => warn!(revision, error = %e, "handler failed; carrying on with the next change"),
    }
}

/// The task that runs the handler for each queued change, one at a time.
pub(crate) struct Runner {
    tx: mpsc::UnboundedSender<Job>,
    stopping: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Runner {
    /// Starts the task.
    pub(crate) fn spawn(handler: Handler, on_success: Option<OnHandled>) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        let stopping = Arc::new(AtomicBool::new(false));
        let stop = stopping.clone();
        let task = tokio::spawn(async move {
            while let Some(job) = rx.recv().await {
                if stop.load(Ordering::Relaxed) {
                    let skipped = 1 + rx.len();
                    info!(
                        skipped,
                        "stopping: queued changes not handed to the handler"
                    );
                    return;
                }
                let result = handler.run(&job).await;
                handled(job.revision, result, on_success.as_ref());
            }
        });
        Self { tx, stopping, task }
    }

    /// Queues a change for the handler.
    pub(crate) fn send(&self, job: Job) {
        let _ = self.tx.send(job);
    }

    /// Stops: the handler running now may finish within [`STOP_BOUND`]
    /// (then it is killed); changes still queued are not handled.
    pub(crate) async fn finish(self) {
        let Self {
            tx,
            stopping,
            mut task,
        } = self;
        stopping.store(true, Ordering::Relaxed);
        drop(tx);
        if tokio::time::timeout(STOP_BOUND, &mut task).await.is_err() {
            warn!(bound = ?STOP_BOUND, "handler still running at exit; killing it");
            task.abort();
            let _ = task.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(job: &'a Job, name: &str) -> Option<&'a str> {
        job.env
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn the_environment_has_roles_when_the_line_has_them() {
        let v = bytes::Bytes::from_static(b"v");
        let mut change = WorkloadChange::default();
        change.added = vec![("b".into(), v.clone()), ("a".into(), v)];
        change.added_secondaries = vec!["b".into()];

        let mut plain = Held::new(1);
        plain.workload.insert("a".into(), bytes::Bytes::new());
        let job = Job::new("m1", "{}", &plain, &change);
        assert_eq!(env(&job, "COORDINATOR_WORKLOAD"), Some("a"));
        for name in [
            "COORDINATOR_PRIMARY",
            "COORDINATOR_SECONDARY",
            "COORDINATOR_PROMOTED",
            "COORDINATOR_DEMOTED",
        ] {
            assert_eq!(env(&job, name), None, "{name} without roles");
        }

        let mut held = Held::new(2);
        held.apply(&change);
        let mut next = WorkloadChange::default();
        next.promoted = vec!["b".into()];
        next.demoted = vec!["a".into()];
        held.apply(&next);
        let job = Job::new("m1", "{}", &held, &next);
        assert_eq!(env(&job, "COORDINATOR_WORKLOAD"), Some("a\nb"));
        assert_eq!(env(&job, "COORDINATOR_PRIMARY"), Some("b"));
        assert_eq!(env(&job, "COORDINATOR_SECONDARY"), Some("a"));
        assert_eq!(env(&job, "COORDINATOR_PROMOTED"), Some("b"));
        assert_eq!(env(&job, "COORDINATOR_DEMOTED"), Some("a"));
    }
}

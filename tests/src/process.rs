//! The `coordinator` program as a child process of a test: its stderr kept in a log file
//! (whose last lines a failure shows), its output read line by line in a task of its own,
//! and the signals that stop it.

use std::collections::BTreeMap;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::coordinator_bin;

/// Flags that make a member or worker settle fast: a 100 ms soak, a 500 ms leader settle
/// and a 500 ms leader soak.
pub const FAST: [&str; 6] = [
    "--soak",
    "100ms",
    "--leader-settle",
    "500ms",
    "--leader-soak",
    "500ms",
];

/// The flags that name the store: `--backend BACKEND --endpoints ENDPOINTS`.
#[must_use]
pub fn store_flags(backend: &str, endpoints: &str) -> Vec<String> {
    vec![
        "--backend".into(),
        backend.into(),
        "--endpoints".into(),
        endpoints.into(),
    ]
}

/// A child's stderr, kept in a temporary file (removed on drop).
pub struct Log(tempfile::NamedTempFile);

impl Log {
    /// A new, empty log file.
    ///
    /// # Panics
    /// If the file cannot be created.
    #[must_use]
    pub fn new() -> Self {
        Self(tempfile::NamedTempFile::new().expect("log file"))
    }

    /// What was written to it so far (empty if it cannot be read).
    #[must_use]
    pub fn text(&self) -> String {
        std::fs::read_to_string(self.0.path()).unwrap_or_default()
    }

    /// Its last `n` lines.
    #[must_use]
    pub fn tail(&self, n: usize) -> String {
        let text = self.text();
        let tail: Vec<&str> = text.lines().rev().take(n).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

impl Default for Log {
    fn default() -> Self {
        Self::new()
    }
}

/// The last `n` lines of each of `logs`, each under a `--- ID` heading.
#[must_use]
pub fn log_tails(logs: &BTreeMap<String, Log>, n: usize) -> String {
    logs.iter()
        .map(|(id, log)| format!("--- {id}\n{}", log.tail(n)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The `coordinator` program logging at `info` into `log`, with no stdin, its stdout piped,
/// and killed on drop; the caller adds the arguments and spawns it.
///
/// # Panics
/// If the log file cannot be opened again for the child.
#[must_use]
pub fn logged_command(log: &Log) -> Command {
    let mut c = Command::new(coordinator_bin());
    c.env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log.0.reopen().expect("reopen log"))
        .kill_on_drop(true);
    c
}

/// Reads `r` line by line into a channel, in a task of its own, until it ends or the
/// receiver is dropped.
pub fn lines_of<R: AsyncRead + Unpin + Send + 'static>(r: R) -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(r).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Sends `sig` to `child`.
///
/// # Panics
/// If `child` already exited or the signal cannot be sent.
pub fn signal(child: &Child, sig: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id().expect("running")).unwrap());
    nix::sys::signal::kill(pid, sig).expect("send signal");
}

/// Sends SIGTERM to `child` and waits for it to exit, for at most `bound`.
///
/// # Panics
/// If it does not exit within `bound`, naming `what`.
pub async fn terminate(child: &mut Child, bound: Duration, what: &str) -> ExitStatus {
    signal(child, nix::sys::signal::Signal::SIGTERM);
    tokio::time::timeout(bound, child.wait())
        .await
        .unwrap_or_else(|_| panic!("{what} did not exit within {bound:?} after SIGTERM"))
        .expect("wait")
}

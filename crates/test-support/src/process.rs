//! A child process whose output goes to a log file, killed on drop.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How a managed process is started; it can be started again with the same arguments.
pub(crate) struct ManagedProcess {
    name: String,
    program: PathBuf,
    args: Vec<OsString>,
    /// Prefixes of inherited variables that are removed (e.g. `ETCD` for etcd).
    env_remove_prefixes: Vec<String>,
    log_path: PathBuf,
    child: Option<Child>,
}

impl ManagedProcess {
    pub(crate) fn new(name: impl Into<String>, program: PathBuf, log_path: PathBuf) -> Self {
        Self {
            name: name.into(),
            program,
            args: Vec::new(),
            env_remove_prefixes: Vec::new(),
            log_path,
            child: None,
        }
    }

    pub(crate) fn arg(&mut self, arg: impl Into<OsString>) -> &mut Self {
        self.args.push(arg.into());
        self
    }

    pub(crate) fn env_remove_prefix(&mut self, prefix: &str) -> &mut Self {
        self.env_remove_prefixes.push(prefix.to_owned());
        self
    }

    pub(crate) fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Starts the process (it must not be running), appending its output to the log file.
    pub(crate) fn spawn(&mut self) {
        assert!(
            !self.is_running(),
            "{}: spawn while still running",
            self.name
        );
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap_or_else(|e| panic!("open log {}: {e}", self.log_path.display()));
        let cmdline = std::iter::once(self.program.as_os_str())
            .chain(self.args.iter().map(OsString::as_os_str))
            .map(|s| s.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        let _ = writeln!(log, "===== test-support: starting {}: {cmdline}", self.name);
        let stderr = log.try_clone().expect("clone log file handle");
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(stderr));
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            if self
                .env_remove_prefixes
                .iter()
                .any(|p| k.starts_with(p.as_str()))
            {
                cmd.env_remove(&key);
            }
        }
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "{}: cannot start {}: {e} (run scripts/install-stores?)",
                self.name,
                self.program.display()
            )
        });
        self.child = Some(child);
    }

    /// Whether the process is running (reaps it when it has exited).
    pub(crate) fn is_running(&mut self) -> bool {
        match &mut self.child {
            None => false,
            Some(child) => match child.try_wait() {
                Ok(None) => true,
                Ok(Some(_)) | Err(_) => false,
            },
        }
    }

    /// The exit status when the process was started and has exited.
    pub(crate) fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL and reap. No-op when not running.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }

    /// SIGTERM, wait up to `grace` for exit, then SIGKILL.
    pub(crate) async fn stop(&mut self, grace: Duration) {
        let Some(pid) = self.pid() else { return };
        if self.is_running() {
            if let Ok(pid) = i32::try_from(pid) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
            let deadline = tokio::time::Instant::now() + grace;
            while self.is_running() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        self.kill();
    }

    /// The last `lines` lines of the log file.
    pub(crate) fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read(&self.log_path).map_or_else(
            |e| format!("<cannot read {}: {e}>", self.log_path.display()),
            |b| String::from_utf8_lossy(&b).into_owned(),
        );
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Kills the process and returns `message` with the process state and the tail of its
    /// log, for a panic.
    pub(crate) fn failure(&mut self, message: &str) -> String {
        let state = match self.exit_status() {
            Some(status) => format!("exited: {status}"),
            None if self.child.is_some() => "still running".to_owned(),
            None => "not started".to_owned(),
        };
        let tail = self.log_tail(60);
        self.kill();
        format!(
            "{}: {message} (process {state}); log {}:\n----- log tail -----\n{tail}\n-----",
            self.name,
            self.log_path.display()
        )
    }
}

/// Whether a startup failure looks like a lost race for a port (worth a retry on new ports).
pub(crate) fn is_port_conflict(failure: &str) -> bool {
    failure.contains("address already in use")
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

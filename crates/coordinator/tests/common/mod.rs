//! What the program's tests share: the binary under test, the bound on waits,
//! scratch directories, free ports, and a running program's lines, stdin and
//! signals.

// Each test binary uses a part of it.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};
use tokio::sync::mpsc;
use tokio::time::timeout;

/// The `coordinator` program of this build.
pub const BIN: &str = env!("CARGO_BIN_EXE_coordinator");
/// Bound on every wait for the program.
pub const WAIT: Duration = Duration::from_secs(30);

/// A scratch directory, removed on drop.
pub struct Scratch(PathBuf);

impl Scratch {
    /// A new empty directory for the test `name` of this process.
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("coordinator-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// The path of `file` in it.
    pub fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }

    /// Writes `text` to `name` in it; the file's path.
    pub fn file(&self, name: &str, text: &str) -> String {
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A loopback port nothing listens on (yet).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Reads `r` line by line into a channel, in a task of its own, until it
/// ends or the receiver is dropped.
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

/// Writes `commands` to the program's stdin (the memory store's commands).
pub async fn feed(stdin: &mut ChildStdin, commands: &str) {
    stdin.write_all(commands.as_bytes()).await.unwrap();
    stdin.flush().await.unwrap();
}

/// Sends `signal` (`-TERM`, `-INT`, ...) to `child` with `kill`.
pub fn kill(child: &Child, signal: &str) {
    let pid = child.id().expect("running").to_string();
    let ok = std::process::Command::new("kill")
        .args([signal, &pid])
        .status()
        .unwrap();
    assert!(ok.success());
}

/// SIGTERM, then the exit status within [`WAIT`].
pub async fn terminate(child: &mut Child) -> ExitStatus {
    kill(child, "-TERM");
    timeout(WAIT, child.wait())
        .await
        .expect("exit after SIGTERM")
        .unwrap()
}

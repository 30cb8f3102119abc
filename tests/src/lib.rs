//! End-to-end suites of coordinator live in `tests/tests/`; this library holds what they
//! share: the fault-scenario harness and invariant checker ([`scenario`]), direct access to
//! the real stores ([`stores`]), a tracing capture to measure detection times and check logs
//! ([`capture`]), the program as a child process with its log ([`process`]), and the measured
//! fault table ([`report`]).
#![allow(clippy::missing_panics_doc)] // end-to-end test helpers: they panic when a check fails, by design

pub mod capture;
pub mod faults;
pub mod process;
pub mod report;
pub mod scenario;
pub mod stores;

use std::path::PathBuf;
use std::time::Duration;

pub use scenario::{Expect, Fault, Harness, Knobs, Measured, Path, Publication, State, KNOBS};
pub use stores::{StoreKind, StoreServer};

/// Bound on waits for expected events (generous for a loaded 2-core machine).
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(45);

/// Serializes the scenarios of one test binary: their timings and CPU figures must not be
/// disturbed by each other (the process CPU counter covers the whole process).
/// A test that panics releases it (no poisoning).
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// User + system CPU time of this process so far (`/proc/self/stat`, 100 ticks a second).
pub fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("read /proc/self/stat");
    // Fields after the command name (which is in parentheses and may hold spaces):
    // state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 =
        fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// Awaits `fut` for at most [`EVENT_TIMEOUT`], panicking with `what`.
pub async fn bounded<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(EVENT_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {EVENT_TIMEOUT:?} waiting for {what}"))
}

/// The `coordinator` program of this build: `<target>/<profile>/coordinator`, next to the
/// `deps/` directory holding the test executable. `cargo test --workspace` builds it (the
/// `coordinator` package has integration tests); alone, run
/// `cargo build -p kv-coordinator --features consul,etcd` first. Panics naming that command
/// when it is missing.
pub fn coordinator_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("COORDINATOR_BIN").filter(|b| !b.is_empty()) {
        return PathBuf::from(bin);
    }
    // <target>/<profile>/deps/<test>-<hash> -> <target>/<profile>/coordinator
    let exe = std::env::current_exe().expect("current_exe");
    let bin = exe
        .parent()
        .and_then(std::path::Path::parent)
        .map(|d| d.join("coordinator"))
        .expect("target dir");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p kv-coordinator --features consul,etcd` \
         (cargo test --workspace --all-features does this), or set COORDINATOR_BIN",
        bin.display()
    );
    bin
}

/// The README's code, compiled as a doc test (`cargo test --doc`), so that
/// what it shows keeps building against the library.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

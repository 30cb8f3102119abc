//! Test harness for the coordinator workspace: real Consul agents and etcd servers on free
//! loopback ports, a throw-away PKI, and a TCP proxy that injects faults.
//!
//! Binaries are looked up in this order (see [`consul_bin`], [`etcd_bin`], [`etcdctl_bin`]):
//! the variable `CONSUL_BIN` / `ETCD_BIN` / `ETCDCTL_BIN`, then `PATH`, then
//! `${COORDINATOR_TOOLS_DIR:-$HOME/.cache/coordinator-tools}/bin` (where
//! `scripts/install-stores` puts them). A missing binary is a panic naming that script: tests
//! fail loudly, they never skip.
//!
//! Everything listens on `127.0.0.1` only. Every server kills its process and removes its
//! temporary directory on drop, also when the test panics.
#![allow(clippy::missing_panics_doc)] // test harness: it panics when a server cannot start, by design

mod bins;
pub mod consul;
pub mod etcd;
mod http;
pub mod pki;
mod ports;
mod process;
pub mod proxy;

use std::future::Future;
use std::time::Duration;

pub use bins::{consul_bin, etcd_bin, etcdctl_bin, tools_dir};
pub use consul::{ConsulAgent, ConsulBuilder};
pub use etcd::{EtcdBuilder, EtcdCluster, EtcdServer};
pub use pki::{TestPki, TlsFiles};
pub use ports::{free_port, free_ports};
pub use proxy::{FaultProxy, ProxyMode};

/// Default bound on how long a server may take to become ready (generous for a loaded
/// 2-core machine).
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Calls `check` every 20 ms until it returns `Some`, and returns that value.
///
/// Panics with `what` in the message when `timeout` passes first. Use it instead of sleeping
/// when a test waits for an event.
pub async fn poll_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

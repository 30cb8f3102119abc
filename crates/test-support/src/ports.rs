//! Free loopback ports.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::sync::Mutex;

/// Ports already handed out by this process, so that two calls never return the same port.
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// A TCP port on `127.0.0.1` that was free a moment ago (bound to port 0, then released).
///
/// Never returns the same port twice within one process.
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `n` distinct free TCP ports on `127.0.0.1` (see [`free_port`]).
pub fn free_ports(n: usize) -> Vec<u16> {
    let mut listeners = Vec::with_capacity(n);
    let mut ports = Vec::with_capacity(n);
    let mut handed_out = HANDED_OUT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut attempts = 0;
    while ports.len() < n {
        attempts += 1;
        assert!(attempts < 10_000, "could not find {n} free loopback ports");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        if handed_out.insert(port) {
            ports.push(port);
        }
        // Keep every listener open until all are chosen so that the kernel picks distinct ones.
        listeners.push(listener);
    }
    ports
}

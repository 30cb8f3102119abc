//! `coordinator worker`.

use std::process::ExitCode;

use clap::ArgMatches;
use coordinator::MemoryStore;
use tokio::io::AsyncBufReadExt;
use tracing::{info, warn};

use crate::run::{connect, handler, init_logging, print_until_stopped, serve_http, Shutdown};
use crate::{finish_settings, worker_settings, WorkerArgs};

pub async fn run(args: WorkerArgs, m: ArgMatches) -> ExitCode {
    // First of all, so that a signal at any later moment halts and exits 0.
    let mut shutdown = Shutdown::register();
    let s =
        match worker_settings(&args, &m).and_then(|s| finish_settings(s, &args.conn, |_| Ok(()))) {
            Ok(s) => s,
            Err(code) => return code,
        };
    init_logging(s.program.log_format);
    let http = match serve_http(&s) {
        Ok(h) => h,
        Err(code) => return code,
    };
    let config = &s.config;
    let backend = match connect(&s, &mut shutdown).await {
        Ok(b) => b,
        Err(code) => return code,
    };
    if let Some(store) = backend.memory_store() {
        // A standalone memory store: this process is its own leader, and stdin
        // feeds the store (`put KEY [VALUE]`, `del KEY`, `leader ID`, `no-leader`).
        store.set_leader("local");
        tokio::spawn(feed_memory_store(store.clone()));
    }
    let worker = match backend.spawn_worker(config) {
        Ok(w) => w,
        Err(e) => return s.refuse(&e),
    };
    http.worker(&worker);
    info!(backend = %config.backend, instance_id = %config.instance_id, "coordinator worker running");
    print_until_stopped(
        &config.instance_id,
        config.replicas,
        worker.changes(),
        handler(&s),
        &mut shutdown,
    )
    .await;
    worker.halt().await;
    ExitCode::SUCCESS
}

/// Reads commands for the standalone memory store from stdin until EOF.
async fn feed_memory_store(store: MemoryStore) {
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let mut parts = line.trim().splitn(3, ' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("put"), Some(key), value) => {
                store.put(key, value.unwrap_or("").to_owned());
            }
            (Some("del"), Some(key), None) => {
                store.delete(key);
            }
            (Some("leader"), Some(id), None) => {
                store.set_leader(id);
            }
            (Some("no-leader"), None, None) => store.clear_leader(),
            (Some("") | None, ..) => {}
            _ => {
                warn!(line = %line, "unknown memory-store command (put KEY [VALUE] | del KEY | leader ID | no-leader)");
            }
        }
    }
}

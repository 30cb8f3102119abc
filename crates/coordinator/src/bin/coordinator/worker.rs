//! `coordinator worker`.

use std::io::Write;
use std::process::ExitCode;

use coordinator::{Backend, Config, Error, ErrorChain, MemoryStore, Workload, WorkloadChange};
use serde::Serialize;
use tokio::io::AsyncBufReadExt;
use tracing::{info, warn};

use crate::{usage_error, WorkerArgs};

/// One line of output (SPEC §5). Field order is part of the contract.
#[derive(Serialize)]
struct Line<'a> {
    instance_id: &'a str,
    revision: u64,
    workload: Vec<&'a str>,
    added: Vec<&'a str>,
    removed: Vec<&'a str>,
}

pub(crate) fn config_of(args: WorkerArgs) -> Config {
    let mut c = Config::new(args.backend, args.instance_id);
    c.endpoints = args
        .endpoints
        .into_iter()
        .filter(|e| !e.trim().is_empty())
        .collect();
    c.prefix = args.prefix;
    c.leader = args.leader;
    c.soak = args.soak;
    c.max_soak = args.max_soak;
    c.leader_settle = args.leader_settle;
    c.consul_wait = args.consul_wait;
    c.etcd_keepalive = args.etcd_keepalive;
    c.token_file = args.token_file;
    c.ca_cert = args.ca_cert;
    c.client_cert = args.client_cert;
    c.client_key = args.client_key;
    c.user = args.user;
    c.password_file = args.password_file;
    c
}

/// Maps a config field to the flag that sets it.
pub(crate) fn flag(field: &str) -> String {
    format!("--{}", field.replace('_', "-"))
}

pub(crate) fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}

pub async fn run(args: WorkerArgs) -> ExitCode {
    let config = config_of(args);
    if let Err(e) = config.validate() {
        return usage_error(&format!("invalid {}: {}", flag(e.field), e.reason));
    }
    init_logging();
    let backend = match Backend::connect(&config).await {
        Ok(b) => b,
        Err(Error::Config(e)) => {
            return usage_error(&format!("invalid {}: {}", flag(e.field), e.reason))
        }
        Err(e) => return usage_error(&ErrorChain(&e).to_string()),
    };
    if let Some(store) = backend.memory_store() {
        // A standalone memory store: this process is its own leader, and stdin
        // feeds the store (`put KEY [VALUE]`, `del KEY`, `leader ID`, `no-leader`).
        store.set_leader("local");
        tokio::spawn(feed_memory_store(store.clone()));
    }
    let worker = match backend.spawn_worker(&config) {
        Ok(w) => w,
        Err(e) => return usage_error(&format!("invalid {}: {}", flag(e.field), e.reason)),
    };
    info!(backend = %config.backend, instance_id = %config.instance_id, "coordinator worker running");
    let mut changes = worker.changes();
    let mut workload = Workload::new();
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            change = changes.next() => {
                let Some(change) = change else { break };
                if !print_line(&config.instance_id, &mut workload, &change) {
                    warn!("stdout closed; stopping");
                    break;
                }
            }
        }
    }
    worker.halt().await;
    ExitCode::SUCCESS
}

pub(crate) fn print_line(
    instance_id: &str,
    workload: &mut Workload,
    change: &WorkloadChange,
) -> bool {
    change.apply_to(workload);
    let line = Line {
        instance_id,
        revision: change.revision,
        workload: workload.keys().map(|k| &**k).collect(),
        added: change.added.iter().map(|(k, _)| &**k).collect(),
        removed: change.removed.iter().map(|k| &**k).collect(),
    };
    let Ok(mut text) = serde_json::to_string(&line) else {
        return false;
    };
    text.push('\n');
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .is_ok()
}

pub(crate) async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
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

//! `coordinator member`: a full member (registers, campaigns, leads while
//! elected) that prints its settled workload as `coordinator worker` does.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use coordinator::config::parse_duration;
use coordinator::leader::layout::{
    DEFAULT_DRAIN_PREFIX, DEFAULT_HANDOFF_PREFIX, DEFAULT_MEMBERS_PREFIX, DEFAULT_SEQUENCE_KEY,
    DEFAULT_WORK_PREFIX,
};
use coordinator::Left;
use tracing::{info, warn};

use crate::worker::{config_of, connect, init_logging, print_until, OnHandled, Shutdown, Signal};
use crate::{config_error, WorkerArgs};

/// Flags of `coordinator member`: every flag of `coordinator worker`, and these.
#[derive(Args, Debug, Clone)]
pub struct MemberArgs {
    #[command(flatten)]
    pub worker: WorkerArgs,
    /// Members prefix.
    #[arg(long, default_value = DEFAULT_MEMBERS_PREFIX)]
    pub members_prefix: String,
    /// Work-items prefix.
    #[arg(long, default_value = DEFAULT_WORK_PREFIX)]
    pub work_prefix: String,
    /// Session / lease TTL (Consul's minimum is 10s).
    #[arg(long, value_parser = parse_duration, default_value = "15s", allow_hyphen_values = true)]
    pub ttl: Duration,
    /// How long the leader lets member and item changes soak before planning.
    #[arg(long, value_parser = parse_duration, default_value = "3s", allow_hyphen_values = true)]
    pub leader_soak: Duration,
    /// This member's relative share of the work (0 takes nothing).
    #[arg(long, default_value_t = 1)]
    pub weight: u32,
    /// While leading: how long a departed member's items stay assigned to it
    /// (a restart with the same id within it moves nothing).
    #[arg(long, value_parser = parse_duration, default_value = "0s", allow_hyphen_values = true)]
    pub rebalance_delay: Duration,
    /// Handoff-records prefix.
    #[arg(long, default_value = DEFAULT_HANDOFF_PREFIX)]
    pub handoff_prefix: String,
    /// Drain-requests prefix (`coordinator drain ID` writes there).
    #[arg(long, default_value = DEFAULT_DRAIN_PREFIX)]
    pub drain_prefix: String,
    /// The key every leader transaction checks and bumps.
    #[arg(long, default_value = DEFAULT_SEQUENCE_KEY)]
    pub sequence_key: String,
    /// Exclusive mode: an item is never in two members' acknowledged
    /// workloads at once; the workload is released before the lease could
    /// expire. Every member of the cluster must use it.
    #[arg(long)]
    pub exclusive: bool,
    /// Exclusive mode's safety margin (default TTL/5).
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true)]
    pub exclusive_margin: Option<Duration>,
    /// While leading: at most this many items in handoff at once (default: no limit).
    #[arg(long)]
    pub max_moves_in_flight: Option<usize>,
    /// The store's largest transaction request in bytes (Consul
    /// `limits.txn_max_req_len`, default 512 KiB; etcd `--max-request-bytes`,
    /// default 1.5 MiB): the leader's writes are cut to fit it.
    #[arg(long)]
    pub txn_max_bytes: Option<usize>,
    /// The store's most operations per transaction (etcd `--max-txn-ops`,
    /// default 128).
    #[arg(long)]
    pub txn_max_ops: Option<usize>,
    /// The store's largest value in bytes (Consul `kv_max_value_size`,
    /// default 512 KiB).
    #[arg(long)]
    pub value_max_bytes: Option<usize>,
    /// On SIGTERM (or a drain request): how long to wait for the items to
    /// move away before leaving anyway.
    #[arg(long, value_parser = parse_duration, default_value = "60s", allow_hyphen_values = true)]
    pub drain_timeout: Duration,
    /// While leading: how long a move from a live member may wait for its
    /// acknowledgement before the leader ends that member's session.
    #[arg(long, value_parser = parse_duration, default_value = "5m", allow_hyphen_values = true)]
    pub handoff_timeout: Duration,
}

pub async fn run(args: MemberArgs) -> ExitCode {
    // First of all, so that a signal at any later moment halts and exits 0.
    let mut shutdown = Shutdown::register();
    let program = args.worker.program.clone();
    let mut config = config_of(args.worker);
    config.members_prefix = args.members_prefix;
    config.work_prefix = args.work_prefix;
    config.ttl = args.ttl;
    config.leader_soak = args.leader_soak;
    config.weight = args.weight;
    config.rebalance_delay = args.rebalance_delay;
    config.handoff_prefix = args.handoff_prefix;
    config.drain_prefix = args.drain_prefix;
    config.sequence_key = args.sequence_key;
    config.exclusive = args.exclusive;
    config.exclusive_margin = args.exclusive_margin;
    config.max_moves_in_flight = args.max_moves_in_flight;
    config.txn_max_bytes = args.txn_max_bytes;
    config.txn_max_ops = args.txn_max_ops;
    config.value_max_bytes = args.value_max_bytes;
    config.drain_timeout = args.drain_timeout;
    config.handoff_timeout = args.handoff_timeout;
    if let Err(e) = config
        .validate()
        .and_then(|()| config.member_config().map(drop))
    {
        return config_error(&e);
    }
    init_logging();
    let http = match program.serve_http(&config) {
        Ok(h) => h,
        Err(code) => return code,
    };
    let backend = match connect(&config, &mut shutdown).await {
        Ok(b) => b,
        Err(code) => return code,
    };
    let member_config = match config.member_config() {
        Ok(m) => m.manual_ack(true),
        Err(e) => return config_error(&e),
    };
    let mut member = match backend.spawn_member_with(&member_config) {
        Ok(m) => m,
        Err(e) => return config_error(&e),
    };
    http.member(&member);
    info!(backend = %config.backend, instance_id = %config.instance_id, "coordinator member running");
    // A change is acknowledged once its line is out, or with `--exec` once
    // its handler exited 0.
    let acker = member.acker();
    let (id, changes) = (config.instance_id.clone(), member.worker().changes());
    let handler = program.handler();
    let mut printer = tokio::spawn(async move {
        let ack: OnHandled = Arc::new(move |revision| acker.ack(revision));
        print_until(&id, changes, handler, std::future::pending(), Some(ack)).await;
    });
    // SIGINT: leave at once. SIGTERM or a drain request: drain, then leave;
    // a second signal cuts the drain short.
    tokio::select! {
        signal = shutdown.recv_which() => {
            if signal == Signal::Term {
                info!(timeout = ?config.drain_timeout, "SIGTERM: draining");
                member.start_drain();
                tokio::select! {
                    _ = member.left() => {}
                    () = shutdown.recv() => warn!("second signal: leaving without waiting for the drain"),
                }
            }
        }
        left = member.left() => {
            if left == Left::Halted {
                warn!("the member stopped");
            }
        }
        _ = &mut printer => warn!("stdout closed; stopping"),
    }
    let left = member.halt().await;
    if left != Left::Halted {
        info!(?left, "left");
    }
    // The worker halted: the printer's stream ends and its lines go out.
    let _ = printer.await;
    ExitCode::SUCCESS
}

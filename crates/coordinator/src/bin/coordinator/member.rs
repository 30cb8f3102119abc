//! `coordinator member`: a full member (registers, campaigns, leads while
//! elected) that prints its settled workload as `coordinator worker` does.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use coordinator::config::parse_duration;
use coordinator::leader::layout::{DEFAULT_MEMBERS_PREFIX, DEFAULT_WORK_PREFIX};

use tracing::info;

use crate::worker::{config_of, connect, init_logging, print_until_stopped, Shutdown};
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
    if let Err(e) = config
        .validate()
        .and_then(|()| config.member_config().map(drop))
    {
        return config_error(&e);
    }
    init_logging();
    if let Err(code) = program.serve_metrics() {
        return code;
    }
    let backend = match connect(&config, &mut shutdown).await {
        Ok(b) => b,
        Err(code) => return code,
    };
    let member = match backend.spawn_member(&config) {
        Ok(m) => m,
        Err(e) => return config_error(&e),
    };
    info!(backend = %config.backend, instance_id = %config.instance_id, "coordinator member running");
    print_until_stopped(
        &config.instance_id,
        member.worker().changes(),
        program.handler(),
        &mut shutdown,
    )
    .await;
    member.halt().await;
    ExitCode::SUCCESS
}

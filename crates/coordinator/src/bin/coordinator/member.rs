//! `coordinator member`: a full member (registers, campaigns, leads while
//! elected) that prints its settled workload as `coordinator worker` does.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{ArgMatches, Args};
use coordinator::config::BackendKind;
use coordinator::Left;
use tracing::{info, warn};

use crate::exec::OnHandled;
use crate::run::{connect, handler, init_logging, print_until, serve_http, Shutdown, Signal};
use crate::settings::{self, Settings};
use crate::{finish_settings, put, ConnArgs, ProgramArgs, WorkerOpts};

/// Flags of `coordinator member`: the flags of `coordinator worker` (but
/// `--backend memory`), and these.
#[derive(Args, Debug, Clone)]
pub struct MemberArgs {
    /// This member's id (required: here, in COORDINATOR_INSTANCE_ID or in the --config file)
    #[arg(long, env = "COORDINATOR_INSTANCE_ID", value_name = "ID")]
    instance_id: Option<String>,
    /// Which store [default: consul]
    #[arg(long, env = "COORDINATOR_BACKEND", value_parser = crate::backend_parser(false))]
    backend: Option<BackendKind>,
    #[command(flatten)]
    conn: ConnArgs,
    #[command(flatten)]
    opts: WorkerOpts,
    /// Members prefix [default: service/coordinator/members/]
    #[arg(long, env = "COORDINATOR_MEMBERS_PREFIX", help_heading = "Keys")]
    members_prefix: Option<String>,
    /// Work-items prefix [default: service/coordinator/work/]
    #[arg(long, env = "COORDINATOR_WORK_PREFIX", help_heading = "Keys")]
    work_prefix: Option<String>,
    /// Handoff-records prefix [default: service/coordinator/handoff/]
    #[arg(long, env = "COORDINATOR_HANDOFF_PREFIX", help_heading = "Keys")]
    handoff_prefix: Option<String>,
    /// Drain-requests prefix (`coordinator drain ID` writes there) [default: service/coordinator/drain/]
    #[arg(long, env = "COORDINATOR_DRAIN_PREFIX", help_heading = "Keys")]
    drain_prefix: Option<String>,
    /// The key every leader transaction checks and bumps [default: service/coordinator/sequence]
    #[arg(long, env = "COORDINATOR_SEQUENCE_KEY", help_heading = "Keys")]
    sequence_key: Option<String>,
    /// Session / lease TTL; on Consul below 10s only with --session-check [default: 5s]
    #[arg(long, env = "COORDINATOR_TTL", value_name = "DURATION", value_parser = settings::duration, allow_hyphen_values = true, help_heading = "Timing")]
    ttl: Option<Duration>,
    /// How long the leader lets member and item changes soak before planning [default: 1s]
    #[arg(long, env = "COORDINATOR_LEADER_SOAK", value_name = "DURATION", value_parser = settings::duration, allow_hyphen_values = true, help_heading = "Timing")]
    leader_soak: Option<Duration>,
    /// While leading: how long a departed member's items stay assigned to it (a restart with the same id within it moves nothing) [default: 0s]
    #[arg(long, env = "COORDINATOR_REBALANCE_DELAY", value_name = "DURATION", value_parser = settings::duration, allow_hyphen_values = true, help_heading = "Timing")]
    rebalance_delay: Option<Duration>,
    /// On SIGTERM (or a drain request): how long to wait for the items to move away before leaving anyway [default: 60s]
    #[arg(long, env = "COORDINATOR_DRAIN_TIMEOUT", value_name = "DURATION", value_parser = settings::duration, allow_hyphen_values = true, help_heading = "Timing")]
    drain_timeout: Option<Duration>,
    /// While leading: how long a move from a live member may wait for its acknowledgement before the leader ends that member's session [default: 5m]
    #[arg(long, env = "COORDINATOR_HANDOFF_TIMEOUT", value_name = "DURATION", value_parser = settings::duration, allow_hyphen_values = true, help_heading = "Timing")]
    handoff_timeout: Option<Duration>,
    /// Exclusive mode's safety margin (needs --exclusive) [default: TTL/5]
    #[arg(long, env = "COORDINATOR_EXCLUSIVE_MARGIN", value_name = "DURATION", value_parser = settings::duration, allow_hyphen_values = true, help_heading = "Timing")]
    exclusive_margin: Option<Duration>,
    /// This member's relative share of the work, ≥ 0 (0 takes nothing) [default: 1]
    #[arg(long, env = "COORDINATOR_WEIGHT", value_parser = settings::weight, allow_negative_numbers = true, help_heading = "Member")]
    weight: Option<u32>,
    /// While leading: replicas per item, one primary and the rest secondaries on distinct members spread over zones; the same on every member [default: 1]
    #[arg(long, env = "COORDINATOR_REPLICAS", value_parser = settings::replicas, help_heading = "Member")]
    replicas: Option<u32>,
    /// This member's failure domain (zone, rack or host group), published in its member key and shown by `status` [default: none]
    #[arg(
        long,
        env = "COORDINATOR_ZONE",
        value_name = "ZONE",
        help_heading = "Member"
    )]
    zone: Option<String>,
    /// Exclusive mode: an item is never in two members' acknowledged
    /// workloads at once; the workload is released before the lease could
    /// expire. Every member of the cluster must use it [default: false]
    #[arg(long, env = "COORDINATOR_EXCLUSIVE", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", value_parser = settings::boolean, help_heading = "Member")]
    exclusive: Option<bool>,
    /// Acknowledge moves away from this member (revoke, ack, assign); false
    /// makes moves faster where two owners for a moment are harmless [default: true]
    #[arg(long, env = "COORDINATOR_HANDOFF", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", value_parser = settings::boolean, help_heading = "Member")]
    handoff: Option<bool>,
    /// Consul: bind the session to a TTL health check on the agent, so that it ends on time
    /// once this member stops renewing (needs service:write on "coordinator"; else a plain
    /// session TTL, with a warning) [default: true]
    #[arg(long, env = "COORDINATOR_SESSION_CHECK", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", value_parser = settings::boolean, help_heading = "Member")]
    session_check: Option<bool>,
    /// While leading: make-before-break planned moves, the new owner first gets the item as
    /// a secondary (preparing) and becomes primary once it acknowledged; false: revoke,
    /// acknowledge, assign, and no secondary appears with one replica [default: true]
    #[arg(long, env = "COORDINATOR_PREPARE", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", value_parser = settings::boolean, help_heading = "Member")]
    prepare: Option<bool>,
    /// While leading: at most this many items in handoff at once [default: no limit]
    #[arg(
        long,
        env = "COORDINATOR_MAX_MOVES_IN_FLIGHT",
        value_name = "N",
        help_heading = "Member"
    )]
    max_moves_in_flight: Option<usize>,
    /// The store's largest transaction request in bytes (Consul
    /// `limits.txn_max_req_len`, default 512 KiB; etcd `--max-request-bytes`,
    /// default 1.5 MiB): the leader's writes are cut to fit it
    #[arg(
        long,
        env = "COORDINATOR_TXN_MAX_BYTES",
        value_name = "BYTES",
        help_heading = "Member"
    )]
    txn_max_bytes: Option<usize>,
    /// The store's most operations per transaction (etcd `--max-txn-ops`, default 128)
    #[arg(
        long,
        env = "COORDINATOR_TXN_MAX_OPS",
        value_name = "N",
        help_heading = "Member"
    )]
    txn_max_ops: Option<usize>,
    /// The store's largest value in bytes (Consul `kv_max_value_size`, default 512 KiB)
    #[arg(
        long,
        env = "COORDINATOR_VALUE_MAX_BYTES",
        value_name = "BYTES",
        help_heading = "Member"
    )]
    value_max_bytes: Option<usize>,
    #[command(flatten)]
    program: ProgramArgs,
}

impl MemberArgs {
    /// Every layer, checked (the member's own settings too).
    fn settings(&self, m: &ArgMatches) -> Result<Settings, ExitCode> {
        let mut s = self.conn.settings(self.backend, m)?;
        put!(s, m, instance_id = self.instance_id.clone());
        self.opts.apply(&mut s, m);
        put!(s, m, members_prefix = self.members_prefix.clone());
        put!(s, m, work_prefix = self.work_prefix.clone());
        put!(s, m, handoff_prefix = self.handoff_prefix.clone());
        put!(s, m, drain_prefix = self.drain_prefix.clone());
        put!(s, m, sequence_key = self.sequence_key.clone());
        put!(s, m, ttl = self.ttl);
        put!(s, m, leader_soak = self.leader_soak);
        put!(s, m, rebalance_delay = self.rebalance_delay);
        put!(s, m, drain_timeout = self.drain_timeout);
        put!(s, m, handoff_timeout = self.handoff_timeout);
        put!(s, m, exclusive_margin = self.exclusive_margin.map(Some));
        put!(s, m, weight = self.weight);
        put!(s, m, zone = self.zone.clone().map(Some));
        put!(s, m, replicas = self.replicas);
        put!(s, m, exclusive = self.exclusive);
        put!(s, m, handoff = self.handoff);
        put!(s, m, session_check = self.session_check);
        put!(s, m, prepare = self.prepare);
        put!(
            s,
            m,
            max_moves_in_flight = self.max_moves_in_flight.map(Some)
        );
        put!(s, m, txn_max_bytes = self.txn_max_bytes.map(Some));
        put!(s, m, txn_max_ops = self.txn_max_ops.map(Some));
        put!(s, m, value_max_bytes = self.value_max_bytes.map(Some));
        self.program.apply(&mut s, m);
        s.resolve_leader_settle(true);
        if s.config.backend == BackendKind::Memory {
            return Err(crate::usage_error(&format!(
                "invalid {}: a member needs a store other processes share (consul or etcd); for one process use `coordinator demo`, or `coordinator worker --backend memory`",
                s.name_of("backend")
            )));
        }
        finish_settings(s, &self.conn, |s| {
            s.config
                .layout()
                .validate()
                .and_then(|()| s.config.member_config().map(drop))
        })
    }
}

pub async fn run(args: MemberArgs, m: ArgMatches) -> ExitCode {
    // First of all, so that a signal at any later moment halts and exits 0.
    let mut shutdown = Shutdown::register();
    let s = match args.settings(&m) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let config = &s.config;
    init_logging(s.program.log_format);
    let http = match serve_http(&s) {
        Ok(h) => h,
        Err(code) => return code,
    };
    let backend = match connect(&s, &mut shutdown).await {
        Ok(b) => b,
        Err(code) => return code,
    };
    let member_config = match config.member_config() {
        Ok(m) => m.manual_ack(true),
        Err(e) => return s.refuse(&e),
    };
    let mut member = match backend.spawn_member_with(&member_config) {
        Ok(m) => m,
        Err(e) => return s.refuse(&e),
    };
    http.member(&member);
    info!(backend = %config.backend, instance_id = %config.instance_id, "coordinator member running");
    // A change is acknowledged once its line is out, or with `--exec` once
    // its handler exited 0.
    let acker = member.acker();
    let (id, replicas) = (config.instance_id.clone(), config.replicas);
    let changes = member.worker().changes();
    let handler = handler(&s);
    let mut printer = tokio::spawn(async move {
        let ack: OnHandled = Arc::new(move |revision| acker.ack(revision));
        print_until(
            &id,
            replicas,
            changes,
            handler,
            std::future::pending(),
            Some(ack),
        )
        .await;
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

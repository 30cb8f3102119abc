//! `coordinator-bench`: how fast coordinator's workers react to an assignment
//! and what they cost the store, measured on real Consul and etcd servers next
//! to what a user would otherwise use (issue 5), and how fast the leader half
//! moves a dead member's work and what an idle cluster costs (issue 10), and
//! what a secondary's promotion costs against a cold move, and what a
//! rolling restart costs in each handoff mode.
//!
//! ```text
//! cargo build --release -p kv-coordinator --all-features   # the program the `failover`, `promotion` and `rolling` scenarios run
//! cargo run --release -p coordinator-bench -- [--quick] [--scenario latency|scale|fanout|leader|failover|promotion|rolling] [--store consul|etcd]
//! ```
//!
//! It starts the stores the way the tests do (`test-support`: free loopback
//! ports, binaries from `scripts/install-stores`), runs each scenario on each
//! store, and prints markdown tables and a verdict per target on stdout
//! (progress goes to stderr). `docs/benchmarks.md` holds the latest output.

mod failover;
mod fanout;
mod latency;
mod leader;
mod measure;
mod promotion;
mod proxy;
mod rolling;
mod rt;
mod scale;
mod stores;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};

use crate::rt::Lane;
use crate::stores::Kind;

/// Which scenario to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Reaction latency vs the stores' own watchers.
    Latency,
    /// One member with 1,000 / 10,000 / 100,000 items.
    Scale,
    /// Many workers in one process, bulk reassignment.
    Fanout,
    /// Whole members: a member killed, a member joining, idle cost.
    Leader,
    /// `coordinator member` processes with every setting at its default: a
    /// member and the leader killed (SIGKILL), and the idle cost of 100 members.
    Failover,
    /// `coordinator member` processes in zones: a member killed with
    /// `--replicas 2` (its primaries promoted) and with `--replicas 1` (its
    /// items moved cold).
    Promotion,
    /// `coordinator member` processes restarted one by one (SIGTERM, which
    /// drains, and start again), in each handoff mode: how long items have
    /// no primary, or two.
    Rolling,
}

/// Which store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum StoreArg {
    /// Consul.
    Consul,
    /// etcd.
    Etcd,
}

/// Benchmarks of coordinator on real Consul and etcd (issue 5).
#[derive(Debug, Parser)]
#[command(name = "coordinator-bench")]
struct Args {
    /// Fewer changes, smaller workloads, shorter windows: a couple of minutes.
    #[arg(long)]
    quick: bool,
    /// Run only these scenarios (repeatable; default: all).
    #[arg(long, value_enum)]
    scenario: Vec<Scenario>,
    /// Run only on these stores (repeatable; default: both).
    #[arg(long, value_enum)]
    store: Vec<StoreArg>,
    /// Measured PUTs per store in the latency scenario (default 300; quick 50).
    #[arg(long)]
    changes: Option<usize>,
    /// Worker counts in the fan-out scenario (default 200,1000; quick 200).
    #[arg(long, value_delimiter = ',')]
    workers: Vec<usize>,
    /// Sizes of the leader scenario as `MEMBERSxITEMS` (default 10x1000,100x10000;
    /// quick 10x1000). 1000x100000 is the large size (about 10 minutes a
    /// store, not part of the defaults).
    #[arg(long, value_delimiter = ',', value_parser = parse_size)]
    leader_sizes: Vec<(usize, usize)>,
    /// Rolling restarts of each mode per store in the rolling scenario
    /// (default 3; quick 1).
    #[arg(long)]
    runs: Option<usize>,
}

fn parse_size(s: &str) -> Result<(usize, usize), String> {
    let (m, i) = s
        .split_once(['x', '×'])
        .ok_or_else(|| format!("{s:?}: expected MEMBERSxITEMS, e.g. 10x1000"))?;
    let m: usize = m
        .trim()
        .parse()
        .map_err(|e| format!("{s:?}: members: {e}"))?;
    let i: usize = i.trim().parse().map_err(|e| format!("{s:?}: items: {e}"))?;
    if m < 2 {
        return Err(format!("{s:?}: at least 2 members (one is killed)"));
    }
    Ok((m, i))
}

fn first_line(program: &std::path::Path, arg: &str) -> String {
    std::process::Command::new(program)
        .arg(arg)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map_or("unknown", |v| v.trim_start_matches([' ', '\t', ':']));
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let nofile = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(0, |(soft, _)| soft);
    format!(
        "{cores} cores ({model}), {mem_gib:.1} GiB; {}; {}; open files limit {nofile}",
        first_line(&test_support::consul_bin(), "version"),
        first_line(&test_support::etcd_bin(), "--version"),
    )
}

/// This program as a [`proxy::ChildProxy`]: `TARGET --proxy-protocol
/// http1|http2 --proxy-counts FILE`.
fn proxy_child(args: &[String]) {
    let [target, flag, protocol, counts_flag, counts] = args else {
        panic!("proxy child: expected TARGET --proxy-protocol P --proxy-counts FILE, got {args:?}");
    };
    assert_eq!(flag, "--proxy-protocol", "proxy child");
    assert_eq!(counts_flag, "--proxy-counts", "proxy child");
    let target: std::net::SocketAddr = target.parse().expect("proxy child: target address");
    let protocol = match protocol.as_str() {
        "http1" => proxy::Protocol::Http1,
        "http2" => proxy::Protocol::Http2,
        other => panic!("proxy child: protocol {other:?}"),
    };
    raise_open_files();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("proxy child runtime")
        .block_on(proxy::serve_child(target, protocol, counts.into()));
}

/// Open files the bench asks for: 1,000 members hold about 5 Consul
/// connections each (1 etcd connection), and the counting proxy holds two
/// more descriptors for each: about 15,000 in this process alone.
const OPEN_FILES: u64 = 65_536;

/// Raises this process's open-files limit to [`OPEN_FILES`] where it may
/// (as root), else to its hard limit; the stores started from it inherit it.
fn raise_open_files() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let want = OPEN_FILES.max(hard);
        if soft < want && setrlimit(Resource::RLIMIT_NOFILE, want, want).is_err() && soft < hard {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                eprintln!("open files limit stays at {soft}: {e}");
            }
        }
    }
}

fn main() {
    let command_line: Vec<String> = std::env::args().collect();
    if command_line.get(1).map(String::as_str) == Some(proxy::CHILD_FLAG) {
        proxy_child(&command_line[2..]);
        return;
    }
    let args = Args::parse();
    raise_open_files();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run(args));
}

#[allow(clippy::too_many_lines)] // The scenarios in order, each with its parameters.
async fn run(args: Args) {
    let started = Instant::now();
    let scenarios = if args.scenario.is_empty() {
        vec![
            Scenario::Latency,
            Scenario::Scale,
            Scenario::Fanout,
            Scenario::Leader,
            Scenario::Failover,
            Scenario::Promotion,
            Scenario::Rolling,
        ]
    } else {
        args.scenario.clone()
    };
    let kinds: Vec<Kind> = if args.store.is_empty() {
        vec![Kind::Consul, Kind::Etcd]
    } else {
        args.store
            .iter()
            .map(|s| match s {
                StoreArg::Consul => Kind::Consul,
                StoreArg::Etcd => Kind::Etcd,
            })
            .collect()
    };
    let writer_lane = Lane::start("bench-writer");
    let watch_lane = Lane::start("bench-watchers");
    let mut out = String::new();
    let mut verdicts = Vec::new();
    let _ = write!(
        out,
        "Machine: {}\nMode: {}\n\n",
        machine(),
        if args.quick { "quick" } else { "full" }
    );

    if scenarios.contains(&Scenario::Latency) {
        let params = latency::Params {
            changes: args.changes.unwrap_or(if args.quick { 50 } else { 300 }),
            soaks: vec![Duration::ZERO, Duration::from_millis(50)],
        };
        let mut all = Vec::new();
        for &kind in &kinds {
            all.extend(latency::run(kind, &params, &writer_lane, &watch_lane).await);
        }
        out.push_str("### 1. Reaction latency (PUT start → observed)\n\n");
        out.push_str(&latency::table(&all));
        out.push('\n');
        verdicts.extend(latency::verdicts(&all));
    }
    if scenarios.contains(&Scenario::Scale) {
        let params = if args.quick {
            scale::Params {
                sizes: vec![1_000, 10_000],
                etcd_cycles: 30,
                consul_cycles: 30,
            }
        } else {
            scale::Params {
                sizes: vec![1_000, 10_000, 100_000],
                etcd_cycles: 100,
                consul_cycles: 100,
            }
        };
        let mut all = Vec::new();
        for &kind in &kinds {
            all.extend(scale::run(kind, &params, &writer_lane).await);
        }
        out.push_str("### 2. Scale of one member\n\n");
        out.push_str(&scale::table(&all));
        out.push('\n');
        verdicts.extend(scale::verdicts(&all));
    }
    if scenarios.contains(&Scenario::Fanout) {
        let params = fanout::Params {
            workers: if !args.workers.is_empty() {
                args.workers.clone()
            } else if args.quick {
                vec![200]
            } else {
                vec![200, 1000]
            },
            items: 10_000,
            idle: Duration::from_secs(if args.quick { 12 } else { 30 }),
            consul_wait: Duration::from_secs(10),
            soak: Duration::from_millis(200),
        };
        let mut all = Vec::new();
        for &kind in &kinds {
            for &w in &params.workers {
                all.push(fanout::run(kind, w, &params, &writer_lane).await);
            }
        }
        out.push_str("### 3. Fan-out: workers in one process on one store\n\n");
        out.push_str(&fanout::table(&all));
        out.push('\n');
        verdicts.extend(fanout::verdicts(&all));
    }
    if scenarios.contains(&Scenario::Leader) {
        let params = leader::Params {
            sizes: if !args.leader_sizes.is_empty() {
                args.leader_sizes.clone()
            } else if args.quick {
                vec![(10, 1_000)]
            } else {
                vec![(10, 1_000), (100, 10_000)]
            },
            consul_ttl: Duration::from_secs(10),
            etcd_ttl: Duration::from_secs(3),
            large_ttl: Duration::from_secs(10),
            leader_soak: Duration::from_secs(1),
            worker_soak: Duration::from_millis(200),
            leader_settle: Duration::from_secs(1),
            idle: Duration::from_secs(10),
        };
        let lanes = leader::Lanes {
            writer: writer_lane.clone(),
            observe: watch_lane.clone(),
            leader: Lane::start("bench-leader"),
        };
        let mut all = Vec::new();
        for &kind in &kinds {
            for &size in &params.sizes {
                all.push(leader::run(kind, size, &params, &lanes).await);
            }
        }
        out.push_str("### 4. Leader half: a member killed, a member joining, idle\n\n");
        out.push_str(&leader::table(&all));
        out.push('\n');
        verdicts.extend(leader::verdicts(&all));
    }
    if scenarios.contains(&Scenario::Failover) {
        let program = failover::program();
        assert!(
            program.is_file(),
            "the failover scenario runs {}: build it first (cargo build --release -p kv-coordinator), or set COORDINATOR_BIN",
            program.display()
        );
        let params = failover::Params {
            members: 5,
            items: 100,
            rounds: if args.quick { 1 } else { 3 },
            idle_members: if args.quick { 20 } else { 100 },
            idle_items: 1_000,
            idle: Duration::from_secs(if args.quick { 10 } else { 30 }),
        };
        let mut all = Vec::new();
        for &kind in &kinds {
            all.push(failover::run(kind, &params, &writer_lane).await);
        }
        out.push_str("### 5. Failover with the defaults: `coordinator member` processes\n\n");
        out.push_str(&failover::table(&all, &params));
        out.push('\n');
        verdicts.extend(failover::verdicts(&all));
    }
    if scenarios.contains(&Scenario::Promotion) {
        let program = failover::program();
        assert!(
            program.is_file(),
            "the promotion scenario runs {}: build it first (cargo build --release -p kv-coordinator --all-features), or set COORDINATOR_BIN",
            program.display()
        );
        let params = promotion::Params {
            members: 5,
            zones: 3,
            items: 100,
            rounds: if args.quick { 1 } else { 3 },
            replicas: vec![2, 1],
        };
        let mut all = Vec::new();
        for &kind in &kinds {
            all.push(promotion::run(kind, &params, &writer_lane).await);
        }
        out.push_str("### 6. Promotion against a cold move: `coordinator member` processes with replicas\n\n");
        out.push_str(&promotion::table(&all, &params));
        out.push('\n');
        verdicts.extend(promotion::verdicts(&all));
    }
    if scenarios.contains(&Scenario::Rolling) {
        let program = failover::program();
        assert!(
            program.is_file(),
            "the rolling scenario runs {}: build it first (cargo build --release -p kv-coordinator --all-features), or set COORDINATOR_BIN",
            program.display()
        );
        let params = rolling::Params {
            members: 5,
            items: 100,
            runs: args.runs.unwrap_or(if args.quick { 1 } else { 3 }),
            modes: rolling::modes(),
        };
        let mut all = Vec::new();
        for &kind in &kinds {
            all.push(rolling::run(kind, &params, &writer_lane).await);
        }
        out.push_str(
            "### 7. Rolling restart: `coordinator member` processes in each handoff mode\n\n",
        );
        out.push_str(&rolling::table(&all, &params));
        out.push('\n');
        verdicts.extend(rolling::verdicts(&all));
    }
    out.push_str("### Targets\n\n");
    for v in &verdicts {
        let _ = writeln!(out, "- {v}");
    }
    let _ = writeln!(
        out,
        "\nTotal run time: {:.0} s",
        started.elapsed().as_secs_f64()
    );
    println!("{out}");
}

//! `coordinator-sim`: runs the cluster simulation for many seeds or a long
//! simulated time. `--seeds N` (default 100), `--seconds S` per seed (default
//! 1000), `--start K` (first seed), `--total T` (run seeds until T simulated
//! seconds in all), `--threads J`, `--safeguard fence|revoke-first|relist|sequence|txn-bytes|lease-wait`
//! (turn one off), `--exclusive on|off` (force exclusive mode; default: half
//! the seeds), `--control release|pauses` (turn one
//! exclusivity control off), `--replicas N` and `--zones N` (replicas per
//! item and zones the members are spread over; default 1 and 1), `--prepare
//! on|off` (make-before-break moves; default on), `--planned` (planned events
//! only: drains with restarts, joins, item changes), `--seed N --trace` (replay one seed, printing
//! its trace).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use coordinator_sim::{run, Controls, RunConfig, Safeguards};

/// What the command line asks for.
struct Args {
    /// Seeds to run.
    seeds: u64,
    /// The first seed.
    start: u64,
    /// Run seeds until this many simulated seconds in all.
    total: Option<u64>,
    /// Threads running seeds.
    threads: usize,
    /// Every run's settings but its seed.
    template: RunConfig,
}

/// Reads the command line.
fn parse() -> Args {
    let mut seeds = 100u64;
    let mut seconds = 1000u64;
    let mut start = 0u64;
    let mut total: Option<u64> = None;
    let mut threads = 2usize;
    let mut safeguards = Safeguards::default();
    let mut trace = false;
    let mut exclusive: Option<bool> = None;
    let mut controls = Controls::default();
    let (mut replicas, mut zones) = (1u32, 1u32);
    let (mut prepare, mut planned) = (true, false);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().expect("a value after the flag");
        match a.as_str() {
            "--seeds" => seeds = val().parse().expect("--seeds N"),
            "--seconds" => seconds = val().parse().expect("--seconds S"),
            "--start" => start = val().parse().expect("--start K"),
            "--total" => total = Some(val().parse().expect("--total T")),
            "--threads" => threads = val().parse().expect("--threads J"),
            "--seed" => {
                start = val().parse().expect("--seed N");
                seeds = 1;
            }
            "--trace" => trace = true,
            "--safeguard" => match val().as_str() {
                "fence" => safeguards.fence = false,
                "revoke-first" => safeguards.revoke_first = false,
                "relist" => safeguards.relist_on_lost = false,
                "txn-bytes" => safeguards.txn_bytes = false,
                "lease-wait" => safeguards.lease_wait = false,
                "sequence" => safeguards.sequence = false,
                "overlap-wait" => safeguards.overlap_wait = false,
                "sequence-moves" => safeguards.sequence_moves = false,
                other => panic!("unknown safeguard {other}"),
            },
            "--exclusive" => match val().as_str() {
                "on" => exclusive = Some(true),
                "off" => exclusive = Some(false),
                other => panic!("--exclusive on|off, not {other}"),
            },
            "--replicas" => replicas = val().parse().expect("--replicas N"),
            "--zones" => zones = val().parse().expect("--zones N"),
            "--prepare" => match val().as_str() {
                "on" => prepare = true,
                "off" => prepare = false,
                other => panic!("--prepare on|off, not {other}"),
            },
            "--planned" => planned = true,
            "--control" => match val().as_str() {
                "release" => controls.release = false,
                "pauses" => controls.bounded_pauses = false,
                other => panic!("unknown control {other}"),
            },
            other => {
                eprintln!("unknown argument {other}");
                std::process::exit(2);
            }
        }
    }
    let mut template = RunConfig::new(0, seconds);
    template.safeguards = safeguards;
    template.echo = trace;
    template.exclusive = exclusive;
    template.controls = controls;
    template.replicas = replicas;
    template.zones = zones;
    template.prepare = prepare;
    template.planned = planned;
    Args {
        seeds,
        start,
        total,
        threads,
        template,
    }
}

fn main() {
    let Args {
        mut seeds,
        start,
        total,
        threads,
        template,
    } = parse();
    let seconds = template.seconds;
    if let Some(t) = total {
        seeds = t.div_ceil(seconds);
    }
    let next = Arc::new(AtomicU64::new(start));
    let failed = Arc::new(AtomicU64::new(0));
    let began = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (next, failed) = (next.clone(), failed.clone());
            std::thread::spawn(move || {
                let mut events = 0u64;
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= start + seeds {
                        return events;
                    }
                    match run(RunConfig { seed, ..template }) {
                        Ok(o) => events += o.events,
                        Err(f) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            eprintln!("{f}");
                        }
                    }
                }
            })
        })
        .collect();
    let events: u64 = handles.into_iter().map(|h| h.join().expect("thread")).sum();
    let real = began.elapsed().as_secs_f64();
    let simulated = seeds * seconds;
    println!(
        "seeds {start}..{}: {} failed; {simulated} simulated s in {real:.1} real s on {threads} threads: {:.0} simulated s per real s; {events} events",
        start + seeds,
        failed.load(Ordering::Relaxed),
        simulated as f64 / real,
    );
    if failed.load(Ordering::Relaxed) > 0 {
        std::process::exit(1);
    }
}

//! The simulator in the normal test command: a CI-sized run, determinism,
//! each disabled safeguard caught, and one-seed replay (`SIM_SEED=<n>`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use coordinator_sim::{run, Failure, RunConfig, Safeguards};

/// Seeds and simulated seconds per seed of the CI-sized run.
const CI_SEEDS: u64 = 1_000;
const CI_SECONDS: u64 = 1_000;

/// Runs `seeds` seeds on two threads; returns the failures (by seed order).
fn sweep(start: u64, seeds: u64, seconds: u64) -> (Vec<Failure>, u64) {
    let next = Arc::new(AtomicU64::new(start));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let events = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (next, failures, events) = (next.clone(), failures.clone(), events.clone());
            std::thread::spawn(move || loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= start + seeds {
                    return;
                }
                match run(RunConfig::new(seed, seconds)) {
                    Ok(o) => {
                        events.fetch_add(o.events, Ordering::Relaxed);
                    }
                    Err(f) => failures.lock().unwrap().push(*f),
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut f = std::mem::take(&mut *failures.lock().unwrap());
    f.sort_by_key(|f| f.seed);
    (f, events.load(Ordering::Relaxed))
}

#[test]
fn ci_sized_run_of_a_thousand_seeds_and_a_million_simulated_seconds() {
    let began = Instant::now();
    let (failures, events) = sweep(0, CI_SEEDS, CI_SECONDS);
    let real = began.elapsed().as_secs_f64();
    let simulated = CI_SEEDS * CI_SECONDS;
    eprintln!(
        "simulated {CI_SEEDS} seeds, {simulated} s in {real:.1} s: {:.0} simulated s per real s, {events} events",
        simulated as f64 / real
    );
    if let Some(f) = failures.first() {
        panic!(
            "{} of {CI_SEEDS} seeds failed; the first:\n{f}",
            failures.len()
        );
    }
}

#[test]
fn one_seed_twice_gives_the_same_trace() {
    let a = run(RunConfig::new(42, 2_000)).unwrap();
    let b = run(RunConfig::new(42, 2_000)).unwrap();
    assert_eq!(a, b);
    assert!(a.plans > 0 && a.publications > 0 && a.faults > 0, "{a:?}");
    let c = run(RunConfig::new(43, 2_000)).unwrap();
    assert_ne!(a.digest, c.digest);
}

/// Runs seeds from 0 with `safeguards` until one fails; returns how many
/// seeds it took and the failure.
fn first_failure(safeguards: Safeguards, limit: u64) -> (u64, Failure) {
    for seed in 0..limit {
        let mut cfg = RunConfig::new(seed, CI_SECONDS);
        cfg.safeguards = safeguards;
        if let Err(f) = run(cfg) {
            // The same seed fails the same way again.
            let again = run(cfg).unwrap_err();
            assert_eq!((again.at, &again.what), (f.at, &f.what));
            return (seed + 1, *f);
        }
    }
    panic!("no violation within {limit} seeds with {safeguards:?}");
}

#[test]
fn without_the_fence_a_deposed_leader_write_is_caught() {
    let s = Safeguards {
        fence: false,
        ..Safeguards::default()
    };
    let (seeds, f) = first_failure(s, 20);
    eprintln!("fence off: caught after {seeds} seed(s):\n{f}");
    assert!(f.what.contains("does not lead"), "{f}");
}

#[test]
fn without_revoke_first_an_item_under_two_members_is_caught() {
    let s = Safeguards {
        revoke_first: false,
        ..Safeguards::default()
    };
    let (seeds, f) = first_failure(s, 20);
    eprintln!("revoke-first off: caught after {seeds} seed(s):\n{f}");
    assert!(f.what.contains("under two members"), "{f}");
}

#[test]
fn without_relist_after_lost_a_stale_workload_is_caught() {
    let s = Safeguards {
        relist_on_lost: false,
        ..Safeguards::default()
    };
    let (seeds, f) = first_failure(s, 20);
    eprintln!("relist-after-lost off: caught after {seeds} seed(s):\n{f}");
    assert!(f.what.contains("after the quiet period"), "{f}");
}

/// Seeds that once failed (simulator bugs found while building it; see
/// docs/testing.md), kept as regression cases.
#[test]
fn regression_seeds() {
    for seed in [2947, 4452] {
        if let Err(f) = run(RunConfig::new(seed, CI_SECONDS)) {
            panic!("{f}");
        }
    }
}

/// `SIM_SEED=<n> [SIM_SECONDS=<s>] cargo test -p coordinator-sim --test sim replay -- --nocapture`
/// replays one seed and prints its whole trace.
#[test]
fn replay() {
    let Some(seed) = std::env::var("SIM_SEED").ok() else {
        return;
    };
    let seed: u64 = seed.parse().expect("SIM_SEED is a number");
    let seconds = std::env::var("SIM_SECONDS")
        .ok()
        .map_or(CI_SECONDS, |s| s.parse().expect("SIM_SECONDS is a number"));
    let mut cfg = RunConfig::new(seed, seconds);
    cfg.echo = true;
    match run(cfg) {
        Ok(o) => eprintln!("seed {seed}: passed; {o:?}"),
        Err(f) => panic!("{f}"),
    }
}

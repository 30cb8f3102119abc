//! The simulator with replicas (1–3) over zones (1–3), zone outages among
//! the faults: every invariant holds (never two primaries in the store, nor
//! in two acknowledged workloads in exclusive mode; a live secondary is
//! promoted within the quiet period; after it, every item has its replicas on
//! distinct live members, spread over zones, balanced; a zone outage of a
//! settled cluster leaves every item a live replica; every plan small enough
//! makes the fewest moves a brute force finds), and the safeguards' absence
//! is caught with replicas too.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use coordinator_sim::{run, Failure, Outcome, RunConfig, Safeguards};

/// Seeds per (replicas, zones) pair, and simulated seconds per seed.
const SEEDS: u64 = 60;
const SECONDS: u64 = 1_000;

fn cfg(seed: u64, replicas: u32, zones: u32) -> RunConfig {
    RunConfig {
        replicas,
        zones,
        ..RunConfig::new(seed, SECONDS)
    }
}

/// Runs `SEEDS` seeds of `replicas` × `zones` on two threads.
fn sweep(replicas: u32, zones: u32) -> (Vec<Outcome>, Vec<Failure>) {
    let next = Arc::new(AtomicU64::new(0));
    let out = Arc::new(Mutex::new((Vec::new(), Vec::new())));
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (next, out) = (next.clone(), out.clone());
            std::thread::spawn(move || loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= SEEDS {
                    return;
                }
                let r = run(cfg(seed, replicas, zones));
                let mut o = out.lock().unwrap();
                match r {
                    Ok(x) => o.0.push(x),
                    Err(f) => o.1.push(*f),
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let (oks, mut fails) = std::mem::take(&mut *out.lock().unwrap());
    fails.sort_by_key(|f| f.seed);
    (oks, fails)
}

#[test]
fn replicas_one_to_three_over_one_to_three_zones_keep_every_invariant() {
    for replicas in 1..=3 {
        for zones in 1..=3 {
            if (replicas, zones) == (1, 1) {
                continue; // the main sweep
            }
            let (oks, fails) = sweep(replicas, zones);
            let sum = |f: fn(&Outcome) -> u64| oks.iter().map(f).sum::<u64>();
            let longest = oks.iter().map(|o| o.longest_orphaned).max().unwrap_or(0);
            eprintln!(
                "replicas {replicas} zones {zones}: {} of {SEEDS} seeds passed; {} exclusive; \
                 {} zone outages ({} cold primaries planned after one before any member registered), \
                 {} items lost every replica in one, {} promotions, {} cold primaries in all, \
                 {} plans checked against the brute force, longest without a live primary while a secondary was live: {:.1} s",
                oks.len(),
                sum(|o| u64::from(o.exclusive)),
                sum(|o| o.zone_outages),
                sum(|o| o.cold_after_outage),
                sum(|o| o.lost_every_replica),
                sum(|o| o.promotions),
                sum(|o| o.cold_primaries),
                sum(|o| o.fewest_checked),
                longest as f64 / 1e9,
            );
            if let Some(f) = fails.first() {
                panic!(
                    "replicas {replicas} zones {zones}: {} seeds failed; the first:\n{f}",
                    fails.len()
                );
            }
            if replicas > 1 {
                assert!(sum(|o| o.promotions) > 0, "no promotion at all");
                assert!(
                    sum(|o| o.fewest_checked) > 0,
                    "no plan small enough to check"
                );
            }
            if zones > 1 {
                assert!(sum(|o| o.zone_outages) > 0, "no zone outage at all");
            }
        }
    }
}

/// Runs seeds from 0 with `cfg(seed)` until one fails.
fn first_failure(cfg: impl Fn(u64) -> RunConfig, limit: u64) -> Failure {
    for seed in 0..limit {
        if let Err(f) = run(cfg(seed)) {
            return *f;
        }
    }
    panic!("no violation within {limit} seeds");
}

#[test]
fn without_revoke_first_two_primaries_are_caught() {
    let f = first_failure(
        |seed| RunConfig {
            safeguards: Safeguards {
                revoke_first: false,
                ..Safeguards::default()
            },
            ..cfg(seed, 2, 3)
        },
        20,
    );
    assert!(f.what.contains("under two members"), "{f}");
}

#[test]
fn without_the_lease_wait_two_acknowledged_primaries_are_caught() {
    let f = first_failure(
        |seed| RunConfig {
            exclusive: Some(true),
            safeguards: Safeguards {
                lease_wait: false,
                ..Safeguards::default()
            },
            ..cfg(seed, 2, 3)
        },
        40,
    );
    assert!(f.what.contains("as primary"), "{f}");
}

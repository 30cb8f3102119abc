//! The simulator with planned events only (drains with restarts under the
//! same id, joins, item changes, latency windows), make-before-break moves
//! on: in the default mode no item active somewhere is ever active nowhere
//! (invariant 10), in exclusive mode never in two acknowledged workloads
//! (invariant 7), with one replica and with two over two zones; and the
//! absence of each move's safeguard is caught.

use coordinator_sim::{run, Failure, RunConfig, Safeguards};

/// Seeds per configuration, and simulated seconds per seed.
const SEEDS: u64 = 40;
const SECONDS: u64 = 1_000;

fn planned(seed: u64, exclusive: bool, replicas: u32) -> RunConfig {
    RunConfig {
        planned: true,
        exclusive: Some(exclusive),
        replicas,
        zones: replicas,
        ..RunConfig::new(seed, SECONDS)
    }
}

#[test]
fn planned_moves_keep_every_item_active_and_never_twice_in_exclusive_mode() {
    for exclusive in [false, true] {
        for replicas in [1, 2] {
            let (mut drains, mut failures) = (0, Vec::new());
            for seed in 0..SEEDS {
                match run(planned(seed, exclusive, replicas)) {
                    Ok(o) => drains += o.drains,
                    Err(f) => failures.push(*f),
                }
            }
            if let Some(f) = failures.first() {
                panic!(
                    "exclusive {exclusive}, replicas {replicas}: {} of {SEEDS} seeds failed; the first:\n{f}",
                    failures.len()
                );
            }
            // The runs drained members (and so moved their items) often.
            assert!(
                drains > SEEDS * 10,
                "exclusive {exclusive}, replicas {replicas}: {drains} drains in {SEEDS} seeds"
            );
        }
    }
}

/// Runs seeds from 0 with `cfg(seed)` until one fails.
fn first_failure(cfg: impl Fn(u64) -> RunConfig, limit: u64) -> (u64, Failure) {
    for seed in 0..limit {
        if let Err(f) = run(cfg(seed)) {
            return (seed + 1, *f);
        }
    }
    panic!("no violation within {limit} seeds");
}

/// Default mode: the old primary's key is revoked only once the new primary
/// acknowledged its promotion. Without that wait, the old one may let go
/// before the new one is active.
#[test]
fn without_the_overlap_wait_an_item_active_nowhere_is_caught() {
    let (seeds, f) = first_failure(
        |seed| RunConfig {
            safeguards: Safeguards {
                overlap_wait: false,
                ..Safeguards::default()
            },
            ..planned(seed, false, 1)
        },
        20,
    );
    eprintln!("overlap wait off: caught after {seeds} seed(s):\n{f}");
    assert!(f.what.contains("active nowhere"), "{f}");
}

/// Exclusive mode: the new primary is promoted only once the old one
/// acknowledged its revoke. Without revoke-first, two hold it at once.
#[test]
fn exclusive_without_revoke_first_a_planned_move_held_twice_is_caught() {
    let (seeds, f) = first_failure(
        |seed| RunConfig {
            safeguards: Safeguards {
                revoke_first: false,
                ..Safeguards::default()
            },
            ..planned(seed, true, 1)
        },
        20,
    );
    eprintln!("revoke-first off, exclusive, planned: caught after {seeds} seed(s):\n{f}");
    assert!(
        f.what.contains("two members") || f.what.contains("acknowledged workloads"),
        "{f}"
    );
}

/// Without make-before-break (`prepare` off), a drain's moves leave items
/// active nowhere for a moment in the default mode: invariant 10 is about
/// the preparing role, and sees it.
#[test]
fn without_prepare_an_item_active_nowhere_is_seen() {
    let (seeds, f) = first_failure(
        |seed| RunConfig {
            prepare: false,
            ..planned(seed, false, 1)
        },
        20,
    );
    eprintln!("prepare off: seen after {seeds} seed(s):\n{f}");
    assert!(f.what.contains("active nowhere"), "{f}");
}

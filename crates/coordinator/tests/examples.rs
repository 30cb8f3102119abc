//! The examples that run on their own: the sharded service (the example's own
//! code, included here) runs to completion within a minute, and every step
//! settles with the fewest moves.

#[path = "../examples/sharded_service.rs"]
#[allow(dead_code)] // the example's `main` is not called here
mod sharded_service;

use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_service_runs_to_completion_with_the_fewest_moves() {
    let report = tokio::time::timeout(Duration::from_secs(60), sharded_service::run(false))
        .await
        .expect("the example ends within a minute")
        .expect("every step settles");
    let steps = &report.steps;
    let counts: Vec<Vec<usize>> = steps
        .iter()
        .map(|s| s.counts.values().copied().collect())
        .collect();
    assert_eq!(
        counts,
        [vec![8, 8, 8], vec![6, 6, 6, 6], vec![8, 8, 8], vec![12, 12]],
        "{steps:?}"
    );
    // A replica joining takes only its share, from the others.
    assert_eq!(steps[1].moves.len(), 6, "{steps:?}");
    assert!(
        steps[1].moves.iter().all(|(_, _, to)| to == "r4"),
        "{steps:?}"
    );
    // A replica leaving or dying gives away its items and nothing else moves.
    for step in &steps[2..] {
        let gone: Vec<&String> = step.moves.iter().map(|(_, from, _)| from).collect();
        assert!(
            gone.iter().all(|g| !step.counts.contains_key(*g)),
            "{step:?}"
        );
        assert!(gone.windows(2).all(|w| w[0] == w[1]), "{step:?}");
    }
    assert_eq!(steps[2].moves.len(), 6, "{steps:?}");
    assert_eq!(steps[3].moves.len(), 8, "{steps:?}");
    // Every item was processed.
    assert_eq!(report.processed.len(), sharded_service::ITEMS);
    assert!(
        report.processed.values().all(|n| *n > 0),
        "{:?}",
        report.processed
    );
}

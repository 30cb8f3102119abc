//! The prefix follower with an explicit `now`: list, then watch from the
//! list's position and publish each changed picture; relist after `Lost`
//! (after a backoff); rewatch from the last position after an error; a
//! snapshot replaces the picture; nothing is published when nothing changed.
//! Then the tokio driver (`spawn_follow`) on the memory store.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use leader_core::follow::{FollowAction, PrefixFollower, PrefixMap};
use std::time::Instant;
use worker_core::{KvChange, KvEntry, Snapshot, WatchEvent};

const MIN: Duration = Duration::from_millis(100);
const MAX: Duration = Duration::from_secs(10);

fn follower() -> PrefixFollower {
    PrefixFollower::new("p/", (MIN, MAX), 7)
}

fn drain(f: &mut PrefixFollower) -> Vec<FollowAction> {
    std::iter::from_fn(|| f.poll()).collect()
}

fn entry(k: &str, v: &str) -> KvEntry {
    KvEntry::new(k.as_bytes().to_vec(), Bytes::from(v.to_owned()))
}

fn snapshot(revision: u64, pairs: &[(&str, &str)]) -> Snapshot {
    Snapshot {
        revision,
        entries: pairs.iter().map(|(k, v)| entry(k, v)).collect(),
    }
}

fn map(pairs: &[(&str, &str)]) -> Arc<PrefixMap> {
    Arc::new(
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    Bytes::from(k.as_bytes().to_vec()),
                    Bytes::from((*v).to_owned()),
                )
            })
            .collect(),
    )
}

fn put(k: &str, v: &str) -> KvChange {
    KvChange::Put(entry(k, v))
}

fn delete(k: &str) -> KvChange {
    KvChange::Delete {
        key: k.as_bytes().to_vec(),
    }
}

/// A follower that listed `pairs` at `revision` and is watching after it.
fn watching(now: Instant, revision: u64, pairs: &[(&str, &str)]) -> PrefixFollower {
    let mut f = follower();
    assert_eq!(drain(&mut f), vec![FollowAction::List]);
    f.handle_list(now, snapshot(revision, pairs));
    assert_eq!(
        drain(&mut f),
        vec![
            FollowAction::Publish(map(pairs)),
            FollowAction::Watch { after: revision }
        ]
    );
    f
}

#[test]
fn lists_then_watches_from_the_lists_position_and_publishes_each_change() {
    let t0 = Instant::now();
    let mut f = follower();
    assert_eq!(f.picture(), None);
    assert_eq!(drain(&mut f), vec![FollowAction::List]);
    assert_eq!(f.poll_timeout(), None);
    // The first list is published even when empty, then the watch opens.
    f.handle_list(t0, snapshot(5, &[]));
    assert_eq!(
        drain(&mut f),
        vec![
            FollowAction::Publish(map(&[])),
            FollowAction::Watch { after: 5 }
        ]
    );
    assert_eq!(f.revision(), Some(5));
    let ev = WatchEvent::Changes {
        revision: 7,
        changes: vec![put("p/a", "1"), put("p/b", "2")],
    };
    assert_eq!(f.handle_watch(t0, ev), None);
    assert_eq!(
        drain(&mut f),
        vec![FollowAction::Publish(map(&[("p/a", "1"), ("p/b", "2")]))]
    );
    let ev = WatchEvent::Changes {
        revision: 8,
        changes: vec![delete("p/a"), put("p/b", "3")],
    };
    f.handle_watch(t0, ev);
    assert_eq!(
        drain(&mut f),
        vec![FollowAction::Publish(map(&[("p/b", "3")]))]
    );
    assert_eq!(f.picture(), Some(&map(&[("p/b", "3")])));
    assert_eq!(f.revision(), Some(8));
    assert_eq!(f.poll_timeout(), None, "no deadline while watching");
}

#[test]
fn publishes_only_when_the_picture_changed() {
    let t0 = Instant::now();
    let mut f = watching(t0, 5, &[("p/a", "1")]);
    // The same value again, a delete of a missing key, a put undone in the
    // same event, progress: nothing to publish, but the position advances.
    let ev = WatchEvent::Changes {
        revision: 6,
        changes: vec![put("p/a", "1"), delete("p/zz")],
    };
    f.handle_watch(t0, ev);
    let ev = WatchEvent::Changes {
        revision: 7,
        changes: vec![put("p/a", "2"), put("p/a", "1")],
    };
    f.handle_watch(t0, ev);
    f.handle_watch(t0, WatchEvent::Progress { revision: 9 });
    f.handle_watch(t0, WatchEvent::Snapshot(snapshot(10, &[("p/a", "1")])));
    assert_eq!(drain(&mut f), vec![]);
    assert_eq!(f.revision(), Some(10));
    // A relist that finds the same picture publishes nothing either.
    let _ = f.handle_watch(
        t0,
        WatchEvent::Lost {
            reason: "compacted".into(),
        },
    );
    let at = f.poll_timeout().expect("a relist is due");
    f.handle_timeout(at);
    assert_eq!(drain(&mut f), vec![FollowAction::List]);
    f.handle_list(at, snapshot(12, &[("p/a", "1")]));
    assert_eq!(drain(&mut f), vec![FollowAction::Watch { after: 12 }]);
}

#[test]
fn a_snapshot_replaces_the_picture() {
    let t0 = Instant::now();
    let mut f = watching(t0, 5, &[("p/a", "1"), ("p/b", "2")]);
    // A Consul-style answer: the whole prefix, not a difference.
    f.handle_watch(
        t0,
        WatchEvent::Snapshot(snapshot(9, &[("p/b", "2"), ("p/c", "3")])),
    );
    assert_eq!(
        drain(&mut f),
        vec![FollowAction::Publish(map(&[("p/b", "2"), ("p/c", "3")]))]
    );
    assert_eq!(f.revision(), Some(9));
    // And an empty one empties it.
    f.handle_watch(t0, WatchEvent::Snapshot(snapshot(11, &[])));
    assert_eq!(drain(&mut f), vec![FollowAction::Publish(map(&[]))]);
}

#[test]
fn a_lost_position_relists_after_a_backoff() {
    let t0 = Instant::now();
    let mut f = watching(t0, 5, &[("p/a", "1")]);
    let delay = f
        .handle_watch(
            t0,
            WatchEvent::Lost {
                reason: "compacted".into(),
            },
        )
        .expect("a lost position backs off");
    assert_eq!(delay, MIN, "the first delay is the floor");
    assert_eq!(drain(&mut f), vec![], "nothing until the backoff is over");
    assert_eq!(f.revision(), None, "the position is gone");
    assert_eq!(f.poll_timeout(), Some(t0 + delay));
    // Events of the dropped watch are not taken.
    let late = WatchEvent::Changes {
        revision: 6,
        changes: vec![put("p/b", "2")],
    };
    assert_eq!(f.handle_watch(t0, late), None);
    f.handle_timeout(t0 + delay.saturating_sub(Duration::from_millis(1)));
    assert_eq!(drain(&mut f), vec![]);
    f.handle_timeout(t0 + delay);
    assert_eq!(drain(&mut f), vec![FollowAction::List]);
    assert_eq!(f.poll_timeout(), None);
    // The relist finds a new picture: published, then watched from there.
    let t1 = t0 + delay;
    f.handle_list(t1, snapshot(40, &[("p/a", "1"), ("p/b", "2")]));
    assert_eq!(
        drain(&mut f),
        vec![
            FollowAction::Publish(map(&[("p/a", "1"), ("p/b", "2")])),
            FollowAction::Watch { after: 40 }
        ]
    );
    // A list does not reset the backoff (it follows a lost position) ...
    assert_eq!(f.failures(), 1);
    // ... a watch event does.
    f.handle_watch(t1, WatchEvent::Progress { revision: 41 });
    assert_eq!(f.failures(), 0);
}

#[test]
fn an_error_rewatches_from_the_last_position_after_a_growing_backoff() {
    let t0 = Instant::now();
    let mut f = watching(t0, 5, &[]);
    f.handle_watch(
        t0,
        WatchEvent::Changes {
            revision: 8,
            changes: vec![put("p/a", "1")],
        },
    );
    drain(&mut f);
    // The stream fails: watch again after 8, not from the list's 5.
    let d1 = f.handle_watch_error(t0).expect("watching");
    assert_eq!(d1, MIN);
    assert_eq!(f.handle_watch_error(t0), None, "no watch open");
    assert_eq!(f.revision(), Some(8));
    f.handle_timeout(t0 + d1);
    assert_eq!(drain(&mut f), vec![FollowAction::Watch { after: 8 }]);
    // Opening it fails too: the next delay is drawn under a doubled cap.
    let t1 = t0 + d1;
    let d2 = f.handle_watch_error(t1).expect("watching");
    assert!(d2 >= MIN && d2 <= 2 * MIN, "{d2:?}");
    assert_eq!(f.failures(), 2);
    f.handle_timeout(t1 + d2);
    assert_eq!(drain(&mut f), vec![FollowAction::Watch { after: 8 }]);
    // The picture is kept all along; an event resets the backoff.
    assert_eq!(f.picture(), Some(&map(&[("p/a", "1")])));
    f.handle_watch(t1 + d2, WatchEvent::Progress { revision: 8 });
    assert_eq!(f.failures(), 0);
}

#[test]
fn a_failed_list_is_retried_and_nothing_is_published_before_the_first_list() {
    let t0 = Instant::now();
    let mut f = follower();
    drain(&mut f);
    let d = f.handle_list_error(t0).expect("a list was awaited");
    assert_eq!(d, MIN);
    assert_eq!(f.handle_list_error(t0), None, "no list in flight");
    assert_eq!(f.picture(), None);
    // Nothing but the answer to a list is taken meanwhile.
    assert_eq!(f.handle_watch_error(t0), None);
    f.handle_list(t0, snapshot(3, &[("p/a", "1")]));
    assert_eq!(drain(&mut f), vec![]);
    f.handle_timeout(t0 + d);
    assert_eq!(drain(&mut f), vec![FollowAction::List]);
    f.handle_list(t0 + d, snapshot(3, &[("p/a", "1")]));
    assert_eq!(
        drain(&mut f),
        vec![
            FollowAction::Publish(map(&[("p/a", "1")])),
            FollowAction::Watch { after: 3 }
        ]
    );
}

#[test]
fn the_same_seed_gives_the_same_delays() {
    let t0 = Instant::now();
    let delays = || {
        let mut f = watching(t0, 1, &[]);
        let mut now = t0;
        (0..8)
            .map(|_| {
                let d = f.handle_watch_error(now).expect("watching");
                now += d;
                f.handle_timeout(now);
                drain(&mut f);
                d
            })
            .collect::<Vec<_>>()
    };
    let a = delays();
    assert_eq!(a, delays());
    assert!(a.iter().all(|d| *d >= MIN && *d <= MAX));
}

// ----- the tokio driver (`spawn_follow`) on the memory store, paused clock -----

mod driver {
    use std::sync::Arc;
    use std::time::Duration;

    use leader_core::follow::{spawn_follow, PrefixMap, PrefixView};
    use worker_core::{KvWatch, MemoryStore};

    /// The next picture, within a minute of virtual time.
    async fn next(view: &mut PrefixView) -> Arc<PrefixMap> {
        tokio::time::timeout(Duration::from_secs(60), view.changed())
            .await
            .expect("a new picture in time")
            .expect("the follower runs");
        view.borrow_and_update().clone().expect("listed")
    }

    fn keys(map: &Arc<PrefixMap>) -> Vec<String> {
        map.keys()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn follows_changes_and_recovers_from_an_outage() {
        let store = MemoryStore::new();
        store.put("p/a", "1");
        store.put("q/x", "not followed");
        let kv: Arc<dyn KvWatch> = Arc::new(store.clone());
        let backoff = (Duration::from_millis(100), Duration::from_secs(10));
        let (mut view, _task) = spawn_follow(kv, "p/".into(), backoff);
        assert_eq!(keys(&next(&mut view).await), ["p/a"]);
        store.put("p/b", "2");
        assert_eq!(keys(&next(&mut view).await), ["p/a", "p/b"]);
        // An outage: the picture stays; after it, the change made meanwhile
        // arrives (the watch is reopened from the last position).
        store.set_unavailable("down");
        tokio::time::sleep(Duration::from_secs(5)).await;
        store.delete("p/a");
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(
            keys(&view.borrow().clone().expect("listed")),
            ["p/a", "p/b"]
        );
        store.set_available();
        assert_eq!(keys(&next(&mut view).await), ["p/b"]);
    }

    #[tokio::test(start_paused = true)]
    async fn relists_after_a_compaction_past_its_position() {
        let store = MemoryStore::new();
        store.put("p/a", "1");
        let kv: Arc<dyn KvWatch> = Arc::new(store.clone());
        let backoff = (Duration::from_millis(100), Duration::from_secs(10));
        let (mut view, _task) = spawn_follow(kv, "p/".into(), backoff);
        assert_eq!(keys(&next(&mut view).await), ["p/a"]);
        let listed = store.stats().lists;
        // Changes the watch has not read yet are compacted away.
        store.set_unavailable("down");
        tokio::time::sleep(Duration::from_secs(1)).await;
        store.put("p/b", "2");
        store.delete("p/a");
        store.compact(store.revision());
        store.set_available();
        assert_eq!(keys(&next(&mut view).await), ["p/b"]);
        assert!(store.stats().lists > listed, "it listed again");
        // And it watches from the new list's position.
        store.put("p/c", "3");
        assert_eq!(keys(&next(&mut view).await), ["p/b", "p/c"]);
    }
}

//! Keeps a picture of everything under a prefix current: list, then watch
//! from the list's position; relist when the position is lost; reopen the
//! watch from the last position after an error, with backoff.
//!
//! The logic is a pure state machine, [`PrefixFollower`] (no I/O, no clock:
//! time arrives as a `now` argument), in the shape of the worker's
//! `Machine` and the [`LeaderMachine`](crate::LeaderMachine). The tokio task
//! of [`spawn_follow`] is its thin driver; the simulator drives the same
//! machine.
//!
//! | state | input | next |
//! |---|---|---|
//! | listing | a snapshot | the picture is replaced (published if it differs); watching after its revision |
//! | listing | an error | after a backoff: list again |
//! | watching | `Changes` / `Snapshot` | backoff reset; the position advances; the picture is updated (published if it differs) |
//! | watching | `Progress` | backoff reset; the position advances |
//! | watching | `Lost` | after a backoff: list again (the position is gone) |
//! | watching | an error (opening the watch, or the stream) | after a backoff: watch again from the last position |
//!
//! The backoff is reset only by a watch event, as in the original task: a
//! list that succeeds does not reset it (it often follows a lost position).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use std::time::Instant;
use tokio::sync::watch;
use tracing::{debug, warn};
use worker_core::{
    Backoff, ErrorChain, KvChange, KvStream, KvWatch, Revision, Snapshot, StoreError, WatchEvent,
};

/// Everything under a prefix: key -> value. The keys are [`Bytes`], so a
/// copy of the picture (one per change) copies no key or value.
pub type PrefixMap = BTreeMap<Bytes, Bytes>;

/// The receiving end: `None` until the first list succeeded.
pub type PrefixView = watch::Receiver<Option<Arc<PrefixMap>>>;

/// The seed of the backoff jitter of [`spawn_follow`]'s follower.
pub const FOLLOW_SEED: u64 = 0x00f0_110e;

/// What the driver of a [`PrefixFollower`] must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FollowAction {
    /// Read the whole prefix (drop any open watch first) and hand the answer
    /// to [`PrefixFollower::handle_list`] or
    /// [`PrefixFollower::handle_list_error`].
    List,
    /// Open a watch of the prefix after `after` (drop any open one first);
    /// hand its events to [`PrefixFollower::handle_watch`], and a failure to
    /// open it or of the stream to [`PrefixFollower::handle_watch_error`].
    Watch {
        /// The position to resume after.
        after: Revision,
    },
    /// The picture of the prefix changed (or is the first one).
    Publish(Arc<PrefixMap>),
}

/// Where the follower stands; each state holds exactly its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A list was asked for; its answer is awaited.
    Listing,
    /// A watch after `revision` was asked for (or is open).
    Watching { revision: Revision },
    /// Backing off; then list.
    RelistAt { at: Instant },
    /// Backing off; then watch again after `revision`.
    RewatchAt { at: Instant, revision: Revision },
}

/// The logic of a prefix follower. See the [module docs](self).
#[derive(Debug)]
pub struct PrefixFollower {
    prefix: String,
    state: State,
    /// The last picture published; `None` until the first list.
    picture: Option<Arc<PrefixMap>>,
    backoff: Backoff,
    rng: SmallRng,
    out: VecDeque<FollowAction>,
}

impl PrefixFollower {
    /// A follower of `prefix` that retries after delays between
    /// `backoff.0` and `backoff.1` (exponential, jittered by a generator
    /// seeded with `seed`). Its first action is [`FollowAction::List`].
    pub fn new(prefix: impl Into<String>, backoff: (Duration, Duration), seed: u64) -> Self {
        Self {
            prefix: prefix.into(),
            state: State::Listing,
            picture: None,
            backoff: Backoff::new(backoff.0, backoff.1),
            rng: SmallRng::seed_from_u64(seed),
            out: std::iter::once(FollowAction::List).collect(),
        }
    }

    /// The prefix followed.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The last picture published, once the first list succeeded.
    pub fn picture(&self) -> Option<&Arc<PrefixMap>> {
        self.picture.as_ref()
    }

    /// The position a watch resumes after, while watching (or about to
    /// watch again).
    pub fn revision(&self) -> Option<Revision> {
        match self.state {
            State::Watching { revision } | State::RewatchAt { revision, .. } => Some(revision),
            State::Listing | State::RelistAt { .. } => None,
        }
    }

    /// Failures since the backoff was last reset (for the driver's log level).
    pub fn failures(&self) -> u32 {
        self.backoff.failures()
    }

    /// The answer to [`FollowAction::List`]. Ignored unless a list is awaited.
    pub fn handle_list(&mut self, _now: Instant, snapshot: Snapshot) {
        if self.state != State::Listing {
            return;
        }
        let revision = snapshot.revision;
        self.state = State::Watching { revision };
        self.replace(snapshot);
        self.out.push_back(FollowAction::Watch { after: revision });
    }

    /// [`FollowAction::List`] failed: lists again after a backoff. Returns
    /// the delay (for the driver's log), or `None` if no list was awaited.
    pub fn handle_list_error(&mut self, now: Instant) -> Option<Duration> {
        if self.state != State::Listing {
            return None;
        }
        let delay = self.backoff.next_delay(&mut self.rng);
        self.state = State::RelistAt { at: now + delay };
        Some(delay)
    }

    /// An event of the watch opened by [`FollowAction::Watch`]. Returns the
    /// backoff delay when the event was `Lost` (the follower lists again
    /// after it), else `None`. Ignored unless watching.
    pub fn handle_watch(&mut self, now: Instant, event: WatchEvent) -> Option<Duration> {
        if !matches!(self.state, State::Watching { .. }) {
            return None;
        }
        match event {
            WatchEvent::Changes {
                revision: r,
                changes,
            } => {
                self.backoff.reset();
                self.state = State::Watching { revision: r };
                self.apply(changes);
                None
            }
            WatchEvent::Snapshot(s) => {
                self.backoff.reset();
                self.state = State::Watching {
                    revision: s.revision,
                };
                self.replace(s);
                None
            }
            WatchEvent::Progress { revision: r } => {
                self.backoff.reset();
                self.state = State::Watching { revision: r };
                None
            }
            WatchEvent::Lost { .. } => {
                let delay = self.backoff.next_delay(&mut self.rng);
                self.state = State::RelistAt { at: now + delay };
                Some(delay)
            }
        }
    }

    /// Opening the watch failed, or its stream did: watches again from the
    /// last position after a backoff. Returns the delay (for the driver's
    /// log), or `None` if not watching.
    pub fn handle_watch_error(&mut self, now: Instant) -> Option<Duration> {
        let State::Watching { revision } = self.state else {
            return None;
        };
        let delay = self.backoff.next_delay(&mut self.rng);
        self.state = State::RewatchAt {
            at: now + delay,
            revision,
        };
        Some(delay)
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::RelistAt { at } | State::RewatchAt { at, .. } => Some(at),
            State::Listing | State::Watching { .. } => None,
        }
    }

    /// Time passed: once the backoff is over, lists or watches again.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::RelistAt { at } if now >= at => {
                self.state = State::Listing;
                self.out.push_back(FollowAction::List);
            }
            State::RewatchAt { at, revision } if now >= at => {
                self.state = State::Watching { revision };
                self.out.push_back(FollowAction::Watch { after: revision });
            }
            _ => {}
        }
    }

    /// The next thing to do, if any. Drain after every input.
    pub fn poll(&mut self) -> Option<FollowAction> {
        self.out.pop_front()
    }

    /// The picture becomes the snapshot's entries.
    fn replace(&mut self, snapshot: Snapshot) {
        let next: PrefixMap = snapshot
            .entries
            .into_iter()
            .map(|e| (Bytes::from(e.key), e.value))
            .collect();
        self.publish_if_changed(next);
    }

    /// Applies incremental changes to the picture; copies it only if one of
    /// them changes something.
    fn apply(&mut self, changes: Vec<KvChange>) {
        let Some(current) = &self.picture else {
            return; // unreachable: watching follows a list
        };
        let mut next: Option<PrefixMap> = None;
        let mut touched: Vec<Bytes> = Vec::new();
        for change in changes {
            let seen = next.as_ref().unwrap_or(current);
            match change {
                KvChange::Put(e) => {
                    if seen.get(e.key.as_slice()) != Some(&e.value) {
                        let key = Bytes::from(e.key);
                        touched.push(key.clone());
                        next.get_or_insert_with(|| (**current).clone())
                            .insert(key, e.value);
                    }
                }
                KvChange::Delete { key } => {
                    if seen.contains_key(key.as_slice()) {
                        next.get_or_insert_with(|| (**current).clone())
                            .remove(key.as_slice());
                        touched.push(Bytes::from(key));
                    }
                }
            }
        }
        // Changed unless every key touched is back as it was: compared key
        // by key, not the whole picture.
        if let Some(next) = next {
            if touched.iter().any(|k| next.get(k) != current.get(k)) {
                self.publish(next);
            }
        }
    }

    fn publish_if_changed(&mut self, next: PrefixMap) {
        if self.picture.as_deref() != Some(&next) {
            self.publish(next);
        }
    }

    fn publish(&mut self, next: PrefixMap) {
        let next = Arc::new(next);
        self.picture = Some(next.clone());
        self.out.push_back(FollowAction::Publish(next));
    }
}

/// Starts following `prefix`; the task ends when every receiver is dropped.
///
/// # Panics
/// When called outside a tokio runtime.
pub fn spawn_follow(
    kv: Arc<dyn KvWatch>,
    prefix: String,
    backoff: (Duration, Duration),
) -> (PrefixView, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(None);
    let task = tokio::spawn(async move {
        tokio::select! {
            () = follow(kv.as_ref(), PrefixFollower::new(prefix, backoff, FOLLOW_SEED), &tx) => {}
            () = tx.closed() => {}
        }
    });
    (rx, task)
}

/// Logs a failed read: at debug while retries are few, at warn after.
fn log_retry(follower: &PrefixFollower, delay: Option<Duration>, e: &StoreError) {
    let Some(delay) = delay else { return };
    let prefix = follower.prefix();
    if follower.failures() > 3 {
        warn!(prefix, error = %ErrorChain(e), retry_in = ?delay, "reading prefix failed");
    } else {
        debug!(prefix, error = %ErrorChain(e), retry_in = ?delay, "reading prefix failed");
    }
}

/// The driver: one request at a time, so it carries out each action in turn
/// and, when none is left, sleeps until the deadline or reads the stream.
async fn follow(
    kv: &dyn KvWatch,
    mut follower: PrefixFollower,
    tx: &watch::Sender<Option<Arc<PrefixMap>>>,
) {
    let mut stream: Option<Box<dyn KvStream>> = None;
    loop {
        while let Some(action) = follower.poll() {
            match action {
                FollowAction::List => {
                    stream = None;
                    match kv.list(follower.prefix()).await {
                        Ok(snapshot) => follower.handle_list(crate::clock::now(), snapshot),
                        Err(e) => {
                            let delay = follower.handle_list_error(crate::clock::now());
                            log_retry(&follower, delay, &e);
                        }
                    }
                }
                FollowAction::Watch { after } => {
                    stream = None;
                    match kv.watch(follower.prefix(), after).await {
                        Ok(s) => stream = Some(s),
                        Err(e) => {
                            let delay = follower.handle_watch_error(crate::clock::now());
                            log_retry(&follower, delay, &e);
                        }
                    }
                }
                FollowAction::Publish(map) => {
                    tx.send_replace(Some(map));
                }
            }
        }
        if let Some(at) = follower.poll_timeout() {
            tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
            follower.handle_timeout(crate::clock::now());
            continue;
        }
        let Some(s) = stream.as_mut() else {
            return; // unreachable: neither waiting nor watching
        };
        match s.next().await {
            Ok(WatchEvent::Lost { reason }) => {
                stream = None;
                debug!(
                    prefix = follower.prefix(),
                    reason, "position lost: relisting"
                );
                let delay = follower.handle_watch(
                    crate::clock::now(),
                    WatchEvent::Lost {
                        reason: reason.clone(),
                    },
                );
                log_retry(&follower, delay, &StoreError::protocol(reason));
            }
            Ok(event) => {
                follower.handle_watch(crate::clock::now(), event);
            }
            Err(e) => {
                stream = None;
                let delay = follower.handle_watch_error(crate::clock::now());
                log_retry(&follower, delay, &e);
            }
        }
    }
}

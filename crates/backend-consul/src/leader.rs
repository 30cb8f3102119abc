//! Leadership: the session holding the leader key.
//!
//! One task per backend ([`Hub`]) runs the blocking queries on the leader key
//! ([`ConsulLeaderStream`]) and publishes what it learns through a
//! [`tokio::sync::watch`] channel; every observation ([`SharedLeaderStream`])
//! reads from it. A process with W workers on one backend thus holds W + 1
//! blocking queries, not 2W.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use consulrs::api::kv::common::KVPair;
use tokio::sync::watch;
use tracing::debug;
use worker_core::{BoxError, ErrorChain, Leader, LeaderStream, Revision, StoreError};

use tokio::time::Instant;

use crate::error::ProtocolError;
use crate::http::Http;
use crate::ratelimit::TokenBucket;
use crate::watch::early;

/// The leader the key's state shows: present when the key holds a session.
///
/// `term` is `CreateIndex + LockIndex`: it grows with every acquisition of the
/// key (`LockIndex` counts them; when the key is deleted and created again,
/// the new `CreateIndex` is above every index of the old key), and does not
/// move when the holder only rewrites the value (which changes `ModifyIndex`).
pub(crate) fn leader_of(key: &str, pairs: &[KVPair]) -> Option<Leader> {
    let pair = pairs.iter().find(|p| p.key == key)?;
    let session = pair.session.as_deref().filter(|s| !s.is_empty())?;
    let name = pair
        .value
        .clone()
        .and_then(|v| TryInto::<String>::try_into(v).ok())
        .filter(|v| !v.is_empty());
    Some(Leader {
        id: session.to_owned(),
        term: pair.create_index.saturating_add(pair.lock_index),
        name,
    })
}

/// Reads the leader key, blocking on `index` when one is given.
pub(crate) async fn read(
    http: &Http,
    key: &str,
    index: Option<Revision>,
) -> Result<(Revision, Option<Leader>), StoreError> {
    let answer = http.read(key, false, index).await?;
    let pairs = if answer.body.is_empty() {
        Vec::new()
    } else {
        serde_json::from_slice::<Vec<KVPair>>(&answer.body).map_err(StoreError::protocol)?
    };
    Ok((answer.index, leader_of(key, &pairs)))
}

/// Blocking queries on the leader key; see [`LeaderStream`].
pub(crate) struct ConsulLeaderStream {
    http: Arc<Http>,
    key: String,
    index: Revision,
    /// Whether a state was returned yet (the first call does not block).
    started: bool,
    /// The state last returned.
    last: Option<Leader>,
    unchanged: bool,
    /// Whether the next read is a plain one (see [`crate::watch::early`]).
    verify: bool,
    bucket: TokenBucket,
}

impl ConsulLeaderStream {
    pub(crate) fn new(http: Arc<Http>, key: &str) -> Self {
        Self {
            http,
            key: key.to_owned(),
            index: 0,
            started: false,
            last: None,
            unchanged: false,
            verify: false,
            bucket: TokenBucket::new(),
        }
    }
}

#[async_trait]
impl LeaderStream for ConsulLeaderStream {
    /// The first call reads the key at once; later calls block on it until the
    /// leader differs from the one last returned. Answers that change nothing
    /// are paced by the rate limiter; an index that went backwards is reset to
    /// 0 (the next query then answers at once).
    ///
    /// Cancel safe: the only await points are the rate limiter's token (cancel
    /// safe itself) and the request; the stream's fields change only after an
    /// answer arrived, with no await point between that and the next query or
    /// returning.
    async fn next(&mut self) -> Result<Option<Leader>, StoreError> {
        loop {
            if self.started && self.unchanged {
                self.bucket.take().await;
            }
            let blocking = self.started && !self.verify;
            let sent_at = Instant::now();
            let (index, leader) =
                read(&self.http, &self.key, blocking.then_some(self.index)).await?;
            // An early answer with the same index: Consul may have abandoned
            // its state (snapshot restore); check with a plain read.
            self.verify =
                blocking && index == self.index && early(sent_at.elapsed(), self.http.wait());
            self.index = if index < self.index { 0 } else { index };
            if self.started && self.last == leader {
                self.unchanged = true;
                continue;
            }
            self.unchanged = false;
            self.started = true;
            self.last.clone_from(&leader);
            return Ok(leader);
        }
    }
}

/// First delay before the shared task reads again after a failed read.
const RETRY_MIN: Duration = Duration::from_millis(100);
/// Cap of that delay (it doubles with each failure in a row).
const RETRY_MAX: Duration = Duration::from_secs(5);

/// What the shared task publishes.
#[derive(Clone, Default)]
struct State {
    /// Whether `leader` is known: not before the first answer, nor after a
    /// failure until the next answer.
    known: bool,
    /// The leader as of the task's last read, when `known`.
    leader: Option<Leader>,
    /// How many reads failed so far; each observation reports each failure
    /// that happens while it is open once.
    failures: u64,
    /// The last failure.
    error: Option<SharedError>,
}

/// The shared observation of one leader key: a task running
/// [`ConsulLeaderStream`] and publishing its states. The task is aborted when
/// the hub is dropped, i.e. with the last observation holding it.
pub(crate) struct Hub {
    state: watch::Receiver<State>,
    task: tokio::task::AbortHandle,
}

impl Hub {
    /// Starts the task on the current tokio runtime (an error outside one).
    pub(crate) fn start(http: Arc<Http>, key: &str) -> Result<Arc<Self>, StoreError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(StoreError::unavailable)?;
        let (tx, rx) = watch::channel(State::default());
        let task = runtime.spawn(run(http, key.to_owned(), tx)).abort_handle();
        Ok(Arc::new(Self { state: rx, task }))
    }

    /// Whether the task still runs (it ends only when aborted or when its
    /// runtime shuts down).
    pub(crate) fn is_running(&self) -> bool {
        !self.task.is_finished()
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The shared task: blocking queries on the leader key, each new state and
/// each failure published; after a failure, a fresh chain (whose first read
/// does not block) after a growing delay.
async fn run(http: Arc<Http>, key: String, tx: watch::Sender<State>) {
    let mut stream = ConsulLeaderStream::new(http.clone(), &key);
    let mut delay = RETRY_MIN;
    loop {
        match stream.next().await {
            Ok(leader) => {
                delay = RETRY_MIN;
                tx.send_modify(|s| {
                    s.known = true;
                    s.leader = leader;
                });
            }
            Err(e) => {
                debug!(key, error = %ErrorChain(&e), retry_in = ?delay, "leader key read failed");
                tx.send_modify(|s| {
                    s.known = false;
                    s.leader = None;
                    s.failures += 1;
                    s.error = Some(SharedError::from(e));
                });
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(RETRY_MAX);
                stream = ConsulLeaderStream::new(http.clone(), &key);
            }
        }
    }
}

/// An observation of the leader key, reading the states its [`Hub`] publishes.
pub(crate) struct SharedLeaderStream {
    /// Keeps the task running while this observation is open.
    _hub: Arc<Hub>,
    state: watch::Receiver<State>,
    /// The failures already reported (or that happened before this observation).
    failures_seen: u64,
    /// Whether a state was returned yet.
    returned: bool,
    /// The state last returned.
    last: Option<Leader>,
}

impl SharedLeaderStream {
    pub(crate) fn new(hub: Arc<Hub>) -> Self {
        let state = hub.state.clone();
        let failures_seen = state.borrow().failures;
        Self {
            _hub: hub,
            state,
            failures_seen,
            returned: false,
            last: None,
        }
    }
}

#[async_trait]
impl LeaderStream for SharedLeaderStream {
    /// The first call returns the current state as soon as the shared task
    /// knows it; later calls wait for a state that differs from the one last
    /// returned. A failure of the shared task's read while this observation is
    /// open is returned once, as an error.
    ///
    /// Cancel safe: the only await point is the wait for a new state; the
    /// stream's own fields change only right before returning.
    async fn next(&mut self) -> Result<Option<Leader>, StoreError> {
        loop {
            {
                let state = self.state.borrow_and_update();
                if state.failures != self.failures_seen {
                    self.failures_seen = state.failures;
                    if let Some(error) = &state.error {
                        return Err(error.to_store_error());
                    }
                }
                if state.known && !(self.returned && self.last == state.leader) {
                    self.returned = true;
                    self.last.clone_from(&state.leader);
                    return Ok(state.leader.clone());
                }
            }
            if self.state.changed().await.is_err() {
                return Err(StoreError::unavailable(ProtocolError(
                    "the leader key observation ended".into(),
                )));
            }
        }
    }
}

/// A [`StoreError`] kept to be handed to every observation (`StoreError` is
/// not `Clone`): its kind and its source, shared.
#[derive(Clone)]
enum SharedError {
    Unavailable(Shared),
    PermissionDenied(Shared),
    Protocol(Shared),
    Timeout(Duration),
}

impl From<StoreError> for SharedError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(s) => Self::Unavailable(Shared(s.into())),
            StoreError::PermissionDenied(s) => Self::PermissionDenied(Shared(s.into())),
            StoreError::Protocol(s) => Self::Protocol(Shared(s.into())),
            StoreError::Timeout(d) => Self::Timeout(d),
            other => Self::Unavailable(Shared(Arc::new(other))),
        }
    }
}

impl SharedError {
    fn to_store_error(&self) -> StoreError {
        let boxed = |s: &Shared| -> BoxError { Box::new(s.clone()) };
        match self {
            Self::Unavailable(s) => StoreError::Unavailable(boxed(s)),
            Self::PermissionDenied(s) => StoreError::PermissionDenied(boxed(s)),
            Self::Protocol(s) => StoreError::Protocol(boxed(s)),
            Self::Timeout(d) => StoreError::Timeout(*d),
        }
    }
}

/// A shared error source that shows as the error it holds (same message,
/// same sources).
#[derive(Clone)]
struct Shared(Arc<dyn StdError + Send + Sync>);

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

impl StdError for Shared {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.0.source()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(key: &str, session: Option<&str>, create: u64, lock: u64, modify: u64) -> KVPair {
        KVPair {
            key: key.into(),
            session: session.map(Into::into),
            create_index: create,
            lock_index: lock,
            modify_index: modify,
            ..KVPair::default()
        }
    }

    #[test]
    fn a_leader_is_a_session_holding_the_key() {
        let key = "svc/leader";
        assert_eq!(leader_of(key, &[]), None);
        assert_eq!(leader_of(key, &[pair(key, None, 5, 1, 7)]), None);
        assert_eq!(leader_of(key, &[pair(key, Some(""), 5, 1, 7)]), None);
        assert_eq!(leader_of(key, &[pair("other", Some("s"), 5, 1, 7)]), None);
        let l = leader_of(key, &[pair(key, Some("s1"), 5, 1, 7)]).unwrap();
        assert_eq!(
            l,
            Leader {
                id: "s1".into(),
                term: 6,
                name: None,
            }
        );
        // A value rewrite by the holder moves ModifyIndex only: same term.
        assert_eq!(
            leader_of(key, &[pair(key, Some("s1"), 5, 1, 9)]),
            Some(l.clone())
        );
        // A new acquisition moves LockIndex: a new term.
        assert_ne!(leader_of(key, &[pair(key, Some("s1"), 5, 2, 12)]), Some(l));
    }

    fn fake_hub() -> (watch::Sender<State>, Arc<Hub>) {
        let (tx, rx) = watch::channel(State::default());
        let task = tokio::spawn(std::future::pending::<()>()).abort_handle();
        (tx, Arc::new(Hub { state: rx, task }))
    }

    fn fail(tx: &watch::Sender<State>, message: &str) {
        let e = StoreError::unavailable(ProtocolError(message.into()));
        tx.send_modify(|s| {
            s.known = false;
            s.leader = None;
            s.failures += 1;
            s.error = Some(SharedError::from(e));
        });
    }

    async fn pending(stream: &mut SharedLeaderStream) -> bool {
        tokio::time::timeout(Duration::from_millis(50), stream.next())
            .await
            .is_err()
    }

    #[tokio::test]
    async fn shared_states_reach_every_observation() {
        let (tx, hub) = fake_hub();
        let mut a = SharedLeaderStream::new(hub.clone());
        // Nothing known yet: the first call waits (and is cancel safe).
        assert!(pending(&mut a).await);
        let l1 = Leader {
            id: "s1".into(),
            term: 3,
            name: None,
        };
        let known = |leader: Option<Leader>| {
            move |s: &mut State| {
                s.known = true;
                s.leader = leader;
            }
        };
        tx.send_modify(known(Some(l1.clone())));
        assert_eq!(a.next().await.unwrap(), Some(l1.clone()));
        // A later observation gets the current state at once.
        let mut b = SharedLeaderStream::new(hub.clone());
        assert_eq!(b.next().await.unwrap(), Some(l1.clone()));
        // The same state again is no news.
        tx.send_modify(known(Some(l1.clone())));
        assert!(pending(&mut a).await);
        // A failure reaches each open observation once, with its message.
        fail(&tx, "boom");
        for s in [&mut a, &mut b] {
            let err = s.next().await.unwrap_err();
            assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
            assert_eq!(ErrorChain(&err).to_string(), "store unreachable: boom");
        }
        // An observation opened after it does not see it; all see what follows.
        let mut c = SharedLeaderStream::new(hub.clone());
        assert!(pending(&mut c).await);
        tx.send_modify(known(None));
        for s in [&mut a, &mut b, &mut c] {
            assert_eq!(s.next().await.unwrap(), None);
        }
        // The task ending is an error, not a hang.
        drop(tx);
        assert!(a.next().await.is_err());
    }

    #[tokio::test]
    async fn one_task_per_backend_stopped_with_the_last_observation() {
        use worker_core::LeaderWait;

        let backend =
            crate::ConsulBackend::new(crate::ConsulConfig::new(vec!["http://127.0.0.1:1".into()]))
                .unwrap();
        let mut a = backend.observe().await.unwrap();
        let mut b = backend.clone().observe().await.unwrap();
        let hub = backend.inner.leader_hub.lock().unwrap().upgrade().unwrap();
        assert_eq!(
            Arc::strong_count(&hub),
            3,
            "both observations share one hub"
        );
        // Nothing listens: the shared read fails, and each observation says so.
        for s in [&mut a, &mut b] {
            let err = s.next().await.unwrap_err();
            assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        }
        let task = hub.task.clone();
        drop((hub, a, b));
        tokio::task::yield_now().await;
        assert!(task.is_finished(), "the task outlived its observations");
        assert!(backend.inner.leader_hub.lock().unwrap().upgrade().is_none());
    }
}

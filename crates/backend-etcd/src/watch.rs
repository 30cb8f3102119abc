//! A prefix watch with dead-stream detection, and its conversion to core events.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use etcd_client::{EventType, WatchOptions, WatchResponse, WatchStream};
use tokio::time::Instant;
use tracing::{debug, trace};
use worker_core::{KvChange, KvEntry, KvStream, Revision, StoreError, WatchEvent};

use crate::error::{is_connection_dropped, store_error, timeout};
use crate::pool::Pool;

/// The watch id etcd puts on answers to progress requests (not tied to a watch).
const PROGRESS_RESPONSE_ID: i64 = -1;

/// One open etcd watch stream on one endpoint.
///
/// Liveness: the connection's HTTP/2 keep-alive pings (see
/// [`Liveness`](crate::pool::Liveness)) fail every call on a connection that
/// stops answering; [`next_response`](Self::next_response) then fails with
/// [`StoreError::Timeout`] and the endpoint is marked failed. An idle healthy
/// watch sends nothing at all. Only when the keep-alive bound is too short for
/// pings (below 10 s) does a watch that has been silent for half of it also
/// send a progress request; any message counts as an answer, and if the other
/// half passes without one the watch fails the same way.
pub(crate) struct Watcher {
    pool: Arc<Pool>,
    slot: usize,
    /// The whole stream (request sender and responses): dropping the sender
    /// would end the watch.
    stream: WatchStream,
    watch_id: i64,
    /// Silence after which a progress request is sent (`None`: pings suffice).
    probe_after: Option<Duration>,
    last_heard: Instant,
    probe_sent: Option<Instant>,
    /// A response read while opening, not yet handed out.
    first: Option<WatchResponse>,
}

impl Watcher {
    /// Opens a watch of every key starting with `prefix`, from revision `start`
    /// (etcd revision numbers), and waits for etcd to confirm it.
    pub(crate) async fn open(
        pool: Arc<Pool>,
        prefix: &[u8],
        start: i64,
    ) -> Result<Self, StoreError> {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(start)
            .with_progress_notify();
        let key = prefix.to_vec();
        let shared: &Pool = &pool;
        let ((stream, first), slot) = pool
            .run(|client| {
                let (key, options) = (key.clone(), options.clone());
                async move {
                    let opened = open_stream(&client, &key, &options).await?;
                    if !refused_token(&opened.1) || !shared.has_credentials() {
                        return Ok(opened);
                    }
                    // etcd checks a watch's token when the watch is created, not
                    // when the stream opens, so etcd-client's own refresh (on an
                    // `Unauthenticated` status) never fires for watches: an expired
                    // token comes back as a cancelled creation. Authenticate
                    // again and retry once, from the same revision.
                    debug!(
                        reason = opened.1.cancel_reason(),
                        "etcd refused the watch's auth token; authenticating again"
                    );
                    client.refresh_token().await.map_err(store_error)?;
                    shared.count_token_refresh();
                    open_stream(&client, &key, &options).await
                }
            })
            .await?;
        let probe_after = pool.liveness.probe_after;
        let watch_id = first.watch_id();
        // The confirmation carries nothing else; anything else (a cancellation)
        // is handed out by the first `next_response`.
        let first = (!first.created() || first.canceled()).then_some(first);
        Ok(Self {
            pool,
            slot,
            stream,
            watch_id,
            probe_after,
            last_heard: Instant::now(),
            probe_sent: None,
            first,
        })
    }

    /// The id etcd gave this watch.
    pub(crate) fn watch_id(&self) -> i64 {
        self.watch_id
    }

    /// The next message from etcd. Cancel safe: the deadlines live in `self`.
    pub(crate) async fn next_response(&mut self) -> Result<WatchResponse, StoreError> {
        if let Some(first) = self.first.take() {
            return Ok(first);
        }
        let result = self.read().await;
        if let Err(e) = &result {
            self.pool.failed(self.slot, e).await;
        }
        result
    }

    async fn read(&mut self) -> Result<WatchResponse, StoreError> {
        loop {
            let deadline = self.probe_after.map(|half| match self.probe_sent {
                Some(sent) => sent + half,
                None => self.last_heard + half,
            });
            tokio::select! {
                message = self.stream.message() => {
                    let silent = self.last_heard.elapsed();
                    self.last_heard = Instant::now();
                    self.probe_sent = None;
                    return match message {
                        Ok(Some(response)) => {
                            if response.events().is_empty() {
                                trace!(
                                    watch_id = response.watch_id(),
                                    created = response.created(),
                                    canceled = response.canceled(),
                                    revision = response.header().map(etcd_client::ResponseHeader::revision),
                                    "watch message without events"
                                );
                            }
                            Ok(response)
                        }
                        Ok(None) => Err(StoreError::unavailable("etcd closed the watch stream")),
                        // Silent for a whole keep-alive period, then the connection
                        // dropped: the keep-alive PING went unanswered.
                        Err(e) if silent >= self.pool.liveness.ping_bound()
                            && is_connection_dropped(&e) =>
                        {
                            Err(timeout(self.pool.request_timeout))
                        }
                        Err(e) => Err(store_error(e)),
                    };
                }
                () = sleep_until(deadline) => {
                    if self.probe_sent.is_some() {
                        return Err(timeout(self.pool.request_timeout));
                    }
                    self.stream.request_progress().await.map_err(store_error)?;
                    self.probe_sent = Some(Instant::now());
                }
            }
        }
    }
}

/// Opens a watch stream and reads etcd's answer to the creation request.
async fn open_stream(
    client: &etcd_client::Client,
    key: &[u8],
    options: &WatchOptions,
) -> Result<(WatchStream, WatchResponse), StoreError> {
    let mut stream = client
        .watch_client()
        .max_decoding_message_size(crate::MAX_MESSAGE)
        .watch(key.to_vec(), Some(options.clone()))
        .await
        .map_err(store_error)?;
    let first = stream
        .message()
        .await
        .map_err(store_error)?
        .ok_or_else(|| StoreError::unavailable("the watch stream ended before it was created"))?;
    Ok((stream, first))
}

/// Whether etcd cancelled a watch at creation because of the client's auth
/// token. The cancel reason is the only information etcd gives (a string, no
/// code): 3.5 says "invalid auth token" (or "auth revision is old" after an
/// auth change); 3.4 says "permission denied" for an expired token as well as
/// for a missing permission, so that one costs a single extra authentication
/// (a real denial is still reported, by the retry).
fn refused_token(response: &WatchResponse) -> bool {
    if !response.canceled() || response.compact_revision() > 0 {
        return false;
    }
    let reason = response.cancel_reason();
    [
        "invalid auth token",
        "auth revision is old",
        "permission denied",
    ]
    .iter()
    .any(|m| reason.contains(m))
}

/// Sleeps until `deadline`; forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// How a watch response reads for the core.
pub(crate) fn convert(
    response: &WatchResponse,
    watch_id: i64,
) -> Result<Option<WatchEvent>, StoreError> {
    if response.compact_revision() > 0 {
        return Ok(Some(WatchEvent::Lost {
            reason: format!(
                "etcd compacted its history up to revision {}",
                response.compact_revision()
            ),
        }));
    }
    if response.canceled() {
        let reason = response.cancel_reason();
        if reason.to_ascii_lowercase().contains("permission denied") {
            return Err(StoreError::permission_denied(format!(
                "etcd cancelled the watch: {reason}"
            )));
        }
        return Ok(Some(WatchEvent::Lost {
            reason: if reason.is_empty() {
                "etcd cancelled the watch".to_owned()
            } else {
                format!("etcd cancelled the watch: {reason}")
            },
        }));
    }
    let events = response.events();
    if !events.is_empty() {
        let mut revision: Revision = 0;
        let mut changes = Vec::with_capacity(events.len());
        for event in events {
            let Some(kv) = event.kv() else { continue };
            revision = revision.max(to_revision(kv.mod_revision()));
            changes.push(match event.event_type() {
                EventType::Put => KvChange::Put(KvEntry::new(
                    kv.key().to_vec(),
                    Bytes::copy_from_slice(kv.value()),
                )),
                EventType::Delete => KvChange::Delete {
                    key: kv.key().to_vec(),
                },
            });
        }
        return Ok(Some(WatchEvent::Changes { revision, changes }));
    }
    // A progress notification of this watch (etcd sends them only when the
    // watch has delivered everything up to the header revision). Answers to
    // progress requests (watch id -1) only prove the stream is alive: etcd
    // before 3.4.24/3.5.8 may send them ahead of pending events.
    if !response.created() && response.watch_id() == watch_id && watch_id != PROGRESS_RESPONSE_ID {
        if let Some(header) = response.header() {
            return Ok(Some(WatchEvent::Progress {
                revision: to_revision(header.revision()),
            }));
        }
    }
    Ok(None)
}

/// etcd revisions are positive `i64`s.
pub(crate) fn to_revision(r: i64) -> Revision {
    u64::try_from(r).unwrap_or(0)
}

/// [`KvStream`] over one etcd watch.
pub(crate) struct EtcdKvStream {
    pub(crate) watcher: Watcher,
}

#[async_trait]
impl KvStream for EtcdKvStream {
    async fn next(&mut self) -> Result<WatchEvent, StoreError> {
        loop {
            let response = self.watcher.next_response().await?;
            if let Some(event) = convert(&response, self.watcher.watch_id())? {
                return Ok(event);
            }
        }
    }
}

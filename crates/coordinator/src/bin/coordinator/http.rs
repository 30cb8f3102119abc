//! `--http-addr HOST:PORT` (alias `--metrics-addr`): one HTTP/1.1 listener
//! for the operator's endpoints (`docs/operations.md`, "HTTP endpoints"):
//!
//! - `GET /metrics`: the Prometheus text page (cargo feature `prometheus`;
//!   without it 501);
//! - `GET /healthz`: 200 while the worker's (and member's) tasks run, else 503;
//! - `GET /readyz`: 200 once the first settled workload is published and the
//!   latest store requests succeeded, else 503 with the reason;
//! - `GET /status`: this member's view as JSON ([`Status`]);
//! - any other path 404, any other method 405.
//!
//! The listener is bound before the store is connected (a bad address fails
//! the start-up, exit 2); the worker or member is handed over once it runs
//! ([`Http::worker`], [`Http::member`]). Until then `/healthz`, `/readyz`
//! and `/status` answer 503 "starting".

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use coordinator::{
    BackendKind, Changes, MemberHandle, MemberObserver, Revision, StoreContact, WorkId,
    WorkerHandle, WorkerObserver,
};
use http_body_util::Full;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tracing::{debug, info};

use crate::prometheus::Metrics;

/// How long a client may take to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Parses `HOST:PORT` (an IP address or a name that resolves, e.g.
/// `127.0.0.1:9100`, `[::1]:9100`, `localhost:9100`), or `:PORT` for every
/// interface (`0.0.0.0:PORT`), as `node_exporter`'s `--web.listen-address`.
pub(crate) fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    if let Some(port) = s.strip_prefix(':') {
        let port: u16 = port
            .parse()
            .map_err(|_| format!("{s:?} is not HOST:PORT or :PORT"))?;
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    if let Ok(addr) = s.parse() {
        return Ok(addr);
    }
    s.to_socket_addrs()
        .map_err(|e| format!("{s:?} is not HOST:PORT or :PORT ({e})"))?
        .next()
        .ok_or_else(|| format!("{s:?} resolves to no address"))
}

/// The program's side of the endpoints: hands them the worker or member to
/// observe. Inert when no address was given. Cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct Http(Option<Arc<Inner>>);

struct Inner {
    instance_id: String,
    backend: BackendKind,
    metrics: Metrics,
    target: OnceLock<Target>,
}

/// What the endpoints observe.
enum Target {
    Worker(WorkerObserver),
    Member {
        observer: MemberObserver,
        /// Items the member let go, by the revision of the change that
        /// removed them, until acknowledged.
        released: Arc<Mutex<BTreeMap<WorkId, Revision>>>,
    },
}

impl Http {
    /// Listens on `addr`, installs the Prometheus recorder (with the
    /// `prometheus` feature) and serves the endpoints on a task of its own.
    /// Call inside the runtime, before the worker or member starts. Fails
    /// when `addr` cannot be listened on.
    pub(crate) fn serve(
        addr: SocketAddr,
        instance_id: &str,
        backend: BackendKind,
    ) -> Result<Self, String> {
        let listener = std::net::TcpListener::bind(addr)
            .and_then(|l| {
                l.set_nonblocking(true)?;
                tokio::net::TcpListener::from_std(l)
            })
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let inner = Arc::new(Inner {
            instance_id: instance_id.to_owned(),
            backend,
            metrics: Metrics::install()?,
            target: OnceLock::new(),
        });
        tokio::spawn(accept_loop(listener, inner.clone()));
        info!(%addr, "serving /metrics, /healthz, /readyz and /status");
        Ok(Self(Some(inner)))
    }

    /// From now on the endpoints observe `worker`.
    pub(crate) fn worker(&self, worker: &WorkerHandle) {
        if let Some(inner) = &self.0 {
            let _ = inner.target.set(Target::Worker(worker.observer()));
        }
    }

    /// From now on the endpoints observe `member`. Follows its changes (a
    /// subscription of its own) to list the items it let go and has not
    /// acknowledged yet.
    pub(crate) fn member(&self, member: &MemberHandle) {
        if let Some(inner) = &self.0 {
            let observer = member.observer();
            let released = Arc::default();
            tokio::spawn(follow_releases(
                member.worker().changes(),
                Arc::clone(&released),
                observer.clone(),
            ));
            let _ = inner.target.set(Target::Member { observer, released });
        }
    }
}

/// Keeps `released` up to date: each item removed with the change that
/// removed it, until the acknowledged position reaches that change (or the
/// item comes back). Ends with the worker.
async fn follow_releases(
    mut changes: Changes,
    released: Arc<Mutex<BTreeMap<WorkId, Revision>>>,
    observer: MemberObserver,
) {
    while let Some(change) = changes.next().await {
        let acked = observer.acked().unwrap_or(0);
        let mut r = released.lock().unwrap_or_else(PoisonError::into_inner);
        r.retain(|_, removed_at| *removed_at > acked);
        for (id, _) in &change.added {
            r.remove(id);
        }
        for id in &change.removed {
            r.insert(id.clone(), change.revision);
        }
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, inner: Arc<Inner>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, for instance: let some close.
                debug!(error = %e, "accepting an http connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let inner = inner.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let answer = inner.answer(req.method(), req.uri().path());
                async move { Ok::<_, Infallible>(answer) }
            });
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                debug!(error = %e, "http connection ended with an error");
            }
        });
    }
}

type Answer = Response<Full<Bytes>>;

fn answer(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Answer {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn text(status: StatusCode, body: impl Into<String>) -> Answer {
    let mut body = body.into();
    body.push('\n');
    answer(status, "text/plain; charset=utf-8", body)
}

impl Inner {
    fn answer(&self, method: &Method, path: &str) -> Answer {
        if !matches!(path, "/metrics" | "/healthz" | "/readyz" | "/status") {
            return text(
                StatusCode::NOT_FOUND,
                "not found: try /metrics, /healthz, /readyz or /status",
            );
        }
        if method != Method::GET {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET is allowed");
            r.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET"));
            return r;
        }
        match path {
            "/metrics" => match self.metrics.render() {
                Some(page) => answer(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", page),
                None => text(
                    StatusCode::NOT_IMPLEMENTED,
                    "this build has no Prometheus exporter: build the coordinator crate with its `prometheus` feature",
                ),
            },
            "/healthz" => match self.target.get() {
                None => text(StatusCode::SERVICE_UNAVAILABLE, "starting"),
                Some(t) if t.is_running() => text(StatusCode::OK, "ok"),
                Some(_) => text(StatusCode::SERVICE_UNAVAILABLE, "stopped"),
            },
            "/readyz" => match self.target.get().map(Target::not_ready) {
                None => text(StatusCode::SERVICE_UNAVAILABLE, "not ready: starting"),
                Some(None) => text(StatusCode::OK, "ready"),
                Some(Some(why)) => text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}")),
            },
            _ => match self.target.get() {
                None => text(StatusCode::SERVICE_UNAVAILABLE, "starting"),
                Some(t) => {
                    let mut body = serde_json::to_string_pretty(&t.status(self))
                        .expect("a status of strings, numbers and lists");
                    body.push('\n');
                    answer(StatusCode::OK, "application/json", body)
                }
            },
        }
    }
}

/// The body of `GET /status` (documented field by field in
/// `docs/operations.md`).
#[derive(Serialize)]
struct Status<'a> {
    /// This member's id.
    instance_id: &'a str,
    /// `worker` or `member`: the command running.
    command: &'static str,
    /// `consul`, `etcd` or `memory`.
    backend: String,
    /// Whether the worker's (and member's) tasks run: what `/healthz` says.
    running: bool,
    /// What `/readyz` says.
    ready: bool,
    /// Why not ready (the body of `/readyz`'s 503), or null.
    not_ready: Option<String>,
    /// The leader as this member's worker sees it (its id in the store), or
    /// null when there is none or it is not known yet.
    leader: Option<String>,
    /// `member`: whether this member leads; `worker`: null.
    is_leader: Option<bool>,
    /// The store position of the settled workload; null before the first
    /// settled workload.
    revision: Option<Revision>,
    /// The settled workload's work ids, sorted.
    workload: Vec<String>,
    /// The items of `workload` held as secondaries (standbys), sorted; the
    /// others are held as primaries. Empty with one replica per item.
    secondary: Vec<String>,
    /// Whether the workload is released (exclusive mode: the session could
    /// not be renewed in time): the application holds nothing.
    released: bool,
    /// `member`: the acknowledged position as last written to its member key
    /// (null until the first write); `worker`: null.
    acked_revision: Option<Revision>,
    /// `member`: whether it drains; `worker`: null.
    draining: Option<bool>,
    /// How the latest store requests went.
    store: StoreStatus,
    /// `member`: the handoffs it takes part in; `worker`: null.
    pending_handoffs: Option<Pending>,
}

#[derive(Serialize)]
struct StoreStatus {
    /// True when the latest requests (the worker's, and the member's own)
    /// succeeded; false after a failure; null before any answer.
    reachable: Option<bool>,
    /// The latest failure while unreachable, else null.
    error: Option<String>,
}

#[derive(Serialize)]
struct Pending {
    /// Items this member let go in changes it has not acknowledged yet (its
    /// acknowledged position is below the change that removed them): a move
    /// away from it waits for that acknowledgement. Sorted.
    unacknowledged: Vec<String>,
    /// While it leads: every move in flight (an item revoked from `from`,
    /// not yet given to its new owner). Null when it does not lead (it does
    /// not read the handoff records then).
    moves_in_flight: Option<Vec<Move>>,
}

#[derive(Serialize)]
struct Move {
    item: String,
    from: String,
}

impl Target {
    fn worker(&self) -> &WorkerObserver {
        match self {
            Self::Worker(w) => w,
            Self::Member { observer, .. } => observer.worker(),
        }
    }

    fn is_running(&self) -> bool {
        match self {
            Self::Worker(w) => w.is_running(),
            Self::Member { observer, .. } => observer.is_running(),
        }
    }

    /// The worker's store contact and, for a member, its own, combined:
    /// the first that is not reachable.
    fn contact(&self) -> StoreContact {
        let worker = self.worker().store_contact();
        match self {
            Self::Member { observer, .. } if worker.is_reachable() => observer.store_contact(),
            _ => worker,
        }
    }

    /// Why it is not ready, or `None` when it is.
    fn not_ready(&self) -> Option<String> {
        let w = self.worker();
        if !self.is_running() {
            return Some("stopped".to_owned());
        }
        if !w.is_ready() {
            return Some("waiting for the first settled workload".to_owned());
        }
        match self.contact() {
            StoreContact::Reachable => {}
            StoreContact::Unknown => return Some("no answer from the store yet".to_owned()),
            StoreContact::Unreachable(e) => return Some(format!("store unreachable: {e}")),
        }
        if w.is_released() {
            return Some(
                "workload released (exclusive mode: the session could not be renewed in time)"
                    .to_owned(),
            );
        }
        None
    }

    fn status<'a>(&'a self, inner: &'a Inner) -> Status<'a> {
        let w = self.worker();
        let settled = w.settled();
        let not_ready = self.not_ready();
        let contact = self.contact();
        let (command, is_leader, acked, draining, pending) = match self {
            Self::Worker(_) => ("worker", None, None, None, None),
            Self::Member { observer, released } => {
                let acked = observer.acked();
                let floor = acked.unwrap_or(0);
                let unacknowledged = released
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .iter()
                    .filter(|(id, at)| **at > floor && !settled.workload.contains_key(*id))
                    .map(|(id, _)| id.to_string())
                    .collect();
                let leading = observer.is_leader();
                let moves = leading.then(|| {
                    observer
                        .handoffs()
                        .iter()
                        .map(|h| Move {
                            item: h.work.to_string(),
                            from: h.from.to_string(),
                        })
                        .collect()
                });
                (
                    "member",
                    Some(leading),
                    acked,
                    Some(observer.is_draining()),
                    Some(Pending {
                        unacknowledged,
                        moves_in_flight: moves,
                    }),
                )
            }
        };
        Status {
            instance_id: &inner.instance_id,
            command,
            backend: inner.backend.to_string(),
            running: self.is_running(),
            ready: not_ready.is_none(),
            not_ready,
            leader: w.leader().map(|l| l.display_name().to_owned()),
            is_leader,
            revision: settled.ready.then_some(settled.revision),
            workload: settled.workload.keys().map(ToString::to_string).collect(),
            secondary: w.secondaries().iter().map(ToString::to_string).collect(),
            released: w.is_released(),
            acked_revision: acked,
            draining,
            store: StoreStatus {
                reachable: match contact {
                    StoreContact::Unknown => None,
                    ref c => Some(c.is_reachable()),
                },
                error: match contact {
                    StoreContact::Unreachable(e) => Some(e.to_string()),
                    _ => None,
                },
            },
            pending_handoffs: pending,
        }
    }
}

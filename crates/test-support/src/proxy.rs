//! A TCP proxy on loopback whose behaviour can be switched at run time.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// What a [`FaultProxy`] does with traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyMode {
    /// Forward bytes both ways.
    PassThrough,
    /// Abort every open connection with a TCP RST, and reset new ones right after accepting.
    Reset,
    /// Keep connections open but forward nothing (a silent network partition). New
    /// connections are accepted and held. Switching back resumes forwarding, including the
    /// bytes that queued up meanwhile.
    BlackHole,
    /// Forward bytes, each chunk delivered this long after it was read, in each direction.
    Delay(Duration),
    /// As [`Delay`](Self::Delay), and a request the client gives up on still reaches the
    /// store, as a request already in the store's queue does: the client's HTTP/2
    /// `RST_STREAM` frames are dropped (only on a proxy started with
    /// [`FaultProxy::start_h2`]), and when the client closes a connection, the proxy keeps
    /// the store's side open (for 30 s) after delivering what it holds.
    DelayLate(Duration),
}

impl ProxyMode {
    fn delay(self) -> Duration {
        match self {
            ProxyMode::Delay(d) | ProxyMode::DelayLate(d) => d,
            _ => Duration::ZERO,
        }
    }
}

#[derive(Debug)]
struct Counters {
    accepted: AtomicUsize,
    active: AtomicUsize,
    /// Bytes read from the target (answers), to wait on.
    from_target: watch::Sender<u64>,
    /// Whether the client-to-target direction is HTTP/2 (its frames can be filtered).
    h2: bool,
}

/// A TCP proxy on `127.0.0.1:<free port>` forwarding to a target address, with a mode that
/// can be changed at any time ([`FaultProxy::set_mode`]). It runs on tokio tasks and stops
/// (closing every connection) when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    target: SocketAddr,
    mode: watch::Sender<ProxyMode>,
    counters: Arc<Counters>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy in [`ProxyMode::PassThrough`] forwarding to `target`. Needs a tokio
    /// runtime.
    pub async fn start(target: SocketAddr) -> FaultProxy {
        Self::start_with(target, false).await
    }

    /// [`start`](Self::start) for HTTP/2 (gRPC) clients: the client-to-target direction is
    /// read frame by frame, so that [`ProxyMode::DelayLate`] can drop `RST_STREAM` frames.
    /// Plaintext only (the connection must begin with the HTTP/2 preface).
    pub async fn start_h2(target: SocketAddr) -> FaultProxy {
        Self::start_with(target, true).await
    }

    async fn start_with(target: SocketAddr, h2: bool) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy listener");
        let addr = listener.local_addr().expect("proxy local_addr");
        let (mode, mode_rx) = watch::channel(ProxyMode::PassThrough);
        let counters = Arc::new(Counters {
            accepted: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            from_target: watch::channel(0).0,
            h2,
        });
        let task = tokio::spawn(accept_loop(listener, target, mode_rx, counters.clone()));
        FaultProxy {
            addr,
            target,
            mode,
            counters,
            task,
        }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:P` for this proxy (convenient for HTTP stores).
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address traffic is forwarded to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Switches the mode; applies to open and new connections immediately.
    pub fn set_mode(&self, mode: ProxyMode) {
        self.mode.send_replace(mode);
    }

    /// The current mode.
    pub fn mode(&self) -> ProxyMode {
        *self.mode.borrow()
    }

    /// How many connections the proxy has accepted so far.
    pub fn accepted(&self) -> usize {
        self.counters.accepted.load(Ordering::SeqCst)
    }

    /// How many accepted connections are still open.
    pub fn active(&self) -> usize {
        self.counters.active.load(Ordering::SeqCst)
    }

    /// How many bytes the target has sent so far (on every connection).
    pub fn bytes_from_target(&self) -> u64 {
        *self.counters.from_target.borrow()
    }

    /// Waits until the target has sent more than `bytes` bytes in all (e.g. its answer to
    /// a request that was delayed). Not bounded: wrap it in a timeout.
    pub async fn target_sent_more_than(&self, bytes: u64) {
        let mut rx = self.counters.from_target.subscribe();
        let _ = rx.wait_for(|n| *n > bytes).await;
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every connection task.
        self.task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    mode: watch::Receiver<ProxyMode>,
    counters: Arc<Counters>,
) {
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let Ok((client, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        counters.accepted.fetch_add(1, Ordering::SeqCst);
        let _ = client.set_nodelay(true);
        let guard = ActiveGuard::new(counters.clone());
        connections.spawn(handle(
            client,
            target,
            mode.clone(),
            guard,
            counters.clone(),
        ));
    }
}

struct ActiveGuard(Arc<Counters>);

impl ActiveGuard {
    fn new(counters: Arc<Counters>) -> Self {
        counters.active.fetch_add(1, Ordering::SeqCst);
        Self(counters)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Closes `stream` with a RST (`SO_LINGER` 0).
fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// Waits until the mode is `Reset`, or forever if the proxy is gone.
async fn until_reset(mut mode: watch::Receiver<ProxyMode>) {
    loop {
        if *mode.borrow_and_update() == ProxyMode::Reset {
            return;
        }
        if mode.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Waits while the mode is `BlackHole`; returns the first other mode.
async fn past_black_hole(mode: &mut watch::Receiver<ProxyMode>) -> Option<ProxyMode> {
    loop {
        let current = *mode.borrow_and_update();
        if current != ProxyMode::BlackHole {
            return Some(current);
        }
        mode.changed().await.ok()?;
    }
}

async fn handle(
    client: TcpStream,
    target: SocketAddr,
    mut mode: watch::Receiver<ProxyMode>,
    _guard: ActiveGuard,
    counters: Arc<Counters>,
) {
    // A new connection in BlackHole mode is held until the mode changes.
    match past_black_hole(&mut mode).await {
        None => return,
        Some(ProxyMode::Reset) => return reset(client),
        Some(_) => {}
    }
    let upstream = tokio::select! {
        conn = TcpStream::connect(target) => match conn {
            Ok(conn) => conn,
            Err(_) => return reset(client),
        },
        () = until_reset(mode.clone()) => return reset(client),
    };
    let _ = upstream.set_nodelay(true);
    let mut client = client;
    let mut upstream = upstream;
    let outcome = {
        let (client_rd, client_wr) = client.split();
        let (up_rd, up_wr) = upstream.split();
        let both = async {
            let h2 = counters.h2.then(H2Filter::default);
            let (a, b) = tokio::join!(
                pump(client_rd, up_wr, mode.clone(), Direction::ToTarget(h2)),
                pump(
                    up_rd,
                    client_wr,
                    mode.clone(),
                    Direction::FromTarget(counters)
                )
            );
            a && b
        };
        tokio::select! {
            clean = both => clean,
            () = until_reset(mode.clone()) => false,
        }
    };
    if !outcome {
        reset(client);
        reset(upstream);
    }
}

/// Which way a [`pump`] forwards.
enum Direction {
    /// Client to target, HTTP/2 frames tracked when `Some`.
    ToTarget(Option<H2Filter>),
    /// Target to client: counted.
    FromTarget(Arc<Counters>),
}

/// Tracks HTTP/2 framing (after the 24-byte client preface) to drop `RST_STREAM` frames.
struct H2Filter {
    preface: usize,
    header: Vec<u8>,
    left: usize,
    dropping: bool,
}

impl Default for H2Filter {
    fn default() -> Self {
        Self {
            preface: 24,
            header: Vec::with_capacity(9),
            left: 0,
            dropping: false,
        }
    }
}

impl H2Filter {
    /// `chunk` without the `RST_STREAM` frames when `drop_resets`.
    fn filter(&mut self, chunk: &[u8], drop_resets: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(chunk.len());
        let mut i = 0;
        while i < chunk.len() {
            let rest = &chunk[i..];
            if self.preface > 0 {
                let n = self.preface.min(rest.len());
                out.extend_from_slice(&rest[..n]);
                self.preface -= n;
                i += n;
            } else if self.left > 0 {
                let n = self.left.min(rest.len());
                if !self.dropping {
                    out.extend_from_slice(&rest[..n]);
                }
                self.left -= n;
                i += n;
            } else {
                let n = (9 - self.header.len()).min(rest.len());
                self.header.extend_from_slice(&rest[..n]);
                i += n;
                if self.header.len() == 9 {
                    let h = &self.header;
                    self.left =
                        usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                    // 0x3: RST_STREAM.
                    self.dropping = drop_resets && h[3] == 0x3;
                    if !self.dropping {
                        out.extend_from_slice(h);
                    }
                    self.header.clear();
                }
            }
        }
        out
    }
}

/// Forwards one direction until EOF (then half-closes the writer). Returns false on an I/O
/// error (the caller then resets both sides).
async fn pump<R, W>(
    mut rd: R,
    mut wr: W,
    mode: watch::Receiver<ProxyMode>,
    direction: Direction,
) -> bool
where
    R: AsyncReadExt + Unpin,
    W: AsyncWriteExt + Unpin,
{
    let (mut filter, counters) = match direction {
        Direction::ToTarget(filter) => (filter, None),
        Direction::FromTarget(counters) => (None, Some(counters)),
    };
    let to_target = counters.is_none();
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(64);
    let mut read_mode = mode.clone();
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if past_black_hole(&mut read_mode).await.is_none() {
                return true;
            }
            tokio::select! {
                read = rd.read(&mut buf) => match read {
                    Ok(0) => return true,
                    Ok(n) => {
                        // The mode as of now: it may have changed while the read was pending.
                        let current = *read_mode.borrow();
                        if let Some(counters) = &counters {
                            counters.from_target.send_modify(|b| *b += n as u64);
                        }
                        let chunk = match &mut filter {
                            Some(f) => f.filter(&buf[..n], matches!(current, ProxyMode::DelayLate(_))),
                            None => buf[..n].to_vec(),
                        };
                        if tx.send((Instant::now() + current.delay(), chunk)).await.is_err() {
                            return false;
                        }
                    }
                    Err(_) => return false,
                },
                // Re-evaluate (e.g. to stop reading in BlackHole mode).
                changed = read_mode.changed() => if changed.is_err() { return true },
            }
        }
    };
    let mut write_mode = mode;
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if past_black_hole(&mut write_mode).await.is_none() {
                return false;
            }
            if wr.write_all(&chunk).await.is_err() {
                return false;
            }
        }
        if to_target && matches!(*write_mode.borrow(), ProxyMode::DelayLate(_)) {
            // The client left; the store has not noticed yet.
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        let _ = wr.shutdown().await;
        true
    };
    let (read_ok, write_ok) = tokio::join!(reader, writer);
    read_ok && write_ok
}

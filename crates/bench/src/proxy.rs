//! A TCP proxy in front of a store that counts the requests clients send
//! through it: HTTP/1.1 request lines (Consul) or HTTP/2 frames (etcd's gRPC).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What the client side speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1: each request line counts as a request.
    Http1,
    /// HTTP/2 (gRPC): a HEADERS frame (a new call) or a non-empty DATA frame
    /// (a message on a call, e.g. a watch's progress request) counts as a
    /// request; PING frames are counted apart.
    Http2,
}

/// Counters of one proxy, as seen from the clients.
#[derive(Debug, Default)]
pub struct Counters {
    requests: AtomicU64,
    pings: AtomicU64,
    connections: AtomicU64,
}

/// A snapshot of [`Counters`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    /// Requests (see [`Protocol`]).
    pub requests: u64,
    /// HTTP/2 PING frames sent by clients (not acknowledgements).
    pub pings: u64,
    /// Connections accepted.
    pub connections: u64,
}

impl Counts {
    /// What happened between `earlier` and `self`.
    #[must_use]
    pub fn since(self, earlier: Self) -> Self {
        Self {
            requests: self.requests - earlier.requests,
            pings: self.pings - earlier.pings,
            connections: self.connections - earlier.connections,
        }
    }
}

/// A running counting proxy; stops when dropped.
#[derive(Debug)]
pub struct CountingProxy {
    addr: SocketAddr,
    counters: Arc<Counters>,
    task: JoinHandle<()>,
}

impl CountingProxy {
    /// Listens on a free loopback port and forwards every connection to `target`.
    pub async fn start(target: SocketAddr, protocol: Protocol) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let counters = Arc::new(Counters::default());
        let c = counters.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                c.connections.fetch_add(1, Ordering::Relaxed);
                let c = c.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = tokio::spawn(async move {
                        let mut parser = Parser::new(protocol);
                        let mut buf = vec![0u8; 32 * 1024];
                        loop {
                            let n = match cr.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            parser.feed(&buf[..n], &c);
                            if sw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = sw.shutdown().await;
                    });
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                    let _ = cw.shutdown().await;
                    up.abort();
                });
            }
        });
        Self {
            addr,
            counters,
            task,
        }
    }

    /// `http://127.0.0.1:PORT` of the proxy.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The counters now.
    pub fn counts(&self) -> Counts {
        Counts {
            requests: self.counters.requests.load(Ordering::Relaxed),
            pings: self.counters.pings.load(Ordering::Relaxed),
            connections: self.counters.connections.load(Ordering::Relaxed),
        }
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The hidden flag that runs this program as a [`ChildProxy`]:
/// `--proxy-child TARGET --proxy-protocol http1|http2 --proxy-counts FILE`.
pub const CHILD_FLAG: &str = "--proxy-child";

/// A [`CountingProxy`] in a child process (this program with
/// [`CHILD_FLAG`]): its two descriptors per connection do not count against
/// this process's open-files limit, which 1,000 members on Consul (about 5
/// connections each) would otherwise exhaust. The child writes its counts
/// to a file every [`CHILD_COUNTS_EVERY`]; it ends when dropped, or when
/// this process ends (its stdin closes).
#[derive(Debug)]
pub struct ChildProxy {
    child: std::process::Child,
    url: String,
    counts: std::path::PathBuf,
}

/// How often a [`ChildProxy`] writes its counts.
pub const CHILD_COUNTS_EVERY: std::time::Duration = std::time::Duration::from_millis(20);

impl ChildProxy {
    /// Starts the child, forwarding to `target`, and waits for its address.
    pub fn start(target: SocketAddr, protocol: Protocol) -> Self {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let counts = std::env::temp_dir().join(format!(
            "coordinator-bench-proxy-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let exe = std::env::current_exe().expect("this program's path");
        let mut child = Command::new(exe)
            .arg(CHILD_FLAG)
            .arg(target.to_string())
            .arg("--proxy-protocol")
            .arg(match protocol {
                Protocol::Http1 => "http1",
                Protocol::Http2 => "http2",
            })
            .arg("--proxy-counts")
            .arg(&counts)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the proxy process");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("piped"))
            .read_line(&mut line)
            .expect("the proxy's address");
        assert!(line.starts_with("http://"), "proxy process: {line:?}");
        Self {
            child,
            url: line.trim().to_owned(),
            counts,
        }
    }

    /// `http://127.0.0.1:PORT` of the proxy.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// The counters as the child last wrote them (at most
    /// [`CHILD_COUNTS_EVERY`] old).
    pub fn counts(&self) -> Counts {
        let text = std::fs::read_to_string(&self.counts).unwrap_or_default();
        let mut n = text.split_whitespace().map(|f| f.parse().unwrap_or(0));
        Counts {
            requests: n.next().unwrap_or(0),
            pings: n.next().unwrap_or(0),
            connections: n.next().unwrap_or(0),
        }
    }
}

impl Drop for ChildProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.counts);
    }
}

/// The child's side of [`ChildProxy`]: prints the proxy's URL, then writes
/// the counts to `counts` (replaced whole each time) until stdin closes.
pub async fn serve_child(target: SocketAddr, protocol: Protocol, counts: std::path::PathBuf) {
    let proxy = CountingProxy::start(target, protocol).await;
    println!("{}", proxy.url());
    let mut stdin = tokio::io::stdin();
    let mut byte = [0u8; 1];
    let mut tick = tokio::time::interval(CHILD_COUNTS_EVERY);
    let tmp = counts.with_extension("tmp");
    loop {
        tokio::select! {
            read = stdin.read(&mut byte) => {
                if matches!(read, Ok(0) | Err(_)) {
                    return;
                }
            }
            _ = tick.tick() => {
                let c = proxy.counts();
                let text = format!("{} {} {}\n", c.requests, c.pings, c.connections);
                if std::fs::write(&tmp, text).is_ok() {
                    let _ = std::fs::rename(&tmp, &counts);
                }
            }
        }
    }
}

const HTTP1_LINE_END: &[u8] = b"HTTP/1.1\r\n";
const HTTP2_PREFACE_LEN: usize = 24;

/// Streaming recognizer of requests in the client-to-server bytes.
#[derive(Debug)]
struct Parser {
    protocol: Protocol,
    /// HTTP/1: bytes of [`HTTP1_LINE_END`] matched so far.
    matched: usize,
    /// HTTP/2: preface bytes still to skip.
    preface_left: usize,
    /// HTTP/2: the frame header being read.
    header: [u8; 9],
    filled: usize,
    /// HTTP/2: payload bytes of the current frame still to skip.
    payload_left: usize,
}

impl Parser {
    fn new(protocol: Protocol) -> Self {
        Self {
            protocol,
            matched: 0,
            preface_left: HTTP2_PREFACE_LEN,
            header: [0; 9],
            filled: 0,
            payload_left: 0,
        }
    }

    fn feed(&mut self, mut bytes: &[u8], c: &Counters) {
        match self.protocol {
            Protocol::Http1 => {
                for &b in bytes {
                    // 'H' occurs only first in the pattern, so restarting on a mismatch is exact.
                    if b == HTTP1_LINE_END[self.matched] {
                        self.matched += 1;
                        if self.matched == HTTP1_LINE_END.len() {
                            c.requests.fetch_add(1, Ordering::Relaxed);
                            self.matched = 0;
                        }
                    } else {
                        self.matched = usize::from(b == HTTP1_LINE_END[0]);
                    }
                }
            }
            Protocol::Http2 => {
                while !bytes.is_empty() {
                    if self.preface_left > 0 {
                        let n = self.preface_left.min(bytes.len());
                        self.preface_left -= n;
                        bytes = &bytes[n..];
                    } else if self.payload_left > 0 {
                        let n = self.payload_left.min(bytes.len());
                        self.payload_left -= n;
                        bytes = &bytes[n..];
                    } else {
                        let n = (9 - self.filled).min(bytes.len());
                        self.header[self.filled..self.filled + n].copy_from_slice(&bytes[..n]);
                        self.filled += n;
                        bytes = &bytes[n..];
                        if self.filled == 9 {
                            self.filled = 0;
                            let h = self.header;
                            let len = (usize::from(h[0]) << 16)
                                | (usize::from(h[1]) << 8)
                                | usize::from(h[2]);
                            match (h[3], h[4]) {
                                (0, _) if len > 0 => {
                                    c.requests.fetch_add(1, Ordering::Relaxed);
                                }
                                (1, _) => {
                                    c.requests.fetch_add(1, Ordering::Relaxed);
                                }
                                (6, flags) if flags & 1 == 0 => {
                                    c.pings.fetch_add(1, Ordering::Relaxed);
                                }
                                _ => {}
                            }
                            self.payload_left = len;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http1_request_lines_are_counted_across_reads() {
        let c = Counters::default();
        let mut p = Parser::new(Protocol::Http1);
        let data = b"GET /v1/kv/a HTTP/1.1\r\nHost: x\r\n\r\nGET /v1/kv/b HTTP/1.1\r\n\r\n";
        for chunk in data.chunks(5) {
            p.feed(chunk, &c);
        }
        assert_eq!(c.requests.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn http2_frames_are_counted_across_reads() {
        let c = Counters::default();
        let mut p = Parser::new(Protocol::Http2);
        let mut data = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        data.extend([0, 0, 0, 4, 0, 0, 0, 0, 0]); // SETTINGS, empty
        data.extend([0, 0, 2, 1, 4, 0, 0, 0, 1, 9, 9]); // HEADERS
        data.extend([0, 0, 3, 0, 0, 0, 0, 0, 1, 1, 2, 3]); // DATA
        data.extend([0, 0, 0, 0, 1, 0, 0, 0, 1]); // empty DATA, end of stream
        data.extend([0, 0, 8, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]); // PING
        data.extend([0, 0, 8, 6, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]); // PING ack
        for chunk in data.chunks(4) {
            p.feed(chunk, &c);
        }
        assert_eq!(c.requests.load(Ordering::Relaxed), 2);
        assert_eq!(c.pings.load(Ordering::Relaxed), 1);
    }
}

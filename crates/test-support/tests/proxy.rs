//! The fault-injecting proxy against a small local echo server.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use test_support::{poll_until, FaultProxy, ProxyMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn echo_server() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let (mut conn, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                loop {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if conn.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, task)
}

async fn roundtrip(conn: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    conn.write_all(msg).await?;
    let mut got = vec![0u8; msg.len()];
    conn.read_exact(&mut got).await?;
    Ok(got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_through_and_counts() {
    let (target, _echo) = echo_server().await;
    let proxy = FaultProxy::start(target).await;
    assert_eq!(proxy.target(), target);
    assert_eq!(proxy.mode(), ProxyMode::PassThrough);
    let mut a = TcpStream::connect(proxy.addr()).await.unwrap();
    let mut b = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(roundtrip(&mut a, b"hello").await.unwrap(), b"hello");
    assert_eq!(roundtrip(&mut b, b"world").await.unwrap(), b"world");
    let big = vec![7u8; 1 << 20];
    assert_eq!(roundtrip(&mut a, &big).await.unwrap(), big);
    assert_eq!(proxy.accepted(), 2);
    assert_eq!(proxy.active(), 2);
    drop(a);
    drop(b);
    poll_until("connections to close", Duration::from_secs(10), || async {
        (proxy.active() == 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_kills_open_and_new_connections() {
    let (target, _echo) = echo_server().await;
    let proxy = FaultProxy::start(target).await;
    let mut open = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(roundtrip(&mut open, b"x").await.unwrap(), b"x");

    proxy.set_mode(ProxyMode::Reset);
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(10), open.read(&mut buf))
        .await
        .expect("reset must be prompt");
    match read {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
        Ok(n) => panic!("expected a reset, read {n} bytes"),
    }

    // A new connection is reset right after the accept; the RST may even beat the client's
    // own completion of `connect`.
    let result = tokio::time::timeout(Duration::from_secs(10), async {
        let mut new = TcpStream::connect(proxy.addr()).await?;
        roundtrip(&mut new, b"y").await
    })
    .await
    .expect("reset must be prompt");
    assert!(result.is_err(), "{result:?}");

    proxy.set_mode(ProxyMode::PassThrough);
    let mut again = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(roundtrip(&mut again, b"z").await.unwrap(), b"z");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn black_hole_holds_then_resumes() {
    let (target, _echo) = echo_server().await;
    let proxy = FaultProxy::start(target).await;
    let mut open = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(roundtrip(&mut open, b"before").await.unwrap(), b"before");

    proxy.set_mode(ProxyMode::BlackHole);
    // Existing connection: nothing comes back, but it is not closed either.
    let silent =
        tokio::time::timeout(Duration::from_millis(500), roundtrip(&mut open, b"held")).await;
    assert!(silent.is_err(), "black hole forwarded data: {silent:?}");
    // New connection: accepted, then silent.
    let mut new = TcpStream::connect(proxy.addr()).await.unwrap();
    let silent =
        tokio::time::timeout(Duration::from_millis(300), roundtrip(&mut new, b"new")).await;
    assert!(silent.is_err());
    assert_eq!(proxy.accepted(), 2);

    proxy.set_mode(ProxyMode::PassThrough);
    // Queued bytes are delivered once the partition heals.
    let mut got = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), open.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, b"held");
    let mut got = [0u8; 3];
    tokio::time::timeout(Duration::from_secs(10), new.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, b"new");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_adds_latency_each_way() {
    let (target, _echo) = echo_server().await;
    let proxy = FaultProxy::start(target).await;
    let mut conn = TcpStream::connect(proxy.addr()).await.unwrap();
    let start = Instant::now();
    roundtrip(&mut conn, b"fast").await.unwrap();
    let fast = start.elapsed();

    proxy.set_mode(ProxyMode::Delay(Duration::from_millis(200)));
    let start = Instant::now();
    assert_eq!(roundtrip(&mut conn, b"slow").await.unwrap(), b"slow");
    let slow = start.elapsed();
    assert!(
        slow >= Duration::from_millis(400),
        "round trip took {slow:?}"
    );
    assert!(slow < Duration::from_secs(10) + fast);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_closes_connections() {
    let (target, _echo) = echo_server().await;
    let proxy = FaultProxy::start(target).await;
    let addr = proxy.addr();
    let mut conn = TcpStream::connect(addr).await.unwrap();
    roundtrip(&mut conn, b"a").await.unwrap();
    drop(proxy);
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf))
        .await
        .expect("connection must close when the proxy is dropped");
    assert!(matches!(read, Ok(0) | Err(_)));
    poll_until("listener to close", Duration::from_secs(10), || async {
        TcpStream::connect(addr).await.is_err().then_some(())
    })
    .await;
}

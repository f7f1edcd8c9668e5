//! HTTP connections are bounded: a client that stops halfway through its
//! headers gets 408 and is closed, a connection that sends nothing is closed
//! after the idle timeout, and at most `max-open-connections` are served.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{Project, TestHost};

/// Short limits so the test runs in about a second.
const LIMITS: &str = "header-read-timeout-ms = 400\nidle-timeout-ms = 800\n";

/// A project whose `[host]` table also has `host_keys`.
fn project(host_keys: &str) -> Project {
    let project = Project::new(&[], "");
    let manifest = project.manifest_path();
    let text = std::fs::read_to_string(&manifest).expect("manifest");
    let text = text.replacen("[host]\n", &format!("[host]\n{host_keys}"), 1);
    std::fs::write(&manifest, text).expect("manifest");
    project
}

async fn connect(host: &TestHost) -> TcpStream {
    let addr = host.base.trim_start_matches("http://");
    TcpStream::connect(addr).await.expect("connect")
}

/// Reads until the host closes the connection (or `limit` passes): what it
/// sent and how long after `since` it closed.
async fn read_until_closed(
    stream: &mut TcpStream,
    since: Instant,
    limit: Duration,
) -> (String, Option<Duration>) {
    let mut received = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = since + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return (String::from_utf8_lossy(&received).into(), None),
            Ok(Ok(0)) | Ok(Err(_)) => {
                return (
                    String::from_utf8_lossy(&received).into(),
                    Some(since.elapsed()),
                );
            }
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn headers_that_stop_midway_get_408_and_a_closed_connection() {
    let project = project(LIMITS);
    let host = project.start().await;

    let mut stream = connect(&host).await;
    let started = Instant::now();
    stream
        .write_all(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Le")
        .await
        .expect("write");
    let (answer, closed) = read_until_closed(&mut stream, started, Duration::from_secs(5)).await;
    let closed = closed.expect("the host must close a connection whose headers stopped");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(answer.contains("\"timeout\""), "{answer:?}");
    assert!(
        closed >= Duration::from_millis(350) && closed < Duration::from_secs(2),
        "closed after {closed:?}; header-read-timeout-ms is 400"
    );

    // A client trickling its headers a byte at a time (each byte well within
    // the idle timeout) is still cut off at the header deadline.
    let mut stream = connect(&host).await;
    let started = Instant::now();
    let trickle = async {
        for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaa" {
            if stream.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_millis(600), trickle)
        .await
        .ok();
    let (answer, closed) = read_until_closed(&mut stream, started, Duration::from_secs(5)).await;
    assert!(closed.is_some(), "a trickling client must be cut off");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");

    // Whole requests on a keep-alive connection are untouched.
    let (status, _) = host.get("/healthz").await;
    assert_eq!(status, 200);
    host.stop().await;
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_the_idle_timeout() {
    let project = project(LIMITS);
    let host = project.start().await;

    let mut stream = connect(&host).await;
    let started = Instant::now();
    let (answer, closed) = read_until_closed(&mut stream, started, Duration::from_secs(5)).await;
    let closed = closed.expect("the host must close a silent connection");
    assert_eq!(answer, "", "closed without an answer");
    assert!(
        closed >= Duration::from_millis(700) && closed < Duration::from_secs(3),
        "closed after {closed:?}; idle-timeout-ms is 800"
    );

    // The same after an answered request: a keep-alive connection that
    // goes quiet is closed.
    let mut stream = connect(&host).await;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let started = Instant::now();
    let (answer, closed) = read_until_closed(&mut stream, started, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    let closed = closed.expect("an idle keep-alive connection must be closed");
    assert!(
        closed >= Duration::from_millis(700),
        "closed after {closed:?}"
    );
    host.stop().await;
}

#[tokio::test]
async fn at_most_max_open_connections_are_served() {
    let project = project(
        "idle-timeout-ms = 20000\nheader-read-timeout-ms = 20000\nmax-open-connections = 3\n",
    );
    let host = project.start().await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect(&host).await);
    }
    // Let the host accept them.
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The fourth is left in the listen backlog: no answer.
    let mut fourth = connect(&host).await;
    fourth
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let started = Instant::now();
    let (answer, _) = read_until_closed(&mut fourth, started, Duration::from_millis(300)).await;
    assert_eq!(answer, "", "answered beyond max-open-connections");
    // One closes: the fourth is served.
    drop(held.pop());
    let (answer, closed) = read_until_closed(&mut fourth, started, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(closed.is_some());
    drop(held);
    host.stop().await;
}

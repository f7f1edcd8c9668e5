//! The HTTP listener: accepts up to `max-open-connections` connections,
//! serves each with hyper's HTTP/1.1, closes the ones whose client trickles
//! its headers (408) or goes quiet, and drains on shutdown.
//!
//! hyper's own `header_read_timeout` starts as soon as a connection waits
//! for a request, so it cannot tell a quiet keep-alive connection from a
//! client stuck halfway through its headers; [`Activity`] watches the bytes
//! and the requests of each connection and tells them apart.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::body::Incoming;
use hyper::service::{Service, service_fn};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What bounds one connection (from `[host]`).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// `header-read-timeout-ms`: a request's first byte to its last header.
    pub header_read_timeout: Duration,
    /// `idle-timeout-ms`: nothing moving and no request being handled.
    pub idle_timeout: Duration,
    /// `max-open-connections`.
    pub max_open: usize,
    /// hyper's read buffer per connection, which also caps a request's head.
    pub max_buf_size: usize,
}

/// hyper refuses a smaller read buffer.
const MIN_BUF_SIZE: usize = 8192;
/// How long the 408 answer may take to write before the socket is closed.
const FAREWELL: Duration = Duration::from_secs(1);

impl ConnectionLimits {
    /// The read buffer for headers of `max_header_bytes` (names and values,
    /// what the guard counts) plus the request line and separators.
    pub fn buffer_for(max_header_bytes: usize) -> usize {
        max_header_bytes
            .saturating_mul(2)
            .saturating_add(MIN_BUF_SIZE)
            .max(MIN_BUF_SIZE)
    }
}

/// Serves `router` on `listener` until `shutdown`, then waits for the
/// requests in flight (connections finish their request and close).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) {
    let open = Arc::new(Semaphore::new(limits.max_open.max(1)));
    let connections = TaskTracker::new();
    loop {
        // At the cap, stop accepting: clients queue in the listen backlog
        // until a connection closes (each closes within its timeouts).
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = open.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
        };
        let connection = Connection {
            router: router.clone(),
            limits,
            shutdown: shutdown.clone(),
        };
        connections.spawn(async move {
            connection.serve(stream).await;
            drop(permit);
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// A failed accept: a client that went away is nothing; anything else (out
/// of file descriptors) pauses the loop rather than spinning on it.
async fn accept_failed(e: io::Error) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::warn!(error = %e, "accepting an HTTP connection failed; pausing");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// One accepted connection and what it needs.
struct Connection {
    router: Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
}

/// Why a connection was closed by the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expired {
    /// Its request's headers did not complete in time: answered 408.
    Header,
    /// Nothing moved for `idle-timeout-ms` while no request was handled.
    Idle,
}

impl Connection {
    async fn serve(self, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::new());
        let io = TokioIo::new(Watched {
            inner: stream,
            activity: activity.clone(),
        });
        let inner = TowerToHyperService::new(self.router);
        let tracked = activity.clone();
        let service = service_fn(move |request: hyper::Request<Incoming>| {
            let handling = tracked.begin_request();
            let answer = inner.call(request);
            async move {
                let answer = answer.await;
                drop(handling);
                answer
            }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .keep_alive(true)
            .max_buf_size(self.limits.max_buf_size.max(MIN_BUF_SIZE))
            // Timed by `Activity` instead; see the module's note.
            .header_read_timeout(None);
        let mut conn = builder.serve_connection(io, service);
        let expiry = activity.expiry(self.limits);
        tokio::pin!(expiry);
        let mut draining = false;
        let expired = loop {
            tokio::select! {
                served = &mut conn => {
                    if let Err(e) = served {
                        tracing::debug!(error = %e, "HTTP connection ended with an error");
                    }
                    return;
                }
                _ = self.shutdown.cancelled(), if !draining => {
                    // Finishes the request in flight, then closes.
                    Pin::new(&mut conn).graceful_shutdown();
                    draining = true;
                }
                expired = &mut expiry => break expired,
            }
        };
        let mut stream = conn.into_parts().io.into_inner().inner;
        if expired == Expired::Header {
            tracing::debug!("HTTP request headers incomplete in time: 408");
            let _ = tokio::time::timeout(FAREWELL, request_timeout_answer(&mut stream)).await;
        }
        let _ = tokio::time::timeout(FAREWELL, stream.shutdown()).await;
    }
}

/// Writes a 408 in the API's error format, as the connection's last words.
async fn request_timeout_answer(stream: &mut TcpStream) -> io::Result<()> {
    let body = r#"{"error":{"kind":"timeout","message":"request headers did not arrive within `header-read-timeout-ms`"}}"#;
    let head = format!(
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.flush().await
}

/// What one connection is doing, as its bytes and requests show: shared by
/// its socket wrapper, its service and its watchdog (all in one task;
/// atomics only because hyper wants them `Send`).
struct Activity {
    epoch: Instant,
    /// Milliseconds since `epoch` when a byte last moved, or a request ended.
    last_moved: AtomicU64,
    /// Milliseconds since `epoch`, plus one, when the first byte of a request
    /// arrived; 0 while no request head is being read.
    head_started: AtomicU64,
    /// Requests handed to the router and not yet answered.
    in_flight: AtomicU32,
}

/// Marks a request handled until dropped.
struct Handling(Arc<Activity>);

impl Drop for Handling {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.moved();
    }
}

impl Activity {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            last_moved: AtomicU64::new(0),
            head_started: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn moved(&self) {
        self.last_moved.store(self.now(), Ordering::Relaxed);
    }

    /// Bytes arrived: when no request is being handled and none has begun,
    /// they are the start of the next request's head.
    fn received(&self) {
        let now = self.now();
        self.last_moved.store(now, Ordering::Relaxed);
        if self.in_flight.load(Ordering::Relaxed) == 0 {
            let _ = self.head_started.compare_exchange(
                0,
                now + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// The router has the request: its head is complete; the request's own
    /// deadline (`request-timeout-ms`) bounds it from here.
    fn begin_request(self: &Arc<Self>) -> Handling {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_started.store(0, Ordering::Relaxed);
        Handling(self.clone())
    }

    /// When the connection is due to close now, and why; `None` while a
    /// request is being handled.
    fn due(&self, limits: ConnectionLimits) -> Option<(u64, Expired)> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let idle = (
            self.last_moved
                .load(Ordering::Relaxed)
                .saturating_add(ms(limits.idle_timeout)),
            Expired::Idle,
        );
        match self.head_started.load(Ordering::Relaxed) {
            0 => Some(idle),
            started => {
                let header = (
                    (started - 1).saturating_add(ms(limits.header_read_timeout)),
                    Expired::Header,
                );
                Some(if header.0 <= idle.0 { header } else { idle })
            }
        }
    }

    /// Resolves when the connection has been idle, or reading one request's
    /// head, for too long.
    async fn expiry(self: Arc<Self>, limits: ConnectionLimits) -> Expired {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        // Nothing wakes this early when a request begins or ends: each turn
        // computes the deadline again, and never sleeps longer than a head
        // may take, so a head that starts meanwhile is not overslept.
        let longest = ms(limits.header_read_timeout).min(ms(limits.idle_timeout));
        loop {
            let now = self.now();
            let wait = match self.due(limits) {
                Some((at, why)) if at <= now => return why,
                Some((at, _)) => at - now,
                None => longest,
            };
            tokio::time::sleep(Duration::from_millis(wait.clamp(1, longest.max(1)))).await;
        }
    }
}

/// The socket, reporting to the connection's [`Activity`] when bytes move.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.received();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.moved();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.moved();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

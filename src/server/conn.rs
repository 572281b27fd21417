//! One client connection from accept to close, and the clock that closes it when the peer
//! stalls. hyper has no idle timer for HTTP/1 keep-alive and none at all for a connection that
//! has not sent its first byte (the protocol is not even known yet), so the connection keeps
//! its own [`Activity`] and a watchdog acts on it:
//!
//! | phase | the peer must, within |
//! |---|---|
//! | fresh (nothing read yet) or a request head begun | `--client-header-timeout`: send the whole head (h2c: the preface) |
//! | idle (keep-alive, or h2 with no stream open) | `--client-idle-timeout`: start a request |
//! | busy (a request or stream open) | nothing; the body has its own deadline ([`super::body::TimedBody`]) |
//!
//! On expiry an HTTP/1 connection is closed at once (no request is open, so nothing is lost);
//! one whose head had begun is first answered 408 in OpenAI's error shape, written here because
//! hyper has no timeout answer of its own (its socket comes back from hyper's connection as it
//! is dropped, see [`Watched`]). An HTTP/2 connection gets GOAWAY and is closed for good
//! [`GOAWAY_GRACE`] later if the peer does not finish the handshake.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Notify, OwnedSemaphorePermit};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::body::{BodyTimeout, TimedBody, Tracked};
use crate::chat::{GatewayError, TimeoutKind};
use crate::config::ClientLimits;

/// How long an HTTP/2 peer has, after GOAWAY, before its connection is closed regardless.
const GOAWAY_GRACE: Duration = Duration::from_secs(1);

/// How long the 408 for a slow head may take to write, and the peer's leftover bytes to be
/// read after it (closing with unread input would reset the connection and lose the answer).
const SLOW_HEAD_ANSWER: Duration = Duration::from_secs(1);

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Fresh,
    Head,
    Idle,
    Busy,
}

struct State {
    phase: Phase,
    /// When the phase began.
    since: Instant,
    in_flight: usize,
    /// Bytes of the h2c preface seen so far, while the protocol is still unknown.
    sniffed: Option<usize>,
    h2: bool,
    /// Set when the watchdog wants the socket back from hyper to answer a slow head.
    reclaim: Option<oneshot::Sender<TcpStream>>,
}

/// What the watchdog knows of a connection. Updated on each request's start and end and on
/// the first byte read while no request is open; nothing per byte beyond one atomic load.
pub struct Activity {
    /// Reads matter (they may begin a head) only while no request is open on HTTP/1.
    watch_reads: AtomicBool,
    state: Mutex<State>,
    changed: Notify,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Activity {
            watch_reads: AtomicBool::new(true),
            state: Mutex::new(State {
                phase: Phase::Fresh,
                since: Instant::now(),
                in_flight: 0,
                sniffed: Some(0),
                h2: false,
                reclaim: None,
            }),
            changed: Notify::new(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is plain data, valid after any panic mid-update.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn on_read(&self, bytes: &[u8]) {
        if bytes.is_empty() || !self.watch_reads.load(Ordering::Relaxed) {
            return;
        }
        let mut s = self.state();
        if let Some(seen) = s.sniffed {
            let want = &H2_PREFACE[seen..];
            let n = want.len().min(bytes.len());
            if bytes[..n] == want[..n] {
                if seen + n == H2_PREFACE.len() {
                    // An h2c connection: from now on frames, not heads; idle until a stream.
                    s.sniffed = None;
                    s.h2 = true;
                    if s.phase != Phase::Busy {
                        s.phase = Phase::Idle;
                        s.since = Instant::now();
                    }
                    self.watch_reads.store(false, Ordering::Relaxed);
                    self.changed.notify_one();
                    return;
                }
                s.sniffed = Some(seen + n);
            } else {
                s.sniffed = None;
            }
        }
        if matches!(s.phase, Phase::Fresh | Phase::Idle) {
            s.phase = Phase::Head;
            s.since = Instant::now();
            self.changed.notify_one();
        }
        if s.sniffed.is_none() {
            self.watch_reads.store(false, Ordering::Relaxed);
        }
    }

    /// When the connection is to be closed if nothing changes; `None` while busy.
    fn deadline(&self, limits: &ClientLimits) -> Option<Instant> {
        let s = self.state();
        match s.phase {
            Phase::Fresh | Phase::Head => Some(s.since + limits.header_timeout),
            Phase::Idle => Some(s.since + limits.idle_timeout),
            Phase::Busy => None,
        }
    }

    fn is_h2(&self) -> bool {
        self.state().h2
    }

    /// When an HTTP/1 head has begun and stalled: a receiver for the socket, which comes back
    /// once hyper's connection is dropped (if hyper left no response half written).
    fn reclaim_for_slow_head(&self) -> Option<oneshot::Receiver<TcpStream>> {
        let mut s = self.state();
        if s.phase != Phase::Head || s.h2 || s.sniffed.is_some() {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        s.reclaim = Some(tx);
        Some(rx)
    }
}

/// Marks its connection busy from a request's start until its response body is dropped.
pub struct Busy(Arc<Activity>);

impl Busy {
    fn start(activity: &Arc<Activity>) -> Busy {
        let mut s = activity.state();
        s.in_flight += 1;
        s.phase = Phase::Busy;
        s.sniffed = None;
        activity.watch_reads.store(false, Ordering::Relaxed);
        drop(s);
        Busy(activity.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let activity = &self.0;
        let mut s = activity.state();
        s.in_flight -= 1;
        if s.in_flight == 0 {
            s.phase = Phase::Idle;
            s.since = Instant::now();
            if !s.h2 {
                activity.watch_reads.store(true, Ordering::Relaxed);
            }
            activity.changed.notify_one();
        }
    }
}

/// The client socket, telling [`Activity`] about bytes read, and handing itself back when
/// [`Activity::reclaim_for_slow_head`] asked for it.
struct Watched {
    /// `Some` until dropped.
    tcp: Option<TcpStream>,
    activity: Arc<Activity>,
    /// Bytes written and not yet flushed: a response is half way out.
    unflushed: bool,
}

impl Watched {
    fn tcp(&mut self) -> Pin<&mut TcpStream> {
        Pin::new(self.tcp.as_mut().expect("the socket is taken only on drop"))
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        let reclaim = self.activity.state().reclaim.take();
        if let (Some(tx), Some(tcp), false) = (reclaim, self.tcp.take(), self.unflushed) {
            let _ = tx.send(tcp);
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = this.tcp().poll_read(cx, buf);
        if poll.is_ready() {
            this.activity.on_read(&buf.filled()[before..]);
        }
        poll
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = this.tcp().poll_write(cx, buf);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            this.unflushed = true;
        }
        poll
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = this.tcp().poll_write_vectored(cx, bufs);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            this.unflushed = true;
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.as_ref().is_some_and(|t| t.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = this.tcp().poll_flush(cx);
        if matches!(poll, Poll::Ready(Ok(()))) {
            this.unflushed = false;
        }
        poll
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().tcp().poll_shutdown(cx)
    }
}

/// What every connection task shares.
pub struct Shared {
    pub builder: auto::Builder<TokioExecutor>,
    pub app: Router,
    pub limits: ClientLimits,
    /// Cancelled when the gateway stops: finish open requests, take no new ones.
    pub stop: CancellationToken,
    /// Cancelled when the shutdown grace is over: open gRPC streams end with UNAVAILABLE.
    pub drain: CancellationToken,
    /// Cancelled when the shutdown grace (and the flush after it) is over: close now.
    pub kill: CancellationToken,
}

/// Serves one connection until it closes, the peer stalls, or the gateway stops. `permit` is
/// the connection's place under `--max-connections`, given back when this returns.
pub async fn serve(tcp: TcpStream, shared: Arc<Shared>, permit: OwnedSemaphorePermit) {
    let _permit = permit;
    let activity = Activity::new();
    let io = TokioIo::new(Watched {
        tcp: Some(tcp),
        activity: activity.clone(),
        unflushed: false,
    });
    let service = {
        let activity = activity.clone();
        let app = shared.app.clone();
        let body_timeout = shared.limits.body_timeout;
        let drain = shared.drain.clone();
        hyper::service::service_fn(move |request: http::Request<Incoming>| {
            let busy = Busy::start(&activity);
            let grpc = is_grpc(&request);
            let request_id = request.headers().get("x-request-id").cloned();
            // tonic-web turns every request-body error into INTERNAL; this flag lets the status
            // the timeout carries be put back (native gRPC keeps it without help).
            let timed_out = is_grpc_web(&request).then(|| Arc::new(AtomicBool::new(false)));
            let request = request.map(|body| {
                TimedBody::new(body, Instant::now(), body_timeout, request_id)
                    .flag_on_timeout(timed_out.clone())
            });
            let call = app.clone().oneshot(request);
            let drain = grpc.then(|| drain.clone());
            async move {
                let mut response = call.await?;
                if timed_out.is_some_and(|t| t.load(Ordering::Relaxed)) {
                    let status = BodyTimeout::status_for(body_timeout);
                    // Only a trailers-only answer can come before the body was read.
                    if response.headers().contains_key("grpc-status") {
                        let _ = status.add_header(response.headers_mut());
                    }
                }
                Ok::<_, Infallible>(
                    response.map(|body| Tracked::new(body, busy).grpc_until(drain.as_ref())),
                )
            }
        })
    };
    // The connection lives in this block, so that it is dropped (and the socket, if asked for,
    // handed back) when the block ends.
    let reclaimed = async {
        let conn = shared.builder.serve_connection(io, service);
        tokio::pin!(conn);
        let mut goaway_sent = false;
        // Set once the connection is told to close: it is dropped if still open by then.
        let mut close_by: Option<Instant> = None;
        loop {
            let changed = activity.changed.notified();
            let deadline = close_by.or_else(|| activity.deadline(&shared.limits));
            let expiry = async move {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "client connection ended with an error");
                    }
                    return None;
                }
                _ = changed => {}
                _ = expiry => {
                    if close_by.is_some() {
                        return None;
                    }
                    if activity.deadline(&shared.limits).is_some_and(|d| d <= Instant::now()) {
                        if !activity.is_h2() {
                            tracing::debug!("closing a stalled or idle client connection");
                            return activity.reclaim_for_slow_head();
                        }
                        if !goaway_sent {
                            conn.as_mut().graceful_shutdown();
                            goaway_sent = true;
                        }
                        close_by = Some(Instant::now() + GOAWAY_GRACE);
                    }
                }
                _ = shared.stop.cancelled(), if !goaway_sent => {
                    conn.as_mut().graceful_shutdown();
                    goaway_sent = true;
                }
                _ = shared.kill.cancelled() => return None,
            }
        }
    }
    .await;
    if let Some(rx) = reclaimed {
        // No socket back when hyper had a response half written: then a close is all we can do.
        if let Ok(tcp) = rx.await {
            answer_slow_head(tcp, shared.limits.header_timeout).await;
        }
    }
}

/// 408 with OpenAI's error JSON to a peer whose request head did not arrive in time, then a
/// lingering close: the peer's late bytes are read and dropped for a moment so that the close
/// does not reset the connection before the answer is read.
async fn answer_slow_head(mut tcp: TcpStream, limit: Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let error = GatewayError::Timeout {
        kind: TimeoutKind::ClientHeader,
        detail: format!(
            "the request head did not arrive within {}",
            humantime::format_duration(limit)
        ),
    };
    let body = error.to_openai_json();
    let head = format!(
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let answer = async {
        tcp.write_all(head.as_bytes()).await?;
        tcp.write_all(&body).await?;
        tcp.shutdown().await?;
        let mut sink = [0u8; 1024];
        while tcp.read(&mut sink).await? > 0 {}
        io::Result::Ok(())
    };
    let _ = tokio::time::timeout(SLOW_HEAD_ANSWER, answer).await;
}

/// Native gRPC (over HTTP/2, status in HTTP trailers), not gRPC-Web.
fn is_grpc<B>(request: &http::Request<B>) -> bool {
    let Some(v) = request.headers().get(http::header::CONTENT_TYPE) else {
        return false;
    };
    let v = v.as_bytes();
    v.starts_with(b"application/grpc") && !v.starts_with(b"application/grpc-web")
}

fn is_grpc_web<B>(request: &http::Request<B>) -> bool {
    request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc-web"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ClientLimits {
        ClientLimits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(75),
            max_connections: None,
        }
    }

    fn phase(a: &Activity) -> Phase {
        a.state().phase
    }

    #[test]
    fn http1_phases_follow_heads_and_requests() {
        let a = Activity::new();
        let fresh = a.deadline(&limits()).unwrap();
        a.on_read(b"GE");
        assert_eq!(phase(&a), Phase::Head);
        assert!(!a.is_h2());
        // Further bytes of the same head do not move its deadline.
        let head = a.deadline(&limits()).unwrap();
        assert!(head >= fresh);
        a.on_read(b"T / HTTP/1.1\r\n");
        assert_eq!(a.deadline(&limits()), Some(head));
        let busy = Busy::start(&a);
        assert_eq!(a.deadline(&limits()), None);
        drop(busy);
        assert_eq!(phase(&a), Phase::Idle);
        a.on_read(b"P");
        assert_eq!(
            phase(&a),
            Phase::Head,
            "the next head starts a header clock"
        );
    }

    #[test]
    fn h2c_is_idle_once_the_preface_is_in_and_busy_while_a_stream_is_open() {
        let a = Activity::new();
        a.on_read(&H2_PREFACE[..10]);
        assert_eq!(
            phase(&a),
            Phase::Head,
            "a preface is a head: header timeout"
        );
        a.on_read(&H2_PREFACE[10..]);
        assert!(a.is_h2());
        assert_eq!(phase(&a), Phase::Idle);
        let one = Busy::start(&a);
        let two = Busy::start(&a);
        drop(one);
        assert_eq!(phase(&a), Phase::Busy, "a stream is still open");
        drop(two);
        assert_eq!(phase(&a), Phase::Idle);
        // Frames on an idle h2 connection (PING, SETTINGS) do not start a header clock.
        a.on_read(b"\x00\x00\x08\x06");
        assert_eq!(phase(&a), Phase::Idle);
    }
}

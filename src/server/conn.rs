//! One client connection from accept to close, and the clock that closes it when the peer
//! stalls. hyper has no idle timer for HTTP/1 keep-alive and none at all for a connection that
//! has not sent its first byte (the protocol is not even known yet), so the connection keeps
//! its own [`Activity`] (in [`super::activity`]) and a watchdog acts on it:
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
//!
//! The watchdog costs nothing per request: its clock is moved only when a phase brings the
//! deadline sooner than it is set for (a new HTTP/1 head), and it is polled only when its own
//! clock or signals wake it (through a `FuturesUnordered`), not on each wake of hyper's
//! connection.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::activity::{Activity, Busy, Watched};
use super::body::{timeout_status, TimedBody, Tracked};
use super::cork::Socket;
use crate::chat::{headers, GatewayError, TimeoutKind};
use crate::config::ClientLimits;

/// How long an HTTP/2 peer has, after GOAWAY, before its connection is closed regardless.
const GOAWAY_GRACE: Duration = Duration::from_secs(1);

/// How long the 408 for a slow head may take to write, and the peer's leftover bytes to be
/// read after it (closing with unread input would reset the connection and lose the answer).
const SLOW_HEAD_ANSWER: Duration = Duration::from_secs(1);

/// What every connection task shares.
pub struct Shared {
    pub builder: auto::Builder<TokioExecutor>,
    pub app: super::App,
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
    let activity = Activity::new(&shared.limits);
    let socket = Arc::new(Socket::new(tcp));
    let io = TokioIo::new(Watched::new(socket.clone(), activity.clone()));
    let service = {
        let activity = activity.clone();
        let app = shared.app.clone();
        let body_timeout = shared.limits.body_timeout;
        let drain = shared.drain.clone();
        hyper::service::service_fn(move |request: http::Request<Incoming>| {
            let busy = Busy::start(&activity);
            let grpc = is_grpc(&request);
            let request_id = request.headers().get(headers::REQUEST_ID).cloned();
            // tonic-web turns every request-body error into INTERNAL; this flag lets the status
            // the timeout carries be put back (native gRPC keeps it without help).
            let timed_out = is_grpc_web(&request).then(|| Arc::new(AtomicBool::new(false)));
            let request = request.map(|body| {
                TimedBody::new(body, Instant::now(), body_timeout, request_id)
                    .flag_on_timeout(timed_out.clone())
            });
            let call = app.call(request);
            let drain = grpc.then(|| drain.clone());
            async move {
                let mut response = call.await;
                if timed_out.is_some_and(|t| t.load(Ordering::Relaxed)) {
                    let status = timeout_status(body_timeout, None);
                    // Only a trailers-only answer can come before the body was read.
                    if response.headers().contains_key(super::GRPC_STATUS) {
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
        // The watchdog is polled only when its own clock or signals wake it, not on each of
        // the many wakes of hyper's connection (a request read, a response chunk ready):
        // FuturesUnordered polls only the futures whose wakers fired. It holds one at a time.
        let mut watching = FuturesUnordered::new();
        loop {
            watching.push(watchdog(&activity, &shared, goaway_sent, close_by));
            let order = tokio::select! {
                biased;
                result = turn(conn.as_mut(), &socket) => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "client connection ended with an error");
                    }
                    return None;
                }
                Some(order) = watching.next() => order,
            };
            match order {
                Order::GoAway => {
                    if !goaway_sent {
                        conn.as_mut().graceful_shutdown();
                        goaway_sent = true;
                    }
                    close_by = Some(Instant::now() + GOAWAY_GRACE);
                }
                Order::Stop => {
                    conn.as_mut().graceful_shutdown();
                    goaway_sent = true;
                }
                Order::Close => return None,
                Order::AnswerSlowHead => {
                    tracing::debug!("closing a stalled or idle client connection");
                    return activity.reclaim_for_slow_head();
                }
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

/// Polls hyper's connection, then sends what it wrote in this turn on a corked (h2c) socket in
/// one write (see [`super::cork`]). A failed send is also reported to hyper's next write.
fn turn<'a, F: Future>(
    mut conn: Pin<&'a mut F>,
    socket: &'a Socket,
) -> impl Future<Output = F::Output> + 'a {
    std::future::poll_fn(move |cx| {
        let poll = conn.as_mut().poll(cx);
        if let Poll::Ready(Err(e)) = socket.poll_send_held(cx) {
            tracing::debug!(error = %e, "writing to the client failed");
        }
        poll
    })
}

/// What the watchdog tells the connection to do.
enum Order {
    /// An h2 connection stalled: GOAWAY, then close after [`GOAWAY_GRACE`].
    GoAway,
    /// The gateway stops: GOAWAY, finish what is open.
    Stop,
    Close,
    /// An HTTP/1 connection stalled: close it, answering 408 if a head had begun.
    AnswerSlowHead,
}

/// Watches the connection until it must be told something. Its clock is set once per phase
/// that moves the deadline sooner ([`Activity::arm`]), and checked when it rings; requests that
/// start and end in between cost it nothing. After GOAWAY (`close_by`) it only waits for that.
async fn watchdog(
    activity: &Activity,
    shared: &Shared,
    goaway_sent: bool,
    close_by: Option<Instant>,
) -> Order {
    let clock = tokio::time::sleep_until(close_by.unwrap_or_else(|| activity.arm()));
    tokio::pin!(clock);
    loop {
        let changed = activity.changed.notified();
        if close_by.is_none() {
            let at = activity.arm();
            if at != clock.deadline() {
                clock.as_mut().reset(at);
            }
        }
        tokio::select! {
            _ = changed => {}
            _ = clock.as_mut() => {
                if close_by.is_some() {
                    return Order::Close;
                }
                if activity.expired() {
                    return if activity.is_h2() { Order::GoAway } else { Order::AnswerSlowHead };
                }
            }
            _ = shared.stop.cancelled(), if !goaway_sent => return Order::Stop,
            _ = shared.kill.cancelled() => return Order::Close,
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

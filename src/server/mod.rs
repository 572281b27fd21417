//! One listener for both doors: HTTP/1.1 and h2c (gRPC included) on the same port, gRPC calls
//! sent to their door ahead of the HTTP router ([`App`]), the limits that keep any peer from
//! starving the gateway, and graceful shutdown.
//!
//! - [`serve`]: the accept loop. A connection is accepted only with a free place under
//!   `--max-connections` (else it waits in the kernel's backlog); running out of descriptors
//!   pauses accepting instead of spinning on the error.
//! - [`conn`]: one connection, and the watchdog that closes it when the peer stalls before or
//!   between requests (`--client-header-timeout`, `--client-idle-timeout`); [`activity`]: what
//!   the watchdog knows (the connection's phase, kept by the socket and the requests);
//!   [`cork`]: an h2c connection's writes leave once per turn of its task, not once per flush.
//! - [`body`]: the request body's deadline (`--client-body-timeout`, `core::BodyTimeout`) and the
//!   response body that keeps its connection busy.
//! - [`fd`]: the open-files limit and the connection cap derived from it.
//! - [`fallback`]: unknown paths (JSON 404, or UNIMPLEMENTED to gRPC clients).
//! - [`cors`]: `--cors-origin`, over both doors' routes and the fallback.
//!
//! Errors hyper makes before a request exists (a bad request line → 400, a URI over 64 KiB →
//! 414, too many or too large headers → 431) are written by hyper itself as a bare status line
//! with `content-length: 0`, then the connection closes: hyper has no hook to give them a body,
//! so they carry no OpenAI error JSON.

mod activity;
mod body;
mod conn;
mod cork;
mod cors;
mod fallback;
mod fd;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::response::Response;
use axum::Router;
use futures_util::future::Either;
use futures_util::FutureExt;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::{Service, ServiceExt};

pub use fd::{default_max_connections, raise_nofile_limit};

use crate::config::ClientLimits;
use crate::core::Core;

/// The header (HTTP/2 trailer, or header of a trailers-only answer) carrying a gRPC status.
const GRPC_STATUS: &str = "grpc-status";

/// Streams one HTTP/2 connection may have open at once: enough for a busy gRPC channel, few
/// enough that one peer cannot hold more upstream calls than a modest pool of keys can serve.
const H2_MAX_CONCURRENT_STREAMS: u32 = 256;
/// The largest HTTP/2 header list a peer may send. Above hyper's 16 KiB default so that gRPC
/// metadata between the gateway's own limit (`grpc::guard::MAX_METADATA`) and this one gets a
/// RESOURCE_EXHAUSTED status rather than h2's bare 431.
const H2_MAX_HEADER_LIST: u32 = 64 * 1024;

/// An HTTP/2 peer that has been silent this long is sent a PING...
const H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// ...and its connection is closed if the PING is not answered in this time: a peer that
/// vanished (no FIN, no RST) does not hold its streams and sockets for ever.
const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// How long accepting pauses after the process ran out of descriptors (or memory): long enough
/// for closing connections to free some, short enough that a new client hardly notices.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// The whole application: HTTP routes, gRPC services, fallbacks, CORS (when origins are
/// configured) and, outermost, the access layer (so preflights are logged too).
///
/// A call on a gRPC path goes straight to the gRPC door, through the same access layer, rather
/// than through the router: the router's match and its per-route boxing and cloning were a
/// measurable part of a gRPC call's cost, and the door's paths are a prefix test. With CORS
/// configured every call takes the router's way, so that the CORS layer sees gRPC-Web and
/// Connect calls (and their preflights) too.
#[derive(Clone)]
pub struct App {
    router: Router,
    direct: Option<Arc<Direct>>,
}

/// The gRPC door where the server calls it without the router.
struct Direct {
    core: Arc<Core>,
    grpc: crate::grpc::Grpc,
}

/// The application over `core`'s settings and state.
pub fn app(core: Arc<Core>) -> App {
    let grpc = crate::grpc::Grpc::new(core.clone());
    let mut router = crate::http::router(core.clone())
        .merge(grpc.router())
        .fallback(fallback::unknown_path);
    let cors = cors::layer(&core.settings.cors_origins);
    let direct = cors.is_none().then(|| {
        Arc::new(Direct {
            core: core.clone(),
            grpc,
        })
    });
    if let Some(cors) = cors {
        router = router.layer(cors);
    }
    let router = router.layer(axum::middleware::from_fn_with_state(
        core,
        crate::http::access_layer,
    ));
    App { router, direct }
}

impl App {
    /// Answers one request: a gRPC path's at its door, any other through the router.
    pub fn call<B>(&self, request: http::Request<B>) -> impl Future<Output = Response> + Send
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        match &self.direct {
            Some(direct) if direct.grpc.serves(request.uri().path()) => {
                let direct = direct.clone();
                // Boxed: the door's future holds tonic's inline and is several times the
                // router's, and hyper sizes every request's task (a stream's for its whole
                // life) by the larger of the two: unboxed, each open HTTP stream held ~2 KiB
                // more. One allocation per gRPC call instead.
                Either::Left(Box::pin(async move {
                    let mut door = direct.grpc.door();
                    let call =
                        |request| door.call(request).map(|r| r.unwrap_or_else(|e| match e {}));
                    crate::http::access(&direct.core, request.map(Body::new), call).await
                }))
            }
            _ => Either::Right(
                self.router
                    .clone()
                    .oneshot(request)
                    .map(|r| r.unwrap_or_else(|e| match e {})),
            ),
        }
    }
}

/// The next connection on any of the listeners (`--listen` given more than once).
async fn accept_any(
    listeners: &[TcpListener],
) -> std::io::Result<(tokio::net::TcpStream, std::net::SocketAddr)> {
    if let [one] = listeners {
        return one.accept().await;
    }
    let accepts = listeners.iter().map(|l| Box::pin(l.accept()));
    futures_util::future::select_all(accepts).await.0
}

/// How the server stops: `stop` ends accepting and asks every connection to finish its open
/// requests and close; `drain` (the grace is over) ends open gRPC streams with UNAVAILABLE;
/// `kill` closes whatever is still open.
#[derive(Clone, Default)]
pub struct Shutdown {
    pub stop: CancellationToken,
    pub drain: CancellationToken,
    pub kill: CancellationToken,
}

/// Serves until `shutdown.stop` is cancelled, then stops accepting and returns once every
/// connection has closed (or `shutdown.kill` closed them).
pub async fn serve(
    listeners: Vec<TcpListener>,
    app: App,
    limits: ClientLimits,
    max_connections: usize,
    shutdown: Shutdown,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The connection's watchdog times the head (hyper's own header timer would also cut
    // keep-alive connections after the header timeout rather than the idle timeout).
    builder.http1().header_read_timeout(None);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
        .max_header_list_size(H2_MAX_HEADER_LIST)
        .keep_alive_interval(H2_KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT);
    let shared = Arc::new(conn::Shared {
        builder,
        app,
        limits,
        stop: shutdown.stop.clone(),
        drain: shutdown.drain.clone(),
        kill: shutdown.kill.clone(),
    });
    let places = Arc::new(Semaphore::new(max_connections));
    let tracker = TaskTracker::new();
    let mut full_log = fd::Throttle::new(Duration::from_secs(1));
    let mut error_log = fd::Throttle::new(Duration::from_secs(1));
    let stop = &shutdown.stop;
    loop {
        let permit = match places.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if let Some(suppressed) = full_log.allow(Instant::now()) {
                    tracing::warn!(
                        max_connections,
                        suppressed,
                        "connection cap reached: new connections wait until one closes"
                    );
                }
                tokio::select! {
                    permit = places.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break,
                    },
                    _ = stop.cancelled() => break,
                }
            }
        };
        let accepted = tokio::select! {
            accepted = accept_any(&listeners) => accepted,
            _ = stop.cancelled() => break,
        };
        let tcp = match accepted {
            Ok((tcp, _peer)) => tcp,
            Err(e) if fd::is_resource_exhaustion(&e) => {
                if let Some(suppressed) = error_log.allow(Instant::now()) {
                    tracing::error!(error = %e, suppressed, "cannot accept connections: pausing");
                }
                tokio::select! {
                    _ = tokio::time::sleep(ACCEPT_PAUSE) => continue,
                    _ = stop.cancelled() => break,
                }
            }
            // This one connection failed (reset before it was accepted): take the next.
            Err(e) => {
                tracing::debug!(error = %e, "accept failed");
                continue;
            }
        };
        // Every response is small and latency-bound: send it now, not after Nagle's delay.
        let _ = tcp.set_nodelay(true);
        tracker.spawn(conn::serve(tcp, shared.clone(), permit));
    }
    drop(listeners);
    tracker.close();
    tracker.wait().await;
}

//! One listener for both doors: HTTP/1.1 and h2c (gRPC included) on the same port, the gRPC
//! routes merged into the HTTP router, and graceful shutdown on a cancellation token.

use std::sync::Arc;

use axum::serve::ListenerExt;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::gateway::Core;

/// The whole application: HTTP routes, gRPC services, fallbacks and the access layer.
pub fn app(core: Arc<Core>) -> Router {
    crate::http::router(core.clone())
        .merge(crate::grpc::router(core.clone()))
        .fallback(crate::grpc::fallback)
        .layer(axum::middleware::from_fn_with_state(
            core,
            crate::http::access_layer,
        ))
}

/// Serves until `stop` is cancelled, then stops accepting and waits for open requests.
pub async fn serve(listener: TcpListener, app: Router, stop: CancellationToken) {
    let listener = listener.tap_io(|tcp| {
        // Every response is small and latency-bound: send it now, not after Nagle's delay.
        let _ = tcp.set_nodelay(true);
    });
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    {
        tracing::error!(error = %e, "server stopped with an error");
    }
}

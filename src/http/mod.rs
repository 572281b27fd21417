//! The OpenAI-compatible HTTP door: routes, the request-id and access-log layer, the token
//! checks as extractors ([`auth`]), and the rendering of core answers and errors. No key,
//! retry or validation logic lives here.

mod admin;
mod auth;
mod body;
mod chat;
mod dropin;
mod error;
mod models;
mod openapi;
mod ops;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::Router;

use crate::chat::{headers, Attempts, GatewayError, RequestContext};
use crate::core::{Core, Door};
use error::HttpError;

/// What a handler tells the access log about a request it served.
#[derive(Clone, Default)]
pub struct RequestNote {
    pub model: Option<String>,
    pub attempts: Option<Attempts>,
}

/// One route of the HTTP door: the router's path, its handler, and the operations the OpenAPI
/// document lists for it (`"GET /v1/models/{id}"`). Usually one; `/v1/models/{*id}` serves
/// two, since a model id may hold `/` and so `…/{id}/info` cannot be a route of its own.
pub(crate) struct Route {
    pub path: &'static str,
    /// Read by the OpenAPI test only.
    #[cfg_attr(not(test), allow(dead_code))]
    pub documented: &'static [&'static str],
    handler: MethodRouter<Arc<Core>>,
}

/// Every route the HTTP door serves. The router is built from this list and nothing else, and
/// `openapi`'s test checks the document against it, so no route is served undocumented.
pub(crate) fn routes() -> Vec<Route> {
    let route = |path, documented, handler| Route {
        path,
        documented,
        handler,
    };
    vec![
        route("/v1/chat/completions", &["POST /v1/chat/completions"], post(chat::completions)),
        route("/v1/models", &["GET /v1/models"], get(models::list)),
        route(
            "/v1/models/{*id}",
            &["GET /v1/models/{id}", "GET /v1/models/{id}/info"],
            get(models::get),
        ),
        route("/", &["GET /"], get(dropin::root)),
        route("/health", &["GET /health"], get(dropin::health)),
        route("/healthz", &["GET /healthz"], get(ops::healthz)),
        route("/readyz", &["GET /readyz"], get(ops::readyz)),
        route("/metrics", &["GET /metrics"], get(ops::metrics)),
        route("/openapi.json", &["GET /openapi.json"], get(openapi::document)),
        route("/docs", &["GET /docs"], get(openapi::page)),
        route("/admin/keys", &["GET /admin/keys"], get(admin::keys)),
        route("/admin/keys/reload", &["POST /admin/keys/reload"], post(admin::reload)),
        route(
            "/admin/keys/{id}/disable",
            &["POST /admin/keys/{id}/disable"],
            post(admin::disable),
        ),
        route(
            "/admin/keys/{id}/enable",
            &["POST /admin/keys/{id}/enable"],
            post(admin::enable),
        ),
        route("/admin/reload-keys", &["POST /admin/reload-keys"], post(admin::reload)),
        route(
            "/admin/reset-failed-keys",
            &["POST /admin/reset-failed-keys"],
            post(admin::reset_failed),
        ),
    ]
}

/// The HTTP routes, with their method fallback in OpenAI's error shape (unknown paths are the
/// server's: `server::fallback`).
pub fn router(core: Arc<Core>) -> Router {
    routes()
        .into_iter()
        .fold(Router::new(), |router, r| router.route(r.path, r.handler))
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(core)
}

async fn method_not_allowed(method: Method) -> Response {
    let error = GatewayError::InvalidRequest {
        message: format!("method {method} is not allowed on this path"),
        param: None,
        code: "method_not_allowed",
    };
    let mut response = HttpError::from(error).into_response();
    *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    response
}

/// Gives every request a [`RequestContext`] (request id in and out) and writes one log line
/// and one metrics sample per HTTP request. gRPC calls log in their own door.
pub async fn access_layer(
    State(core): State<Arc<Core>>,
    mut request: Request,
    next: Next,
) -> Response {
    let start = Instant::now();
    let ctx = RequestContext::new(
        request
            .headers()
            .get(headers::REQUEST_ID)
            .and_then(|v| v.to_str().ok()),
    );
    let request_id = HeaderValue::try_from(ctx.request_id.as_str()).ok();
    let grpc = request
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    request.extensions_mut().insert(ctx);
    let mut response = next.run(request).await;
    if let Some(id) = request_id {
        response
            .headers_mut()
            .insert(headers::REQUEST_ID, id.clone());
    }
    if grpc {
        return response;
    }
    let status = response.status().as_u16();
    let elapsed = start.elapsed();
    core.metrics.record(Door::Http, status, elapsed);
    let note = response
        .extensions()
        .get::<RequestNote>()
        .cloned()
        .unwrap_or_default();
    let attempts = note.attempts.as_ref();
    tracing::info!(
        target: "megallm_gateway::access",
        door = Door::Http.name(),
        request_id = request_id_str(&response),
        %method,
        path,
        model = note.model.as_deref().unwrap_or(""),
        key = attempts.and_then(|a| a.last_key()).unwrap_or(""),
        attempts = %attempts.map(|a| a.to_string()).unwrap_or_default(),
        status,
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        "request"
    );
    response
}

fn request_id_str(response: &Response) -> &str {
    response
        .headers()
        .get(headers::REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

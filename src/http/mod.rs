//! The OpenAI-compatible HTTP door: routes, the request-id and access-log layer, the token
//! checks as extractors ([`auth`]), and the rendering of core answers and errors. No key,
//! retry or validation logic lives here.

mod admin;
mod auth;
mod body;
mod chat;
mod dropin;
mod error;
mod forward;
mod models;
mod openapi;
mod ops;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::Router;

use crate::chat::{headers, Attempts, Endpoint, GatewayError, RequestContext};
use crate::core::{trace, Core, Door, Route, Status};
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
pub(crate) struct HttpRoute {
    pub path: &'static str,
    /// Read by the OpenAPI test only.
    #[cfg_attr(not(test), allow(dead_code))]
    pub documented: &'static [&'static str],
    handler: MethodRouter<Arc<Core>>,
}

/// Every route the HTTP door serves. The router is built from this list and nothing else, and
/// `openapi`'s test checks the document against it, so no route is served undocumented.
pub(crate) fn routes() -> Vec<HttpRoute> {
    let route = |path, documented, handler| HttpRoute {
        path,
        documented,
        handler,
    };
    vec![
        route(
            "/v1/chat/completions",
            &["POST /v1/chat/completions"],
            post(chat::completions),
        ),
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
        route(
            "/openapi.json",
            &["GET /openapi.json"],
            get(openapi::document),
        ),
        route("/docs", &["GET /docs"], get(openapi::page)),
        route("/admin/keys", &["GET /admin/keys"], get(admin::keys)),
        route(
            "/admin/keys/reload",
            &["POST /admin/keys/reload"],
            post(admin::reload),
        ),
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
        route("/admin/usage", &["GET /admin/usage"], get(admin::usage)),
        route(
            "/admin/tokens/reload",
            &["POST /admin/tokens/reload"],
            post(admin::reload_tokens),
        ),
        route(
            "/admin/reload-keys",
            &["POST /admin/reload-keys"],
            post(admin::reload),
        ),
        route(
            "/admin/reset-failed-keys",
            &["POST /admin/reset-failed-keys"],
            post(admin::reset_failed),
        ),
    ]
}

/// Every path the router serves, as axum's `MatchedPath` spells it: the door's own routes, then
/// the forwarded endpoints. The metrics' `route` labels are these, registered by [`router`]
/// from the same two lists it routes, so no route is counted as `unmatched`.
pub(crate) fn route_paths<'a>(
    routes: &'a [HttpRoute],
    endpoints: &'a [Arc<Endpoint>],
) -> impl Iterator<Item = &'a str> {
    let endpoints = endpoints.iter().map(|e| e.path.as_str());
    routes.iter().map(|r| r.path).chain(endpoints)
}

/// The HTTP routes, with their method fallback in OpenAI's error shape (unknown paths are the
/// server's: `server::fallback`).
pub fn router(core: Arc<Core>) -> Router {
    let routes = routes();
    core.metrics
        .http_routes(route_paths(&routes, core.endpoints()));
    let router = core
        .endpoints()
        .iter()
        .fold(Router::new(), |router, endpoint| {
            router.route(&endpoint.path.clone(), forward::route(endpoint.clone()))
        });
    routes
        .into_iter()
        .fold(router, |router, r| router.route(r.path, r.handler))
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

/// Gives every request a [`RequestContext`] (request id in and out, and with traces on its
/// span, continuing the client's `traceparent`) and writes one log line and one metrics sample
/// per HTTP request, labelled by the route axum matched. gRPC calls log in their own door.
pub async fn access_layer(State(core): State<Arc<Core>>, request: Request, next: Next) -> Response {
    access(&core, request, |request| next.run(request)).await
}

/// [`access_layer`] around any service (`next` answers the request): the server calls the
/// gRPC door this way, ahead of the router. A request no route matched (no `MatchedPath`) is
/// labelled `unmatched`: what a non-gRPC call on a gRPC path was labelled when the router
/// matched it too (its template is no HTTP route).
pub async fn access<F, Fut>(core: &Core, mut request: Request, next: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    let start = Instant::now();
    let mut ctx = RequestContext::new(
        request
            .headers()
            .get(headers::REQUEST_ID)
            .and_then(|v| v.to_str().ok()),
    );
    // Sensitive, so that HTTP/2 sends it as a literal instead of adding it to the connection's
    // HPACK table: an id new with every answer is never reused from there, it only evicts what
    // would be, and the encoder compares each new one with every id already in the table.
    let request_id = HeaderValue::try_from(ctx.request_id.as_str())
        .ok()
        .map(|mut id| {
            id.set_sensitive(true);
            id
        });
    // The gRPC door records its own calls (gRPC, gRPC-Web and Connect alike: a Connect call
    // is `application/json` or `application/proto` on a gRPC method's path).
    let grpc_route = Route::grpc_path(request.uri().path());
    let grpc = grpc_route.is_some()
        || request
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let route = if grpc {
        grpc_route
    } else {
        let matched = request.extensions().get::<MatchedPath>();
        Some(core.metrics.http_route(matched.map(MatchedPath::as_str)))
    };
    if let Some(route) = route {
        ctx.span = trace::request_span(
            route,
            request.method().as_str(),
            &ctx.request_id,
            request.headers(),
        );
    }
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let span = ctx.span.clone();
    request.extensions_mut().insert(ctx);
    let mut response = next(request).await;
    if let Some(id) = request_id {
        response
            .headers_mut()
            .insert(headers::REQUEST_ID, id.clone());
    }
    let Some(route) = route.filter(|_| !grpc) else {
        return response;
    };
    let status = response.status().as_u16();
    let elapsed = start.elapsed();
    core.metrics.record(route, Status::Http(status), elapsed);
    trace::http_status(&span, status);
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
        attempts = %attempts.map(|a| a.header_text()).unwrap_or_default(),
        status,
        duration_ms = millis(elapsed),
        "request"
    );
    response
}

/// A duration in milliseconds to the microsecond: `0.466`, not `0.46578400000000003` (the
/// quotient of whole microseconds is the double nearest the 3-decimal value, which prints as
/// that value). The gRPC door's log has the same.
fn millis(d: std::time::Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

fn request_id_str(response: &Response) -> &str {
    response
        .headers()
        .get(headers::REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[cfg(test)]
mod tests {
    use crate::chat::Endpoint;
    use crate::config::is_reserved_path;

    /// A route template with its captures filled in: a path a client could send.
    fn concrete(template: &str) -> String {
        template
            .split('/')
            .map(|seg| if seg.starts_with('{') { "x" } else { seg })
            .collect::<Vec<_>>()
            .join("/")
    }

    #[test]
    fn no_passthrough_path_can_shadow_a_route_the_gateway_serves() {
        let served = super::routes().into_iter().map(|r| concrete(r.path));
        let endpoints = Endpoint::builtin().into_iter().map(|e| e.path);
        let grpc = [
            "/megallm.v1.ChatService/CreateChatCompletion",
            "/grpc.health.v1.Health/Check",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ]
        .map(String::from);
        for path in served.chain(endpoints).chain(grpc) {
            assert!(is_reserved_path(&path), "{path} is not reserved");
        }
        for free in ["/v1/audio/speech", "/v1/rerank", "/v1/modelsx", "/healthy"] {
            assert!(!is_reserved_path(free), "{free} is reserved");
        }
    }
}

//! CORS, where both doors meet, so that a browser page can call the HTTP API, gRPC-Web and
//! Connect (the same routes): `--cors-origin` names the origins allowed (`*`: any). With none,
//! no layer is added and no answer carries a CORS header, as before the setting existed.
//!
//! Preflights are answered here, before any route or token check: a browser sends them
//! without the `Authorization` header it is asking permission for.

use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, Method};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::chat::headers;

/// How long a browser may reuse a preflight's answer.
const MAX_AGE: Duration = Duration::from_secs(600);

/// The request headers a browser client of either door sends: bearer tokens and JSON,
/// gRPC-Web's own, Connect's, and our request id; then what the OpenAI and Anthropic
/// JavaScript SDKs add in a browser (Anthropic's key header and version, both SDKs'
/// `x-stainless-*` client description), without which their preflight would fail.
const ALLOW_HEADERS: [&str; 23] = [
    "authorization",
    "content-type",
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
    "connect-protocol-version",
    "connect-timeout-ms",
    headers::REQUEST_ID,
    "x-api-key",
    "anthropic-version",
    "anthropic-beta",
    "anthropic-dangerous-direct-browser-access",
    "x-stainless-lang",
    "x-stainless-package-version",
    "x-stainless-os",
    "x-stainless-arch",
    "x-stainless-runtime",
    "x-stainless-runtime-version",
    "x-stainless-retry-count",
    "x-stainless-timeout",
    "x-stainless-helper-method",
    "openai-organization",
    "openai-project",
];

/// The answer headers a page may read: gRPC-Web's status (a trailers-only answer carries it in
/// the head), our request id and attempt trail, and when to come back.
const EXPOSE_HEADERS: [&str; 5] = [
    "grpc-status",
    "grpc-message",
    headers::REQUEST_ID,
    headers::ATTEMPTS,
    "retry-after",
];

/// The CORS layer for `origins`; `None` when there are none. The origins were checked by
/// `Settings::validate`; one that still is no header value is skipped.
pub fn layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    let names = |list: &[&'static str]| -> Vec<HeaderName> {
        list.iter().map(|h| HeaderName::from_static(h)).collect()
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
            .allow_headers(names(&ALLOW_HEADERS))
            .expose_headers(names(&EXPOSE_HEADERS))
            .max_age(MAX_AGE),
    )
}

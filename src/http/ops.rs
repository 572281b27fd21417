//! Operations endpoints: liveness, readiness (a key can serve now), Prometheus metrics.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use serde_json::json;

use super::error::HttpError;
use crate::chat::GatewayError;
use crate::gateway::Core;

pub async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

pub async fn readyz(State(core): State<Arc<Core>>) -> Response {
    if core.pool.can_serve_now() {
        Json(json!({"status": "ready"})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "no key can serve now"})),
        )
            .into_response()
    }
}

pub async fn metrics(State(core): State<Arc<Core>>, headers: HeaderMap) -> Response {
    let authorization = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
    if core.metrics_authorized(authorization) == Some(false) {
        return HttpError::from(GatewayError::Unauthenticated).into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        core.metrics.render(&core.pool),
    )
        .into_response()
}

//! Operations endpoints: liveness, readiness (a key can serve now), Prometheus metrics.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use serde_json::json;

use super::auth::MetricsAuth;
use crate::core::Core;

pub async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

pub async fn readyz(State(core): State<Arc<Core>>) -> Response {
    if core.can_serve_now() {
        Json(json!({"status": "ready"})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "no key can serve now",
                "reason": format!("no key can serve: {}", core.no_key_summary()),
            })),
        )
            .into_response()
    }
}

pub async fn metrics(_: MetricsAuth, State(core): State<Arc<Core>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        core.render_metrics(),
    )
        .into_response()
}

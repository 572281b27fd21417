//! The admin API over the key pool: list, reload, disable, enable. Off (404) unless an admin
//! token is configured; 401 for a wrong token (compared in constant time).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use serde_json::json;

use super::error::HttpError;
use crate::chat::GatewayError;
use crate::gateway::Core;

/// The refusal, if the caller may not use the admin API.
fn deny(core: &Core, headers: &HeaderMap) -> Option<Response> {
    match core.admin_authorized(headers.get(header::AUTHORIZATION).map(|v| v.as_bytes())) {
        None => Some(HttpError::from(GatewayError::NotFound("not found".into())).into_response()),
        Some(false) => Some(HttpError::from(GatewayError::Unauthenticated).into_response()),
        Some(true) => None,
    }
}

pub async fn keys(State(core): State<Arc<Core>>, headers: HeaderMap) -> Response {
    if let Some(r) = deny(&core, &headers) {
        return r;
    }
    Json(json!({"keys": core.pool.view()})).into_response()
}

pub async fn reload(State(core): State<Arc<Core>>, headers: HeaderMap) -> Response {
    if let Some(r) = deny(&core, &headers) {
        return r;
    }
    match core.reload_keys() {
        Ok(summary) => Json(json!({"reloaded": summary})).into_response(),
        Err(message) => (
            StatusCode::CONFLICT,
            Json(json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": "reload_refused"}})),
        )
            .into_response(),
    }
}

pub async fn disable(
    State(core): State<Arc<Core>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    set_state(&core, &headers, &id, false)
}

pub async fn enable(
    State(core): State<Arc<Core>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    set_state(&core, &headers, &id, true)
}

fn set_state(core: &Core, headers: &HeaderMap, id: &str, enable: bool) -> Response {
    if let Some(r) = deny(core, headers) {
        return r;
    }
    let found = if enable {
        core.pool.enable(id)
    } else {
        core.pool.disable(id)
    };
    if !found {
        return HttpError::from(GatewayError::NotFound(format!("no key with id `{id}`")))
            .into_response();
    }
    tracing::info!(key = id, enable, "admin changed a key");
    let view = core.pool.view().into_iter().find(|k| k.id == id);
    Json(json!({"key": view})).into_response()
}

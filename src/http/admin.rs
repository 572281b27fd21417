//! The admin API over the key pool: list, reload, disable, enable, and reset every failed key.
//! Off (404) unless an admin token is configured; 401 for a wrong token (compared in constant
//! time). Every handler takes [`AdminAuth`] first, so nothing else about the request is looked
//! at before. The original service's `POST /admin/reload-keys` is [`reload`] under its old
//! name; its `POST /admin/reset-failed-keys` is [`reset_failed`] (the original left both open
//! to anyone: here they need the admin token like the rest).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use serde_json::json;

use super::auth::AdminAuth;
use super::error::HttpError;
use crate::chat::GatewayError;
use crate::core::Core;

pub async fn keys(_: AdminAuth, State(core): State<Arc<Core>>) -> Response {
    Json(json!({"keys": core.key_view()})).into_response()
}

pub async fn reload(_: AdminAuth, State(core): State<Arc<Core>>) -> Response {
    match core.reload_keys() {
        Ok(summary) => Json(json!({"reloaded": summary})).into_response(),
        Err(message) => (
            StatusCode::CONFLICT,
            Json(json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": "reload_refused"}})),
        )
            .into_response(),
    }
}

/// Every cooling, half-open or disabled key made ready now.
pub async fn reset_failed(_: AdminAuth, State(core): State<Arc<Core>>) -> Response {
    let reset = core.reset_failed_keys();
    Json(json!({"reset": reset.len(), "keys": reset, "key_stats": core.key_stats()}))
        .into_response()
}

/// Token totals per client, model and key, today (UTC) and since start (and, with Redis,
/// every replica's).
pub async fn usage(_: AdminAuth, State(core): State<Arc<Core>>) -> Response {
    Json(core.usage_report().await).into_response()
}

pub async fn reload_tokens(_: AdminAuth, State(core): State<Arc<Core>>) -> Response {
    match core.reload_tokens() {
        Ok(summary) => Json(json!({"reloaded": summary})).into_response(),
        Err(message) => (
            StatusCode::CONFLICT,
            Json(json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": "reload_refused"}})),
        )
            .into_response(),
    }
}

pub async fn disable(
    _: AdminAuth,
    State(core): State<Arc<Core>>,
    Path(id): Path<String>,
) -> Response {
    set_state(&core, &id, false)
}

pub async fn enable(
    _: AdminAuth,
    State(core): State<Arc<Core>>,
    Path(id): Path<String>,
) -> Response {
    set_state(&core, &id, true)
}

fn set_state(core: &Core, id: &str, enable: bool) -> Response {
    let found = if enable {
        core.enable_key(id)
    } else {
        core.disable_key(id)
    };
    if !found {
        return HttpError::from(GatewayError::NotFound(format!("no key with id `{id}`")))
            .into_response();
    }
    tracing::info!(key = id, enable, "admin changed a key");
    let view = core.key_view().into_iter().find(|k| k.id == id);
    Json(json!({"key": view})).into_response()
}

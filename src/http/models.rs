//! `GET /v1/models` and `GET /v1/models/{id}` in OpenAI's list/object shape, and the route
//! they share with `GET /v1/models/{id}/info` (a model id may hold `/`, so one catch-all
//! route serves both and the `/info` suffix picks [`super::dropin::model_info`]).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Json, Response};
use serde_json::json;

use super::auth::ClientAuth;
use super::error::HttpError;
use crate::chat::GatewayError;
use crate::core::Core;
use crate::core::ModelInfo;

fn object(m: &ModelInfo) -> serde_json::Value {
    json!({"id": m.id, "object": "model", "created": m.created, "owned_by": m.owned_by})
}

pub async fn list(_: ClientAuth, State(core): State<Arc<Core>>) -> Response {
    let models = core.models.list().await;
    Json(json!({"object": "list", "data": models.iter().map(object).collect::<Vec<_>>()}))
        .into_response()
}

pub async fn get(_: ClientAuth, State(core): State<Arc<Core>>, Path(id): Path<String>) -> Response {
    if let Some(model) = id.strip_suffix("/info").filter(|m| !m.is_empty()) {
        return super::dropin::model_info(&core, model);
    }
    match core.models.get(&id).await {
        Some(model) => Json(object(&model)).into_response(),
        None => HttpError::from(GatewayError::NotFound(format!(
            "The model `{id}` does not exist"
        )))
        .into_response(),
    }
}

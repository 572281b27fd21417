//! `GET /v1/models` and `GET /v1/models/{id}` in OpenAI's list/object shape, each model with
//! the catalogue's fields where it knows them, and `x-gateway-models-source` saying whether the
//! list is the upstream's, its last good one, or the catalogue's. The route they share with
//! `GET /v1/models/{id}/info` is one catch-all (a model id may hold `/`), and the `/info`
//! suffix picks [`super::dropin::model_info`].

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Json, Response};
use serde_json::json;

use super::auth::ClientAuth;
use super::error::HttpError;
use crate::chat::{headers, GatewayError};
use crate::core::{Core, ModelInfo, ModelsSource};

fn object(m: &ModelInfo) -> serde_json::Value {
    let mut object =
        json!({"id": m.id, "object": "model", "created": m.created, "owned_by": m.owned_by});
    if let Some(n) = m.context_length {
        object["context_length"] = n.into();
    }
    if let Some(n) = m.max_output_tokens {
        object["max_output_tokens"] = n.into();
    }
    if m.context_length.is_some() || !m.capabilities.is_empty() {
        object["capabilities"] = m.capabilities.iter().map(|c| c.name()).collect();
    }
    object
}

fn with_source(mut response: Response, source: ModelsSource) -> Response {
    response.headers_mut().insert(
        headers::MODELS_SOURCE,
        HeaderValue::from_static(source.name()),
    );
    response
}

pub async fn list(_: ClientAuth, State(core): State<Arc<Core>>) -> Response {
    let list = core.models.list().await;
    let data: Vec<_> = list.models.iter().map(object).collect();
    with_source(
        Json(json!({"object": "list", "data": data})).into_response(),
        list.source,
    )
}

pub async fn get(_: ClientAuth, State(core): State<Arc<Core>>, Path(id): Path<String>) -> Response {
    if let Some(model) = id.strip_suffix("/info").filter(|m| !m.is_empty()) {
        return super::dropin::model_info(&core, model);
    }
    let (model, source) = core.models.get(&id).await;
    let response = match model {
        Some(model) => Json(object(&model)).into_response(),
        None => HttpError::from(GatewayError::NotFound(format!(
            "The model `{id}` does not exist"
        )))
        .into_response(),
    };
    with_source(response, source)
}

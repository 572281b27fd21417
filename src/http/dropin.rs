//! The original service's own routes, answered the way it answered them, so that monitoring
//! and scripts written for it keep working: `GET /` (what this is), `GET /health` (the pool in
//! three numbers, 200 whether healthy or degraded) and `GET /v1/models/{id}/info` (a model's
//! context window and the 90 % of it the original let a prompt use). Its admin routes are
//! aliases in [`super::admin`].

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Json, Response};
use serde_json::json;

use crate::core::Core;

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The context length the original assumed for a model it did not know.
const DEFAULT_CONTEXT: u64 = 128_000;

pub async fn root() -> Response {
    Json(json!({
        "name": "megallm-gateway",
        "version": VERSION,
        "status": "running",
        "links": {
            "health": "/health",
            "docs": "/docs",
            "openapi": "/openapi.json",
            "api": "/v1",
            "models": "/v1/models",
            "chat_completions": "/v1/chat/completions",
        },
    }))
    .into_response()
}

/// `healthy` while some key can serve now, else `degraded`; 200 in both, as the original
/// (`/readyz` is the one that answers 503).
pub async fn health(State(core): State<Arc<Core>>) -> Response {
    let stats = core.key_stats();
    let status = if stats.available > 0 {
        "healthy"
    } else {
        "degraded"
    };
    Json(json!({"status": status, "key_stats": stats, "version": VERSION})).into_response()
}

/// The body of `GET /v1/models/{id}/info` (the caller checked the client token): the
/// catalogue's context length (`--models-file` included), else the original's default.
pub fn model_info(core: &Core, id: &str) -> Response {
    let known = core.context_length(id);
    let context = known.unwrap_or(DEFAULT_CONTEXT);
    // The original reserved a tenth of the window for the answer.
    let usable = context / 10 * 9 + context % 10 * 9 / 10;
    let mut body = json!({
        "id": id,
        "object": "model.info",
        "context_length": context,
        "context_length_formatted": tokens(context),
        "usable_limit": usable,
        "usable_limit_formatted": tokens(usable),
    });
    if known.is_none() {
        body["note"] = json!(format!(
            "the gateway does not know this model's context length: {} is the default",
            tokens(DEFAULT_CONTEXT)
        ));
    }
    Json(body).into_response()
}

/// `128000` → `"128,000 tokens"`.
fn tokens(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out + " tokens"
}

#[cfg(test)]
mod tests {
    use super::tokens;

    #[test]
    fn token_counts_are_grouped_by_thousands() {
        assert_eq!(tokens(128_000), "128,000 tokens");
        assert_eq!(tokens(115_200), "115,200 tokens");
        assert_eq!(tokens(7_200), "7,200 tokens");
        assert_eq!(tokens(999), "999 tokens");
        assert_eq!(tokens(1_000_000), "1,000,000 tokens");
    }
}

//! The token checks as extractors: a handler that names [`ClientAuth`], [`AdminAuth`] or
//! [`MetricsAuth`] among its arguments runs only for a caller the core lets in; the refusal is
//! OpenAI's error JSON (401 with `WWW-Authenticate: Bearer`; 404 for the admin API when no
//! admin token is configured, so it does not show it exists). The checks themselves are the
//! core's, shared with the gRPC door.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;

use super::error::HttpError;
use crate::chat::GatewayError;
use crate::core::{Caller, Core};

fn authorization(parts: &Parts) -> Option<&[u8]> {
    parts
        .headers
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes())
}

/// The caller presented a gateway token, or none is configured; who it is rides along.
pub struct ClientAuth(pub Caller);

impl FromRequestParts<Arc<Core>> for ClientAuth {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, core: &Arc<Core>) -> Result<Self, HttpError> {
        Ok(ClientAuth(core.authorize(authorization(parts))?))
    }
}

/// The caller of Anthropic's `/v1/messages` presented a gateway token, as `x-api-key` (what
/// Anthropic's SDKs send) or as a bearer token, or none is configured. The refusal is in
/// Anthropic's error shape. Who it is rides along.
pub struct AnthropicAuth(pub Caller);

/// A refusal in Anthropic's error shape.
pub struct AnthropicRefusal(GatewayError);

impl axum::response::IntoResponse for AnthropicRefusal {
    fn into_response(self) -> axum::response::Response {
        crate::core::anthropic_error_response(&self.0)
    }
}

impl FromRequestParts<Arc<Core>> for AnthropicAuth {
    type Rejection = AnthropicRefusal;

    async fn from_request_parts(
        parts: &mut Parts,
        core: &Arc<Core>,
    ) -> Result<Self, AnthropicRefusal> {
        let api_key = parts.headers.get("x-api-key").map(|v| v.as_bytes());
        core.authorize_api_key(authorization(parts), api_key)
            .map(AnthropicAuth)
            .map_err(AnthropicRefusal)
    }
}

/// The admin API is on and the caller presented its token.
pub struct AdminAuth;

impl FromRequestParts<Arc<Core>> for AdminAuth {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, core: &Arc<Core>) -> Result<Self, HttpError> {
        match core.admin_authorized(authorization(parts)) {
            None => Err(GatewayError::NotFound("not found".into()).into()),
            Some(false) => Err(GatewayError::Unauthenticated.into()),
            Some(true) => Ok(AdminAuth),
        }
    }
}

/// `/metrics` is open, or the caller presented the metrics token.
pub struct MetricsAuth;

impl FromRequestParts<Arc<Core>> for MetricsAuth {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, core: &Arc<Core>) -> Result<Self, HttpError> {
        match core.metrics_authorized(authorization(parts)) {
            Some(false) => Err(GatewayError::Unauthenticated.into()),
            None | Some(true) => Ok(MetricsAuth),
        }
    }
}

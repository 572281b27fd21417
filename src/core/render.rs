//! The OpenAI-shaped HTTP answer for a [`GatewayError`]: the status from the core's table,
//! OpenAI's error JSON, `WWW-Authenticate` on a 401, `Retry-After` where the core knows a time.
//! The HTTP door answers every error with it, and so do the two HTTP answers given outside
//! that door: the gRPC door's 415 to a non-gRPC POST, and the server's 404 for unknown paths.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::chat::{headers, Attempts, GatewayError};

/// `error` as OpenAI's error JSON with its status and headers.
pub fn error_response(error: &GatewayError) -> Response {
    render(error, error.to_openai_json())
}

/// `error` as Anthropic's error JSON (`/v1/messages`), with the same status and headers.
pub fn anthropic_error_response(error: &GatewayError) -> Response {
    render(error, error.to_anthropic_json())
}

fn render(error: &GatewayError, body: bytes::Bytes) -> Response {
    let status = StatusCode::from_u16(error.http_status()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut response = (status, body).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if status == StatusCode::UNAUTHORIZED {
        // RFC 9110 §11.6.1: a 401 names the scheme the client should use.
        h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    if let Some(secs) = error.retry_after_secs() {
        h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

/// The attempt trail as the `x-gateway-attempts` header.
pub fn set_attempts(response: &mut Response, attempts: &Attempts) {
    if let Ok(value) = HeaderValue::try_from(attempts.header_text()) {
        response.headers_mut().insert(headers::ATTEMPTS, value);
    }
}

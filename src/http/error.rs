//! The HTTP rendering of [`GatewayError`]: OpenAI's error JSON, the status from the core's
//! table, `Retry-After` where the core knows a time, and the attempt trail.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::chat::{Attempts, GatewayError};

pub const ATTEMPTS_HEADER: &str = "x-gateway-attempts";

/// A core error on its way out of the HTTP door.
pub struct HttpError {
    pub error: GatewayError,
    pub attempts: Option<Attempts>,
}

impl From<GatewayError> for HttpError {
    fn from(error: GatewayError) -> Self {
        HttpError {
            error,
            attempts: None,
        }
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.error.http_status()).unwrap_or(StatusCode::BAD_GATEWAY);
        let mut response = (status, self.error.to_openai_json()).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            // RFC 9110 §11.6.1: a 401 names the scheme the client should use.
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = self.error.retry_after_secs() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(attempts) = self.attempts.filter(|a| !a.is_empty()) {
            set_attempts(&mut response, &attempts);
        }
        response
    }
}

pub fn set_attempts(response: &mut Response, attempts: &Attempts) {
    if let Ok(value) = HeaderValue::try_from(attempts.to_string()) {
        response.headers_mut().insert(ATTEMPTS_HEADER, value);
    }
}

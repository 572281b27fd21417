//! The HTTP door's error: a [`GatewayError`] with the attempt trail that led to it, rendered by
//! the core's OpenAI error response plus `x-gateway-attempts`.

use axum::response::{IntoResponse, Response};

use crate::chat::{Attempts, GatewayError};
use crate::core::{error_response, set_attempts};

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
        let mut response = error_response(&self.error);
        if let Some(attempts) = self.attempts.filter(|a| !a.is_empty()) {
            set_attempts(&mut response, &attempts);
        }
        response
    }
}

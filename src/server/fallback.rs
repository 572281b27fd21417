//! Unknown paths, answered where the two doors meet: UNIMPLEMENTED to gRPC clients (any
//! `application/grpc*` content type), OpenAI's JSON 404 to everyone else.

use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::chat::GatewayError;
use crate::core::error_response;

/// The router's fallback.
pub async fn unknown_path(request: Request) -> Response {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .filter(|v| v.as_bytes().starts_with(b"application/grpc"))
        .cloned();
    let Some(content_type) = content_type else {
        let error = GatewayError::NotFound(format!(
            "no route for {} {}",
            request.method(),
            request.uri().path()
        ));
        return error_response(&error);
    };
    // A trailers-only answer: the status rides in the headers, which gRPC and gRPC-Web
    // clients both read; the content type echoes theirs (`application/grpc-web+proto`, …).
    let mut response = StatusCode::OK.into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, content_type);
    h.insert(super::GRPC_STATUS, HeaderValue::from_static("12"));
    h.insert(
        "grpc-message",
        HeaderValue::from_static("unknown%20service%20or%20method"),
    );
    response
}

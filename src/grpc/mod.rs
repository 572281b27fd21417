//! The gRPC door (placeholder until the gRPC issue lands): routes merged into the one server.

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;

use crate::gateway::Core;

pub fn router(_core: Arc<Core>) -> Router {
    Router::new()
}

/// Unknown paths: UNIMPLEMENTED to gRPC clients, JSON 404 to everyone else.
pub async fn fallback(request: Request) -> Response {
    let grpc = request
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if !grpc {
        return crate::http::not_found(request).await;
    }
    let mut response = StatusCode::OK.into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert("grpc-status", HeaderValue::from_static("12"));
    h.insert("grpc-message", HeaderValue::from_static("unknown%20service%20or%20method"));
    response
}

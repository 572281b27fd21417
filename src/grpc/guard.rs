//! What a gRPC path refuses before tonic sees the call: a POST whose content type is neither
//! gRPC nor a Connect call (Connect calls to ChatService methods are taken by
//! [`super::connect`] before this check; a Connect content type elsewhere, as on the health
//! and reflection paths, which speak gRPC only, is refused here like any other) (415, as the
//! gRPC HTTP/2 spec asks, in OpenAI's error JSON: such a client is likely an HTTP one at the
//! wrong path), and request metadata over [`MAX_METADATA`] (RESOURCE_EXHAUSTED,
//! the code gRPC implementations give metadata over their limit).
//!
//! Metadata over the listener's HTTP/2 header-list limit (`server::H2_MAX_HEADER_LIST`, 64 KiB)
//! never reaches this check: the h2 codec answers such a stream itself with a bare HTTP 431 (no
//! `grpc-status`), which tonic clients report as UNKNOWN. [`MAX_METADATA`] sits well below that
//! limit, so everything between the two gets a proper RESOURCE_EXHAUSTED here.

use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::response::Response;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::status::DOMAIN;
use crate::chat::GatewayError;
use crate::core::error_response;

/// The most request metadata a call may carry, counted as HTTP/2 counts a header list (each
/// field's name and value plus 32 bytes, pseudo-headers included). 16 KiB is what hyper's h2
/// accepted before this limit existed (so no call that worked is refused); a gateway token and
/// a request id need well under 1 KiB.
pub const MAX_METADATA: usize = 16 * 1024;

/// The answer to a non-gRPC POST or to oversized metadata; `None` lets the call through.
pub fn refusal(request: &Request) -> Option<Response> {
    let content_type = request.headers().get(header::CONTENT_TYPE);
    let grpc = content_type.is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if request.method() == Method::POST && !grpc {
        let shown = content_type
            .map(|v| {
                String::from_utf8_lossy(v.as_bytes())
                    .chars()
                    .take(100)
                    .collect()
            })
            .unwrap_or_else(|| "(none)".to_owned());
        let error = GatewayError::UnsupportedMediaType(format!(
            "content type `{shown}` is not gRPC: send application/grpc, or Connect's application/json or application/proto to a ChatService method (OpenAI JSON clients use POST /v1/chat/completions)"
        ));
        return Some(error_response(&error));
    }
    let size = if grpc { metadata_size(request) } else { 0 };
    if size > MAX_METADATA {
        let message =
            format!("request metadata is {size} bytes, over the limit of {MAX_METADATA} bytes");
        let mut details = ErrorDetails::new();
        details.set_error_info(
            "METADATA_TOO_LARGE",
            DOMAIN,
            std::collections::HashMap::new(),
        );
        let status = Status::with_error_details(Code::ResourceExhausted, message, details);
        let mut response: Response = status.into_http();
        if let Some(content_type) = content_type {
            // gRPC-Web clients want their own content type back.
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, content_type.clone());
        }
        return Some(response);
    }
    None
}

/// The request's header list size as HTTP/2 accounts it (RFC 9113 §6.5.2).
fn metadata_size(request: &Request) -> usize {
    let pseudo = [
        request.method().as_str().len() + ":method".len(),
        request.uri().path().len() + ":path".len(),
        request.uri().authority().map_or(0, |a| a.as_str().len()) + ":authority".len(),
        request.uri().scheme_str().map_or(0, str::len) + ":scheme".len(),
    ];
    pseudo.iter().map(|n| n + 32).sum::<usize>() + fields_size(request.headers())
}

fn fields_size(headers: &HeaderMap<HeaderValue>) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 32)
        .sum()
}

//! Copies `x-gateway-attempts` from a gRPC response's headers into its trailers. tonic has no
//! trailing metadata for successful calls, but the attempt trail belongs in the trailers: a
//! streamed call's clients read them at the end, and errors carry it there already (in the
//! status metadata). With this layer, every answer has it in both places.

use axum::body::Body;
use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use http_body_util::BodyExt;

use crate::chat::headers::ATTEMPTS;

pub async fn attempts_in_trailers(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let Some(attempts) = response.headers().get(ATTEMPTS).cloned() else {
        return response;
    };
    response.map(|body| Body::new(body.map_frame(move |frame| add(frame, &attempts))))
}

fn add(
    mut frame: http_body::Frame<bytes::Bytes>,
    attempts: &HeaderValue,
) -> http_body::Frame<bytes::Bytes> {
    if let Some(trailers) = frame.trailers_mut() {
        trailers.entry(ATTEMPTS).or_insert_with(|| attempts.clone());
    }
    frame
}

//! Copies `x-gateway-attempts` from a gRPC response's headers into its trailers. tonic has no
//! trailing metadata for successful calls, but the attempt trail belongs in the trailers: a
//! streamed call's clients read them at the end, and errors carry it there already (in the
//! status metadata). With this, every answer has it in both places.

use http::HeaderValue;
use http_body_util::BodyExt;
use tonic::body::Body;

use crate::chat::headers::ATTEMPTS;

/// `response` with the attempt trail of its headers added to its trailers; as it is when its
/// headers carry none (then its body is not wrapped).
pub fn attempts_in_trailers(response: http::Response<Body>) -> http::Response<Body> {
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

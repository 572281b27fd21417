//! Reading a JSON request body: content type checked first, size bounded while reading (a
//! declared `Content-Length` over the limit is refused before a byte is read), and in time (a
//! body that outlasts `--client-body-timeout` is 408).

use axum::body::Body;
use axum::http::{header, HeaderMap};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::chat::GatewayError;
use crate::server::BodyTimeout;

pub async fn read_json(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, GatewayError> {
    if let Some(content_type) = headers.get(header::CONTENT_TYPE) {
        let text = content_type.to_str().unwrap_or("");
        let mime = text
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let json = mime == "application/json"
            || (mime.starts_with("application/") && mime.ends_with("+json"));
        if !json {
            return Err(GatewayError::UnsupportedMediaType(
                text.chars().take(100).collect(),
            ));
        }
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(GatewayError::PayloadTooLarge { limit });
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(GatewayError::PayloadTooLarge { limit })
        }
        // Too slow a sender is 408, not a bad body.
        Err(e) => Err(match BodyTimeout::find(&*e) {
            Some(timeout) => timeout.error(),
            None => GatewayError::InvalidRequest {
                message: format!("could not read the request body: {e}"),
                param: None,
                code: "invalid_body",
            },
        }),
    }
}

//! Reading a JSON request body: content type (JSON, UTF-8) and content encoding (none) checked
//! first, size bounded while reading (a declared `Content-Length` over the limit is refused
//! before a byte is read), and in time (a body that outlasts `--client-body-timeout` is 408).
//! The bytes are returned as they came: the core forwards them as is.

use axum::body::Body;
use axum::http::{header, HeaderMap};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::chat::GatewayError;
use crate::core::BodyTimeout;

pub async fn read_json(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, GatewayError> {
    check_content_type(headers)?;
    check_content_encoding(headers)?;
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

/// What a curl user is missing: `curl -d` sends `application/x-www-form-urlencoded`.
const CURL_HINT: &str =
    "send `Content-Type: application/json` (with curl: add -H 'Content-Type: application/json')";

/// The body must be declared JSON (`application/json` or `application/*+json`), in UTF-8: a
/// missing content type, another one or another `charset` is refused with 415, since the
/// upstream would read the bytes as UTF-8 JSON whatever the client meant.
fn check_content_type(headers: &HeaderMap) -> Result<(), GatewayError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(GatewayError::UnsupportedMediaType(format!(
            "the request has no Content-Type: {CURL_HINT}"
        )));
    };
    let text = String::from_utf8_lossy(value.as_bytes());
    let mut params = text.split(';');
    let mime = params.next().unwrap_or("").trim().as_bytes();
    // `application/json`, or `application/…+json`, in any case; compared in place, as this
    // runs on every request.
    let json = mime.eq_ignore_ascii_case(b"application/json")
        || (mime.len() >= 17
            && mime[..12].eq_ignore_ascii_case(b"application/")
            && mime[mime.len() - 5..].eq_ignore_ascii_case(b"+json"));
    if !json {
        let shown: String = text.chars().take(100).collect();
        return Err(GatewayError::UnsupportedMediaType(format!(
            "content type `{shown}` is not supported: {CURL_HINT}"
        )));
    }
    for param in params {
        let Some((name, value)) = param.split_once('=') else {
            continue;
        };
        if !name.trim().eq_ignore_ascii_case("charset") {
            continue;
        }
        let charset = value.trim().trim_matches('"');
        if !charset.eq_ignore_ascii_case("utf-8") && !charset.eq_ignore_ascii_case("utf8") {
            let charset: String = charset.chars().take(40).collect();
            return Err(GatewayError::UnsupportedMediaType(format!(
                "charset `{charset}` is not supported: send the JSON body in UTF-8 (`Content-Type: application/json`)"
            )));
        }
    }
    Ok(())
}

/// A compressed body (`gzip`, `br`, `deflate`, `zstd`…) is refused with 415 naming the coding,
/// rather than read as broken UTF-8 or forwarded as bytes the upstream was not told about.
/// `identity` (no coding) is fine.
fn check_content_encoding(headers: &HeaderMap) -> Result<(), GatewayError> {
    for value in headers.get_all(header::CONTENT_ENCODING) {
        let text = String::from_utf8_lossy(value.as_bytes());
        for coding in text.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            if !coding.eq_ignore_ascii_case("identity") {
                let coding: String = coding.chars().take(40).collect();
                return Err(GatewayError::UnsupportedMediaType(format!(
                    "Content-Encoding `{coding}` is not supported: send the body uncompressed"
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    header::HeaderName::from_static(k),
                    header::HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    fn refusal(pairs: &[(&'static str, &'static str)]) -> Option<String> {
        let h = headers(pairs);
        check_content_type(&h)
            .and_then(|()| check_content_encoding(&h))
            .err()
            .map(|e| {
                assert_eq!(e.http_status(), 415, "{e}");
                e.to_string()
            })
    }

    #[test]
    fn json_in_utf8_uncompressed_only() {
        let ct = "content-type";
        let ce = "content-encoding";
        for fine in [
            &[(ct, "application/json")][..],
            &[(ct, "Application/JSON; charset=UTF-8")],
            &[(ct, "application/vnd.api+json;charset=\"utf8\"")],
            &[(ct, "application/json"), (ce, "identity")],
            &[(ct, " APPLICATION/Problem+JSON ")],
            &[(ct, "application/+json")],
        ] {
            assert_eq!(refusal(fine), None, "{fine:?}");
        }
        for not_json in [
            "application/jsonx",
            "application/",
            "text/+json",
            "application+json",
        ] {
            assert!(refusal(&[(ct, not_json)]).is_some(), "{not_json}");
        }
        let missing = refusal(&[]).unwrap();
        assert!(
            missing.contains("-H 'Content-Type: application/json'"),
            "{missing}"
        );
        assert!(refusal(&[(ct, "text/plain")])
            .unwrap()
            .contains("text/plain"));
        assert!(refusal(&[(ct, "application/json; charset=latin1")])
            .unwrap()
            .contains("`latin1`"));
        for (coding, named) in [
            ("gzip", "`gzip`"),
            ("br", "`br`"),
            ("identity, deflate", "`deflate`"),
        ] {
            let message = refusal(&[(ct, "application/json"), (ce, coding)]).unwrap();
            assert!(message.contains(named), "{coding}: {message}");
        }
    }
}

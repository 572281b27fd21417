//! The gRPC rendering of [`GatewayError`]: one table from the core's [`ErrorKind`] to a
//! `tonic::Code`, and the `tonic-types` details every error carries.
//!
//! Upstream statuses map by the HTTP lines of `google/rpc/code.proto` (never grpc's
//! client-side HTTP table). Choices code.proto leaves open, and why:
//!
//! - 413 and the gateway's own size limit → OUT_OF_RANGE: tonic answers a message over its
//!   size limit with OUT_OF_RANGE, so "too big" reads the same whichever limit fired, and it
//!   sits on code.proto's 400 line (RESOURCE_EXHAUSTED is the 429 line: clients retry it).
//! - 409 → ABORTED (code.proto's 409 line; ALREADY_EXISTS describes resource creation).
//! - 415, 422 → INVALID_ARGUMENT: the request itself must change.
//! - 401, 403 from the upstream concern the gateway's key, never the caller: UNAVAILABLE.

use std::collections::HashMap;

use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::chat::{headers, Attempts, ErrorKind, GatewayError, RequestContext};

/// `ErrorInfo.domain` of every error the gateway gives.
pub const DOMAIN: &str = "megallm-gateway";

/// The one table: a core error's kind → a gRPC code.
pub fn code(error: &GatewayError) -> Code {
    match error.kind() {
        ErrorKind::InvalidArgument | ErrorKind::UnsupportedMediaType => Code::InvalidArgument,
        ErrorKind::Unauthenticated => Code::Unauthenticated,
        ErrorKind::PermissionDenied => Code::PermissionDenied,
        ErrorKind::PayloadTooLarge => Code::OutOfRange,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::Rejected(status) => code_for_upstream_http(status),
        ErrorKind::ResourceExhausted => Code::ResourceExhausted,
        // A slow upstream is not the caller's deadline: UNAVAILABLE says "retry".
        ErrorKind::Unavailable | ErrorKind::UpstreamTimeout => Code::Unavailable,
        ErrorKind::UpstreamInternal | ErrorKind::Internal => Code::Internal,
        ErrorKind::DeadlineExceeded => Code::DeadlineExceeded,
    }
}

/// An upstream HTTP status the request is blamed for, by code.proto's HTTP lines.
fn code_for_upstream_http(status: u16) -> Code {
    match status {
        400 | 415 | 422 => Code::InvalidArgument,
        401 | 403 => Code::Unavailable,
        404 => Code::NotFound,
        408 | 504 => Code::DeadlineExceeded,
        409 => Code::Aborted,
        413 => Code::OutOfRange,
        429 => Code::ResourceExhausted,
        499 => Code::Cancelled,
        501 => Code::Unimplemented,
        502 | 503 => Code::Unavailable,
        400..=499 => Code::FailedPrecondition,
        _ => Code::Internal,
    }
}

/// `ErrorInfo.reason` as error_details.proto wants it, `[A-Z][A-Z0-9_]+[A-Z0-9]`: the error's
/// stable code upper-cased (`invalid_value` → `INVALID_VALUE`).
fn reason(code: &str) -> String {
    let mut out: String = code
        .chars()
        .map(|c| match c.to_ascii_uppercase() {
            c @ ('A'..='Z' | '0'..='9') => c,
            _ => '_',
        })
        .collect();
    let trimmed = out.trim_matches('_').to_owned();
    out = if trimmed.starts_with(|c: char| c.is_ascii_alphabetic()) {
        trimmed
    } else {
        format!("E_{trimmed}")
    };
    if out.len() < 3 {
        out = format!("{out}_ERROR");
    }
    out
}

/// The `tonic::Status` for `error`: code from [`code`], the error's message, and details:
/// ErrorInfo (reason = the error's stable code, domain [`DOMAIN`]), RequestInfo (request id),
/// BadRequest naming the field where one is known, RetryInfo where a wait time is known. The
/// attempt trail goes in the status metadata.
pub fn to_status(
    error: &GatewayError,
    ctx: &RequestContext,
    attempts: Option<&Attempts>,
) -> Status {
    let code = code(error);
    let mut details = ErrorDetails::new();
    let mut info = HashMap::new();
    info.insert("http_status".to_owned(), error.http_status().to_string());
    if let Some(param) = error.param() {
        info.insert("param".to_owned(), param.to_owned());
    }
    details.set_error_info(
        reason(error.code().unwrap_or("upstream_rejected")),
        DOMAIN,
        info,
    );
    details.set_request_info(ctx.request_id.clone(), "");
    if code == Code::InvalidArgument {
        // One violation always; its field is empty when the upstream named none.
        details.add_bad_request_violation(error.param().unwrap_or(""), error.to_string());
    }
    if let Some(wait) = error.retry_after() {
        details.set_retry_info(Some(wait));
    }
    if let GatewayError::ClientLimited { client, limit, .. } = error {
        details.add_quota_failure_violation(
            format!("client:{client}:{}", limit.name()),
            error.to_string(),
        );
    }
    let mut metadata = MetadataMap::new();
    if let Some(trail) = attempts.filter(|a| !a.is_empty()) {
        set_attempts(&mut metadata, trail);
    }
    Status::with_error_details_and_metadata(code, error.to_string(), details, metadata)
}

/// Puts the attempt trail (`key-2:429,key-3:200`) in `metadata`.
pub fn set_attempts(metadata: &mut MetadataMap, attempts: &Attempts) {
    if let Ok(value) = MetadataValue::try_from(attempts.header_text()) {
        metadata.insert(headers::ATTEMPTS, value);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn table_follows_code_proto() {
        let rejected = |status| GatewayError::UpstreamRejected {
            status,
            message: "no".into(),
            error_type: None,
            param: None,
            code: None,
        };
        for (status, want) in [
            (400, Code::InvalidArgument),
            (404, Code::NotFound),
            (409, Code::Aborted),
            (413, Code::OutOfRange),
            (422, Code::InvalidArgument),
            (401, Code::Unavailable),
            (403, Code::Unavailable),
        ] {
            assert_eq!(code(&rejected(status)), want, "{status}");
        }
        assert_eq!(code(&GatewayError::Unauthenticated), Code::Unauthenticated);
        assert_eq!(
            code(&GatewayError::NoKeyAvailable {
                retry_after: None,
                why: String::new()
            }),
            Code::Unavailable
        );
        assert_eq!(
            code(&GatewayError::PayloadTooLarge { limit: 1 }),
            Code::OutOfRange
        );
    }

    #[test]
    fn details_name_the_field_and_the_wait() {
        let ctx = RequestContext::new(Some("req-1"));
        let status = to_status(&GatewayError::invalid("temperature", "too hot"), &ctx, None);
        assert_eq!(status.code(), Code::InvalidArgument);
        let bad = status.get_details_bad_request().expect("BadRequest");
        assert_eq!(bad.field_violations[0].field, "temperature");
        assert_eq!(
            status.get_details_request_info().unwrap().request_id,
            "req-1"
        );
        let info = status.get_details_error_info().unwrap();
        assert_eq!(
            (info.reason.as_str(), info.domain.as_str()),
            ("INVALID_VALUE", DOMAIN)
        );
        assert_eq!(reason("model_not_found"), "MODEL_NOT_FOUND");
        assert_eq!(reason("x"), "X_ERROR");
        assert_eq!(reason("4xx-bad"), "E_4XX_BAD");

        // An upstream 400 that names no field still carries one violation.
        let upstream = GatewayError::UpstreamRejected {
            status: 400,
            message: "bad".into(),
            error_type: None,
            param: None,
            code: None,
        };
        let bad = to_status(&upstream, &ctx, None)
            .get_details_bad_request()
            .expect("BadRequest");
        assert_eq!(bad.field_violations[0].field, "");
        let slow = GatewayError::Timeout {
            kind: crate::chat::TimeoutKind::FirstByte,
            detail: String::new(),
        };
        assert_eq!(
            code(&slow),
            Code::Unavailable,
            "a slow upstream is not the caller's deadline"
        );

        let limited = GatewayError::RateLimited {
            retry_after: Duration::from_secs(3),
            why: None,
        };
        let status = to_status(&limited, &ctx, None);
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status.get_details_retry_info().unwrap().retry_delay,
            Some(Duration::from_secs(3))
        );
        let down = GatewayError::UpstreamUnreachable {
            cause: "connection refused".into(),
            retry_after: Duration::from_secs(1),
        };
        let status = to_status(&down, &ctx, None);
        assert_eq!(status.code(), Code::Unavailable);
        assert!(status
            .message()
            .contains("upstream unreachable: connection refused"));
        assert_eq!(
            status.get_details_retry_info().unwrap().retry_delay,
            Some(Duration::from_secs(1))
        );
    }
}

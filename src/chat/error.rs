//! `GatewayError`: the one error of the core. It knows whose fault it is, whether waiting helps
//! and for how long; `http/` renders it as OpenAI JSON and `grpc/` as a `tonic::Status`, each
//! from the table in [`GatewayError::kind`].
//!
//! Why this file is longer than the rest: it is one job, the one error enum and its door-neutral
//! table (kind, status, type, code, retry-after) for every variant.

use std::time::Duration;

use bytes::Bytes;

/// Which named timeout fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeoutKind {
    /// Made by no path today (hyper's connector reports its connect timeout as a connect
    /// error, an `UpstreamUnavailable`); kept, named, for the dispatcher being reworked.
    #[allow(dead_code)]
    Connect,
    FirstByte,
    Idle,
    Total,
    /// The client's own deadline (`grpc-timeout`).
    Deadline,
    /// The client did not send its request head within `--client-header-timeout`.
    ClientHeader,
    /// The client did not send its request body within `--client-body-timeout`.
    ClientBody,
}

impl TimeoutKind {
    pub fn name(self) -> &'static str {
        match self {
            TimeoutKind::Connect => "connect",
            TimeoutKind::FirstByte => "first_byte",
            TimeoutKind::Idle => "idle",
            TimeoutKind::Total => "total",
            TimeoutKind::Deadline => "deadline",
            TimeoutKind::ClientHeader => "client_header",
            TimeoutKind::ClientBody => "client_body",
        }
    }
}

/// Which of a client's own limits (its token's line in the tokens file) refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientLimit {
    Rpm,
    Tpm,
    Concurrency,
    /// `daily_tokens=`: the day's budget is spent (`insufficient_quota`).
    DailyTokens,
}

impl ClientLimit {
    /// The attribute's name in the tokens file, also the QuotaFailure subject's suffix.
    pub fn name(self) -> &'static str {
        match self {
            ClientLimit::Rpm => "rpm",
            ClientLimit::Tpm => "tpm",
            ClientLimit::Concurrency => "max_concurrent",
            ClientLimit::DailyTokens => "daily_tokens",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The client's body or a parameter is wrong; `param` names the field.
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<String>,
        code: &'static str,
    },
    #[error("missing or invalid gateway token: send `Authorization: Bearer <token>`")]
    Unauthenticated,
    /// A client over one of its own limits; `client` is its name (or token fingerprint).
    #[error("{}", client_limited(client, *limit, *retry_after))]
    ClientLimited {
        client: String,
        limit: ClientLimit,
        retry_after: Duration,
    },
    /// The client's token does not allow this model (`models=` in the tokens file); `model`
    /// is empty for a request that names none, which a token limited to some models may not
    /// send.
    #[error("{}", if model.is_empty() {
        "this gateway token may use only the models its `models=` lists, and this request names no model".to_owned()
    } else {
        format!("this gateway token may not use the model `{model}`")
    })]
    ModelNotAllowed { model: String },
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// The body's content type, charset or content encoding is not one the gateway reads
    /// (415); the message says which and what to send instead.
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    NotFound(String),
    /// The upstream refused the request itself (400, 404, 409, 413, 415, 422): the client's
    /// fault, passed through with the upstream's status and (masked) message.
    #[error("{message}")]
    UpstreamRejected {
        status: u16,
        message: String,
        error_type: Option<String>,
        param: Option<String>,
        code: Option<String>,
    },
    /// Every key that could serve is cooling after rate limits (or paced), or the account is
    /// rate limited as a whole; `why` says which keys and until when, where known.
    #[error("{}; retry in {}s", why.as_deref().map(no_key).unwrap_or_else(|| "all upstream keys are rate limited".into()), secs_ceil(*retry_after))]
    RateLimited {
        retry_after: Duration,
        why: Option<String>,
    },
    /// No key can serve (all disabled, benched or at their limits); `why` names each class
    /// of key with counts and times (`KeyPool::no_key_summary`), never key material.
    #[error("{}{}", no_key(why), retry_hint(*retry_after))]
    NoKeyAvailable {
        retry_after: Option<Duration>,
        why: String,
    },
    /// The upstream cannot be reached (connect, DNS, TLS; or no key got an answer in time):
    /// the upstream's outage, not a key's fault. Served again as soon as a probe connects.
    #[error("upstream unreachable: {cause}; retry in {}s", secs_ceil(*retry_after))]
    UpstreamUnreachable {
        cause: String,
        retry_after: Duration,
    },
    /// The upstream failed on every attempt (5xx, connection errors, or a 2xx that was no
    /// answer: then `status` is 502, the gateway's verdict on it).
    #[error("upstream unavailable: {message}")]
    UpstreamUnavailable {
        /// The upstream's last HTTP status, if it answered at all.
        status: Option<u16>,
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("{} timeout exceeded{}", kind.name(), detail_suffix(detail))]
    Timeout { kind: TimeoutKind, detail: String },
    /// The upstream stream broke after the first byte went to the client.
    #[error("upstream stream broke: {0}")]
    StreamBroken(String),
    /// The upstream sent an `{"error": …}` event after the first byte went to the client: a
    /// break, with the upstream's (masked) message, type and code.
    #[error("the upstream sent an error event: {message}")]
    UpstreamErrorEvent {
        message: String,
        error_type: Option<String>,
        code: Option<String>,
    },
    /// The gateway is stopping and its shutdown grace is over: what an open stream ends with.
    #[error("shutting down")]
    ShuttingDown,
    #[error("internal gateway error: {0}")]
    Internal(String),
}

fn secs_ceil(d: Duration) -> u64 {
    d.as_millis().div_ceil(1000).max(1) as u64
}

fn client_limited(client: &str, limit: ClientLimit, retry_after: Duration) -> String {
    let wait = secs_ceil(retry_after);
    match limit {
        ClientLimit::Rpm => format!("rate limit reached for client {client}: requests per minute (rpm); retry in {wait}s"),
        ClientLimit::Tpm => format!("rate limit reached for client {client}: tokens per minute (tpm); retry in {wait}s"),
        ClientLimit::Concurrency => format!("rate limit reached for client {client}: too many requests in flight (max_concurrent); retry in {wait}s"),
        ClientLimit::DailyTokens => format!("client {client} has spent its daily token budget (daily_tokens); it renews in {wait}s"),
    }
}

fn no_key(why: &str) -> String {
    match why {
        "" => "no upstream key can serve this request now".to_owned(),
        why => format!("no key can serve: {why}"),
    }
}

fn retry_hint(d: Option<Duration>) -> String {
    d.map(|d| format!("; retry in {}s", secs_ceil(d)))
        .unwrap_or_default()
}

fn detail_suffix(d: &str) -> String {
    if d.is_empty() {
        String::new()
    } else {
        format!(": {d}")
    }
}

/// The door-neutral meaning of an error: each door maps this one value to its wire status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidArgument,
    Unauthenticated,
    /// The caller is known but may not do this (a model outside its token's `models=`).
    PermissionDenied,
    PayloadTooLarge,
    UnsupportedMediaType,
    NotFound,
    /// Upstream rejected the request; carries its status.
    Rejected(u16),
    ResourceExhausted,
    Unavailable,
    /// Upstream 5xx that was not "unavailable" (500, 501, …).
    UpstreamInternal,
    /// The client's deadline or the request's `total` time ran out.
    DeadlineExceeded,
    /// The upstream did not answer in time (`connect`, `first_byte`, `idle`) on every try:
    /// the upstream is slow or down, the client's own time is not up.
    UpstreamTimeout,
    Internal,
}

impl GatewayError {
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        GatewayError::InvalidRequest {
            message: message.into(),
            param: Some(param.into()),
            code: "invalid_value",
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            GatewayError::InvalidRequest { .. } => ErrorKind::InvalidArgument,
            GatewayError::Unauthenticated => ErrorKind::Unauthenticated,
            GatewayError::ModelNotAllowed { .. } => ErrorKind::PermissionDenied,
            GatewayError::ClientLimited { .. } => ErrorKind::ResourceExhausted,
            GatewayError::PayloadTooLarge { .. } => ErrorKind::PayloadTooLarge,
            GatewayError::UnsupportedMediaType(_) => ErrorKind::UnsupportedMediaType,
            GatewayError::NotFound(_) => ErrorKind::NotFound,
            GatewayError::UpstreamRejected { status, .. } => ErrorKind::Rejected(*status),
            GatewayError::RateLimited { .. } => ErrorKind::ResourceExhausted,
            GatewayError::NoKeyAvailable { .. } | GatewayError::UpstreamUnreachable { .. } => {
                ErrorKind::Unavailable
            }
            GatewayError::UpstreamUnavailable { status, .. } => match status {
                Some(500) | Some(501) => ErrorKind::UpstreamInternal,
                _ => ErrorKind::Unavailable,
            },
            GatewayError::Timeout { kind, .. } => match kind {
                TimeoutKind::Deadline
                | TimeoutKind::Total
                | TimeoutKind::ClientHeader
                | TimeoutKind::ClientBody => ErrorKind::DeadlineExceeded,
                TimeoutKind::Connect | TimeoutKind::FirstByte | TimeoutKind::Idle => {
                    ErrorKind::UpstreamTimeout
                }
            },
            GatewayError::StreamBroken(_)
            | GatewayError::UpstreamErrorEvent { .. }
            | GatewayError::ShuttingDown => ErrorKind::Unavailable,
            GatewayError::Internal(_) => ErrorKind::Internal,
        }
    }

    /// HTTP status for this error (OpenAI door).
    pub fn http_status(&self) -> u16 {
        match self.kind() {
            ErrorKind::InvalidArgument => 400,
            ErrorKind::Unauthenticated => 401,
            ErrorKind::PermissionDenied => 403,
            ErrorKind::PayloadTooLarge => 413,
            ErrorKind::UnsupportedMediaType => 415,
            ErrorKind::NotFound => 404,
            ErrorKind::Rejected(status) => status,
            ErrorKind::ResourceExhausted => 429,
            ErrorKind::Unavailable => match self {
                GatewayError::UpstreamUnavailable {
                    status: Some(s @ (502 | 503)),
                    ..
                } => *s,
                _ => 503,
            },
            ErrorKind::UpstreamInternal => 502,
            // The client was too slow sending its request, not the upstream answering: 408.
            ErrorKind::DeadlineExceeded
                if matches!(
                    self,
                    GatewayError::Timeout {
                        kind: TimeoutKind::ClientHeader | TimeoutKind::ClientBody,
                        ..
                    }
                ) =>
            {
                408
            }
            ErrorKind::DeadlineExceeded | ErrorKind::UpstreamTimeout => 504,
            ErrorKind::Internal => 500,
        }
    }

    /// OpenAI's error `type`.
    pub fn error_type(&self) -> &str {
        match self {
            GatewayError::InvalidRequest { .. }
            | GatewayError::PayloadTooLarge { .. }
            | GatewayError::UnsupportedMediaType(_)
            | GatewayError::NotFound(_) => "invalid_request_error",
            GatewayError::Unauthenticated => "authentication_error",
            GatewayError::ModelNotAllowed { .. } => "permission_error",
            // OpenAI's own types: `requests`/`tokens` for rate limits, and a spent budget.
            GatewayError::ClientLimited { limit, .. } => match limit {
                ClientLimit::Rpm | ClientLimit::Concurrency => "requests",
                ClientLimit::Tpm => "tokens",
                ClientLimit::DailyTokens => "insufficient_quota",
            },
            GatewayError::UpstreamRejected { error_type, .. } => {
                error_type.as_deref().unwrap_or("invalid_request_error")
            }
            GatewayError::RateLimited { .. } => "rate_limit_error",
            GatewayError::NoKeyAvailable { .. }
            | GatewayError::UpstreamUnavailable { .. }
            | GatewayError::UpstreamUnreachable { .. }
            | GatewayError::ShuttingDown => "service_unavailable_error",
            GatewayError::Timeout { .. } => "timeout_error",
            GatewayError::StreamBroken(_) => "upstream_error",
            GatewayError::UpstreamErrorEvent { error_type, .. } => {
                error_type.as_deref().unwrap_or("upstream_error")
            }
            GatewayError::Internal(_) => "server_error",
        }
    }

    /// OpenAI's error `code`: machine-readable, stable.
    pub fn code(&self) -> Option<&str> {
        Some(match self {
            GatewayError::InvalidRequest { code, .. } => code,
            GatewayError::Unauthenticated => "invalid_gateway_token",
            GatewayError::ModelNotAllowed { .. } => "model_not_allowed",
            GatewayError::ClientLimited { limit, .. } => match limit {
                ClientLimit::DailyTokens => "insufficient_quota",
                _ => "rate_limit_exceeded",
            },
            GatewayError::PayloadTooLarge { .. } => "payload_too_large",
            GatewayError::UnsupportedMediaType(_) => "unsupported_media_type",
            GatewayError::NotFound(_) => "not_found",
            GatewayError::UpstreamRejected { code, .. } => return code.as_deref(),
            GatewayError::RateLimited { .. } => "all_keys_rate_limited",
            GatewayError::NoKeyAvailable { .. } => "no_key_available",
            GatewayError::UpstreamUnavailable { .. } => "upstream_unavailable",
            GatewayError::UpstreamUnreachable { .. } => "upstream_unreachable",
            GatewayError::Timeout { kind, .. } => match kind {
                TimeoutKind::Connect => "connect_timeout",
                TimeoutKind::FirstByte => "first_byte_timeout",
                TimeoutKind::Idle => "idle_timeout",
                TimeoutKind::Total => "total_timeout",
                TimeoutKind::Deadline => "deadline_exceeded",
                TimeoutKind::ClientHeader => "client_header_timeout",
                TimeoutKind::ClientBody => "client_body_timeout",
            },
            GatewayError::StreamBroken(_) => "upstream_stream_broken",
            GatewayError::UpstreamErrorEvent { code, .. } => {
                code.as_deref().unwrap_or("upstream_stream_broken")
            }
            GatewayError::ShuttingDown => "shutting_down",
            GatewayError::Internal(_) => "internal_error",
        })
    }

    pub fn param(&self) -> Option<&str> {
        match self {
            GatewayError::InvalidRequest { param, .. } => param.as_deref(),
            GatewayError::UpstreamRejected { param, .. } => param.as_deref(),
            _ => None,
        }
    }

    /// How long a client should wait before retrying, where the gateway knows.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            GatewayError::RateLimited { retry_after, .. }
            | GatewayError::ClientLimited { retry_after, .. }
            | GatewayError::UpstreamUnreachable { retry_after, .. } => Some(*retry_after),
            GatewayError::NoKeyAvailable { retry_after, .. }
            | GatewayError::UpstreamUnavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// `Retry-After` header value: whole seconds, rounded up, at least 1.
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after().map(secs_ceil)
    }

    /// OpenAI's error JSON, `{"error": {"message", "type", "param", "code"}}`.
    pub fn to_openai_json(&self) -> Bytes {
        let body = serde_json::json!({
            "error": {
                "message": self.to_string(),
                "type": self.error_type(),
                "param": self.param(),
                "code": self.code(),
            }
        });
        Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
    }
}

impl GatewayError {
    /// Anthropic's error `type` for this error: the upstream's own when it gave one (an
    /// upstream rejection passed through), else the one Anthropic uses for the status.
    pub fn anthropic_type(&self) -> &str {
        if let GatewayError::UpstreamRejected {
            error_type: Some(t),
            ..
        } = self
        {
            return t;
        }
        match self.http_status() {
            400 | 415 | 405 => "invalid_request_error",
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            408 | 504 => "timeout_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            503 | 529 => "overloaded_error",
            _ => "api_error",
        }
    }

    /// Anthropic's error JSON, `{"type": "error", "error": {"type", "message"}}`.
    pub fn to_anthropic_json(&self) -> Bytes {
        let body = serde_json::json!({
            "type": "error",
            "error": {"type": self.anthropic_type(), "message": self.to_string()},
        });
        Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_table_for_both_doors() {
        let e = GatewayError::invalid("temperature", "temperature must be between 0 and 2");
        assert_eq!(e.http_status(), 400);
        assert_eq!(e.param(), Some("temperature"));
        let e = GatewayError::RateLimited {
            retry_after: Duration::from_millis(1200),
            why: None,
        };
        assert_eq!((e.http_status(), e.retry_after_secs()), (429, Some(2)));
        let e = GatewayError::UpstreamUnreachable {
            cause: "connection refused".into(),
            retry_after: Duration::from_millis(500),
        };
        assert_eq!((e.http_status(), e.retry_after_secs()), (503, Some(1)));
        assert_eq!(
            e.to_string(),
            "upstream unreachable: connection refused; retry in 1s"
        );
        let e = GatewayError::NoKeyAvailable {
            retry_after: None,
            why: "1 disabled by an operator".into(),
        };
        assert_eq!(e.to_string(), "no key can serve: 1 disabled by an operator");
        assert_eq!(e.http_status(), 503);
        let json: serde_json::Value = serde_json::from_slice(&e.to_openai_json()).unwrap();
        assert_eq!(json["error"]["code"], "no_key_available");
    }

    #[test]
    fn a_slow_client_body_is_408_and_shutdown_is_unavailable() {
        let e = GatewayError::Timeout {
            kind: TimeoutKind::ClientBody,
            detail: String::new(),
        };
        assert_eq!(
            (e.http_status(), e.kind()),
            (408, ErrorKind::DeadlineExceeded)
        );
        assert_eq!(e.code(), Some("client_body_timeout"));
        let e = GatewayError::Timeout {
            kind: TimeoutKind::Total,
            detail: String::new(),
        };
        assert_eq!(e.http_status(), 504);
        let e = GatewayError::ShuttingDown;
        assert_eq!((e.http_status(), e.kind()), (503, ErrorKind::Unavailable));
        assert_eq!(e.to_string(), "shutting down");
    }
}

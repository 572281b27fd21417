//! What a gRPC call knows besides its message, and what it leaves behind: the request context
//! (request id from the access layer, deadline from `grpc-timeout`), the gateway token check,
//! and one access-log line and one metrics sample per call, written when the call ends, however
//! it ends (a call dropped by a cancelling client logs CANCELLED).

use std::sync::Arc;
use std::time::Duration;

use tonic::metadata::MetadataMap;
use tonic::Code;

use crate::chat::{headers, Attempts, GatewayError, RequestContext};
use crate::core::{trace, Caller, Core, Door, Route, Status};

/// One gRPC call in flight.
pub struct Call {
    core: Arc<Core>,
    pub ctx: RequestContext,
    method: &'static str,
    start: std::time::Instant,
    /// Time to the response head (for streams, the first chunk is ready); the metrics
    /// histogram measures this, like the HTTP door's.
    head: Option<Duration>,
    model: Option<String>,
    attempts: Option<Attempts>,
    /// The final status; `None` until the call ends (and on drop, CANCELLED).
    code: Option<Code>,
}

impl Call {
    /// Starts a call: the context the access layer gave the request (a fresh one if the call
    /// came in some other way), with the client's `grpc-timeout` as its deadline.
    pub fn start<T>(core: &Arc<Core>, method: &'static str, request: &tonic::Request<T>) -> Call {
        let mut ctx = request
            .extensions()
            .get::<RequestContext>()
            .cloned()
            .unwrap_or_else(|| {
                RequestContext::new(
                    request
                        .metadata()
                        .get(headers::REQUEST_ID)
                        .and_then(|v| v.to_str().ok()),
                )
            });
        if let Some(timeout) = request
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| parse_timeout(v.as_bytes()))
        {
            // `checked_add`: a far-future deadline (99999999H) is no deadline, not a panic.
            ctx.deadline = tokio::time::Instant::now().checked_add(timeout);
        }
        Call {
            core: core.clone(),
            ctx,
            method,
            start: std::time::Instant::now(),
            head: None,
            model: None,
            attempts: None,
            code: None,
        }
    }

    /// The gateway token check, on the `authorization` metadata; who the caller is.
    pub fn authorize(&self, metadata: &MetadataMap) -> Result<Caller, GatewayError> {
        self.core
            .authorize(metadata.get("authorization").map(|v| v.as_bytes()))
    }

    pub fn set_model(&mut self, model: &str) {
        self.model = Some(model.to_owned());
    }

    pub fn set_attempts(&mut self, attempts: &Attempts) {
        self.attempts = Some(attempts.clone());
    }

    /// The response head is ready (unary: the whole answer).
    pub fn head_ready(&mut self) {
        self.head.get_or_insert(self.start.elapsed());
    }

    /// The call's final status; the log line is written when the call is dropped.
    pub fn finish(&mut self, code: Code) {
        self.code.get_or_insert(code);
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        let code = self.code.unwrap_or(Code::Cancelled);
        let elapsed = self.start.elapsed();
        self.core.metrics.record(
            Route::grpc(self.method),
            Status::Grpc(code as u8),
            self.head.unwrap_or(elapsed),
        );
        trace::grpc_status(&self.ctx.span, code as i32);
        let attempts = self.attempts.as_ref();
        tracing::info!(
            target: "megallm_gateway::access",
            door = Door::Grpc.name(),
            request_id = %self.ctx.request_id,
            method = self.method,
            model = self.model.as_deref().unwrap_or(""),
            key = attempts.and_then(|a| a.last_key()).unwrap_or(""),
            attempts = %attempts.map(|a| a.header_text()).unwrap_or_default(),
            code = ?code,
            grpc_status = code as i32,
            duration_ms = millis(elapsed),
            "grpc call"
        );
    }
}

/// A duration in milliseconds to the microsecond (`0.466`), as the HTTP door's log prints it.
fn millis(d: Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

/// `grpc-timeout`: at most 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`). A malformed
/// value is ignored (the call runs under the gateway's own `total` timeout).
pub fn parse_timeout(value: &[u8]) -> Option<Duration> {
    let (unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        assert_eq!(parse_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_timeout(b"2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_timeout(b"3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_timeout(b"250m"), Some(Duration::from_millis(250)));
        assert_eq!(
            parse_timeout(b"99999999u"),
            Some(Duration::from_micros(99_999_999))
        );
        assert_eq!(parse_timeout(b"5n"), Some(Duration::from_nanos(5)));
        for bad in [&b""[..], b"S", b"123456789S", b"10x", b"-1S", b"1.5S"] {
            assert_eq!(
                parse_timeout(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}

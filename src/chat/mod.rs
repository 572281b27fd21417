//! The transport-neutral core types: the validated [`ChatRequest`], the per-request
//! [`RequestContext`], the answer shapes ([`Completion`], [`ChunkStream`]), the attempt trail and
//! the one [`GatewayError`]. Nothing here knows HTTP frameworks or protobuf.

mod batch;
pub mod context;
mod error;
mod forward;
pub mod headers;
mod json;
mod request;
mod scan;
mod shape;
mod shutdown;
mod stream_usage;
mod upstream_error;

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::Stream;
use tokio::time::Instant;

pub use batch::{batches, Batches};
pub use error::{ClientLimit, ErrorKind, GatewayError, TimeoutKind};
pub use forward::{Auth, Endpoint, Events, Flavor, Forward};
pub use json::{read_json, read_json_text};
pub use request::ChatRequest;
pub use scan::{unicode_escape, UnicodeEscape};
pub use shutdown::until_shutdown;
pub use upstream_error::UpstreamErrorBody;

/// What a door knows about a request besides its body.
#[derive(Clone, Debug)]
pub struct RequestContext {
    /// Echoed to the client and put on every log line of the request.
    pub request_id: String,
    /// The client's own deadline (gRPC `grpc-timeout`); the gateway's `total` timeout applies too.
    pub deadline: Option<Instant>,
    /// The request's trace span (`trace::request_span`): `Span::none()` unless traces are
    /// exported, so a clone costs nothing then.
    pub span: tracing::Span,
}

impl RequestContext {
    /// A context with the client's request id if it is sane, else a fresh one.
    pub fn new(request_id: Option<&str>) -> Self {
        let request_id = match request_id {
            Some(id)
                if !id.is_empty()
                    && id.len() <= 128
                    && id.bytes().all(|b| b.is_ascii_graphic()) =>
            {
                id.to_owned()
            }
            _ => uuid::Uuid::new_v4().simple().to_string(),
        };
        RequestContext {
            request_id,
            deadline: None,
            span: tracing::Span::none(),
        }
    }
}

/// A whole (non-streaming) upstream answer: the 2xx body as the upstream sent it, already
/// judged (a JSON object that is no `{"error": …}`) and masked (no key material).
#[derive(Debug)]
pub struct Completion {
    pub status: u16,
    pub body: Bytes,
}

/// The data of each upstream SSE event, in order, as it arrives, masked (no key material);
/// `[DONE]` ends the stream cleanly, and a broken upstream or an `{"error": …}` event ends it
/// with one `Err` after the chunks already sent.
pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<Bytes, GatewayError>> + Send>>;

/// One upstream try: which key, and what came of it.
#[derive(Clone, Debug)]
pub struct Attempt {
    pub key_id: Arc<str>,
    pub outcome: AttemptOutcome,
}

/// What came of one upstream try: the status the upstream answered, or why there was none to
/// go by. [`AttemptOutcome::name`] is the one spelling of each named outcome, as
/// `x-gateway-attempts` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// The upstream's status: a 2xx that passed judgment, or the non-2xx it refused with.
    Status(u16),
    /// No connection to the upstream (connect, DNS or TLS failure).
    Connect,
    /// The request failed after connecting, or reading a whole answer failed.
    Error,
    /// A stream broke (or grew past the parser's limit) before its first event was complete.
    Broken,
    /// No response head, or no first event, before the `first_byte` timeout.
    Timeout,
    /// A 2xx that is no answer (not a JSON object, `{"error": …}`, an error as first event).
    Invalid,
}

impl AttemptOutcome {
    /// The name of an outcome that is no status; `None` for [`AttemptOutcome::Status`].
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            AttemptOutcome::Status(_) => return None,
            AttemptOutcome::Connect => "connect",
            AttemptOutcome::Error => "error",
            AttemptOutcome::Broken => "broken",
            AttemptOutcome::Timeout => "timeout",
            AttemptOutcome::Invalid => "invalid",
        })
    }
}

/// The status (`429`) or the outcome's name (`timeout`).
impl fmt::Display for AttemptOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let AttemptOutcome::Status(status) = self {
            return write!(f, "{status}");
        }
        f.write_str(self.name().unwrap_or_default())
    }
}

/// Every try of one request, rendered as `key-2:429,key-3:200` in `x-gateway-attempts`.
#[derive(Clone, Debug, Default)]
pub struct Attempts(pub Vec<Attempt>);

impl Attempts {
    pub fn push(&mut self, key_id: &Arc<str>, outcome: AttemptOutcome) {
        self.0.push(Attempt {
            key_id: key_id.clone(),
            outcome,
        });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The key of the last try, which served the request if it succeeded.
    pub fn last_key(&self) -> Option<&str> {
        self.0.last().map(|a| &*a.key_id)
    }

    /// The trail as header text, put together without the formatting machinery: it is on
    /// every answer.
    pub fn header_text(&self) -> String {
        let mut out = String::with_capacity(self.0.len() * 16);
        let mut digits = itoa::Buffer::new();
        for (i, a) in self.0.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&a.key_id);
            out.push(':');
            out.push_str(match a.outcome {
                AttemptOutcome::Status(status) => digits.format(status),
                other => other.name().unwrap_or_default(),
            });
        }
        out
    }
}

impl fmt::Display for Attempts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.header_text())
    }
}

/// A dispatch result with the trail of attempts that led to it, success or not.
pub struct Dispatched<T> {
    pub result: Result<T, GatewayError>,
    pub attempts: Attempts,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_attempts_header_text() {
        let (one, two): (Arc<str>, Arc<str>) = ("key-1".into(), "key-2".into());
        let mut attempts = Attempts::default();
        attempts.push(&one, AttemptOutcome::Status(429));
        attempts.push(&two, AttemptOutcome::Status(200));
        assert_eq!(attempts.to_string(), "key-1:429,key-2:200");
        let named = [
            (AttemptOutcome::Connect, "connect"),
            (AttemptOutcome::Error, "error"),
            (AttemptOutcome::Broken, "broken"),
            (AttemptOutcome::Timeout, "timeout"),
            (AttemptOutcome::Invalid, "invalid"),
        ];
        for (outcome, text) in named {
            let mut attempts = Attempts::default();
            attempts.push(&one, outcome);
            assert_eq!(attempts.to_string(), format!("key-1:{text}"));
        }
    }
}

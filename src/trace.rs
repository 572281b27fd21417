//! Trace spans, for the OpenTelemetry export behind `--otlp-endpoint` ([`crate::telemetry`]):
//! one server span per request (continuing the client's W3C `traceparent`) and one client span
//! per upstream attempt (whose context goes upstream as `traceparent`), with the GenAI
//! semantic conventions' attributes.
//!
//! Off by default, and then free: every span here is `Span::none()` unless the export is on
//! ([`enabled`]), so no span is built, no field recorded, no answer parsed. On, the spans go
//! to the OTLP layer only (target [`TARGET`]; the log layer filters them out).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use http::{HeaderMap, HeaderValue};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use serde::Deserialize;
use tokio::time::Instant;
use tracing::field::Empty;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::chat::{Attempt, ChunkStream, GatewayError};
use crate::metrics::{Metrics, Route};

// Integers are recorded as `i64`: the OTLP layer sends a `u64` as a string.

/// The target of every span here: the OTLP layer takes exactly these, the log layer none.
pub const TARGET: &str = "megallm_gateway::otel";

/// Set once the OTLP layer is installed; until then spans are `Span::none()`.
static ENABLED: AtomicBool = AtomicBool::new(false);

pub(crate) fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// Whether spans are made: the OTLP export is on.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// A request's server span: named `{method} {route}` (HTTP) or by the gRPC method, child of
/// the client's `traceparent` when it sent one.
pub fn request_span(route: Route, method: &str, request_id: &str, headers: &HeaderMap) -> Span {
    if !enabled() {
        return Span::none();
    }
    let name = match route.door() {
        crate::metrics::Door::Http => format!("{method} {}", route.name()),
        crate::metrics::Door::Grpc => route.name().trim_start_matches('/').to_owned(),
    };
    let span = tracing::info_span!(
        target: TARGET,
        "request",
        otel.name = name,
        otel.kind = "server",
        otel.status_code = Empty,
        request_id,
        http.request.method = method,
        http.route = route.name(),
        http.response.status_code = Empty,
        rpc.grpc.status_code = Empty,
        gen_ai.operation.name = Empty,
        gen_ai.provider.name = Empty,
        gen_ai.request.model = Empty,
        gen_ai.response.model = Empty,
        gen_ai.usage.input_tokens = Empty,
        gen_ai.usage.output_tokens = Empty,
        gen_ai.response.time_to_first_chunk = Empty,
        gateway.attempts = Empty,
    );
    let parent = TraceContextPropagator::new().extract(&Headers(headers));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
    span
}

/// The request's HTTP status (`error` for a 5xx, as the HTTP conventions have it).
pub fn http_status(span: &Span, status: u16) {
    if span.is_disabled() {
        return;
    }
    span.record("http.response.status_code", i64::from(status));
    if status >= 500 {
        span.record("otel.status_code", "error");
    }
}

/// The call's gRPC code (`error` for the codes a server is to blame for).
pub fn grpc_status(span: &Span, code: i32) {
    if span.is_disabled() {
        return;
    }
    span.record("rpc.grpc.status_code", code);
    // UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS.
    if matches!(code, 2 | 4 | 12 | 13 | 14 | 15) {
        span.record("otel.status_code", "error");
    }
}

/// A chat request reached the dispatcher.
pub fn chat_requested(span: &Span, model: &str) {
    if span.is_disabled() {
        return;
    }
    span.record("otel.name", format!("chat {model}"));
    span.record("gen_ai.operation.name", "chat");
    span.record("gen_ai.provider.name", "openai");
    span.record("gen_ai.request.model", model);
}

/// One upstream attempt's client span, child of the request's.
pub fn attempt_span(request: &Span, key: &str, model: &str, number: usize) -> Span {
    if request.is_disabled() {
        return Span::none();
    }
    tracing::info_span!(
        target: TARGET,
        parent: request,
        "attempt",
        otel.name = format!("chat {model}"),
        otel.kind = "client",
        otel.status_code = Empty,
        gen_ai.operation.name = "chat",
        gen_ai.provider.name = "openai",
        gen_ai.request.model = model,
        gateway.key = key,
        gateway.attempt = number as i64,
        gateway.attempt.outcome = Empty,
        http.response.status_code = Empty,
    )
}

/// An attempt is over: its outcome, as `x-gateway-attempts` names it.
pub fn attempt_done(span: &Span, last: Option<&Attempt>, won: bool) {
    if span.is_disabled() {
        return;
    }
    if let Some(attempt) = last {
        span.record("gateway.attempt.outcome", attempt.outcome.to_string());
        if let crate::chat::AttemptOutcome::Status(status) = attempt.outcome {
            span.record("http.response.status_code", i64::from(status));
        }
    }
    if !won {
        span.record("otel.status_code", "error");
    }
}

/// The attempts a request made, once they are over.
pub fn attempts_done(span: &Span, n: usize) {
    if !span.is_disabled() {
        span.record("gateway.attempts", n as i64);
    }
}

/// The `traceparent` to send upstream: the current span's (the attempt's) context. `None`
/// with the export off.
pub fn traceparent() -> Option<HeaderValue> {
    if !enabled() {
        return None;
    }
    let span = Span::current();
    if span.is_disabled() {
        return None;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if !sc.is_valid() {
        return None;
    }
    let value = format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    );
    HeaderValue::from_str(&value).ok()
}

/// A whole answer's model, token counts and finish reasons, on the request span.
pub fn completion(span: &Span, body: &[u8]) {
    if span.is_disabled() {
        return;
    }
    let mut facts = Facts::default();
    facts.take(body);
    facts.record(span);
}

/// What a span learns from the answer's JSON (a whole answer, or each chunk of a stream).
#[derive(Default)]
struct Facts {
    model: Option<String>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    finish_reasons: Vec<String>,
}

#[derive(Deserialize)]
struct Answer {
    model: Option<String>,
    #[serde(default)]
    choices: Vec<Choice>,
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Choice {
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Usage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
}

impl Facts {
    fn take(&mut self, json: &[u8]) {
        let Ok(answer) = serde_json::from_slice::<Answer>(json) else {
            return;
        };
        if self.model.is_none() {
            self.model = answer.model;
        }
        self.finish_reasons
            .extend(answer.choices.into_iter().filter_map(|c| c.finish_reason));
        if let Some(usage) = answer.usage {
            self.input_tokens = usage.prompt_tokens.or(self.input_tokens);
            self.output_tokens = usage.completion_tokens.or(self.output_tokens);
        }
    }

    fn record(self, span: &Span) {
        if let Some(model) = &self.model {
            span.record("gen_ai.response.model", model.as_str());
        }
        if let Some(n) = self.input_tokens {
            span.record("gen_ai.usage.input_tokens", n as i64);
        }
        if let Some(n) = self.output_tokens {
            span.record("gen_ai.usage.output_tokens", n as i64);
        }
        if !self.finish_reasons.is_empty() {
            let reasons: Vec<opentelemetry::StringValue> =
                self.finish_reasons.into_iter().map(Into::into).collect();
            span.set_attribute(
                "gen_ai.response.finish_reasons",
                opentelemetry::Value::Array(reasons.into()),
            );
        }
    }
}

/// A stream as the metrics and the request span see it: its first chunk is ready now (time
/// to first token), and when it ends or is dropped, its duration. With the export on, each
/// chunk's model, finish reason and usage go on the request span at the end.
pub fn observe_stream(
    chunks: ChunkStream,
    metrics: Arc<Metrics>,
    span: &Span,
    started: Instant,
) -> ChunkStream {
    let first = started.elapsed();
    metrics.first_token(first);
    let facts = (!span.is_disabled()).then(|| {
        span.record("gen_ai.response.time_to_first_chunk", secs(first));
        Box::<Facts>::default()
    });
    Box::pin(Observed {
        chunks,
        metrics,
        span: span.clone(),
        started,
        facts,
    })
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

struct Observed {
    chunks: ChunkStream,
    metrics: Arc<Metrics>,
    /// Held so the request span lasts as long as its stream.
    span: Span,
    started: Instant,
    /// `Some` only with the export on.
    facts: Option<Box<Facts>>,
}

impl Stream for Observed {
    type Item = Result<Bytes, GatewayError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let next = self.chunks.as_mut().poll_next(cx);
        if let (Poll::Ready(Some(Ok(chunk))), Some(facts)) = (&next, self.facts.as_mut()) {
            facts.take(chunk);
        }
        next
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        self.metrics.stream_ended(self.started.elapsed());
        if let Some(facts) = self.facts.take() {
            facts.record(&self.span);
        }
    }
}

/// A header map as the propagator reads it.
struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

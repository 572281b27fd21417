//! The attempt loop: borrow a key, call the upstream, let [`classify`] judge the answer, and
//! retry on another key while nothing has reached the client. Streams are held back until
//! their first event is complete, so a stream that dies before its first byte is retried too;
//! after that, the stream is the client's and a break ends it with an error.
//!
//! Doors get only what [`verdict`] passed and the key pool masked: a [`Completion`] whose body
//! is a JSON object that is no error, and chunks whose bytes hold no key material. A 2xx that
//! is no answer (HTML, empty, not an object, `{"error": …}`, a stream whose first event is an
//! error) is the key's transient failure, retried like a 5xx; a later error event is a break.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::time::{timeout_at, Instant};
use tokio_util::sync::CancellationToken;

use http_body_util::BodyExt;

use super::client::{Response, UpstreamClient};
use super::sse::SseParser;
use super::unstreamed;
use super::verdict::{self, Bad, UpstreamErrorBody};
use crate::chat::{
    Attempts, ChatRequest, ChunkStream, Completion, Dispatched, GatewayError, RequestContext,
    TimeoutKind,
};
use crate::config::{SchedulerSettings, Timeouts};
use crate::keys::{classify, KeyLease, KeyPool, NoKey, Outcome};

/// Upstream error bodies are read up to this size: enough for any error JSON, bounded so a
/// misbehaving upstream cannot make the gateway buffer without limit.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

pub struct Dispatcher {
    pool: Arc<KeyPool>,
    client: UpstreamClient,
    max_attempts: u32,
    timeouts: Timeouts,
    queue_timeout: Duration,
    /// Cancelled when the shutdown grace is over: open streams then end with `ShuttingDown`.
    shutdown: CancellationToken,
}

/// What a successful attempt hands back.
enum Won {
    Body(Completion),
    Stream(ChunkStream),
}

/// Why one attempt failed, and whether the loop should go on.
enum Failed {
    /// Try another key; `error` is what the client gets if no try succeeds.
    Retry(GatewayError),
    /// Give this to the client now.
    Final(GatewayError),
}

type ByteStream = std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, hyper::Error>> + Send>>;

impl Dispatcher {
    pub fn new(
        pool: Arc<KeyPool>,
        client: UpstreamClient,
        max_attempts: u32,
        timeouts: Timeouts,
        scheduler: &SchedulerSettings,
    ) -> Self {
        Dispatcher {
            pool,
            client,
            max_attempts: max_attempts.max(1),
            timeouts,
            queue_timeout: scheduler.queue_timeout,
            shutdown: CancellationToken::new(),
        }
    }

    /// Streams handed out end with [`GatewayError::ShuttingDown`] once `shutdown` is cancelled.
    pub fn with_shutdown(mut self, shutdown: CancellationToken) -> Self {
        self.shutdown = shutdown;
        self
    }

    pub fn pool(&self) -> &Arc<KeyPool> {
        &self.pool
    }

    /// A whole (non-streaming) completion.
    pub async fn complete(
        &self,
        req: &ChatRequest,
        ctx: &RequestContext,
    ) -> Dispatched<Completion> {
        let (result, attempts) = self.run(req, ctx, false).await;
        Dispatched {
            result: result.map(|won| match won {
                Won::Body(body) => body,
                Won::Stream(_) => unreachable!("non-streaming attempt returned a stream"),
            }),
            attempts,
        }
    }

    /// A streaming completion: the chunk stream starts with the first upstream event.
    pub async fn stream(&self, req: &ChatRequest, ctx: &RequestContext) -> Dispatched<ChunkStream> {
        let (result, attempts) = self.run(req, ctx, true).await;
        Dispatched {
            result: result.map(|won| match won {
                Won::Stream(stream) => crate::chat::until_shutdown(stream, self.shutdown.clone()),
                Won::Body(_) => unreachable!("streaming attempt returned a body"),
            }),
            attempts,
        }
    }

    async fn run(
        &self,
        req: &ChatRequest,
        ctx: &RequestContext,
        stream: bool,
    ) -> (Result<Won, GatewayError>, Attempts) {
        let start = Instant::now();
        let total = start + self.timeouts.total;
        let (deadline, deadline_kind) = match ctx.deadline {
            Some(d) if d < total => (d, TimeoutKind::Deadline),
            _ => (total, TimeoutKind::Total),
        };
        let mut attempts = Attempts::default();
        let mut tried: Vec<Arc<str>> = Vec::new();
        let mut last_error: Option<GatewayError> = None;
        for _ in 0..self.max_attempts {
            let queue_until = (Instant::now() + self.queue_timeout).min(deadline);
            let lease = match self.pool.acquire_wait(&tried, queue_until).await {
                Ok(lease) => lease,
                Err(_) if Instant::now() >= deadline => {
                    return (
                        Err(timeout(deadline_kind, "waiting for a usable key")),
                        attempts,
                    );
                }
                Err(no_key) => {
                    // The pool's own state says more than the last failure: when every key
                    // is cooling, the client learns when to come back.
                    let error = match no_key {
                        NoKey::AllRateLimited { retry_after } => {
                            GatewayError::RateLimited { retry_after }
                        }
                        NoKey::Unavailable { retry_after } => {
                            GatewayError::NoKeyAvailable { retry_after }
                        }
                    };
                    return (Err(error), attempts);
                }
            };
            if Instant::now() >= deadline {
                return (
                    Err(timeout(deadline_kind, "waiting for a usable key")),
                    attempts,
                );
            }
            tried.push(lease.id().clone());
            let first_byte_at = (Instant::now() + self.timeouts.first_byte).min(deadline);
            let result = self
                .attempt(
                    req,
                    ctx,
                    lease,
                    &mut attempts,
                    stream,
                    first_byte_at,
                    deadline,
                    deadline_kind,
                )
                .await;
            match result {
                Ok(won) => return (Ok(won), attempts),
                Err(Failed::Final(error)) => return (Err(error), attempts),
                Err(Failed::Retry(error)) => {
                    if Instant::now() >= deadline {
                        return (Err(timeout(deadline_kind, "")), attempts);
                    }
                    last_error = Some(error);
                }
            }
        }
        let error =
            last_error.unwrap_or_else(|| GatewayError::Internal("no attempt was made".into()));
        (Err(error), attempts)
    }

    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        req: &ChatRequest,
        ctx: &RequestContext,
        mut lease: KeyLease,
        attempts: &mut Attempts,
        stream: bool,
        first_byte_at: Instant,
        deadline: Instant,
        deadline_kind: TimeoutKind,
    ) -> Result<Won, Failed> {
        let key_id = lease.id().clone();
        let sent = timeout_at(
            first_byte_at,
            self.client
                .chat(lease.secret(), req.body().clone(), &ctx.request_id),
        )
        .await;
        let response = match sent {
            Err(_) => {
                return Err(self.timed_out(
                    &mut lease,
                    attempts,
                    first_byte_at,
                    deadline,
                    deadline_kind,
                ))
            }
            Ok(Err(e)) => {
                let label = if e.is_connect() { "connect" } else { "error" };
                tracing::debug!(key = %key_id, error = %describe(&e), "upstream request failed");
                return Err(transient(attempts, &mut lease, label, None, &describe(&e)));
            }
            Ok(Ok(response)) => response,
        };
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            let headers = response.headers().clone();
            let body = read_limited(response, first_byte_at, ERROR_BODY_LIMIT).await;
            attempts.push(&key_id, status.to_string());
            let outcome = classify(status, &headers, &body);
            let detail = UpstreamErrorBody::parse(&body);
            lease.report(outcome, Some(status), &detail.message);
            return Err(failure(outcome, status, detail, &lease));
        }
        // A whole JSON answer: what was asked for, or what an upstream that ignores `stream`
        // sends instead (recast as chunks, the key not blamed).
        if !stream || is_json(&response) {
            let body = match timeout_at(deadline, response.into_body().collect()).await {
                Ok(Ok(collected)) => collected.to_bytes(),
                Ok(Err(e)) => {
                    let message = format!("reading the upstream answer failed: {}", describe(&e));
                    return Err(transient(
                        attempts,
                        &mut lease,
                        "error",
                        Some(status),
                        &message,
                    ));
                }
                Err(_) => {
                    return Err(Failed::Final(timeout(
                        deadline_kind,
                        "reading the upstream answer",
                    )))
                }
            };
            if let Err(bad) = verdict::check_body(&body) {
                return Err(bad_answer(attempts, &mut lease, status, bad));
            }
            attempts.push(&key_id, status.to_string());
            lease.report(Outcome::Success, Some(status), "");
            let body = lease.mask_content(&body);
            if !stream {
                return Ok(Won::Body(Completion { status, body }));
            }
            let events = unstreamed::completion_to_chunks(&body);
            return Ok(Won::Stream(Box::pin(futures_util::stream::iter(
                events.into_iter().map(Ok),
            ))));
        }
        // Streaming: hold the answer back until its first event is complete.
        let mut body: ByteStream = Box::pin(response.into_body().into_data_stream());
        let mut parser = SseParser::new();
        let first = loop {
            if let Some(event) = parser.next_event() {
                break event;
            }
            let message = match timeout_at(first_byte_at, body.next()).await {
                Ok(Some(Ok(bytes))) if !parser.overflowed() => {
                    parser.push(&bytes);
                    continue;
                }
                Ok(Some(Ok(_))) => "the upstream sent an event larger than 16 MiB".to_owned(),
                Ok(Some(Err(e))) => format!(
                    "the upstream stream broke before its first event: {}",
                    describe(&e)
                ),
                Ok(None) => "the upstream stream ended before its first event".to_owned(),
                Err(_) => {
                    return Err(self.timed_out(
                        &mut lease,
                        attempts,
                        first_byte_at,
                        deadline,
                        deadline_kind,
                    ))
                }
            };
            return Err(transient(
                attempts,
                &mut lease,
                "broken",
                Some(status),
                &message,
            ));
        };
        // An error as the first event: nothing reached the client, so another key may serve.
        if let Some(error) = verdict::error_event(&first) {
            return Err(bad_answer(attempts, &mut lease, status, Bad::Error(error)));
        }
        attempts.push(&key_id, status.to_string());
        lease.report(Outcome::Success, Some(status), "");
        let first = lease.mask_content(&first);
        let done = is_done(&first);
        let state = StreamState {
            body,
            parser,
            first: (!done).then_some(first),
            done,
            lease: Some(lease),
            idle: self.timeouts.idle,
            deadline,
            deadline_kind,
            pool: self.pool.clone(),
        };
        Ok(Won::Stream(Box::pin(futures_util::stream::unfold(
            state,
            StreamState::next,
        ))))
    }

    fn timed_out(
        &self,
        lease: &mut KeyLease,
        attempts: &mut Attempts,
        first_byte_at: Instant,
        deadline: Instant,
        deadline_kind: TimeoutKind,
    ) -> Failed {
        attempts.push(lease.id(), "timeout");
        if first_byte_at >= deadline {
            // The request's own time is up: no key is to blame, and no retry can help.
            return Failed::Final(timeout(deadline_kind, "waiting for the upstream"));
        }
        lease.report(
            Outcome::Transient,
            None,
            "no response before the first_byte timeout",
        );
        Failed::Retry(timeout(
            TimeoutKind::FirstByte,
            "the upstream did not answer in time",
        ))
    }
}

/// A failure before the first byte that says nothing about the request: it counts against the
/// key (toward its breaker), and the request goes on to another key.
fn transient(
    attempts: &mut Attempts,
    lease: &mut KeyLease,
    label: &str,
    status: Option<u16>,
    message: &str,
) -> Failed {
    attempts.push(lease.id(), label);
    lease.report(Outcome::Transient, status, message);
    Failed::Retry(GatewayError::UpstreamUnavailable {
        status: None,
        message: lease.mask(message),
        retry_after: None,
    })
}

/// A 2xx that is no answer: the upstream (or a proxy before it) failed, not the request. It
/// counts against the key like a 5xx, and the client gets a 502 if no other try succeeds.
fn bad_answer(attempts: &mut Attempts, lease: &mut KeyLease, status: u16, bad: Bad) -> Failed {
    let message = bad.describe(status);
    tracing::debug!(key = %lease.id(), error = %lease.mask(&message), "the upstream's 2xx is no answer");
    attempts.push(lease.id(), "invalid");
    lease.report(Outcome::Transient, Some(status), &message);
    Failed::Retry(GatewayError::UpstreamUnavailable {
        status: Some(502),
        message: lease.mask(&message),
        retry_after: None,
    })
}

/// What a non-2xx answer means for the request; every upstream text is masked first.
fn failure(outcome: Outcome, status: u16, detail: UpstreamErrorBody, lease: &KeyLease) -> Failed {
    let key_id = lease.id();
    let message = lease.mask(&detail.message);
    let mask = |field: Option<String>| field.map(|f| lease.mask(&f));
    match outcome {
        Outcome::CallerFault | Outcome::Success => Failed::Final(GatewayError::UpstreamRejected {
            status,
            message,
            error_type: mask(detail.error_type),
            param: mask(detail.param),
            code: mask(detail.code),
        }),
        Outcome::RateLimited { reset } => Failed::Retry(GatewayError::RateLimited {
            retry_after: reset.unwrap_or(Duration::from_secs(1)),
        }),
        Outcome::QuotaExhausted | Outcome::InvalidCredential => {
            Failed::Retry(GatewayError::UpstreamUnavailable {
                status: None,
                message: format!("the upstream refused the gateway's key {key_id} ({status})"),
                retry_after: None,
            })
        }
        Outcome::Transient => Failed::Retry(GatewayError::UpstreamUnavailable {
            status: Some(status),
            message: format!("{status} from the upstream: {message}"),
            retry_after: None,
        }),
    }
}

/// Whether a 2xx answer is one JSON document rather than an event stream.
fn is_json(response: &Response) -> bool {
    response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/json")
        })
}

/// OpenAI's end-of-stream sentinel (tolerating stray whitespace around it).
fn is_done(data: &[u8]) -> bool {
    data.trim_ascii() == b"[DONE]"
}

fn timeout(kind: TimeoutKind, detail: &str) -> GatewayError {
    GatewayError::Timeout {
        kind,
        detail: detail.to_owned(),
    }
}

/// An error's chain as one line (a client error's top-level message alone says little).
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

async fn read_limited(response: Response, until: Instant, limit: usize) -> Bytes {
    let mut body = response.into_body().into_data_stream();
    let mut out = Vec::new();
    let _ = timeout_at(until, async {
        while let Some(Ok(chunk)) = body.next().await {
            let room = limit - out.len();
            out.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if out.len() >= limit {
                break;
            }
        }
    })
    .await;
    Bytes::from(out)
}

/// The live half of a stream: upstream bytes in, one event's data out per poll.
struct StreamState {
    body: ByteStream,
    parser: SseParser,
    first: Option<Bytes>,
    done: bool,
    /// Held for the stream's life so the key's in-flight count covers it.
    lease: Option<KeyLease>,
    idle: Duration,
    deadline: Instant,
    deadline_kind: TimeoutKind,
    pool: Arc<KeyPool>,
}

impl StreamState {
    fn mask(&self, text: &str) -> String {
        match &self.lease {
            Some(lease) => lease.mask(text),
            None => self.pool.mask(text),
        }
    }

    fn mask_content(&self, bytes: &Bytes) -> Bytes {
        match &self.lease {
            Some(lease) => lease.mask_content(bytes),
            None => self.pool.mask_content(bytes),
        }
    }

    /// An error event after the first byte: the stream ends here, as a break.
    fn error_event(&self, error: UpstreamErrorBody) -> GatewayError {
        let mask = |field: Option<String>| field.map(|f| self.mask(&f));
        GatewayError::UpstreamErrorEvent {
            message: self.mask(&error.message),
            error_type: mask(error.error_type),
            code: mask(error.code),
        }
    }

    async fn next(mut self) -> Option<(Result<Bytes, GatewayError>, StreamState)> {
        if self.done {
            return None;
        }
        if let Some(first) = self.first.take() {
            return Some((Ok(first), self));
        }
        loop {
            if let Some(event) = self.parser.next_event() {
                if is_done(&event) {
                    self.done = true;
                    return None;
                }
                if let Some(error) = verdict::error_event(&event) {
                    let error = self.error_event(error);
                    return Some((Err(self.broken(error)), self));
                }
                let event = self.mask_content(&event);
                return Some((Ok(event), self));
            }
            let idle_at = (Instant::now() + self.idle).min(self.deadline);
            let error = match timeout_at(idle_at, self.body.next()).await {
                Ok(Some(Ok(bytes))) if !self.parser.overflowed() => {
                    self.parser.push(&bytes);
                    continue;
                }
                Ok(Some(Ok(_))) => GatewayError::StreamBroken(
                    "the upstream sent an event larger than 16 MiB".into(),
                ),
                Ok(Some(Err(e))) => GatewayError::StreamBroken(self.mask(&describe(&e))),
                Ok(None) => GatewayError::StreamBroken(
                    "the upstream closed the stream before [DONE]".into(),
                ),
                Err(_) if idle_at >= self.deadline => {
                    timeout(self.deadline_kind, "the stream ran past the request's time")
                }
                Err(_) => timeout(
                    TimeoutKind::Idle,
                    "no upstream event within the idle timeout",
                ),
            };
            return Some((Err(self.broken(error)), self));
        }
    }

    /// Ends the stream with `error`, recorded on the key as a break.
    fn broken(&mut self, error: GatewayError) -> GatewayError {
        self.done = true;
        if let Some(lease) = &self.lease {
            lease.stream_broken(&error.to_string());
        }
        error
    }
}

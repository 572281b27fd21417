//! What the mock answers: [`Reply`] (status, headers, body, delays, stream shape, faults) and
//! [`Gate`] (a test-controlled hold on a stream).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::watch;

/// Unix time the mock puts in `created` fields, so its bodies are reproducible.
pub const CREATED: u64 = 1_700_000_000;

/// A one-way gate a test opens to let a held stream go on (see [`Reply::hold_after`]).
/// Waiting on an already open gate returns at once, so no wake-up is ever lost.
#[derive(Clone, Debug)]
pub struct Gate {
    tx: Arc<watch::Sender<bool>>,
}

impl Default for Gate {
    fn default() -> Self {
        Self::new()
    }
}

impl Gate {
    pub fn new() -> Self {
        Gate {
            tx: Arc::new(watch::channel(false).0),
        }
    }
    /// Opens the gate for every present and future waiter.
    pub fn open(&self) {
        self.tx.send_replace(true);
    }
    pub async fn wait(&self) {
        let mut rx = self.tx.subscribe();
        let _ = rx.wait_for(|open| *open).await;
    }
}

/// What the mock answers to one request. Built with [`Reply::ok`], [`Reply::status`],
/// [`Reply::error`], [`Reply::rate_limited`] and the builder methods.
#[derive(Clone, Debug)]
pub struct Reply {
    /// HTTP status. A non-2xx status answers `headers` + `body` and nothing else.
    pub status: u16,
    /// Extra response headers (e.g. `Retry-After`).
    pub headers: Vec<(String, String)>,
    /// Raw body. `None`: the normal OpenAI answer for 2xx, an OpenAI error body otherwise.
    pub body: Option<String>,
    /// Hang this long before sending the response headers.
    pub delay: Duration,
    /// Number of `chat.completion.chunk` events in a streamed answer (default 3).
    pub chunks: usize,
    /// Pause before every chunk after the first.
    pub chunk_pause: Duration,
    /// `(n, d)`: pause `d` after chunk number `n` (1-based count of chunks sent), before the next.
    pub pause_after: Option<(usize, Duration)>,
    /// `(n, gate)`: after `n` chunks, wait until `gate` is opened before sending the next.
    pub hold_after: Option<(usize, Gate)>,
    /// After `n` chunks, abort the connection (error from the body stream): no more chunks and
    /// no `[DONE]`.
    pub break_after: Option<usize>,
    /// Send `data: [DONE]` after the last chunk (default true).
    pub done: bool,
    /// SSE lines end in `\r\n` instead of `\n`.
    pub crlf: bool,
    /// A `: keep-alive` comment event before every event, and a comment line inside it.
    pub comments: bool,
    /// Every event goes out in three writes, 10 ms apart, cut inside a multi-byte UTF-8
    /// character and inside the blank line that ends the event: the gateway's SSE parser must
    /// put events together across reads.
    pub split: bool,
    /// Answer a streaming request with the whole JSON completion, as an upstream that ignores
    /// `stream` does.
    pub unstreamed: bool,
    /// A streamed answer's events, verbatim (each one's `data`), instead of the generated
    /// chunks: for error events, malformed events, events that quote the key.
    pub events: Option<Vec<String>>,
    /// The `Content-Type` of the answer instead of the usual one (`text/html` for a proxy's
    /// error page).
    pub content_type: Option<String>,
}

impl Reply {
    /// 200 with the normal OpenAI answer.
    pub fn ok() -> Self {
        Reply {
            status: 200,
            headers: Vec::new(),
            body: None,
            delay: Duration::ZERO,
            chunks: 3,
            chunk_pause: Duration::ZERO,
            pause_after: None,
            hold_after: None,
            break_after: None,
            done: true,
            crlf: false,
            comments: false,
            split: false,
            unstreamed: false,
            events: None,
            content_type: None,
        }
    }
    /// `status` with an OpenAI error body (`"mock error <status>"`) unless [`Reply::body`] is set.
    pub fn status(status: u16) -> Self {
        Reply {
            status,
            ..Reply::ok()
        }
    }
    /// `status` with an OpenAI error body carrying `message`.
    pub fn error(status: u16, message: &str) -> Self {
        Reply::status(status).body(error_body(status, message).to_string())
    }
    /// 429 with `Retry-After: <secs>`.
    pub fn rate_limited(secs: u64) -> Self {
        Reply::error(429, "Rate limit reached (mock)").header("retry-after", &secs.to_string())
    }
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
    pub fn body(mut self, body: impl Into<String>) -> Self {
        self.body = Some(body.into());
        self
    }
    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
    pub fn chunks(mut self, n: usize) -> Self {
        self.chunks = n;
        self
    }
    pub fn chunk_pause(mut self, d: Duration) -> Self {
        self.chunk_pause = d;
        self
    }
    pub fn pause_after(mut self, n: usize, d: Duration) -> Self {
        self.pause_after = Some((n, d));
        self
    }
    pub fn hold_after(mut self, n: usize, gate: &Gate) -> Self {
        self.hold_after = Some((n, gate.clone()));
        self
    }
    pub fn break_after(mut self, n: usize) -> Self {
        self.break_after = Some(n);
        self
    }
    pub fn without_done(mut self) -> Self {
        self.done = false;
        self
    }
    pub fn crlf(mut self) -> Self {
        self.crlf = true;
        self
    }
    pub fn with_comments(mut self) -> Self {
        self.comments = true;
        self
    }
    pub fn split_events(mut self) -> Self {
        self.split = true;
        self
    }
    pub fn unstreamed(mut self) -> Self {
        self.unstreamed = true;
        self
    }
    /// Stream exactly these events' data (then `[DONE]` unless [`Reply::without_done`]).
    pub fn events<S: Into<String>>(mut self, events: impl IntoIterator<Item = S>) -> Self {
        let events: Vec<String> = events.into_iter().map(Into::into).collect();
        self.chunks = events.len();
        self.events = Some(events);
        self
    }
    pub fn content_type(mut self, content_type: &str) -> Self {
        self.content_type = Some(content_type.to_string());
        self
    }
}

/// OpenAI's error body shape.
pub fn error_body(status: u16, message: &str) -> Value {
    let kind = match status {
        401 | 403 => "authentication_error",
        429 => "rate_limit_error",
        s if s >= 500 => "server_error",
        _ => "invalid_request_error",
    };
    json!({"error": {"message": message, "type": kind, "param": null, "code": null}})
}

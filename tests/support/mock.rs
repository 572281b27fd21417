//! A mock OpenAI-format upstream on a real socket (`127.0.0.1:0`), with per-key fault injection.
//!
//! It serves `POST /v1/chat/completions` (JSON, or SSE when the body has `"stream": true`),
//! `GET /v1/models` and `GET /v1/models/{id}`, and records every request it receives
//! ([`Recorded`]: method, path, headers, raw body, parsed JSON, bearer key, arrival time, the
//! status it answered). What it answers is chosen per bearer key at run time with a [`Reply`]
//! (keys with no rule get [`Reply::ok`]). Every change of its record (a request, a streamed
//! chunk, a stream's end) wakes the `wait_*` methods, so tests await events instead of sleeping.
//!
//! ```ignore
//! let mock = MockUpstream::start().await;
//! mock.set_chat("key-a", Reply::rate_limited(2));           // 429 + Retry-After: 2, forever
//! mock.push_chat_once("key-b", Reply::status(500));         // next request of key-b only
//! mock.set_chat("key-c", Reply::ok().chunks(5).break_after(2)); // streams: abort after 2 chunks
//! mock.set_models_down(true);                               // GET /models answers 500
//! assert!(mock.wait_disconnected(Duration::from_secs(10)).await);
//! ```
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use serde_json::{json, Value};
use tokio::sync::{watch, Notify};

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

/// One request the mock received.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// Arrival order, from 0, over all requests.
    pub seq: usize,
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// `body` parsed as JSON, when it is JSON.
    pub json: Option<Value>,
    /// The bearer token of `Authorization`, if any.
    pub key: Option<String>,
    /// When the request (headers and whole body) had arrived.
    pub at: Instant,
    /// The status the mock answered, once it sent the headers.
    pub status: Option<u16>,
    /// The whole body the mock answered, for non-streamed answers.
    pub reply_body: Option<Bytes>,
}

impl Recorded {
    pub fn is_chat(&self) -> bool {
        self.method == Method::POST && self.path == "/v1/chat/completions"
    }
    pub fn is_models(&self) -> bool {
        self.method == Method::GET && self.path.starts_with("/v1/models")
    }
    /// Was this a streaming chat request (`"stream": true`)?
    pub fn is_stream(&self) -> bool {
        self.json
            .as_ref()
            .and_then(|j| j.get("stream"))
            .and_then(Value::as_bool)
            == Some(true)
    }
    /// All values of header `name`, as strings.
    pub fn header_values(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }
}

/// What happened to one answer after the mock took it up, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum StreamEventKind {
    /// Chunk `index` (0-based) was handed to hyper; `data` is its JSON text.
    Chunk { index: usize, data: String },
    /// `data: [DONE]` was handed to hyper and the body ended normally.
    Done,
    /// The mock aborted the body on purpose ([`Reply::break_after`]).
    Broken,
    /// The client (the gateway) went away before the answer was complete: the body stream,
    /// or the handler still hanging before its headers ([`Reply::delay`]), was dropped.
    Disconnected,
}

#[derive(Clone, Debug)]
pub struct StreamEvent {
    /// `Recorded::seq` of the request.
    pub seq: usize,
    /// The bearer key of the request.
    pub key: Option<String>,
    pub kind: StreamEventKind,
    pub at: Instant,
}

#[derive(Default)]
struct Inner {
    requests: Vec<Recorded>,
    stream_events: Vec<StreamEvent>,
    chat_rules: HashMap<String, Reply>,
    chat_once: HashMap<String, VecDeque<Reply>>,
    models_rules: HashMap<String, Reply>,
    default_chat: Option<Reply>,
    models_down: bool,
    model_ids: Vec<String>,
    in_flight: HashMap<String, usize>,
    high_water: HashMap<String, usize>,
}

struct Shared {
    inner: Mutex<Inner>,
    /// Woken (notify_waiters) on every change of `inner`'s record.
    changed: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn record_stream(&self, seq: usize, key: &Option<String>, kind: StreamEventKind) {
        self.lock().stream_events.push(StreamEvent {
            seq,
            key: key.clone(),
            kind,
            at: Instant::now(),
        });
        self.changed.notify_waiters();
    }
}

/// The mock upstream. Dropping it stops the server.
pub struct MockUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockUpstream {
    /// Binds `127.0.0.1:0` and serves until dropped.
    pub async fn start() -> MockUpstream {
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                model_ids: vec!["mock-model-a".into(), "mock-model-b".into()],
                ..Inner::default()
            }),
            changed: Notify::new(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("mock binds");
        let addr = listener.local_addr().expect("mock addr");
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        MockUpstream { addr, shared, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL to give the gateway: `http://127.0.0.1:PORT/v1`.
    pub fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    // ---- behaviour ----

    /// Every chat request with bearer `key` gets `reply` (until changed).
    pub fn set_chat(&self, key: &str, reply: Reply) {
        self.shared.lock().chat_rules.insert(key.to_string(), reply);
    }
    /// The next chat request with bearer `key` gets `reply`; later ones fall back to the rule.
    /// Several pushes queue up in order.
    pub fn push_chat_once(&self, key: &str, reply: Reply) {
        self.shared
            .lock()
            .chat_once
            .entry(key.to_string())
            .or_default()
            .push_back(reply);
    }
    /// Every `GET /models…` with bearer `key` gets `reply` (until changed).
    pub fn set_models(&self, key: &str, reply: Reply) {
        self.shared
            .lock()
            .models_rules
            .insert(key.to_string(), reply);
    }
    /// Both chat and models requests of `key` get `reply` (e.g. a revoked key: 401 everywhere).
    pub fn set(&self, key: &str, reply: Reply) {
        self.set_chat(key, reply.clone());
        self.set_models(key, reply);
    }
    /// Forget every rule and queued reply of `key`: it answers 200 again.
    pub fn clear(&self, key: &str) {
        let mut inner = self.shared.lock();
        inner.chat_rules.remove(key);
        inner.chat_once.remove(key);
        inner.models_rules.remove(key);
    }
    /// The chat reply for keys with no rule (default: [`Reply::ok`]).
    pub fn set_default_chat(&self, reply: Reply) {
        self.shared.lock().default_chat = Some(reply);
    }
    /// While down, every `GET /models…` answers 500.
    pub fn set_models_down(&self, down: bool) {
        self.shared.lock().models_down = down;
    }
    /// The ids `GET /v1/models` lists (default `mock-model-a`, `mock-model-b`).
    pub fn set_model_ids(&self, ids: &[&str]) {
        self.shared.lock().model_ids = ids.iter().map(|s| s.to_string()).collect();
    }

    // ---- record ----

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.lock().requests.clone()
    }
    /// Every `POST /v1/chat/completions` received so far.
    pub fn chat_requests(&self) -> Vec<Recorded> {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| r.is_chat())
            .cloned()
            .collect()
    }
    /// Chat requests that carried bearer `key`.
    pub fn chat_requests_for(&self, key: &str) -> Vec<Recorded> {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| r.is_chat() && r.key.as_deref() == Some(key))
            .cloned()
            .collect()
    }
    pub fn chat_count(&self) -> usize {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| r.is_chat())
            .count()
    }
    pub fn chat_count_for(&self, key: &str) -> usize {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| r.is_chat() && r.key.as_deref() == Some(key))
            .count()
    }
    /// Arrival times of the chat requests of `key`.
    pub fn chat_times(&self, key: &str) -> Vec<Instant> {
        self.chat_requests_for(key).iter().map(|r| r.at).collect()
    }
    /// `GET /models…` requests that carried bearer `key`.
    pub fn models_requests_for(&self, key: &str) -> Vec<Recorded> {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| r.is_models() && r.key.as_deref() == Some(key))
            .cloned()
            .collect()
    }
    /// The most chat requests of `key` the mock ever had in progress at once (a streamed
    /// answer is in progress until its body ends or is dropped).
    pub fn high_water(&self, key: &str) -> usize {
        self.shared.lock().high_water.get(key).copied().unwrap_or(0)
    }
    /// Chat requests of `key` in progress now.
    pub fn in_flight(&self, key: &str) -> usize {
        self.shared.lock().in_flight.get(key).copied().unwrap_or(0)
    }
    /// Everything that happened to streamed answers, in order.
    pub fn stream_events(&self) -> Vec<StreamEvent> {
        self.shared.lock().stream_events.clone()
    }
    /// The chunk JSON texts the mock sent for request `seq`, in order.
    pub fn sent_chunks(&self, seq: usize) -> Vec<String> {
        self.shared
            .lock()
            .stream_events
            .iter()
            .filter(|e| e.seq == seq)
            .filter_map(|e| match &e.kind {
                StreamEventKind::Chunk { data, .. } => Some(data.clone()),
                _ => None,
            })
            .collect()
    }
    /// How many streamed answers were dropped by the client before their end.
    pub fn disconnects(&self) -> usize {
        self.shared
            .lock()
            .stream_events
            .iter()
            .filter(|e| e.kind == StreamEventKind::Disconnected)
            .count()
    }

    // ---- waiting on events (no sleep polling) ----

    /// Waits until `cond` holds over the record, or `timeout` passes. Returns whether it held.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        mut cond: impl FnMut(&[Recorded], &[StreamEvent]) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            // Register before checking, so a change between the check and the await wakes us.
            notified.as_mut().enable();
            {
                let inner = self.shared.lock();
                if cond(&inner.requests, &inner.stream_events) {
                    return true;
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let inner = self.shared.lock();
                return cond(&inner.requests, &inner.stream_events);
            }
        }
    }
    /// Waits until at least one streamed answer was dropped by its client before its end.
    pub async fn wait_disconnected(&self, timeout: Duration) -> bool {
        self.wait_until(timeout, |_, ev| {
            ev.iter().any(|e| e.kind == StreamEventKind::Disconnected)
        })
        .await
    }
    /// Waits until the mock has received at least `n` chat requests in all.
    pub async fn wait_chat_count(&self, n: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, |reqs, _| {
            reqs.iter().filter(|r| r.is_chat()).count() >= n
        })
        .await
    }
    /// Waits until a request matching `pred` arrives (or already arrived).
    pub async fn wait_request(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&Recorded) -> bool,
    ) -> Option<Recorded> {
        let mut found = None;
        self.wait_until(timeout, |reqs, _| {
            found = reqs.iter().find(|r| pred(r)).cloned();
            found.is_some()
        })
        .await;
        found
    }
}

/// Decrements a key's in-flight count when the answer is over (or dropped).
struct InFlight {
    shared: Arc<Shared>,
    key: String,
}

impl InFlight {
    fn enter(shared: &Arc<Shared>, inner: &mut Inner, key: &str) -> InFlight {
        let n = inner.in_flight.entry(key.to_string()).or_insert(0);
        *n += 1;
        let n = *n;
        let hw = inner.high_water.entry(key.to_string()).or_insert(0);
        *hw = (*hw).max(n);
        InFlight {
            shared: shared.clone(),
            key: key.to_string(),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(n) = self.shared.lock().in_flight.get_mut(&self.key) {
            *n = n.saturating_sub(1);
        }
    }
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let rest = v
        .strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))?;
    Some(rest.trim().to_string())
}

/// Records `Disconnected` if the handler is dropped before it answered (hyper drops it when
/// the client closes the connection while the mock still hangs before its headers).
struct CallGuard {
    shared: Arc<Shared>,
    seq: Option<usize>,
    key: Option<String>,
    finished: bool,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if let (false, Some(seq)) = (self.finished, self.seq) {
            self.shared
                .record_stream(seq, &self.key, StreamEventKind::Disconnected);
        }
    }
}

async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let mut guard = CallGuard {
        shared: shared.clone(),
        seq: None,
        key: None,
        finished: false,
    };
    let response = answer(shared, req, &mut guard).await;
    guard.finished = true;
    response
}

async fn answer(shared: Arc<Shared>, req: Request, guard: &mut CallGuard) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let key = bearer(&parts.headers);
    let json: Option<Value> = serde_json::from_slice(&body).ok();
    let path = parts.uri.path().to_string();
    let rec = Recorded {
        seq: 0,
        method: parts.method.clone(),
        path: path.clone(),
        headers: parts.headers.clone(),
        body: body.clone(),
        json: json.clone(),
        key: key.clone(),
        at: Instant::now(),
        status: None,
        reply_body: None,
    };
    let is_chat = rec.is_chat();
    let is_models = rec.is_models();
    let stream = rec.is_stream();
    let key_s = key.clone().unwrap_or_default();

    let (seq, reply, in_flight, model_ids) = {
        let mut inner = shared.lock();
        let seq = inner.requests.len();
        inner.requests.push(Recorded { seq, ..rec });
        let reply = if is_chat {
            let once = inner.chat_once.get_mut(&key_s).and_then(|q| q.pop_front());
            once.or_else(|| inner.chat_rules.get(&key_s).cloned())
                .or_else(|| inner.default_chat.clone())
                .unwrap_or_else(Reply::ok)
        } else if is_models {
            if inner.models_down {
                Reply::error(500, "models are down (mock)")
            } else {
                inner
                    .models_rules
                    .get(&key_s)
                    .cloned()
                    .unwrap_or_else(Reply::ok)
            }
        } else {
            Reply::error(404, "no such route on the mock")
        };
        let in_flight = is_chat.then(|| InFlight::enter(&shared, &mut inner, &key_s));
        (seq, reply, in_flight, inner.model_ids.clone())
    };
    shared.changed.notify_waiters();
    guard.seq = Some(seq);
    guard.key = key.clone();

    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }

    let set_status = |status: u16, body: Option<Bytes>| {
        let mut inner = shared.lock();
        if let Some(r) = inner.requests.get_mut(seq) {
            r.status = Some(status);
            r.reply_body = body;
        }
        drop(inner);
        shared.changed.notify_waiters();
    };

    if !(200..300).contains(&reply.status) {
        let body = reply.body.clone().unwrap_or_else(|| {
            error_body(reply.status, &format!("mock error {}", reply.status)).to_string()
        });
        let body = Bytes::from(body);
        set_status(reply.status, Some(body.clone()));
        return build(
            reply.status,
            &reply.headers,
            "application/json",
            Body::from(body),
        );
    }

    if is_models {
        let (status, body) = if path == "/v1/models" {
            let data: Vec<Value> = model_ids.iter().map(|id| model_object(id)).collect();
            (200, json!({"object": "list", "data": data}))
        } else {
            let id = path.trim_start_matches("/v1/models/");
            if model_ids.iter().any(|m| m == id) {
                (200, model_object(id))
            } else {
                (
                    404,
                    error_body(404, &format!("The model `{id}` does not exist")),
                )
            }
        };
        let body = reply
            .body
            .clone()
            .map(Bytes::from)
            .unwrap_or_else(|| Bytes::from(body.to_string()));
        set_status(status, Some(body.clone()));
        return build(status, &reply.headers, "application/json", Body::from(body));
    }

    // Chat, 2xx.
    let model = json
        .as_ref()
        .and_then(|j| j.get("model"))
        .cloned()
        .unwrap_or(Value::Null);
    if !stream {
        let body = reply.body.clone().map(Bytes::from).unwrap_or_else(|| {
            Bytes::from(
                json!({
                    "id": format!("chatcmpl-mock-{seq}"),
                    "object": "chat.completion",
                    "created": CREATED,
                    "model": model,
                    "choices": [{
                        "index": 0,
                        "message": {"role": "assistant", "content": format!("mock reply {seq}")},
                        "finish_reason": "stop"
                    }],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4}
                })
                .to_string(),
            )
        });
        set_status(reply.status, Some(body.clone()));
        drop(in_flight);
        return build(
            reply.status,
            &reply.headers,
            "application/json",
            Body::from(body),
        );
    }

    set_status(reply.status, None);
    let state = StreamState {
        next: 0,
        reply: reply.clone(),
        model,
        seq,
        key: key.clone(),
        guard: StreamGuard {
            shared: shared.clone(),
            seq,
            key: key.clone(),
            finished: false,
            _in_flight: in_flight,
        },
        ended: false,
        pending: VecDeque::new(),
    };
    let s = futures_util::stream::unfold(state, next_chunk);
    build(
        reply.status,
        &reply.headers,
        "text/event-stream",
        Body::from_stream(s),
    )
}

fn model_object(id: &str) -> Value {
    json!({"id": id, "object": "model", "created": CREATED, "owned_by": "mock"})
}

fn build(status: u16, headers: &[(String, String)], content_type: &str, body: Body) -> Response {
    let mut b = Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(http::header::CONTENT_TYPE, content_type);
    if content_type == "text/event-stream" {
        b = b.header(http::header::CACHE_CONTROL, "no-cache");
    }
    for (k, v) in headers {
        b = b.header(k.as_str(), v.as_str());
    }
    b.body(body).expect("mock response")
}

/// Records `Disconnected` if the body stream is dropped before it finished or broke.
struct StreamGuard {
    shared: Arc<Shared>,
    seq: usize,
    key: Option<String>,
    finished: bool,
    _in_flight: Option<InFlight>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.shared
                .record_stream(self.seq, &self.key, StreamEventKind::Disconnected);
        }
    }
}

struct StreamState {
    next: usize,
    reply: Reply,
    model: Value,
    seq: usize,
    key: Option<String>,
    guard: StreamGuard,
    ended: bool,
    /// Pieces of the current event still to write (see [`Reply::split`]).
    pending: VecDeque<Bytes>,
}

/// The SSE chunk JSON the mock sends as chunk `index` of `total` for request `seq`.
pub fn chunk_json(seq: usize, model: &Value, index: usize, total: usize) -> String {
    // The `✓` (3 bytes in UTF-8) lets a split write cut a character in two.
    let mut delta = json!({"content": format!("s{seq}c{index}✓ ")});
    if index == 0 {
        delta["role"] = json!("assistant");
    }
    let finish = if index + 1 == total {
        json!("stop")
    } else {
        Value::Null
    };
    json!({
        "id": format!("chatcmpl-mock-{seq}"),
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]
    })
    .to_string()
}

/// The bytes of one SSE event carrying `data`, as [`Reply`]'s wire options say, in the
/// pieces to write.
fn event_pieces(reply: &Reply, data: &str) -> VecDeque<Bytes> {
    let nl = if reply.crlf { "\r\n" } else { "\n" };
    let mut text = String::new();
    if reply.comments {
        text.push_str(&format!(": keep-alive{nl}{nl}: a comment line{nl}"));
    }
    text.push_str(&format!("data: {data}{nl}{nl}"));
    let bytes = Bytes::from(text.clone());
    if !reply.split {
        return VecDeque::from([bytes]);
    }
    // Cut 1: inside the first multi-byte character (else in the middle of the data).
    let cut1 = text
        .char_indices()
        .find(|(_, c)| c.len_utf8() > 1)
        .map(|(i, _)| i + 1)
        .unwrap_or(text.len() / 2);
    // Cut 2: inside the blank line that ends the event (between `\n` and `\n`, or inside the
    // first `\r\n` pair).
    let cut2 = text.len() - if reply.crlf { 3 } else { 1 };
    if cut1 >= cut2 {
        return VecDeque::from([bytes.slice(..cut2), bytes.slice(cut2..)]);
    }
    VecDeque::from([
        bytes.slice(..cut1),
        bytes.slice(cut1..cut2),
        bytes.slice(cut2..),
    ])
}

async fn next_chunk(mut st: StreamState) -> Option<(Result<Bytes, std::io::Error>, StreamState)> {
    if let Some(piece) = st.pending.pop_front() {
        tokio::time::sleep(Duration::from_millis(10)).await;
        return Some((Ok(piece), st));
    }
    if st.ended {
        return None;
    }
    let i = st.next;
    let shared = st.guard.shared.clone();
    if i < st.reply.chunks || (i == st.reply.chunks && st.reply.break_after == Some(i)) {
        if i > 0 && !st.reply.chunk_pause.is_zero() {
            tokio::time::sleep(st.reply.chunk_pause).await;
        }
        if let Some((n, d)) = st.reply.pause_after {
            if n == i {
                tokio::time::sleep(d).await;
            }
        }
        if let Some((n, gate)) = st.reply.hold_after.clone() {
            if n == i {
                gate.wait().await;
            }
        }
        if st.reply.break_after == Some(i) {
            // Let hyper flush what it has (headers, earlier chunks) first: a body error while
            // they still sit in its write buffer would abort the connection with nothing sent.
            tokio::time::sleep(Duration::from_millis(20)).await;
            st.guard.finished = true;
            st.ended = true;
            shared.record_stream(st.seq, &st.key, StreamEventKind::Broken);
            return Some((Err(std::io::Error::other("mock breaks the stream")), st));
        }
        if i < st.reply.chunks {
            let data = chunk_json(st.seq, &st.model, i, st.reply.chunks);
            shared.record_stream(
                st.seq,
                &st.key,
                StreamEventKind::Chunk {
                    index: i,
                    data: data.clone(),
                },
            );
            st.next += 1;
            st.pending = event_pieces(&st.reply, &data);
            let first = st.pending.pop_front().unwrap_or_default();
            return Some((Ok(first), st));
        }
    }
    // All chunks sent.
    st.ended = true;
    st.guard.finished = true;
    if st.reply.done {
        shared.record_stream(st.seq, &st.key, StreamEventKind::Done);
        st.pending = event_pieces(&st.reply, "[DONE]");
        let first = st.pending.pop_front().unwrap_or_default();
        Some((Ok(first), st))
    } else {
        shared.record_stream(st.seq, &st.key, StreamEventKind::Done);
        None
    }
}

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
//!
//! Here: the record and its queries. `reply`: what to answer ([`Reply`], [`Gate`]).
//! `handler`: the one axum handler. `stream`: the SSE answer, chunk by chunk.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method};
use serde_json::Value;
use tokio::sync::Notify;

mod endpoints;
mod handler;
mod reply;
mod stream;

use handler::{handle, InFlight};
pub use reply::{error_body, Gate, Reply, CREATED};
pub use stream::{chunk_json, stream_usage, usage_chunk_json};

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
    /// A POST to one of the other endpoints (`/v1/embeddings`, `/v1/completions`,
    /// `/v1/responses`, `/v1/messages`, or any other path but chat and models).
    pub fn is_endpoint(&self) -> bool {
        self.method == Method::POST
            && self.path != "/v1/chat/completions"
            && !self.path.starts_with("/v1/models")
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
        MockUpstream::start_on("127.0.0.1:0".parse().expect("address")).await
    }

    /// Binds `addr` (an upstream that comes back on its old port) and serves until dropped.
    pub async fn start_on(addr: SocketAddr) -> MockUpstream {
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                model_ids: vec!["mock-model-a".into(), "mock-model-b".into()],
                ..Inner::default()
            }),
            changed: Notify::new(),
        });
        let listener = tokio::net::TcpListener::bind(addr)
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
    /// The POSTs to `path` (any key), in arrival order.
    pub fn requests_to(&self, path: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == Method::POST && r.path == path)
            .collect()
    }

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

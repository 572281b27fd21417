//! Integration-test harness: a real gateway on `127.0.0.1:0` in front of a mock upstream on
//! `127.0.0.1:0`, both in the test's own tokio runtime, talking over real sockets.
//!
//! * [`mock::MockUpstream`] — the mock OpenAI-format upstream (`POST /v1/chat/completions`,
//!   JSON or SSE; `GET /v1/models`, `/v1/models/{id}`):
//!   - behaviour per bearer key, settable at run time: [`MockUpstream::set_chat`],
//!     [`MockUpstream::push_chat_once`] (next request only), [`MockUpstream::set_models`],
//!     [`MockUpstream::set`] (both), [`MockUpstream::clear`], [`MockUpstream::set_default_chat`],
//!     [`MockUpstream::set_models_down`]; a [`Reply`] says status, headers, body, a hang before
//!     the headers, how many SSE chunks, pauses, a [`Gate`] to hold a stream, a break;
//!   - a record of every request ([`Recorded`]: method, path, headers, raw body, JSON, bearer
//!     key, arrival `Instant`, status and body answered) and of every answer's life
//!     ([`StreamEvent`]: each chunk sent with its JSON text, `[DONE]`, a deliberate break, and
//!     `Disconnected` when the gateway dropped the answer before its end);
//!   - per-key counts, arrival times and the concurrency high-water mark;
//!   - awaitable events, no sleep polling: [`MockUpstream::wait_until`],
//!     [`MockUpstream::wait_request`], [`MockUpstream::wait_chat_count`],
//!     [`MockUpstream::wait_disconnected`].
//! * [`spawn_gateway`] (or [`start_gateway`] with ready-made [`Settings`]) — starts the real
//!   `megallm_gateway::Gateway` and returns a [`TestGateway`]: its address, an [`HttpClient`],
//!   admin helpers ([`TestGateway::admin_keys`], [`TestGateway::admin_key`],
//!   [`TestGateway::admin_post`]) and [`TestGateway::shutdown`].
//! * [`HttpClient`] — the HTTP door as a client sees it (HTTP/1.1; [`HttpClient::new_h2c`] for
//!   HTTP/2 prior knowledge): [`HttpResponse`] (status, headers, body;
//!   [`HttpResponse::assert_openai_error`] checks OpenAI's error shape and `param`) or
//!   [`SseResponse`] (SSE events read in the background as they arrive, each with its arrival
//!   `Instant`; dropping it hangs up). [`parse_attempts`] splits `x-gateway-attempts`.
//! * [`KeysFile`] — a temporary keys file a test can rewrite atomically (hot-reload tests).
//! * [`eventually`] — bounded polling, only for gateway state that has no event to await.
//!
//! Another door's helper (gRPC) should start the gateway with [`spawn_gateway`] and dial
//! [`TestGateway::addr`] (one port serves HTTP/1.1, h2c and gRPC), as [`HttpClient`] does, and
//! assert on the same mock.
//!
//! ```ignore
//! mod support;
//! use support::*;
//!
//! #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
//! async fn example() {
//!     let mock = MockUpstream::start().await;
//!     mock.set_chat("key-a", Reply::status(500));
//!     let gw = spawn_gateway(&mock, &["key-a", "key-b"], |s| s.max_attempts = 2).await;
//!     let resp = gw.http.chat(&chat_body()).await;
//!     assert_eq!(resp.status, 200);
//!     assert!(mock.chat_count_for("key-a") <= 1);
//! }
//! ```
//!
//! Every helper has a generous built-in timeout ([`PATIENCE`]) and panics with a clear message
//! when it runs out, so a broken gateway fails a test instead of hanging it.
#![allow(dead_code, unused_imports)]

pub mod mock;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, StatusCode};
use serde_json::{json, Value};
use tokio::sync::mpsc;

pub use megallm_gateway::config::{KeySpec, Secret, Strategy};
pub use megallm_gateway::{Gateway, Settings};
pub use mock::{
    chunk_json, error_body, Gate, MockUpstream, Recorded, Reply, StreamEvent, StreamEventKind,
};

/// How long a helper waits for anything (a response, an SSE event, a mock event) before it
/// declares the gateway stuck. Generous: the suite runs on a noisy 2-core machine.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// The smallest valid chat body: `{"messages":[{"role":"user","content":"hi"}]}`.
pub fn chat_body() -> Value {
    json!({"messages": [{"role": "user", "content": "hi"}]})
}

/// [`chat_body`] with `"stream": true`.
pub fn stream_body() -> Value {
    json!({"messages": [{"role": "user", "content": "hi"}], "stream": true})
}

/// A running gateway. Dropping it leaves the server to the end of the test's runtime; call
/// [`TestGateway::shutdown`] to stop it gracefully.
pub struct TestGateway {
    gateway: Option<Gateway>,
    /// Where the gateway listens (HTTP/1.1, h2c and gRPC on one port).
    pub addr: SocketAddr,
    /// A client of the HTTP door.
    pub http: HttpClient,
}

/// Starts the real gateway against `mock` with pool keys `keys` (they become `key-1`, `key-2`,
/// … in this order). `tweak` adjusts the settings before start (attempts, timeouts, tokens…).
pub async fn spawn_gateway(
    mock: &MockUpstream,
    keys: &[&str],
    tweak: impl FnOnce(&mut Settings),
) -> TestGateway {
    let mut settings = Settings::for_upstream(&mock.url(), keys);
    tweak(&mut settings);
    start_gateway(settings).await
}

/// Starts the real gateway with `settings` as given.
pub async fn start_gateway(settings: Settings) -> TestGateway {
    let gateway = tokio::time::timeout(PATIENCE, Gateway::start(settings))
        .await
        .expect("Gateway::start did not return in time")
        .expect("Gateway::start failed");
    let addr = gateway.local_addr();
    TestGateway {
        gateway: Some(gateway),
        addr,
        http: HttpClient::new(addr),
    }
}

impl TestGateway {
    /// The gateway itself (e.g. for `core()`), until [`TestGateway::shutdown`].
    pub fn gateway(&self) -> &Gateway {
        self.gateway.as_ref().expect("gateway already shut down")
    }

    /// Graceful shutdown.
    pub async fn shutdown(mut self) {
        if let Some(gw) = self.gateway.take() {
            tokio::time::timeout(PATIENCE, gw.shutdown())
                .await
                .expect("Gateway::shutdown did not finish in time");
        }
    }

    /// `GET /admin/keys` with `token`; asserts 200 and returns the JSON.
    pub async fn admin_keys(&self, token: &str) -> Value {
        let resp = self
            .http
            .get_with(
                "/admin/keys",
                &[("authorization", &format!("Bearer {token}"))],
            )
            .await;
        assert_eq!(resp.status, 200, "GET /admin/keys: {}", resp.text());
        resp.json()
    }

    /// The entry of key `id` (`"key-1"`…) in `GET /admin/keys`.
    pub async fn admin_key(&self, token: &str, id: &str) -> Value {
        let all = self.admin_keys(token).await;
        all["keys"]
            .as_array()
            .and_then(|keys| keys.iter().find(|k| k["id"] == id).cloned())
            .unwrap_or_else(|| panic!("no key {id} in /admin/keys: {all}"))
    }

    /// `POST /admin/...` with `token`; returns the response.
    pub async fn admin_post(&self, token: &str, path: &str) -> HttpResponse {
        self.http
            .send(
                Method::POST,
                path,
                &[("authorization", &format!("Bearer {token}"))],
                None,
            )
            .await
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP door
// ---------------------------------------------------------------------------------------------

/// What a client of the HTTP door sees of one non-streamed exchange.
#[derive(Clone, Debug)]
pub struct HttpResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl HttpResponse {
    /// The body as JSON; panics (showing the body) if it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): status {} body {:?}",
                self.status,
                self.text()
            )
        })
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// Header `name` as a string.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }
    /// The `x-gateway-attempts` header.
    pub fn attempts(&self) -> Option<String> {
        self.header("x-gateway-attempts")
    }
    /// Asserts an OpenAI error body `{"error":{"message","type","param","code"}}` with
    /// `status`, and (when `param` is `Some`) that `error.param` is it. Returns `error`.
    pub fn assert_openai_error(&self, status: u16, param: Option<&str>) -> Value {
        self.check_openai_error(status, param)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`HttpResponse::assert_openai_error`] without the panic: `Err` says what is wrong.
    pub fn check_openai_error(&self, status: u16, param: Option<&str>) -> Result<Value, String> {
        let ctx = || format!("status {} body {}", self.status, self.text());
        if self.status.as_u16() != status {
            return Err(format!("want status {status}; got {}", ctx()));
        }
        let ct = self.header("content-type").unwrap_or_default();
        if !ct.starts_with("application/json") {
            return Err(format!("error content-type is {ct:?}; {}", ctx()));
        }
        let body: Value = serde_json::from_slice(&self.body)
            .map_err(|e| format!("error body is not JSON ({e}); {}", ctx()))?;
        let err = body
            .get("error")
            .filter(|e| e.is_object())
            .ok_or_else(|| format!("no `error` object; {}", ctx()))?;
        match err.get("message").and_then(Value::as_str) {
            Some(m) if !m.is_empty() => {}
            _ => return Err(format!("error.message missing or empty; {}", ctx())),
        }
        if !err.get("type").is_some_and(Value::is_string) {
            return Err(format!("error.type missing or not a string; {}", ctx()));
        }
        if err.get("param").is_none() {
            return Err(format!(
                "error.param missing (must be present, may be null); {}",
                ctx()
            ));
        }
        if err.get("code").is_none() {
            return Err(format!(
                "error.code missing (must be present, may be null); {}",
                ctx()
            ));
        }
        if let Some(p) = param {
            if err["param"] != json!(p) {
                return Err(format!("want error.param {p:?}; got {}", ctx()));
            }
        }
        Ok(err.clone())
    }
}

/// Splits `x-gateway-attempts` (`key-2:429,key-3:200`) into `(key id, outcome)` pairs.
pub fn parse_attempts(header: &str) -> Vec<(String, String)> {
    header
        .split(',')
        .map(|part| {
            let (id, outcome) = part
                .trim()
                .split_once(':')
                .unwrap_or_else(|| panic!("bad attempt {part:?} in {header:?}"));
            (id.to_string(), outcome.to_string())
        })
        .collect()
}

/// A client of the gateway's HTTP door (HTTP/1.1, no proxy, 60 s overall timeout).
#[derive(Clone)]
pub struct HttpClient {
    client: reqwest::Client,
    base: String,
}

impl HttpClient {
    pub fn new(addr: SocketAddr) -> HttpClient {
        let client = reqwest::Client::builder()
            .no_proxy()
            .http1_only()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("reqwest client");
        HttpClient {
            client,
            base: format!("http://{addr}"),
        }
    }

    /// The same door over h2c (HTTP/2 without TLS, prior knowledge), as gRPC-adjacent
    /// clients and proxies speak it on the one port.
    pub fn new_h2c(addr: SocketAddr) -> HttpClient {
        let client = reqwest::Client::builder()
            .no_proxy()
            .http2_prior_knowledge()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("reqwest client");
        HttpClient {
            client,
            base: format!("http://{addr}"),
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `POST /v1/chat/completions` with `body` as JSON.
    pub async fn chat(&self, body: &Value) -> HttpResponse {
        self.chat_with(body, &[]).await
    }

    /// `POST /v1/chat/completions` with `body` as JSON and extra headers.
    pub async fn chat_with(&self, body: &Value, headers: &[(&str, &str)]) -> HttpResponse {
        let mut h: Vec<(&str, &str)> = vec![("content-type", "application/json")];
        h.extend_from_slice(headers);
        self.send(
            Method::POST,
            "/v1/chat/completions",
            &h,
            Some(body.to_string().into_bytes()),
        )
        .await
    }

    /// `POST path` with raw bytes and exactly the given headers.
    pub async fn post_raw(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Vec<u8>>,
    ) -> HttpResponse {
        self.send(Method::POST, path, headers, Some(body.into()))
            .await
    }

    pub async fn get(&self, path: &str) -> HttpResponse {
        self.send(Method::GET, path, &[], None).await
    }

    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
        self.send(Method::GET, path, headers, None).await
    }

    /// Any request; returns the whole response.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> HttpResponse {
        let resp = tokio::time::timeout(
            PATIENCE,
            self.request(method.clone(), path, headers, body).send(),
        )
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no response headers within {PATIENCE:?}"))
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = tokio::time::timeout(PATIENCE, resp.bytes())
            .await
            .unwrap_or_else(|_| panic!("{method} {path}: body not complete within {PATIENCE:?}"))
            .unwrap_or_else(|e| panic!("{method} {path}: reading body: {e}"));
        HttpResponse {
            status,
            headers,
            body,
        }
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> reqwest::RequestBuilder {
        let mut rb = self
            .client
            .request(method, format!("{}{}", self.base, path));
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        if let Some(b) = body {
            rb = rb.body(b);
        }
        rb
    }

    /// `POST /v1/chat/completions` with `body` (which should say `"stream": true`) and returns
    /// as soon as the response headers arrive; the events are read in the background.
    pub async fn chat_stream(&self, body: &Value) -> SseResponse {
        self.chat_stream_with(body, &[]).await
    }

    pub async fn chat_stream_with(&self, body: &Value, headers: &[(&str, &str)]) -> SseResponse {
        let mut h: Vec<(&str, &str)> = vec![
            ("content-type", "application/json"),
            ("accept", "text/event-stream"),
        ];
        h.extend_from_slice(headers);
        let rb = self.request(
            Method::POST,
            "/v1/chat/completions",
            &h,
            Some(body.to_string().into_bytes()),
        );
        let resp = tokio::time::timeout(PATIENCE, rb.send())
            .await
            .expect("stream: no response headers in time")
            .expect("stream: request failed");
        SseResponse::read(resp).await
    }
}

/// One SSE event as the client received it.
#[derive(Clone, Debug)]
pub struct SseEvent {
    /// The `data:` lines joined with `\n` (the JSON text, or `[DONE]`).
    pub data: String,
    /// When the client had the whole event.
    pub at: Instant,
}

impl SseEvent {
    pub fn is_done(&self) -> bool {
        self.data == "[DONE]"
    }
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("SSE data is not JSON ({e}): {:?}", self.data))
    }
    /// Is this an error event (`{"error":{...}}`)?
    pub fn is_error(&self) -> bool {
        !self.is_done()
            && serde_json::from_str::<Value>(&self.data)
                .ok()
                .and_then(|v| v.get("error").cloned())
                .is_some()
    }
}

/// How a response body ended, as the client saw it.
#[derive(Clone, Debug, PartialEq)]
pub enum StreamEnd {
    /// The body ended normally.
    Clean,
    /// Reading the body failed (connection aborted, …): the message.
    Error(String),
}

enum SseItem {
    Event(SseEvent),
    End(StreamEnd),
}

/// A streamed response being read in the background. Dropping it closes the connection (the
/// client goes away).
pub struct SseResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// The whole body when the answer is not `text/event-stream` (e.g. a JSON error).
    pub body: Option<Bytes>,
    rx: mpsc::UnboundedReceiver<SseItem>,
    end: Option<StreamEnd>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for SseResponse {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// A whole streamed answer: every event, and how the body ended.
#[derive(Clone, Debug)]
pub struct SseTranscript {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub events: Vec<SseEvent>,
    pub end: StreamEnd,
}

impl SseTranscript {
    pub fn data(&self) -> Vec<String> {
        self.events.iter().map(|e| e.data.clone()).collect()
    }
    pub fn has_done(&self) -> bool {
        self.events.iter().any(SseEvent::is_done)
    }
}

impl SseResponse {
    async fn read(mut resp: reqwest::Response) -> SseResponse {
        let status = resp.status();
        let headers = resp.headers().clone();
        let is_sse = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("text/event-stream"));
        let (tx, rx) = mpsc::unbounded_channel();
        if !is_sse {
            let body = tokio::time::timeout(PATIENCE, resp.bytes())
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            let _ = tx.send(SseItem::End(StreamEnd::Clean));
            return SseResponse {
                status,
                headers,
                body: Some(body),
                rx,
                end: None,
                task: None,
            };
        }
        let task = tokio::spawn(async move {
            let mut buf = BytesMut::new();
            loop {
                match resp.chunk().await {
                    Ok(Some(bytes)) => {
                        buf.extend_from_slice(&bytes);
                        while let Some(ev) = take_event(&mut buf) {
                            if let Some(data) = ev {
                                let _ = tx.send(SseItem::Event(SseEvent {
                                    data,
                                    at: Instant::now(),
                                }));
                            }
                        }
                    }
                    Ok(None) => {
                        let _ = tx.send(SseItem::End(StreamEnd::Clean));
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(SseItem::End(StreamEnd::Error(format!("{e:?}"))));
                        return;
                    }
                }
            }
        });
        SseResponse {
            status,
            headers,
            body: None,
            rx,
            end: None,
            task: Some(task),
        }
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }

    /// The next event, or `None` once the body ended (see [`SseResponse::end`]). Panics if
    /// nothing happens within `timeout`.
    pub async fn next_event(&mut self, timeout: Duration) -> Option<SseEvent> {
        if self.end.is_some() {
            return None;
        }
        match tokio::time::timeout(timeout, self.rx.recv()).await {
            Err(_) => panic!("no SSE event and no end of stream within {timeout:?}"),
            Ok(Some(SseItem::Event(ev))) => Some(ev),
            Ok(Some(SseItem::End(end))) => {
                self.end = Some(end);
                None
            }
            Ok(None) => {
                self.end = Some(StreamEnd::Error("reader task gone".into()));
                None
            }
        }
    }

    /// How the body ended, once [`SseResponse::next_event`] returned `None`.
    pub fn end(&self) -> Option<&StreamEnd> {
        self.end.as_ref()
    }

    /// Reads every remaining event until the body ends (each gap at most `PATIENCE`).
    pub async fn collect(mut self) -> SseTranscript {
        let mut events = Vec::new();
        while let Some(ev) = self.next_event(PATIENCE).await {
            events.push(ev);
        }
        SseTranscript {
            status: self.status,
            headers: self.headers.clone(),
            events,
            end: self.end.clone().unwrap_or(StreamEnd::Clean),
        }
    }
}

/// Takes one complete SSE event off the front of `buf`: `Some(Some(data))` for an event with
/// data, `Some(None)` for one without (a comment / keep-alive), `None` if no event is complete.
fn take_event(buf: &mut BytesMut) -> Option<Option<String>> {
    let text = std::str::from_utf8(buf)
        .ok()
        .map(str::to_owned)
        .unwrap_or_else(|| String::from_utf8_lossy(buf).into_owned());
    let (end, sep) = [("\r\n\r\n", 4), ("\n\n", 2), ("\r\r", 2)]
        .iter()
        .filter_map(|(pat, len)| text.find(pat).map(|i| (i, *len)))
        .min_by_key(|(i, _)| *i)?;
    let block = text[..end].to_string();
    let _ = buf.split_to(end + sep);
    let mut data: Vec<&str> = Vec::new();
    for line in block.lines() {
        if let Some(rest) = line.strip_prefix("data:") {
            data.push(rest.strip_prefix(' ').unwrap_or(rest));
        }
    }
    Some(if data.is_empty() {
        None
    } else {
        Some(data.join("\n"))
    })
}

// ---------------------------------------------------------------------------------------------
// Keys file
// ---------------------------------------------------------------------------------------------

/// A keys file in a fresh temporary directory, removed on drop.
pub struct KeysFile {
    dir: PathBuf,
    path: PathBuf,
}

impl KeysFile {
    /// Writes one key spec a line (e.g. `"key-a weight=3"`).
    pub fn new(lines: &[&str]) -> KeysFile {
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "megallm-test-{}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            nanos
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("keys.txt");
        let kf = KeysFile { dir, path };
        kf.rewrite(lines);
        kf
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the file's content atomically (write a sibling, then rename over), so a watcher
    /// never reads a half-written file.
    pub fn rewrite(&self, lines: &[&str]) {
        static N: AtomicUsize = AtomicUsize::new(0);
        let tmp = self
            .dir
            .join(format!("keys.txt.tmp{}", N.fetch_add(1, Ordering::Relaxed)));
        let mut text = String::from("# test keys\n");
        for l in lines {
            text.push_str(l);
            text.push('\n');
        }
        std::fs::write(&tmp, text).expect("write keys tmp");
        std::fs::rename(&tmp, &self.path).expect("rename keys file");
    }
}

impl Drop for KeysFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------------
// Misc
// ---------------------------------------------------------------------------------------------

/// Runs `f` every `every` until it returns `Some`, or panics after `timeout` with `what`.
/// For gateway state that has no event to await (admin API views); prefer the mock's `wait_*`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, every: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(every).await;
    }
}

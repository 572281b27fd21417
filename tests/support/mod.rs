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
//! * [`redis::RedisServer`] — a `redis-server` of the test's own on a free port (kill,
//!   restart), for the replica tests.
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
#![allow(dead_code)]

pub mod grpc;
mod http_client;
mod keys_file;
pub mod mock;
pub mod redis;
mod sse;
mod usage_log;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::Method;
use serde_json::{json, Value};

// Everything a test needs, under `support::`. Each test binary uses part of it.
#[allow(unused_imports)]
pub use grpc::{channel, frame, frame_bytes, frames, grpc_client, hi, patient, text};
#[allow(unused_imports)]
pub use http_client::{parse_attempts, HttpClient, HttpResponse};
#[allow(unused_imports)]
pub use keys_file::KeysFile;
#[allow(unused_imports)]
pub use megallm_gateway::config::{KeySpec, Secret, Strategy};
pub use megallm_gateway::{Gateway, Settings};
#[allow(unused_imports)]
pub use mock::{
    chunk_json, error_body, stream_usage, usage_chunk_json, Gate, MockUpstream, Recorded, Reply,
    StreamEvent, StreamEventKind,
};
#[allow(unused_imports)]
pub use sse::{SseEvent, SseResponse, SseTranscript, StreamEnd};
#[allow(unused_imports)]
pub use usage_log::UsageLog;

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

/// The admin token the tests configure with [`with_admin`].
pub const ADMIN: &str = "admintok";

/// A settings tweak: the admin API on, with [`ADMIN`] as its token.
pub fn with_admin(s: &mut Settings) {
    s.admin_token = Some(Secret::new(ADMIN.into()));
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

//! A fast OpenAI-shaped mock upstream on a real socket, for the benchmark.
//!
//! Routes (any path prefix is accepted, so `--upstream http://HOST:PORT/v1` works):
//! - `POST …/chat/completions`: a chat completion; with `"stream": true` an SSE stream of
//!   `chunks` events (`data: {chunk}\n\n`) followed by `data: [DONE]\n\n`. The first event is
//!   sent at once, each next one `delay_ms` after the previous (deadline-based, no drift).
//!   With `stream_options.include_usage: true` it answers as OpenAI does: `"usage":null` on
//!   every event and a usage-only event (`"choices":[]`) before `[DONE]` (the gateway asks
//!   for it on every stream, for its usage records).
//! - `GET …/models`: an OpenAI model list.
//! - `GET /healthz`: 200. `GET /stats`: request counters as JSON.
//!
//! Per-request settings, first found wins: body fields `mock_chunks` / `mock_delay_ms`
//! (the gateway forwards unknown fields), a model named `mock-<chunks>x<delay_ms>`, headers `x-mock-chunks` / `x-mock-delay-ms`, query
//! string `?chunks=N&delay_ms=D`, then the `--chunks` / `--delay-ms` defaults.
//!
//! Fault injection by the `Authorization: Bearer <key>` value: a key containing `429` answers
//! 429 with `Retry-After: 1`, `500` answers 500, `401` answers 401. Any other key succeeds.
//! A request with no bearer key answers 401.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::Parser;
use futures_util::stream;
use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpSocket;
use tokio::time::Instant;

type Body = UnsyncBoxBody<Bytes, Infallible>;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "mock-upstream",
    about = "OpenAI-shaped mock upstream for the megallm benchmark"
)]
struct Args {
    /// Address to listen on; port 0 picks a free port. The bound address is printed on stdout
    /// as `LISTENING <addr>`.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Default number of SSE events per streamed completion (not counting `[DONE]`).
    #[arg(long, default_value_t = 8)]
    chunks: u32,
    /// Default delay between two SSE events, in milliseconds.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Tokio worker threads (0 = Tokio's default, one per core).
    #[arg(long, default_value_t = 0)]
    workers: usize,
}

#[derive(Default)]
struct Stats {
    requests: AtomicU64,
    chat_ok: AtomicU64,
    chat_stream: AtomicU64,
    fault_429: AtomicU64,
    fault_500: AtomicU64,
    fault_401: AtomicU64,
    models: AtomicU64,
}

struct State {
    args: Args,
    stats: Stats,
}

#[derive(Deserialize, Default)]
struct ChatBody {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    stream: Option<bool>,
    // Numbers, integral or not (a protobuf Struct carries every number as a double).
    #[serde(default)]
    mock_chunks: Option<f64>,
    #[serde(default)]
    mock_delay_ms: Option<f64>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
}

#[derive(Deserialize, Default)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

fn main() {
    let args = Args::parse();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if args.workers > 0 {
        rt.worker_threads(args.workers);
    }
    let rt = rt.build().expect("tokio runtime");
    if let Err(e) = rt.block_on(run(args)) {
        eprintln!("mock-upstream: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> std::io::Result<()> {
    let socket = if args.listen.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(args.listen)?;
    // A deep backlog: the open-streams scenario connects thousands of sockets at once.
    let listener = socket.listen(8192)?;
    let local = listener.local_addr()?;
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(out, "LISTENING {local}")?;
        out.flush()?;
    }
    let state = Arc::new(State {
        args,
        stats: Stats::default(),
    });
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                eprintln!("mock-upstream: accept: {e}");
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(state.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

fn full(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(body.into()).boxed_unsync())
        .expect("valid response")
}

fn error(status: StatusCode, kind: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({
        "error": {"message": message, "type": kind, "param": null, "code": null}
    });
    full(status, "application/json", body.to_string())
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| v.to_string())
    })
}

fn header_num<T: std::str::FromStr>(h: &HeaderMap, name: &str) -> Option<T> {
    h.get(name)?.to_str().ok()?.trim().parse().ok()
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let stats = &state.stats;
    stats.requests.fetch_add(1, Ordering::Relaxed);
    let path = req.uri().path().to_string();
    let method = req.method().clone();

    if method == Method::GET && path == "/healthz" {
        return Ok(full(StatusCode::OK, "text/plain", "ok"));
    }
    if method == Method::GET && path == "/stats" {
        let s = serde_json::json!({
            "requests": stats.requests.load(Ordering::Relaxed),
            "chat_ok": stats.chat_ok.load(Ordering::Relaxed),
            "chat_stream": stats.chat_stream.load(Ordering::Relaxed),
            "fault_429": stats.fault_429.load(Ordering::Relaxed),
            "fault_500": stats.fault_500.load(Ordering::Relaxed),
            "fault_401": stats.fault_401.load(Ordering::Relaxed),
            "models": stats.models.load(Ordering::Relaxed),
        });
        return Ok(full(StatusCode::OK, "application/json", s.to_string()));
    }
    if method == Method::GET && path.ends_with("/models") {
        stats.models.fetch_add(1, Ordering::Relaxed);
        let body = r#"{"object":"list","data":[{"id":"mock-model","object":"model","created":1700000000,"owned_by":"mock"},{"id":"openai-gpt-oss-120b","object":"model","created":1700000000,"owned_by":"mock"}]}"#;
        return Ok(full(StatusCode::OK, "application/json", body));
    }
    if !(method == Method::POST && path.ends_with("/chat/completions")) {
        return Ok(error(StatusCode::NOT_FOUND, "not_found", "no such route"));
    }

    // Fault injection by key.
    let key = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .to_string();
    let query = req.uri().query().map(str::to_string);
    let headers = req.headers().clone();
    // Always read the body, so the connection stays reusable.
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Ok(error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "body",
            ))
        }
    };
    if key.is_empty() || key.contains("401") {
        stats.fault_401.fetch_add(1, Ordering::Relaxed);
        return Ok(error(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "Incorrect API key provided",
        ));
    }
    if key.contains("429") {
        stats.fault_429.fetch_add(1, Ordering::Relaxed);
        let mut r = error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "Rate limit reached",
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, http::HeaderValue::from_static("1"));
        return Ok(r);
    }
    if key.contains("500") {
        stats.fault_500.fetch_add(1, Ordering::Relaxed);
        return Ok(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "The server had an error",
        ));
    }

    let parsed: ChatBody = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            return Ok(error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                &format!("bad JSON body: {e}"),
            ))
        }
    };
    let model = parsed.model.as_deref().unwrap_or("mock-model");
    let model = serde_json::to_string(model).unwrap_or_else(|_| "\"mock-model\"".into());
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);

    if parsed.stream != Some(true) {
        stats.chat_ok.fetch_add(1, Ordering::Relaxed);
        let body = format!(
            r#"{{"id":"chatcmpl-mock","object":"chat.completion","created":{created},"model":{model},"choices":[{{"index":0,"message":{{"role":"assistant","content":"Hello! This is the mock upstream answering."}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":9,"completion_tokens":8,"total_tokens":17}}}}"#
        );
        return Ok(full(StatusCode::OK, "application/json", body));
    }

    stats.chat_stream.fetch_add(1, Ordering::Relaxed);
    // A model named `mock-<chunks>x<delay_ms>` also sets them: it reaches the mock through
    // any front door (gRPC requests have no free-form fields).
    let by_model = parsed.model.as_deref().and_then(|m| {
        let (c, d) = m.strip_prefix("mock-")?.split_once('x')?;
        Some((c.parse::<u32>().ok()?, d.parse::<u64>().ok()?))
    });
    let chunks = parsed
        .mock_chunks
        .map(|v| v as u32)
        .or(by_model.map(|b| b.0))
        .or_else(|| header_num(&headers, "x-mock-chunks"))
        .or_else(|| query_param(query.as_deref(), "chunks").and_then(|v| v.parse().ok()))
        .unwrap_or(state.args.chunks)
        .max(1);
    let delay_ms = parsed
        .mock_delay_ms
        .map(|v| v as u64)
        .or(by_model.map(|b| b.1))
        .or_else(|| header_num(&headers, "x-mock-delay-ms"))
        .or_else(|| query_param(query.as_deref(), "delay_ms").and_then(|v| v.parse().ok()))
        .unwrap_or(state.args.delay_ms);
    let delay = Duration::from_millis(delay_ms);
    let start = Instant::now();
    let include_usage = parsed.stream_options.as_ref().and_then(|o| o.include_usage) == Some(true);
    let usage_null = if include_usage { ",\"usage\":null" } else { "" };
    // The usage event is one more before `[DONE]`.
    let last = chunks + u32::from(include_usage);

    let events = stream::unfold(0u32, move |i| {
        let model = model.clone();
        async move {
            if i > last {
                return None;
            }
            if i == chunks && include_usage {
                let line = format!(
                    "data: {{\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion.chunk\",\"created\":{created},\"model\":{model},\"choices\":[],\"usage\":{{\"prompt_tokens\":9,\"completion_tokens\":{chunks},\"total_tokens\":{}}}}}\n\n",
                    9 + chunks
                );
                return Some((Ok(Frame::data(Bytes::from(line))), i + 1));
            }
            if i == last {
                // `[DONE]` follows the last event at once.
                return Some((
                    Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"data: [DONE]\n\n"))),
                    i + 1,
                ));
            }
            if i > 0 && !delay.is_zero() {
                tokio::time::sleep_until(start + delay * i).await;
            }
            let delta = if i == 0 {
                r#"{"role":"assistant","content":"tok0 "}"#.to_string()
            } else if i + 1 == chunks {
                "{}".to_string()
            } else {
                format!(r#"{{"content":"tok{i} "}}"#)
            };
            let finish = if i + 1 == chunks { r#""stop""# } else { "null" };
            let line = format!(
                "data: {{\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion.chunk\",\"created\":{created},\"model\":{model},\"choices\":[{{\"index\":0,\"delta\":{delta},\"finish_reason\":{finish}}}]{usage_null}}}\n\n"
            );
            Some((Ok(Frame::data(Bytes::from(line))), i + 1))
        }
    });
    let resp = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(StreamBody::new(events).boxed_unsync())
        .expect("valid response");
    Ok(resp)
}

//! The mock's one handler: record the request, pick the [`Reply`] for its key, answer.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde_json::{json, Value};

use super::stream::{next_chunk, StreamGuard, StreamState};
use super::{error_body, Inner, Recorded, Reply, Shared, StreamEventKind, CREATED};

/// Decrements a key's in-flight count when the answer is over (or dropped).
pub(super) struct InFlight {
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

/// The pool key of a request: its bearer token, or Anthropic's `x-api-key`.
fn bearer(headers: &HeaderMap) -> Option<String> {
    bearer_only(headers).or_else(|| {
        let v = headers.get("x-api-key")?.to_str().ok()?;
        Some(v.trim().to_string())
    })
}

fn bearer_only(headers: &HeaderMap) -> Option<String> {
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

pub(super) async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
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
    // Every POST the mock serves (chat and the other endpoints) follows the chat rules.
    let is_chat = rec.is_chat() || rec.is_endpoint();
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
    let mut reply = reply;
    if path != "/v1/chat/completions" {
        if let Some(shaped) = super::endpoints::answer(&path, seq, &model, stream, &reply) {
            match shaped {
                super::endpoints::Shaped::Whole(body) => {
                    let body = reply.body.clone().map(Bytes::from).unwrap_or(body);
                    set_status(reply.status, Some(body.clone()));
                    drop(in_flight);
                    return build(
                        reply.status,
                        &reply.headers,
                        "application/json",
                        Body::from(body),
                    );
                }
                super::endpoints::Shaped::Events { events, done } => {
                    if reply.events.is_none() {
                        reply = reply.events(events);
                        reply.done = done && reply.done;
                    }
                }
            }
        }
    }
    if !stream || reply.unstreamed {
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
            reply.content_type.as_deref().unwrap_or("application/json"),
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
        include_usage: json
            .as_ref()
            .and_then(|j| j.pointer("/stream_options/include_usage"))
            .and_then(Value::as_bool)
            == Some(true),
    };
    let s = futures_util::stream::unfold(state, next_chunk);
    build(
        reply.status,
        &reply.headers,
        reply.content_type.as_deref().unwrap_or("text/event-stream"),
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

//! `--demo`: an embedded simulated upstream on a loopback port, so every README example works
//! offline with no key. It speaks the same OpenAI wire format as the real upstream (the
//! gateway goes through its full path: keys, dispatch, SSE parsing), answering by echoing.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::Json;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::catalogue::Catalogue;
use crate::config::KeySpec;
use crate::upstream::models::from_catalogue;

pub struct Demo {
    pub upstream: String,
    pub keys: Vec<KeySpec>,
}

const DEMO_KEYS: [&str; 2] = ["demo-key-alpha-0001", "demo-key-bravo-0002"];

pub async fn start(stop: CancellationToken) -> Result<Demo, String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("demo upstream: cannot bind a loopback port: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/models", get(models))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/completions", post(completions))
        .route("/v1/responses", post(responses))
        .route("/v1/messages", post(messages));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
    });
    Ok(Demo {
        upstream: format!("http://{addr}/v1"),
        keys: DEMO_KEYS.iter().map(|k| KeySpec::new(k)).collect(),
    })
}

async fn models() -> Response {
    let data: Vec<Value> = from_catalogue(&Catalogue::builtin())
        .iter()
        .map(|m| json!({"id": m.id, "object": "model", "created": m.created, "owned_by": m.owned_by}))
        .collect();
    Json(json!({"object": "list", "data": data})).into_response()
}

fn reply_text(body: &Value) -> String {
    let last_user = body["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .map(|m| match &m["content"] {
            Value::String(s) => s.clone(),
            Value::Array(parts) => parts
                .iter()
                .filter_map(|p| p["text"].as_str())
                .collect::<Vec<_>>()
                .join(" "),
            _ => String::new(),
        })
        .unwrap_or_default();
    format!("Hello from the megallm-gateway demo upstream! You said: {last_user}")
}

async fn chat(Json(body): Json<Value>) -> Response {
    let model = body["model"].as_str().unwrap_or("unknown").to_owned();
    let text = reply_text(&body);
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let id = format!("chatcmpl-demo{created}");
    let prompt_tokens = body.to_string().len() as u64 / 4;
    let completion_tokens = text.split_whitespace().count() as u64;
    let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                       "total_tokens": prompt_tokens + completion_tokens});
    if body["stream"] != Value::Bool(true) {
        return Json(json!({
            "id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": "stop"}],
            "usage": usage,
        }))
        .into_response();
    }
    let include_usage = body["stream_options"]["include_usage"] == Value::Bool(true);
    let chunk = move |delta: Value, finish: Value| {
        json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    let words: Vec<&str> = text.split_inclusive(' ').collect();
    for piece in words.chunks(2) {
        events.push(chunk(json!({"content": piece.concat()}), Value::Null));
    }
    events.push(chunk(json!({}), json!("stop")));
    if include_usage {
        let mut last = chunk(json!({}), Value::Null);
        last["choices"] = json!([]);
        last["usage"] = usage;
        events.push(last);
    }
    let stream = futures_util::stream::unfold(
        events.into_iter().map(Some).chain([None]),
        |mut it| async move {
            let next = it.next()?;
            let frame = match next {
                Some(event) => {
                    tokio::time::sleep(Duration::from_millis(40)).await;
                    format!("data: {event}\n\n")
                }
                None => "data: [DONE]\n\n".to_owned(),
            };
            Some((Ok::<_, std::convert::Infallible>(frame), it))
        },
    );
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/event-stream")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// A short deterministic vector per input: enough to show the shape.
async fn embeddings(Json(body): Json<Value>) -> Response {
    let inputs: Vec<String> = match &body["input"] {
        Value::Array(items) => items.iter().map(|i| i.to_string()).collect(),
        other => vec![other.to_string()],
    };
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, text)| {
            let seed = text
                .bytes()
                .fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32));
            let vector: Vec<f64> = (0..8)
                .map(|i| f64::from((seed >> i) % 200) / 100.0 - 1.0)
                .collect();
            json!({"object": "embedding", "index": index, "embedding": vector})
        })
        .collect();
    Json(
        json!({"object": "list", "model": body["model"], "data": data,
                "usage": {"prompt_tokens": inputs.len(), "total_tokens": inputs.len()}}),
    )
    .into_response()
}

/// Server-sent events from `(event name, data)` pairs, 40 ms apart; `done`: end with
/// `data: [DONE]`.
fn sse(events: Vec<(Option<&'static str>, Value)>, done: bool) -> Response {
    let mut frames: Vec<String> = events
        .into_iter()
        .map(|(name, data)| match name {
            Some(name) => format!("event: {name}\ndata: {data}\n\n"),
            None => format!("data: {data}\n\n"),
        })
        .collect();
    if done {
        frames.push("data: [DONE]\n\n".into());
    }
    let stream = futures_util::stream::unfold(frames.into_iter(), |mut it| async move {
        let frame = it.next()?;
        tokio::time::sleep(Duration::from_millis(40)).await;
        Some((Ok::<_, std::convert::Infallible>(frame), it))
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/event-stream")],
        Body::from_stream(stream),
    )
        .into_response()
}

fn echo(prompt: &str) -> String {
    format!("Hello from the megallm-gateway demo upstream! You said: {prompt}")
}

async fn completions(Json(body): Json<Value>) -> Response {
    let text = echo(body["prompt"].as_str().unwrap_or(""));
    let head = json!({"id": "cmpl-demo", "object": "text_completion", "model": body["model"]});
    if body["stream"] != Value::Bool(true) {
        let mut whole = head;
        whole["choices"] = json!([{"index": 0, "text": text, "finish_reason": "stop"}]);
        return Json(whole).into_response();
    }
    let events = text
        .split_inclusive(' ')
        .map(|piece| {
            let mut chunk = head.clone();
            chunk["choices"] = json!([{"index": 0, "text": piece, "finish_reason": null}]);
            (None, chunk)
        })
        .collect();
    sse(events, true)
}

async fn responses(Json(body): Json<Value>) -> Response {
    let input = match &body["input"] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let text = echo(&input);
    let response = |status: &str, text: &str| {
        json!({"id": "resp_demo", "object": "response", "status": status, "model": body["model"],
               "output": [{"type": "message", "id": "msg_demo", "role": "assistant", "status": status,
                           "content": [{"type": "output_text", "text": text, "annotations": []}]}]})
    };
    if body["stream"] != Value::Bool(true) {
        return Json(response("completed", &text)).into_response();
    }
    let mut events = vec![(
        Some("response.created"),
        json!({"type": "response.created", "response": response("in_progress", "")}),
    )];
    for piece in text.split_inclusive(' ') {
        events.push((
            Some("response.output_text.delta"),
            json!({"type": "response.output_text.delta", "item_id": "msg_demo", "output_index": 0,
                   "content_index": 0, "delta": piece}),
        ));
    }
    events.push((
        Some("response.completed"),
        json!({"type": "response.completed", "response": response("completed", &text)}),
    ));
    sse(events, false)
}

/// Anthropic's Messages API, as its SDKs read it.
async fn messages(Json(body): Json<Value>) -> Response {
    let text = reply_text(&body);
    let model = body["model"].clone();
    let usage = json!({"input_tokens": body.to_string().len() / 4, "output_tokens": text.split_whitespace().count()});
    if body["stream"] != Value::Bool(true) {
        return Json(
            json!({"id": "msg_demo", "type": "message", "role": "assistant", "model": model,
                           "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
                           "stop_sequence": null, "usage": usage}),
        )
        .into_response();
    }
    let mut events = vec![
        (
            Some("message_start"),
            json!({"type": "message_start", "message": {"id": "msg_demo", "type": "message",
                   "role": "assistant", "model": model, "content": [], "stop_reason": null,
                   "stop_sequence": null, "usage": {"input_tokens": usage["input_tokens"], "output_tokens": 1}}}),
        ),
        (
            Some("content_block_start"),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
    ];
    for piece in text.split_inclusive(' ') {
        events.push((
            Some("content_block_delta"),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}),
        ));
    }
    events.push((
        Some("content_block_stop"),
        json!({"type": "content_block_stop", "index": 0}),
    ));
    events.push((
        Some("message_delta"),
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
               "usage": {"output_tokens": usage["output_tokens"]}}),
    ));
    events.push((Some("message_stop"), json!({"type": "message_stop"})));
    sse(events, false)
}

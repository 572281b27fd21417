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

use crate::config::KeySpec;
use crate::catalogue::Catalogue;
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
        .route("/v1/models", get(models));
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

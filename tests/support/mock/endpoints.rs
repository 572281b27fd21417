//! The mock's answers on the endpoints besides chat: `/v1/embeddings`, `/v1/completions`
//! (JSON, or `data:` events ending in `[DONE]`), `/v1/responses` and Anthropic's
//! `/v1/messages` (JSON, or named events, no `[DONE]`). Other paths answer an echo object.

use bytes::Bytes;
use serde_json::{json, Value};

use super::{Reply, CREATED};

/// What a 2xx on such an endpoint is.
pub(super) enum Shaped {
    Whole(Bytes),
    /// The stream's events (`event: <name>\n<data>` for a named one) and whether `[DONE]`
    /// follows.
    Events {
        events: Vec<String>,
        done: bool,
    },
}

pub(super) fn answer(
    path: &str,
    seq: usize,
    model: &Value,
    stream: bool,
    reply: &Reply,
) -> Option<Shaped> {
    let n = reply.chunks;
    let named = |name: &str, data: Value| format!("event: {name}\n{data}");
    let shaped = match (path, stream) {
        ("/v1/embeddings", _) => Shaped::Whole(body(json!({
            "object": "list", "model": model,
            "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}],
            "usage": {"prompt_tokens": 1, "total_tokens": 1}
        }))),
        ("/v1/completions", false) => Shaped::Whole(body(json!({
            "id": format!("cmpl-mock-{seq}"), "object": "text_completion", "created": CREATED,
            "model": model,
            "choices": [{"text": format!("mock reply {seq}"), "index": 0, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
        }))),
        ("/v1/completions", true) => Shaped::Events {
            events: (0..n)
                .map(|i| {
                    json!({"id": format!("cmpl-mock-{seq}"), "object": "text_completion",
                           "model": model, "choices": [{"text": format!("s{seq}c{i} "), "index": 0}]})
                    .to_string()
                })
                .collect(),
            done: true,
        },
        ("/v1/responses", false) => Shaped::Whole(body(response_object(seq, model))),
        ("/v1/responses", true) => {
            let mut events = vec![named(
                "response.created",
                json!({"type": "response.created", "response": {"id": format!("resp_mock_{seq}"), "status": "in_progress"}}),
            )];
            for i in 0..n.saturating_sub(2) {
                events.push(named(
                    "response.output_text.delta",
                    json!({"type": "response.output_text.delta", "delta": format!("s{seq}c{i} ")}),
                ));
            }
            events.push(named(
                "response.completed",
                json!({"type": "response.completed", "response": response_object(seq, model)}),
            ));
            Shaped::Events {
                events,
                done: false,
            }
        }
        ("/v1/messages", false) => Shaped::Whole(body(message_object(seq, model))),
        ("/v1/messages", true) => {
            let mut events = vec![
                named(
                    "message_start",
                    json!({"type": "message_start", "message": {"id": format!("msg_mock_{seq}"),
                        "type": "message", "role": "assistant", "model": model, "content": [],
                        "stop_reason": null, "stop_sequence": null,
                        "usage": {"input_tokens": 1, "output_tokens": 1}}}),
                ),
                named(
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 0,
                           "content_block": {"type": "text", "text": ""}}),
                ),
            ];
            for i in 0..n.saturating_sub(2).max(1) {
                events.push(named(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0,
                           "delta": {"type": "text_delta", "text": format!("s{seq}c{i} ")}}),
                ));
            }
            events.push(named(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 0}),
            ));
            events.push(named(
                "message_delta",
                json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                       "usage": {"output_tokens": 3}}),
            ));
            events.push(named("message_stop", json!({"type": "message_stop"})));
            Shaped::Events {
                events,
                done: false,
            }
        }
        (_, false) => Shaped::Whole(body(json!({"object": "echo", "path": path, "seq": seq}))),
        (_, true) => Shaped::Events {
            events: (0..n)
                .map(|i| named("echo", json!({"path": path, "i": i})))
                .collect(),
            done: false,
        },
    };
    Some(shaped)
}

fn body(v: Value) -> Bytes {
    Bytes::from(v.to_string())
}

fn response_object(seq: usize, model: &Value) -> Value {
    json!({"id": format!("resp_mock_{seq}"), "object": "response", "created_at": CREATED,
           "status": "completed", "model": model,
           "output": [{"type": "message", "id": format!("msg_{seq}"), "role": "assistant", "status": "completed",
                       "content": [{"type": "output_text", "text": format!("mock reply {seq}"), "annotations": []}]}],
           "usage": {"input_tokens": 4, "input_tokens_details": {"cached_tokens": 1},
                     "output_tokens": 6, "output_tokens_details": {"reasoning_tokens": 2},
                     "total_tokens": 10}})
}

fn message_object(seq: usize, model: &Value) -> Value {
    json!({"id": format!("msg_mock_{seq}"), "type": "message", "role": "assistant", "model": model,
           "content": [{"type": "text", "text": format!("mock reply {seq}")}],
           "stop_reason": "end_turn", "stop_sequence": null,
           "usage": {"input_tokens": 1, "output_tokens": 3}})
}

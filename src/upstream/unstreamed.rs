//! Some OpenAI-compatible upstreams ignore `"stream": true` for some models and answer with one
//! whole `chat.completion`. The key did nothing wrong and the answer is complete, so the client
//! still gets a stream: the completion recast as `chat.completion.chunk` events (one carrying
//! each choice's whole message as its delta, then one with the usage), then the normal end.

use bytes::Bytes;
use serde_json::{json, Map, Value};

/// The events for a whole completion body. A body that is not a completion (no `choices`) is
/// passed on as one event unchanged, for the door to render or refuse.
pub fn completion_to_chunks(body: &Bytes) -> Vec<Bytes> {
    let Ok(Value::Object(completion)) = serde_json::from_slice::<Value>(body) else {
        return vec![body.clone()];
    };
    let Some(Value::Array(choices)) = completion.get("choices") else {
        return vec![body.clone()];
    };
    let mut head = Map::new();
    for field in [
        "id",
        "created",
        "model",
        "system_fingerprint",
        "service_tier",
    ] {
        if let Some(v) = completion.get(field) {
            head.insert(field.into(), v.clone());
        }
    }
    head.insert("object".into(), json!("chat.completion.chunk"));
    let deltas: Vec<Value> = choices.iter().map(choice_delta).collect();
    let mut first = head.clone();
    first.insert("choices".into(), Value::Array(deltas));
    let mut events = vec![Bytes::from(Value::Object(first).to_string())];
    if let Some(usage) = completion.get("usage").filter(|u| u.is_object()) {
        let mut last = head;
        last.insert("choices".into(), json!([]));
        last.insert("usage".into(), usage.clone());
        events.push(Bytes::from(Value::Object(last).to_string()));
    }
    events
}

/// A whole choice as a chunk choice: its message becomes the delta (tool calls gain the
/// `index` that deltas carry).
fn choice_delta(choice: &Value) -> Value {
    let mut delta = choice.get("message").cloned().unwrap_or_else(|| json!({}));
    if let Some(Value::Array(calls)) = delta.get_mut("tool_calls") {
        for (i, call) in calls.iter_mut().enumerate() {
            if let Value::Object(call) = call {
                call.entry("index").or_insert(json!(i));
            }
        }
    }
    let mut out = json!({
        "index": choice.get("index").cloned().unwrap_or(json!(0)),
        "delta": delta,
        "finish_reason": choice.get("finish_reason").cloned().unwrap_or(Value::Null),
    });
    if let Some(logprobs) = choice.get("logprobs") {
        out["logprobs"] = logprobs.clone();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_completion_becomes_a_delta_then_usage() {
        let body = Bytes::from_static(
            br#"{"id":"c","object":"chat.completion","created":7,"model":"m",
                "choices":[{"index":0,"message":{"role":"assistant","content":"Hi",
                  "tool_calls":[{"id":"t","type":"function","function":{"name":"f","arguments":"{}"}}]},
                  "finish_reason":"stop"}],
                "usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#,
        );
        let events = completion_to_chunks(&body);
        assert_eq!(events.len(), 2);
        let first: Value = serde_json::from_slice(&events[0]).unwrap();
        assert_eq!(first["object"], "chat.completion.chunk");
        assert_eq!(
            (first["id"].clone(), first["model"].clone()),
            (json!("c"), json!("m"))
        );
        let choice = &first["choices"][0];
        assert_eq!(choice["delta"]["content"], "Hi");
        assert_eq!(choice["delta"]["tool_calls"][0]["index"], 0);
        assert_eq!(choice["finish_reason"], "stop");
        let last: Value = serde_json::from_slice(&events[1]).unwrap();
        assert_eq!(last["usage"]["total_tokens"], 2);
        assert_eq!(last["choices"], json!([]));
    }

    #[test]
    fn anything_else_passes_unchanged() {
        for body in [&b"not json"[..], br#"{"error":{"message":"x"}}"#, b"[1]"] {
            let body = Bytes::copy_from_slice(body);
            assert_eq!(completion_to_chunks(&body), vec![body.clone()]);
        }
    }
}

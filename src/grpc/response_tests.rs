use prost::Message as _;
use serde_json::Value;

use super::*;

/// The one message of `framed`, which holds nothing else.
fn only_message(framed: &Bytes) -> Bytes {
    let mut messages = messages(framed);
    let message = messages.next().expect("a message");
    assert_eq!(
        PREFIX + message.len(),
        framed.len(),
        "one message, nothing after it"
    );
    message
}

/// The transcoded answer, decoded again.
fn completion(body: &[u8]) -> Result<pb::ChatCompletion, GatewayError> {
    let framed = super::completion(body)?;
    Ok(pb::ChatCompletion::decode(only_message(&framed)).unwrap())
}

/// The transcoded chunk, framed alone.
fn framed_chunk(data: &[u8]) -> Result<Bytes, GatewayError> {
    let mut out = BytesMut::new();
    super::chunk(data, &mut out).map(|()| out.freeze())
}

/// The transcoded chunk, decoded again.
fn chunk(data: &[u8]) -> Result<pb::ChatCompletionChunk, GatewayError> {
    let framed = framed_chunk(data)?;
    Ok(pb::ChatCompletionChunk::decode(only_message(&framed)).unwrap())
}

/// The former converter, through `serde_json::Value`: the oracle the typed one must match.
mod oracle {
    use serde_json::Value;

    use super::super::pb;
    use crate::chat::GatewayError;

    /// A whole completion body.
    pub fn completion(body: &[u8]) -> Result<pb::ChatCompletion, GatewayError> {
        let v = parse(body)?;
        Ok(pb::ChatCompletion {
            id: string(&v, "id").unwrap_or_default(),
            object: string(&v, "object").unwrap_or_default(),
            created: int(&v, "created"),
            model: string(&v, "model").unwrap_or_default(),
            choices: list(&v, "choices")
                .map(|c| pb::Choice {
                    index: uint(c, "index"),
                    message: c
                        .get("message")
                        .filter(|m| m.is_object())
                        .map(assistant_message),
                    finish_reason: finish_reason(c) as i32,
                    logprobs: c.get("logprobs").and_then(to_struct),
                })
                .collect(),
            usage: usage(&v),
            system_fingerprint: string(&v, "system_fingerprint"),
            service_tier: string(&v, "service_tier"),
        })
    }

    /// The data of one SSE event.
    pub fn chunk(data: &[u8]) -> Result<pb::ChatCompletionChunk, GatewayError> {
        let v = parse(data)?;
        Ok(pb::ChatCompletionChunk {
            id: string(&v, "id").unwrap_or_default(),
            object: string(&v, "object").unwrap_or_default(),
            created: int(&v, "created"),
            model: string(&v, "model").unwrap_or_default(),
            choices: list(&v, "choices")
                .map(|c| pb::ChunkChoice {
                    index: uint(c, "index"),
                    delta: c.get("delta").filter(|d| d.is_object()).map(delta),
                    finish_reason: finish_reason(c) as i32,
                    logprobs: c.get("logprobs").and_then(to_struct),
                })
                .collect(),
            usage: usage(&v),
            system_fingerprint: string(&v, "system_fingerprint"),
            service_tier: string(&v, "service_tier"),
        })
    }

    /// The JSON object in `bytes` (already masked by the core: its start may be quoted).
    fn parse(bytes: &[u8]) -> Result<Value, GatewayError> {
        let v: Value = serde_json::from_slice(bytes).map_err(|e| {
            let start = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]);
            GatewayError::Internal(format!("the upstream's answer is not JSON ({e}): {start}"))
        })?;
        if !v.is_object() {
            return Err(GatewayError::Internal(
                "the upstream's answer is not a JSON object".into(),
            ));
        }
        Ok(v)
    }

    fn assistant_message(m: &Value) -> pb::AssistantMessage {
        pb::AssistantMessage {
            role: string(m, "role").unwrap_or_else(|| "assistant".into()),
            content: string(m, "content"),
            tool_calls: list(m, "tool_calls")
                .map(|t| {
                    let f = t.get("function");
                    pb::ToolCall {
                        id: string(t, "id").unwrap_or_default(),
                        r#type: string(t, "type").unwrap_or_else(|| "function".into()),
                        function: f.map(|f| pb::FunctionCall {
                            name: string(f, "name").unwrap_or_default(),
                            arguments: string(f, "arguments").unwrap_or_default(),
                        }),
                    }
                })
                .collect(),
            refusal: string(m, "refusal"),
            reasoning_content: reasoning(m),
        }
    }

    fn delta(d: &Value) -> pb::Delta {
        pb::Delta {
            role: string(d, "role"),
            content: string(d, "content"),
            tool_calls: list(d, "tool_calls")
                .map(|t| pb::ToolCallDelta {
                    index: uint(t, "index"),
                    id: string(t, "id"),
                    r#type: string(t, "type"),
                    function: t.get("function").filter(|f| f.is_object()).map(|f| {
                        pb::FunctionCallDelta {
                            name: string(f, "name"),
                            arguments: string(f, "arguments"),
                        }
                    }),
                })
                .collect(),
            refusal: string(d, "refusal"),
            reasoning_content: reasoning(d),
        }
    }

    /// `reasoning_content`, or `reasoning` as some upstreams (vLLM, OpenRouter) name it.
    fn reasoning(v: &Value) -> Option<String> {
        string(v, "reasoning_content").or_else(|| string(v, "reasoning"))
    }

    fn finish_reason(choice: &Value) -> pb::FinishReason {
        use pb::FinishReason as F;
        match choice.get("finish_reason") {
            None | Some(Value::Null) => F::Unspecified,
            Some(Value::String(s)) => match s.as_str() {
                "stop" => F::Stop,
                "length" => F::Length,
                "tool_calls" => F::ToolCalls,
                "content_filter" => F::ContentFilter,
                "function_call" => F::FunctionCall,
                _ => F::Other,
            },
            Some(_) => F::Other,
        }
    }

    fn usage(v: &Value) -> Option<pb::Usage> {
        let u = v.get("usage").filter(|u| u.is_object())?;
        Some(pb::Usage {
            prompt_tokens: uint(u, "prompt_tokens"),
            completion_tokens: uint(u, "completion_tokens"),
            total_tokens: uint(u, "total_tokens"),
            prompt_tokens_details: u.get("prompt_tokens_details").and_then(to_struct),
            completion_tokens_details: u.get("completion_tokens_details").and_then(to_struct),
        })
    }

    /// A JSON object as a `google.protobuf.Struct`; anything else (`null` included) as unset.
    fn to_struct(v: &Value) -> Option<prost_types::Struct> {
        let Value::Object(map) = v else { return None };
        Some(prost_types::Struct {
            fields: map.iter().map(|(k, v)| (k.clone(), to_value(v))).collect(),
        })
    }

    fn to_value(v: &Value) -> prost_types::Value {
        use prost_types::value::Kind;
        let kind = match v {
            Value::Null => Kind::NullValue(0),
            Value::Bool(b) => Kind::BoolValue(*b),
            Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
            Value::String(s) => Kind::StringValue(s.clone()),
            Value::Array(items) => Kind::ListValue(prost_types::ListValue {
                values: items.iter().map(to_value).collect(),
            }),
            Value::Object(_) => Kind::StructValue(to_struct(v).unwrap_or_default()),
        };
        prost_types::Value { kind: Some(kind) }
    }

    fn string(v: &Value, key: &str) -> Option<String> {
        v.get(key).and_then(Value::as_str).map(str::to_owned)
    }

    /// An integer field; a float (some upstreams send `1.7e9`) is truncated, anything else is 0.
    fn int(v: &Value, key: &str) -> i64 {
        v.get(key)
            .and_then(|n| n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)))
            .unwrap_or_default()
    }

    fn uint(v: &Value, key: &str) -> u32 {
        u32::try_from(int(v, key).max(0)).unwrap_or(u32::MAX)
    }

    fn list<'a>(v: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
        v.get(key).and_then(Value::as_array).into_iter().flatten()
    }
}

#[test]
fn logprobs_usage_details_and_service_tier_survive() {
    let body = br#"{"id":"x","object":"chat.completion","created":1,"model":"m","service_tier":"default",
        "choices":[{"index":0,"message":{"role":"assistant","content":"Hi"},"finish_reason":"stop",
                    "logprobs":{"content":[{"token":"Hi","logprob":-0.25,"top_logprobs":[]}]}}],
        "usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4,
                 "prompt_tokens_details":{"cached_tokens":2},"completion_tokens_details":{"reasoning_tokens":0}}}"#;
    let c = completion(body).unwrap();
    assert_eq!(c.service_tier.as_deref(), Some("default"));
    let logprobs = c.choices[0].logprobs.as_ref().expect("logprobs");
    let json = serde_json::to_string(&Value::Object(struct_json(logprobs))).unwrap();
    assert_eq!(
        json,
        r#"{"content":[{"logprob":-0.25,"token":"Hi","top_logprobs":[]}]}"#
    );
    let usage = c.usage.unwrap();
    let cached = &usage.prompt_tokens_details.unwrap().fields["cached_tokens"];
    assert_eq!(
        cached.kind,
        Some(prost_types::value::Kind::NumberValue(2.0))
    );
    assert!(usage.completion_tokens_details.is_some());
}

fn struct_json(s: &prost_types::Struct) -> serde_json::Map<String, Value> {
    use prost_types::value::Kind;
    fn json(v: &prost_types::Value) -> Value {
        match v.kind.as_ref().unwrap() {
            Kind::NullValue(_) => Value::Null,
            Kind::BoolValue(b) => Value::Bool(*b),
            Kind::NumberValue(n) => serde_json::json!(n),
            Kind::StringValue(s) => Value::String(s.clone()),
            Kind::ListValue(l) => Value::Array(l.values.iter().map(json).collect()),
            Kind::StructValue(s) => Value::Object(struct_json(s)),
        }
    }
    s.fields.iter().map(|(k, v)| (k.clone(), json(v))).collect()
}

#[test]
fn chunk_with_unknown_fields_and_nulls() {
    let data = br#"{"id":"c1","object":"chat.completion.chunk","created":1700000000,"model":"m","new_field":{"x":1},
        "choices":[{"index":0,"delta":{"role":"assistant","content":"Hel","tool_calls":[{"index":0,"id":"t1","type":"function","function":{"name":"f","arguments":"{"}}]},"finish_reason":null,"logprobs":null}],"usage":null}"#;
    let c = chunk(data).unwrap();
    assert_eq!(
        (c.id.as_str(), c.created, c.model.as_str()),
        ("c1", 1_700_000_000, "m")
    );
    let choice = &c.choices[0];
    assert_eq!(choice.finish_reason, pb::FinishReason::Unspecified as i32);
    let d = choice.delta.as_ref().unwrap();
    assert_eq!(
        (d.role.as_deref(), d.content.as_deref()),
        (Some("assistant"), Some("Hel"))
    );
    assert_eq!(
        d.tool_calls[0]
            .function
            .as_ref()
            .unwrap()
            .arguments
            .as_deref(),
        Some("{")
    );
    assert!(c.usage.is_none());
}

#[test]
fn a_chunk_that_is_not_an_object_is_an_error() {
    let err = chunk(b"[1]").unwrap_err();
    assert!(err.to_string().contains("not a JSON object"), "{err}");
    let err = chunk(b"oops [redacted key]").unwrap_err();
    assert!(err.to_string().contains("not JSON"), "{err}");
}

#[test]
fn completion_with_usage_and_finish_reason() {
    let body = br#"{"id":"x","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5,"prompt_tokens_details":{}}}"#;
    let c = completion(body).unwrap();
    assert_eq!(c.choices[0].finish_reason, pb::FinishReason::Stop as i32);
    assert_eq!(
        c.choices[0].message.as_ref().unwrap().content.as_deref(),
        Some("hi")
    );
    assert_eq!(c.usage.unwrap().total_tokens, 5);
}

/// Upstream answers of every shape the converter meets, odd ones included.
const CORPUS: &[&str] = &[
    r#"{"id":"x","object":"chat.completion","created":1,"model":"m","service_tier":"default","system_fingerprint":"fp",
        "choices":[{"index":0,"message":{"role":"assistant","content":"Hi","refusal":null},"finish_reason":"stop",
                    "logprobs":{"content":[{"token":"Hi","logprob":-0.25,"bytes":[72,105],"top_logprobs":[]}]}}],
        "usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4,
                 "prompt_tokens_details":{"cached_tokens":2,"audio_tokens":null},"completion_tokens_details":{"reasoning_tokens":0,"nested":{"a":[true,false,"s",1.5e300]}}}}"#,
    r#"{"id":"c1","object":"chat.completion.chunk","created":1700000000,"model":"m","new_field":{"x":[1,{"y":null}]},
        "choices":[{"index":0,"delta":{"role":"assistant","content":"Hel","tool_calls":[{"index":0,"id":"t1","type":"function","function":{"name":"f","arguments":"{"}}]},"finish_reason":null,"logprobs":null}],"usage":null}"#,
    r#"{"choices":[{"message":{"tool_calls":[{"id":"a","function":{"name":"f","arguments":"{}"}},{"type":"custom","function":null},{"function":7},{}]},"finish_reason":"tool_calls"}]}"#,
    r#"{"choices":[{"delta":{"tool_calls":[{"index":1,"function":null},{"function":{"arguments":"x"}},5,null]}}]}"#,
    r#"{"choices":[1,"two",null,[],{"index":-4},{"index":1e10},{"index":99999999999},{"index":"3"},{"index":2.9}]}"#,
    r#"{"created":1.7e9,"id":5,"object":null,"model":["m"],"choices":{"0":{}},"usage":[1]}"#,
    r#"{"created":18446744073709551615,"usage":{"prompt_tokens":-1,"completion_tokens":4294967296,"total_tokens":12.7}}"#,
    r#"{"created":-9223372036854775808,"choices":[{"finish_reason":"length"},{"finish_reason":"content_filter"},{"finish_reason":"function_call"},{"finish_reason":"weird"},{"finish_reason":3},{"finish_reason":{}},{}]}"#,
    r#"{"choices":[{"message":{"content":"a","reasoning":"think"}},{"message":{"reasoning_content":"rc","reasoning":"r"}},{"message":{"role":7}},{"message":"text"},{"message":null}]}"#,
    r#"{"choices":[{"delta":{"reasoning":"think","refusal":"no"}},{"delta":{"reasoning_content":null,"reasoning":"r"}},{"delta":[]}]}"#,
    r#"{"id":"first","id":"second","choices":[{"index":1}],"choices":[{"index":2}],"usage":{"total_tokens":1},"usage":3}"#,
    r#"{"id":"\u0041\n\"q\"","model":"\ud83d\ude00","\u0069d":"escaped-key","choices":[{"message":{"content":"é ü \u00e9"}}]}"#,
    r#"{"choices":[{"logprobs":{"k":{"deep":[[[]]],"n":-0.0,"big":123456789012345678901234567890}},"logprobs":[]}]}"#,
    r#"{"choices":[{"logprobs":{"a":1,"a":2}}]}"#,
    r#"  {}  "#,
    r#"[1]"#,
    r#""just a string""#,
    r#"null"#,
    r#"oops [redacted key]"#,
    r#"{"id":"x""#,
    r#"{"id":"x"} trailing"#,
    r#"{"unknown":"\ud800"}"#,
    r#"{"unknown":[1,2,}"#,
    r#"{"created":1e400}"#,
    r#"{"unknown":1e400}"#,
    r#"{"unknown":-1.0e-400}"#,
    r#"{"unknown":1.5e-99,"id":"x"}"#,
    "",
];

#[test]
fn the_typed_reading_matches_the_value_one_on_the_corpus() {
    fn same<T: PartialEq + std::fmt::Debug>(
        input: &[u8],
        typed: Result<T, GatewayError>,
        oracle: Result<T, GatewayError>,
    ) {
        let text = String::from_utf8_lossy(input);
        match (typed, oracle) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "{text}"),
            (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{text}"),
            (a, b) => panic!("{text}: typed {a:?}, oracle {b:?}"),
        }
    }
    let mut inputs: Vec<Vec<u8>> = CORPUS.iter().map(|s| s.as_bytes().to_vec()).collect();
    inputs.push(b"{\"unknown\":\"\xff\"}".to_vec());
    inputs.push(b"{\"id\":\"\xc3\"}".to_vec());
    inputs.push(b"{\"id\":\"tab\tinside\"}".to_vec());
    for input in &inputs {
        same(input, completion(input), oracle::completion(input));
        same(input, chunk(input), oracle::chunk(input));
    }
}

/// Not only the same message: the same bytes prost writes for it, field for field.
#[test]
fn the_transcoded_bytes_are_the_ones_prost_writes() {
    fn same<M: prost::Message>(input: &[u8], ours: Result<Bytes, GatewayError>, prost: M) {
        let text = String::from_utf8_lossy(input);
        let message = prost.encode_to_vec();
        let mut framed = vec![0];
        framed.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
        framed.extend_from_slice(&message);
        assert_eq!(ours.unwrap(), framed, "{text}");
    }
    let mut written = 0;
    for input in CORPUS.iter().map(|s| s.as_bytes()) {
        if let Ok(message) = oracle::completion(input) {
            same(input, super::completion(input), message);
            written += 1;
        }
        if let Ok(message) = oracle::chunk(input) {
            same(input, framed_chunk(input), message);
        }
    }
    assert!(written > 10, "the corpus has answers to write: {written}");
}

/// A string with escapes is copied, one without is borrowed: both read the same.
#[test]
fn escaped_and_plain_strings_write_alike() {
    let plain = framed_chunk(br#"{"id":"a/b","choices":[{"delta":{"content":"x"}}]}"#).unwrap();
    let escaped =
        framed_chunk(br#"{"id":"a\/b","choices":[{"delta":{"content":"\u0078"}}]}"#).unwrap();
    assert_eq!(plain, escaped);
    let c = pb::ChatCompletionChunk::decode(only_message(&plain)).unwrap();
    assert_eq!(c.id, "a/b");
}

/// Chunks appended to one piece come apart again, in order; a piece cut short ends the split
/// at its last whole message.
#[test]
fn chunks_framed_together_split_in_order() {
    let mut out = BytesMut::new();
    for i in 0..3 {
        let data = format!(r#"{{"id":"c{i}","choices":[{{"delta":{{"content":"t{i}"}}}}]}}"#);
        super::chunk(data.as_bytes(), &mut out).unwrap();
    }
    let framed = out.freeze();
    let ids: Vec<String> = messages(&framed)
        .map(|m| pb::ChatCompletionChunk::decode(m).unwrap().id)
        .collect();
    assert_eq!(ids, ["c0", "c1", "c2"]);
    let cut = framed.slice(..framed.len() - 1);
    assert_eq!(messages(&cut).count(), 2);
    assert_eq!(messages(&Bytes::new()).count(), 0);
}

/// What upstreams send, in the plain shape the quick reading takes on its own: the mock's
/// chunks, OpenAI's (escaped text, tool calls, usage with details, logprobs), vLLM's
/// reasoning, Groq's floats in fields nothing reads, Go servers' `\u003c` escapes.
const PLAIN: &[&str] = &[
    r#"{"id":"chatcmpl-mock","object":"chat.completion.chunk","created":1700000000,"model":"mock-8x0","choices":[{"index":0,"delta":{"role":"assistant","content":"tok0 "},"finish_reason":null}]}"#,
    r#"{"id":"chatcmpl-mock","object":"chat.completion.chunk","created":1700000000,"model":"mock-8x0","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}"#,
    r#"{"id":"chatcmpl-B9","object":"chat.completion.chunk","created":1741570283,"model":"gpt-4o-2024-08-06","service_tier":"default","system_fingerprint":"fp_f9f4fb6dbf","choices":[{"index":0,"delta":{"content":"line one\nline \"two\"\t\\ /"},"logprobs":null,"finish_reason":null}],"obfuscation":"x3"}"#,
    r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":"}}]},"finish_reason":null}]}"#,
    r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0,"list":[true,false,null,"s",-3]}}}"#,
    r#"{"id":"chatcmpl-1","object":"chat.completion","created":1741570283,"model":"gpt-4o","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I help?","refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":7,"total_tokens":16}}"#,
    r#"{"choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"call_9","type":"function","function":{"name":"f","arguments":"{}"}}]},"finish_reason":"tool_calls"}]}"#,
    r#" { "choices" : [ { "delta" : { "reasoning" : "hmm" } , "index" : 1 } ] } "#,
    r#"{"id":"é ü ✓ 😀","choices":[{"delta":{"content":"","refusal":"no"}}],"created":-42}"#,
    r#"{"id":"g","choices":[{"index":0,"delta":{"content":"x"}}],"x_groq":{"id":"req_1","usage":{"queue_time":0.0123,"prompt_time":-1.5E-5,"n":[10e+2,0.0,-0]}}}"#,
    r#"{"id":"o","model":"qwen3","choices":[{"index":0,"delta":{"role":"assistant","content":"\u003cthink\u003e a \u0026 b \ud83d\ude00 \u00e9"}}],"\u0069d":"escaped-key wins"}"#,
    r#"{"id":"l","created":1.7e9,"choices":[{"index":0,"delta":{"content":" world"},"logprobs":{"content":[{"token":" world","logprob":-0.31326166,"bytes":[32,119],"top_logprobs":[{"token":" world","logprob":-0.31326166,"bytes":[32,119]},{"token":" there","logprob":-1.5632617,"bytes":null}]}],"refusal":null},"finish_reason":null}],"usage":{"prompt_tokens_details":{"n":-0,"x":0.1e-2,"y":17976931348623157e292}}}"#,
];

/// serde_json's reading: the message as protobuf bytes, none if the JSON is no object.
type SerdeReading = Result<Option<Vec<u8>>, String>;

/// The quick reading's message (if it reads `input`) and serde_json's, as protobuf bytes.
fn both_readings<'de, T: FromObject<'de> + Proto>(
    input: &'de [u8],
) -> (Option<Vec<u8>>, SerdeReading) {
    fn bytes<T: Proto>(message: &T) -> Vec<u8> {
        let mut out = BytesMut::new();
        message.fields(&mut Put(&mut out));
        out.to_vec()
    }
    let quick = std::str::from_utf8(input)
        .ok()
        .and_then(quick::read::<T>)
        .map(|m| bytes(&m));
    let serde = read_json(input, Any(ObjectOnly::<T>(PhantomData)))
        .map(|m| m.map(|m| bytes(&m)))
        .map_err(|e| e.to_string());
    (quick, serde)
}

/// Whatever the quick reading reads, serde_json reads to the same bytes: on the corpus, and
/// on every input one byte away from it (deleted, replaced or inserted with a byte that
/// matters to JSON), where the quick reading must decline wherever serde_json fails.
#[test]
fn the_quick_reading_is_serde_jsons_on_every_one_byte_change() {
    fn agree(input: &[u8], quick_read: &mut usize) {
        let (quick, serde) = both_readings::<Top<Choice<ToolCallDelta>>>(input);
        let (quick_whole, serde_whole) = both_readings::<Top<Choice<ToolCall>>>(input);
        for (quick, serde) in [(quick, serde), (quick_whole, serde_whole)] {
            if let Some(quick) = quick {
                *quick_read += 1;
                let text = String::from_utf8_lossy(input);
                assert_eq!(serde, Ok(Some(quick)), "{text}");
            }
        }
    }
    const BYTES: &[u8] = b"\"\\{}[],:0-.e n1\t\x01u";
    let mut inputs: Vec<&[u8]> = CORPUS.iter().chain(PLAIN).map(|s| s.as_bytes()).collect();
    inputs.push(b"{\"id\":\"tab\tinside\"}");
    let (mut variants, mut quick_read) = (0, 0);
    for input in inputs {
        agree(input, &mut quick_read);
        for at in 0..=input.len() {
            let mut changed = Vec::with_capacity(input.len() + 1);
            if at < input.len() {
                changed.extend_from_slice(&input[..at]);
                changed.extend_from_slice(&input[at + 1..]);
                agree(&changed, &mut quick_read);
            }
            for &byte in BYTES {
                for replace in [true, false] {
                    if replace && at == input.len() {
                        continue;
                    }
                    changed.clear();
                    changed.extend_from_slice(&input[..at]);
                    changed.push(byte);
                    changed.extend_from_slice(&input[at + usize::from(replace)..]);
                    agree(&changed, &mut quick_read);
                    variants += 1;
                }
            }
        }
    }
    // Not a reading that declines everything: most changes of plain JSON are still plain.
    assert!(quick_read > variants / 10, "{quick_read} of {variants}");
}

/// The quick reading takes what upstreams send by itself, and leaves the odd rest (`\u`
/// escapes, escaped keys, long integers, a number serde_json refuses, deep nesting, what is
/// not JSON) to serde_json.
#[test]
fn the_quick_reading_takes_what_upstreams_send() {
    for input in PLAIN {
        let (quick, serde) = both_readings::<Top<Choice<ToolCallDelta>>>(input.as_bytes());
        assert!(quick.is_some(), "declined: {input}");
        assert_eq!(serde, Ok(quick), "{input}");
        let (quick, serde) = both_readings::<Top<Choice<ToolCall>>>(input.as_bytes());
        assert!(quick.is_some(), "declined: {input}");
        assert_eq!(serde, Ok(quick), "{input}");
    }
    let deep = format!("{{\"x\":{}{}}}", "[".repeat(70), "]".repeat(70));
    let odd = [
        r#"{"id":"\ud800"}"#,
        r#"{"id":"\udc00x"}"#,
        r#"{"id":"\ud83d\u0041"}"#,
        r#"{"unknown":"\ud83dx"}"#,
        r#"{"id":"\u00e"}"#,
        r#"{"created":1234567890123456789}"#,
        r#"{"created":01}"#,
        r#"{"unknown":1e400}"#,
        r#"{"id":"x"} trailing"#,
        r#"[1]"#,
        deep.as_str(),
    ];
    for input in odd {
        let (quick, _) = both_readings::<Top<Choice<ToolCallDelta>>>(input.as_bytes());
        assert!(quick.is_none(), "read: {input}");
    }
    // At the edges: 18 and 19 digits, escaped keys and nesting at the limit in a `Struct`
    // (read or declined, always as serde_json reads them).
    let nested = |levels: usize| {
        // The top object, `choices`, the choice and `logprobs` are four levels.
        let (open, close) = ("[".repeat(levels - 4), "]".repeat(levels - 4));
        format!(r#"{{"choices":[{{"logprobs":{{"k":{open}1{close}}}}}]}}"#)
    };
    let (at_limit, over_limit) = (nested(64), nested(65));
    let edges = [
        r#"{"choices":[{"logprobs":{"a":999999999999999999,"b":-999999999999999999}}]}"#,
        r#"{"choices":[{"logprobs":{"a":1234567890123456789}}]}"#,
        r#"{"choices":[{"logprobs":{"\"k\n":1,"\u0041":2}}]}"#,
        at_limit.as_str(),
        over_limit.as_str(),
    ];
    for input in edges {
        let (quick, serde) = both_readings::<Top<Choice<ToolCallDelta>>>(input.as_bytes());
        if let Some(quick) = quick {
            assert_eq!(serde, Ok(Some(quick)), "{input}");
        }
    }
    let read = |input: &str| both_readings::<Top<Choice<ToolCall>>>(input.as_bytes()).0;
    assert!(read(edges[0]).is_some() && read(&at_limit).is_some());
    assert!(read(edges[1]).is_none() && read(&over_limit).is_none());
    // Still answered, by serde_json, the same as ever.
    let c = chunk(br#"{"id":"\u0041","created":1234567890123456789}"#).unwrap();
    assert_eq!((c.id.as_str(), c.created), ("A", 1_234_567_890_123_456_789));
}

thread_local! {
    /// How many answers this thread's transcoding read the quick way.
    pub(super) static QUICK_READS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The transcoder takes the quick reading whenever it reads, and serde_json's otherwise:
/// both ways answer the same.
#[test]
fn the_transcoder_reads_quick_and_falls_back() {
    let quick_reads = |read: &dyn Fn()| {
        let before = QUICK_READS.with(|n| n.get());
        read();
        QUICK_READS.with(|n| n.get()) - before
    };
    let plain = PLAIN[0].as_bytes();
    assert_eq!(quick_reads(&|| drop(framed_chunk(plain).unwrap())), 1);
    assert_eq!(
        quick_reads(&|| drop(super::completion(PLAIN[5].as_bytes()).unwrap())),
        1
    );
    // The same chunk with one thing the quick reading declines (a lone surrogate in a field
    // nothing reads, which serde_json refuses) and one it reads (a long integer in it).
    let lone = br#"{"id":"c","x":"\ud800"}"#;
    assert_eq!(quick_reads(&|| assert!(framed_chunk(lone).is_err())), 0);
    let long = br#"{"id":"c","created":1234567890123456789}"#;
    assert_eq!(quick_reads(&|| drop(framed_chunk(long).unwrap())), 0);
    // Not UTF-8: serde_json's byte reader, as before.
    assert_eq!(
        quick_reads(&|| assert!(framed_chunk(b"{\"id\":\"\xff\"}").is_err())),
        0
    );
}

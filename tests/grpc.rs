//! gRPC door, chat calls (issue 4): a tonic client generated from `chat.proto` against the real
//! gateway and the mock upstream, over real sockets. Unary and streamed answers, the upstream
//! body equal to the HTTP door's, status codes with their details, deadlines, cancellation.
mod support;

use std::time::Duration;

use megallm_gateway::grpc::pb;
use serde_json::{json, Value};
use support::*;
use tonic::{Code, Status};
use tonic_types::StatusExt;

/// `message` with a `grpc-timeout` header written by hand: tonic's client would also enforce
/// its own `set_timeout` and answer CANCELLED first, hiding what the server does.
fn with_timeout<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let value = format!("{}m", timeout.as_millis());
    request
        .metadata_mut()
        .insert("grpc-timeout", value.parse().unwrap());
    request
}

fn reason(status: &Status) -> String {
    status
        .get_details_error_info()
        .map(|i| i.reason)
        .unwrap_or_default()
}

fn violations(status: &Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

fn finish(reason: &Value) -> i32 {
    (match reason.as_str() {
        None => pb::FinishReason::Unspecified,
        Some("stop") => pb::FinishReason::Stop,
        Some("length") => pb::FinishReason::Length,
        Some(other) => panic!("unexpected finish_reason {other}"),
    }) as i32
}

/// Checks a proto chunk against the JSON text the mock sent for it.
fn assert_chunk_eq(got: &pb::ChatCompletionChunk, sent: &str, i: usize) {
    let want: Value = serde_json::from_str(sent).unwrap();
    assert_eq!(got.id, want["id"], "chunk {i} id");
    assert_eq!(got.object, want["object"], "chunk {i} object");
    assert_eq!(
        got.created,
        want["created"].as_i64().unwrap(),
        "chunk {i} created"
    );
    assert_eq!(got.model, want["model"], "chunk {i} model");
    assert_eq!(got.choices.len(), 1, "chunk {i}");
    let (choice, want_choice) = (&got.choices[0], &want["choices"][0]);
    let delta = choice.delta.as_ref().expect("delta");
    assert_eq!(
        delta.content.as_deref(),
        want_choice["delta"]["content"].as_str(),
        "chunk {i} content"
    );
    assert_eq!(
        delta.role.as_deref(),
        want_choice["delta"]["role"].as_str(),
        "chunk {i} role"
    );
    assert_eq!(
        choice.finish_reason,
        finish(&want_choice["finish_reason"]),
        "chunk {i} finish_reason"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_answer_is_the_upstream_answer() {
    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &["key-a"], |_| {}).await;
    let mut c = grpc_client(&gw).await;

    let mut request = tonic::Request::new(pb::ChatCompletionRequest {
        model: "m1".into(),
        ..hi()
    });
    request
        .metadata_mut()
        .insert("x-request-id", "grpc-req-1".parse().unwrap());
    let response = patient("unary", c.create_chat_completion(request))
        .await
        .expect("OK");
    let metadata = response.metadata().clone();
    let got = response.into_inner();

    let up = mock.chat_requests();
    assert_eq!(up.len(), 1);
    let want: Value = serde_json::from_slice(up[0].reply_body.as_ref().unwrap()).unwrap();
    assert_eq!(got.id, want["id"]);
    assert_eq!(got.object, "chat.completion");
    assert_eq!(got.created, want["created"].as_i64().unwrap());
    assert_eq!(got.model, "m1");
    let message = got.choices[0].message.as_ref().unwrap();
    assert_eq!(message.role, "assistant");
    assert_eq!(
        message.content.as_deref(),
        want["choices"][0]["message"]["content"].as_str()
    );
    assert_eq!(got.choices[0].finish_reason, pb::FinishReason::Stop as i32);
    let usage = got.usage.unwrap();
    assert_eq!(
        [
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.total_tokens
        ]
        .map(u64::from),
        ["prompt_tokens", "completion_tokens", "total_tokens"]
            .map(|k| want["usage"][k].as_u64().unwrap())
    );

    assert_eq!(metadata.get("x-request-id").unwrap(), "grpc-req-1");
    assert_eq!(metadata.get("x-gateway-attempts").unwrap(), "key-1:200");
    assert_eq!(
        up[0].header_values("x-request-id"),
        vec!["grpc-req-1".to_string()]
    );
}

/// A request with every typed field set, and its JSON twin for the HTTP door.
fn full_request() -> (pb::ChatCompletionRequest, Value) {
    use prost_types::value::Kind;
    let num = |n: f64| prost_types::Value {
        kind: Some(Kind::NumberValue(n)),
    };
    let string = |s: &str| prost_types::Value {
        kind: Some(Kind::StringValue(s.into())),
    };
    let object = |fields: Vec<(&str, prost_types::Value)>| prost_types::Struct {
        fields: fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
    };
    let parameters = object(vec![
        ("type", string("object")),
        (
            "properties",
            prost_types::Value {
                kind: Some(Kind::StructValue(object(vec![(
                    "city",
                    prost_types::Value {
                        kind: Some(Kind::StructValue(object(vec![("type", string("string"))]))),
                    },
                )]))),
            },
        ),
    ]);
    let image = pb::ContentPart {
        part: Some(pb::content_part::Part::ImageUrl(pb::ImageUrl {
            url: "https://example.com/a.png".into(),
            detail: Some("low".into()),
        })),
    };
    let proto = pb::ChatCompletionRequest {
        model: "m-full".into(),
        messages: vec![
            text("system", "be brief"),
            pb::Message {
                content: vec![text("user", "what is this?").content[0].clone(), image],
                ..text("user", "")
            },
            pb::Message {
                role: "assistant".into(),
                tool_calls: vec![pb::ToolCall {
                    id: "call_1".into(),
                    r#type: "function".into(),
                    function: Some(pb::FunctionCall {
                        name: "weather".into(),
                        arguments: "{\"city\":\"Oslo\"}".into(),
                    }),
                }],
                ..Default::default()
            },
            pb::Message {
                tool_call_id: Some("call_1".into()),
                name: Some("weather".into()),
                ..text("tool", "rainy")
            },
        ],
        temperature: Some(0.25),
        top_p: Some(0.5),
        n: Some(2),
        max_tokens: Some(64),
        presence_penalty: Some(-0.5),
        frequency_penalty: Some(1.5),
        stop: vec!["END".into(), "STOP".into()],
        seed: Some(42),
        user: Some("u-7".into()),
        tools: vec![pb::Tool {
            r#type: "function".into(),
            function: Some(pb::FunctionDefinition {
                name: "weather".into(),
                description: Some("the weather".into()),
                parameters: Some(parameters),
                strict: Some(true),
            }),
        }],
        tool_choice: Some(pb::ToolChoice {
            choice: Some(pb::tool_choice::Choice::Mode(
                pb::ToolChoiceMode::Auto as i32,
            )),
        }),
        parallel_tool_calls: Some(false),
        response_format: Some(pb::ResponseFormat {
            r#type: pb::ResponseFormatType::JsonObject as i32,
            json_schema: None,
        }),
        stream_options: None,
        extra_body: Some(object(vec![
            ("top_logprobs", num(3.0)),
            (
                "logprobs",
                prost_types::Value {
                    kind: Some(Kind::BoolValue(true)),
                },
            ),
            // Typed fields win over extra_body.
            ("temperature", num(1.75)),
        ])),
        max_completion_tokens: None,
    };
    let http = json!({
        "model": "m-full",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "low"}}
            ]},
            {"role": "assistant", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}}
            ]},
            {"role": "tool", "content": "rainy", "name": "weather", "tool_call_id": "call_1"}
        ],
        "temperature": 0.25, "top_p": 0.5, "n": 2, "max_tokens": 64,
        "presence_penalty": -0.5, "frequency_penalty": 1.5,
        "stop": ["END", "STOP"], "seed": 42, "user": "u-7",
        "tools": [{"type": "function", "function": {
            "name": "weather", "description": "the weather", "strict": true,
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}
        }}],
        "tool_choice": "auto", "parallel_tool_calls": false,
        "response_format": {"type": "json_object"},
        "top_logprobs": 3, "logprobs": true
    });
    (proto, http)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_sees_the_same_body_as_from_the_http_door() {
    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &["key-a"], |_| {}).await;
    let mut c = grpc_client(&gw).await;

    // Defaults: no model named → the default model, and nothing the client did not set.
    patient("unary", c.create_chat_completion(hi()))
        .await
        .expect("OK");
    assert_eq!(gw.http.chat(&chat_body()).await.status, 200);
    let up = mock.chat_requests();
    assert_eq!(
        up[0].json, up[1].json,
        "gRPC and HTTP upstream bodies differ"
    );
    assert_eq!(up[0].json.as_ref().unwrap()["model"], "openai-gpt-oss-120b");
    assert_eq!(
        up[0].json.as_ref().unwrap().as_object().unwrap().len(),
        2,
        "{:?}",
        up[0].json
    );

    // Every typed field, unary.
    let (proto, http) = full_request();
    patient("unary", c.create_chat_completion(proto.clone()))
        .await
        .expect("OK");
    assert_eq!(gw.http.chat(&http).await.status, 200);
    let up = mock.chat_requests();
    assert_eq!(
        up[2].json.as_ref().unwrap(),
        &http,
        "gRPC upstream body differs from the HTTP request"
    );
    assert_eq!(up[2].json, up[3].json);

    // Streamed: `stream: true` and stream_options, as the HTTP client would send them.
    let proto = pb::ChatCompletionRequest {
        stream_options: Some(pb::StreamOptions {
            include_usage: Some(true),
        }),
        ..proto
    };
    let mut stream = patient("stream", c.stream_chat_completion(proto))
        .await
        .expect("OK")
        .into_inner();
    while patient("chunk", stream.message())
        .await
        .expect("chunk")
        .is_some()
    {}
    let mut http = http;
    http["stream"] = json!(true);
    http["stream_options"] = json!({"include_usage": true});
    let sse = gw.http.chat_stream(&http).await.collect().await;
    assert_eq!(sse.end, StreamEnd::Clean);
    let up = mock.chat_requests();
    assert_eq!(up[4].json.as_ref().unwrap(), &http);
    assert_eq!(up[4].json, up[5].json);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_relays_each_chunk_in_order_then_ok_with_trailers() {
    let mock = MockUpstream::start().await;
    mock.set_chat("key-a", Reply::ok().chunks(6));
    let gw = spawn_gateway(&mock, &["key-a"], |_| {}).await;
    let mut c = grpc_client(&gw).await;

    let response = patient("stream", c.stream_chat_completion(hi()))
        .await
        .expect("OK");
    assert_eq!(
        response.metadata().get("x-gateway-attempts").unwrap(),
        "key-1:200"
    );
    let mut stream = response.into_inner();
    let mut got = Vec::new();
    while let Some(chunk) = patient("chunk", stream.message())
        .await
        .expect("no error status")
    {
        got.push(chunk);
    }
    let trailers = patient("trailers", stream.trailers())
        .await
        .expect("trailers")
        .expect("some trailers");
    assert_eq!(trailers.get("x-gateway-attempts").unwrap(), "key-1:200");

    let seq = mock.chat_requests()[0].seq;
    let sent = mock.sent_chunks(seq);
    assert_eq!(sent.len(), 6);
    assert_eq!(got.len(), 6, "one message per upstream chunk");
    for (i, (got, sent)) in got.iter().zip(&sent).enumerate() {
        assert_chunk_eq(got, sent, i);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_chunk_arrives_while_the_upstream_holds_the_next() {
    let mock = MockUpstream::start().await;
    let gate = Gate::new();
    mock.set_chat("key-a", Reply::ok().chunks(3).hold_after(1, &gate));
    let gw = spawn_gateway(&mock, &["key-a"], |_| {}).await;
    let mut c = grpc_client(&gw).await;

    let mut stream = patient("stream", c.stream_chat_completion(hi()))
        .await
        .expect("OK")
        .into_inner();
    // The mock sends chunk 2 only once the gate opens: a buffering door never gets here.
    let first = patient("first chunk", stream.message())
        .await
        .expect("OK")
        .expect("a chunk");
    let seq = mock.chat_requests()[0].seq;
    assert_eq!(
        mock.sent_chunks(seq).len(),
        1,
        "the mock is still holding chunk 2"
    );
    assert_chunk_eq(&first, &mock.sent_chunks(seq)[0], 0);

    gate.open();
    let mut rest = Vec::new();
    while let Some(chunk) = patient("chunk", stream.message()).await.expect("OK") {
        rest.push(chunk);
    }
    let sent = mock.sent_chunks(seq);
    assert_eq!(rest.len(), 2);
    assert_chunk_eq(&rest[0], &sent[1], 1);
    assert_chunk_eq(&rest[1], &sent[2], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_break_mid_stream_ends_with_an_error_after_the_chunks() {
    let mock = MockUpstream::start().await;
    mock.set_chat("key-a", Reply::ok().chunks(5).break_after(2));
    let gw = spawn_gateway(&mock, &["key-a"], |_| {}).await;
    let mut c = grpc_client(&gw).await;

    let mut stream = patient("stream", c.stream_chat_completion(hi()))
        .await
        .expect("OK")
        .into_inner();
    let mut got = Vec::new();
    let status = loop {
        match patient("chunk", stream.message()).await {
            Ok(Some(chunk)) => got.push(chunk),
            Ok(None) => panic!("stream ended OK after {} chunks; want an error", got.len()),
            Err(status) => break status,
        }
    };
    assert_eq!(got.len(), 2);
    let sent = mock.sent_chunks(mock.chat_requests()[0].seq);
    assert_chunk_eq(&got[0], &sent[0], 0);
    assert_chunk_eq(&got[1], &sent[1], 1);
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(reason(&status), "UPSTREAM_STREAM_BROKEN");
    assert!(status.get_details_request_info().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_stream_closes_the_upstream_connection() {
    let mock = MockUpstream::start().await;
    let gate = Gate::new();
    mock.set_chat("key-a", Reply::ok().chunks(3).hold_after(1, &gate));
    let gw = spawn_gateway(&mock, &["key-a"], |_| {}).await;
    let mut c = grpc_client(&gw).await;

    let mut stream = patient("stream", c.stream_chat_completion(hi()))
        .await
        .expect("OK")
        .into_inner();
    patient("first chunk", stream.message())
        .await
        .expect("OK")
        .expect("a chunk");
    assert_eq!(mock.disconnects(), 0);
    drop(stream);
    assert!(
        mock.wait_disconnected(PATIENCE).await,
        "the upstream stream was not dropped"
    );
    gate.open();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_models_is_the_upstream_list() {
    let mock = MockUpstream::start().await;
    mock.set_model_ids(&["alpha", "beta"]);
    let gw = spawn_gateway(&mock, &["key-a"], |_| {}).await;
    let mut c = grpc_client(&gw).await;
    let list = patient("models", c.list_models(pb::ListModelsRequest {}))
        .await
        .expect("OK")
        .into_inner();
    let ids: Vec<_> = list.data.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["alpha", "beta"]);
    assert_eq!(list.data[0].owned_by, "mock");
    assert_eq!(list.data[0].created, 1_700_000_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_invalid_field_is_invalid_argument_naming_it() {
    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &["key-a"], |_| {}).await;
    let mut c = grpc_client(&gw).await;
    let no_part = pb::ContentPart { part: None };
    let cases: Vec<(&str, pb::ChatCompletionRequest)> = vec![
        ("messages", pb::ChatCompletionRequest::default()),
        (
            "messages[0].role",
            pb::ChatCompletionRequest {
                messages: vec![text("", "x")],
                ..hi()
            },
        ),
        (
            "messages[0].content[1]",
            pb::ChatCompletionRequest {
                messages: vec![pb::Message {
                    content: vec![text("user", "x").content[0].clone(), no_part],
                    ..text("user", "")
                }],
                ..hi()
            },
        ),
        (
            "temperature",
            pb::ChatCompletionRequest {
                temperature: Some(2.5),
                ..hi()
            },
        ),
        (
            "temperature",
            pb::ChatCompletionRequest {
                temperature: Some(f64::INFINITY),
                ..hi()
            },
        ),
        (
            "top_p",
            pb::ChatCompletionRequest {
                top_p: Some(1.5),
                ..hi()
            },
        ),
        ("n", pb::ChatCompletionRequest { n: Some(0), ..hi() }),
        (
            "n",
            pb::ChatCompletionRequest {
                n: Some(11),
                ..hi()
            },
        ),
        (
            "max_tokens",
            pb::ChatCompletionRequest {
                max_tokens: Some(0),
                ..hi()
            },
        ),
        (
            "max_completion_tokens",
            pb::ChatCompletionRequest {
                max_completion_tokens: Some(-1),
                ..hi()
            },
        ),
        (
            "presence_penalty",
            pb::ChatCompletionRequest {
                presence_penalty: Some(2.5),
                ..hi()
            },
        ),
        (
            "frequency_penalty",
            pb::ChatCompletionRequest {
                frequency_penalty: Some(-3.0),
                ..hi()
            },
        ),
        (
            "tool_choice.mode",
            pb::ChatCompletionRequest {
                tool_choice: Some(pb::ToolChoice {
                    choice: Some(pb::tool_choice::Choice::Mode(99)),
                }),
                ..hi()
            },
        ),
    ];
    for (field, request) in cases {
        for streamed in [false, true] {
            let status = if streamed {
                patient(field, c.stream_chat_completion(request.clone()))
                    .await
                    .map(|_| ())
                    .unwrap_err()
            } else {
                patient(field, c.create_chat_completion(request.clone()))
                    .await
                    .map(|_| ())
                    .unwrap_err()
            };
            assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
            assert_eq!(
                violations(&status),
                [field],
                "{field} (streamed: {streamed})"
            );
            assert_eq!(
                status.get_details_error_info().unwrap().domain,
                "megallm-gateway"
            );
            assert!(status
                .get_details_request_info()
                .is_some_and(|r| !r.request_id.is_empty()));
        }
    }
    assert_eq!(
        mock.chat_count(),
        0,
        "an invalid request reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_tokens_are_checked_on_authorization_metadata() {
    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &["key-a"], |s| {
        s.auth_tokens = vec![Secret::new("tok-1".into())]
    })
    .await;
    let mut c = grpc_client(&gw).await;
    let status = patient("no token", c.create_chat_completion(hi()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = patient("no token", c.list_models(pb::ListModelsRequest {}))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    let mut request = tonic::Request::new(hi());
    request
        .metadata_mut()
        .insert("authorization", "Bearer tok-1".parse().unwrap());
    patient("token", c.create_chat_completion(request))
        .await
        .expect("OK with the token");
    // The client's token is never forwarded: the upstream sees the pool key.
    assert_eq!(mock.chat_requests()[0].key.as_deref(), Some("key-a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_errors_map_by_code_proto() {
    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &["key-a", "key-b"], |_| {}).await;
    let mut c = grpc_client(&gw).await;

    // The request's own fault (400), passed through as INVALID_ARGUMENT on the first key.
    mock.push_chat_once("key-a", Reply::error(400, "bad tool schema"));
    mock.push_chat_once("key-b", Reply::error(400, "bad tool schema"));
    let status = patient("400", c.create_chat_completion(hi()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("bad tool schema"));
    assert_eq!(
        status
            .metadata()
            .get("x-gateway-attempts")
            .unwrap()
            .to_str()
            .unwrap()
            .split(',')
            .count(),
        1
    );
    mock.clear("key-a");
    mock.clear("key-b");

    // Every key rate limited: RESOURCE_EXHAUSTED with RetryInfo.
    mock.set_chat("key-a", Reply::rate_limited(7));
    mock.set_chat("key-b", Reply::rate_limited(7));
    let status = patient("429", c.create_chat_completion(hi()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let wait = status
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .expect("RetryInfo");
    assert!(
        wait > Duration::ZERO && wait <= Duration::from_secs(7),
        "{wait:?}"
    );
    let trail = status
        .metadata()
        .get("x-gateway-attempts")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(parse_attempts(&trail).len(), 2, "{trail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_401_is_unavailable_never_unauthenticated() {
    let mock = MockUpstream::start().await;
    mock.set(
        "key-a",
        Reply::error(401, "Incorrect API key provided: key-a"),
    );
    mock.set(
        "key-b",
        Reply::error(401, "Incorrect API key provided: key-b"),
    );
    // Each call meets a fresh key's 401 (not a pool already known to be empty).
    let gw = spawn_gateway(&mock, &["key-a", "key-b"], |s| s.max_attempts = 1).await;
    let mut c = grpc_client(&gw).await;
    let status = patient("401", c.stream_chat_completion(hi()))
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let status = patient("401", c.create_chat_completion(hi()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(mock.chat_count(), 2, "each call reached a key's 401");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_message_that_echoes_a_key_is_masked() {
    let mock = MockUpstream::start().await;
    mock.set(
        "key-secret-abcdef",
        Reply::error(400, "bad request for key-secret-abcdef"),
    );
    let gw = spawn_gateway(&mock, &["key-secret-abcdef"], |_| {}).await;
    let mut c = grpc_client(&gw).await;
    let status = patient("400", c.create_chat_completion(hi()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().starts_with("bad request for"),
        "{status:?}"
    );
    assert!(
        !format!("{status:?}").contains("secret-abcdef"),
        "the key leaked: {status:?}"
    );
}

/// `CreateChatCompletion(hi())` as a raw h2c call with a `grpc-timeout` header: tonic's own
/// client enforces the timeout too and would answer CANCELLED before the server does, hiding
/// what the server does.
async fn unary_with_grpc_timeout(gw: &TestGateway, timeout: &str) -> HttpResponse {
    let headers = [
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("grpc-timeout", timeout),
    ];
    HttpClient::new_h2c(gw.addr)
        .post_raw(
            "/megallm.v1.ChatService/CreateChatCompletion",
            &headers,
            frame(&hi()),
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_deadline_is_deadline_exceeded_and_drops_the_upstream_call() {
    let mock = MockUpstream::start().await;
    mock.set_chat("key-a", Reply::ok().delay(Duration::from_secs(8)));
    let gw = spawn_gateway(&mock, &["key-a"], |_| {}).await;

    let started = std::time::Instant::now();
    let response = unary_with_grpc_timeout(&gw, "1500m").await;
    assert_eq!(response.status, 200);
    // An error before any message is a trailers-only answer: the status is in the headers.
    assert_eq!(
        response.header("grpc-status").as_deref(),
        Some("4"),
        "{:?}",
        response.headers
    );
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "took {:?}",
        started.elapsed()
    );
    let status = Status::from_header_map(&response.headers).expect("a status");
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert_eq!(reason(&status), "DEADLINE_EXCEEDED");
    // The mock's handler is dropped once the gateway drops the connection, long before its
    // 8 s delay would end.
    assert!(mock.wait_chat_count(1, Duration::from_secs(5)).await);
    assert!(
        mock.wait_disconnected(Duration::from_secs(6)).await,
        "the upstream call was not dropped"
    );
    assert_eq!(
        mock.chat_requests()[0].status,
        None,
        "the mock answered: the call was not dropped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_deadline_cuts_the_stream_and_the_upstream() {
    let mock = MockUpstream::start().await;
    mock.set_chat(
        "key-a",
        Reply::ok()
            .chunks(3)
            .pause_after(1, Duration::from_secs(10)),
    );
    let gw = spawn_gateway(&mock, &["key-a"], |_| {}).await;
    let mut c = grpc_client(&gw).await;

    let started = std::time::Instant::now();
    let request = with_timeout(hi(), Duration::from_millis(1500));
    let mut stream = patient("stream", c.stream_chat_completion(request))
        .await
        .expect("OK")
        .into_inner();
    patient("first", stream.message())
        .await
        .expect("OK")
        .expect("first chunk");
    let status = patient("deadline", stream.message()).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        mock.wait_disconnected(PATIENCE).await,
        "the upstream stream was not dropped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_that_ends_while_queued_for_a_key_is_deadline_exceeded() {
    let mock = MockUpstream::start().await;
    let hold = Gate::new();
    mock.set_default_chat(Reply::ok().hold_after(1, &hold));
    let gw = spawn_gateway(&mock, &[], |s| {
        s.keys =
            vec![megallm_gateway::config::KeySpec::parse("key-solo max_concurrent=1").unwrap()];
        s.scheduler.queue_timeout = Duration::from_secs(30);
    })
    .await;
    // The one slot is held by a stream the mock keeps open.
    let mut c = grpc_client(&gw).await;
    let mut held = patient("stream", c.stream_chat_completion(hi()))
        .await
        .expect("OK")
        .into_inner();
    assert!(patient("first chunk", held.message())
        .await
        .unwrap()
        .is_some());

    let response = unary_with_grpc_timeout(&gw, "700m").await;
    let status = Status::from_header_map(&response.headers).expect("a status");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(
        mock.chat_count(),
        1,
        "the queued call never reached the upstream"
    );
    hold.open();
}

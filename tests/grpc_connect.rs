//! The Connect protocol on `megallm.v1.ChatService` (issue 13 part 3): plain HTTP requests as
//! a Connect client sends them, against the real gateway and the mock upstream. Unary JSON and
//! proto, server streaming (enveloped messages and the end-of-stream message) in both codecs,
//! Connect's error JSON and HTTP statuses, the gateway token, `Connect-Timeout-Ms`.
mod support;

use std::time::Duration;

use megallm_gateway::config::Secret;
use megallm_gateway::grpc::pb;
use prost::Message;
use serde_json::{json, Value};
use support::*;

const CREATE: &str = "/megallm.v1.ChatService/CreateChatCompletion";
const STREAM: &str = "/megallm.v1.ChatService/StreamChatCompletion";
const MODELS: &str = "/megallm.v1.ChatService/ListModels";

const JSON: &[(&str, &str)] = &[
    ("content-type", "application/json"),
    ("connect-protocol-version", "1"),
];

fn hi_json() -> Value {
    json!({"model": "m1", "messages": [{"role": "user", "content": [{"text": "hi"}]}]})
}

/// The enveloped messages of a streaming answer: every data message, then the end-of-stream
/// message (asserted last and alone) as JSON.
fn split_stream(body: &[u8]) -> (Vec<Vec<u8>>, Value) {
    let mut frames = frames(body);
    let (flag, end) = frames.pop().expect("an end-of-stream message");
    assert_eq!(flag, 0x02, "the last envelope is the end of the stream");
    assert!(
        frames.iter().all(|(flag, _)| *flag == 0),
        "data envelopes carry flag 0"
    );
    let end: Value = serde_json::from_slice(&end).expect("end-of-stream JSON");
    (frames.into_iter().map(|(_, p)| p).collect(), end)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_json_is_the_proto3_json_mapping() {
    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &["key-a"], |_| {}).await;

    // The original proto field name (`max_tokens`) is accepted beside the camelCase one.
    let mut body = hi_json();
    body["max_tokens"] = json!(7);
    body["topP"] = json!(0.5);
    let response = gw
        .http
        .post_raw(CREATE, JSON, body.to_string().into_bytes())
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        response.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(response.attempts().as_deref(), Some("key-1:200"));
    let got = response.json();

    let up = mock.chat_requests();
    assert_eq!(up.len(), 1);
    let sent = up[0].json.as_ref().unwrap();
    assert_eq!(sent["max_tokens"], 7);
    assert_eq!(sent["top_p"], 0.5);
    assert_eq!(sent["messages"][0]["content"], "hi");
    let want: Value = serde_json::from_slice(up[0].reply_body.as_ref().unwrap()).unwrap();
    assert_eq!(got["id"], want["id"]);
    assert_eq!(got["model"], "m1");
    // int64 as a string, camelCase names, enums by name: the proto3 JSON mapping.
    assert_eq!(
        got["created"],
        want["created"].as_i64().unwrap().to_string()
    );
    assert_eq!(got["choices"][0]["finishReason"], "FINISH_REASON_STOP");
    assert_eq!(
        got["choices"][0]["message"]["content"],
        want["choices"][0]["message"]["content"]
    );
    assert_eq!(
        got["usage"]["totalTokens"],
        want["usage"]["total_tokens"].as_u64().unwrap()
    );

    // ListModels with an empty JSON body.
    let models = gw.http.post_raw(MODELS, JSON, "{}").await;
    assert_eq!(models.status, 200, "{}", models.text());
    assert!(models.json()["data"]
        .as_array()
        .is_some_and(|d| !d.is_empty()));
    assert!(models.header("x-gateway-models-source").is_some());
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_proto_over_h2c() {
    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &["key-a"], |_| {}).await;
    let h2 = HttpClient::new_h2c(gw.addr);
    let request = pb::ChatCompletionRequest {
        model: "m1".into(),
        ..hi()
    };
    let response = h2
        .post_raw(
            CREATE,
            &[("content-type", "application/proto")],
            request.encode_to_vec(),
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        response.header("content-type").as_deref(),
        Some("application/proto")
    );
    let got = pb::ChatCompletion::decode(response.body.clone()).expect("a ChatCompletion");
    let up = mock.chat_requests();
    let want: Value = serde_json::from_slice(up[0].reply_body.as_ref().unwrap()).unwrap();
    assert_eq!(got.id, want["id"]);
    assert_eq!(got.choices[0].finish_reason, pb::FinishReason::Stop as i32);
    assert_eq!(
        got.choices[0].message.as_ref().unwrap().content.as_deref(),
        want["choices"][0]["message"]["content"].as_str()
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_json_is_enveloped_with_an_end_of_stream() {
    let mock = MockUpstream::start().await;
    mock.set_chat("key-a", Reply::ok().chunks(3));
    let gw = spawn_gateway(&mock, &["key-a"], |_| {}).await;
    let response = gw
        .http
        .post_raw(
            STREAM,
            &[("content-type", "application/connect+json")],
            frame_bytes(hi_json().to_string().as_bytes()),
        )
        .await;
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("content-type").as_deref(),
        Some("application/connect+json")
    );
    let (messages, end) = split_stream(&response.body);
    let sent = mock.sent_chunks(0);
    assert_eq!(messages.len(), sent.len(), "one message per upstream chunk");
    for (got, sent) in messages.iter().zip(&sent) {
        let got: Value = serde_json::from_slice(got).unwrap();
        let sent: Value = serde_json::from_str(sent).unwrap();
        assert_eq!(got["id"], sent["id"]);
        assert_eq!(got["object"], "chat.completion.chunk");
        assert_eq!(
            got["choices"][0]["delta"]["content"].as_str().unwrap_or(""),
            sent["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap_or("")
        );
    }
    assert!(end.get("error").is_none(), "{end}");
    assert_eq!(end["metadata"]["x-gateway-attempts"], json!(["key-1:200"]));
    assert!(mock.chat_requests()[0].is_stream());
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_proto_over_h2c() {
    let mock = MockUpstream::start().await;
    mock.set_chat("key-a", Reply::ok().chunks(2));
    let gw = spawn_gateway(&mock, &["key-a"], |_| {}).await;
    let h2 = HttpClient::new_h2c(gw.addr);
    let response = h2
        .post_raw(
            STREAM,
            &[
                ("content-type", "application/connect+proto"),
                ("connect-protocol-version", "1"),
            ],
            frame(&hi()),
        )
        .await;
    assert_eq!(response.status, 200);
    let (messages, end) = split_stream(&response.body);
    let sent = mock.sent_chunks(0);
    assert_eq!(messages.len(), sent.len());
    for (got, sent) in messages.iter().zip(&sent) {
        let got = pb::ChatCompletionChunk::decode(&got[..]).expect("a chunk");
        let sent: Value = serde_json::from_str(sent).unwrap();
        assert_eq!(got.id, sent["id"]);
    }
    assert!(end.get("error").is_none(), "{end}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_argument_is_connect_error_json() {
    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &["key-a"], |_| {}).await;

    // Unary: no messages → 400 with Connect's error JSON and the gRPC door's details.
    let response = gw.http.post_raw(CREATE, JSON, r#"{"model":"m1"}"#).await;
    assert_eq!(response.status, 400, "{}", response.text());
    assert_eq!(
        response.header("content-type").as_deref(),
        Some("application/json")
    );
    let error = response.json();
    assert_eq!(error["code"], "invalid_argument");
    assert!(error["message"].as_str().unwrap().contains("messages"));
    let types: Vec<&str> = error["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["type"].as_str().unwrap())
        .collect();
    assert!(types.contains(&"google.rpc.BadRequest"), "{types:?}");
    assert!(types.contains(&"google.rpc.ErrorInfo"), "{types:?}");

    // JSON that is not the message's mapping (a number for a string) is invalid_argument too.
    let response = gw
        .http
        .post_raw(CREATE, JSON, r#"{"model": 5, "messages": []}"#)
        .await;
    assert_eq!(response.status, 400);
    assert_eq!(response.json()["code"], "invalid_argument");

    // A stream: HTTP 200, only the end-of-stream message, with the error.
    let response = gw
        .http
        .post_raw(
            STREAM,
            &[("content-type", "application/connect+json")],
            frame_bytes(br#"{"model":"m1"}"#),
        )
        .await;
    assert_eq!(response.status, 200);
    let (messages, end) = split_stream(&response.body);
    assert!(messages.is_empty());
    assert_eq!(end["error"]["code"], "invalid_argument", "{end}");
    assert!(end["error"]["message"]
        .as_str()
        .unwrap()
        .contains("messages"));

    // A streaming body that is no envelope.
    let response = gw
        .http
        .post_raw(
            STREAM,
            &[("content-type", "application/connect+json")],
            "{}",
        )
        .await;
    let (_, end) = split_stream(&response.body);
    assert_eq!(end["error"]["code"], "invalid_argument", "{end}");
    assert_eq!(mock.chat_count(), 0, "nothing reached the upstream");

    // Other content types on the gRPC paths are still 415 (OpenAI JSON), and Connect content
    // types on the gRPC-only services too.
    let response = gw
        .http
        .post_raw(CREATE, &[("content-type", "text/plain")], "x")
        .await;
    assert_eq!(response.status, 415);
    let response = gw
        .http
        .post_raw("/grpc.health.v1.Health/Check", JSON, "{}")
        .await;
    assert_eq!(response.status, 415);
    // An unknown method of the service: unimplemented, 501.
    let response = gw
        .http
        .post_raw("/megallm.v1.ChatService/Nope", JSON, "{}")
        .await;
    assert_eq!(response.status, 501);
    assert_eq!(response.json()["code"], "unimplemented");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_without_the_gateway_token() {
    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &["key-a"], |s| {
        s.auth_tokens = vec![Secret::new("tok-1".into())];
    })
    .await;
    let body = hi_json().to_string();
    let response = gw.http.post_raw(CREATE, JSON, body.clone()).await;
    assert_eq!(response.status, 401, "{}", response.text());
    assert_eq!(response.json()["code"], "unauthenticated");

    let response = gw
        .http
        .post_raw(
            STREAM,
            &[("content-type", "application/connect+json")],
            frame_bytes(body.as_bytes()),
        )
        .await;
    let (_, end) = split_stream(&response.body);
    assert_eq!(end["error"]["code"], "unauthenticated", "{end}");

    let response = gw
        .http
        .post_raw(
            CREATE,
            &[
                ("content-type", "application/json"),
                ("authorization", "Bearer tok-1"),
            ],
            body,
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(mock.chat_count(), 1);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_ms_is_the_deadline() {
    let mock = MockUpstream::start().await;
    mock.set_chat("key-a", Reply::ok().delay(Duration::from_secs(8)));
    let gw = spawn_gateway(&mock, &["key-a"], |_| {}).await;
    let started = std::time::Instant::now();
    let response = gw
        .http
        .post_raw(
            CREATE,
            &[
                ("content-type", "application/json"),
                ("connect-timeout-ms", "1000"),
            ],
            hi_json().to_string(),
        )
        .await;
    assert_eq!(response.status, 504, "{}", response.text());
    assert_eq!(response.json()["code"], "deadline_exceeded");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "took {:?}",
        started.elapsed()
    );
    gw.shutdown().await;
}

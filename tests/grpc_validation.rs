//! gRPC door, malformed input (issue 8, item 5): requests the core refuses are
//! INVALID_ARGUMENT with a BadRequest naming the field; malformed protobuf and a second request
//! message are INVALID_ARGUMENT; a non-gRPC content type is HTTP 415; metadata over the
//! gateway's limit is RESOURCE_EXHAUSTED. None of them reaches the upstream.
mod support;

use megallm_gateway::grpc::pb;
use prost::Message;
use support::*;
use tonic::Code;
use tonic_types::StatusExt;

const UNARY: &str = "/megallm.v1.ChatService/CreateChatCompletion";
const STREAM: &str = "/megallm.v1.ChatService/StreamChatCompletion";
const GRPC: [(&str, &str); 2] = [("content-type", "application/grpc"), ("te", "trailers")];

/// The `grpc-status` of a trailers-only answer (the status rides in the headers).
fn grpc_status(resp: &HttpResponse) -> Option<String> {
    resp.header("grpc-status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_invalid_argument_naming_the_field() {
    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &["k"], |_| {}).await;
    let mut chat = grpc_client(&gw).await;
    let cases = [
        (
            pb::ChatCompletionRequest {
                messages: vec![text("wizard", "hi")],
                ..Default::default()
            },
            "messages[0].role",
        ),
        (
            pb::ChatCompletionRequest {
                messages: vec![pb::Message {
                    role: "user".into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
            "messages[0].content",
        ),
        (
            pb::ChatCompletionRequest {
                messages: vec![text("user", "hi"), text("tool", "result")],
                ..Default::default()
            },
            "messages[1].tool_call_id",
        ),
        (
            pb::ChatCompletionRequest {
                stop: ["a", "b", "c", "d", "e"].map(String::from).to_vec(),
                ..hi()
            },
            "stop",
        ),
        (
            pb::ChatCompletionRequest {
                tools: vec![pb::Tool {
                    r#type: "retrieval".into(),
                    function: Some(pb::FunctionDefinition {
                        name: "f".into(),
                        ..Default::default()
                    }),
                }],
                ..hi()
            },
            "tools[0].type",
        ),
    ];
    for (request, field) in cases {
        let status = chat
            .create_chat_completion(request.clone())
            .await
            .expect_err(field);
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        let violations: Vec<String> = status
            .get_details_bad_request()
            .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
            .unwrap_or_default();
        assert_eq!(violations, [field], "{status:?}");
        let status = chat.stream_chat_completion(request).await.expect_err(field);
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
    }
    assert_eq!(
        mock.chat_count(),
        0,
        "an invalid request reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_protobuf_is_invalid_argument() {
    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &["k"], |_| {}).await;
    let h2 = HttpClient::new_h2c(gw.addr);
    // Field 2 (messages) as a length-delimited field claiming 100 bytes, then 2 bytes; and a
    // field with wire type 7, which does not exist.
    for garbage in [&[0x12u8, 100, 1, 2][..], &[0x0f, 0x01]] {
        for path in [UNARY, STREAM] {
            let resp = h2.post_raw(path, &GRPC, frame_bytes(garbage)).await;
            assert_eq!(resp.status, 200, "{}", resp.text());
            assert_eq!(
                grpc_status(&resp).as_deref(),
                Some("3"),
                "{path} {garbage:?}: {:?}",
                resp.headers
            );
        }
    }
    assert_eq!(mock.chat_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_request_message_is_refused() {
    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &["k"], |_| {}).await;
    let h2 = HttpClient::new_h2c(gw.addr);
    let one = frame_bytes(&hi().encode_to_vec());
    let two = [one.clone(), one.clone()].concat();
    for path in [UNARY, STREAM] {
        let resp = h2.post_raw(path, &GRPC, two.clone()).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(
            grpc_status(&resp).as_deref(),
            Some("3"),
            "{path}: {:?}",
            resp.headers
        );
    }
    assert_eq!(
        mock.chat_count(),
        0,
        "a two-message call reached the upstream"
    );

    // One message is a call like any other.
    let resp = h2.post_raw(UNARY, &GRPC, one).await;
    assert_eq!(resp.status, 200);
    assert!(
        grpc_status(&resp).is_none_or(|s| s == "0"),
        "{:?}",
        resp.headers
    );
    assert_eq!(mock.chat_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_grpc_content_types_are_415() {
    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &["k"], |_| {}).await;
    let json = chat_body().to_string();
    let proto = frame_bytes(&hi().encode_to_vec());
    for client in [HttpClient::new_h2c(gw.addr), gw.http.clone()] {
        for (content_type, body) in [
            // `application/json` is Connect's unary JSON now (tests/grpc_connect.rs).
            (Some("text/plain"), json.as_bytes().to_vec()),
            (Some("application/x-protobuf"), proto.clone()),
            (None, proto.clone()),
        ] {
            let headers: Vec<(&str, &str)> = content_type
                .map(|c| ("content-type", c))
                .into_iter()
                .collect();
            let resp = client.post_raw(UNARY, &headers, body).await;
            let error = resp.assert_openai_error(415, None);
            assert!(
                error["message"]
                    .as_str()
                    .unwrap()
                    .contains("application/grpc"),
                "{error}"
            );
        }
    }
    assert_eq!(mock.chat_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_over_the_limit_is_resource_exhausted() {
    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &["k"], |_| {}).await;
    let mut chat = grpc_client(&gw).await;
    // Over the gateway's 16 KiB, under the listener's HTTP/2 header list limit (64 KiB): before
    // the listener raised that limit, hyper answered a bare 431 (UNKNOWN to clients).
    let mut request = tonic::Request::new(hi());
    request
        .metadata_mut()
        .insert("x-big", "x".repeat(40 * 1024).parse().unwrap());
    let status = chat.create_chat_completion(request).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("metadata"), "{status:?}");
    assert_eq!(mock.chat_count(), 0);

    // Ordinary metadata is fine.
    let mut request = tonic::Request::new(hi());
    request
        .metadata_mut()
        .insert("x-small", "x".repeat(1024).parse().unwrap());
    chat.create_chat_completion(request).await.expect("a call");
    assert_eq!(mock.chat_count(), 1);
}

type Header<'a> = (&'a str, &'a str);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_framing_is_judged_before_the_core() {
    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &["k"], |s| s.max_body_bytes = 1024).await;
    let h2 = HttpClient::new_h2c(gw.addr);
    let one = hi().encode_to_vec();
    let framed = frame_bytes(&one);
    let with_flag = |flag: u8| {
        let mut bytes = framed.clone();
        bytes[0] = flag;
        bytes
    };
    let gzip = [GRPC[0], GRPC[1], ("grpc-encoding", "gzip")];
    let identity = [GRPC[0], GRPC[1], ("grpc-encoding", "identity")];
    // A prefix announcing 2000 bytes (over the 1024-byte limit), with none of them sent.
    let too_large = [0u8, 0, 0, 0x07, 0xd0].to_vec();
    let truncated = framed[..framed.len() - 3].to_vec();
    for path in [UNARY, STREAM] {
        // (headers, body, the grpc-status, what its message says)
        let cases: [(&[Header], Vec<u8>, &str, &str); 7] = [
            (&gzip, framed.clone(), "12", "gzip"),
            (&GRPC, with_flag(1), "13", "compressed-flag"),
            (&GRPC, with_flag(2), "3", "compressed flag"),
            (&GRPC, too_large.clone(), "11", "1024"),
            (&GRPC, truncated.clone(), "3", "ended inside a message"),
            (&GRPC, Vec::new(), "3", "none arrived"),
            (
                &GRPC,
                [framed.clone(), vec![0, 0]].concat(),
                "3",
                "ended inside",
            ),
        ];
        for (headers, body, code, said) in cases {
            let resp = h2.post_raw(path, headers, body.clone()).await;
            assert_eq!(resp.status, 200, "{path} {body:?}: {}", resp.text());
            assert_eq!(
                resp.header("content-type").as_deref(),
                Some("application/grpc")
            );
            assert_eq!(
                grpc_status(&resp).as_deref(),
                Some(code),
                "{path} {body:?}: {:?}",
                resp.headers
            );
            let message = percent_decoded(&resp.header("grpc-message").unwrap_or_default());
            assert!(message.contains(said), "{path} {body:?}: {message}");
            if code == "12" {
                assert_eq!(
                    resp.header("grpc-accept-encoding").as_deref(),
                    Some("identity")
                );
            }
        }
        // `identity` is no compression: the call goes through.
        let resp = h2.post_raw(path, &identity, framed.clone()).await;
        assert_eq!(resp.status, 200);
        assert!(
            grpc_status(&resp).is_none_or(|s| s == "0"),
            "{path}: {:?}",
            resp.headers
        );
    }
    assert_eq!(
        mock.chat_count(),
        2,
        "only the two good calls reached the upstream"
    );
}

/// `grpc-message` as sent: percent-encoded.
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

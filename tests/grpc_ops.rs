//! gRPC door, around the chat calls (issue 4): server reflection v1 and v1alpha, the health
//! service following the key pool, UNIMPLEMENTED for unknown methods (JSON 404 for HTTP
//! clients), and gRPC-Web over HTTP/1.1 on the same routes.
mod support;

use megallm_gateway::grpc::pb;
use prost::Message;
use support::*;
use tonic::transport::Channel;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// Service names listed by reflection v1, and the file that declares `megallm.v1.ChatService`.
async fn reflect_v1(channel: Channel) -> (Vec<String>, Vec<prost_types::FileDescriptorProto>) {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let mut client = ServerReflectionClient::new(channel);
    let requests = [
        MessageRequest::ListServices(String::new()),
        MessageRequest::FileContainingSymbol("megallm.v1.ChatService".into()),
    ]
    .map(|m| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(m),
    });
    let mut answers = patient(
        "reflection",
        client.server_reflection_info(tokio_stream::iter(requests)),
    )
    .await
    .expect("reflection OK")
    .into_inner();
    let (mut names, mut files) = (Vec::new(), Vec::new());
    while let Some(answer) = patient("reflection", answers.message())
        .await
        .expect("reflection stream")
    {
        match answer.message_response.expect("a response") {
            MessageResponse::ListServicesResponse(list) => {
                names = list.service.into_iter().map(|s| s.name).collect()
            }
            MessageResponse::FileDescriptorResponse(f) => {
                files = f
                    .file_descriptor_proto
                    .iter()
                    .map(|b| prost_types::FileDescriptorProto::decode(&b[..]).unwrap())
                    .collect()
            }
            other => panic!("unexpected reflection answer {other:?}"),
        }
    }
    (names, files)
}

/// Service names listed by reflection v1alpha (what grpcurl 1.8 asks).
async fn reflect_v1alpha(channel: Channel) -> Vec<String> {
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = patient(
        "reflection",
        client.server_reflection_info(tokio_stream::iter([request])),
    )
    .await
    .expect("reflection OK")
    .into_inner();
    let answer = patient("reflection", answers.message())
        .await
        .expect("OK")
        .expect("an answer");
    match answer.message_response.expect("a response") {
        MessageResponse::ListServicesResponse(list) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_chat_and_health_services() {
    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &["key-a"], |_| {}).await;
    let ch = channel(&gw).await;

    let (names, files) = reflect_v1(ch.clone()).await;
    for want in [
        "megallm.v1.ChatService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "v1 lists {names:?}; want {want}"
        );
    }
    let chat = files
        .iter()
        .find(|f| f.name() == "megallm/v1/chat.proto")
        .expect("chat.proto by symbol");
    let service = &chat.service[0];
    let methods: Vec<_> = service.method.iter().map(|m| m.name()).collect();
    assert_eq!(
        methods,
        ["CreateChatCompletion", "StreamChatCompletion", "ListModels"]
    );
    // Comments travel with the descriptor, so reflection clients show them.
    let comments = chat.source_code_info.as_ref().map(|i| {
        i.location
            .iter()
            .filter(|l| l.leading_comments.is_some())
            .count()
    });
    assert!(
        comments.unwrap_or(0) > 50,
        "chat.proto's comments are missing from reflection"
    );

    let names = reflect_v1alpha(ch).await;
    for want in ["megallm.v1.ChatService", "grpc.health.v1.Health"] {
        assert!(
            names.iter().any(|n| n == want),
            "v1alpha lists {names:?}; want {want}"
        );
    }
}

async fn check(health: &mut HealthClient<Channel>, service: &str) -> ServingStatus {
    let answer = patient(
        "health",
        health.check(HealthCheckRequest {
            service: service.into(),
        }),
    )
    .await
    .expect("health OK");
    answer.into_inner().status()
}

/// Waits (on `Health/Watch`, not by sleeping) until `service` reports `want`.
async fn watch_until(health: &mut HealthClient<Channel>, service: &str, want: ServingStatus) {
    let mut updates = patient(
        "watch",
        health.watch(HealthCheckRequest {
            service: service.into(),
        }),
    )
    .await
    .expect("watch OK")
    .into_inner();
    loop {
        let update = patient("watch update", updates.message())
            .await
            .expect("watch stream")
            .expect("watch ended");
        if update.status() == want {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_the_pool_through_admin_disable_and_enable() {
    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &["key-a", "key-b"], with_admin).await;
    let mut health = HealthClient::new(channel(&gw).await);
    for service in ["", "megallm.v1.ChatService"] {
        assert_eq!(
            check(&mut health, service).await,
            ServingStatus::Serving,
            "{service:?}"
        );
    }
    let unknown = patient(
        "health",
        health.check(HealthCheckRequest {
            service: "no.such.Service".into(),
        }),
    )
    .await
    .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    // Watch on an unknown service: SERVICE_UNKNOWN, the call kept open (health.proto).
    watch_until(
        &mut health,
        "no.such.Service",
        ServingStatus::ServiceUnknown,
    )
    .await;

    for id in ["key-1", "key-2"] {
        assert_eq!(
            gw.admin_post(ADMIN, &format!("/admin/keys/{id}/disable"))
                .await
                .status,
            200
        );
    }
    watch_until(
        &mut health,
        "megallm.v1.ChatService",
        ServingStatus::NotServing,
    )
    .await;
    assert_eq!(check(&mut health, "").await, ServingStatus::NotServing);

    assert_eq!(
        gw.admin_post(ADMIN, "/admin/keys/key-2/enable")
            .await
            .status,
        200
    );
    watch_until(&mut health, "", ServingStatus::Serving).await;
    assert_eq!(
        check(&mut health, "megallm.v1.ChatService").await,
        ServingStatus::Serving
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_goes_not_serving_when_the_upstream_refuses_every_key() {
    let mock = MockUpstream::start().await;
    mock.set("key-a", Reply::error(401, "invalid api key"));
    let gw = spawn_gateway(&mock, &["key-a"], |_| {}).await;
    let ch = channel(&gw).await;
    let mut health = HealthClient::new(ch.clone());
    assert_eq!(
        check(&mut health, "megallm.v1.ChatService").await,
        ServingStatus::Serving
    );

    let mut chat = pb::chat_service_client::ChatServiceClient::new(ch);
    let status = patient("chat", chat.create_chat_completion(hi()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    watch_until(
        &mut health,
        "megallm.v1.ChatService",
        ServingStatus::NotServing,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_methods_are_unimplemented_and_http_gets_json_404() {
    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &["key-a"], |_| {}).await;
    let mut grpc = tonic::client::Grpc::new(channel(&gw).await);
    for path in [
        "/megallm.v1.ChatService/NoSuchMethod",
        "/no.such.Service/Call",
    ] {
        patient("ready", grpc.ready()).await.expect("ready");
        let codec =
            tonic_prost::ProstCodec::<pb::ListModelsRequest, pb::ListModelsResponse>::default();
        let call = grpc.unary(
            tonic::Request::new(pb::ListModelsRequest {}),
            path.parse().unwrap(),
            codec,
        );
        let status = patient(path, call).await.unwrap_err();
        assert_eq!(status.code(), Code::Unimplemented, "{path}: {status:?}");
    }
    let response = gw.http.get("/no/such/path").await;
    response.assert_openai_error(404, None);
    assert_eq!(mock.requests().len(), 0);
}

/// The message content of the mock's non-streamed answer to chat request `n`.
fn mock_reply_content(mock: &MockUpstream, n: usize) -> Option<String> {
    let body = mock.chat_requests()[n]
        .reply_body
        .clone()
        .expect("a whole answer");
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    body["choices"][0]["message"]["content"]
        .as_str()
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_web_over_http1_on_the_same_routes() {
    let mock = MockUpstream::start().await;
    mock.set_chat("key-a", Reply::ok().chunks(3));
    let gw = spawn_gateway(&mock, &["key-a"], |_| {}).await;
    let headers = [
        ("content-type", "application/grpc-web+proto"),
        ("x-grpc-web", "1"),
        ("x-request-id", "web-1"),
    ];
    let hi = pb::ChatCompletionRequest {
        messages: vec![pb::Message {
            role: "user".into(),
            content: vec![pb::ContentPart {
                part: Some(pb::content_part::Part::Text("hi".into())),
            }],
            ..Default::default()
        }],
        ..Default::default()
    };

    // Unary: one data frame, then a trailer frame with grpc-status 0.
    let response = gw
        .http
        .post_raw(
            "/megallm.v1.ChatService/CreateChatCompletion",
            &headers,
            frame(&hi),
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert!(response
        .header("content-type")
        .unwrap()
        .starts_with("application/grpc-web"));
    assert_eq!(response.header("x-request-id").as_deref(), Some("web-1"));
    let got = frames(&response.body);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].0, 0);
    let completion = pb::ChatCompletion::decode(&got[0].1[..]).expect("a ChatCompletion");
    assert_eq!(
        completion.choices[0]
            .message
            .as_ref()
            .unwrap()
            .content
            .as_deref(),
        mock_reply_content(&mock, 0).as_deref()
    );
    assert_eq!(got[1].0, 0x80, "trailer frame");
    let trailers = String::from_utf8(got[1].1.clone())
        .unwrap()
        .to_ascii_lowercase();
    assert!(trailers.contains("grpc-status:0"), "{trailers}");

    // Server streaming: three data frames, then the trailers.
    let response = gw
        .http
        .post_raw(
            "/megallm.v1.ChatService/StreamChatCompletion",
            &headers,
            frame(&hi),
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    let got = frames(&response.body);
    assert_eq!(got.len(), 4, "{got:?}");
    let sent = mock.sent_chunks(mock.chat_requests()[1].seq);
    assert_eq!(sent.len(), 3);
    for (i, ((flag, payload), sent)) in got[..3].iter().zip(&sent).enumerate() {
        assert_eq!(*flag, 0);
        let chunk = pb::ChatCompletionChunk::decode(&payload[..]).expect("a chunk");
        let sent: serde_json::Value = serde_json::from_str(sent).unwrap();
        assert_eq!(
            chunk.choices[0].delta.as_ref().unwrap().content.as_deref(),
            sent["choices"][0]["delta"]["content"].as_str(),
            "chunk {i}"
        );
    }
    let trailers = String::from_utf8(got[3].1.clone())
        .unwrap()
        .to_ascii_lowercase();
    assert!(trailers.contains("grpc-status:0"), "{trailers}");
    assert!(
        trailers.contains("x-gateway-attempts:key-1:200"),
        "{trailers}"
    );

    // An unknown method over gRPC-Web: UNIMPLEMENTED (12), not an HTTP 404.
    let response = gw
        .http
        .post_raw("/no.such.Service/Call", &headers, frame(&hi))
        .await;
    assert_eq!(response.status, 200);
    assert_eq!(response.header("grpc-status").as_deref(), Some("12"));

    // An error is a status too: INVALID_ARGUMENT (3), in the headers of a trailers-only answer.
    let bad = pb::ChatCompletionRequest {
        temperature: Some(9.0),
        ..hi
    };
    let response = gw
        .http
        .post_raw(
            "/megallm.v1.ChatService/CreateChatCompletion",
            &headers,
            frame(&bad),
        )
        .await;
    assert_eq!(response.status, 200);
    let in_headers = response.header("grpc-status");
    let in_body = frames(&response.body)
        .iter()
        .find(|(flag, _)| *flag == 0x80)
        .map(|(_, t)| String::from_utf8_lossy(t).to_ascii_lowercase());
    assert!(
        in_headers.as_deref() == Some("3")
            || in_body
                .as_deref()
                .is_some_and(|t| t.contains("grpc-status:3")),
        "{:?} {:?}",
        response.headers,
        in_body
    );
}

//! HTTP door, `POST /v1/chat/completions` without streaming: what reaches the upstream, what
//! comes back, and every validation error (issue 2).
mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};
use support::*;

const DEFAULT_MODEL: &str = "openai-gpt-oss-120b";

fn keys_of(v: &Value) -> BTreeSet<String> {
    v.as_object().expect("object").keys().cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minimal_body_gets_the_default_model_and_nothing_invented() {
    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &["key-a"], |_| {}).await;

    let resp = gw.http.chat(&chat_body()).await;
    assert_eq!(resp.status, 200, "{}", resp.text());

    let reqs = mock.chat_requests();
    assert_eq!(reqs.len(), 1);
    let up = reqs[0].json.clone().expect("upstream body is JSON");
    assert_eq!(up["model"], DEFAULT_MODEL);
    assert_eq!(up["messages"], chat_body()["messages"]);
    // The client sent only `messages`: the gateway adds `model`, and nothing else.
    assert_eq!(
        keys_of(&up),
        BTreeSet::from(["messages".to_string(), "model".to_string()]),
        "upstream body {up}"
    );

    // The upstream's answer comes back as the client's answer.
    let body = resp.json();
    let mock_body: Value = serde_json::from_slice(reqs[0].reply_body.as_ref().unwrap()).unwrap();
    assert_eq!(body, mock_body);
    assert_eq!(
        body["choices"][0]["message"]["content"],
        format!("mock reply {}", reqs[0].seq)
    );
    assert!(resp
        .header("content-type")
        .unwrap_or_default()
        .starts_with("application/json"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_model_is_forwarded() {
    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &["key-a"], |_| {}).await;

    let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]});
    let resp = gw.http.chat(&body).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let up = mock.chat_requests()[0].json.clone().unwrap();
    assert_eq!(up, body, "upstream body differs from the client's");
    assert_eq!(resp.json()["model"], "gpt-4o-mini");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_params_are_forwarded_exactly() {
    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &["key-a"], |_| {}).await;

    let body = json!({
        "model": "openai-gpt-oss-120b",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "again"}
        ],
        "temperature": 0.7,
        "max_tokens": 50,
        "top_p": 0.9,
        "n": 2,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "stream": false
    });
    let resp = gw.http.chat(&body).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let up = mock.chat_requests()[0].json.clone().unwrap();
    assert_eq!(up, body, "upstream body differs from the client's");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_edges_are_accepted() {
    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &["key-a"], |_| {}).await;

    let edges = [
        json!({"temperature": 0}),
        json!({"temperature": 2}),
        json!({"top_p": 0}),
        json!({"top_p": 1}),
        json!({"n": 1}),
        json!({"n": 10}),
        json!({"presence_penalty": -2, "frequency_penalty": 2}),
        json!({"presence_penalty": 2, "frequency_penalty": -2}),
        json!({"max_tokens": 1}),
        json!({"model": "x", "stream": false}),
    ];
    for (i, extra) in edges.iter().enumerate() {
        let mut body = chat_body();
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let resp = gw.http.chat(&body).await;
        assert_eq!(resp.status, 200, "{extra}: {}", resp.text());
        let up = mock.chat_requests()[i].json.clone().unwrap();
        for (k, v) in extra.as_object().unwrap() {
            assert_eq!(&up[k], v, "{k} in upstream body {up}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_models_in_turn() {
    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &["key-a", "key-b"], |_| {}).await;

    let models = [
        "openai-gpt-oss-120b",
        "gpt-4o",
        "claude-3-5-sonnet",
        "llama-3.1-8b-instant",
        "deepseek-r1",
    ];
    for m in models {
        let resp = gw
            .http
            .chat(
                &json!({"model": m, "messages": [{"role": "user", "content": format!("hi {m}")}]}),
            )
            .await;
        assert_eq!(resp.status, 200, "{m}: {}", resp.text());
        assert_eq!(resp.json()["model"], m);
    }
    let seen: Vec<Value> = mock
        .chat_requests()
        .iter()
        .map(|r| r.json.clone().unwrap()["model"].clone())
        .collect();
    assert_eq!(seen, models.iter().map(|m| json!(m)).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_fields_are_forwarded_untouched() {
    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &["key-a"], |_| {}).await;

    let body = json!({
        "model": "gpt-4o",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "what is in this image?"},
                                          {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}],
             "name": "alice"},
            {"role": "assistant", "content": null,
             "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "42"}
        ],
        "tools": [{"type": "function", "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
        }}],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "response_format": {"type": "json_schema", "json_schema": {"name": "r", "strict": true,
            "schema": {"type": "object", "properties": {"x": {"type": "integer"}}}}},
        "stop": ["\n\n", "END"],
        "seed": 42,
        "stream_options": {"include_usage": true},
        "user": "user-1234",
        "logit_bias": {"50256": -100},
        "logprobs": true,
        "top_logprobs": 3,
        "parallel_tool_calls": false,
        "metadata": {"a": {"b": [1, 2.5, {"c": null, "d": "ünïcødé ✓"}]}, "big": 12345678901234567u64},
        "x_vendor_extension": null
    });
    let resp = gw.http.chat(&body).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let up = mock.chat_requests()[0].json.clone().unwrap();
    assert_eq!(up, body, "upstream body differs from the client's");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_authorization_and_cookie_are_not_forwarded() {
    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &["key-a"], |_| {}).await;

    let resp = gw
        .http
        .chat_with(
            &chat_body(),
            &[
                ("authorization", "Bearer client-secret-XYZ"),
                ("cookie", "session=cookie-secret-123"),
            ],
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let up = &mock.chat_requests()[0];
    assert_eq!(
        up.header_values("authorization"),
        vec!["Bearer key-a".to_string()]
    );
    assert!(
        up.header_values("cookie").is_empty(),
        "cookie forwarded: {:?}",
        up.headers
    );
    for (name, value) in up.headers.iter() {
        let v = String::from_utf8_lossy(value.as_bytes());
        assert!(
            !v.contains("client-secret-XYZ") && !v.contains("cookie-secret-123"),
            "client secret leaked upstream in {name}: {v}"
        );
    }
    assert!(up.header_values("content-type")[0].starts_with("application/json"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_token_is_required_when_configured_and_never_forwarded() {
    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &["key-a"], |s| {
        s.auth_tokens = vec![
            Secret::new("gw-token-1".into()),
            Secret::new("gw-token-2".into()),
        ];
    })
    .await;

    gw.http
        .chat(&chat_body())
        .await
        .assert_openai_error(401, None);
    gw.http
        .chat_with(&chat_body(), &[("authorization", "Bearer nope")])
        .await
        .assert_openai_error(401, None);
    gw.http
        .chat_with(&chat_body(), &[("authorization", "gw-token-1")])
        .await
        .assert_openai_error(401, None);
    assert_eq!(
        mock.chat_count(),
        0,
        "a refused request reached the upstream"
    );

    for tok in ["gw-token-1", "gw-token-2"] {
        let resp = gw
            .http
            .chat_with(&chat_body(), &[("authorization", &format!("Bearer {tok}"))])
            .await;
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    for r in mock.chat_requests() {
        assert_eq!(
            r.header_values("authorization"),
            vec!["Bearer key-a".to_string()]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_used_in_turn() {
    let mock = MockUpstream::start().await;
    let keys = ["key-a", "key-b", "key-c"];
    let gw = spawn_gateway(&mock, &keys, |_| {}).await;

    let mut ids = Vec::new();
    for _ in 0..9 {
        let resp = gw.http.chat(&chat_body()).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        ids.push(resp.attempts().expect("x-gateway-attempts"));
    }
    let used: Vec<String> = mock
        .chat_requests()
        .iter()
        .map(|r| r.key.clone().unwrap())
        .collect();
    assert_eq!(used.len(), 9);
    // Round-robin: the first three are the three keys, and the pattern repeats.
    let first: BTreeSet<&String> = used[..3].iter().collect();
    assert_eq!(
        first.len(),
        3,
        "first three requests did not use three keys: {used:?}"
    );
    for i in 3..9 {
        assert_eq!(used[i], used[i - 3], "not round-robin: {used:?}");
    }
    // `key-N` in the attempts header is the N-th key given.
    for (attempts, key) in ids.iter().zip(&used) {
        let n = keys.iter().position(|k| k == key).unwrap() + 1;
        assert_eq!(attempts, &format!("key-{n}:200"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_errors_name_the_param_and_reach_nobody() {
    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &["key-a"], |_| {}).await;

    let user = json!([{"role": "user", "content": "hi"}]);
    let cases: Vec<(Value, &str)> = vec![
        (json!({"model": "m"}), "messages"),
        (json!({"messages": []}), "messages"),
        (json!({"messages": "hi"}), "messages"),
        (json!({"messages": [{"content": "hi"}]}), "messages[0].role"),
        (
            json!({"messages": [{"role": 5, "content": "hi"}]}),
            "messages[0].role",
        ),
        (
            json!({"messages": [{"role": "user", "content": "hi"}, {"content": "x"}]}),
            "messages[1].role",
        ),
        (json!({"messages": user, "temperature": 2.5}), "temperature"),
        (
            json!({"messages": user, "temperature": -0.1}),
            "temperature",
        ),
        (
            json!({"messages": user, "temperature": "hot"}),
            "temperature",
        ),
        (json!({"messages": user, "top_p": -0.1}), "top_p"),
        (json!({"messages": user, "top_p": 1.5}), "top_p"),
        (json!({"messages": user, "n": 0}), "n"),
        (json!({"messages": user, "n": 11}), "n"),
        (json!({"messages": user, "n": 1.5}), "n"),
        (
            json!({"messages": user, "presence_penalty": 3}),
            "presence_penalty",
        ),
        (
            json!({"messages": user, "frequency_penalty": -3}),
            "frequency_penalty",
        ),
        (json!({"messages": user, "max_tokens": 0}), "max_tokens"),
        (json!({"messages": user, "max_tokens": -1}), "max_tokens"),
        (json!({"messages": user, "stream": "yes"}), "stream"),
        (json!({"messages": user, "model": 5}), "model"),
    ];
    let mut failures = Vec::new();
    for (body, param) in &cases {
        let resp = gw.http.chat(body).await;
        if let Err(e) = resp.check_openai_error(400, Some(param)) {
            failures.push(format!("{body}: {e}"));
        }
    }
    // Bodies that are not a JSON object: 400 in OpenAI shape (param may be null).
    for raw in ["{not json", "", "[1,2,3]", "\"messages\"", "null"] {
        let resp = gw
            .http
            .post_raw(
                "/v1/chat/completions",
                &[("content-type", "application/json")],
                raw,
            )
            .await;
        if let Err(e) = resp.check_openai_error(400, None) {
            failures.push(format!("raw {raw:?}: {e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "wrong validation answers:\n{}",
        failures.join("\n")
    );
    assert_eq!(
        mock.chat_count(),
        0,
        "an invalid request reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_json_content_type_is_415() {
    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &["key-a"], |_| {}).await;

    let body = chat_body().to_string();
    let resp = gw
        .http
        .post_raw(
            "/v1/chat/completions",
            &[("content-type", "text/plain")],
            body.clone(),
        )
        .await;
    resp.assert_openai_error(415, None);
    let resp = gw
        .http
        .post_raw(
            "/v1/chat/completions",
            &[("content-type", "application/x-www-form-urlencoded")],
            body.clone(),
        )
        .await;
    resp.assert_openai_error(415, None);
    assert_eq!(mock.chat_count(), 0);

    // A charset parameter is still JSON.
    let resp = gw
        .http
        .post_raw(
            "/v1/chat/completions",
            &[("content-type", "application/json; charset=utf-8")],
            body,
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_the_limit_is_413() {
    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &["key-a"], |s| s.max_body_bytes = 1024).await;

    let big = json!({"messages": [{"role": "user", "content": "x".repeat(2000)}]});
    gw.http.chat(&big).await.assert_openai_error(413, None);
    assert_eq!(mock.chat_count(), 0);

    // Under the limit still works.
    let small = json!({"messages": [{"role": "user", "content": "x".repeat(500)}]});
    let resp = gw.http.chat(&small).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(mock.chat_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_route_is_404_and_wrong_method_is_405_in_openai_shape() {
    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &["key-a"], |_| {}).await;

    gw.http.get("/v1/nope").await.assert_openai_error(404, None);
    gw.http
        .post_raw(
            "/v1/completions-typo",
            &[("content-type", "application/json")],
            "{}",
        )
        .await
        .assert_openai_error(404, None);
    gw.http
        .get("/v1/chat/completions")
        .await
        .assert_openai_error(405, None);
    gw.http
        .send(http::Method::DELETE, "/v1/models", &[], None)
        .await
        .assert_openai_error(405, None);
    assert_eq!(mock.chat_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_names_its_attempts() {
    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &["key-a", "key-b"], |_| {}).await;

    let resp = gw.http.chat(&chat_body()).await;
    assert_eq!(resp.status, 200);
    let attempts = parse_attempts(&resp.attempts().expect("x-gateway-attempts on success"));
    assert_eq!(attempts.len(), 1);
    assert!(
        attempts[0].0 == "key-1" || attempts[0].0 == "key-2",
        "{attempts:?}"
    );
    assert_eq!(attempts[0].1, "200");

    // An upstream 400 is passed through, and the header still says which key answered it.
    mock.set_default_chat(Reply::error(400, "bad request (mock)"));
    let resp = gw.http.chat(&chat_body()).await;
    let err = resp.assert_openai_error(400, None);
    assert_eq!(err["message"], "bad request (mock)");
    let attempts = parse_attempts(
        &resp
            .attempts()
            .expect("x-gateway-attempts on an upstream error"),
    );
    assert_eq!(attempts.len(), 1, "a 400 must not be retried: {attempts:?}");
    assert_eq!(attempts[0].1, "400");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_door_answers_over_h2c() {
    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &["key-a"], |_| {}).await;
    let h2 = HttpClient::new_h2c(gw.addr);

    let resp = h2.chat(&chat_body()).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["object"], "chat.completion");
    assert_eq!(
        mock.chat_requests()[0].json.as_ref().unwrap()["model"],
        DEFAULT_MODEL
    );
    h2.chat(&json!({"messages": []}))
        .await
        .assert_openai_error(400, Some("messages"));

    let t = h2.chat_stream(&stream_body()).await.collect().await;
    assert_eq!(t.status, 200);
    assert!(t.has_done(), "{:?}", t.data());
    assert_eq!(t.data().len(), 4, "{:?}", t.data());
    assert_eq!(h2.get("/healthz").await.status, 200);
}

/// The README's curl examples, body for body, as curl sends them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_curl_examples() {
    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &["key-a", "key-b"], |_| {}).await;
    let ct = [("content-type", "application/json")];
    let path = "/v1/chat/completions";

    let mut bodies: Vec<String> = vec![
        r#"{"messages":[{"role":"user","content":"Hello!"}]}"#.into(),
        r#"{"model":"gpt-4","messages":[{"role":"user","content":"Hello!"}]}"#.into(),
        r#"{"model":"openai-gpt-oss-20b","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"}],"temperature":0.7,"max_tokens":100,"top_p":0.9,"seed":7}"#.into(),
    ];
    for m in ["openai-gpt-oss-120b", "gpt-4", "llama3.3-70b-instruct"] {
        bodies.push(format!(
            "{{\"model\":\"{m}\",\"messages\":[{{\"role\":\"user\",\"content\":\"Which model are you?\"}}]}}"
        ));
    }
    for (i, raw) in bodies.iter().enumerate() {
        let resp = gw.http.post_raw(path, &ct, raw.clone()).await;
        assert_eq!(resp.status, 200, "{raw}: {}", resp.text());
        assert!(
            resp.header("x-request-id").is_some_and(|v| !v.is_empty()),
            "no x-request-id"
        );
        assert!(resp.attempts().is_some(), "no x-gateway-attempts");
        let mut want: Value = serde_json::from_str(raw).unwrap();
        if want.get("model").is_none() {
            want["model"] = json!(DEFAULT_MODEL);
        }
        assert_eq!(
            mock.chat_requests()[i].json.clone().unwrap(),
            want,
            "upstream body for {raw}"
        );
        assert_eq!(resp.json()["model"], want["model"]);
    }

    // The streaming example.
    let raw = r#"{"stream":true,"messages":[{"role":"user","content":"Stream to me"}]}"#;
    let body: Value = serde_json::from_str(raw).unwrap();
    let t = gw.http.chat_stream(&body).await.collect().await;
    assert_eq!(t.status, 200);
    assert!(t.has_done(), "{:?}", t.data());
    let up = mock.chat_requests().last().unwrap().json.clone().unwrap();
    assert_eq!(up["model"], DEFAULT_MODEL);
    assert_eq!(up["stream"], true);

    let models = gw.http.get("/v1/models").await;
    assert_eq!(models.status, 200);
    assert_eq!(models.json()["object"], "list");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_request_id_is_echoed() {
    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &["key-a"], |_| {}).await;
    let resp = gw
        .http
        .chat_with(&chat_body(), &[("x-request-id", "req-test-0042")])
        .await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("x-request-id").as_deref(),
        Some("req-test-0042")
    );
    let err = gw
        .http
        .chat_with(
            &json!({"messages": []}),
            &[("x-request-id", "req-test-0043")],
        )
        .await;
    assert_eq!(err.status, 400);
    assert_eq!(err.header("x-request-id").as_deref(), Some("req-test-0043"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_during_a_plain_request_drops_the_upstream_call() {
    use tokio::io::AsyncWriteExt;
    let mock = MockUpstream::start().await;
    mock.set_chat("key-a", Reply::ok().delay(Duration::from_secs(8)));
    let gw = spawn_gateway(&mock, &["key-a"], |_| {}).await;

    let body = chat_body().to_string();
    let mut sock = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    sock.write_all(body.as_bytes()).await.unwrap();
    assert!(
        mock.wait_chat_count(1, PATIENCE).await,
        "the request never reached the upstream"
    );
    drop(sock);
    assert!(
        mock.wait_disconnected(Duration::from_secs(5)).await,
        "the upstream call outlived the client that asked for it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_body_under_the_default_limit_is_forwarded_intact() {
    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &["key-a"], |_| {}).await;
    let content: String = (0..3_000_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let body = json!({"messages": [{"role": "user", "content": content}], "temperature": 1});
    let resp = gw.http.chat(&body).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let up = &mock.chat_requests()[0];
    assert_eq!(up.json.clone().unwrap()["messages"], body["messages"]);
}

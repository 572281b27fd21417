//! What the upstream says reaches a client only masked and judged (issue 8, items 2 and 3):
//! an event or a body that quotes the pool key reaches no door unmasked, and a 200 that is not
//! an answer (HTML, empty, not a JSON object, an OpenAI error object, a stream whose first
//! event is an error) is a transient failure of the key, retried before the first byte and a
//! masked 502 when no try succeeds. An error event later in a stream ends it as a break.

mod support;

use serde_json::{json, Value};
use support::*;
use tonic::Code;

const KEY1: &str = "megallm-truth-FIRST0a1b2c3d4e5f";
const KEY2: &str = "megallm-truth-SECOND9z8y7x6w5v";

/// An upstream error object that quotes the key it was given, as OpenAI's 401 text does.
fn error_quoting(key: &str) -> String {
    json!({"error": {
        "message": format!("Incorrect API key provided: {key}. You can find your API key at …"),
        "type": "invalid_request_error",
        "param": null,
        "code": "invalid_api_key"
    }})
    .to_string()
}

/// A normal chunk, as the mock would send it.
fn chunk(index: usize, total: usize) -> String {
    chunk_json(0, &json!("m"), index, total)
}

fn assert_no_key(what: &str, text: &str) {
    for key in [KEY1, KEY2] {
        assert!(!text.contains(key), "{what} carries a pool key: {text}");
        // Nor a recognisable piece of one.
        assert!(
            !text.contains(&key[14..]),
            "{what} carries part of a key: {text}"
        );
    }
}

// ---- item 2: masking on every door and path ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_stream_error_event_is_masked_and_ends_the_stream_without_done() {
    let mock = MockUpstream::start().await;
    // The upstream ends with [DONE] after its error event: the gateway must not pass it on.
    mock.set_chat(KEY1, Reply::ok().events([chunk(0, 3), error_quoting(KEY1)]));
    let gw = spawn_gateway(&mock, &[KEY1], with_admin).await;

    let t = gw.http.chat_stream(&stream_body()).await.collect().await;
    assert_eq!(t.status, 200);
    let data = t.data();
    assert_no_key("the SSE stream", &data.join("\n"));
    assert_eq!(data.len(), 2, "one chunk, then the error event: {data:?}");
    assert_eq!(
        t.events[0].json()["choices"][0]["delta"]["role"],
        "assistant"
    );
    assert!(t.events[1].is_error(), "{data:?}");
    assert!(
        !t.has_done(),
        "an error event is a break: no [DONE] after it: {data:?}"
    );
    let error = &t.events[1].json()["error"];
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("Incorrect API key provided"), "{error}");
    assert!(message.contains("[redacted key]"), "{error}");
    // The upstream's own type and code survive.
    assert_eq!(error["code"], "invalid_api_key", "{error}");
    assert_eq!(error["type"], "invalid_request_error", "{error}");

    // The stream was counted a success at its first event; its end is a break.
    let key = gw.admin_key(ADMIN, "key-1").await;
    assert_eq!(key["successes"], 1, "{key}");
    assert_eq!(key["failures"]["stream_broken"], 1, "{key}");
    assert_no_key("/admin/keys", &key.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_stream_malformed_event_with_the_key_is_masked() {
    let mock = MockUpstream::start().await;
    let malformed = format!("oops <b>upstream trace</b> key={KEY1} (not json)");
    mock.set_chat(
        KEY1,
        Reply::ok().events([chunk(0, 3), malformed, chunk(2, 3)]),
    );
    let gw = spawn_gateway(&mock, &[KEY1], |_| {}).await;

    let t = gw.http.chat_stream(&stream_body()).await.collect().await;
    assert_eq!(t.status, 200);
    let data = t.data();
    assert_no_key("the SSE stream", &data.join("\n"));
    assert_eq!(data.len(), 4, "{data:?}");
    assert!(data[1].contains("[redacted key]"), "{data:?}");
    assert!(
        data[1].starts_with("oops <b>upstream trace</b>"),
        "{data:?}"
    );
    // Benign events are passed through byte for byte.
    assert_eq!(data[0], chunk(0, 3));
    assert_eq!(data[2], chunk(2, 3));
    assert!(t.has_done());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_non_stream_body_that_quotes_the_key_is_masked() {
    let mock = MockUpstream::start().await;
    let body = json!({
        "id": "x", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "finish_reason": "stop",
            "message": {"role": "assistant", "content": format!("the key \"{KEY1}\" is mine")}}]
    });
    mock.set_chat(KEY1, Reply::ok().body(body.to_string()));
    let gw = spawn_gateway(&mock, &[KEY1], |_| {}).await;

    let resp = gw.http.chat(&chat_body()).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_no_key("the body", &resp.text());
    let content = resp.json()["choices"][0]["message"]["content"].clone();
    assert_eq!(content, "the key \"[redacted key]\" is mine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_stream_error_and_malformed_events_are_masked() {
    let mock = MockUpstream::start().await;
    mock.push_chat_once(KEY1, Reply::ok().events([chunk(0, 3), error_quoting(KEY1)]));
    mock.push_chat_once(
        KEY1,
        Reply::ok().events([chunk(0, 3), format!("garbage {KEY1}")]),
    );
    let gw = spawn_gateway(&mock, &[KEY1], |_| {}).await;
    let mut c = grpc_client(&gw).await;

    for (case, want) in [
        ("error event", Code::Unavailable),
        ("malformed event", Code::Internal),
    ] {
        let mut stream = patient("stream", c.stream_chat_completion(hi()))
            .await
            .expect("OK")
            .into_inner();
        let first = patient("chunk", stream.message()).await.expect("chunk");
        assert!(first.is_some(), "{case}");
        let status = patient("status", stream.message())
            .await
            .expect_err("the stream ends with an error");
        assert_eq!(status.code(), want, "{case}: {status:?}");
        assert_no_key(case, &format!("{status:?}"));
        assert!(
            status.message().contains("[redacted key]"),
            "{case}: {status:?}"
        );
    }
}

// ---- item 3: a bad 200 is a transient failure ----

/// Bodies a 200 may not carry, each with a content type an upstream or a proxy would send.
fn bad_bodies() -> Vec<(&'static str, Reply)> {
    vec![
        (
            "html",
            Reply::ok()
                .body(format!("<html><body>502 Bad Gateway {KEY1}</body></html>"))
                .content_type("text/html"),
        ),
        ("empty", Reply::ok().body("")),
        ("error object", Reply::ok().body(error_quoting(KEY1))),
        ("array", Reply::ok().body("[1]")),
        (
            "not json",
            Reply::ok().body(format!("upstream says {KEY1}")),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_non_stream_bad_200_is_a_masked_502() {
    for (case, reply) in bad_bodies() {
        let mock = MockUpstream::start().await;
        mock.set_chat(KEY1, reply);
        let gw = spawn_gateway(&mock, &[KEY1], |s| {
            with_admin(s);
            s.max_attempts = 1;
        })
        .await;
        let resp = gw.http.chat(&chat_body()).await;
        let error = resp.assert_openai_error(502, None);
        assert_no_key(case, &resp.text());
        assert_eq!(error["code"], "upstream_unavailable", "{case}");
        let key = gw.admin_key(ADMIN, "key-1").await;
        assert_eq!(key["successes"], 0, "{case}: {key}");
        assert_eq!(key["failures"]["transient"], 1, "{case}: {key}");
        assert_no_key("/admin/keys", &key.to_string());
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_non_stream_bad_200_is_retried_on_the_next_key() {
    for (case, reply) in bad_bodies() {
        let mock = MockUpstream::start().await;
        mock.set_chat(KEY1, reply);
        let gw = spawn_gateway(&mock, &[KEY1, KEY2], with_admin).await;
        let resp = gw.http.chat(&chat_body()).await;
        assert_eq!(resp.status, 200, "{case}: {}", resp.text());
        assert!(resp.json()["choices"].is_array(), "{case}");
        let attempts = parse_attempts(&resp.attempts().expect("attempts header"));
        assert_eq!(attempts.len(), 2, "{case}: {attempts:?}");
        assert_eq!(attempts[0].0, "key-1", "{case}");
        assert_eq!(
            attempts[1],
            ("key-2".to_string(), "200".to_string()),
            "{case}"
        );
        let key = gw.admin_key(ADMIN, "key-1").await;
        assert_eq!(key["successes"], 0, "{case}: {key}");
        assert_eq!(key["failures"]["transient"], 1, "{case}: {key}");
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_whose_first_event_is_an_error_is_retried_on_the_next_key() {
    let cases = [
        ("error event", Reply::ok().events([error_quoting(KEY1)])),
        (
            "unstreamed error object",
            Reply::ok().unstreamed().body(error_quoting(KEY1)),
        ),
        ("unstreamed empty body", Reply::ok().unstreamed().body("")),
        (
            "html page",
            Reply::ok()
                .unstreamed()
                .body(format!("<html>{KEY1}</html>"))
                .content_type("text/html"),
        ),
    ];
    for (case, reply) in cases {
        let mock = MockUpstream::start().await;
        mock.set_chat(KEY1, reply);
        let gw = spawn_gateway(&mock, &[KEY1, KEY2], with_admin).await;
        let t = gw.http.chat_stream(&stream_body()).await.collect().await;
        assert_eq!(t.status, 200, "{case}");
        let data = t.data();
        assert_no_key(case, &data.join("\n"));
        assert!(t.has_done(), "{case}: {data:?}");
        assert!(!t.events.iter().any(|e| e.is_error()), "{case}: {data:?}");
        let attempts = parse_attempts(t.headers["x-gateway-attempts"].to_str().unwrap());
        assert_eq!(attempts.len(), 2, "{case}: {attempts:?}");
        assert_eq!(
            attempts[1],
            ("key-2".to_string(), "200".to_string()),
            "{case}"
        );
        let key = gw.admin_key(ADMIN, "key-1").await;
        assert_eq!(key["successes"], 0, "{case}: {key}");
        assert_eq!(key["failures"]["transient"], 1, "{case}: {key}");
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_whose_every_try_starts_with_an_error_is_a_masked_502() {
    let mock = MockUpstream::start().await;
    mock.set_chat(KEY1, Reply::ok().events([error_quoting(KEY1)]));
    let gw = spawn_gateway(&mock, &[KEY1], |s| s.max_attempts = 1).await;
    let resp = gw.http.chat_stream(&stream_body()).await;
    assert_eq!(resp.status, 502);
    let body = resp.body.clone().expect("a JSON error, not a stream");
    let text = String::from_utf8_lossy(&body).into_owned();
    assert_no_key("the 502", &text);
    let json: Value = serde_json::from_str(&text).expect("JSON");
    assert!(json["error"]["message"].as_str().is_some(), "{json}");
    assert!(json["error"]["type"].as_str().is_some(), "{json}");
    assert!(text.contains("[redacted key]"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_bad_200_is_retried_and_a_masked_error_when_alone() {
    let mock = MockUpstream::start().await;
    mock.set_chat(KEY1, Reply::ok().body(error_quoting(KEY1)));
    let gw = spawn_gateway(&mock, &[KEY1, KEY2], with_admin).await;
    let mut c = grpc_client(&gw).await;
    let answer = patient("unary", c.create_chat_completion(hi()))
        .await
        .expect("the second key answers");
    assert_eq!(answer.get_ref().choices.len(), 1);
    let key = gw.admin_key(ADMIN, "key-1").await;
    assert_eq!(key["failures"]["transient"], 1, "{key}");
    gw.shutdown().await;

    for (case, reply) in bad_bodies() {
        let mock = MockUpstream::start().await;
        mock.set_chat(KEY1, reply);
        let gw = spawn_gateway(&mock, &[KEY1], |s| s.max_attempts = 1).await;
        let mut c = grpc_client(&gw).await;
        let status = patient("unary", c.create_chat_completion(hi()))
            .await
            .expect_err("no good answer");
        assert!(
            matches!(status.code(), Code::Unavailable | Code::Internal),
            "{case}: {status:?}"
        );
        assert_no_key(case, &format!("{status:?}"));
        gw.shutdown().await;
    }
}

//! Issue 13: the endpoints besides chat through the same pool (`/v1/embeddings`,
//! `/v1/completions`, `/v1/responses`, Anthropic's `/v1/messages`, `--passthrough-path`), the
//! model list's source when the upstream is down, and the context-length check.
mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::*;

const KEY1: &str = "megallm-endp-FIRST0a1b2c3d4e5f";
const KEY2: &str = "megallm-endp-SECOND9z8y7x6w5v";
const TOKEN: &str = "client-gateway-token";

fn with_token(s: &mut Settings) {
    s.auth_tokens = vec![Secret::new(TOKEN.into())];
}

async fn post(gw: &TestGateway, path: &str, body: &Value, extra: &[(&str, &str)]) -> HttpResponse {
    let mut h = vec![("content-type", "application/json")];
    h.extend_from_slice(extra);
    gw.http.post_raw(path, &h, body.to_string()).await
}

const BEARER: &str = "Bearer client-gateway-token";

/// Each OpenAI endpoint, unary: same path upstream, the pool's keys in turn, the default model
/// spliced in, the client's token never forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_endpoints_rotate_keys_and_never_forward_the_client_token() {
    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &[KEY1, KEY2], with_token).await;
    for (path, body) in [
        ("/v1/embeddings", json!({"input": "hello"})),
        (
            "/v1/completions",
            json!({"prompt": "hello", "max_tokens": 5}),
        ),
        ("/v1/responses", json!({"input": "hello"})),
    ] {
        let mut keys = Vec::new();
        for _ in 0..2 {
            let resp = post(&gw, path, &body, &[("authorization", BEARER)]).await;
            assert_eq!(resp.status, 200, "{path}: {}", resp.text());
            assert!(resp.json().is_object(), "{path}");
            assert!(resp.attempts().is_some(), "{path}: no attempt trail");
        }
        for r in mock.requests_to(path) {
            assert_eq!(
                r.json.as_ref().unwrap()["model"],
                "openai-gpt-oss-120b",
                "{path}"
            );
            assert_eq!(
                r.json.as_ref().unwrap()["input"].is_null(),
                body["input"].is_null()
            );
            let auth = r.header_values("authorization");
            assert_eq!(auth.len(), 1, "{path}: {auth:?}");
            assert!(
                !auth[0].contains(TOKEN),
                "{path}: the client's token went upstream"
            );
            keys.push(r.key.clone().unwrap());
        }
        keys.sort();
        assert_eq!(keys, [KEY1, KEY2], "{path}: both keys serve in turn");
    }
    // Without the gateway token: 401, nothing sent.
    let before = mock.requests().len();
    post(&gw, "/v1/embeddings", &json!({"input": "x"}), &[])
        .await
        .assert_openai_error(401, None);
    assert_eq!(mock.requests().len(), before);
}

/// A 429 on one key fails over to the other, and a key the upstream quotes is masked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_fails_over_and_upstream_text_is_masked() {
    let mock = MockUpstream::start().await;
    for (path, stream) in [
        ("/v1/embeddings", false),
        ("/v1/completions", false),
        ("/v1/completions", true),
        ("/v1/responses", false),
        ("/v1/responses", true),
        ("/v1/messages", false),
        ("/v1/messages", true),
    ] {
        // A fresh pool for each, so no key is still cooling from the last.
        let gw = spawn_gateway(&mock, &[KEY1, KEY2], |s| s.max_attempts = 2).await;
        mock.push_chat_once(KEY1, Reply::rate_limited(30));
        let body = json!({"model": "m", "input": "x", "messages": [], "stream": stream});
        let resp = post(&gw, path, &body, &[]).await;
        assert_eq!(resp.status, 200, "{path}: {}", resp.text());
        let trail = parse_attempts(&resp.attempts().unwrap());
        assert_eq!(
            trail,
            [
                ("key-1".into(), "429".into()),
                ("key-2".into(), "200".into())
            ],
            "{path} stream={stream}"
        );
        gw.shutdown().await;
    }
    // Masking: a body quoting the key reaches the client masked.
    let gw = spawn_gateway(&mock, &[KEY1], |_| {}).await;
    mock.set_chat(
        KEY1,
        Reply::ok()
            .body(json!({"object": "list", "note": format!("served by {KEY1}")}).to_string()),
    );
    let resp = post(&gw, "/v1/embeddings", &json!({"input": "x"}), &[]).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(
        !resp.text().contains(KEY1),
        "the key reached the client: {}",
        resp.text()
    );
    mock.set_chat(KEY1, Reply::error(400, &format!("bad input for {KEY1}")));
    let resp = post(&gw, "/v1/completions", &json!({"prompt": "x"}), &[]).await;
    resp.assert_openai_error(400, None);
    assert!(!resp.text().contains(KEY1), "{}", resp.text());
}

/// Streams: legacy completions as `data:` events ending in `[DONE]`; the Responses API with its
/// `event:` lines kept and no `[DONE]` added.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_keep_their_framing() {
    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &[KEY1, KEY2], |_| {}).await;
    let resp = post(
        &gw,
        "/v1/completions",
        &json!({"prompt": "x", "stream": true}),
        &[],
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("content-type").as_deref(),
        Some("text/event-stream")
    );
    let text = resp.text();
    assert_eq!(text.matches("data: {").count(), 3, "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert!(!text.contains("event:"), "{text}");

    let resp = post(
        &gw,
        "/v1/responses",
        &json!({"input": "x", "stream": true}),
        &[],
    )
    .await;
    assert_eq!(resp.status, 200);
    let text = resp.text();
    assert!(
        text.starts_with("event: response.created\ndata: {"),
        "{text}"
    );
    assert_eq!(
        text.matches("event: response.output_text.delta\n").count(),
        1,
        "{text}"
    );
    assert!(
        text.contains("event: response.completed\ndata: {"),
        "{text}"
    );
    assert!(!text.contains("[DONE]"), "{text}");

    // An error as the first event: nothing reached the client, so the other key serves.
    mock.push_chat_once(
        KEY1,
        Reply::ok().events([
            "event: error\n{\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"busy\"}}",
        ]),
    );
    let gw = spawn_gateway(&mock, &[KEY1, KEY2], |_| {}).await;
    let resp = post(
        &gw,
        "/v1/messages",
        &json!({"messages": [], "stream": true}),
        &[],
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let trail = parse_attempts(&resp.attempts().unwrap());
    assert_eq!(trail[0], ("key-1".into(), "invalid".into()), "{trail:?}");
    assert_eq!(trail[1], ("key-2".into(), "200".into()), "{trail:?}");
    assert!(
        resp.text().starts_with("event: message_start\n"),
        "{}",
        resp.text()
    );
}

/// Anthropic's Messages API: upstream `x-api-key: <pool key>` (no Authorization), the client's
/// `anthropic-version` and `anthropic-beta` forwarded, the gateway token taken as `x-api-key`
/// or bearer, the gateway's errors in Anthropic's shape, named events passed through, and a 529
/// failed over like a 5xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_messages() {
    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &[KEY1, KEY2], |s| {
        with_token(s);
        s.max_attempts = 2;
    })
    .await;
    let body = json!({"model": "claude-x", "max_tokens": 10,
                      "messages": [{"role": "user", "content": "hi"}]});
    let resp = post(
        &gw,
        "/v1/messages",
        &body,
        &[
            ("x-api-key", TOKEN),
            ("anthropic-version", "2023-06-01"),
            ("anthropic-beta", "tools-2024-04-04"),
        ],
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["type"], "message");
    let sent = mock.requests_to("/v1/messages").pop().unwrap();
    let api_key = sent.header_values("x-api-key");
    assert!(api_key == [KEY1] || api_key == [KEY2], "{api_key:?}");
    assert!(
        sent.header_values("authorization").is_empty(),
        "a bearer went upstream too"
    );
    assert_eq!(sent.header_values("anthropic-version"), ["2023-06-01"]);
    assert_eq!(sent.header_values("anthropic-beta"), ["tools-2024-04-04"]);
    assert_eq!(
        sent.body,
        body.to_string().as_bytes(),
        "the client's bytes, as they came"
    );

    // The token as a bearer works too; a wrong one is refused in Anthropic's shape.
    let resp = post(&gw, "/v1/messages", &body, &[("authorization", BEARER)]).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let resp = post(&gw, "/v1/messages", &body, &[("x-api-key", "wrong")]).await;
    assert_eq!(resp.status, 401);
    let error = resp.json();
    assert_eq!(error["type"], "error", "{error}");
    assert_eq!(error["error"]["type"], "authentication_error", "{error}");
    let resp = post(&gw, "/v1/messages", &json!([1]), &[("x-api-key", TOKEN)]).await;
    assert_eq!(resp.status, 400);
    assert_eq!(resp.json()["error"]["type"], "invalid_request_error");

    // A 529 (overloaded) on the first key: the other serves.
    let overloaded =
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}});
    mock.push_chat_once(KEY1, Reply::status(529).body(overloaded.to_string()));
    mock.push_chat_once(KEY2, Reply::status(529).body(overloaded.to_string()));
    let resp = post(&gw, "/v1/messages", &body, &[("x-api-key", TOKEN)]).await;
    // Retried on the other key like a 5xx; both overloaded: the gateway's own error, in
    // Anthropic's shape.
    let trail = resp.attempts().unwrap_or_default();
    assert_eq!(trail.matches(":529").count(), 2, "{trail}");
    assert_eq!(resp.status, 503, "{}", resp.text());
    let error = resp.json();
    assert_eq!(error["type"], "error", "{error}");
    assert_eq!(error["error"]["type"], "overloaded_error", "{error}");
    mock.clear(KEY1);
    mock.clear(KEY2);

    // Streams: Anthropic's named events, unchanged, in order.
    let mut stream_body = body.clone();
    stream_body["stream"] = json!(true);
    let resp = eventually(
        "a served stream",
        PATIENCE,
        Duration::from_millis(200),
        || {
            let (gw, b) = (&gw, &stream_body);
            async move {
                let r = post(gw, "/v1/messages", b, &[("x-api-key", TOKEN)]).await;
                (r.status == 200).then_some(r)
            }
        },
    )
    .await;
    let text = resp.text();
    let names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ],
        "{text}"
    );
    assert!(!text.contains("[DONE]"), "{text}");
}

/// Only listed paths are forwarded: `/v1/rerank` is 404 until `--passthrough-path` names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_paths_are_forwarded_only_when_listed() {
    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &[KEY1], |_| {}).await;
    post(&gw, "/v1/rerank", &json!({"q": 1}), &[])
        .await
        .assert_openai_error(404, None);
    assert!(mock.requests_to("/v1/rerank").is_empty());
    let gw = spawn_gateway(&mock, &[KEY1], |s| {
        s.passthrough_paths = vec!["/v1/rerank".into()];
    })
    .await;
    let resp = post(&gw, "/v1/rerank", &json!({"q": 1}), &[]).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["path"], "/v1/rerank");
    let sent = mock.requests_to("/v1/rerank");
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].key.as_deref(), Some(KEY1));
    assert_eq!(
        sent[0].body.as_ref(),
        br#"{"q":1}"#,
        "no model spliced into a passthrough body"
    );
}

/// `/v1/models` says where its list came from: the upstream's (enriched with the catalogue),
/// its last good one when it goes down, the catalogue's when it never answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_say_their_source() {
    let mock = MockUpstream::start().await;
    mock.set_model_ids(&["llama3-8b-instruct", "up-only"]);
    let gw = spawn_gateway(&mock, &[KEY1], |s| {
        s.models_cache_ttl = Duration::from_millis(50);
    })
    .await;
    let resp = gw.http.get("/v1/models").await;
    assert_eq!(
        resp.header("x-gateway-models-source").as_deref(),
        Some("upstream")
    );
    let list = resp.json();
    let llama = &list["data"][0];
    assert_eq!(llama["id"], "llama3-8b-instruct");
    assert_eq!(llama["context_length"], 8000, "{list}");
    assert!(list["data"][1].get("context_length").is_none(), "{list}");

    mock.set_models_down(true);
    let resp = eventually(
        "the cached list",
        PATIENCE,
        Duration::from_millis(25),
        || {
            let gw = &gw;
            async move {
                let r = gw.http.get("/v1/models").await;
                (r.header("x-gateway-models-source").as_deref() == Some("cache")).then_some(r)
            }
        },
    )
    .await;
    assert_eq!(
        resp.json()["data"][1]["id"],
        "up-only",
        "the last good list"
    );
    let one = gw.http.get("/v1/models/up-only").await;
    assert_eq!(one.status, 200);
    assert_eq!(
        one.header("x-gateway-models-source").as_deref(),
        Some("cache")
    );

    // A gateway whose upstream never answered: the catalogue's models.
    let gw = spawn_gateway(&mock, &[KEY1], |_| {}).await;
    let resp = gw.http.get("/v1/models").await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("x-gateway-models-source").as_deref(),
        Some("catalogue")
    );
    let ids: Vec<String> = resp.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        ids.contains(&"qwen/qwen3-next-80b-a3b-instruct".to_owned()),
        "{ids:?}"
    );
    assert!(!ids.contains(&"up-only".to_owned()));
}

/// The context check on both sides of the limit: `llama3-8b-instruct` has 8,000 tokens; a
/// prompt of about 1,000 tokens (6,000 bytes) fits with `max_tokens` 5,000 (the tokenizer
/// says so, the byte bound alone could not) and is refused with 7,500, before any key is spent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_context_check_on_both_sides_of_the_limit() {
    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &[KEY1], |_| {}).await;
    let prompt = "hello ".repeat(1000);
    let body = |max: u64| {
        json!({"model": "llama3-8b-instruct", "max_tokens": max,
               "messages": [{"role": "user", "content": prompt}]})
    };
    let resp = gw.http.chat(&body(5_000)).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(mock.chat_count(), 1);
    let resp = gw.http.chat(&body(7_500)).await;
    let error = resp.assert_openai_error(400, Some("messages"));
    assert_eq!(error["code"], "context_length_exceeded", "{error}");
    assert_eq!(
        mock.chat_count(),
        1,
        "a key was spent on a request that cannot fit"
    );
    // A model the catalogue does not know is never refused for length.
    let mut unknown = body(1_000_000);
    unknown["model"] = json!("not-in-the-catalogue");
    assert_eq!(gw.http.chat(&unknown).await.status, 200);
}

//! The endpoints besides chat are accounted as chat is: one usage record per request with the
//! upstream's own counts (OpenAI's, the Responses API's and Anthropic's names, streams
//! included), the client token's `models=` and limits enforced before any key is spent.

mod support;

use serde_json::{json, Value};
use support::*;

const MODEL: &str = "openai-gpt-oss-120b";
const TOKEN: &str = "tok-forward";

async fn post(gw: &TestGateway, path: &str, body: &Value, token: &str) -> HttpResponse {
    let auth = format!("Bearer {token}");
    let h = [
        ("content-type", "application/json"),
        ("authorization", auth.as_str()),
    ];
    gw.http.post_raw(path, &h, body.to_string()).await
}

async fn gateway(mock: &MockUpstream, log: &UsageLog, token_line: &str) -> TestGateway {
    let path = log.path().to_owned();
    let tokens = vec![Secret::new(token_line.into())];
    spawn_gateway(mock, &["key-a"], move |s| {
        s.usage_log = Some(path);
        s.auth_tokens = tokens;
        s.passthrough_paths = vec!["/v1/rerank".into()];
    })
    .await
}

/// (prompt, completion, total, cached, reasoning) of a record.
fn counts(r: &Value) -> (u64, u64, u64, Option<u64>, Option<u64>) {
    let n = |f: &str| r[f].as_u64();
    (
        n("prompt_tokens").unwrap(),
        n("completion_tokens").unwrap(),
        n("total_tokens").unwrap(),
        n("cached_tokens"),
        n("reasoning_tokens"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_forwarded_endpoint_is_recorded_with_the_upstreams_usage() {
    let mock = MockUpstream::start().await;
    let log = UsageLog::new();
    let gw = gateway(&mock, &log, &format!("{TOKEN} name=fwd")).await;
    let (sp, sc) = stream_usage(3);
    let cases = [
        (
            "/v1/embeddings",
            json!({"input": "hi"}),
            (1, 0, 1, None, None),
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi"}),
            (2, 3, 5, None, None),
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "stream": true}),
            (sp, sc, sp + sc, None, None),
        ),
        (
            "/v1/responses",
            json!({"input": "hi"}),
            (4, 6, 10, Some(1), Some(2)),
        ),
        (
            "/v1/responses",
            json!({"input": "hi", "stream": true}),
            (4, 6, 10, Some(1), Some(2)),
        ),
        (
            "/v1/messages",
            json!({"max_tokens": 9, "messages": [{"role": "user", "content": "hi"}]}),
            (1, 3, 4, None, None),
        ),
        // message_start gives the prompt (and 1 output token), message_delta the answer's 3.
        (
            "/v1/messages",
            json!({"max_tokens": 9, "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
            (1, 3, 4, None, None),
        ),
    ];
    for (i, (path, body, want)) in cases.iter().enumerate() {
        let resp = post(&gw, path, body, TOKEN).await;
        assert_eq!(resp.status, 200, "{path}: {}", resp.text());
        let records = log.wait(i + 1).await;
        let r = &records[i];
        let what = format!("{path} stream={}: {r}", body["stream"]);
        assert_eq!(counts(r), *want, "{what}");
        assert_eq!(r["endpoint"], path.trim_start_matches("/v1/"), "{what}");
        assert_eq!(
            (&r["client"], &r["model"], &r["key"], &r["door"]),
            (
                &json!("fwd"),
                &json!(MODEL),
                &json!("key-1"),
                &json!("http")
            ),
            "{what}"
        );
        assert_eq!(
            (&r["outcome"], &r["estimated"]),
            (&json!("completed"), &json!(false)),
            "{what}"
        );
        assert!(r["ttft_ms"].is_u64(), "{what}");
    }
    // The legacy completions stream was asked for its usage, and the client did not see it.
    let sent = mock.requests_to("/v1/completions")[1].json.clone().unwrap();
    assert_eq!(sent["stream_options"]["include_usage"], true);
    let resp = post(
        &gw,
        "/v1/completions",
        &json!({"prompt": "hi", "stream": true}),
        TOKEN,
    )
    .await;
    let text = resp.text();
    assert_eq!(text.matches("data: {").count(), 3, "{text}");
    assert!(!text.contains("usage"), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    // A client that asked gets the usage chunk, and the upstream the body as it was sent.
    let asked = json!({"prompt": "hi", "stream": true, "stream_options": {"include_usage": true}});
    let text = post(&gw, "/v1/completions", &asked, TOKEN).await.text();
    assert_eq!(text.matches("data: {").count(), 4, "{text}");
    assert!(text.contains(r#""usage":{"#), "{text}");
    let records = log.wait(cases.len() + 2).await;
    assert_eq!(records[cases.len() + 1]["total_tokens"], sp + sc);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_requests_obey_the_tokens_models_and_limits() {
    let mock = MockUpstream::start().await;
    let log = UsageLog::new();
    let line = format!("{TOKEN} name=narrow models=openai-gpt-oss-* rpm=3");
    let gw = gateway(&mock, &log, &line).await;

    let resp = post(
        &gw,
        "/v1/embeddings",
        &json!({"model": "text-embedding-3-small", "input": "x"}),
        TOKEN,
    )
    .await;
    resp.assert_openai_error(403, None);
    assert!(
        resp.text().contains("text-embedding-3-small"),
        "{}",
        resp.text()
    );
    // A passthrough request naming no model cannot slip past `models=`.
    let resp = post(&gw, "/v1/rerank", &json!({"query": "x"}), TOKEN).await;
    resp.assert_openai_error(403, None);
    assert!(resp.text().contains("names no model"), "{}", resp.text());
    // Anthropic's endpoint refuses in Anthropic's shape.
    let body = json!({"model": "claude-x", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]});
    let resp = post(&gw, "/v1/messages", &body, TOKEN).await;
    assert_eq!(resp.status, 403, "{}", resp.text());
    let json = resp.json();
    assert_eq!(json["type"], "error", "{json}");
    assert_eq!(json["error"]["type"], "permission_error", "{json}");
    assert!(
        mock.requests().is_empty(),
        "a refused request spends no key"
    );

    // rpm=3 counts forwarded requests as chat's: the fourth in the minute is refused.
    for _ in 0..3 {
        let resp = post(&gw, "/v1/embeddings", &json!({"input": "x"}), TOKEN).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    let resp = post(
        &gw,
        "/v1/responses",
        &json!({"input": "x", "stream": true}),
        TOKEN,
    )
    .await;
    let json = resp.assert_openai_error(429, None);
    assert_eq!(json["code"], "rate_limit_exceeded", "{json}");
    assert!(resp.header("retry-after").is_some());
    assert_eq!(mock.requests().len(), 3);

    // One record each, the refusals as errors with no key.
    let records = log.wait(7).await;
    let outcomes: Vec<(&str, &str, bool)> = records
        .iter()
        .map(|r| {
            (
                r["endpoint"].as_str().unwrap(),
                r["outcome"].as_str().unwrap(),
                r["key"].is_null(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("embeddings", "error", true),
            ("rerank", "error", true),
            ("messages", "error", true),
            ("embeddings", "completed", false),
            ("embeddings", "completed", false),
            ("embeddings", "completed", false),
            ("responses", "error", true),
        ]
    );
    assert!(records[1]["model"].is_null(), "{}", records[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_forwarded_stream_is_one_estimated_record() {
    let mock = MockUpstream::start().await;
    // The Responses API stream: created, three deltas, completed; it breaks after a delta.
    mock.set_chat("key-a", Reply::ok().chunks(5).break_after(2));
    let log = UsageLog::new();
    let gw = gateway(&mock, &log, TOKEN).await;
    let body = json!({"input": "count the tokens of this prompt", "stream": true});
    let resp = post(&gw, "/v1/responses", &body, TOKEN).await;
    let text = resp.text();
    assert!(text.contains("response.output_text.delta"), "{text}");
    assert!(!text.contains("response.completed"), "{text}");
    let records = log.wait(1).await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(log.records().len(), 1, "exactly one record");
    let r = &records[0];
    assert_eq!(
        (&r["outcome"], &r["estimated"]),
        (&json!("broken"), &json!(true)),
        "{r}"
    );
    assert!(
        r["prompt_tokens"].as_u64().unwrap() >= 5,
        "the input counts: {r}"
    );
    // "s0c0 " is the one delta sent (at most a token a byte), not the whole event's ~90 bytes.
    let completion = r["completion_tokens"].as_u64().unwrap();
    assert!((1..=5).contains(&completion), "{r}");
    assert!(r["client"].is_null(), "a bare token has no name: {r}");
}

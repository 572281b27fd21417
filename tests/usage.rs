//! Exact usage: one record per request, whatever the ending, with the upstream's own counts
//! (a stream's usage chunk asked for on the client's behalf and hidden from it), estimates
//! marked where the upstream gave none.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use sha2::Digest;
use support::*;

const MODEL: &str = "openai-gpt-oss-120b";

async fn gateway(mock: &MockUpstream, log: &UsageLog, tokens: &[&str]) -> TestGateway {
    let path = log.path().to_owned();
    let tokens: Vec<Secret> = tokens.iter().map(|t| Secret::new((*t).into())).collect();
    spawn_gateway(mock, &["key-a"], move |s| {
        s.usage_log = Some(path);
        s.auth_tokens = tokens;
        with_admin(s);
    })
    .await
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// What the mock sent as chunks 0..n of request `seq`, as the client should see them.
fn expected_chunks(seq: usize, n: usize) -> Vec<String> {
    let mut out: Vec<String> = (0..n)
        .map(|i| chunk_json(seq, &json!(MODEL), i, n))
        .collect();
    out.push("[DONE]".into());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unary_record_holds_the_upstreams_usage() {
    let mock = MockUpstream::start().await;
    let log = UsageLog::new();
    let gw = gateway(&mock, &log, &["tok-b name=billing"]).await;
    let auth = bearer("tok-b");
    let resp = gw
        .http
        .chat_with(&chat_body(), &[("authorization", &auth)])
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let records = log.wait(1).await;
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(r["client"], "billing");
    assert_eq!(r["model"], MODEL);
    assert_eq!(r["key"], "key-1");
    assert_eq!(r["door"], "http");
    assert_eq!(r["endpoint"], "chat/completions");
    assert_eq!(
        (
            &r["prompt_tokens"],
            &r["completion_tokens"],
            &r["total_tokens"]
        ),
        (&json!(1), &json!(3), &json!(4))
    );
    assert_eq!(r["estimated"], false);
    assert_eq!(r["outcome"], "completed");
    assert_eq!(r["request_id"], resp.header("x-request-id").unwrap());
    assert!(r["ttft_ms"].is_u64() && r["duration_ms"].is_u64());
    assert!(r["time"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_client_did_not_ask_gets_its_bytes_and_the_record_the_usage() {
    let mock = MockUpstream::start().await;
    let log = UsageLog::new();
    let gw = gateway(&mock, &log, &[]).await;
    let body = stream_body();
    let transcript = gw.http.chat_stream(&body).await.collect().await;
    assert_eq!(
        transcript.data(),
        expected_chunks(0, 3),
        "no usage chunk reaches the client"
    );
    // The upstream was asked for usage; the rest of the client's bytes went as they came.
    let sent = mock.chat_requests()[0].json.clone().unwrap();
    assert_eq!(sent["stream_options"]["include_usage"], true);
    let records = log.wait(1).await;
    let (prompt, completion) = stream_usage(3);
    assert_eq!(records[0]["prompt_tokens"], prompt);
    assert_eq!(records[0]["completion_tokens"], completion);
    assert_eq!(records[0]["total_tokens"], prompt + completion);
    assert_eq!(records[0]["estimated"], false);
    assert_eq!(records[0]["outcome"], "completed");
    assert!(records[0]["client"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_client_asked_gets_the_usage_chunk_itself() {
    let mock = MockUpstream::start().await;
    let log = UsageLog::new();
    let gw = gateway(&mock, &log, &[]).await;
    let mut body = stream_body();
    body["stream_options"] = json!({"include_usage": true});
    let transcript = gw.http.chat_stream(&body).await.collect().await;
    let mut expected = expected_chunks(0, 3);
    expected.insert(3, usage_chunk_json(0, &json!(MODEL), 3));
    assert_eq!(transcript.data(), expected);
    let sent: Value = mock.chat_requests()[0].json.clone().unwrap();
    let mut want = body.clone();
    want["model"] = json!(MODEL);
    assert_eq!(sent, want, "the client's own request, nothing added");
    let records = log.wait(1).await;
    let (prompt, completion) = stream_usage(3);
    assert_eq!(records[0]["total_tokens"], prompt + completion);
    assert_eq!(records[0]["estimated"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_broken_after_three_chunks_is_one_estimated_broken_record() {
    let mock = MockUpstream::start().await;
    mock.set_chat("key-a", Reply::ok().chunks(5).break_after(3));
    let log = UsageLog::new();
    let gw = gateway(&mock, &log, &[]).await;
    let transcript = gw.http.chat_stream(&stream_body()).await.collect().await;
    assert!(!transcript.has_done());
    let records = log.wait(1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(log.records().len(), 1, "exactly one record");
    let r = &records[0];
    assert_eq!(r["outcome"], "broken");
    assert_eq!(r["estimated"], true);
    assert!(r["completion_tokens"].as_u64().unwrap() >= 3, "{r}");
    assert!(r["prompt_tokens"].as_u64().unwrap() >= 1, "{r}");
}

/// OpenAI's way once asked for usage: `"usage":null` on every chunk. The gateway then holds
/// the chunks unread for an estimate it needs only if the usage never comes; here it never
/// does, and the estimate is made from them. The client sees its chunks without the null.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_promised_its_usage_and_broke_is_estimated_from_its_chunks() {
    let mock = MockUpstream::start().await;
    let with_null = |i: usize| {
        let mut chunk: Value = serde_json::from_str(&chunk_json(0, &json!(MODEL), i, 40)).unwrap();
        chunk["usage"] = Value::Null;
        chunk.to_string()
    };
    mock.set_chat(
        "key-a",
        Reply::ok().events((0..40).map(with_null)).break_after(30),
    );
    let log = UsageLog::new();
    let gw = gateway(&mock, &log, &[]).await;
    let transcript = gw.http.chat_stream(&stream_body()).await.collect().await;
    assert!(!transcript.has_done());
    let data = transcript.data();
    assert_eq!(
        data.len(),
        31,
        "30 chunks, then the error event: {:?}",
        &data[29..]
    );
    assert!(data[30].contains("upstream_stream_broken"));
    assert_eq!(
        data[0],
        chunk_json(0, &json!(MODEL), 0, 40),
        "the null is taken out"
    );
    let records = log.wait(1).await;
    let r = &records[0];
    assert_eq!(r["outcome"], "broken");
    assert_eq!(r["estimated"], true);
    // 30 chunks of `s0c<i>✓ `: each a few tokens; bytes / 4 of the raw chunks would be ~1,800.
    let completion = r["completion_tokens"].as_u64().unwrap();
    assert!((60..=200).contains(&completion), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_is_one_cancelled_record() {
    let mock = MockUpstream::start().await;
    let gate = Gate::new();
    mock.set_chat("key-a", Reply::ok().chunks(5).hold_after(2, &gate));
    let log = UsageLog::new();
    let gw = gateway(&mock, &log, &[]).await;
    let mut stream = gw.http.chat_stream(&stream_body()).await;
    stream.next_event(PATIENCE).await.expect("a first chunk");
    stream.next_event(PATIENCE).await.expect("a second chunk");
    drop(stream);
    assert!(mock.wait_disconnected(PATIENCE).await);
    let records = log.wait(1).await;
    assert_eq!(records[0]["outcome"], "cancelled");
    assert_eq!(records[0]["estimated"], true);
    gate.open();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(log.records().len(), 1, "exactly one record");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_requests_are_a_thousand_records() {
    let mock = MockUpstream::start().await;
    let log = UsageLog::new();
    let gw = gateway(&mock, &log, &[]).await;
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let http = gw.http.clone();
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                assert_eq!(http.chat(&chat_body()).await.status, 200);
            } else {
                let t = http.chat_stream(&stream_body()).await.collect().await;
                assert!(t.has_done());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let records = log.wait(1000).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(log.records().len(), 1000);
    let mut ids: Vec<&str> = records
        .iter()
        .map(|r| r["request_id"].as_str().unwrap())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 1000, "one record per request");
    let usage = gw
        .http
        .get_with("/admin/usage", &[("authorization", &bearer(ADMIN))])
        .await
        .json();
    let all = &usage["since_start"]["by"]["all"];
    assert_eq!(all["requests"], 1000);
    let (p, c) = stream_usage(3);
    assert_eq!(all["total_tokens"], 500 * 4 + 500 * (p + c));
    let metrics = gw.http.get("/metrics").await.text();
    assert!(
        metrics.contains(&format!(
            "gateway_tokens_total{{client=\"(none)\",model=\"{MODEL}\",type=\"prompt\"}} {}",
            500 + 500 * p
        )),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_and_http_records_have_the_same_fields() {
    use megallm_gateway::grpc::pb;
    let mock = MockUpstream::start().await;
    let log = UsageLog::new();
    let gw = gateway(&mock, &log, &["tok-g name=svc"]).await;
    let auth = bearer("tok-g");
    gw.http
        .chat_with(&chat_body(), &[("authorization", &auth)])
        .await;
    let mut client = grpc_client(&gw).await;
    let mut req = tonic::Request::new(hi());
    req.metadata_mut()
        .insert("authorization", auth.parse().unwrap());
    client.create_chat_completion(req).await.expect("unary");
    let mut req = tonic::Request::new(hi());
    req.metadata_mut()
        .insert("authorization", auth.parse().unwrap());
    let mut stream = client
        .stream_chat_completion(req)
        .await
        .expect("stream")
        .into_inner();
    let mut n = 0;
    while let Some(msg) = stream.message().await.expect("chunk") {
        let _: pb::ChatCompletionChunk = msg;
        n += 1;
    }
    assert_eq!(n, 3, "the usage chunk is not a message");
    let records = log.wait(3).await;
    let keys = |r: &Value| {
        let mut k: Vec<String> = r.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&records[0]), keys(&records[1]));
    assert_eq!(keys(&records[0]), keys(&records[2]));
    assert_eq!(records[0]["door"], "http");
    assert_eq!(records[1]["door"], "grpc");
    assert_eq!(records[2]["door"], "grpc");
    for r in &records {
        assert_eq!(r["client"], "svc");
        assert_eq!(r["estimated"], false);
    }
    assert_eq!(records[2]["total_tokens"], {
        let (p, c) = stream_usage(3);
        p + c
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_written_as_sha256_works() {
    let mock = MockUpstream::start().await;
    let log = UsageLog::new();
    let digest = sha2::Sha256::digest(b"tok-secret");
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let line = format!("sha256:{hex} name=hashed");
    let gw = gateway(&mock, &log, &[&line]).await;
    let ok = gw
        .http
        .chat_with(&chat_body(), &[("authorization", &bearer("tok-secret"))])
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let wrong = gw
        .http
        .chat_with(&chat_body(), &[("authorization", &bearer(&hex))])
        .await;
    wrong.assert_openai_error(401, None);
    assert_eq!(log.wait(1).await[0]["client"], "hashed");
}

/// Shutdown writes every record before it returns: none is left in the writer's queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_every_record() {
    let mock = MockUpstream::start().await;
    let log = UsageLog::new();
    let gw = gateway(&mock, &log, &[]).await;
    for _ in 0..50 {
        assert_eq!(gw.http.chat(&chat_body()).await.status, 200);
    }
    gw.shutdown().await;
    assert_eq!(log.records().len(), 50, "every record is in the log");
}

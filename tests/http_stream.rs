//! HTTP door, `"stream": true`: chunks forwarded in order and at once, upstream breaks, client
//! disconnects (issue 2).
mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::*;

fn as_json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_arrive_in_order_and_identical_then_done() {
    let mock = MockUpstream::start().await;
    mock.set_chat("key-a", Reply::ok().chunks(6));
    let gw = spawn_gateway(&mock, &["key-a"], |_| {}).await;

    let body = json!({"model": "m1", "messages": [{"role": "user", "content": "hi"}], "stream": true,
                      "stream_options": {"include_usage": true}});
    let sse = gw.http.chat_stream(&body).await;
    assert_eq!(sse.status, 200, "{:?}", sse.body);
    let ct = sse.header("content-type").unwrap_or_default();
    assert!(ct.starts_with("text/event-stream"), "content-type {ct:?}");
    let t = sse.collect().await;

    let up = mock.chat_requests();
    assert_eq!(up.len(), 1);
    assert_eq!(
        up[0].json.clone().unwrap(),
        body,
        "upstream body differs from the client's"
    );
    let sent = mock.sent_chunks(up[0].seq);
    assert_eq!(sent.len(), 6);

    let data = t.data();
    // The client asked for usage: the mock's usage chunk comes before [DONE].
    assert_eq!(
        data.len(),
        8,
        "want 6 chunks + usage + [DONE]; got {data:?}"
    );
    for (i, (got, want)) in data.iter().zip(&sent).enumerate() {
        assert_eq!(as_json(got), as_json(want), "chunk {i}");
    }
    assert_eq!(
        as_json(&data[6]),
        as_json(&usage_chunk_json(up[0].seq, &json!("m1"), 6))
    );
    assert_eq!(data.last().unwrap(), "[DONE]");
    assert_eq!(t.end, StreamEnd::Clean);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_chunk_reaches_the_client_while_the_upstream_holds_the_second() {
    let mock = MockUpstream::start().await;
    let gate = Gate::new();
    mock.set_chat("key-a", Reply::ok().chunks(3).hold_after(1, &gate));
    let gw = spawn_gateway(&mock, &["key-a"], |_| {}).await;

    let mut sse = gw.http.chat_stream(&stream_body()).await;
    assert_eq!(sse.status, 200, "{:?}", sse.body);
    // The mock will not send chunk 2 until the gate opens: a buffering gateway never gets here.
    let first = sse
        .next_event(PATIENCE)
        .await
        .expect("first chunk before the end of stream");
    let seq = mock.chat_requests()[0].seq;
    let sent = mock.sent_chunks(seq);
    assert_eq!(sent.len(), 1, "the mock is still holding chunk 2");
    assert_eq!(as_json(&first.data), as_json(&sent[0]));

    gate.open();
    let rest = sse.collect().await;
    let sent = mock.sent_chunks(seq);
    assert_eq!(sent.len(), 3);
    let data = rest.data();
    assert_eq!(data.len(), 3, "{data:?}");
    assert_eq!(as_json(&data[0]), as_json(&sent[1]));
    assert_eq!(as_json(&data[1]), as_json(&sent[2]));
    assert_eq!(data[2], "[DONE]");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_chunk_arrives_before_the_upstream_sends_the_next() {
    let mock = MockUpstream::start().await;
    mock.set_chat(
        "key-a",
        Reply::ok()
            .chunks(2)
            .pause_after(1, Duration::from_millis(1500)),
    );
    let gw = spawn_gateway(&mock, &["key-a"], |_| {}).await;

    let t = gw.http.chat_stream(&stream_body()).await.collect().await;
    assert_eq!(t.data().len(), 3, "{:?}", t.data());
    let chunk_times: Vec<_> = mock
        .stream_events()
        .into_iter()
        .filter(|e| matches!(e.kind, StreamEventKind::Chunk { .. }))
        .map(|e| e.at)
        .collect();
    assert_eq!(chunk_times.len(), 2);
    // Event order across the two ends (one clock): the client had chunk 1 before the mock
    // even produced chunk 2.
    assert!(
        t.events[0].at < chunk_times[1],
        "chunk 1 reached the client {:?} after the mock sent chunk 2",
        t.events[0].at - chunk_times[1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_break_mid_stream_gives_an_error_event_and_no_done() {
    let mock = MockUpstream::start().await;
    mock.set_chat("key-a", Reply::ok().chunks(5).break_after(2));
    let gw = spawn_gateway(&mock, &["key-a", "key-b"], |_| {}).await;
    mock.set_chat("key-b", Reply::ok().chunks(5).break_after(2));

    let sse = gw.http.chat_stream(&stream_body()).await;
    assert_eq!(sse.status, 200, "{:?}", sse.body);
    let t = sse.collect().await;
    let data = t.data();
    assert!(
        !t.has_done(),
        "[DONE] after a broken upstream stream: {data:?}"
    );
    assert_eq!(data.len(), 3, "want 2 chunks + 1 error event; got {data:?}");
    let up = mock.chat_requests();
    assert_eq!(up.len(), 1, "no retry once bytes went to the client");
    let sent = mock.sent_chunks(up[0].seq);
    assert_eq!(as_json(&data[0]), as_json(&sent[0]));
    assert_eq!(as_json(&data[1]), as_json(&sent[1]));
    let err = as_json(&data[2]);
    assert!(
        err["error"].is_object(),
        "last event is not an error event: {err}"
    );
    assert!(
        err["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_drops_the_upstream_stream() {
    let mock = MockUpstream::start().await;
    // 200 chunks, 25 ms apart: 5 s if nobody hangs up.
    mock.set_chat(
        "key-a",
        Reply::ok()
            .chunks(200)
            .chunk_pause(Duration::from_millis(25)),
    );
    let gw = spawn_gateway(&mock, &["key-a"], |_| {}).await;

    let mut sse = gw.http.chat_stream(&stream_body()).await;
    assert_eq!(sse.status, 200);
    sse.next_event(PATIENCE).await.expect("chunk 1");
    sse.next_event(PATIENCE).await.expect("chunk 2");
    drop(sse);

    assert!(
        mock.wait_disconnected(PATIENCE).await,
        "the upstream stream was not dropped after the client left"
    );
    let ev = mock.stream_events();
    assert!(
        !ev.iter().any(|e| e.kind == StreamEventKind::Done),
        "the upstream stream ran to its end"
    );
    let sent = ev
        .iter()
        .filter(|e| matches!(e.kind, StreamEventKind::Chunk { .. }))
        .count();
    assert!(sent < 200, "all chunks were produced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_before_the_first_byte_is_retried_on_another_key() {
    let mock = MockUpstream::start().await;
    mock.set_chat("key-a", Reply::status(500));
    mock.set_chat("key-b", Reply::status(500));
    mock.push_chat_once("key-b", Reply::ok().chunks(3));
    let gw = spawn_gateway(&mock, &["key-a", "key-b"], |_| {}).await;

    // Whichever key goes first, the request ends on key-b's one good stream.
    let sse = gw.http.chat_stream(&stream_body()).await;
    assert_eq!(sse.status, 200, "{:?}", sse.body);
    let attempts = sse
        .header("x-gateway-attempts")
        .expect("x-gateway-attempts on a stream");
    let t = sse.collect().await;
    assert_eq!(t.data().len(), 4, "{:?}", t.data());
    assert!(t.has_done());
    let parsed = parse_attempts(&attempts);
    assert_eq!(
        parsed.last().unwrap(),
        &("key-2".to_string(), "200".to_string()),
        "{attempts}"
    );
    assert!(parsed.len() <= 2, "{attempts}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_streaming_request_is_a_plain_json_400() {
    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &["key-a"], |_| {}).await;

    let body =
        json!({"messages": [{"role": "user", "content": "hi"}], "stream": true, "temperature": 5});
    let sse = gw.http.chat_stream(&body).await;
    let resp = HttpResponse {
        status: sse.status,
        headers: sse.headers.clone(),
        body: sse.body.clone().unwrap_or_default(),
    };
    resp.assert_openai_error(400, Some("temperature"));
    assert_eq!(mock.chat_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_dies_before_its_first_chunk_is_retried() {
    let mock = MockUpstream::start().await;
    // Headers 200, then the connection drops before any event.
    mock.set_chat("key-a", Reply::ok().break_after(0));
    let gw = spawn_gateway(&mock, &["key-a", "key-b"], |_| {}).await;

    let mut last = None;
    while mock.chat_count_for("key-a") == 0 {
        assert!(mock.chat_count() < 10, "key-a never chosen");
        let sse = gw.http.chat_stream(&stream_body()).await;
        assert_eq!(sse.status, 200, "{:?}", sse.body);
        let attempts = sse.header("x-gateway-attempts").unwrap_or_default();
        let t = sse.collect().await;
        assert!(t.has_done(), "{attempts}: {:?}", t.data());
        assert!(!t.events.iter().any(SseEvent::is_error), "{:?}", t.data());
        last = Some(attempts);
    }
    let attempts = parse_attempts(&last.unwrap());
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(attempts[0].0, "key-1");
    assert_eq!(attempts[1], ("key-2".to_string(), "200".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_first_chunk_within_first_byte_timeout_is_retried() {
    let mock = MockUpstream::start().await;
    let never = Gate::new();
    // Headers at once, but the first chunk never comes.
    mock.set_chat("key-a", Reply::ok().hold_after(0, &never));
    // Generous enough for the healthy key on a loaded machine: key-a never answers anyway.
    let gw = spawn_gateway(&mock, &["key-a", "key-b"], |s| {
        s.timeouts.first_byte = Duration::from_millis(1000)
    })
    .await;

    let mut last = None;
    while mock.chat_count_for("key-a") == 0 {
        assert!(mock.chat_count() < 10, "key-a never chosen");
        let sse = gw.http.chat_stream(&stream_body()).await;
        assert_eq!(sse.status, 200, "{:?}", sse.body);
        let attempts = sse.header("x-gateway-attempts").unwrap_or_default();
        let t = sse.collect().await;
        assert!(t.has_done(), "{attempts}: {:?}", t.data());
        last = Some(attempts);
    }
    assert_eq!(last.as_deref(), Some("key-1:timeout,key-2:200"));
    assert!(
        mock.wait_disconnected(PATIENCE).await,
        "the timed-out upstream stream was not dropped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_upstream_mid_stream_ends_with_an_error_event() {
    let mock = MockUpstream::start().await;
    let never = Gate::new();
    mock.set_chat("key-a", Reply::ok().chunks(3).hold_after(1, &never));
    let gw = spawn_gateway(&mock, &["key-a"], |s| {
        s.timeouts.idle = Duration::from_millis(300)
    })
    .await;

    let t = gw.http.chat_stream(&stream_body()).await.collect().await;
    let data = t.data();
    assert_eq!(t.status, 200);
    assert!(!t.has_done(), "{data:?}");
    assert_eq!(data.len(), 2, "want chunk 1 + an error event: {data:?}");
    assert!(t.events[1].is_error(), "{data:?}");
    assert!(
        mock.wait_disconnected(PATIENCE).await,
        "the idle upstream stream was not dropped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_split_across_reads_with_crlf_and_comments_are_put_together() {
    let mock = MockUpstream::start().await;
    mock.set_chat(
        "key-lf",
        Reply::ok().chunks(4).split_events().with_comments(),
    );
    mock.set_chat(
        "key-crlf",
        Reply::ok().chunks(4).split_events().with_comments().crlf(),
    );
    let gw = spawn_gateway(&mock, &["key-lf", "key-crlf"], |_| {}).await;

    for _ in 0..2 {
        let t = gw.http.chat_stream(&stream_body()).await.collect().await;
        let up = mock.chat_requests().last().unwrap().clone();
        let sent = mock.sent_chunks(up.seq);
        let data = t.data();
        assert_eq!(data.len(), 5, "{:?}: {data:?}", up.key);
        for (i, (got, want)) in data.iter().zip(&sent).enumerate() {
            assert_eq!(as_json(got), as_json(want), "{:?} chunk {i}", up.key);
        }
        assert_eq!(data[4], "[DONE]");
        assert_eq!(t.end, StreamEnd::Clean);
    }
    assert_eq!(mock.chat_count_for("key-lf"), 1);
    assert_eq!(mock.chat_count_for("key-crlf"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_streams_each_get_their_own_chunks() {
    let mock = MockUpstream::start().await;
    mock.set_default_chat(Reply::ok().chunks(8).chunk_pause(Duration::from_millis(5)));
    let gw = spawn_gateway(&mock, &["key-a", "key-b", "key-c"], |_| {}).await;

    let mut tasks = Vec::new();
    for i in 0..100 {
        let http = gw.http.clone();
        tasks.push(tokio::spawn(async move {
            let body = json!({"model": format!("model-{i}"), "stream": true,
                              "messages": [{"role": "user", "content": "hi"}]});
            (i, http.chat_stream(&body).await.collect().await)
        }));
    }
    let mut by_model = std::collections::HashMap::new();
    for t in tasks {
        let (i, t) = t.await.expect("stream task");
        assert_eq!(t.status, 200);
        assert!(t.has_done(), "stream {i}: {:?}", t.data());
        by_model.insert(format!("model-{i}"), t);
    }
    for r in mock.chat_requests() {
        let model = r.json.as_ref().unwrap()["model"]
            .as_str()
            .unwrap()
            .to_string();
        let t = &by_model[&model];
        let sent = mock.sent_chunks(r.seq);
        let data = t.data();
        assert_eq!(data.len(), sent.len() + 1, "{model}");
        for (got, want) in data.iter().zip(&sent) {
            assert_eq!(
                as_json(got),
                as_json(want),
                "{model}: chunks crossed between streams"
            );
        }
    }
    assert_eq!(mock.chat_count(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_client_that_resets_its_stream_drops_the_upstream_stream() {
    let mock = MockUpstream::start().await;
    mock.set_chat(
        "key-a",
        Reply::ok()
            .chunks(200)
            .chunk_pause(Duration::from_millis(25)),
    );
    let gw = spawn_gateway(&mock, &["key-a"], |_| {}).await;
    let h2 = HttpClient::new_h2c(gw.addr);

    let mut sse = h2.chat_stream(&stream_body()).await;
    assert_eq!(sse.status, 200);
    sse.next_event(PATIENCE).await.expect("chunk 1");
    drop(sse);
    assert!(
        mock.wait_disconnected(PATIENCE).await,
        "the upstream stream outlived the h2 stream reset"
    );
    // The connection itself lives on and serves the next request.
    assert_eq!(h2.chat(&chat_body()).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_ignores_stream_still_gives_the_client_a_stream() {
    let mock = MockUpstream::start().await;
    mock.set_default_chat(Reply::ok().unstreamed());
    let gw = spawn_gateway(&mock, &["key-a", "key-b"], |s| {
        s.admin_token = Some(megallm_gateway::config::Secret::new("adm".into()))
    })
    .await;

    // The client asks for usage: the recast answer's usage chunk is its own (a client that did
    // not ask gets no usage chunk, whatever the upstream sends).
    let mut body = stream_body();
    body["stream_options"] = json!({"include_usage": true});
    let sse = gw.http.chat_stream(&body).await;
    assert_eq!(sse.status, 200);
    assert_eq!(
        sse.header("x-gateway-attempts").as_deref(),
        Some("key-1:200")
    );
    let t = sse.collect().await;
    assert!(t.has_done(), "{:?}", t.data());
    let chunks: Vec<Value> = t
        .data()
        .iter()
        .filter(|d| d.as_str() != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(chunks.len(), 2, "{chunks:?}");
    assert_eq!(chunks[0]["object"], "chat.completion.chunk");
    assert_eq!(chunks[0]["choices"][0]["delta"]["content"], "mock reply 0");
    assert_eq!(chunks[0]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[1]["usage"]["total_tokens"], 4);
    assert_eq!(mock.chat_count(), 1, "not retried");
    let k = gw.admin_key("adm", "key-1").await;
    assert_eq!(k["failures"]["transient"], 0, "the key is not blamed: {k}");
}

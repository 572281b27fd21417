//! Client tokens with limits: rpm, tpm, concurrency and a daily budget, each enforced per
//! client (in one process, and across replicas with Redis); a model outside `models=` is
//! refused before any key is spent; both doors say so in their own shape.

mod support;

use serde_json::json;
use std::time::Duration;

use support::redis::RedisServer;
use support::*;
use tonic_types::StatusExt;

fn auth(token: &str) -> [(&'static str, String); 1] {
    [("authorization", format!("Bearer {token}"))]
}

async fn send(gw: &TestGateway, token: &str) -> HttpResponse {
    let [(name, value)] = auth(token);
    gw.http.chat_with(&chat_body(), &[(name, &value)]).await
}

async fn gateway(mock: &MockUpstream, line: &str) -> TestGateway {
    let line = line.to_owned();
    spawn_gateway(mock, &["key-a"], move |s| {
        s.auth_tokens = vec![Secret::new(line)];
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpm_refuses_with_429_retry_after_and_openais_shape() {
    let mock = MockUpstream::start().await;
    let gw = gateway(&mock, "tok-r name=r rpm=3").await;
    for _ in 0..3 {
        assert_eq!(send(&gw, "tok-r").await.status, 200);
    }
    let refused = send(&gw, "tok-r").await;
    let error = refused.assert_openai_error(429, None);
    assert_eq!(error["code"], "rate_limit_exceeded", "{error}");
    let wait: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    assert_eq!(mock.chat_count(), 3, "the refused request spent no key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_outside_the_list_is_403_before_any_upstream_call() {
    let mock = MockUpstream::start().await;
    let gw = gateway(&mock, "tok-m name=m models=gpt-4o,openai-gpt-oss-*").await;
    let [(name, value)] = auth("tok-m");
    let mut body = chat_body();
    body["model"] = "claude-3".into();
    let refused = gw.http.chat_with(&body, &[(name, &value)]).await;
    let error = refused.assert_openai_error(403, None);
    assert_eq!(error["code"], "model_not_allowed");
    assert_eq!(mock.chat_count(), 0);
    // The default model matches the glob.
    assert_eq!(send(&gw, "tok-m").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_is_held_for_a_streams_life() {
    let mock = MockUpstream::start().await;
    let gate = Gate::new();
    mock.set_chat("key-a", Reply::ok().hold_after(1, &gate));
    let gw = gateway(&mock, "tok-c name=c max_concurrent=1").await;
    let [(name, value)] = auth("tok-c");
    let mut stream = gw
        .http
        .chat_stream_with(&stream_body(), &[(name, &value)])
        .await;
    stream.next_event(PATIENCE).await.expect("first chunk");
    let refused = send(&gw, "tok-c").await;
    let error = refused.assert_openai_error(429, None);
    assert_eq!(error["code"], "rate_limit_exceeded");
    mock.clear("key-a");
    gate.open();
    while stream.next_event(PATIENCE).await.is_some() {}
    assert_eq!(
        send(&gw, "tok-c").await.status,
        200,
        "the place is free again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_daily_budget_is_insufficient_quota() {
    let mock = MockUpstream::start().await;
    // Each answer costs 4 tokens: 8 < 10 admits the third, 12 refuses the fourth.
    let gw = gateway(&mock, "tok-d name=d daily_tokens=10").await;
    for _ in 0..3 {
        assert_eq!(send(&gw, "tok-d").await.status, 200);
    }
    let refused = send(&gw, "tok-d").await;
    let error = refused.assert_openai_error(429, None);
    assert_eq!(error["code"], "insufficient_quota");
    assert_eq!(error["type"], "insufficient_quota");
    assert!(refused.header("retry-after").is_some());
    assert_eq!(mock.chat_count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpm_holds_within_five_percent() {
    let mock = MockUpstream::start().await;
    let gw = gateway(&mock, "tok-t name=t tpm=200").await;
    let mut admitted = 0u64;
    for _ in 0..80 {
        match send(&gw, "tok-t").await.status.as_u16() {
            200 => admitted += 1,
            429 => break,
            other => panic!("status {other}"),
        }
    }
    let spent = admitted * 4;
    assert!(
        (200..=210).contains(&spent),
        "{spent} tokens admitted against tpm=200"
    );
    let refused = send(&gw, "tok-t").await;
    assert_eq!(refused.json()["error"]["type"], "tokens");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_says_resource_exhausted_with_retry_info_and_quota_failure() {
    let mock = MockUpstream::start().await;
    let gw = gateway(&mock, "tok-g name=g rpm=1 models=openai-gpt-oss-*").await;
    let mut client = grpc_client(&gw).await;
    let request = |model: Option<&str>| {
        let mut msg = hi();
        if let Some(m) = model {
            msg.model = m.to_owned();
        }
        let mut req = tonic::Request::new(msg);
        req.metadata_mut()
            .insert("authorization", "Bearer tok-g".parse().unwrap());
        req
    };
    let denied = client
        .create_chat_completion(request(Some("gpt-4o")))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    client
        .create_chat_completion(request(None))
        .await
        .expect("first");
    let limited = client
        .create_chat_completion(request(None))
        .await
        .unwrap_err();
    assert_eq!(limited.code(), tonic::Code::ResourceExhausted);
    assert!(limited
        .get_details_retry_info()
        .unwrap()
        .retry_delay
        .is_some());
    let quota = limited.get_details_quota_failure().expect("QuotaFailure");
    assert_eq!(quota.violations[0].subject, "client:g:rpm");
    assert_eq!(mock.chat_count(), 1);
}

async fn replicas(mock: &MockUpstream, redis: &RedisServer, line: &str) -> Vec<TestGateway> {
    let mut out = Vec::new();
    for _ in 0..3 {
        let line = line.to_owned();
        let url = redis.url();
        out.push(
            spawn_gateway(mock, &["key-a"], move |s| {
                s.auth_tokens = vec![Secret::new(line)];
                s.redis = Some(Secret::new(url));
            })
            .await,
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_hold_across_three_replicas_with_redis() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    // rpm: 6 across the three, whichever serves.
    let gws = replicas(&mock, &redis, "tok-r name=rr rpm=6").await;
    let mut ok = 0;
    for i in 0..12 {
        if send(&gws[i % 3], "tok-r").await.status == 200 {
            ok += 1;
        }
    }
    assert_eq!(ok, 6, "rpm=6 across replicas");
    // The daily budget: 4 tokens an answer, 20 a day → 5 answers across the three.
    let gws = replicas(&mock, &redis, "tok-d name=dd daily_tokens=20").await;
    let mut ok = 0;
    for i in 0..9 {
        let resp = send(&gws[i % 3], "tok-d").await;
        match resp.status.as_u16() {
            200 => ok += 1,
            429 => assert_eq!(resp.json()["error"]["code"], "insufficient_quota"),
            s => panic!("status {s}"),
        }
    }
    assert_eq!(ok, 5, "daily_tokens=20 across replicas");
    // tpm: 40 a minute → 10 answers across the three.
    let gws = replicas(&mock, &redis, "tok-t name=tt tpm=40").await;
    let mut ok = 0u64;
    for i in 0..20 {
        if send(&gws[i % 3], "tok-t").await.status == 200 {
            ok += 1;
        }
    }
    assert!((40..=42).contains(&(ok * 4)), "{ok} answers against tpm=40");
    // Concurrency: a stream held on one replica takes the one place from the others.
    let gws = replicas(&mock, &redis, "tok-c name=cc max_concurrent=1").await;
    let gate = Gate::new();
    mock.set_chat("key-a", Reply::ok().hold_after(1, &gate));
    let [(name, value)] = auth("tok-c");
    let mut stream = gws[0]
        .http
        .chat_stream_with(&stream_body(), &[(name, &value)])
        .await;
    stream.next_event(PATIENCE).await.expect("first chunk");
    for gw in &gws[1..] {
        send(gw, "tok-c").await.assert_openai_error(429, None);
    }
    mock.clear("key-a");
    gate.open();
    while stream.next_event(PATIENCE).await.is_some() {}
    drop(stream);
    let freed = eventually(
        "the place is given back in Redis",
        PATIENCE,
        Duration::from_millis(20),
        || async { (send(&gws[2], "tok-c").await.status == 200).then_some(()) },
    )
    .await;
    let _: () = freed;
}

/// While Redis is down each replica keeps only its share of a limit (the limit over the
/// replicas last seen alive), so the replicas together stay within it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_each_replica_keeps_its_share() {
    let mut redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let mut gws = Vec::new();
    for _ in 0..2 {
        let url = redis.url();
        gws.push(
            spawn_gateway(&mock, &["key-a"], move |s| {
                s.auth_tokens = vec![Secret::new("tok-s name=ss rpm=10".into())];
                s.redis = Some(Secret::new(url));
            })
            .await,
        );
    }
    for gw in &gws {
        eventually(
            "each replica sees the other",
            PATIENCE,
            Duration::from_millis(50),
            || async {
                let text = gw.http.get("/metrics").await.text();
                text.contains("gateway_state_store_replicas 2")
                    .then_some(())
            },
        )
        .await;
    }
    // Two requests counted in Redis before it goes.
    for gw in &gws {
        assert_eq!(send(gw, "tok-s").await.status, 200);
    }
    redis.kill();
    for gw in &gws {
        let mut ok = 0;
        for _ in 0..8 {
            match send(gw, "tok-s").await.status.as_u16() {
                200 => ok += 1,
                429 => {}
                s => panic!("status {s}"),
            }
        }
        assert_eq!(ok, 5, "rpm=10 over 2 replicas: 5 each while Redis is down");
    }
}

/// The tokens file is re-read by `POST /admin/tokens/reload` and when it changes: a new token
/// works with its limits, a removed one is refused, and a client's counters survive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tokens_file_reloads_by_admin_and_by_watch() {
    let mock = MockUpstream::start().await;
    let file = KeysFile::new(&["tok-a name=a rpm=2"]);
    let path = file.path().to_owned();
    let gw = spawn_gateway(&mock, &["key-a"], move |s| {
        s.auth_tokens_file = Some(path);
        with_admin(s);
    })
    .await;
    assert_eq!(send(&gw, "tok-a").await.status, 200);
    send(&gw, "tok-b").await.assert_openai_error(401, None);

    file.rewrite(&["tok-a name=a rpm=2", "tok-b name=b rpm=1"]);
    let resp = gw.admin_post(ADMIN, "/admin/tokens/reload").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let summary = resp.json()["reloaded"].clone();
    assert_eq!(
        (&summary["total"], &summary["limited"]),
        (&json!(2), &json!(2)),
        "{summary}"
    );
    assert_eq!(send(&gw, "tok-b").await.status, 200);
    send(&gw, "tok-b").await.assert_openai_error(429, None);
    // tok-a's minute still holds its first request: one more, then refused.
    assert_eq!(send(&gw, "tok-a").await.status, 200);
    send(&gw, "tok-a").await.assert_openai_error(429, None);

    // The watch: tok-b is taken out of the file and is refused without an admin call.
    file.rewrite(&["tok-a name=a rpm=2", "tok-c"]);
    eventually(
        "the watched file is re-read",
        PATIENCE,
        Duration::from_millis(50),
        || async { (send(&gw, "tok-c").await.status == 200).then_some(()) },
    )
    .await;
    send(&gw, "tok-b").await.assert_openai_error(401, None);
}

//! The key scheduler seen through the HTTP door against the mock upstream (issue 3): what each
//! upstream answer does to a key and to the request.
mod support;

use std::time::{Duration, Instant};

use support::*;

/// Sends chat requests one after the other (`every` apart) until `done()` or `timeout`;
/// asserts each answer is 200 and returns them.
async fn send_until(
    gw: &TestGateway,
    timeout: Duration,
    every: Duration,
    mut done: impl FnMut() -> bool,
) -> Vec<HttpResponse> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while !done() {
        assert!(
            Instant::now() < deadline,
            "condition not reached after {} requests in {timeout:?}",
            out.len()
        );
        let resp = gw.http.chat(&chat_body()).await;
        assert_eq!(
            resp.status,
            200,
            "request {}: {} attempts {:?}",
            out.len(),
            resp.text(),
            resp.attempts()
        );
        out.push(resp);
        tokio::time::sleep(every).await;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_key_rests_for_retry_after_then_serves_again() {
    let mock = MockUpstream::start().await;
    mock.push_chat_once("key-a", Reply::rate_limited(2));
    let gw = spawn_gateway(&mock, &["key-a", "key-b"], with_admin).await;

    // Until key-a met its 429: every client still gets 200 (retried on key-b).
    let first = send_until(&gw, PATIENCE, Duration::ZERO, || {
        mock.chat_count_for("key-a") >= 1
    })
    .await;
    assert_eq!(
        first.last().unwrap().attempts().as_deref(),
        Some("key-1:429,key-2:200")
    );
    let k1 = gw.admin_key(ADMIN, "key-1").await;
    assert_eq!(k1["state"], "cooling", "{k1}");
    let retry_in = k1["retry_in_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("retry_in_ms: {k1}"));
    assert!(
        retry_in > 0 && retry_in <= 2000,
        "retry_in_ms {retry_in}: {k1}"
    );
    assert_eq!(k1["failures"]["rate_limited"], 1, "{k1}");

    // Keep the traffic going: key-a gets nothing for 2 s, then it gets requests again.
    send_until(
        &gw,
        Duration::from_secs(8),
        Duration::from_millis(40),
        || mock.chat_count_for("key-a") >= 2,
    )
    .await;
    let t = mock.chat_times("key-a");
    let rest = t[1] - t[0];
    assert!(
        rest >= Duration::from_millis(1950),
        "key-a got a request {rest:?} after its 429 with Retry-After: 2"
    );
    assert!(
        rest <= Duration::from_secs(6),
        "key-a came back only after {rest:?}"
    );
    assert_eq!(mock.chat_requests_for("key-a")[1].status, Some(200));
    let k1 = gw.admin_key(ADMIN, "key-1").await;
    assert_eq!(k1["state"], "ready", "{k1}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_key_gets_one_request_then_none_until_a_probe_succeeds() {
    let mock = MockUpstream::start().await;
    mock.set("key-a", Reply::error(401, "Incorrect API key provided"));
    let gw = spawn_gateway(&mock, &["key-a", "key-b"], |s| {
        with_admin(s);
        s.scheduler.probe_interval = Duration::from_millis(200);
    })
    .await;

    for i in 0..10 {
        let resp = gw.http.chat(&chat_body()).await;
        assert_eq!(resp.status, 200, "request {i}: {}", resp.text());
    }
    assert_eq!(
        mock.chat_count_for("key-a"),
        1,
        "a revoked key got more than one request"
    );
    let k1 = gw.admin_key(ADMIN, "key-1").await;
    assert_eq!(k1["state"], "disabled", "{k1}");
    assert_eq!(k1["reason"], "invalid_credential", "{k1}");
    assert_eq!(k1["failures"]["credential"], 1, "{k1}");
    assert_eq!(k1["last_error"]["status"], 401, "{k1}");

    // The probe runs while the key is still revoked, and leaves it disabled.
    let t0 = Instant::now();
    let probe = mock
        .wait_request(PATIENCE, |r| {
            r.key.as_deref() == Some("key-a") && !r.is_chat() && r.at > t0
        })
        .await;
    let probe = probe.expect("no probe with key-a reached the upstream");
    assert!(
        probe.is_models(),
        "the probe is not GET /models: {} {}",
        probe.method,
        probe.path
    );
    let resp = gw.http.chat(&chat_body()).await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        mock.chat_count_for("key-a"),
        1,
        "a key whose probe failed served chat"
    );

    // The upstream accepts the key again: a probe sees it and the key serves chat again.
    mock.clear("key-a");
    let t1 = Instant::now();
    let ok_probe = mock
        .wait_request(PATIENCE, |r| {
            r.key.as_deref() == Some("key-a") && r.is_models() && r.at > t1
        })
        .await;
    assert!(
        ok_probe.is_some(),
        "no probe with key-a after the upstream accepted it"
    );
    eventually(
        "key-1 ready after a good probe",
        PATIENCE,
        Duration::from_millis(50),
        || async { (gw.admin_key(ADMIN, "key-1").await["state"] == "ready").then_some(()) },
    )
    .await;
    send_until(&gw, PATIENCE, Duration::ZERO, || {
        mock.chat_count_for("key-a") >= 2
    })
    .await;
    assert_eq!(mock.chat_requests_for("key-a")[1].status, Some(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_400_goes_back_on_the_first_try_and_the_key_stays_ready() {
    let mock = MockUpstream::start().await;
    let body = error_body(400, "Invalid value for 'tools[0].type'");
    mock.set_chat("key-a", Reply::status(400).body(body.to_string()));
    mock.set_chat("key-b", Reply::status(400).body(body.to_string()));
    let gw = spawn_gateway(&mock, &["key-a", "key-b"], with_admin).await;

    let resp = gw.http.chat(&chat_body()).await;
    let err = resp.assert_openai_error(400, None);
    assert_eq!(err["message"], "Invalid value for 'tools[0].type'");
    assert_eq!(mock.chat_count(), 1, "a 400 was retried");
    let attempts = parse_attempts(&resp.attempts().expect("x-gateway-attempts"));
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].1, "400");

    let k = gw.admin_key(ADMIN, &attempts[0].0).await;
    assert_eq!(k["state"], "ready", "{k}");
    assert_eq!(k["failures"]["caller"], 1, "{k}");
    for class in ["rate_limited", "quota", "credential", "transient"] {
        assert_eq!(k["failures"][class], 0, "{class}: {k}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_404_and_422_are_passed_through() {
    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &["key-a", "key-b"], |_| {}).await;
    for status in [404u16, 422] {
        mock.set_default_chat(Reply::error(status, &format!("mock says {status}")));
        let before = mock.chat_count();
        let resp = gw.http.chat(&chat_body()).await;
        let err = resp.assert_openai_error(status, None);
        assert_eq!(err["message"], format!("mock says {status}"));
        assert_eq!(mock.chat_count(), before + 1, "a {status} was retried");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_500_is_retried_on_another_key() {
    let mock = MockUpstream::start().await;
    mock.set_chat("key-a", Reply::status(500));
    let gw = spawn_gateway(&mock, &["key-a", "key-b"], with_admin).await;

    let mut seen = Vec::new();
    for _ in 0..4 {
        let resp = gw.http.chat(&chat_body()).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        seen.push(resp.attempts().expect("x-gateway-attempts"));
    }
    assert!(
        seen.iter().any(|a| a == "key-1:500,key-2:200"),
        "no retry visible in {seen:?}"
    );
    assert!(
        seen.iter()
            .all(|a| a == "key-1:500,key-2:200" || a == "key-2:200"),
        "{seen:?}"
    );
    let k1 = gw.admin_key(ADMIN, "key-1").await;
    assert!(
        k1["failures"]["transient"].as_u64().unwrap_or(0) >= 1,
        "{k1}"
    );
    assert_eq!(
        gw.admin_key(ADMIN, "key-2").await["failures"]["transient"],
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_attempts_bounds_the_tries_each_on_a_different_key() {
    let mock = MockUpstream::start().await;
    mock.set_default_chat(Reply::status(500));
    let gw = spawn_gateway(&mock, &["key-a", "key-b", "key-c", "key-d"], |s| {
        s.max_attempts = 3
    })
    .await;

    let resp = gw.http.chat(&chat_body()).await;
    assert!(
        resp.status.is_server_error(),
        "status {} body {}",
        resp.status,
        resp.text()
    );
    resp.check_openai_error(resp.status.as_u16(), None).unwrap();
    assert_eq!(mock.chat_count(), 3);
    let keys: std::collections::BTreeSet<_> =
        mock.chat_requests().iter().map(|r| r.key.clone()).collect();
    assert_eq!(keys.len(), 3, "retries reused a key: {keys:?}");
    let attempts = parse_attempts(&resp.attempts().expect("x-gateway-attempts"));
    assert_eq!(attempts.len(), 3, "{attempts:?}");
    assert!(attempts.iter().all(|(_, o)| o == "500"), "{attempts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_keys_rate_limited_gives_429_with_the_earliest_retry_after() {
    let mock = MockUpstream::start().await;
    mock.set_chat("key-a", Reply::rate_limited(3));
    mock.set_chat("key-b", Reply::rate_limited(30));
    let gw = spawn_gateway(&mock, &["key-a", "key-b"], |_| {}).await;

    let resp = gw.http.chat(&chat_body()).await;
    resp.assert_openai_error(429, None);
    let ra: u64 = resp
        .header("retry-after")
        .expect("Retry-After on 429")
        .parse()
        .expect("Retry-After in seconds");
    assert!(
        (2..=3).contains(&ra),
        "Retry-After {ra}, want about 3 (the earliest key; the other says 30)"
    );
    assert_eq!(mock.chat_count(), 2);
    let mut attempts = parse_attempts(&resp.attempts().expect("x-gateway-attempts"));
    attempts.sort();
    assert_eq!(
        attempts,
        vec![
            ("key-1".into(), "429".into()),
            ("key-2".into(), "429".into())
        ]
    );

    // While both rest, the gateway answers at once without bothering the upstream.
    let resp = gw.http.chat(&chat_body()).await;
    resp.assert_openai_error(429, None);
    assert!(resp.header("retry-after").is_some());
    assert_eq!(mock.chat_count(), 2, "a cooling key was used");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_keys_revoked_gives_503_never_401() {
    let mock = MockUpstream::start().await;
    mock.set("key-a", Reply::error(401, "Incorrect API key provided"));
    mock.set("key-b", Reply::error(403, "Forbidden"));
    let gw = spawn_gateway(&mock, &["key-a", "key-b"], |_| {}).await;

    let resp = gw.http.chat(&chat_body()).await;
    resp.assert_openai_error(503, None);
    assert_eq!(mock.chat_count(), 2);
    let resp = gw.http.chat(&chat_body()).await;
    resp.assert_openai_error(503, None);
    assert_eq!(mock.chat_count(), 2, "a disabled key was used");
    assert_eq!(gw.http.get("/readyz").await.status, 503);
    assert_eq!(gw.http.get("/healthz").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_errors_that_echo_a_key_are_masked() {
    let key_a = "sk-live-ECHOKEY-AAAA-0123456789abcdef";
    let key_b = "sk-live-ECHOKEY-BBBB-0123456789abcdef";
    let mock = MockUpstream::start().await;
    mock.set_chat(
        key_a,
        Reply::error(400, &format!("Invalid request for key {key_a}: bad 'foo'")),
    );
    mock.set_chat(
        key_b,
        Reply::error(400, &format!("Invalid request for key {key_b}: bad 'foo'")),
    );
    let gw = spawn_gateway(&mock, &[key_a, key_b], with_admin).await;

    let resp = gw.http.chat(&chat_body()).await;
    resp.assert_openai_error(400, None);
    let text = resp.text();
    assert!(
        !text.contains(key_a) && !text.contains(key_b),
        "key echoed to the client: {text}"
    );
    assert!(
        !text.contains("0123456789abcdef"),
        "part of a key echoed to the client: {text}"
    );

    // A 401 echoing the key: not passed through, and not leaked through admin's last_error.
    mock.set(
        key_a,
        Reply::error(401, &format!("Incorrect API key provided: {key_a}")),
    );
    mock.set(
        key_b,
        Reply::error(401, &format!("Incorrect API key provided: {key_b}")),
    );
    let resp = gw.http.chat(&chat_body()).await;
    let text = resp.text();
    assert!(
        !text.contains(key_a) && !text.contains(key_b),
        "key echoed to the client: {text}"
    );
    let admin = gw
        .http
        .get_with(
            "/admin/keys",
            &[("authorization", &format!("Bearer {ADMIN}"))],
        )
        .await;
    let text = admin.text();
    assert!(
        !text.contains(key_a) && !text.contains(key_b),
        "key in /admin/keys: {text}"
    );
    assert!(
        !text.contains("0123456789abcdef"),
        "part of a key in /admin/keys: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_byte_timeout_is_retried_and_named_timeout() {
    let mock = MockUpstream::start().await;
    mock.set_chat("key-a", Reply::ok().delay(Duration::from_secs(5)));
    let gw = spawn_gateway(&mock, &["key-a", "key-b"], |s| {
        s.timeouts.first_byte = Duration::from_millis(1000)
    })
    .await;

    let out = send_until(&gw, PATIENCE, Duration::ZERO, || {
        mock.chat_count_for("key-a") >= 1
    })
    .await;
    assert_eq!(
        out.last().unwrap().attempts().as_deref(),
        Some("key-1:timeout,key-2:200")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_upstream_is_503_with_connect_attempts() {
    // A port held bound but never listening: connections to it are refused, and no other
    // test can take it meanwhile.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = socket.local_addr().unwrap().port();
    let mut s = Settings::for_upstream(&format!("http://127.0.0.1:{port}/v1"), &["key-a", "key-b"]);
    s.timeouts.connect = Duration::from_secs(2);
    let gw = start_gateway(s).await;

    let resp = gw.http.chat(&chat_body()).await;
    resp.assert_openai_error(503, None);
    let attempts = parse_attempts(&resp.attempts().expect("x-gateway-attempts"));
    assert!(!attempts.is_empty());
    assert!(attempts.iter().all(|(_, o)| o == "connect"), "{attempts:?}");
    drop(socket);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_header_has_the_documented_format() {
    let mock = MockUpstream::start().await;
    mock.push_chat_once("key-a", Reply::rate_limited(1));
    mock.push_chat_once("key-b", Reply::status(502));
    let gw = spawn_gateway(&mock, &["key-a", "key-b", "key-c"], |_| {}).await;

    for _ in 0..6 {
        let resp = gw.http.chat(&chat_body()).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        let h = resp.attempts().expect("x-gateway-attempts");
        for (id, outcome) in parse_attempts(&h) {
            let n = id
                .strip_prefix("key-")
                .unwrap_or_else(|| panic!("bad key id {id} in {h}"));
            assert!(
                n.parse::<u32>().is_ok_and(|n| (1..=3).contains(&n)),
                "bad key id {id} in {h}"
            );
            assert!(
                matches!(outcome.as_str(), "connect" | "timeout")
                    || (outcome.len() == 3 && outcome.parse::<u16>().is_ok()),
                "bad outcome {outcome} in {h}"
            );
        }
        assert!(h.ends_with(":200"), "{h}");
        assert!(!h.contains(' '), "{h}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_exhausted_key_is_benched() {
    let mock = MockUpstream::start().await;
    let quota = serde_json::json!({"error": {"message": "You exceeded your current quota",
        "type": "insufficient_quota", "param": null, "code": "insufficient_quota"}});
    mock.set_chat("key-a", Reply::status(429).body(quota.to_string()));
    let gw = spawn_gateway(&mock, &["key-a", "key-b"], with_admin).await;

    let out = send_until(&gw, PATIENCE, Duration::ZERO, || {
        mock.chat_count_for("key-a") >= 1
    })
    .await;
    assert_eq!(
        out.last().unwrap().attempts().as_deref(),
        Some("key-1:429,key-2:200")
    );
    let k1 = gw.admin_key(ADMIN, "key-1").await;
    assert_eq!(k1["failures"]["quota"], 1, "{k1}");
    assert_eq!(k1["failures"]["rate_limited"], 0, "{k1}");
    assert_ne!(k1["state"], "ready", "{k1}");
    for _ in 0..6 {
        assert_eq!(gw.http.chat(&chat_body()).await.status, 200);
    }
    assert_eq!(
        mock.chat_count_for("key-a"),
        1,
        "a benched key got more requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_without_retry_after_backs_off_within_backoff_max() {
    let mock = MockUpstream::start().await;
    mock.push_chat_once("key-a", Reply::error(429, "slow down"));
    let gw = spawn_gateway(&mock, &["key-a", "key-b"], |s| {
        with_admin(s);
        // Equal jitter or not, the first backoff is at least half of 1 s: time enough to look.
        s.scheduler.backoff_base = Duration::from_secs(1);
        s.scheduler.backoff_max = Duration::from_secs(2);
    })
    .await;

    send_until(&gw, PATIENCE, Duration::ZERO, || {
        mock.chat_count_for("key-a") >= 1
    })
    .await;
    let k1 = gw.admin_key(ADMIN, "key-1").await;
    assert_eq!(k1["state"], "cooling", "{k1}");
    let retry_in = k1["retry_in_ms"].as_u64().unwrap_or(0);
    assert!(
        retry_in > 0 && retry_in <= 2000,
        "retry_in_ms {retry_in} outside (0, backoff_max]: {k1}"
    );
    // It comes back by itself.
    send_until(
        &gw,
        Duration::from_secs(5),
        Duration::from_millis(20),
        || mock.chat_count_for("key-a") >= 2,
    )
    .await;
    let t = mock.chat_times("key-a");
    assert!(
        t[1] - t[0] <= Duration::from_secs(3),
        "back after {:?}",
        t[1] - t[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opens_after_consecutive_failures_then_a_trial_closes_it() {
    let mock = MockUpstream::start().await;
    mock.set_chat("key-a", Reply::status(503));
    let gw = spawn_gateway(&mock, &["key-a", "key-b"], |s| {
        with_admin(s);
        s.scheduler.breaker_threshold = 2;
        s.scheduler.breaker_cooldown = Duration::from_secs(2);
    })
    .await;

    // Two failures in a row open the breaker; every client still gets 200.
    send_until(&gw, PATIENCE, Duration::ZERO, || {
        mock.chat_count_for("key-a") >= 2
    })
    .await;
    let k1 = gw.admin_key(ADMIN, "key-1").await;
    assert_eq!(k1["state"], "cooling", "{k1}");
    assert_eq!(k1["reason"], "breaker", "{k1}");
    assert_eq!(k1["failures"]["transient"], 2, "{k1}");

    // The upstream heals; after the cooldown one trial request closes the breaker.
    mock.clear("key-a");
    send_until(
        &gw,
        Duration::from_secs(8),
        Duration::from_millis(40),
        || mock.chat_count_for("key-a") >= 3,
    )
    .await;
    let t = mock.chat_times("key-a");
    assert!(
        t[2] - t[1] >= Duration::from_millis(1950),
        "key-a used {:?} after its breaker opened (cooldown 2 s)",
        t[2] - t[1]
    );
    eventually(
        "key-1 ready after a good trial",
        PATIENCE,
        Duration::from_millis(50),
        || async { (gw.admin_key(ADMIN, "key-1").await["state"] == "ready").then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_keys_behind_open_breakers_gives_503_with_retry_after() {
    let mock = MockUpstream::start().await;
    mock.set_default_chat(Reply::status(500));
    let gw = spawn_gateway(&mock, &["key-a", "key-b"], |s| {
        s.scheduler.breaker_threshold = 1;
        s.scheduler.breaker_cooldown = Duration::from_secs(3);
    })
    .await;

    let first = gw.http.chat(&chat_body()).await;
    assert!(
        first.status.is_server_error(),
        "{} {}",
        first.status,
        first.text()
    );
    assert_eq!(mock.chat_count(), 2);
    // Both breakers are open now: no upstream call, 503 and when to come back.
    let resp = gw.http.chat(&chat_body()).await;
    resp.assert_openai_error(503, None);
    assert_eq!(
        mock.chat_count(),
        2,
        "a key behind an open breaker was used"
    );
    let ra: u64 = resp
        .header("retry-after")
        .expect("Retry-After on a 503 whose end is known")
        .parse()
        .expect("Retry-After in seconds");
    assert!(
        (1..=3).contains(&ra),
        "Retry-After {ra}, breaker cooldown 3 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_json_upstream_error_still_reaches_the_client_in_openai_shape() {
    let mock = MockUpstream::start().await;
    mock.set_default_chat(
        Reply::status(502)
            .body("<html><body><h1>502 Bad Gateway</h1></body></html>")
            .header("content-type", "text/html"),
    );
    let gw = spawn_gateway(&mock, &["key-a", "key-b"], |_| {}).await;
    let resp = gw.http.chat(&chat_body()).await;
    assert!(
        resp.status.is_server_error(),
        "{} {}",
        resp.status,
        resp.text()
    );
    resp.check_openai_error(resp.status.as_u16(), None).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_as_an_http_date_is_honoured() {
    let mock = MockUpstream::start().await;
    let when = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(3));
    mock.set_chat(
        "key-a",
        Reply::error(429, "slow down").header("retry-after", &when),
    );
    mock.set_chat("key-b", Reply::rate_limited(60));
    let gw = spawn_gateway(&mock, &["key-a", "key-b"], with_admin).await;

    let resp = gw.http.chat(&chat_body()).await;
    resp.assert_openai_error(429, None);
    let ra: u64 = resp
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!((1..=3).contains(&ra), "Retry-After {ra}; key-a said {when}");
    let k1 = gw.admin_key(ADMIN, "key-1").await;
    assert_eq!(k1["state"], "cooling", "{k1}");
    let retry_in = k1["retry_in_ms"].as_u64().unwrap();
    assert!(
        (1..=3000).contains(&retry_in),
        "retry_in_ms {retry_in}: {k1}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_403_for_a_model_is_the_requests_fault_not_the_keys() {
    let mock = MockUpstream::start().await;
    let body = serde_json::json!({"error": {
        "message": "Project does not have access to model `o9`",
        "type": "invalid_request_error", "param": null, "code": "model_not_found"}});
    mock.set_default_chat(Reply::status(403).body(body.to_string()));
    let gw = spawn_gateway(&mock, &["key-a", "key-b"], with_admin).await;

    for _ in 0..3 {
        let resp = gw.http.chat(&chat_body()).await;
        let err = resp.assert_openai_error(403, None);
        assert_eq!(err["code"], "model_not_found");
    }
    assert_eq!(mock.chat_count(), 3, "never retried");
    for id in ["key-1", "key-2"] {
        let k = gw.admin_key(ADMIN, id).await;
        assert_eq!(k["state"], "ready", "{k}");
        assert_eq!(k["failures"]["credential"], 0, "{k}");
    }
}

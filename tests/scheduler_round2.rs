//! The key scheduler, second round (issue 11): key faults cost no attempt, an upstream outage
//! is the upstream's and not the keys', an account-wide 429 backs the pool off once, and keys
//! are paced by the upstream's rate-limit headers and by `tpm=` before they hit 429.
mod support;

use std::time::{Duration, Instant};

use support::*;

fn key_state(view: &serde_json::Value) -> String {
    view["state"].as_str().unwrap_or("").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_faults_cost_no_attempt_and_the_good_key_always_gets_its_turn() {
    let mock = MockUpstream::start().await;
    mock.set("sk-revoked", Reply::error(401, "invalid api key"));
    mock.set_chat("sk-limited", Reply::rate_limited(60));
    mock.set_chat("sk-down", Reply::status(500));
    let gw = spawn_gateway(
        &mock,
        &["sk-revoked", "sk-limited", "sk-down", "sk-good"],
        |s| s.max_attempts = 3,
    )
    .await;

    let first = gw.http.chat(&chat_body()).await;
    assert_eq!(first.status, 200, "{:?} {}", first.attempts(), first.text());
    assert_eq!(
        first.attempts().as_deref(),
        Some("key-1:401,key-2:429,key-3:500,key-4:200")
    );
    for i in 0..12 {
        let resp = gw.http.chat(&chat_body()).await;
        assert_eq!(resp.status, 200, "request {i}: {:?}", resp.attempts());
    }
    // Within their windows the revoked and the limited key are asked once; the failing key at
    // most until its breaker opens.
    assert_eq!(mock.chat_count_for("sk-revoked"), 1);
    assert_eq!(mock.chat_count_for("sk-limited"), 1);
    assert!(mock.chat_count_for("sk-down") <= 3);
    assert_eq!(mock.chat_count_for("sk-good"), 13);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_attempt_budget_still_bounds_failures_that_could_repeat_on_any_key() {
    let mock = MockUpstream::start().await;
    for key in ["k1", "k2", "k3", "k4"] {
        mock.set_chat(key, Reply::status(503));
    }
    let gw = spawn_gateway(&mock, &["k1", "k2", "k3", "k4"], |s| s.max_attempts = 2).await;
    let resp = gw.http.chat(&chat_body()).await;
    assert!(resp.status.is_server_error(), "{}", resp.text());
    assert_eq!(parse_attempts(&resp.attempts().unwrap()).len(), 2);
    assert_eq!(mock.chat_count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_upstream_is_named_and_leaves_the_keys_alone() {
    // A port nothing listens on, where the mock will start later.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut settings = Settings::for_upstream(&format!("http://{addr}/v1"), &["k1", "k2"]);
    with_admin(&mut settings);
    let gw = start_gateway(settings).await;

    for _ in 0..4 {
        let resp = gw.http.chat(&chat_body()).await;
        let error = resp.assert_openai_error(503, None);
        let message = error["message"].as_str().unwrap_or("");
        assert!(
            message.contains("upstream unreachable") && message.contains("connection refused"),
            "{message}"
        );
        let retry: u64 = resp
            .header("retry-after")
            .expect("a Retry-After")
            .parse()
            .unwrap();
        assert!(retry <= 5, "retry-after {retry}");
    }
    let keys = gw.admin_keys(ADMIN).await;
    for key in keys["keys"].as_array().unwrap() {
        assert_eq!(key_state(key), "ready", "{key}");
    }

    let mock = MockUpstream::start_on(addr).await;
    let back = Instant::now();
    eventually(
        "the first request after the upstream's return succeeds",
        Duration::from_secs(5),
        Duration::from_millis(50),
        || async { (gw.http.chat(&chat_body()).await.status == 200).then_some(()) },
    )
    .await;
    assert!(
        back.elapsed() < Duration::from_millis(1500),
        "served again only after {:?}",
        back.elapsed()
    );
    assert!(mock.chat_count() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_wide_429_backs_the_pool_off_once_for_the_shortest_retry_after() {
    let mock = MockUpstream::start().await;
    mock.set_chat("k1", Reply::rate_limited(2));
    mock.set_chat("k2", Reply::rate_limited(60));
    mock.set_chat("k3", Reply::rate_limited(60));
    let gw = spawn_gateway(&mock, &["k1", "k2", "k3"], |s| s.max_attempts = 3).await;

    let resp = gw.http.chat(&chat_body()).await;
    resp.assert_openai_error(429, None);
    let retry: u64 = resp.header("retry-after").unwrap().parse().unwrap();
    assert!(retry <= 2, "the shortest Retry-After: {retry}");
    let seen = mock.chat_count();
    assert_eq!(seen, 3, "each key asked once");
    // Inside the window nothing is sent.
    resp_is_429(&gw).await;
    assert_eq!(mock.chat_count(), seen);

    for key in ["k1", "k2", "k3"] {
        mock.set_chat(key, Reply::ok());
    }
    tokio::time::sleep(Duration::from_millis(2200)).await;
    for _ in 0..6 {
        assert_eq!(gw.http.chat(&chat_body()).await.status, 200);
    }
    // Not each key benched for its own Retry-After: the 60-second keys serve again too.
    assert!(mock.chat_count_for("k2") >= 2 && mock.chat_count_for("k3") >= 2);
}

async fn resp_is_429(gw: &TestGateway) {
    gw.http
        .chat(&chat_body())
        .await
        .assert_openai_error(429, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_with_no_requests_remaining_is_paced_until_its_reset() {
    let mock = MockUpstream::start().await;
    mock.push_chat_once(
        "k1",
        Reply::ok()
            .header("x-ratelimit-remaining-requests", "0")
            .header("x-ratelimit-reset-requests", "2s"),
    );
    let gw = spawn_gateway(&mock, &["k1", "k2"], |_| {}).await;

    let first = gw.http.chat(&chat_body()).await;
    assert_eq!(first.attempts().as_deref(), Some("key-1:200"));
    let paced_since = Instant::now();
    while paced_since.elapsed() < Duration::from_millis(1700) {
        let resp = gw.http.chat(&chat_body()).await;
        assert_eq!(resp.status, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(mock.chat_count_for("k1"), 1, "k1 was asked while paced");
    eventually(
        "k1 serves again after its reset",
        Duration::from_secs(5),
        Duration::from_millis(100),
        || async {
            gw.http.chat(&chat_body()).await;
            (mock.chat_count_for("k1") >= 2).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpm_holds_within_ten_percent() {
    let mock = MockUpstream::start().await;
    // The mock's answers report 4 tokens each: tpm=40 is ten requests a minute.
    let gw = spawn_gateway(&mock, &[], |s| {
        s.keys = vec![
            KeySpec::parse("k1 tpm=40").unwrap(),
            KeySpec::parse("k2").unwrap(),
        ];
    })
    .await;
    for _ in 0..40 {
        assert_eq!(gw.http.chat(&chat_body()).await.status, 200);
    }
    let tokens = 4 * mock.chat_count_for("k1");
    assert!(tokens <= 44, "k1 spent {tokens} tokens in a minute");
    assert!(tokens >= 32, "k1 was held back too far: {tokens} tokens");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_no_key_answer_and_readyz_name_why_by_class_without_key_material() {
    let mock = MockUpstream::start().await;
    mock.set(
        "sk-revoked-0123456789",
        Reply::error(401, "invalid api key"),
    );
    mock.set_chat("sk-limited-0123456789", Reply::rate_limited(60));
    let gw = spawn_gateway(
        &mock,
        &["sk-revoked-0123456789", "sk-limited-0123456789"],
        |_| {},
    )
    .await;
    let first = gw.http.chat(&chat_body()).await;
    assert_eq!(first.attempts().as_deref(), Some("key-1:401,key-2:429"));
    let seen = mock.chat_count();

    let resp = gw.http.chat(&chat_body()).await;
    let error = resp.assert_openai_error(429, None);
    let message = error["message"].as_str().unwrap_or("").to_owned();
    assert_eq!(mock.chat_count(), seen, "no upstream call to learn it");
    for part in [
        "no key can serve: ",
        "1 disabled (upstream rejected it: 401 invalid api key; probing every 10m)",
        "1 cooling until ",
        " UTC (rate limited)",
    ] {
        assert!(message.contains(part), "{part:?} in {message}");
    }
    let ready = gw.http.get("/readyz").await;
    assert_eq!(ready.status, 503);
    let reason = ready.json()["reason"].as_str().unwrap_or("").to_owned();
    assert!(
        reason.contains("1 disabled (upstream rejected it: 401"),
        "{reason}"
    );
    for text in [&message, &reason] {
        assert!(!text.contains("0123456789"), "key material: {text}");
    }
}

//! The key scheduler under load (issue 3): many concurrent requests over faulty keys, weighted
//! choice, per-key concurrency limits.
mod support;

use std::time::Duration;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_requests_over_four_keys_two_faulty_all_succeed() {
    let mock = MockUpstream::start().await;
    mock.set_chat("key-3", Reply::rate_limited(1));
    mock.set_chat("key-4", Reply::status(500));
    let gw = spawn_gateway(&mock, &["key-1", "key-2", "key-3", "key-4"], |s| {
        s.max_attempts = 3
    })
    .await;

    let mut tasks = Vec::with_capacity(1000);
    for _ in 0..1000 {
        let http = gw.http.clone();
        tasks.push(tokio::spawn(async move { http.chat(&chat_body()).await }));
    }
    let mut bad = Vec::new();
    for t in tasks {
        let resp = t.await.expect("request task");
        if resp.status != 200 {
            bad.push(format!(
                "{} {:?} {}",
                resp.status,
                resp.attempts(),
                resp.text()
            ));
        }
    }
    assert!(
        bad.is_empty(),
        "{} of 1000 failed, e.g. {:?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
    let good = mock
        .chat_requests()
        .iter()
        .filter(|r| r.status == Some(200))
        .count();
    assert_eq!(good, 1000, "one upstream success per request");
    assert!(
        mock.chat_count_for("key-1") > 0 && mock.chat_count_for("key-2") > 0,
        "healthy keys not both used"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_choice_follows_the_weights() {
    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &[], |s| {
        s.keys = vec![
            KeySpec::parse("key-light weight=1").unwrap(),
            KeySpec::parse("key-heavy weight=3").unwrap(),
        ];
        s.scheduler.strategy = Strategy::Weighted;
    })
    .await;

    // 2,000 requests, 4 clients at a time.
    let mut workers = Vec::new();
    for _ in 0..4 {
        let http = gw.http.clone();
        workers.push(tokio::spawn(async move {
            for _ in 0..500 {
                let resp = http.chat(&chat_body()).await;
                assert_eq!(resp.status, 200, "{}", resp.text());
            }
        }));
    }
    for w in workers {
        w.await.expect("worker");
    }
    let heavy = mock.chat_count_for("key-heavy") as f64;
    let light = mock.chat_count_for("key-light") as f64;
    assert_eq!(heavy + light, 2000.0);
    let share = heavy / 2000.0;
    assert!(
        (0.71..=0.79).contains(&share),
        "weight-3 key got {:.1}% (want 75%)",
        share * 100.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrent_is_never_exceeded() {
    let mock = MockUpstream::start().await;
    mock.set_default_chat(Reply::ok().delay(Duration::from_millis(30)));
    let gw = spawn_gateway(&mock, &[], |s| {
        s.keys = vec![
            KeySpec::parse("key-solo max_concurrent=1").unwrap(),
            KeySpec::parse("key-pair max_concurrent=2").unwrap(),
            KeySpec::parse("key-free").unwrap(),
        ];
    })
    .await;

    let mut tasks = Vec::new();
    for _ in 0..60 {
        let http = gw.http.clone();
        tasks.push(tokio::spawn(async move { http.chat(&chat_body()).await }));
    }
    for t in tasks {
        let resp = t.await.expect("request task");
        assert_eq!(resp.status, 200, "{} {:?}", resp.text(), resp.attempts());
    }
    assert!(
        mock.chat_count_for("key-solo") >= 1,
        "the limited key never served"
    );
    assert_eq!(
        mock.high_water("key-solo"),
        1,
        "key-solo (max_concurrent=1) had several requests at once"
    );
    assert!(
        mock.high_water("key-pair") <= 2,
        "key-pair (max_concurrent=2) had {} at once",
        mock.high_water("key-pair")
    );
    // Streams count as in flight until they end.
    let mut streams = Vec::new();
    for _ in 0..12 {
        let http = gw.http.clone();
        streams.push(tokio::spawn(async move {
            http.chat_stream(&stream_body()).await.collect().await
        }));
    }
    for s in streams {
        let t = s.await.expect("stream task");
        assert!(t.has_done(), "{:?}", t.data());
    }
    assert_eq!(
        mock.high_water("key-solo"),
        1,
        "key-solo had several streams at once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_in_flight_avoids_a_busy_key() {
    let mock = MockUpstream::start().await;
    let gate = Gate::new();
    // key-slow holds its streams open until the gate opens.
    mock.set_chat("key-slow", Reply::ok().chunks(2).hold_after(1, &gate));
    let gw = spawn_gateway(&mock, &["key-slow", "key-fast"], |s| {
        s.scheduler.strategy = Strategy::LeastInFlight
    })
    .await;

    // Occupy key-slow with one open stream (send until one lands there).
    let mut held = None;
    for _ in 0..4 {
        let mut sse = gw.http.chat_stream(&stream_body()).await;
        sse.next_event(PATIENCE).await.expect("first chunk");
        if mock.in_flight("key-slow") == 1 {
            held = Some(sse);
            break;
        }
        sse.collect().await;
    }
    let held = held.expect("no stream landed on key-slow");
    let before = mock.chat_count_for("key-slow");
    for _ in 0..6 {
        assert_eq!(gw.http.chat(&chat_body()).await.status, 200);
    }
    assert_eq!(
        mock.chat_count_for("key-slow"),
        before,
        "least-in-flight chose the busy key"
    );
    gate.open();
    assert!(held.collect().await.has_done());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpm_budget_is_not_exceeded() {
    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &[], |s| {
        s.keys = vec![
            KeySpec::parse("key-budget rpm=2").unwrap(),
            KeySpec::parse("key-open").unwrap(),
        ];
    })
    .await;
    for _ in 0..12 {
        let resp = gw.http.chat(&chat_body()).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    let used = mock.chat_count_for("key-budget");
    assert!(
        (1..=2).contains(&used),
        "key-budget (rpm=2) served {used} requests within a second"
    );
    assert_eq!(mock.chat_count_for("key-open"), 12 - used);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_single_key_queues_requests_within_queue_timeout() {
    let mock = MockUpstream::start().await;
    mock.set_default_chat(Reply::ok().delay(Duration::from_millis(50)));
    let gw = spawn_gateway(&mock, &[], |s| {
        s.keys = vec![KeySpec::parse("key-solo max_concurrent=1").unwrap()];
        s.scheduler.queue_timeout = Duration::from_secs(10);
    })
    .await;

    let mut tasks = Vec::new();
    for _ in 0..6 {
        let http = gw.http.clone();
        tasks.push(tokio::spawn(async move { http.chat(&chat_body()).await }));
    }
    for t in tasks {
        let resp = t.await.expect("request task");
        assert_eq!(resp.status, 200, "{} {:?}", resp.text(), resp.attempts());
    }
    assert_eq!(mock.chat_count_for("key-solo"), 6);
    assert_eq!(mock.high_water("key-solo"), 1);
}

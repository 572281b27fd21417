//! Several gateways (replicas) sharing one real Redis (`--redis`) in front of one mock
//! upstream: what one replica learns about a key, the others act on; limits hold across them;
//! Redis failing costs no client request.

mod support;

use std::time::{Duration, Instant};

use support::redis::RedisServer;
use support::*;

/// `n` replicas on `redis`, each with `keys` (attributes allowed: `key-a rpm=6`) and the admin
/// API on.
async fn replicas(
    mock: &MockUpstream,
    redis: &RedisServer,
    keys: &[&str],
    n: usize,
    tweak: impl Fn(&mut Settings),
) -> Vec<TestGateway> {
    let mut out = Vec::new();
    for _ in 0..n {
        let gw = spawn_gateway(mock, &[], |s| {
            s.keys = keys.iter().map(|k| KeySpec::parse(k).unwrap()).collect();
            s.redis = Some(Secret::new(redis.url()));
            with_admin(s);
            tweak(s);
        })
        .await;
        out.push(gw);
    }
    out
}

async fn state_of(gw: &TestGateway, id: &str) -> String {
    gw.admin_key(ADMIN, id).await["state"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Waits until `id` is in `state` on every replica; returns how long that took.
async fn until_everywhere(gws: &[TestGateway], id: &str, state: &str) -> Duration {
    let start = Instant::now();
    for gw in gws {
        eventually(
            &format!("{id} {state} on every replica"),
            Duration::from_secs(10),
            Duration::from_millis(2),
            || async { (state_of(gw, id).await == state).then_some(()) },
        )
        .await;
    }
    start.elapsed()
}

async fn metric(gw: &TestGateway, name: &str) -> Option<f64> {
    let text = gw.http.get("/metrics").await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_on_one_replica_keeps_the_key_from_every_replica_until_retry_after() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let gws = replicas(&mock, &redis, &["key-a", "key-b"], 3, |_| {}).await;
    mock.push_chat_once("key-a", Reply::rate_limited(2));
    // Round robin starts at key-1: the 429 comes back, the retry on key-b succeeds.
    assert_eq!(gws[0].http.chat(&chat_body()).await.status, 200);
    assert_eq!(mock.chat_count_for("key-a"), 1);
    let took = until_everywhere(&gws, "key-1", "cooling").await;
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1500) {
        for gw in &gws[1..] {
            assert_eq!(gw.http.chat(&chat_body()).await.status, 200);
        }
    }
    assert_eq!(
        mock.chat_count_for("key-a"),
        1,
        "no replica sent key-a a request inside its Retry-After (it reached all in {took:?})"
    );
    // After the window, the key serves again (one trial, then traffic).
    eventually(
        "key-a serves again after Retry-After",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || async {
            for gw in &gws {
                assert_eq!(gw.http.chat(&chat_body()).await.status, 200);
            }
            (mock.chat_count_for("key-a") >= 3).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_disable_on_one_replica_stops_the_others_within_100ms_and_enable_brings_it_back() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let gws = replicas(&mock, &redis, &["key-a", "key-b"], 3, |_| {}).await;
    let resp = gws[0].admin_post(ADMIN, "/admin/keys/key-1/disable").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let took = until_everywhere(&gws, "key-1", "disabled").await;
    assert!(
        took < Duration::from_millis(100),
        "disable took {took:?} to reach all"
    );
    eprintln!("admin disable seen by all three replicas' admin APIs after {took:?}");
    for gw in &gws {
        for _ in 0..4 {
            assert_eq!(gw.http.chat(&chat_body()).await.status, 200);
        }
    }
    assert_eq!(mock.chat_count_for("key-a"), 0);
    let resp = gws[2].admin_post(ADMIN, "/admin/keys/key-1/enable").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let took = until_everywhere(&gws, "key-1", "ready").await;
    assert!(
        took < Duration::from_millis(100),
        "enable took {took:?} to reach all"
    );
    for gw in &gws {
        for _ in 0..2 {
            assert_eq!(gw.http.chat(&chat_body()).await.status, 200);
        }
    }
    assert!(
        mock.chat_count_for("key-a") >= 3,
        "key-a serves again everywhere"
    );
    // A replica starting later starts on the shared state.
    gws[1].admin_post(ADMIN, "/admin/keys/key-2/disable").await;
    until_everywhere(&gws, "key-2", "disabled").await;
    let late = replicas(&mock, &redis, &["key-a", "key-b"], 1, |_| {}).await;
    assert_eq!(state_of(&late[0], "key-2").await, "disabled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpm_holds_across_replicas_and_the_other_keys_serve_the_rest() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let gws = replicas(&mock, &redis, &["key-a rpm=6", "key-b"], 3, |_| {}).await;
    for i in 0..30 {
        let resp = gws[i % 3].http.chat(&chat_body()).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    let a = mock.chat_count_for("key-a");
    assert_eq!(a, 6, "rpm=6 across three replicas, not 6 each");
    assert_eq!(mock.chat_count_for("key-b"), 24);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrent_holds_across_replicas() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    mock.set_default_chat(Reply::ok().delay(Duration::from_millis(400)));
    let gws = replicas(
        &mock,
        &redis,
        &["key-a max_concurrent=2", "key-b"],
        3,
        |_| {},
    )
    .await;
    let mut calls = Vec::new();
    for i in 0..12 {
        let http = gws[i % 3].http.clone();
        calls.push(tokio::spawn(
            async move { http.chat(&chat_body()).await.status },
        ));
    }
    for call in calls {
        assert_eq!(call.await.unwrap(), 200);
    }
    assert!(mock.chat_count_for("key-a") >= 1);
    assert!(
        mock.high_water("key-a") <= 2,
        "key-a had {} in flight across replicas",
        mock.high_water("key-a")
    );
    // Leases are given back: the key takes two at once again.
    eventually(
        "key-a leases released",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || async { (mock.in_flight("key-a") == 0).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_is_probed_by_one_replica_per_interval() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    mock.set("key-a", Reply::error(401, "invalid api key"));
    let gws = replicas(&mock, &redis, &["key-a", "key-b"], 3, |s| {
        s.scheduler.probe_interval = Duration::from_secs(1);
    })
    .await;
    assert_eq!(gws[0].http.chat(&chat_body()).await.status, 200);
    until_everywhere(&gws, "key-1", "disabled").await;
    let start = Instant::now();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let probes = mock.models_requests_for("key-a").len();
    let intervals = start.elapsed().as_secs_f64().ceil() as usize + 1;
    assert!(
        (1..=intervals).contains(&probes),
        "{probes} probes of key-a by three replicas in {:?}",
        start.elapsed()
    );
    // The probe's verdict reaches all.
    mock.clear("key-a");
    until_everywhere(&gws, "key-1", "ready").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_load_costs_no_request_and_state_converges_after_restart() {
    let mut redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let gws = replicas(&mock, &redis, &["key-a", "key-b", "key-c"], 2, |_| {}).await;
    assert_eq!(metric(&gws[0], "gateway_state_store_up").await, Some(1.0));
    let load = |gw: &TestGateway, n: usize| {
        let http = gw.http.clone();
        tokio::spawn(async move {
            for _ in 0..n {
                let resp = http.chat(&chat_body()).await;
                assert_eq!(resp.status, 200, "{}", resp.text());
            }
        })
    };
    let running = [load(&gws[0], 60), load(&gws[1], 60)];
    tokio::time::sleep(Duration::from_millis(100)).await;
    redis.kill();
    for gw in &gws {
        eventually(
            "store down in metrics",
            Duration::from_secs(5),
            Duration::from_millis(20),
            || async { (metric(gw, "gateway_state_store_up").await == Some(0.0)).then_some(()) },
        )
        .await;
    }
    for task in running {
        task.await
            .expect("every request during the outage succeeded");
    }
    // While Redis is down, replica 0 benches key-a; replica 1 cannot know yet.
    mock.push_chat_once("key-a", Reply::rate_limited(60));
    for _ in 0..3 {
        assert_eq!(gws[0].http.chat(&chat_body()).await.status, 200);
    }
    assert_eq!(state_of(&gws[0], "key-1").await, "cooling");
    redis.restart();
    let took = until_everywhere(&gws, "key-1", "cooling").await;
    for gw in &gws {
        eventually(
            "store up again",
            Duration::from_secs(5),
            Duration::from_millis(20),
            || async { (metric(gw, "gateway_state_store_up").await == Some(1.0)).then_some(()) },
        )
        .await;
    }
    assert!(took < Duration::from_secs(5), "converged in {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_success_on_another_replica_does_not_revive_a_revoked_key() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    mock.set_chat("key-a", Reply::error(401, "invalid api key"));
    mock.push_chat_once("key-a", Reply::ok().delay(Duration::from_millis(600)));
    let gws = replicas(&mock, &redis, &["key-a", "key-b"], 2, |_| {}).await;
    // Replica 1's request holds key-a (it will succeed, late) while replica 0 learns it is
    // revoked.
    let http = gws[1].http.clone();
    let slow = tokio::spawn(async move { http.chat(&chat_body()).await.status });
    assert!(mock.wait_chat_count(1, PATIENCE).await);
    assert_eq!(gws[0].http.chat(&chat_body()).await.status, 200);
    until_everywhere(&gws, "key-1", "disabled").await;
    assert_eq!(slow.await.unwrap(), 200);
    // Past a resync, it is still disabled everywhere.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for gw in &gws {
        assert_eq!(state_of(gw, "key-1").await, "disabled");
    }
}

/// A replica killed with SIGKILL while holding concurrency leases: the capacity comes back
/// when the leases expire (15 s), and meanwhile the other keys serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replicas_concurrency_leases_expire() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    for _ in 0..2 {
        mock.push_chat_once("key-a", Reply::ok().delay(Duration::from_secs(60)));
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_megallm-gateway"))
        .args(["--listen", "127.0.0.1:0", "--upstream", &mock.url()])
        .args(["--redis", &redis.url()])
        .env("MEGALLM_API_KEYS", "key-a max_concurrent=2,key-b")
        .env("RUST_LOG", "info")
        .env("GATEWAY_LOG_FORMAT", "json")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("gateway printed its address").unwrap();
        let json: serde_json::Value = serde_json::from_str(&line).expect("json log line");
        if json["message"] == "megallm-gateway listening" {
            break json["addr"].as_str().unwrap().parse().unwrap();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let http = HttpClient::new(addr);
    for _ in 0..4 {
        let http = http.clone();
        tokio::spawn(async move { http.chat(&chat_body()).await });
    }
    eventually(
        "two requests hold key-a",
        PATIENCE,
        Duration::from_millis(10),
        || async { (mock.in_flight("key-a") == 2).then_some(()) },
    )
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    let killed = Instant::now();
    let gws = replicas(
        &mock,
        &redis,
        &["key-a max_concurrent=2", "key-b"],
        1,
        |_| {},
    )
    .await;
    for _ in 0..4 {
        assert_eq!(gws[0].http.chat(&chat_body()).await.status, 200);
    }
    assert_eq!(
        mock.chat_count_for("key-a"),
        2,
        "the dead replica's leases still hold key-a's capacity"
    );
    eventually(
        "key-a's capacity back after the leases expire",
        Duration::from_secs(25),
        Duration::from_millis(200),
        || async {
            assert_eq!(gws[0].http.chat(&chat_body()).await.status, 200);
            (mock.chat_count_for("key-a") > 2).then_some(())
        },
    )
    .await;
    let after = killed.elapsed();
    assert!(
        after >= Duration::from_secs(5) && after <= Duration::from_secs(20),
        "capacity came back {after:?} after the kill"
    );
}

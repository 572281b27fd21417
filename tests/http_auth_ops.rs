//! Hardening of the small things (issue 8, items 4 and 6): the keys-file watcher reacts to
//! changes only, the bearer scheme is case-insensitive and a 401 names it, and `/metrics` can
//! ask for its own token.
mod support;

use std::time::Duration;

use support::*;

/// `gateway_key_reloads_total{result="…"}` from `/metrics`.
async fn reloads(gw: &TestGateway, result: &str) -> u64 {
    let text = gw.http.get("/metrics").await.text();
    let line = format!("gateway_key_reloads_total{{result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&line))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {line} in /metrics:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_the_keys_file_does_not_reload_it_and_a_change_reloads_once() {
    let mock = MockUpstream::start().await;
    let kf = KeysFile::new(&["key-a"]);
    let path = kf.path().to_path_buf();
    let gw = spawn_gateway(&mock, &[], |s| s.keys_file = Some(path.clone())).await;

    // Reading the file (as `head -c1 keys.txt` does) opens it; before the fix each reload's own
    // open scheduled the next, about ten reloads a second for ever.
    for _ in 0..3 {
        std::fs::read(&path).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(reloads(&gw, "applied").await, 0, "a read reloaded the keys");

    kf.rewrite(&["key-a", "key-b"]);
    eventually(
        "the watcher applies the change",
        PATIENCE,
        Duration::from_millis(50),
        || async { (reloads(&gw, "applied").await >= 1).then_some(()) },
    )
    .await;
    // The settle window collapses the write-and-rename burst; nothing loops afterwards.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(reloads(&gw, "applied").await, 1, "one change, one reload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_keys_file_is_refused_once_and_says_which_line() {
    let mock = MockUpstream::start().await;
    let kf = KeysFile::new(&["key-a"]);
    let path = kf.path().to_path_buf();
    let gw = spawn_gateway(&mock, &[], |s| {
        s.keys_file = Some(path.clone());
        with_admin(s);
    })
    .await;

    // The file's first line is a comment (KeysFile writes one), so the bad spec is line 3.
    kf.rewrite(&["key-a", "key-b weight=zero"]);
    eventually(
        "the watcher refuses the file",
        PATIENCE,
        Duration::from_millis(50),
        || async { (reloads(&gw, "refused").await >= 1).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(reloads(&gw, "refused").await, 1, "a refusal looped");
    let resp = gw.admin_post(ADMIN, "/admin/keys/reload").await;
    assert_eq!(resp.status, 409, "{}", resp.text());
    let message = resp.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("line 3"), "{message}");
    assert!(message.contains("weight"), "{message}");
    assert_eq!(gw.http.chat(&chat_body()).await.status, 200);
    assert_eq!(mock.chat_count_for("key-b"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_scheme_is_case_insensitive_and_a_401_names_it() {
    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &["key-a"], |s| {
        s.auth_tokens = vec![Secret::new("tok-1".into())];
    })
    .await;

    for value in [
        "BEARER tok-1",
        "bearer tok-1",
        "Bearer tok-1",
        "bEaReR tok-1",
    ] {
        let resp = gw
            .http
            .chat_with(&chat_body(), &[("authorization", value)])
            .await;
        assert_eq!(resp.status, 200, "{value}: {}", resp.text());
    }
    for value in [None, Some("Basic dG9rLTE6"), Some("Bearer tok-2")] {
        let headers: Vec<(&str, &str)> = value.map(|v| ("authorization", v)).into_iter().collect();
        let resp = gw.http.chat_with(&chat_body(), &headers).await;
        resp.assert_openai_error(401, None);
        assert_eq!(
            resp.header("www-authenticate").as_deref(),
            Some("Bearer"),
            "{value:?}"
        );
    }
    assert_eq!(mock.chat_count(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_ask_for_the_metrics_token_when_one_is_set() {
    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &["key-a"], |s| {
        s.metrics_token = Some(Secret::new("scrape-tok".into()));
        s.auth_tokens = vec![Secret::new("client-tok".into())];
    })
    .await;

    for headers in [
        vec![],
        vec![("authorization", "Bearer client-tok")],
        vec![("authorization", "Bearer scrape-tok2")],
    ] {
        let resp = gw.http.get_with("/metrics", &headers).await;
        resp.assert_openai_error(401, None);
        assert_eq!(resp.header("www-authenticate").as_deref(), Some("Bearer"));
        assert!(!resp.text().contains("gateway_requests_total"));
    }
    let resp = gw
        .http
        .get_with("/metrics", &[("authorization", "Bearer scrape-tok")])
        .await;
    assert_eq!(resp.status, 200);
    assert!(resp
        .text()
        .contains("# TYPE gateway_requests_total counter"));
    // The operations endpoints that probes use stay open.
    assert_eq!(gw.http.get("/healthz").await.status, 200);
}

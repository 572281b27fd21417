//! Admin API and key reload (issue 3): access control, no key material, disable/enable,
//! reload under load.
mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;
use support::*;

fn bearer(tok: &str) -> String {
    format!("Bearer {tok}")
}

/// Checks one entry of `GET /admin/keys` against the documented shape.
fn check_key_shape(k: &Value) {
    let ctx = || format!("{k}");
    assert!(
        k["id"].as_str().is_some_and(|id| id.starts_with("key-")),
        "id: {}",
        ctx()
    );
    assert!(
        k["fingerprint"].as_str().is_some_and(|f| !f.is_empty()),
        "fingerprint: {}",
        ctx()
    );
    assert!(
        matches!(
            k["state"].as_str(),
            Some("ready" | "cooling" | "disabled" | "half_open")
        ),
        "state: {}",
        ctx()
    );
    for f in [
        "until_unix_ms",
        "retry_in_ms",
        // Why a key is cooling or disabled (the brief called it `disabled_reason`).
        "reason",
        "last_error",
    ] {
        assert!(k.get(f).is_some(), "{f} missing (may be null): {}", ctx());
    }
    for f in ["in_flight", "requests", "successes"] {
        assert!(k[f].is_u64(), "{f}: {}", ctx());
    }
    for c in ["rate_limited", "quota", "credential", "transient", "caller"] {
        assert!(k["failures"][c].is_u64(), "failures.{c}: {}", ctx());
    }
    if !k["last_error"].is_null() {
        for f in ["class", "status", "message", "at_unix_ms"] {
            assert!(
                k["last_error"].get(f).is_some(),
                "last_error.{f}: {}",
                ctx()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_is_404_without_an_admin_token() {
    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &["key-a"], |_| {}).await;
    for tok in ["", "admintok", "anything"] {
        let resp = gw
            .http
            .get_with("/admin/keys", &[("authorization", &bearer(tok))])
            .await;
        assert_eq!(resp.status, 404, "{}", resp.text());
    }
    assert_eq!(gw.admin_post(ADMIN, "/admin/keys/reload").await.status, 404);
    assert_eq!(
        gw.admin_post(ADMIN, "/admin/keys/key-1/disable")
            .await
            .status,
        404
    );
    assert_eq!(mock.chat_count(), 0);
    // The key is still in service.
    assert_eq!(gw.http.chat(&chat_body()).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_needs_the_right_token() {
    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &["key-a"], |s| {
        with_admin(s);
        // A client token is not an admin token.
        s.auth_tokens = vec![Secret::new("client-tok".into())];
    })
    .await;

    gw.http
        .get("/admin/keys")
        .await
        .assert_openai_error(401, None);
    gw.http
        .get_with("/admin/keys", &[("authorization", "Bearer wrong")])
        .await
        .assert_openai_error(401, None);
    gw.http
        .get_with("/admin/keys", &[("authorization", "Bearer client-tok")])
        .await
        .assert_openai_error(401, None);
    gw.http
        .get_with("/admin/keys", &[("authorization", ADMIN)])
        .await
        .assert_openai_error(401, None);
    let resp = gw.admin_post("wrong", "/admin/keys/key-1/disable").await;
    resp.assert_openai_error(401, None);
    let resp = gw.admin_post("wrong", "/admin/keys/reload").await;
    resp.assert_openai_error(401, None);
    assert_eq!(
        gw.admin_key(ADMIN, "key-1").await["state"],
        "ready",
        "a refused disable took effect"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_list_has_counters_and_no_key_material() {
    let keys = [
        "sk-admin-QWERTYUIOPZXCVBNM-first",
        "sk-admin-POIUYTREWQMNBVCXZ-second",
        "short",
    ];
    let mock = MockUpstream::start().await;
    mock.set_chat(keys[1], Reply::rate_limited(30));
    let gw = spawn_gateway(&mock, &keys, with_admin).await;

    for _ in 0..6 {
        assert_eq!(gw.http.chat(&chat_body()).await.status, 200);
    }
    let resp = gw
        .http
        .get_with("/admin/keys", &[("authorization", &bearer(ADMIN))])
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let text = resp.text();
    for k in keys {
        assert!(
            !text.contains(k),
            "key {k:?} appears in /admin/keys: {text}"
        );
    }
    for part in ["QWERTYUIOPZXCVBNM", "POIUYTREWQMNBVCXZ"] {
        assert!(
            !text.contains(part),
            "part of a key appears in /admin/keys: {text}"
        );
    }

    let body = resp.json();
    let list = body["keys"]
        .as_array()
        .unwrap_or_else(|| panic!("no keys array: {body}"));
    assert_eq!(list.len(), 3);
    let ids: Vec<&str> = list.iter().map(|k| k["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["key-1", "key-2", "key-3"]);
    let mut fps = BTreeSet::new();
    for (k, raw) in list.iter().zip(keys) {
        check_key_shape(k);
        let fp = k["fingerprint"].as_str().unwrap();
        assert!(
            !raw.starts_with(fp) && !raw.contains(fp),
            "fingerprint {fp:?} is part of the key"
        );
        fps.insert(fp.to_string());
    }
    assert_eq!(fps.len(), 3, "fingerprints collide");

    let k2 = &list[1];
    assert_eq!(k2["state"], "cooling", "{k2}");
    assert_eq!(k2["reason"], "rate_limited", "{k2}");
    assert!(
        list[0]["reason"].is_null() && list[0]["until_unix_ms"].is_null(),
        "{}",
        list[0]
    );
    assert!(
        k2["until_unix_ms"].is_u64() && k2["retry_in_ms"].is_u64(),
        "{k2}"
    );
    assert_eq!(k2["failures"]["rate_limited"], 1, "{k2}");
    assert_eq!(k2["last_error"]["status"], 429, "{k2}");
    assert_eq!(k2["last_error"]["class"], "rate_limited", "{k2}");
    let successes: u64 = list.iter().map(|k| k["successes"].as_u64().unwrap()).sum();
    assert_eq!(successes, 6);
    let requests: u64 = list.iter().map(|k| k["requests"].as_u64().unwrap()).sum();
    assert_eq!(requests, 7, "6 successes + 1 rate-limited attempt");
    assert!(list.iter().all(|k| k["in_flight"] == 0), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_and_enable_take_a_key_out_and_back() {
    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &["key-a", "key-b"], with_admin).await;

    let resp = gw.admin_post(ADMIN, "/admin/keys/key-1/disable").await;
    assert!(resp.status.is_success(), "{} {}", resp.status, resp.text());
    let k1 = gw.admin_key(ADMIN, "key-1").await;
    assert_eq!(k1["state"], "disabled", "{k1}");
    assert_eq!(k1["reason"], "admin", "{k1}");
    for _ in 0..4 {
        assert_eq!(gw.http.chat(&chat_body()).await.status, 200);
    }
    assert_eq!(mock.chat_count_for("key-a"), 0, "a disabled key served");
    assert_eq!(mock.chat_count_for("key-b"), 4);

    let resp = gw.admin_post(ADMIN, "/admin/keys/key-1/enable").await;
    assert!(resp.status.is_success(), "{} {}", resp.status, resp.text());
    assert_eq!(gw.admin_key(ADMIN, "key-1").await["state"], "ready");
    for _ in 0..4 {
        assert_eq!(gw.http.chat(&chat_body()).await.status, 200);
    }
    assert!(
        mock.chat_count_for("key-a") >= 1,
        "an enabled key got no request"
    );

    // Unknown key id.
    assert_eq!(
        gw.admin_post(ADMIN, "/admin/keys/key-9/disable")
            .await
            .status,
        404
    );
    assert_eq!(
        gw.admin_post(ADMIN, "/admin/keys/key-9/enable")
            .await
            .status,
        404
    );

    // Everything disabled: 503 and not ready; back on: 200 and ready.
    for id in ["key-1", "key-2"] {
        assert!(gw
            .admin_post(ADMIN, &format!("/admin/keys/{id}/disable"))
            .await
            .status
            .is_success());
    }
    let before = mock.chat_count();
    gw.http
        .chat(&chat_body())
        .await
        .assert_openai_error(503, None);
    assert_eq!(mock.chat_count(), before);
    assert_eq!(gw.http.get("/readyz").await.status, 503);
    assert!(gw
        .admin_post(ADMIN, "/admin/keys/key-2/enable")
        .await
        .status
        .is_success());
    assert_eq!(gw.http.get("/readyz").await.status, 200);
    assert_eq!(gw.http.chat(&chat_body()).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_and_removes_keys_without_losing_requests_in_flight() {
    let mock = MockUpstream::start().await;
    mock.set_default_chat(Reply::ok().delay(Duration::from_millis(100)));
    let kf = KeysFile::new(&["key-a", "key-b"]);
    let path = kf.path().to_path_buf();
    let gw = spawn_gateway(&mock, &[], |s| {
        with_admin(s);
        s.keys_file = Some(path);
    })
    .await;
    assert_eq!(
        gw.admin_keys(ADMIN).await["keys"].as_array().unwrap().len(),
        2
    );

    // 200 requests, started over ~1 s, each held 100 ms by the upstream.
    let mut tasks = Vec::new();
    for i in 0..200u64 {
        let http = gw.http.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(i * 5)).await;
            http.chat(&chat_body()).await
        }));
    }
    assert!(
        mock.wait_chat_count(60, PATIENCE).await,
        "traffic did not start"
    );
    // The reload must meet requests in flight on the key it removes.
    for _ in 0..200 {
        if mock.in_flight("key-a") > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(mock.in_flight("key-a") > 0, "no request in flight on key-a");
    kf.rewrite(&["key-b", "key-c"]);
    let resp = gw.admin_post(ADMIN, "/admin/keys/reload").await;
    assert!(
        resp.status.is_success(),
        "reload: {} {}",
        resp.status,
        resp.text()
    );

    let mut bad = Vec::new();
    for t in tasks {
        let resp = t.await.expect("request task");
        if resp.status != 200 {
            bad.push(format!(
                "{} {} {:?}",
                resp.status,
                resp.text(),
                resp.attempts()
            ));
        }
    }
    assert!(
        bad.is_empty(),
        "{} of 200 requests failed across the reload: {bad:?}",
        bad.len()
    );

    let a_before = mock.chat_count_for("key-a");
    let c_before = mock.chat_count_for("key-c");
    for _ in 0..10 {
        assert_eq!(gw.http.chat(&chat_body()).await.status, 200);
    }
    assert_eq!(
        mock.chat_count_for("key-a"),
        a_before,
        "a removed key still serves"
    );
    assert!(
        mock.chat_count_for("key-c") > c_before,
        "an added key does not serve"
    );
    assert_eq!(
        gw.admin_keys(ADMIN).await["keys"].as_array().unwrap().len(),
        2
    );
    let unknown: Vec<_> = mock
        .chat_requests()
        .iter()
        .filter_map(|r| r.key.clone())
        .filter(|k| !["key-a", "key-b", "key-c"].contains(&k.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "requests with keys nobody configured: {unknown:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_the_state_of_keys_that_stay() {
    let mock = MockUpstream::start().await;
    let kf = KeysFile::new(&["key-a", "key-b"]);
    let path = kf.path().to_path_buf();
    let gw = spawn_gateway(&mock, &[], |s| {
        with_admin(s);
        s.keys_file = Some(path);
    })
    .await;
    assert!(gw
        .admin_post(ADMIN, "/admin/keys/key-2/disable")
        .await
        .status
        .is_success());
    let fp_b = gw.admin_key(ADMIN, "key-2").await["fingerprint"].clone();

    kf.rewrite(&["key-b", "key-c"]);
    assert!(gw
        .admin_post(ADMIN, "/admin/keys/reload")
        .await
        .status
        .is_success());
    let all = gw.admin_keys(ADMIN).await;
    let list = all["keys"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{all}");
    let b = list
        .iter()
        .find(|k| k["fingerprint"] == fp_b)
        .unwrap_or_else(|| panic!("key-b gone after reload: {all}"));
    assert_eq!(b["state"], "disabled", "reload reset a kept key: {all}");
    for _ in 0..4 {
        assert_eq!(gw.http.chat(&chat_body()).await.status, 200);
    }
    assert_eq!(
        mock.chat_count_for("key-b"),
        0,
        "the disabled kept key served"
    );
    assert_eq!(mock.chat_count_for("key-c"), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_file_changes_are_picked_up_without_a_reload_call() {
    let mock = MockUpstream::start().await;
    let kf = KeysFile::new(&["key-a"]);
    let path = kf.path().to_path_buf();
    let gw = spawn_gateway(&mock, &[], |s| {
        with_admin(s);
        s.keys_file = Some(path);
    })
    .await;
    assert_eq!(gw.http.chat(&chat_body()).await.status, 200);

    kf.rewrite(&["key-a", "# a comment", "", "key-z"]);
    eventually(
        "the watcher loads key-z",
        PATIENCE,
        Duration::from_millis(100),
        || async {
            (gw.admin_keys(ADMIN).await["keys"].as_array().map(Vec::len) == Some(2)).then_some(())
        },
    )
    .await;
    for _ in 0..4 {
        assert_eq!(gw.http.chat(&chat_body()).await.status, 200);
    }
    assert!(
        mock.chat_count_for("key-z") >= 1,
        "the new key does not serve"
    );
    assert!(
        mock.chat_requests()
            .iter()
            .all(|r| r.key.as_deref() != Some("# a comment")),
        "a comment line became a key"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_keys_file_is_refused_and_the_old_keys_keep_serving() {
    let mock = MockUpstream::start().await;
    let kf = KeysFile::new(&["key-a weight=2", "key-b"]);
    let path = kf.path().to_path_buf();
    let gw = spawn_gateway(&mock, &[], |s| {
        with_admin(s);
        s.keys_file = Some(path);
    })
    .await;
    let before = gw.admin_keys(ADMIN).await["keys"].clone();
    assert_eq!(before.as_array().unwrap().len(), 2);

    for bad in [
        vec!["key-a", "key-c weight=zero"],
        vec!["key-a", "key-c colour=blue"],
        vec!["# nothing but a comment", ""],
    ] {
        kf.rewrite(&bad);
        let resp = gw.admin_post(ADMIN, "/admin/keys/reload").await;
        assert!(
            resp.status.is_client_error() || resp.status.is_server_error(),
            "reload of {bad:?} answered {} {}",
            resp.status,
            resp.text()
        );
        resp.check_openai_error(resp.status.as_u16(), None).unwrap();
        let now = gw.admin_keys(ADMIN).await["keys"].clone();
        let fps = |v: &Value| -> Vec<Value> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|k| k["fingerprint"].clone())
                .collect()
        };
        assert_eq!(
            fps(&now),
            fps(&before),
            "a refused reload changed the keys ({bad:?})"
        );
        for _ in 0..2 {
            assert_eq!(gw.http.chat(&chat_body()).await.status, 200);
        }
    }
    assert!(mock
        .chat_requests()
        .iter()
        .all(|r| matches!(r.key.as_deref(), Some("key-a" | "key-b"))));
}

/// A lease that outlived its request would make a `max_concurrent=1` key unusable for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_are_released_after_every_kind_of_ending() {
    use tokio::io::AsyncWriteExt;
    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &[], |s| {
        with_admin(s);
        s.keys = vec![KeySpec::parse("key-a max_concurrent=1").unwrap()];
        s.timeouts.idle = Duration::from_millis(300);
    })
    .await;
    let settled = |what: &'static str| {
        let gw = &gw;
        async move {
            eventually(what, PATIENCE, Duration::from_millis(20), || async {
                (gw.admin_key(ADMIN, "key-1").await["in_flight"] == 0).then_some(())
            })
            .await;
            let resp = gw.http.chat(&chat_body()).await;
            assert_eq!(resp.status, 200, "after {what}: {}", resp.text());
        }
    };

    // 1. A plain answer.
    assert_eq!(gw.http.chat(&chat_body()).await.status, 200);
    settled("a plain answer").await;
    // 2. A whole stream.
    mock.push_chat_once("key-a", Reply::ok().chunks(3));
    assert!(gw
        .http
        .chat_stream(&stream_body())
        .await
        .collect()
        .await
        .has_done());
    settled("a whole stream").await;
    // 3. A stream the client drops.
    mock.push_chat_once(
        "key-a",
        Reply::ok()
            .chunks(100)
            .chunk_pause(Duration::from_millis(20)),
    );
    let mut sse = gw.http.chat_stream(&stream_body()).await;
    sse.next_event(PATIENCE).await.expect("chunk 1");
    drop(sse);
    assert!(mock.wait_disconnected(PATIENCE).await);
    settled("a stream the client dropped").await;
    // 4. An upstream 400.
    mock.push_chat_once("key-a", Reply::error(400, "nope"));
    assert_eq!(gw.http.chat(&chat_body()).await.status, 400);
    settled("an upstream 400").await;
    // 5. A stream the upstream breaks.
    mock.push_chat_once("key-a", Reply::ok().chunks(3).break_after(1));
    let t = gw.http.chat_stream(&stream_body()).await.collect().await;
    assert!(!t.has_done());
    settled("a broken stream").await;
    // 6. A plain request whose client hangs up.
    mock.push_chat_once("key-a", Reply::ok().delay(Duration::from_secs(8)));
    let before = mock.chat_count();
    let body = chat_body().to_string();
    let mut sock = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    sock.write_all(body.as_bytes()).await.unwrap();
    assert!(mock.wait_chat_count(before + 1, PATIENCE).await);
    drop(sock);
    assert!(
        mock.wait_until(PATIENCE, |_, ev| ev
            .iter()
            .filter(|e| e.kind == StreamEventKind::Disconnected)
            .count()
            >= 2)
            .await
    );
    settled("a plain request whose client hung up").await;
    // 7. A stream that goes idle.
    let never = Gate::new();
    mock.push_chat_once("key-a", Reply::ok().chunks(3).hold_after(1, &never));
    let t = gw.http.chat_stream(&stream_body()).await.collect().await;
    assert!(!t.has_done());
    settled("an idle stream").await;
}

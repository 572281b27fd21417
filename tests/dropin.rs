//! A drop-in for the original service, and a face for browsers and API tools (issue 16): the
//! original's example calls answer as it answered them, its admin routes need the admin token,
//! CORS is off unless asked and then answers preflights for the allowed origins only, and
//! `/openapi.json` names every operation the gateway serves, each answering as documented.
mod support;

use http::Method;
use serde_json::{json, Value};
use support::*;

/// The document the gateway serves, and a check of one answer against it.
struct Document(Value);

impl Document {
    async fn fetch(gw: &TestGateway) -> Document {
        let resp = gw.http.get("/openapi.json").await;
        assert_eq!(resp.status, 200);
        assert_eq!(
            resp.header("content-type").as_deref(),
            Some("application/json")
        );
        Document(resp.json())
    }

    fn resolve<'a>(&'a self, mut node: &'a Value) -> &'a Value {
        while let Some(r) = node["$ref"].as_str() {
            node = self
                .0
                .pointer(r.trim_start_matches('#'))
                .expect("reference resolves");
        }
        node
    }

    /// Panics unless `status` is documented for `method path` (or a `default` covers it) with
    /// the answer's media type, and a JSON body matches its schema.
    fn check(&self, method: &str, path: &str, resp: &HttpResponse) {
        let what = format!("{method} {path} → {}", resp.status);
        let op = &self.0["paths"][path][method.to_lowercase()];
        assert!(op.is_object(), "{method} {path} is not in the document");
        let responses = &op["responses"];
        let documented = responses
            .get(resp.status.as_str())
            .or_else(|| responses.get("default"))
            .unwrap_or_else(|| panic!("{what}: status not documented ({})", resp.text()));
        let documented = self.resolve(documented);
        let content_type = resp.header("content-type").unwrap_or_default();
        let media = content_type.split(';').next().unwrap().trim();
        let Some(content) = documented["content"].get(media) else {
            panic!("{what}: {media} not documented: {}", documented["content"]);
        };
        if media != "application/json" {
            return;
        }
        let mut schema = content["schema"].clone();
        schema
            .as_object_mut()
            .unwrap()
            .insert("components".into(), self.0["components"].clone());
        let validator = jsonschema::draft202012::new(&schema).expect("schema compiles");
        let body = resp.json();
        let errors: Vec<String> = validator
            .iter_errors(&body)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{what}: {errors:?} in {body}");
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_original_services_example_calls_answer() {
    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &["key-a", "key-b"], |_| {}).await;
    let doc = Document::fetch(&gw).await;

    let root = gw.http.get("/").await;
    doc.check("GET", "/", &root);
    let root = root.json();
    assert_eq!(root["name"], "megallm-gateway");
    assert_eq!(root["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(root["status"], "running");
    for (link, to) in [("health", "/health"), ("docs", "/docs"), ("api", "/v1")] {
        assert_eq!(root["links"][link], to, "{root}");
    }

    let health = gw.http.get("/health").await;
    doc.check("GET", "/health", &health);
    assert_eq!(
        health.json(),
        json!({"status": "healthy", "key_stats": {"total": 2, "available": 2, "failed": 0},
               "version": env!("CARGO_PKG_VERSION")})
    );

    let models = gw.http.get("/v1/models").await;
    doc.check("GET", "/v1/models", &models);
    assert_eq!(models.json()["object"], "list");

    for (model, context, formatted, usable, usable_formatted) in [
        (
            "openai-gpt-oss-120b",
            128_000,
            "128,000 tokens",
            115_200,
            "115,200 tokens",
        ),
        (
            "llama3-8b-instruct",
            8_000,
            "8,000 tokens",
            7_200,
            "7,200 tokens",
        ),
        (
            "unknown",
            128_000,
            "128,000 tokens",
            115_200,
            "115,200 tokens",
        ),
    ] {
        let resp = gw.http.get(&format!("/v1/models/{model}/info")).await;
        doc.check("GET", "/v1/models/{id}/info", &resp);
        let info = resp.json();
        assert_eq!(info["id"], model);
        assert_eq!(info["context_length"], context, "{info}");
        assert_eq!(info["context_length_formatted"], formatted, "{info}");
        assert_eq!(info["usable_limit"], usable, "{info}");
        assert_eq!(info["usable_limit_formatted"], usable_formatted, "{info}");
        // Only a model the gateway does not know gets the default, and says so.
        assert_eq!(info["note"].is_string(), model == "unknown", "{info}");
    }
    // A model id may hold `/`: the `/info` suffix still picks the info.
    let nested = gw.http.get("/v1/models/meta/llama-x/info").await.json();
    assert_eq!(nested["id"], "meta/llama-x");

    let body = json!({"model": "openai-gpt-oss-120b", "temperature": 0.7, "max_tokens": 100,
                      "messages": [{"role": "user", "content": "Hello!"}]});
    let chat = gw.http.chat(&body).await;
    doc.check("POST", "/v1/chat/completions", &chat);
    assert_eq!(chat.json()["object"], "chat.completion");
    let sent = mock.requests().into_iter().find(|r| r.is_chat()).unwrap();
    let sent = sent.json.unwrap();
    assert_eq!(
        (&sent["temperature"], &sent["max_tokens"]),
        (&json!(0.7), &json!(100))
    );

    let mut body = body;
    body["stream"] = json!(true);
    let stream = gw.http.chat_stream(&body).await;
    assert_eq!(
        stream.header("content-type").as_deref(),
        Some("text/event-stream")
    );
    let transcript = stream.collect().await;
    assert!(transcript.has_done(), "no [DONE]: {:?}", transcript.data());
    assert!(transcript.data().len() > 1, "{:?}", transcript.data());

    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_says_degraded_with_200_and_reset_failed_keys_brings_them_back() {
    let mock = MockUpstream::start().await;
    mock.set_chat("key-a", Reply::rate_limited(600));
    mock.set_chat("key-b", Reply::rate_limited(600));
    let gw = spawn_gateway(&mock, &["key-a", "key-b"], with_admin).await;
    let doc = Document::fetch(&gw).await;
    gw.http
        .chat(&chat_body())
        .await
        .assert_openai_error(429, None);

    let health = gw.http.get("/health").await;
    doc.check("GET", "/health", &health);
    assert_eq!(health.status, 200, "degraded is still 200, as the original");
    let health = health.json();
    assert_eq!(health["status"], "degraded");
    assert_eq!(
        health["key_stats"],
        json!({"total": 2, "available": 0, "failed": 2})
    );
    // `/readyz` is the route that answers 503.
    assert_eq!(gw.http.get("/readyz").await.status, 503);

    mock.clear("key-a");
    mock.clear("key-b");
    let reset = gw.admin_post(ADMIN, "/admin/reset-failed-keys").await;
    doc.check("POST", "/admin/reset-failed-keys", &reset);
    let reset = reset.json();
    assert_eq!(reset["reset"], 2, "{reset}");
    assert_eq!(reset["keys"], json!(["key-1", "key-2"]));
    assert_eq!(reset["key_stats"]["available"], 2);
    assert_eq!(gw.http.get("/health").await.json()["status"], "healthy");
    assert_eq!(gw.http.chat(&chat_body()).await.status, 200);
    // An admin-disabled key comes back too.
    gw.admin_post(ADMIN, "/admin/keys/key-2/disable").await;
    assert_eq!(
        gw.http.get("/health").await.json()["key_stats"]["failed"],
        1
    );
    let reset = gw
        .admin_post(ADMIN, "/admin/reset-failed-keys")
        .await
        .json();
    assert_eq!(reset["keys"], json!(["key-2"]));
    assert_eq!(gw.admin_key(ADMIN, "key-2").await["state"], "ready");

    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_aliases_refuse_without_the_token_and_work_with_it() {
    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &["key-a"], with_admin).await;
    let doc = Document::fetch(&gw).await;
    for path in ["/admin/reload-keys", "/admin/reset-failed-keys"] {
        let none = gw.http.send(Method::POST, path, &[], None).await;
        doc.check("POST", path, &none);
        none.assert_openai_error(401, None);
        assert_eq!(none.header("www-authenticate").as_deref(), Some("Bearer"));
        gw.admin_post("not-the-token", path)
            .await
            .assert_openai_error(401, None);
        let ok = gw.admin_post(ADMIN, path).await;
        assert_eq!(ok.status, 200, "{path}: {}", ok.text());
        doc.check("POST", path, &ok);
    }
    let reloaded = gw.admin_post(ADMIN, "/admin/reload-keys").await.json();
    assert_eq!(
        reloaded["reloaded"],
        json!({"kept": 1, "added": 0, "removed": 0, "total": 1})
    );
    gw.shutdown().await;

    // With no admin token configured they do not exist, like the rest of the admin API.
    let gw = spawn_gateway(&mock, &["key-a"], |_| {}).await;
    for path in ["/admin/reload-keys", "/admin/reset-failed-keys"] {
        gw.admin_post(ADMIN, path)
            .await
            .assert_openai_error(404, None);
    }
    gw.shutdown().await;
}

const ALLOWED: &str = "https://app.example.com";

async fn preflight(gw: &TestGateway, path: &str, origin: &str, headers: &str) -> HttpResponse {
    gw.http
        .send(
            Method::OPTIONS,
            path,
            &[
                ("origin", origin),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", headers),
            ],
            None,
        )
        .await
}

fn list(resp: &HttpResponse, name: &str) -> Vec<String> {
    resp.header(name)
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflight_from_an_allowed_origin_gets_the_headers_and_another_does_not() {
    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &["key-a"], |s| {
        s.cors_origins = vec![ALLOWED.into(), "http://localhost:3000".into()];
    })
    .await;

    // The HTTP API (an OpenAI SDK in a page), gRPC-Web and Connect (the same routes).
    for (path, headers) in [
        ("/v1/chat/completions", "authorization,content-type"),
        (
            "/v1/messages",
            "x-api-key,anthropic-version,content-type,x-stainless-lang",
        ),
        (
            "/megallm.v1.ChatService/StreamChatCompletion",
            "content-type,x-grpc-web,x-user-agent,grpc-timeout",
        ),
        (
            "/megallm.v1.ChatService/CreateChatCompletion",
            "content-type,connect-protocol-version,x-request-id",
        ),
    ] {
        let resp = preflight(&gw, path, ALLOWED, headers).await;
        assert!(resp.status.is_success(), "{path}: {}", resp.status);
        assert_eq!(
            resp.header("access-control-allow-origin").as_deref(),
            Some(ALLOWED),
            "{path}"
        );
        let allowed = list(&resp, "access-control-allow-headers");
        for h in headers.split(',') {
            assert!(
                allowed.iter().any(|a| a == h),
                "{path}: {h} not in {allowed:?}"
            );
        }
        assert!(list(&resp, "access-control-allow-methods").contains(&"post".to_string()));
        assert!(resp.header("access-control-max-age").is_some());

        let other = preflight(&gw, path, "https://evil.example", headers).await;
        assert!(
            other.header("access-control-allow-origin").is_none(),
            "{path}: another origin was allowed"
        );
    }

    // An actual request from the allowed origin may read the headers its client needs.
    let resp = gw
        .http
        .get_with("/v1/models", &[("origin", "http://localhost:3000")])
        .await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("access-control-allow-origin").as_deref(),
        Some("http://localhost:3000")
    );
    let exposed = list(&resp, "access-control-expose-headers");
    for h in [
        "grpc-status",
        "grpc-message",
        "x-request-id",
        "x-gateway-attempts",
        "retry-after",
    ] {
        assert!(exposed.iter().any(|e| e == h), "{h} not in {exposed:?}");
    }
    let resp = gw
        .http
        .get_with("/v1/models", &[("origin", "https://evil.example")])
        .await;
    assert_eq!(resp.status, 200);
    assert!(resp.header("access-control-allow-origin").is_none());
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_cors_origins_no_answer_carries_a_cors_header() {
    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &["key-a"], |_| {}).await;
    let resp = preflight(&gw, "/v1/chat/completions", ALLOWED, "authorization").await;
    let get = gw.http.get_with("/v1/models", &[("origin", ALLOWED)]).await;
    assert_eq!(get.status, 200);
    for r in [&resp, &get] {
        let cors: Vec<_> = r
            .headers
            .keys()
            .filter(|k| k.as_str().starts_with("access-control-"))
            .collect();
        assert!(
            cors.is_empty(),
            "CORS headers with no --cors-origin: {cors:?}"
        );
    }
    gw.shutdown().await;
}

/// Each operation the document lists, called with its own examples (path parameters and
/// request body), is served (no fallback 404, no 405) and answers as documented. The unit
/// test in `http::openapi` checks the other way: every route the router serves is listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_is_served_and_answers_as_documented() {
    let mock = MockUpstream::start().await;
    mock.set_model_ids(&["openai-gpt-oss-120b"]);
    let gw = spawn_gateway(&mock, &["key-a", "key-b"], with_admin).await;
    let doc = Document::fetch(&gw).await;
    let auth = bearer(ADMIN);
    let mut called = 0;
    for (path, item) in doc.0["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let mut url = path.clone();
            for p in op["parameters"].as_array().into_iter().flatten() {
                let p = doc.resolve(p);
                let name = p["name"].as_str().unwrap();
                let example = p["example"]
                    .as_str()
                    .expect("a path parameter has an example");
                url = url.replace(&format!("{{{name}}}"), example);
            }
            let body = op["requestBody"]["content"]["application/json"]["examples"]
                .as_object()
                .and_then(|e| e.values().next())
                .map(|e| e["value"].to_string().into_bytes());
            let mut headers = vec![("authorization", auth.as_str())];
            if body.is_some() {
                headers.push(("content-type", "application/json"));
            }
            let method_name = method.to_uppercase();
            let m = Method::from_bytes(method_name.as_bytes()).unwrap();
            let resp = gw.http.send(m, &url, &headers, body).await;
            assert_ne!(resp.status, 405, "{method_name} {url}: {}", resp.text());
            assert!(
                !resp.text().contains("no route for"),
                "{method_name} {url} is documented but not served"
            );
            assert!(
                resp.status.is_success(),
                "{method_name} {url}: {}",
                resp.text()
            );
            doc.check(&method_name, path, &resp);
            called += 1;
        }
    }
    assert!(called >= 17, "only {called} operations documented");
    gw.shutdown().await;
}

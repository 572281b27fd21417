//! HTTP door: `/v1/models`, `/v1/models/{id}`, `/healthz`, `/readyz`, `/metrics` (issue 2).
mod support;

use serde_json::Value;
use support::*;

fn ids(list: &Value) -> Vec<String> {
    assert_eq!(list["object"], "list", "not an OpenAI list: {list}");
    list["data"]
        .as_array()
        .unwrap_or_else(|| panic!("no data array: {list}"))
        .iter()
        .map(|m| {
            assert_eq!(m["object"], "model", "not a model object: {m}");
            m["id"]
                .as_str()
                .unwrap_or_else(|| panic!("model without id: {m}"))
                .to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_lists_the_upstream_models_when_it_is_up() {
    let mock = MockUpstream::start().await;
    mock.set_model_ids(&["up-model-1", "up-model-2", "up-model-3"]);
    let gw = spawn_gateway(&mock, &["key-a"], |_| {}).await;

    let resp = gw.http.get("/v1/models").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let got = ids(&resp.json());
    for want in ["up-model-1", "up-model-2", "up-model-3"] {
        assert!(got.iter().any(|g| g == want), "{want} missing from {got:?}");
    }
    // It asked the upstream with a pool key.
    let asked = mock
        .requests()
        .into_iter()
        .filter(|r| r.is_models())
        .collect::<Vec<_>>();
    assert!(
        !asked.is_empty(),
        "the upstream was never asked for its models"
    );
    assert!(
        asked.iter().all(|r| r.key.as_deref() == Some("key-a")),
        "models asked without the pool key"
    );

    let one = gw.http.get("/v1/models/up-model-2").await;
    assert_eq!(one.status, 200, "{}", one.text());
    let m = one.json();
    assert_eq!(m["id"], "up-model-2");
    assert_eq!(m["object"], "model");

    gw.http
        .get("/v1/models/no-such-model-xyz")
        .await
        .assert_openai_error(404, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_falls_back_to_a_built_in_list_when_the_upstream_is_down() {
    let mock = MockUpstream::start().await;
    mock.set_models_down(true);
    let gw = spawn_gateway(&mock, &["key-a"], |_| {}).await;

    let resp = gw.http.get("/v1/models").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let got = ids(&resp.json());
    assert!(
        got.iter().any(|g| g == "openai-gpt-oss-120b"),
        "built-in list lacks the default model: {got:?}"
    );
    assert!(
        !got.iter().any(|g| g == "mock-model-a"),
        "list came from a down upstream?: {got:?}"
    );

    let one = gw.http.get("/v1/models/openai-gpt-oss-120b").await;
    assert_eq!(one.status, 200, "{}", one.text());
    assert_eq!(one.json()["id"], "openai-gpt-oss-120b");
    gw.http
        .get("/v1/models/no-such-model-xyz")
        .await
        .assert_openai_error(404, None);

    // A 500 on /models says nothing about a key: chat still works.
    let chat = gw.http.chat(&chat_body()).await;
    assert_eq!(chat.status, 200, "{}", chat.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_readyz_are_200_with_a_usable_key() {
    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &["key-a"], |_| {}).await;
    let h = gw.http.get("/healthz").await;
    assert_eq!(h.status, 200, "{}", h.text());
    let r = gw.http.get("/readyz").await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_prometheus_text_without_key_material() {
    let mock = MockUpstream::start().await;
    let secret = "sk-metrics-SECRET-0123456789";
    let gw = spawn_gateway(&mock, &[secret], |_| {}).await;
    assert_eq!(gw.http.chat(&chat_body()).await.status, 200);

    let m = gw.http.get("/metrics").await;
    assert_eq!(m.status, 200, "{}", m.text());
    let ct = m.header("content-type").unwrap_or_default();
    assert!(ct.starts_with("text/plain"), "metrics content-type {ct:?}");
    let text = m.text();
    assert!(
        text.lines().any(|l| l.starts_with("# TYPE ")),
        "no # TYPE line in metrics:\n{text}"
    );
    assert!(!text.contains(secret), "a key appears in /metrics");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_graceful() {
    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &["key-a"], |_| {}).await;
    let addr = gw.addr;
    assert_eq!(gw.http.get("/healthz").await.status, 200);
    gw.shutdown().await;
    // After shutdown the port no longer serves.
    let gone = tokio::net::TcpStream::connect(addr).await;
    assert!(
        gone.is_err(),
        "the gateway still accepts connections after shutdown"
    );
}

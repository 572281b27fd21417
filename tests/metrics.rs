//! `/metrics` by Prometheus's conventions (issue 14): the exposition parses with a real parser
//! (`prometheus-parse`), every family has HELP and TYPE, names follow the rules (counters end
//! in `_total` and nothing else does, durations are `_seconds`), histograms are cumulative, and
//! the labels say what the operator needs: route (bounded), HTTP status apart from gRPC code,
//! and the LLM histograms (time to first token, stream duration, attempts, attempt latency by
//! key).

mod support;

use std::collections::{BTreeMap, BTreeSet};

use prometheus_parse::{Scrape, Value};
use support::grpc::{grpc_client, hi};
use support::*;

/// Every breach of the exposition rules this gateway holds itself to, as sentences.
fn lint(text: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let mut help = BTreeSet::new();
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut series = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap().to_owned();
            if !help.insert(name.clone()) {
                problems.push(format!("{name}: HELP twice"));
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap_or(""));
            if !help.contains(name) {
                problems.push(format!("{name}: TYPE without a HELP before it"));
            }
            if types.insert(name.to_owned(), kind.to_owned()).is_some() {
                problems.push(format!("{name}: TYPE twice"));
            }
            match kind {
                "counter" if !name.ends_with("_total") => {
                    problems.push(format!("{name}: a counter not ending in _total"))
                }
                "gauge" | "histogram" if name.ends_with("_total") => {
                    problems.push(format!("{name}: a {kind} ending in _total"))
                }
                "counter" | "gauge" | "histogram" => {}
                other => problems.push(format!("{name}: unexpected type {other:?}")),
            }
            let timed = ["duration", "latency", "time"]
                .iter()
                .any(|w| name.contains(w));
            if timed && !name.ends_with("_seconds") {
                problems.push(format!("{name}: a duration not in _seconds"));
            }
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (head, _value) = line.rsplit_once(' ').expect("sample line has a value");
        let name = head.split('{').next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|base| types.get(*base).map(String::as_str) == Some("histogram"))
            })
            .unwrap_or(name);
        if !types.contains_key(family) {
            problems.push(format!("{name}: a sample before (or without) its TYPE"));
        }
        if !series.insert(head.to_owned()) {
            problems.push(format!("{head}: the same series twice"));
        }
    }
    problems
}

/// Each histogram series: buckets never decrease, and `+Inf` equals `_count`.
fn check_histograms(scrape: &Scrape, text: &str) {
    for sample in &scrape.samples {
        let Value::Histogram(buckets) = &sample.value else {
            continue;
        };
        let mut last = 0.0;
        for b in buckets {
            assert!(
                b.count >= last,
                "{} buckets decrease: {buckets:?}",
                sample.metric
            );
            last = b.count;
        }
        let inf = buckets
            .iter()
            .find(|b| b.less_than.is_infinite())
            .unwrap_or_else(|| panic!("{} has no +Inf bucket", sample.metric));
        let count = scrape
            .samples
            .iter()
            .find(|s| s.metric == format!("{}_count", sample.metric) && *s.labels == *sample.labels)
            .unwrap_or_else(|| panic!("{} has no _count:\n{text}", sample.metric));
        let count = match count.value {
            Value::Untyped(v) | Value::Counter(v) => v,
            ref v => panic!("{}_count is {v:?}", sample.metric),
        };
        assert_eq!(inf.count, count, "{}: +Inf bucket != _count", sample.metric);
    }
}

/// The value of the one sample of `metric` with all of `labels`.
fn value(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(b) => b.iter().find(|b| b.less_than.is_infinite()).unwrap().count,
            Value::Summary(_) => f64::NAN,
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_follow_the_conventions() {
    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &["key-a", "key-b"], |s| s.max_attempts = 2).await;
    // A fresh gateway's exposition is clean too (empty histograms included).
    let fresh = gw.http.get("/metrics").await.text();
    assert_eq!(lint(&fresh), Vec::<String>::new(), "{fresh}");

    // One request that needs two attempts (round robin starts on key-1: it fails once), a
    // stream, a gRPC call, the operations endpoints and a 404.
    mock.push_chat_once("key-a", Reply::status(500));
    assert_eq!(gw.http.chat(&chat_body()).await.status, 200);
    let transcript = gw.http.chat_stream(&stream_body()).await.collect().await;
    assert!(transcript.has_done(), "the stream ended with [DONE]");
    let mut grpc = grpc_client(&gw).await;
    grpc.create_chat_completion(hi()).await.expect("gRPC chat");
    assert_eq!(gw.http.get("/healthz").await.status, 200);
    assert_eq!(gw.http.get("/readyz").await.status, 200);
    assert_eq!(gw.http.get("/no/such/path").await.status, 404);
    let _ = gw.http.get("/metrics").await;

    let text = gw.http.get("/metrics").await.text();
    assert_eq!(lint(&text), Vec::<String>::new(), "{text}");
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("parses");
    check_histograms(&scrape, &text);
    for s in &scrape.samples {
        assert!(
            scrape.docs.contains_key(&s.metric)
                || ["_sum", "_count"].iter().any(|x| s
                    .metric
                    .strip_suffix(x)
                    .is_some_and(|b| scrape.docs.contains_key(b))),
            "{} has no HELP",
            s.metric
        );
    }

    // Routes tell traffic apart; HTTP statuses and gRPC codes are separate labels.
    let requests = "gateway_requests_total";
    let http = |route, status| {
        value(
            &scrape,
            requests,
            &[("door", "http"), ("route", route), ("status", status)],
        )
    };
    assert_eq!(http("/v1/chat/completions", "200"), Some(2.0), "{text}");
    assert_eq!(http("/healthz", "200"), Some(1.0), "{text}");
    assert_eq!(http("/readyz", "200"), Some(1.0), "{text}");
    assert_eq!(http("/metrics", "200"), Some(2.0), "{text}");
    assert_eq!(http("unmatched", "404"), Some(1.0), "{text}");
    let grpc_ok = [
        ("door", "grpc"),
        ("route", "/megallm.v1.ChatService/CreateChatCompletion"),
        ("grpc_code", "OK"),
    ];
    assert_eq!(value(&scrape, requests, &grpc_ok), Some(1.0), "{text}");
    assert!(
        !scrape.samples.iter().any(|s| s.metric == requests
            && s.labels.get("door") == Some("grpc")
            && s.labels.get("status").is_some()),
        "gRPC series carry an HTTP status label:\n{text}"
    );
    assert_eq!(
        value(
            &scrape,
            "gateway_request_duration_seconds",
            &[("route", "/healthz")]
        ),
        Some(1.0)
    );

    // The pool's size is a gauge without _total.
    assert_eq!(value(&scrape, "gateway_keys", &[]), Some(2.0));
    assert!(!text.contains("gateway_keys_total"), "{text}");

    // The LLM histograms: three chat requests, four attempts, one stream.
    let attempts = "gateway_request_upstream_attempts";
    assert_eq!(value(&scrape, attempts, &[]), Some(3.0), "{text}");
    assert_eq!(
        value(&scrape, &format!("{attempts}_sum"), &[]),
        Some(4.0),
        "{text}"
    );
    let per_key = "gateway_upstream_attempt_duration_seconds";
    let on_key1 = value(&scrape, per_key, &[("key", "key-1")]).unwrap_or(0.0);
    let on_key2 = value(&scrape, per_key, &[("key", "key-2")]).unwrap_or(0.0);
    assert_eq!(on_key1 + on_key2, 4.0, "{text}");
    assert!(on_key1 >= 1.0 && on_key2 >= 1.0, "{text}");
    assert_eq!(
        value(&scrape, "gateway_time_to_first_token_seconds", &[]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(&scrape, "gateway_stream_duration_seconds", &[]),
        Some(1.0),
        "{text}"
    );
    // The buckets reach from 5 ms to 10 min.
    for le in ["0.005", "600"] {
        assert!(
            text.contains(&format!(
                "gateway_stream_duration_seconds_bucket{{le=\"{le}\"}}"
            )),
            "no {le} bucket:\n{text}"
        );
    }
    gw.shutdown().await;
}

/// Every route the HTTP door serves is counted under its own template, not `unmatched`: the
/// original service's routes, the OpenAPI pages, the admin routes, the forwarded endpoints and
/// a `--passthrough-path` (the labels were once a hand copy of the routes that missed these).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_is_counted_under_its_template() {
    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &["key-a"], |s| {
        with_admin(s);
        s.passthrough_paths = vec!["/v1/rerank".into()];
    })
    .await;
    let json = [("content-type", "application/json")];
    let anthropic = [
        ("content-type", "application/json"),
        ("anthropic-version", "2023-06-01"),
    ];
    let embeddings = r#"{"input":"hello"}"#;
    let messages = r#"{"max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#;
    // (path asked, template it is counted under, status)
    let mut asked = Vec::new();
    for path in [
        "/",
        "/health",
        "/openapi.json",
        "/docs",
        "/v1/models/m-1/info",
    ] {
        asked.push((path, gw.http.get(path).await.status));
    }
    for (path, headers, body) in [
        ("/v1/embeddings", &json[..], embeddings),
        ("/v1/completions", &json[..], r#"{"prompt":"hi"}"#),
        ("/v1/responses", &json[..], embeddings),
        ("/v1/messages", &anthropic[..], messages),
        ("/v1/rerank", &json[..], r#"{"q":1}"#),
    ] {
        let resp = gw.http.post_raw(path, headers, body).await;
        assert_eq!(resp.status, 200, "{path}: {}", resp.text());
        asked.push((path, resp.status));
    }
    let admin = format!("Bearer {ADMIN}");
    let status = gw
        .http
        .get_with("/admin/usage", &[("authorization", &admin)])
        .await
        .status;
    asked.push(("/admin/usage", status));
    for path in [
        "/admin/tokens/reload",
        "/admin/reload-keys",
        "/admin/reset-failed-keys",
    ] {
        asked.push((path, gw.admin_post(ADMIN, path).await.status));
    }

    let text = gw.http.get("/metrics").await.text();
    assert_eq!(lint(&text), Vec::<String>::new(), "{text}");
    // Read as lines, not with `prometheus-parse`: it misreads a label value holding `}`
    // (`/v1/models/{*id}`).
    let has = |line: String| text.lines().any(|l| l == line);
    for (path, status) in asked {
        let template = if path.starts_with("/v1/models/") {
            "/v1/models/{*id}"
        } else {
            path
        };
        let labels = format!("door=\"http\",route=\"{template}\"");
        let status = status.as_str();
        assert!(
            has(format!(
                "gateway_requests_total{{{labels},status=\"{status}\"}} 1"
            )),
            "{path} ({status}) not counted under {template}:\n{text}"
        );
        assert!(
            has(format!(
                "gateway_request_duration_seconds_count{{{labels}}} 1"
            )),
            "{path} not timed under {template}:\n{text}"
        );
    }
    assert!(
        !text.contains("route=\"unmatched\""),
        "no request above is unmatched:\n{text}"
    );
    gw.shutdown().await;
}

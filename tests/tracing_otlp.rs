//! Traces by OTLP (issue 14): with `--otlp-endpoint`, a request continues the client's W3C
//! `traceparent`, makes one server span and one client span per upstream attempt with the GenAI
//! semantic conventions' attributes, and the upstream gets the attempt's `traceparent`. The
//! collector is the OTLP TraceService (from `opentelemetry-proto`), served by tonic here.
//!
//! Its own test binary: the span export is a process-wide subscriber.

mod support;

use std::collections::HashMap;

use megallm_gateway::config::LogFormat;
use megallm_gateway::telemetry;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use support::*;
use tokio::sync::mpsc;

/// The collector: every exported span, into a channel.
struct Collector(mpsc::UnboundedSender<Span>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                for span in scope.spans {
                    let _ = self.0.send(span);
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn attributes(span: &Span) -> HashMap<String, Any> {
    span.attributes
        .iter()
        .filter_map(|kv| Some((kv.key.clone(), kv.value.clone()?.value?)))
        .collect()
}

fn text(attrs: &HashMap<String, Any>, key: &str) -> String {
    match attrs.get(key) {
        Some(Any::StringValue(s)) => s.clone(),
        other => panic!("{key} is {other:?}, not a string; all: {attrs:?}"),
    }
}

fn int(attrs: &HashMap<String, Any>, key: &str) -> i64 {
    match attrs.get(key) {
        Some(Any::IntValue(n)) => *n,
        other => panic!("{key} is {other:?}, not an integer; all: {attrs:?}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_and_its_attempts_are_spans_of_the_clients_trace() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_addr = listener.local_addr().unwrap();
    let (tx, mut spans) = mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Collector(tx)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    // The log layer comes with the exporter: only warnings, so the test's output stays quiet.
    std::env::set_var("RUST_LOG", "warn");
    let endpoint = format!("http://{collector_addr}");
    let telemetry = telemetry::init(LogFormat::Text, Some(&endpoint)).expect("exporter");

    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &["key-a", "key-b"], |s| s.max_attempts = 2).await;
    // key-1 (round robin's first) fails once: two attempts, the second wins.
    mock.push_chat_once("key-a", Reply::status(500));
    let traceparent = format!("00-{TRACE_ID}-{CLIENT_SPAN}-01");
    let resp = gw
        .http
        .chat_with(&chat_body(), &[("traceparent", &traceparent)])
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    // A stream, for the time to first token and the finish reasons seen in its chunks.
    let transcript = gw
        .http
        .chat_stream_with(&stream_body(), &[("traceparent", &traceparent)])
        .await
        .collect()
        .await;
    assert!(transcript.has_done());

    // Every upstream request carries the trace, with its attempt as parent.
    let upstream_parents: Vec<String> = mock
        .chat_requests()
        .iter()
        .map(|r| {
            r.header_values("traceparent")
                .pop()
                .expect("traceparent upstream")
        })
        .collect();
    assert_eq!(upstream_parents.len(), 3);
    for parent in &upstream_parents {
        assert!(
            parent.starts_with(&format!("00-{TRACE_ID}-")),
            "upstream traceparent {parent} is not the client's trace"
        );
        assert!(
            !parent.contains(CLIENT_SPAN),
            "the attempt is the parent, not the client"
        );
    }

    gw.shutdown().await;
    // The last batch goes out at shutdown (blocking, as the exporter's shutdown is).
    tokio::task::spawn_blocking(move || telemetry.shutdown())
        .await
        .unwrap();
    let mut got = Vec::new();
    while let Ok(span) = spans.try_recv() {
        got.push(span);
    }

    let requests: Vec<&Span> = got
        .iter()
        .filter(|s| s.kind == SpanKind::Server as i32)
        .collect();
    let attempts: Vec<&Span> = got
        .iter()
        .filter(|s| s.kind == SpanKind::Client as i32)
        .collect();
    assert_eq!(requests.len(), 2, "request spans: {got:#?}");
    assert_eq!(attempts.len(), 3, "attempt spans: {got:#?}");
    for span in got.iter() {
        assert_eq!(hex(&span.trace_id), TRACE_ID, "{span:#?}");
    }

    // The whole answer's request span: a child of the client's span, GenAI attributes.
    let whole = requests
        .iter()
        .find(|s| !attributes(s).contains_key("gen_ai.response.time_to_first_chunk"))
        .expect("the non-streaming request's span");
    assert_eq!(hex(&whole.parent_span_id), CLIENT_SPAN);
    let attrs = attributes(whole);
    assert_eq!(whole.name, "chat openai-gpt-oss-120b", "{attrs:?}");
    assert_eq!(text(&attrs, "gen_ai.operation.name"), "chat");
    let model = text(&attrs, "gen_ai.request.model");
    assert!(!model.is_empty());
    assert!(!text(&attrs, "gen_ai.response.model").is_empty());
    assert_eq!(int(&attrs, "gen_ai.usage.input_tokens"), 1);
    assert_eq!(int(&attrs, "gen_ai.usage.output_tokens"), 3);
    assert_eq!(int(&attrs, "http.response.status_code"), 200);
    assert_eq!(int(&attrs, "gateway.attempts"), 2);
    match attrs.get("gen_ai.response.finish_reasons") {
        Some(Any::ArrayValue(a)) => assert_eq!(
            a.values.iter().map(|v| v.value.clone()).collect::<Vec<_>>(),
            vec![Some(Any::StringValue("stop".into()))]
        ),
        other => panic!("finish_reasons is {other:?}"),
    }

    // Its two attempts: children of it, by key, with their outcomes.
    let mut mine: Vec<HashMap<String, Any>> = attempts
        .iter()
        .filter(|a| a.parent_span_id == whole.span_id)
        .map(|a| attributes(a))
        .collect();
    mine.sort_by_key(|a| int(a, "gateway.attempt"));
    assert_eq!(mine.len(), 2, "{attempts:#?}");
    assert_eq!(text(&mine[0], "gateway.key"), "key-1");
    assert_eq!(text(&mine[0], "gateway.attempt.outcome"), "500");
    assert_eq!(text(&mine[1], "gateway.key"), "key-2");
    assert_eq!(text(&mine[1], "gateway.attempt.outcome"), "200");
    assert_eq!(text(&mine[1], "gen_ai.request.model"), model);
    // The upstream saw each attempt's own span as its parent.
    let winner = attempts
        .iter()
        .find(|a| a.parent_span_id == whole.span_id && int(&attributes(a), "gateway.attempt") == 2)
        .unwrap();
    assert!(
        upstream_parents.contains(&format!("00-{TRACE_ID}-{}-01", hex(&winner.span_id))),
        "{upstream_parents:?}"
    );

    // The stream's request span: time to first token, finish reason from its last chunk.
    let streamed = requests
        .iter()
        .find(|s| s.span_id != whole.span_id)
        .unwrap();
    let attrs = attributes(streamed);
    match attrs.get("gen_ai.response.time_to_first_chunk") {
        Some(Any::DoubleValue(s)) => assert!(*s >= 0.0 && *s < 60.0),
        other => panic!("time to first chunk is {other:?}"),
    }
    assert!(matches!(
        attrs.get("gen_ai.response.finish_reasons"),
        Some(Any::ArrayValue(_))
    ));
    assert!(!text(&attrs, "gen_ai.response.model").is_empty());
}

use super::*;
use crate::chat::Endpoint;

/// Metrics with the routes a gateway serving `endpoints` registers (`http::router`'s list).
fn registered(endpoints: &[Arc<Endpoint>]) -> Metrics {
    let m = Metrics::default();
    m.http_routes(crate::http::route_paths(&crate::http::routes(), endpoints));
    m
}

fn endpoints(passthrough: &[&str]) -> Vec<Arc<Endpoint>> {
    let builtin = Endpoint::builtin().into_iter();
    builtin
        .chain(passthrough.iter().map(|p| Endpoint::passthrough(p)))
        .map(Arc::new)
        .collect()
}

#[test]
fn routes_are_a_bounded_set() {
    let m = registered(&endpoints(&[]));
    assert_eq!(m.http_route(Some("/healthz")).name(), "/healthz");
    assert_eq!(
        m.http_route(Some("/v1/models/{*id}")).name(),
        "/v1/models/{*id}"
    );
    assert_eq!(m.http_route(None).name(), "unmatched");
    assert_eq!(m.http_route(Some("/x/{*rest}")).name(), "unmatched");
    assert_eq!(m.http_route(None).door(), Door::Http);
    let g = Route::grpc("StreamChatCompletion");
    assert_eq!(g.door(), Door::Grpc);
    assert_eq!(g.name(), "/megallm.v1.ChatService/StreamChatCompletion");
    assert_eq!(Route::grpc("Nope").name(), "unmatched");
    let http = crate::http::routes().len() + Endpoint::builtin().len();
    assert_eq!(m.routes().count(), http + 1 + GRPC_METHODS.len());
}

/// Every route the HTTP door serves, its own and the forwarded endpoints (passthrough paths
/// included), has a label of its own: none is counted as `unmatched` (`/health`, `/docs`,
/// `/admin/usage`, `/v1/embeddings`… were, when the labels were a hand copy of the routes).
#[test]
fn every_served_route_has_its_own_label() {
    let endpoints = endpoints(&["/v1/audio/speech", "/v1/rerank"]);
    let m = registered(&endpoints);
    let own = crate::http::routes();
    let served = own
        .iter()
        .map(|r| r.path)
        .chain(endpoints.iter().map(|e| e.path.as_str()));
    for path in served {
        let route = m.http_route(Some(path));
        assert_eq!(route.name(), path);
        assert_ne!(route.slot, Slot::Unmatched, "{path}");
        assert_eq!(route.door(), Door::Http, "{path}");
        m.record(route, Status::Http(200), Duration::from_millis(1));
        let mut out = String::new();
        m.render_requests(&mut out);
        let line =
            format!("gateway_requests_total{{door=\"http\",route=\"{path}\",status=\"200\"}} 1");
        assert!(out.contains(&line), "{path}:\n{out}");
    }
    let mut out = String::new();
    m.render_requests(&mut out);
    assert!(!out.contains("unmatched"), "{out}");
}

/// The labels are fixed by the first registration: a second cannot add any, and a path never
/// registered stays `unmatched`.
#[test]
fn labels_are_fixed_at_start() {
    let m = registered(&endpoints(&[]));
    let before = m.routes().count();
    m.http_routes(crate::http::route_paths(
        &crate::http::routes(),
        &endpoints(&[]),
    ));
    assert_eq!(m.routes().count(), before);
    assert_eq!(m.http_route(Some("/v1/rerank")).name(), "unmatched");
    assert_eq!(m.http_route(Some("")), Route::UNMATCHED);
    let long = format!("/v1/{}", "x".repeat(500));
    assert_eq!(m.http_route(Some(&long)), Route::UNMATCHED);
    // Before any registration, every HTTP request is unmatched (and still counted).
    let bare = Metrics::default();
    let route = bare.http_route(Some("/healthz"));
    assert_eq!(route, Route::UNMATCHED);
    bare.record(route, Status::Http(200), Duration::ZERO);
    let mut out = String::new();
    bare.render_requests(&mut out);
    assert!(
        out.contains("route=\"unmatched\",status=\"200\"} 1"),
        "{out}"
    );
}

/// A registered template the text format would misread is escaped in the label.
#[test]
fn route_labels_are_escaped() {
    let m = Metrics::default();
    m.http_routes(["/a\"b\\c"]);
    let route = m.http_route(Some("/a\"b\\c"));
    assert_eq!(route.name(), "/a\"b\\c");
    m.record(route, Status::Http(200), Duration::ZERO);
    let mut out = String::new();
    m.render_requests(&mut out);
    assert!(out.contains(r#"route="/a\"b\\c",status="200"} 1"#), "{out}");
}

#[test]
fn statuses_land_in_their_own_slots() {
    let m = registered(&endpoints(&[]));
    let r = m.http_route(Some("/healthz"));
    m.record(r, Status::Http(200), Duration::from_millis(3));
    m.record(r, Status::Http(999), Duration::from_millis(3));
    m.record(Route::grpc("ListModels"), Status::Grpc(14), Duration::ZERO);
    let mut out = String::new();
    m.render_requests(&mut out);
    assert!(
        out.contains("gateway_requests_total{door=\"http\",route=\"/healthz\",status=\"200\"} 1")
    );
    assert!(out.contains("status=\"999\"} 1"));
    assert!(
        out.contains("route=\"/megallm.v1.ChatService/ListModels\",grpc_code=\"UNAVAILABLE\"} 1")
    );
    assert!(out.contains(
        "gateway_request_duration_seconds_bucket{door=\"http\",route=\"/healthz\",le=\"0.005\"} 2"
    ));
}

use super::*;

#[test]
fn routes_are_a_bounded_set() {
    assert_eq!(Route::http(Some("/healthz")).name(), "/healthz");
    assert_eq!(
        Route::http(Some("/v1/models/{*id}")).name(),
        "/v1/models/{*id}"
    );
    assert_eq!(Route::http(None).name(), "unmatched");
    assert_eq!(Route::http(Some("/x/{*rest}")).name(), "unmatched");
    assert_eq!(Route::http(None).door(), Door::Http);
    let g = Route::grpc("StreamChatCompletion");
    assert_eq!(g.door(), Door::Grpc);
    assert_eq!(g.name(), "/megallm.v1.ChatService/StreamChatCompletion");
    assert_eq!(Route::grpc("Nope").name(), "unmatched");
    assert_eq!(Route::all().count(), ROUTES);
}

#[test]
fn statuses_land_in_their_own_slots() {
    let m = Metrics::default();
    let r = Route::http(Some("/healthz"));
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

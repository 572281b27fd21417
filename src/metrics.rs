//! Prometheus metrics: requests by door, route and status, the latencies of requests, streams
//! and upstream attempts, and each key's counters and state by id and fingerprint (never by
//! secret). Rendered as text on demand.
//!
//! The request path touches only atomics in arrays fixed at start (indexed by [`Route`] and
//! status), so counting a request takes no lock and allocates nothing. Per-key attempt
//! latencies are the one map: a read lock to find the key's histogram (written once per key).
//!
//! Names follow Prometheus's conventions: counters end in `_total`, nothing else does, and
//! durations are in seconds with `_seconds` in the name. Every family has `# HELP` and `# TYPE`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::keys::{FailureClass, KeyPool, KeyStatus, PROPAGATION_BUCKETS};

/// Bucket bounds in seconds of every duration histogram: from a cache-speed 5 ms to the
/// 10 min a long generation may take, roughly ×2–2.5 per step so no decade is one bucket.
const BUCKETS: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// Bucket bounds of the upstream attempts one request made.
const ATTEMPT_BUCKETS: [f64; 6] = [1.0, 2.0, 3.0, 4.0, 5.0, 10.0];

/// The door a request came in by: the `door` label of the request metrics and a field of
/// every access-log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Door {
    Http,
    Grpc,
}

impl Door {
    /// The one spelling of the door, as labels and logs show it.
    pub fn name(self) -> &'static str {
        match self {
            Door::Http => "http",
            Door::Grpc => "grpc",
        }
    }
}

/// The HTTP door's route templates, as axum's `MatchedPath` spells them (`http::router`).
const HTTP_ROUTES: [&str; 10] = [
    "/v1/chat/completions",
    "/v1/models",
    "/v1/models/{*id}",
    "/healthz",
    "/readyz",
    "/metrics",
    "/admin/keys",
    "/admin/keys/reload",
    "/admin/keys/{id}/disable",
    "/admin/keys/{id}/enable",
];

/// The label of an HTTP request no route of the HTTP door matched (404s, and a gRPC path
/// asked without a gRPC content type).
const UNMATCHED: &str = "unmatched";

/// The gRPC door's methods, by the name `grpc::call::Call` is started with.
const GRPC_METHODS: [(&str, &str); 3] = [
    (
        "CreateChatCompletion",
        "/megallm.v1.ChatService/CreateChatCompletion",
    ),
    (
        "StreamChatCompletion",
        "/megallm.v1.ChatService/StreamChatCompletion",
    ),
    ("ListModels", "/megallm.v1.ChatService/ListModels"),
];

/// Every route label: the HTTP routes, `unmatched`, then the gRPC methods.
const ROUTES: usize = HTTP_ROUTES.len() + 1 + GRPC_METHODS.len();

/// A request's route: the `route` label, a bounded set fixed at compile time, so a scanner
/// probing random paths cannot grow the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route(u8);

impl Route {
    /// An HTTP request's route from the template axum matched (`None`: no route did).
    pub fn http(matched: Option<&str>) -> Route {
        let i = matched
            .and_then(|m| HTTP_ROUTES.iter().position(|r| *r == m))
            .unwrap_or(HTTP_ROUTES.len());
        Route(i as u8)
    }

    /// A gRPC call's route from its method name (an unknown one counts as unmatched).
    pub fn grpc(method: &str) -> Route {
        match GRPC_METHODS.iter().position(|(m, _)| *m == method) {
            Some(i) => Route((HTTP_ROUTES.len() + 1 + i) as u8),
            None => Route(HTTP_ROUTES.len() as u8),
        }
    }

    /// A gRPC request's route from its path, if it is one of the gateway's own methods.
    pub fn grpc_path(path: &str) -> Option<Route> {
        GRPC_METHODS
            .iter()
            .position(|(_, p)| *p == path)
            .map(|i| Route((HTTP_ROUTES.len() + 1 + i) as u8))
    }

    pub fn door(self) -> Door {
        if usize::from(self.0) > HTTP_ROUTES.len() {
            Door::Grpc
        } else {
            Door::Http
        }
    }

    /// The `route` label: the HTTP template, `unmatched`, or the gRPC method's path.
    pub fn name(self) -> &'static str {
        let i = usize::from(self.0);
        match i.cmp(&HTTP_ROUTES.len()) {
            std::cmp::Ordering::Less => HTTP_ROUTES[i],
            std::cmp::Ordering::Equal => UNMATCHED,
            std::cmp::Ordering::Greater => GRPC_METHODS[i - HTTP_ROUTES.len() - 1].1,
        }
    }

    fn all() -> impl Iterator<Item = Route> {
        (0..ROUTES as u8).map(Route)
    }
}

/// How a request ended: an HTTP status (the `status` label) or a gRPC code (`grpc_code`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Http(u16),
    /// The numeric gRPC code (0–16).
    Grpc(u8),
}

/// gRPC code names as `google/rpc/code.proto` spells them, indexed by the code.
const GRPC_CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// HTTP statuses are counted in one slot per code from 100 to 999 (all `http::StatusCode`
/// allows), so no code is ever merged with another or dropped.
const HTTP_STATUS_MIN: u16 = 100;
const HTTP_STATUSES: usize = 900;

/// One route's request counts, by status.
struct StatusCounts {
    http: [AtomicU64; HTTP_STATUSES],
    grpc: [AtomicU64; GRPC_CODES.len()],
}

impl Default for StatusCounts {
    fn default() -> Self {
        StatusCounts {
            http: std::array::from_fn(|_| AtomicU64::new(0)),
            grpc: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

struct Histogram<const N: usize> {
    counts: [AtomicU64; N],
    sum_micros: AtomicU64,
    total: AtomicU64,
}

impl<const N: usize> Default for Histogram<N> {
    fn default() -> Self {
        Histogram {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_micros: AtomicU64::new(0),
            total: AtomicU64::new(0),
        }
    }
}

impl<const N: usize> Histogram<N> {
    fn observe_value(&self, bounds: &[f64; N], value: f64, micros: u64) {
        if let Some(i) = bounds.iter().position(|b| value <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
    }

    /// `name`'s `_bucket`, `_sum` and `_count` lines, each with `labels` (`key="v",` form,
    /// trailing comma included, or empty). The sum is kept in millionths.
    fn render(&self, out: &mut String, name: &str, labels: &str, bounds: &[f64; N]) {
        let mut cumulative = 0;
        for (bound, count) in bounds.iter().zip(&self.counts) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{bound}\"}} {cumulative}");
        }
        let total = self.total.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {total}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let labels = labels.trim_end_matches(',');
        if labels.is_empty() {
            let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {total}");
        } else {
            let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
            let _ = writeln!(out, "{name}_count{{{labels}}} {total}");
        }
    }
}

type Seconds = Histogram<{ BUCKETS.len() }>;

impl Seconds {
    fn observe(&self, d: Duration) {
        self.observe_value(&BUCKETS, d.as_secs_f64(), d.as_micros() as u64);
    }
}

pub struct Metrics {
    /// Request counts, indexed by `Route` then status; boxed, since it is some 80 KB.
    requests: Box<[StatusCounts; ROUTES]>,
    /// Time to the response head, indexed by `Route`.
    latency: [Seconds; ROUTES],
    /// Streams: from the request's dispatch to its first chunk, ready for the client.
    first_token: Seconds,
    /// Streams: from the request's dispatch to the stream's end (or the client's hang-up).
    stream: Seconds,
    /// Upstream attempts per request that reached the dispatcher.
    attempts: Histogram<{ ATTEMPT_BUCKETS.len() }>,
    /// Each upstream attempt, send to verdict (a stream's: to its first event), by key id. Key
    /// ids are the pool's (`key-N`), bounded by the keys ever configured; a key removed by a
    /// reload keeps its series, as a counter would.
    attempt_latency: RwLock<BTreeMap<Arc<str>, Arc<Seconds>>>,
    /// Key reloads by outcome: `[applied, refused]`.
    key_reloads: [AtomicU64; 2],
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Box::new(std::array::from_fn(|_| StatusCounts::default())),
            latency: Default::default(),
            first_token: Seconds::default(),
            stream: Seconds::default(),
            attempts: Histogram::default(),
            attempt_latency: RwLock::default(),
            key_reloads: Default::default(),
        }
    }
}

impl Metrics {
    /// Records one finished request (for streams: the time to the response head).
    pub fn record(&self, route: Route, status: Status, elapsed: Duration) {
        let counts = &self.requests[usize::from(route.0)];
        let slot = match status {
            Status::Http(code) => {
                let i = usize::from(code.saturating_sub(HTTP_STATUS_MIN));
                counts.http.get(i)
            }
            Status::Grpc(code) => counts.grpc.get(usize::from(code)),
        };
        if let Some(slot) = slot {
            slot.fetch_add(1, Ordering::Relaxed);
        }
        self.latency[usize::from(route.0)].observe(elapsed);
    }

    /// A stream's first chunk is ready, `elapsed` after the request reached the dispatcher.
    pub fn first_token(&self, elapsed: Duration) {
        self.first_token.observe(elapsed);
    }

    /// A stream ended (or was dropped by its client), `elapsed` after it was dispatched.
    pub fn stream_ended(&self, elapsed: Duration) {
        self.stream.observe(elapsed);
    }

    /// A request's attempts are over: it made `n` upstream attempts.
    pub fn attempts(&self, n: usize) {
        self.attempts
            .observe_value(&ATTEMPT_BUCKETS, n as f64, n as u64 * 1_000_000);
    }

    /// One upstream attempt on `key` took `elapsed` (to its verdict, or a stream's first event).
    pub fn attempt(&self, key: &Arc<str>, elapsed: Duration) {
        let found = self
            .attempt_latency
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned();
        let histogram = match found {
            Some(h) => h,
            None => self
                .attempt_latency
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .entry(key.clone())
                .or_default()
                .clone(),
        };
        histogram.observe(elapsed);
    }

    /// Counts one key reload (file watch, SIGHUP or admin), applied or refused.
    pub fn key_reload(&self, applied: bool) {
        self.key_reloads[usize::from(!applied)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(&self, pool: &KeyPool) -> String {
        let mut out = String::with_capacity(8192);
        self.render_requests(&mut out);
        self.render_llm(&mut out);
        family(
            &mut out,
            "gateway_key_reloads_total",
            "counter",
            "Key list reloads, by result.",
        );
        for (result, n) in ["applied", "refused"].iter().zip(&self.key_reloads) {
            let _ = writeln!(
                out,
                "gateway_key_reloads_total{{result=\"{result}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        render_keys(&mut out, pool);
        render_state_store(&mut out, pool);
        out
    }

    fn render_requests(&self, out: &mut String) {
        family(
            out,
            "gateway_requests_total",
            "counter",
            "Requests answered, by door, route and status (HTTP: status; gRPC: grpc_code).",
        );
        for route in Route::all() {
            let counts = &self.requests[usize::from(route.0)];
            let (door, name) = (route.door().name(), route.name());
            for (i, n) in counts.http.iter().enumerate() {
                let n = n.load(Ordering::Relaxed);
                if n > 0 {
                    let status = i as u16 + HTTP_STATUS_MIN;
                    let _ = writeln!(out, "gateway_requests_total{{door=\"{door}\",route=\"{name}\",status=\"{status}\"}} {n}");
                }
            }
            for (code, n) in GRPC_CODES.iter().zip(&counts.grpc) {
                let n = n.load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(out, "gateway_requests_total{{door=\"{door}\",route=\"{name}\",grpc_code=\"{code}\"}} {n}");
                }
            }
        }
        family(
            out,
            "gateway_request_duration_seconds",
            "histogram",
            "Time to the response head (a stream's: its first chunk is ready), by door and route.",
        );
        for route in Route::all() {
            let h = &self.latency[usize::from(route.0)];
            if h.total.load(Ordering::Relaxed) == 0 {
                continue;
            }
            let labels = format!(
                "door=\"{}\",route=\"{}\",",
                route.door().name(),
                route.name()
            );
            h.render(out, "gateway_request_duration_seconds", &labels, &BUCKETS);
        }
    }

    fn render_llm(&self, out: &mut String) {
        for (name, help, h) in [
            (
                "gateway_time_to_first_token_seconds",
                "Streams: from dispatch (retries included) to the first chunk ready for the client.",
                &self.first_token,
            ),
            (
                "gateway_stream_duration_seconds",
                "Streams: from dispatch to the stream's end or the client's hang-up.",
                &self.stream,
            ),
        ] {
            family(out, name, "histogram", help);
            h.render(out, name, "", &BUCKETS);
        }
        family(
            out,
            "gateway_upstream_attempt_duration_seconds",
            "histogram",
            "One upstream attempt, request to verdict (a stream's: to its first event), by key.",
        );
        for (key, h) in self
            .attempt_latency
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let labels = format!("key=\"{key}\",");
            h.render(
                out,
                "gateway_upstream_attempt_duration_seconds",
                &labels,
                &BUCKETS,
            );
        }
        family(
            out,
            "gateway_request_upstream_attempts",
            "histogram",
            "Upstream attempts one request made (retries on other keys included).",
        );
        // Whole numbers: the sum is kept in millionths like the durations'.
        self.attempts.render(
            out,
            "gateway_request_upstream_attempts",
            "",
            &ATTEMPT_BUCKETS,
        );
    }
}

/// A family's `# HELP` and `# TYPE` lines.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn render_keys(out: &mut String, pool: &KeyPool) {
    let keys = pool.view();
    let usable = keys
        .iter()
        .filter(|k| matches!(k.state, KeyStatus::Ready | KeyStatus::HalfOpen))
        .count();
    family(
        out,
        "gateway_keys_usable",
        "gauge",
        "Keys that can take a request now.",
    );
    let _ = writeln!(out, "gateway_keys_usable {usable}");
    family(out, "gateway_keys", "gauge", "Keys in the pool.");
    let _ = writeln!(out, "gateway_keys {}", keys.len());
    family(
        out,
        "gateway_key_state",
        "gauge",
        "1 for the state each key is in, 0 for the others.",
    );
    for k in &keys {
        for state in KeyStatus::ALL {
            let v = u8::from(k.state == state);
            let _ = writeln!(
                out,
                "gateway_key_state{{key=\"{}\",fingerprint=\"{}\",state=\"{}\"}} {v}",
                k.id,
                k.fingerprint,
                state.name()
            );
        }
    }
    family(
        out,
        "gateway_key_in_flight",
        "gauge",
        "Upstream requests open on each key (streams included).",
    );
    for k in &keys {
        let _ = writeln!(
            out,
            "gateway_key_in_flight{{key=\"{}\"}} {}",
            k.id, k.in_flight
        );
    }
    family(
        out,
        "gateway_key_upstream_requests_total",
        "counter",
        "Upstream tries per key and result class.",
    );
    for k in &keys {
        let failures = FailureClass::ALL.map(|c| (c.name(), k.failures[c]));
        for (class, n) in std::iter::once(("success", k.successes)).chain(failures) {
            let _ = writeln!(
                out,
                "gateway_key_upstream_requests_total{{key=\"{}\",class=\"{class}\"}} {n}",
                k.id
            );
        }
    }
}

/// The shared state store (`--redis`): whether it is up, the replicas it sees, and how long a
/// key's change took to reach this replica from the one that saw it. Absent without a store.
fn render_state_store(out: &mut String, pool: &KeyPool) {
    let Some(status) = pool.store_status() else {
        return;
    };
    family(
        out,
        "gateway_state_store_up",
        "gauge",
        "1 while the shared state store (Redis) answers.",
    );
    let _ = writeln!(out, "gateway_state_store_up {}", u8::from(status.up));
    family(
        out,
        "gateway_state_store_replicas",
        "gauge",
        "Replicas seen alive through the store.",
    );
    let _ = writeln!(out, "gateway_state_store_replicas {}", status.replicas);
    family(
        out,
        "gateway_state_propagation_seconds",
        "histogram",
        "From a key state change on another replica to its arrival here.",
    );
    let mut cumulative = 0;
    for (bound, n) in PROPAGATION_BUCKETS.iter().zip(&status.propagation) {
        cumulative += n;
        let _ = writeln!(
            out,
            "gateway_state_propagation_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
        );
    }
    let total: u64 = status.propagation.iter().sum();
    let _ = writeln!(
        out,
        "gateway_state_propagation_seconds_bucket{{le=\"+Inf\"}} {total}\ngateway_state_propagation_seconds_sum {}\ngateway_state_propagation_seconds_count {total}",
        status.propagation_sum.as_secs_f64()
    );
}

#[cfg(test)]
mod tests {
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
        assert!(out
            .contains("gateway_requests_total{door=\"http\",route=\"/healthz\",status=\"200\"} 1"));
        assert!(out.contains("status=\"999\"} 1"));
        assert!(out
            .contains("route=\"/megallm.v1.ChatService/ListModels\",grpc_code=\"UNAVAILABLE\"} 1"));
        assert!(out.contains("gateway_request_duration_seconds_bucket{door=\"http\",route=\"/healthz\",le=\"0.005\"} 2"));
    }
}

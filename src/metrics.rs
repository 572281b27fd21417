//! Prometheus metrics: requests by door, route and status, the latencies of requests, streams
//! and upstream attempts, and each key's counters and state by id and fingerprint (never by
//! secret). Rendered as text on demand.
//!
//! The request path touches only atomics in arrays fixed at start (indexed by [`Route`] and
//! status), so counting a request takes no lock and allocates nothing. The HTTP routes are the
//! ones the HTTP door's router serves, registered by it once at start
//! ([`Metrics::http_routes`]), so the labels can neither miss a route nor grow. Per-key attempt
//! latencies are the one map: a read lock to find the key's histogram (written once per key).
//!
//! Names follow Prometheus's conventions: counters end in `_total`, nothing else does, and
//! durations are in seconds with `_seconds` in the name. Every family has `# HELP` and `# TYPE`.
//!
//! Why this file is longer than the rest: it is one job, every family the gateway exports and its
//! rendering, in the one place the names and labels are spelled.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
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

/// A request's route: the `route` label, one of a bounded set fixed at start (the HTTP door's
/// route templates as its router registered them, `unmatched`, the gRPC methods), so a scanner
/// probing random paths cannot grow the metrics. An HTTP route borrows its template from the
/// [`Metrics`] that found it ([`Metrics::http_route`]); the others are `'static`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route<'a> {
    name: &'a str,
    slot: Slot,
}

/// Where a route's counts live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    /// An HTTP request no registered route matched.
    Unmatched,
    /// The gRPC method at this index of `GRPC_METHODS`.
    Grpc(u8),
    /// The HTTP route at this index of the registered [`HttpRoutes`].
    Http(u32),
}

impl Route<'static> {
    /// An HTTP request no route matched.
    pub const UNMATCHED: Route<'static> = Route {
        name: UNMATCHED,
        slot: Slot::Unmatched,
    };

    /// A gRPC call's route from its method name (an unknown one counts as unmatched).
    pub fn grpc(method: &str) -> Route<'static> {
        match GRPC_METHODS.iter().position(|(m, _)| *m == method) {
            Some(i) => Route::grpc_at(i),
            None => Route::UNMATCHED,
        }
    }

    /// A gRPC request's route from its path, if it is one of the gateway's own methods.
    pub fn grpc_path(path: &str) -> Option<Route<'static>> {
        GRPC_METHODS
            .iter()
            .position(|(_, p)| *p == path)
            .map(Route::grpc_at)
    }

    fn grpc_at(i: usize) -> Route<'static> {
        Route {
            name: GRPC_METHODS[i].1,
            slot: Slot::Grpc(i as u8),
        }
    }
}

impl<'a> Route<'a> {
    pub fn door(self) -> Door {
        match self.slot {
            Slot::Grpc(_) => Door::Grpc,
            Slot::Unmatched | Slot::Http(_) => Door::Http,
        }
    }

    /// The `route` label: the HTTP template, `unmatched`, or the gRPC method's path.
    pub fn name(self) -> &'a str {
        self.name
    }
}

/// The HTTP door's routes, as its router registered them at start ([`Metrics::http_routes`]).
struct HttpRoutes {
    /// The templates as axum's `MatchedPath` spells them, in the router's order: the labels,
    /// and the order they are rendered in.
    paths: Box<[Box<str>]>,
    /// Each route's counts, indexed like `paths`.
    counts: Box<[RouteCounts]>,
}

impl HttpRoutes {
    fn new<'p>(templates: impl IntoIterator<Item = &'p str>) -> HttpRoutes {
        let mut paths: Vec<Box<str>> = Vec::new();
        for t in templates {
            if !paths.iter().any(|p| **p == *t) {
                paths.push(t.into());
            }
        }
        HttpRoutes {
            counts: paths.iter().map(|_| RouteCounts::default()).collect(),
            paths: paths.into(),
        }
    }

    /// A scan of a score of templates: string equality compares lengths first, so it is
    /// about one comparison per route, with no hashing and no allocation.
    fn find(&self, template: &str) -> Option<Route<'_>> {
        let i = self.paths.iter().position(|p| **p == *template)?;
        Some(self.route(i as u32))
    }

    fn route(&self, i: u32) -> Route<'_> {
        Route {
            name: &self.paths[i as usize],
            slot: Slot::Http(i),
        }
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

/// One route's counts: requests by status, and the time to their response heads.
#[derive(Default)]
struct RouteCounts {
    requests: StatusCounts,
    latency: Seconds,
}

pub struct Metrics {
    /// The HTTP door's routes and their counts, set once by `http::router` from the very list
    /// it routes (its own routes and the forwarded endpoints), so no path it serves counts as
    /// `unmatched` and none it does not serve gets a label. Unset, every HTTP request is
    /// unmatched.
    http: OnceLock<HttpRoutes>,
    /// `unmatched`'s counts, then each gRPC method's (indexed like `GRPC_METHODS`); boxed,
    /// since each route's are some 7 KB.
    fixed: Box<[RouteCounts; 1 + GRPC_METHODS.len()]>,
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
            http: OnceLock::new(),
            fixed: Box::new(std::array::from_fn(|_| RouteCounts::default())),
            first_token: Seconds::default(),
            stream: Seconds::default(),
            attempts: Histogram::default(),
            attempt_latency: RwLock::default(),
            key_reloads: Default::default(),
        }
    }
}

impl Metrics {
    /// Registers the HTTP door's route templates as its router spells them (`MatchedPath`):
    /// the `route` labels of HTTP requests, besides `unmatched`. Once, at start: the first
    /// registration stands (one gateway has one router), so the labels cannot grow.
    pub fn http_routes<'p>(&self, templates: impl IntoIterator<Item = &'p str>) {
        let routes = HttpRoutes::new(templates);
        if let Err(again) = self.http.set(routes) {
            debug_assert!(
                self.http.get().is_some_and(|r| r.paths == again.paths),
                "HTTP routes registered twice, differently"
            );
        }
    }

    /// An HTTP request's route from the template axum matched (`None`, or a template never
    /// registered: unmatched). Compares it with the registered templates;
    /// no lock, no allocation.
    pub fn http_route(&self, matched: Option<&str>) -> Route<'_> {
        matched
            .zip(self.http.get())
            .and_then(|(m, routes)| routes.find(m))
            .unwrap_or(Route::UNMATCHED)
    }

    /// Every route with its counts, in the order they are rendered: the HTTP routes, then
    /// `unmatched`, then the gRPC methods.
    fn routes<'a>(&'a self) -> impl Iterator<Item = (Route<'a>, &'a RouteCounts)> {
        let http = self.http.get().into_iter().flat_map(|routes| {
            (0..routes.paths.len() as u32)
                .map(move |i| (routes.route(i), &routes.counts[i as usize]))
        });
        let fixed = (0..self.fixed.len()).map(|i| -> Route<'a> {
            match i.checked_sub(1) {
                None => Route::UNMATCHED,
                Some(method) => Route::grpc_at(method),
            }
        });
        http.chain(fixed.zip(self.fixed.iter()))
    }

    /// A route's counts (`None`: an HTTP route of another `Metrics`, which no gateway makes).
    fn counts(&self, slot: Slot) -> Option<&RouteCounts> {
        match slot {
            Slot::Unmatched => Some(&self.fixed[0]),
            Slot::Grpc(i) => self.fixed.get(1 + usize::from(i)),
            Slot::Http(i) => self.http.get()?.counts.get(i as usize),
        }
    }

    /// Records one finished request (for streams: the time to the response head).
    pub fn record(&self, route: Route, status: Status, elapsed: Duration) {
        let Some(route) = self.counts(route.slot) else {
            return;
        };
        let counts = &route.requests;
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
        route.latency.observe(elapsed);
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
        for (route, counts) in self.routes() {
            let (door, name) = (route.door().name(), label(route.name()));
            for (i, n) in counts.requests.http.iter().enumerate() {
                let n = n.load(Ordering::Relaxed);
                if n > 0 {
                    let status = i as u16 + HTTP_STATUS_MIN;
                    let _ = writeln!(out, "gateway_requests_total{{door=\"{door}\",route=\"{name}\",status=\"{status}\"}} {n}");
                }
            }
            for (code, n) in GRPC_CODES.iter().zip(&counts.requests.grpc) {
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
        for (route, counts) in self.routes() {
            let h = &counts.latency;
            if h.total.load(Ordering::Relaxed) == 0 {
                continue;
            }
            let labels = format!(
                "door=\"{}\",route=\"{}\",",
                route.door().name(),
                label(route.name())
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

/// A label value as the text format writes it: `\\`, `"` and a line feed escaped. Route
/// templates are the operator's too (`--passthrough-path`), not only the gateway's.
fn label(value: &str) -> Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len() + 2);
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
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
#[path = "metrics_tests.rs"]
mod tests;

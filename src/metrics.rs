//! Prometheus metrics: request counts and latencies per door and status, and each key's
//! counters and state by id and fingerprint (never by secret). Rendered as text on demand.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::keys::{FailureClass, KeyPool, KeyStatus, PROPAGATION_BUCKETS};

/// Latency bucket bounds in seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 120.0,
];

/// The door a request came in by: the `door` label of the request metrics and a field of
/// every access-log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Door {
    Http,
    Grpc,
}

impl Door {
    /// In the order the metrics list them.
    pub const ALL: [Door; 2] = [Door::Http, Door::Grpc];

    /// The one spelling of the door, as labels and logs show it.
    pub fn name(self) -> &'static str {
        match self {
            Door::Http => "http",
            Door::Grpc => "grpc",
        }
    }
}

#[derive(Default)]
struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    sum_micros: AtomicU64,
    total: AtomicU64,
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Default)]
pub struct Metrics {
    /// Counts by door name and status (the name, so the text lists doors alphabetically).
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    /// Time to the response head, one histogram per door, indexed by `Door as usize`.
    latency: [Histogram; Door::ALL.len()],
    /// Key reloads by outcome: `[applied, refused]`.
    key_reloads: [AtomicU64; 2],
}

impl Metrics {
    /// Records one finished request (for streams: the time to the response head).
    pub fn record(&self, door: Door, status: u16, elapsed: Duration) {
        *self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((door.name(), status))
            .or_default() += 1;
        self.latency[door as usize].observe(elapsed);
    }

    /// Counts one key reload (file watch, SIGHUP or admin), applied or refused.
    pub fn key_reload(&self, applied: bool) {
        self.key_reloads[usize::from(!applied)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(&self, pool: &KeyPool) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str("# HELP gateway_requests_total Requests answered, by door and status.\n");
        out.push_str("# TYPE gateway_requests_total counter\n");
        for ((door, status), n) in self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "gateway_requests_total{{door=\"{door}\",status=\"{status}\"}} {n}"
            );
        }
        out.push_str("# HELP gateway_request_duration_seconds Time to the response head.\n");
        out.push_str("# TYPE gateway_request_duration_seconds histogram\n");
        for door in Door::ALL {
            let h = &self.latency[door as usize];
            let door = door.name();
            let mut cumulative = 0;
            for (bound, count) in BUCKETS.iter().zip(&h.counts) {
                cumulative += count.load(Ordering::Relaxed);
                let _ = writeln!(out, "gateway_request_duration_seconds_bucket{{door=\"{door}\",le=\"{bound}\"}} {cumulative}");
            }
            let total = h.total.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "gateway_request_duration_seconds_bucket{{door=\"{door}\",le=\"+Inf\"}} {total}"
            );
            let sum = h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(
                out,
                "gateway_request_duration_seconds_sum{{door=\"{door}\"}} {sum}"
            );
            let _ = writeln!(
                out,
                "gateway_request_duration_seconds_count{{door=\"{door}\"}} {total}"
            );
        }
        out.push_str("# HELP gateway_key_reloads_total Key list reloads, by result.\n");
        out.push_str("# TYPE gateway_key_reloads_total counter\n");
        for (result, n) in ["applied", "refused"].iter().zip(&self.key_reloads) {
            let _ = writeln!(
                out,
                "gateway_key_reloads_total{{result=\"{result}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        let keys = pool.view();
        let usable = keys
            .iter()
            .filter(|k| matches!(k.state, KeyStatus::Ready | KeyStatus::HalfOpen))
            .count();
        out.push_str("# HELP gateway_keys_usable Keys that can take a request now.\n");
        out.push_str("# TYPE gateway_keys_usable gauge\n");
        let _ = writeln!(out, "gateway_keys_usable {usable}");
        let _ = writeln!(
            out,
            "# TYPE gateway_keys_total gauge\ngateway_keys_total {}",
            keys.len()
        );
        out.push_str("# HELP gateway_key_state 1 for the state each key is in.\n# TYPE gateway_key_state gauge\n");
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
        out.push_str("# TYPE gateway_key_in_flight gauge\n");
        for k in &keys {
            let _ = writeln!(
                out,
                "gateway_key_in_flight{{key=\"{}\"}} {}",
                k.id, k.in_flight
            );
        }
        out.push_str(
            "# HELP gateway_key_upstream_requests_total Upstream tries per key and result class.\n",
        );
        out.push_str("# TYPE gateway_key_upstream_requests_total counter\n");
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
        render_state_store(&mut out, pool);
        out
    }
}

/// The shared state store (`--redis`): whether it is up, the replicas it sees, and how long a
/// key's change took to reach this replica from the one that saw it. Absent without a store.
fn render_state_store(out: &mut String, pool: &KeyPool) {
    let Some(status) = pool.store_status() else {
        return;
    };
    out.push_str(
        "# HELP gateway_state_store_up 1 while the shared state store (Redis) answers.
# TYPE gateway_state_store_up gauge
",
    );
    let _ = writeln!(out, "gateway_state_store_up {}", u8::from(status.up));
    out.push_str(
        "# HELP gateway_state_store_replicas Replicas seen alive through the store.
# TYPE gateway_state_store_replicas gauge
",
    );
    let _ = writeln!(out, "gateway_state_store_replicas {}", status.replicas);
    out.push_str("# HELP gateway_state_propagation_seconds From a key state change on another replica to its arrival here.
# TYPE gateway_state_propagation_seconds histogram
");
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

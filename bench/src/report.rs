//! The results model, the targets, and the markdown rendering.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::load::Summary;

/// One side of a scenario (direct or through the gateway).
#[derive(Clone, Debug, Serialize)]
pub struct Side {
    /// What was measured, e.g. "HTTP → mock" or "gRPC → gateway → mock".
    pub path: String,
    /// Requests sent, warm-up included.
    pub attempted: u64,
    /// Requests recorded (after the warm-up) that succeeded.
    pub ok: u64,
    pub errors: u64,
    pub error_kinds: BTreeMap<String, u64>,
    pub elapsed_s: f64,
    pub rps: f64,
    /// Whole request: send to last byte.
    pub latency: Summary,
    /// Streams only: send to the first `data:` event (gRPC: first message).
    pub ttfc: Option<Summary>,
    /// CPU time of the serving process (mock for direct, gateway for gateway) per request, µs.
    pub server_cpu_us_per_req: Option<f64>,
    /// Write syscalls of the serving process per request (`syscw`, `/proc/PID/io`).
    pub server_writes_per_req: Option<f64>,
    /// CPU that processes other than this benchmark's took meanwhile, in percent of the whole
    /// machine: noise from elsewhere (a build, say) that the figures could not exclude.
    pub other_cpu_pct: Option<f64>,
    /// Fault mix only: upstream calls the mock saw per client request.
    pub upstream_calls_per_req: Option<f64>,
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Group {
    Http,
    HttpStream,
    Paced,
    GrpcUnary,
    GrpcStream,
    GrpcPaced,
    Fault,
}

#[derive(Clone, Debug, Serialize)]
pub struct Scenario {
    pub id: String,
    pub group: Group,
    pub title: String,
    pub concurrency: usize,
    pub direct: Option<Side>,
    pub gateway: Option<Side>,
    pub note: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct StreamsHold {
    pub target: usize,
    pub opened: usize,
    pub failed: usize,
    pub transport: String,
    pub open_s: f64,
    pub gateway_rss_kib: Option<u64>,
    pub gateway_fds: Option<usize>,
    pub gateway_rss_after_release_kib: Option<u64>,
    pub mock_rss_kib: Option<u64>,
    pub note: Option<String>,
}

#[derive(Clone, Debug, Serialize, Default)]
pub struct Memory {
    pub idle_kib: Option<u64>,
    pub after_load_kib: Option<u64>,
    pub streams: Vec<StreamsHold>,
    /// How long after the last open streams closed `after_streams_wait_kib` was read.
    pub after_streams_wait_s: Option<f64>,
    pub after_streams_wait_kib: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Default)]
pub struct Startup {
    pub runs_ms: Vec<f64>,
    pub median_ms: Option<f64>,
    pub min_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub mem_total_mib: u64,
    pub kernel: String,
    pub nofile_limit: u64,
    pub note: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Settings {
    pub mode: String,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub max_requests: u64,
    pub paced_duration_s: f64,
    pub max_streams: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct Target {
    pub name: String,
    pub goal: String,
    pub measured: String,
    /// "PASS", "MISS" or "n/a" (not measured).
    pub verdict: String,
}

/// One phase of the Redis-mode scenario: a gateway in one mode at one concurrency.
#[derive(Clone, Debug, Serialize)]
pub struct RedisPhase {
    /// `local` (no Redis), `redis` (shared state, no limits) or `redis + rpm` (an `rpm=` limit
    /// on every key: one Redis round trip per request).
    pub mode: String,
    pub concurrency: usize,
    pub side: Side,
}

/// State propagation between two replicas sharing one Redis.
#[derive(Clone, Debug, Serialize, Default)]
pub struct Propagation {
    /// Changes made on replica A (disable and enable alternately).
    pub changes: usize,
    /// Admin disable on A → B's `/admin/keys` shows the key disabled (B refuses it).
    pub disable: Summary,
    /// Admin enable on A → B shows it serving again.
    pub enable: Summary,
    /// Changes B did not show within 2 s.
    pub timed_out: usize,
    /// B's `gateway_state_propagation_seconds` over the same changes: observations, and the
    /// upper bounds (ms) of the buckets holding its p50 and p99; its mean (ms).
    pub histogram_count: Option<u64>,
    pub histogram_p50_le_ms: Option<f64>,
    pub histogram_p99_le_ms: Option<f64>,
    pub histogram_mean_ms: Option<f64>,
}

/// The Redis-mode scenario: replicas sharing key state and limits through a real
/// `redis-server` on loopback.
#[derive(Clone, Debug, Serialize, Default)]
pub struct RedisBench {
    pub redis_version: Option<String>,
    pub phases: Vec<RedisPhase>,
    pub propagation: Option<Propagation>,
    /// Why the scenario (or a part of it) was not measured.
    pub notes: Vec<String>,
}

impl RedisBench {
    pub fn phase(&self, mode: &str, c: usize) -> Option<&Side> {
        self.phases
            .iter()
            .find(|p| p.mode == mode && p.concurrency == c)
            .map(|p| &p.side)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub generated_at: String,
    pub git_commit: String,
    pub gateway_bin: String,
    pub machine: Machine,
    pub settings: Settings,
    pub scenarios: Vec<Scenario>,
    pub memory: Memory,
    pub startup: Startup,
    /// The Redis-mode scenario (absent when the gateway was not measured).
    pub redis: Option<RedisBench>,
    /// Accounting on against off (absent when the gateway was not measured).
    pub accounting: Option<crate::accounting::AccountingBench>,
    pub targets: Vec<Target>,
    pub notes: Vec<String>,
    pub wall_time_s: f64,
}

impl Report {
    pub fn find(&self, group: Group, c: usize) -> Option<&Scenario> {
        self.scenarios
            .iter()
            .find(|s| s.group == group && s.concurrency == c)
    }
}

fn verdict(ok: Option<bool>) -> String {
    match ok {
        Some(true) => "PASS",
        Some(false) => "MISS",
        None => "n/a",
    }
    .to_string()
}

fn both(s: Option<&Scenario>) -> Option<(&Side, &Side)> {
    let s = s?;
    Some((s.direct.as_ref()?, s.gateway.as_ref()?))
}

/// The targets, reported (never asserted).
pub fn targets(r: &Report) -> Vec<Target> {
    let mut t = Vec::new();
    let mut push = |name: &str, goal: &str, m: Option<(String, bool)>| {
        t.push(Target {
            name: name.into(),
            goal: goal.into(),
            measured: m.as_ref().map_or("not measured".into(), |(s, _)| s.clone()),
            verdict: verdict(m.map(|(_, ok)| ok)),
        })
    };
    let h1 = both(r.find(Group::Http, 1));
    push(
        "HTTP non-stream c=1: added p50",
        "≤ 0.10 ms",
        h1.map(|(d, g)| {
            let a = g.latency.p50_ms - d.latency.p50_ms;
            (format!("{a:+.3} ms"), a <= 0.10)
        }),
    );
    push(
        "HTTP non-stream c=1: added p99",
        "≤ 0.10 ms",
        h1.map(|(d, g)| {
            let a = g.latency.p99_ms - d.latency.p99_ms;
            (format!("{a:+.3} ms"), a <= 0.10)
        }),
    );
    push(
        "HTTP non-stream c=64: gateway RPS / direct",
        "≥ 45 %",
        both(r.find(Group::Http, 64)).map(|(d, g)| {
            let p = 100.0 * g.rps / d.rps.max(1e-9);
            (format!("{p:.1} %"), p >= 45.0)
        }),
    );
    let s64 = both(r.find(Group::HttpStream, 64));
    push(
        "HTTP stream c=64: gateway RPS / direct",
        "≥ 50 %",
        s64.map(|(d, g)| {
            let p = 100.0 * g.rps / d.rps.max(1e-9);
            (format!("{p:.1} %"), p >= 50.0)
        }),
    );
    let ttfc_added = |pair: Option<(&Side, &Side)>| {
        pair.and_then(|(d, g)| {
            let a = g.ttfc.as_ref()?.p50_ms - d.ttfc.as_ref()?.p50_ms;
            Some((format!("{a:+.3} ms"), a <= 0.15))
        })
    };
    push(
        "HTTP stream c=64: added first-chunk p50",
        "≤ 0.15 ms",
        ttfc_added(s64),
    );
    push(
        "HTTP stream c=1: added first-chunk p50",
        "≤ 0.15 ms",
        ttfc_added(both(r.find(Group::HttpStream, 1))),
    );
    push(
        "HTTP stream c=1: added first-chunk p99",
        "≤ 0.25 ms",
        both(r.find(Group::HttpStream, 1)).and_then(|(d, g)| {
            let a = g.ttfc.as_ref()?.p99_ms - d.ttfc.as_ref()?.p99_ms;
            Some((format!("{a:+.3} ms"), a <= 0.25))
        }),
    );
    push(
        "Paced streams (64 × 32 chunks × 10 ms): total p50 vs direct",
        "within 1 %",
        both(r.find(Group::Paced, 64)).map(|(d, g)| {
            let p = 100.0 * (g.latency.p50_ms - d.latency.p50_ms) / d.latency.p50_ms.max(1e-9);
            (format!("{p:+.2} %"), p.abs() <= 1.0)
        }),
    );
    // The same goals for the gRPC door, against HTTP direct (there is no gRPC mock).
    let g1 = both(r.find(Group::GrpcUnary, 1));
    push(
        "gRPC unary c=1 vs HTTP direct: added p50",
        "≤ 0.10 ms",
        g1.map(|(d, g)| {
            let a = g.latency.p50_ms - d.latency.p50_ms;
            (format!("{a:+.3} ms"), a <= 0.10)
        }),
    );
    push(
        "gRPC unary c=1 vs HTTP direct: added p99",
        "≤ 0.5 ms",
        g1.map(|(d, g)| {
            let a = g.latency.p99_ms - d.latency.p99_ms;
            (format!("{a:+.3} ms"), a <= 0.5)
        }),
    );
    push(
        "gRPC unary c=64: RPS / HTTP direct",
        "≥ 30 %",
        both(r.find(Group::GrpcUnary, 64)).map(|(d, g)| {
            let p = 100.0 * g.rps / d.rps.max(1e-9);
            (format!("{p:.1} %"), p >= 30.0)
        }),
    );
    let gs64 = both(r.find(Group::GrpcStream, 64));
    push(
        "gRPC stream c=64: RPS / HTTP direct",
        "≥ 30 %",
        gs64.map(|(d, g)| {
            let p = 100.0 * g.rps / d.rps.max(1e-9);
            (format!("{p:.1} %"), p >= 30.0)
        }),
    );
    push(
        "gRPC stream c=64: added first-message p50",
        "≤ 0.15 ms",
        ttfc_added(gs64),
    );
    push(
        "gRPC stream c=1: added first-message p50",
        "≤ 0.15 ms",
        ttfc_added(both(r.find(Group::GrpcStream, 1))),
    );
    push(
        "gRPC paced streams: total p50 vs HTTP direct",
        "within 1 %",
        both(r.find(Group::GrpcPaced, 64)).map(|(d, g)| {
            let p = 100.0 * (g.latency.p50_ms - d.latency.p50_ms) / d.latency.p50_ms.max(1e-9);
            (format!("{p:+.2} %"), p.abs() <= 1.0)
        }),
    );
    push(
        "RSS idle after start",
        "≤ 15 MiB",
        r.memory.idle_kib.map(|k| {
            let mb = k as f64 / 1024.0;
            (format!("{mb:.1} MiB"), mb <= 15.0)
        }),
    );
    let s10k = r.memory.streams.iter().find(|s| s.target >= 10_000);
    push(
        "RSS with 10,000 open streams",
        "≤ 150 MiB",
        s10k.and_then(|s| {
            let mb = s.gateway_rss_kib? as f64 / 1024.0;
            let full = s.opened >= s.target;
            let text = if full {
                format!("{mb:.1} MiB")
            } else {
                format!("{mb:.1} MiB (only {} of {} open)", s.opened, s.target)
            };
            Some((text, mb <= 150.0 && full))
        }),
    );
    push(
        "RSS a while after the open streams closed",
        "≤ 3 × idle",
        r.memory
            .after_streams_wait_kib
            .zip(r.memory.idle_kib)
            .map(|(a, i)| {
                let x = a as f64 / (i as f64).max(1.0);
                let wait = r.memory.after_streams_wait_s.unwrap_or(0.0);
                (
                    format!(
                        "{:.1} MiB after {wait:.0} s ({x:.1} × idle)",
                        a as f64 / 1024.0
                    ),
                    x <= 3.0,
                )
            }),
    );
    let cpu_of = |g: Group, c: usize| -> Option<f64> {
        r.find(g, c)?.gateway.as_ref()?.server_cpu_us_per_req
    };
    for c in [1usize, 64] {
        push(
            &format!("HTTP stream (8 events) c={c}: gateway CPU vs a non-streamed answer"),
            "≤ 1.5 ×",
            cpu_of(Group::HttpStream, c)
                .zip(cpu_of(Group::Http, c))
                .map(|(s, u)| {
                    (
                        format!("{s:.0} / {u:.0} µs = {:.2} ×", s / u.max(1e-9)),
                        s <= 1.5 * u,
                    )
                }),
        );
        push(
            &format!("gRPC unary c={c}: gateway CPU vs the HTTP door"),
            "≤ 1.2 ×",
            cpu_of(Group::GrpcUnary, c)
                .zip(cpu_of(Group::Http, c))
                .map(|(g, h)| {
                    (
                        format!("{g:.0} / {h:.0} µs = {:.2} ×", g / h.max(1e-9)),
                        g <= 1.2 * h,
                    )
                }),
        );
        push(
            &format!("gRPC stream c={c}: gateway CPU vs the HTTP door"),
            "≤ 1.2 ×",
            cpu_of(Group::GrpcStream, c)
                .zip(cpu_of(Group::HttpStream, c))
                .map(|(g, h)| {
                    (
                        format!("{g:.0} / {h:.0} µs = {:.2} ×", g / h.max(1e-9)),
                        g <= 1.2 * h,
                    )
                }),
        );
    }
    let rb = r.redis.as_ref();
    let local_and = |mode: &str, c: usize| -> Option<(&Side, &Side)> {
        let rb = rb?;
        Some((rb.phase("local", c)?, rb.phase(mode, c)?))
    };
    push(
        "Redis mode, no limits, HTTP non-stream c=64: RPS / local mode",
        "≥ 95 %",
        local_and("redis", 64).map(|(l, g)| {
            let p = 100.0 * g.rps / l.rps.max(1e-9);
            (
                format!("{p:.2} % ({:.0} / {:.0} req/s)", g.rps, l.rps),
                p >= 95.0,
            )
        }),
    );
    push(
        "Redis mode, rpm= on every key, HTTP non-stream c=1: added p50 vs local mode",
        "≤ 0.15 ms",
        local_and("redis + rpm", 1).map(|(l, g)| {
            let a = g.latency.p50_ms - l.latency.p50_ms;
            (format!("{a:+.3} ms"), a <= 0.15)
        }),
    );
    let acct = r.accounting.as_ref();
    push(
        "Accounting on (client limits + usage log), HTTP non-stream c=64: RPS / off",
        "≥ 95 %",
        acct.and_then(|a| a.pair(false, 64)).map(|(off, on)| {
            let p = 100.0 * on.0 / off.0.max(1e-9);
            (
                format!("{p:.1} % ({:.0} / {:.0} req/s)", on.0, off.0),
                p >= 95.0,
            )
        }),
    );
    push(
        "Accounting on, HTTP stream c=64: streams/s / off",
        "≥ 95 %",
        acct.and_then(|a| a.pair(true, 64)).map(|(off, on)| {
            let p = 100.0 * on.0 / off.0.max(1e-9);
            (
                format!("{p:.1} % ({:.0} / {:.0} streams/s)", on.0, off.0),
                p >= 95.0,
            )
        }),
    );
    push(
        "Accounting on, HTTP non-stream c=1: added p50 vs off",
        "≤ 0.01 ms",
        acct.and_then(|a| a.pair(false, 1)).map(|(off, on)| {
            let d = on.1 - off.1;
            (format!("{d:+.3} ms"), d <= 0.01)
        }),
    );
    push(
        "Redis mode: admin disable on replica A → replica B refuses the key, p99",
        "≤ 50 ms",
        rb.and_then(|b| b.propagation.as_ref())
            .filter(|p| p.disable.count > 0)
            .map(|p| {
                let text = if p.timed_out > 0 {
                    format!(
                        "{:.2} ms over {} disables ({} of {} changes not seen within 2 s)",
                        p.disable.p99_ms, p.disable.count, p.timed_out, p.changes
                    )
                } else {
                    format!(
                        "{:.2} ms over {} disables",
                        p.disable.p99_ms, p.disable.count
                    )
                };
                (text, p.disable.p99_ms <= 50.0 && p.timed_out == 0)
            }),
    );
    push(
        "Startup to first 200 on /healthz (median)",
        "≤ 50 ms",
        r.startup
            .median_ms
            .map(|m| (format!("{m:.1} ms"), m <= 50.0)),
    );
    t
}

pub(crate) fn ms(v: f64) -> String {
    format!("{v:.3}")
}

pub(crate) fn added(d: f64, g: f64) -> String {
    format!("{:+.3}", g - d)
}

pub(crate) fn ratio_pct(d: f64, g: f64) -> String {
    if d > 0.0 {
        format!("{:.1} %", 100.0 * g / d)
    } else {
        "–".into()
    }
}

pub(crate) fn errs(s: &Side) -> String {
    if s.errors == 0 {
        "0".into()
    } else {
        let kinds: Vec<String> = s
            .error_kinds
            .iter()
            .map(|(k, v)| format!("{k}×{v}"))
            .collect();
        format!("{} ({})", s.errors, kinds.join(", "))
    }
}

pub(crate) fn other(s: &Side) -> String {
    s.other_cpu_pct.map_or("–".into(), |v| format!("{v:.0}"))
}

pub(crate) fn cpu(s: &Side) -> String {
    s.server_cpu_us_per_req
        .map_or("–".into(), |v| format!("{v:.0}"))
}

/// Table of RPS and whole-request latency (non-streaming and fault mix).
fn table_latency(out: &mut String, rows: &[&Scenario]) {
    out.push_str("| c | RPS direct | RPS gateway | gateway/direct | p50 direct | p50 gateway | p50 added | p90 direct | p90 gateway | p99 direct | p99 gateway | p99 added | max direct | max gateway | errors d / g | server CPU µs/req d / g | other CPU % d / g |\n");
    out.push_str(
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|\n",
    );
    for s in rows {
        let (Some(d), Some(g)) = (&s.direct, &s.gateway) else {
            if let Some(d) = &s.direct {
                let _ = writeln!(
                    out,
                    "| {} | {:.0} | – | – | {} | – | – | {} | – | {} | – | – | {} | – | {} / – | {} / – | {} / – |",
                    s.concurrency,
                    d.rps,
                    ms(d.latency.p50_ms),
                    ms(d.latency.p90_ms),
                    ms(d.latency.p99_ms),
                    ms(d.latency.max_ms),
                    errs(d),
                    cpu(d),
                    other(d)
                );
            }
            continue;
        };
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} / {} | {} / {} |",
            s.concurrency,
            d.rps,
            g.rps,
            ratio_pct(d.rps, g.rps),
            ms(d.latency.p50_ms),
            ms(g.latency.p50_ms),
            added(d.latency.p50_ms, g.latency.p50_ms),
            ms(d.latency.p90_ms),
            ms(g.latency.p90_ms),
            ms(d.latency.p99_ms),
            ms(g.latency.p99_ms),
            added(d.latency.p99_ms, g.latency.p99_ms),
            ms(d.latency.max_ms),
            ms(g.latency.max_ms),
            errs(d),
            errs(g),
            cpu(d),
            cpu(g),
            other(d),
            other(g)
        );
    }
}

/// Table for streams: RPS, first chunk and whole-stream latency.
fn table_stream(out: &mut String, rows: &[&Scenario]) {
    out.push_str("| c | streams/s direct | streams/s gateway | gateway/direct | first chunk p50 direct | first chunk p50 gateway | added | first chunk p99 direct | first chunk p99 gateway | total p50 direct | total p50 gateway | total p50 diff | total p99 direct | total p99 gateway | max direct | max gateway | errors d / g | other CPU % d / g |\n");
    out.push_str(
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|\n",
    );
    for s in rows {
        let (Some(d), Some(g)) = (&s.direct, &s.gateway) else {
            if let Some(d) = &s.direct {
                let f = d.ttfc.clone().unwrap_or_default();
                let _ = writeln!(
                    out,
                    "| {} | {:.0} | – | – | {} | – | – | {} | – | {} | – | – | {} | – | {} | – | {} / – | {} / – |",
                    s.concurrency,
                    d.rps,
                    ms(f.p50_ms),
                    ms(f.p99_ms),
                    ms(d.latency.p50_ms),
                    ms(d.latency.p99_ms),
                    ms(d.latency.max_ms),
                    errs(d),
                    other(d)
                );
            }
            continue;
        };
        let fd = d.ttfc.clone().unwrap_or_default();
        let fg = g.ttfc.clone().unwrap_or_default();
        let pct = 100.0 * (g.latency.p50_ms - d.latency.p50_ms) / d.latency.p50_ms.max(1e-9);
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {:+.2} % | {} | {} | {} | {} | {} / {} | {} / {} |",
            s.concurrency,
            d.rps,
            g.rps,
            ratio_pct(d.rps, g.rps),
            ms(fd.p50_ms),
            ms(fg.p50_ms),
            added(fd.p50_ms, fg.p50_ms),
            ms(fd.p99_ms),
            ms(fg.p99_ms),
            ms(d.latency.p50_ms),
            ms(g.latency.p50_ms),
            pct,
            ms(d.latency.p99_ms),
            ms(g.latency.p99_ms),
            ms(d.latency.max_ms),
            ms(g.latency.max_ms),
            errs(d),
            errs(g),
            other(d),
            other(g)
        );
    }
}

fn kib_mb(k: Option<u64>) -> String {
    k.map_or("–".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

pub fn markdown(r: &Report) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# megallm-gateway benchmark: gateway vs direct\n");
    let _ = writeln!(
        o,
        "Generated {} ({} mode, {:.0} s wall time). Gateway commit `{}`, binary `{}`.\n",
        r.generated_at, r.settings.mode, r.wall_time_s, r.git_commit, r.gateway_bin
    );
    let m = &r.machine;
    let _ = writeln!(
        o,
        "**Machine:** {} × {} · {} MiB RAM · Linux {} · open-files limit {}.\n",
        m.nproc, m.cpu_model, m.mem_total_mib, m.kernel, m.nofile_limit
    );
    let _ = writeln!(o, "> {}\n", m.note);
    let s = &r.settings;
    let _ = writeln!(
        o,
        "Every figure is measured twice in the same run: **direct** (load generator → mock upstream) and **gateway** (load generator → gateway → mock upstream). Closed loop, fixed concurrency, one connection per client; each phase has {:.1} s of warm-up, then records for at most {:.1} s or {} requests (paced streams: {:.1} s). Latencies in milliseconds. \"added\" = gateway − direct. Server CPU = CPU time of the process that served the request (mock for direct, gateway alone for gateway) per request.\n",
        s.warmup_s, s.duration_s, s.max_requests, s.paced_duration_s
    );

    let others: Vec<f64> = r
        .scenarios
        .iter()
        .flat_map(|s| [s.direct.as_ref(), s.gateway.as_ref()])
        .flatten()
        .chain(
            r.redis
                .iter()
                .flat_map(|b| b.phases.iter().map(|p| &p.side)),
        )
        .chain(
            r.accounting
                .iter()
                .flat_map(|a| a.phases.iter().map(|p| &p.side)),
        )
        .filter_map(|s| s.other_cpu_pct)
        .collect();
    if let Some(max) = others.iter().copied().reduce(f64::max) {
        let mean = others.iter().sum::<f64>() / others.len() as f64;
        let _ = writeln!(
            o,
            "Background: processes other than the benchmark's own took {mean:.0} % of the machine on average during the recorded phases, {max:.0} % at most (column \"other CPU %\"). {}\n",
            if max > 10.0 {
                "Phases with a high share were disturbed by other work on the machine; rerun on an idle machine for clean figures."
            } else {
                "The machine was otherwise idle."
            }
        );
    }
    let _ = writeln!(o, "## Targets (reported, not asserted)\n");
    o.push_str("| target | goal | measured | verdict |\n|---|---|---|---|\n");
    for t in &r.targets {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} |",
            t.name, t.goal, t.measured, t.verdict
        );
    }
    o.push('\n');

    let rows =
        |g: Group| -> Vec<&Scenario> { r.scenarios.iter().filter(|s| s.group == g).collect() };
    let section = |o: &mut String, title: &str, intro: &str, g: Group, stream: bool| {
        let v = rows(g);
        if v.is_empty() {
            return;
        }
        let _ = writeln!(o, "## {title}\n\n{intro}\n");
        if stream {
            table_stream(o, &v);
        } else {
            table_latency(o, &v);
        }
        for s in &v {
            if let Some(n) = &s.note {
                let _ = writeln!(o, "\n- c={}: {}", s.concurrency, n);
            }
        }
        o.push('\n');
    };
    section(
        &mut o,
        "HTTP non-streaming",
        "`POST /v1/chat/completions`, small JSON answer.",
        Group::Http,
        false,
    );
    section(
        &mut o,
        "HTTP streaming (8 chunks, no delay)",
        "`stream: true`; the mock sends 8 SSE events and `[DONE]` at once. First chunk = time to the first `data:` event.",
        Group::HttpStream,
        true,
    );
    section(
        &mut o,
        "Paced streaming (64 clients, 32 chunks × 10 ms)",
        "The mock sends one event every 10 ms (first at once). The gateway must add no pacing delay: total stream time should match direct.",
        Group::Paced,
        true,
    );
    section(
        &mut o,
        "gRPC unary (gateway) vs HTTP direct",
        "There is no gRPC mock: `CreateChatCompletion` through the gateway is compared with the same work done as HTTP directly against the mock.",
        Group::GrpcUnary,
        false,
    );
    section(
        &mut o,
        "gRPC server streaming (gateway) vs HTTP SSE direct",
        "`StreamChatCompletion` through the gateway (first chunk = first message) against SSE directly from the mock.",
        Group::GrpcStream,
        true,
    );
    section(
        &mut o,
        "gRPC paced streaming vs HTTP SSE direct",
        "64 clients, 32 chunks × 10 ms.",
        Group::GrpcPaced,
        true,
    );
    section(
        &mut o,
        "Fault mix (keys: one 429, one 500, two healthy)",
        "A second gateway whose pool has one key the mock answers 429 (`Retry-After: 1`), one it answers 500, and two healthy ones. Direct = a healthy key straight to the mock. \"upstream calls/req\" shows how many upstream attempts each client request cost.",
        Group::Fault,
        false,
    );
    let faults: Vec<&Scenario> = rows(Group::Fault);
    for s in faults {
        if let Some(g) = &s.gateway {
            if let Some(u) = g.upstream_calls_per_req {
                let extra = (u - 1.0) * g.attempted as f64;
                let _ = writeln!(
                    o,
                    "- c={}: {:.4} upstream calls per client request through the gateway ({} client requests, warm-up included, cost about {:.0} extra upstream calls: the retries); client-visible errors: {}.",
                    s.concurrency,
                    u,
                    g.attempted,
                    extra.max(0.0),
                    errs(g)
                );
            }
        }
    }
    o.push('\n');

    if let Some(rb) = &r.redis {
        redis_section(&mut o, rb);
    }
    if let Some(a) = &r.accounting {
        crate::accounting::section(&mut o, a);
    }

    let _ = writeln!(o, "## Server cost per request, each door and mode\n");
    o.push_str("CPU time (user + system, `/proc/PID/stat`) and write-family syscalls (`syscw`, `/proc/PID/io`) of the serving process over each phase's recorded part, per request (per stream for streams): the mock for direct, the gateway alone for gateway. gRPC has no direct side of its own (its direct column is the HTTP direct run of the same work).\n\n");
    o.push_str("| scenario | c | CPU µs/req direct | CPU µs/req gateway | write syscalls/req direct | write syscalls/req gateway |\n|---|---:|---:|---:|---:|---:|\n");
    for g in [
        Group::Http,
        Group::HttpStream,
        Group::Paced,
        Group::GrpcUnary,
        Group::GrpcStream,
        Group::GrpcPaced,
    ] {
        for s in rows(g) {
            let f = |side: Option<&Side>, v: fn(&Side) -> Option<f64>, digits: usize| {
                side.and_then(v)
                    .map_or("–".into(), |x| format!("{x:.digits$}"))
            };
            let d = s.direct.as_ref();
            let gw = s.gateway.as_ref();
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} |",
                s.title,
                s.concurrency,
                f(d, |s| s.server_cpu_us_per_req, 0),
                f(gw, |s| s.server_cpu_us_per_req, 0),
                f(d, |s| s.server_writes_per_req, 1),
                f(gw, |s| s.server_writes_per_req, 1),
            );
        }
    }
    o.push('\n');

    let _ = writeln!(o, "## Memory (gateway RSS, VmRSS)\n");
    let mem = &r.memory;
    o.push_str("| when | gateway RSS | detail |\n|---|---:|---|\n");
    let _ = writeln!(o, "| idle, 1 s after start | {} | |", kib_mb(mem.idle_kib));
    let _ = writeln!(
        o,
        "| after the load above | {} | |",
        kib_mb(mem.after_load_kib)
    );
    for h in &mem.streams {
        let _ = writeln!(
            o,
            "| {} open streams (paced, held) | {} | {}{} of {} open ({} failed) in {:.1} s over {}; gateway fds {}; mock RSS {}; gateway RSS after closing them {}{} |",
            h.target,
            kib_mb(h.gateway_rss_kib),
            match (h.gateway_rss_kib, mem.idle_kib) {
                (Some(r), Some(i)) if h.opened > 0 && r > i => format!(
                    "≈ {:.1} KiB per open stream above idle; ",
                    (r - i) as f64 / h.opened as f64
                ),
                _ => String::new(),
            },
            h.opened,
            h.target,
            h.failed,
            h.open_s,
            h.transport,
            h.gateway_fds.map_or("–".into(), |f| f.to_string()),
            kib_mb(h.mock_rss_kib),
            kib_mb(h.gateway_rss_after_release_kib),
            h.note.as_ref().map_or(String::new(), |n| format!("; {n}"))
        );
    }
    if let (Some(kib), Some(wait)) = (mem.after_streams_wait_kib, mem.after_streams_wait_s) {
        let _ = writeln!(
            o,
            "| {wait:.0} s after the last open streams closed | {} | {} |",
            kib_mb(Some(kib)),
            mem.idle_kib.map_or(String::new(), |i| format!(
                "{:.1} × idle{}",
                kib as f64 / (i as f64).max(1.0),
                if wait < 60.0 {
                    "; --quick waits 15 s, a full run 60 s (--close-wait sets it)"
                } else {
                    ""
                }
            ))
        );
    }
    o.push('\n');

    let _ = writeln!(o, "## Startup (spawn → first 200 on /healthz)\n");
    let st = &r.startup;
    if let Some(med) = st.median_ms {
        let runs: Vec<String> = st.runs_ms.iter().map(|v| format!("{v:.1}")).collect();
        let _ = writeln!(
            o,
            "median **{med:.1} ms**, min {:.1} ms, max {:.1} ms over {} starts ({} ms).\n",
            st.min_ms.unwrap_or(0.0),
            st.max_ms.unwrap_or(0.0),
            st.runs_ms.len(),
            runs.join(", ")
        );
    } else {
        o.push_str("not measured\n\n");
    }

    if !r.notes.is_empty() {
        let _ = writeln!(o, "## Notes\n");
        for n in &r.notes {
            let _ = writeln!(o, "- {n}");
        }
        o.push('\n');
    }
    let _ = writeln!(
        o,
        "Chart: `latest.png` (latency percentiles, direct vs gateway). Raw numbers: `latest.json`."
    );
    o
}

/// The Redis-mode section: local vs Redis mode, and propagation between two replicas.
fn redis_section(o: &mut String, rb: &RedisBench) {
    let _ = writeln!(o, "## Redis mode (replicas sharing key state and limits)\n");
    let _ = writeln!(
        o,
        "Gateways started with `--redis` against a `redis-server`{} this run started on a free loopback port (`--save \"\" --appendonly no`), the same mock upstream and the same four keys. **local** = the main gateway (no Redis); **redis** = shared key state, no limits (key choice reads the local snapshot: no Redis round trip); **redis + rpm** = every key with a large `rpm=` that nothing reaches, so every request takes the one Redis round trip of the shared limit. The phases at one concurrency run back to back. \"vs local\" = this mode against the local row at the same concurrency.\n",
        rb.redis_version
            .as_ref()
            .map_or(String::new(), |v| format!(" ({v})"))
    );
    for n in &rb.notes {
        let _ = writeln!(o, "- {n}");
    }
    if !rb.notes.is_empty() {
        o.push('\n');
    }
    if !rb.phases.is_empty() {
        o.push_str("| mode | c | RPS | RPS vs local | p50 | p50 vs local | p90 | p99 | p99 vs local | max | errors | gateway CPU µs/req | other CPU % |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|\n");
        for p in &rb.phases {
            let s = &p.side;
            let local = rb
                .phase("local", p.concurrency)
                .filter(|_| p.mode != "local");
            let _ = writeln!(
                o,
                "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                p.mode,
                p.concurrency,
                s.rps,
                local.map_or("–".into(), |l| ratio_pct(l.rps, s.rps)),
                ms(s.latency.p50_ms),
                local.map_or("–".into(), |l| added(l.latency.p50_ms, s.latency.p50_ms)),
                ms(s.latency.p90_ms),
                ms(s.latency.p99_ms),
                local.map_or("–".into(), |l| added(l.latency.p99_ms, s.latency.p99_ms)),
                ms(s.latency.max_ms),
                errs(s),
                cpu(s),
                other(s)
            );
        }
        o.push('\n');
    }
    if let Some(p) = &rb.propagation {
        let _ = writeln!(
            o,
            "**Propagation.** Two replicas A and B on the same Redis; {} admin changes on A (`POST /admin/keys/key-1/disable`, then `…/enable`, alternately), each timed from sending it to A until B's `GET /admin/keys` (polled back to back) shows the new state; the next change waits for B. A disabled key is one B's key choice refuses.\n",
            p.changes
        );
        o.push_str(
            "| change | seen by B | p50 | p90 | p99 | max |\n|---|---:|---:|---:|---:|---:|\n",
        );
        for (name, s) in [
            ("disable on A → B refuses the key", &p.disable),
            ("enable on A → B serves it again", &p.enable),
        ] {
            let _ = writeln!(
                o,
                "| {name} | {} | {} | {} | {} | {} |",
                s.count,
                ms(s.p50_ms),
                ms(s.p90_ms),
                ms(s.p99_ms),
                ms(s.max_ms)
            );
        }
        o.push('\n');
        if p.timed_out > 0 {
            let _ = writeln!(
                o,
                "{} of {} changes were not seen by B within 2 s.\n",
                p.timed_out, p.changes
            );
        }
        if let Some(n) = p.histogram_count {
            let le = |v: Option<f64>| v.map_or("> 1000".into(), |x| format!("≤ {x}"));
            let _ = writeln!(
                o,
                "B's own `gateway_state_propagation_seconds` (publish on A → applied on B, millisecond timestamps, so sub-millisecond delays count as 0) over the same changes: {n} observations, p50 {} ms and p99 {} ms (bucket bounds), mean {} ms.\n",
                le(p.histogram_p50_le_ms),
                le(p.histogram_p99_le_ms),
                p.histogram_mean_ms
                    .map_or("–".into(), |m| format!("{m:.2}"))
            );
        }
    }
}

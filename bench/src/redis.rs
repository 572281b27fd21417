//! The Redis-mode scenario: replicas sharing key state and limits through a real
//! `redis-server` this run starts on a free loopback port.
//!
//! - local (the main gateway) against a gateway with `--redis` and no limits, back to back, at
//!   c=64 (RPS) and c=1 (p50);
//! - at c=1 also a gateway whose keys all carry a large `rpm=` (nothing is refused, but every
//!   request takes the shared limit's Redis round trip);
//! - propagation: two replicas A and B on the same Redis; admin disable / enable on A, timed
//!   until B's `/admin/keys` shows the change, and B's `gateway_state_propagation_seconds`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::load::{self, HttpTarget, Summary};
use crate::procs::{self, GatewayStart, Proc};
use crate::report::{Propagation, RedisBench, RedisPhase};
use crate::{chat_body, log_side, measured_side, Ctx, HEALTHY_KEYS};

const ADMIN_TOKEN: &str = "bench-admin-token";
/// Far above what one key can take here (about 10,000 requests a second at most through the
/// gateway), so nothing is refused and only the round trip is measured.
const LARGE_RPM: u32 = 100_000_000;

pub(crate) struct RedisEnv<'a> {
    pub bin: &'a Path,
    pub upstream: &'a str,
    pub logs: &'a Path,
    /// The local-mode gateway (no Redis) and its pid.
    pub local: (&'a HttpTarget, u32),
    pub quick: bool,
}

/// `redis-server --version`, or `None` when it is not on PATH.
fn redis_version() -> Option<String> {
    let o = std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .ok()?;
    if !o.status.success() {
        return None;
    }
    let s = String::from_utf8_lossy(&o.stdout);
    // "Redis server v=7.0.15 sha=… malloc=jemalloc-5.3.0 bits=64 build=…"
    let v = s
        .split_whitespace()
        .find_map(|w| w.strip_prefix("v="))
        .map_or_else(|| s.trim().to_string(), |v| format!("Redis {v}"));
    Some(v)
}

fn redis_ping(port: u16) -> bool {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    let mut got = 0;
    while got < 5 {
        match s.read(&mut buf[got..]) {
            Ok(0) | Err(_) => return false,
            Ok(n) => got += n,
        }
    }
    buf.starts_with(b"+PONG")
}

/// Starts `redis-server` on a free loopback port, without persistence, and waits for PONG.
async fn start_redis(log: &Path) -> Result<(Proc, u16), String> {
    let port = procs::free_port().map_err(|e| e.to_string())?;
    let p = port.to_string();
    let args = [
        "--port",
        &p,
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ];
    let mut proc = procs::spawn_logged("redis-server", &args, log)?;
    let t0 = Instant::now();
    loop {
        let ok = tokio::task::spawn_blocking(move || redis_ping(port))
            .await
            .unwrap_or(false);
        if ok {
            return Ok((proc, port));
        }
        if let Some(status) = proc.exited() {
            return Err(format!(
                "redis-server exited at start ({status}); see {}",
                log.display()
            ));
        }
        if t0.elapsed() > Duration::from_secs(5) {
            proc.stop().await;
            return Err("redis-server did not answer PING within 5 s".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One blocking HTTP/1.1 request with `Connection: close`: (status, body).
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let _ = s.set_nodelay(true);
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// The state of key `id` in a replica's `GET /admin/keys`.
fn key_state(addr: SocketAddr, id: &str) -> Option<String> {
    let (status, body) = request(addr, "GET", "/admin/keys", Some(ADMIN_TOKEN))?;
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["keys"]
        .as_array()?
        .iter()
        .find(|k| k["id"] == id)
        .and_then(|k| k["state"].as_str())
        .map(str::to_string)
}

/// A replica's `/metrics` text.
fn metrics(addr: SocketAddr) -> Option<String> {
    match request(addr, "GET", "/metrics", None)? {
        (200, body) => Some(body),
        _ => None,
    }
}

fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// `gateway_state_propagation_seconds`: cumulative buckets (bound in seconds, count), the
/// sum (seconds) and the count.
struct Hist {
    buckets: Vec<(f64, u64)>,
    sum: f64,
    count: u64,
}

fn propagation_hist(text: &str) -> Option<Hist> {
    const NAME: &str = "gateway_state_propagation_seconds";
    let mut buckets = Vec::new();
    for l in text.lines() {
        let Some(rest) = l
            .strip_prefix(NAME)
            .and_then(|r| r.strip_prefix("_bucket{le=\""))
        else {
            continue;
        };
        let Some((le, n)) = rest.split_once("\"} ") else {
            continue;
        };
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().ok()?
        };
        buckets.push((le, n.trim().parse().ok()?));
    }
    Some(Hist {
        buckets,
        sum: metric_value(text, &format!("{NAME}_sum"))?,
        count: metric_value(text, &format!("{NAME}_count"))? as u64,
    })
}

/// The bound (ms) of the first bucket holding quantile `q` of the observations between
/// `before` and `after`; `None` above the last finite bound.
fn hist_quantile_le_ms(before: &Hist, after: &Hist, q: f64) -> Option<f64> {
    let total = after.count.checked_sub(before.count)?;
    if total == 0 {
        return None;
    }
    let want = (q * total as f64).ceil().max(1.0) as u64;
    for (i, (le, n)) in after.buckets.iter().enumerate() {
        let b = before.buckets.get(i).map_or(0, |(_, n)| *n);
        if n.saturating_sub(b) >= want {
            return le.is_finite().then_some(le * 1e3);
        }
    }
    None
}

/// Waits until a replica says its store is up (Redis connected).
async fn wait_store_up(addr: SocketAddr) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(5) {
        let up = tokio::task::spawn_blocking(move || {
            metrics(addr).and_then(|m| metric_value(&m, "gateway_state_store_up"))
        })
        .await
        .ok()
        .flatten();
        if up == Some(1.0) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Alternate admin disable / enable of `key-1` on `a`; each timed until `b` shows it.
fn propagation(a: SocketAddr, b: SocketAddr, changes: usize) -> Propagation {
    let before = metrics(b).and_then(|m| propagation_hist(&m));
    let mut disable = load::new_hist();
    let mut enable = load::new_hist();
    let mut timed_out = 0;
    for i in 0..changes {
        let off = i % 2 == 0;
        let path = format!(
            "/admin/keys/key-1/{}",
            if off { "disable" } else { "enable" }
        );
        let t0 = Instant::now();
        if !matches!(request(a, "POST", &path, Some(ADMIN_TOKEN)), Some((200, _))) {
            timed_out += 1;
            continue;
        }
        let seen = loop {
            let state = key_state(b, "key-1");
            let done = match state.as_deref() {
                Some("disabled") => off,
                Some(_) => !off,
                None => false,
            };
            if done {
                break Some(t0.elapsed());
            }
            if t0.elapsed() > Duration::from_secs(2) {
                break None;
            }
        };
        match seen {
            Some(d) => {
                let ns = (d.as_nanos() as u64).max(1);
                let h = if off { &mut disable } else { &mut enable };
                let _ = h.record(ns);
            }
            None => timed_out += 1,
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    // Leave key-1 serving.
    let _ = request(a, "POST", "/admin/keys/key-1/enable", Some(ADMIN_TOKEN));
    let after = metrics(b).and_then(|m| propagation_hist(&m));
    let mut p = Propagation {
        changes,
        disable: Summary::of(&disable),
        enable: Summary::of(&enable),
        timed_out,
        ..Propagation::default()
    };
    if let (Some(b0), Some(b1)) = (before, after) {
        let n = b1.count.saturating_sub(b0.count);
        p.histogram_count = Some(n);
        p.histogram_p50_le_ms = hist_quantile_le_ms(&b0, &b1, 0.5);
        p.histogram_p99_le_ms = hist_quantile_le_ms(&b0, &b1, 0.99);
        if n > 0 {
            p.histogram_mean_ms = Some((b1.sum - b0.sum).max(0.0) * 1e3 / n as f64);
        }
    }
    p
}

async fn gateway(
    env: &RedisEnv<'_>,
    keys: &[&str],
    extra: Vec<String>,
    log: &str,
) -> Result<GatewayStart, String> {
    procs::spawn_gateway_with(env.bin, env.upstream, keys, &extra, &env.logs.join(log)).await
}

/// Runs the scenario; what it could not measure is said in the result's notes.
pub(crate) async fn scenario(ctx: &mut Ctx, env: RedisEnv<'_>) -> RedisBench {
    let mut out = RedisBench::default();
    let Some(version) = redis_version() else {
        out.notes
            .push("Skipped: `redis-server` is not on PATH (Debian package `redis-server`).".into());
        return out;
    };
    out.redis_version = Some(version);
    let (redis, port) = match start_redis(&env.logs.join("redis-server.log")).await {
        Ok(r) => r,
        Err(e) => {
            out.notes.push(format!("Skipped: {e}"));
            return out;
        }
    };
    eprintln!(
        "[redis] {} on 127.0.0.1:{port} (pid {})",
        out.redis_version.as_deref().unwrap_or("redis-server"),
        redis.pid
    );
    let url = format!("redis://127.0.0.1:{port}/0");
    let shared = |prefix: &str| -> Vec<String> {
        [
            "--redis",
            &url,
            "--redis-prefix",
            prefix,
            "--admin-token",
            ADMIN_TOKEN,
        ]
        .map(String::from)
        .to_vec()
    };
    let keys_file = env.logs.join("redis-rpm-keys.txt");
    let lines: String = HEALTHY_KEYS
        .iter()
        .map(|k| format!("{k} rpm={LARGE_RPM}\n"))
        .collect();
    if let Err(e) = std::fs::write(&keys_file, lines) {
        out.notes
            .push(format!("Skipped: {}: {e}", keys_file.display()));
        redis.stop().await;
        return out;
    }
    let mut rpm_args = shared("bench-rpm");
    rpm_args.extend(["--keys-file".into(), keys_file.display().to_string()]);

    let plain = gateway(
        &env,
        &HEALTHY_KEYS,
        shared("bench-plain"),
        "gateway-redis-a.log",
    )
    .await;
    let rpm = gateway(&env, &[], rpm_args, "gateway-redis-rpm.log").await;
    let (plain, rpm) = match (plain, rpm) {
        (Ok(p), Ok(r)) => (p, r),
        (p, r) => {
            for e in [p.err(), r.err()].into_iter().flatten() {
                out.notes
                    .push(format!("A Redis-mode gateway did not start: {e}"));
            }
            redis.stop().await;
            return out;
        }
    };
    for g in [&plain, &rpm] {
        if !wait_store_up(g.addr).await {
            out.notes.push(format!(
                "The gateway on {} did not report `gateway_state_store_up 1` within 5 s.",
                g.addr
            ));
        }
    }

    let target = |g: &GatewayStart| HttpTarget {
        addr: g.addr,
        path: "/v1/chat/completions".into(),
        bearer: None,
    };
    let (local, local_pid) = env.local;
    let plain_t = target(&plain);
    let rpm_t = target(&rpm);
    let all = [
        local_pid,
        plain.proc.pid,
        rpm.proc.pid,
        ctx.mock.pid,
        redis.pid,
    ];
    // pids[0] serves; the others count as the benchmark's own CPU.
    let pids_for = |serving: u32| -> Vec<u32> {
        let mut v = vec![serving];
        v.extend(all.iter().copied().filter(|p| *p != serving));
        v
    };
    for c in [64usize, 1] {
        let spec = ctx.spec(c, false, chat_body(false, 0, 0), None);
        ctx.step += 1;
        let id = format!("redis c={c}");
        let mut runs: Vec<(&str, &HttpTarget, u32)> = vec![
            ("local", local, local_pid),
            ("redis", &plain_t, plain.proc.pid),
        ];
        if c == 1 {
            runs.push(("redis + rpm", &rpm_t, rpm.proc.pid));
        }
        for (mode, t, pid) in runs {
            let side = measured_side(
                spec.warmup,
                &pids_for(pid),
                &format!("HTTP → gateway ({mode}) → mock"),
                load::run(t, &spec),
            )
            .await;
            log_side(ctx.step, &id, mode, &side);
            out.phases.push(RedisPhase {
                mode: mode.into(),
                concurrency: c,
                side,
            });
        }
    }
    rpm.proc.stop().await;

    // Propagation: a second replica B next to `plain` (A), same Redis and prefix.
    match gateway(
        &env,
        &HEALTHY_KEYS,
        shared("bench-plain"),
        "gateway-redis-b.log",
    )
    .await
    {
        Ok(b) => {
            if !wait_store_up(b.addr).await {
                out.notes
                    .push("Replica B did not report `gateway_state_store_up 1` within 5 s.".into());
            }
            // Let B's first resync settle.
            tokio::time::sleep(Duration::from_millis(200)).await;
            // Disable and enable alternately: half of them are disables.
            let changes = if env.quick { 100 } else { 400 };
            let (a, baddr) = (plain.addr, b.addr);
            match tokio::task::spawn_blocking(move || propagation(a, baddr, changes)).await {
                Ok(p) => {
                    eprintln!(
                        "[redis] propagation over {} changes: disable → B refuses p50 {:.3} ms p99 {:.3} ms max {:.3} ms; enable p50 {:.3} ms; not seen {}",
                        p.changes,
                        p.disable.p50_ms,
                        p.disable.p99_ms,
                        p.disable.max_ms,
                        p.enable.p50_ms,
                        p.timed_out
                    );
                    out.propagation = Some(p);
                }
                Err(e) => out.notes.push(format!("Propagation run failed: {e}")),
            }
            b.proc.stop().await;
        }
        Err(e) => out
            .notes
            .push(format!("Replica B did not start, no propagation: {e}")),
    }
    plain.proc.stop().await;
    redis.stop().await;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_from_bucket_deltas() {
        let text = |a: u64, b: u64, inf: u64| {
            format!(
                "gateway_state_propagation_seconds_bucket{{le=\"0.001\"}} {a}\ngateway_state_propagation_seconds_bucket{{le=\"0.005\"}} {b}\ngateway_state_propagation_seconds_bucket{{le=\"+Inf\"}} {inf}\ngateway_state_propagation_seconds_sum 0.01\ngateway_state_propagation_seconds_count {inf}\n"
            )
        };
        let h0 = propagation_hist(&text(1, 1, 1)).unwrap();
        let h1 = propagation_hist(&text(91, 100, 101)).unwrap();
        assert_eq!(h1.count, 101);
        assert_eq!(hist_quantile_le_ms(&h0, &h1, 0.5), Some(1.0));
        assert_eq!(hist_quantile_le_ms(&h0, &h1, 0.99), Some(5.0));
        let h2 = propagation_hist(&text(91, 100, 120)).unwrap();
        assert_eq!(hist_quantile_le_ms(&h0, &h2, 0.99), None);
    }
}

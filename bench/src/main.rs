//! `megallm-bench`: runs the mock upstream and the gateway, measures every scenario direct and
//! through the gateway, and writes bench/results/latest.{md,json,png}.

mod chart;
#[cfg(has_grpc_proto)]
mod grpc;
mod load;
mod procs;
mod report;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;

use load::{HttpTarget, Spec, Summary, Transport};
use procs::Proc;
use report::{Group, Machine, Memory, Report, Scenario, Settings, Side, Startup, StreamsHold};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "megallm-bench",
    about = "Benchmark megallm-gateway against a direct call to a mock upstream, side by side"
)]
struct Args {
    /// About one minute instead of about five.
    #[arg(long)]
    quick: bool,
    /// The gateway binary [default: <repo>/target/release/megallm-gateway].
    #[arg(long)]
    gateway_bin: Option<PathBuf>,
    /// The mock upstream binary [default: mock-upstream next to this binary].
    #[arg(long)]
    mock_bin: Option<PathBuf>,
    /// Where results go [default: <repo>/bench/results].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Seconds recorded per phase (after warm-up).
    #[arg(long)]
    duration: Option<f64>,
    /// Seconds of warm-up per phase.
    #[arg(long)]
    warmup: Option<f64>,
    /// Requests recorded per phase at most.
    #[arg(long)]
    max_requests: Option<u64>,
    /// The largest number of concurrent open streams to hold (memory scenario).
    #[arg(long, default_value_t = 10_000)]
    max_streams: usize,
    /// Measure direct only (no gateway), e.g. to check the mock and the load generator.
    #[arg(long)]
    direct_only: bool,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn main() {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run(args)) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("megallm-bench: {e}");
            std::process::exit(1);
        }
    }
}

fn cmd_out(cmd: &str, args: &[&str]) -> Option<String> {
    let o = std::process::Command::new(cmd).args(args).output().ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

fn machine(nofile: u64) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_total_mib = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(0, |k| k / 1024);
    let nproc = std::thread::available_parallelism().map_or(1, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    Machine {
        nproc,
        cpu_model,
        mem_total_mib,
        kernel,
        nofile_limit: nofile,
        note: format!(
            "This machine has {nproc} cores, and the load generator, the gateway and the mock upstream all share them: nothing is pinned (no taskset, no CPU affinity), each process runs Tokio's default multi-threaded runtime. Under load the three compete for the same {nproc} cores, so gateway throughput is bounded by CPU it shares with its own client and upstream; a real deployment gives the gateway its own cores."
        ),
    }
}

fn chat_body(stream: bool, chunks: u32, delay_ms: u64) -> Bytes {
    let mut v = serde_json::json!({
        "model": "mock-model",
        "messages": [
            {"role": "system", "content": "You are a benchmark."},
            {"role": "user", "content": "Say hello to the benchmark in a few words."}
        ],
        "max_tokens": 16,
        "temperature": 0.2
    });
    if stream {
        v["stream"] = true.into();
        v["mock_chunks"] = chunks.into();
        v["mock_delay_ms"] = delay_ms.into();
    }
    Bytes::from(v.to_string())
}

struct Ctx {
    args: Args,
    out: PathBuf,
    logs: PathBuf,
    warmup: Duration,
    duration: Duration,
    paced_duration: Duration,
    max_requests: u64,
    mock: Proc,
    mock_addr: SocketAddr,
    step: usize,
}

impl Ctx {
    fn direct_target(&self, key: &str) -> HttpTarget {
        HttpTarget {
            addr: self.mock_addr,
            path: "/v1/chat/completions".into(),
            bearer: Some(key.into()),
        }
    }

    fn spec(&self, c: usize, stream: bool, body: Bytes, expect: Option<usize>) -> Spec {
        Spec {
            concurrency: c,
            warmup: self.warmup,
            duration: self.duration,
            max_requests: self.max_requests,
            body,
            stream,
            expect_events: expect,
        }
    }
}

fn side_from(path: &str, m: &load::Measured) -> Side {
    Side {
        path: path.into(),
        ok: m.ok,
        errors: m.errors,
        error_kinds: m.error_kinds.clone(),
        elapsed_s: m.elapsed.as_secs_f64(),
        rps: m.rps(),
        latency: Summary::of(&m.latency),
        ttfc: m.ttfc.as_ref().map(Summary::of),
        server_cpu_us_per_req: None,
        upstream_calls_per_req: None,
    }
}

/// Runs one HTTP measurement while sampling the serving process's CPU over the recorded part.
async fn measure_http(target: &HttpTarget, spec: &Spec, server_pid: u32, path: &str) -> Side {
    let warm = spec.warmup;
    let cpu0 = tokio::spawn(async move {
        tokio::time::sleep(warm).await;
        procs::cpu_time(server_pid)
    });
    let m = load::run(target, spec).await;
    let cpu1 = procs::cpu_time(server_pid);
    let mut side = side_from(path, &m);
    if let (Ok(Some(a)), Some(b)) = (cpu0.await, cpu1) {
        let total = m.ok + m.errors;
        if total > 0 && b >= a {
            side.server_cpu_us_per_req = Some((b - a).as_secs_f64() * 1e6 / total as f64);
        }
    }
    side
}

fn log_side(step: usize, id: &str, who: &str, s: &Side) {
    let ttfc = s
        .ttfc
        .as_ref()
        .map_or(String::new(), |t| format!(" first-chunk p50 {:.3} ms", t.p50_ms));
    eprintln!(
        "[{step:>2}] {id:<18} {who:<8} {:>9.0} req/s  p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms{ttfc}  errors {}",
        s.rps, s.latency.p50_ms, s.latency.p99_ms, s.latency.max_ms, s.errors
    );
}

#[allow(clippy::too_many_arguments)]
async fn pair(
    ctx: &mut Ctx,
    id: &str,
    group: Group,
    title: &str,
    spec: Spec,
    direct: &HttpTarget,
    gateway: Option<(&HttpTarget, u32)>,
) -> Scenario {
    ctx.step += 1;
    let d = measure_http(direct, &spec, ctx.mock.pid, "HTTP → mock").await;
    log_side(ctx.step, id, "direct", &d);
    let g = match gateway {
        Some((t, pid)) => {
            let g = measure_http(t, &spec, pid, "HTTP → gateway → mock").await;
            log_side(ctx.step, id, "gateway", &g);
            Some(g)
        }
        None => None,
    };
    Scenario {
        id: id.into(),
        group,
        title: title.into(),
        concurrency: spec.concurrency,
        direct: Some(d),
        gateway: g,
        note: None,
    }
}

fn mock_requests(addr: SocketAddr) -> Option<u64> {
    let s = procs::http_get(addr, "/stats")?;
    let v: serde_json::Value = serde_json::from_str(&s).ok()?;
    v["requests"].as_u64()
}

/// Holds `n` long paced streams open through the gateway and reads its RSS at the plateau.
async fn hold_streams(
    ctx: &Ctx,
    gw: &procs::GatewayStart,
    n: usize,
    nofile: u64,
) -> StreamsHold {
    let target = HttpTarget {
        addr: gw.addr,
        path: "/v1/chat/completions".into(),
        bearer: None,
    };
    // One chunk per second for up to an hour: the streams stay open until released.
    let body = chat_body(true, 3600, 1000);
    // HTTP/1.1 needs a connection per stream: the gateway then holds 2 fds per stream (client
    // side and upstream side). Above its open-files limit, use h2c (streams multiplexed on a
    // few connections, which the gateway serves on the same port).
    let h1_fits = (2 * n as u64 + 512) <= nofile;
    let mut transport = if h1_fits {
        Transport::H1
    } else {
        Transport::H2 { per_conn: 100 }
    };
    let first = hold_once(ctx, gw, &target, body.clone(), n, transport).await;
    if first.opened >= n / 2 || matches!(transport, Transport::H1) {
        return first;
    }
    // A gateway that does not serve h2c: fall back to HTTP/1.1 within the fd budget.
    let cap = (nofile.saturating_sub(512) / 2) as usize;
    let n2 = n.min(cap);
    let why = first.note.clone().unwrap_or_default();
    transport = Transport::H1;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut h = hold_once(ctx, gw, &target, body, n2, transport).await;
    h.target = n;
    h.note = Some(format!(
        "h2c failed ({why}); fell back to HTTP/1.1, capped at {n2} streams by the open-files limit {nofile} (2 fds per stream in the gateway){}",
        h.note.as_ref().map_or(String::new(), |x| format!("; {x}"))
    ));
    h
}

async fn hold_once(
    ctx: &Ctx,
    gw: &procs::GatewayStart,
    target: &HttpTarget,
    body: Bytes,
    n: usize,
    transport: Transport,
) -> StreamsHold {
    let t0 = Instant::now();
    let holder = load::Holder::start(target, body, n, transport, 256).await;
    let timeout = Duration::from_secs(if ctx.args.quick { 30 } else { 60 });
    let mut last = (0usize, Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let done = holder.opened.load(Ordering::Relaxed)
            + holder.failed.load(Ordering::Relaxed)
            + holder.ended_early.load(Ordering::Relaxed);
        if done >= n || t0.elapsed() > timeout {
            break;
        }
        if done != last.0 {
            last = (done, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(10) {
            break;
        }
    }
    let open_s = t0.elapsed().as_secs_f64();
    let first_error = holder.first_error.lock().expect("lock").clone();
    eprintln!(
        "[streams] {} of {n} open in {open_s:.1} s over {transport:?} ({} failed{})",
        holder.opened.load(Ordering::Relaxed),
        holder.failed.load(Ordering::Relaxed),
        first_error.as_ref().map_or(String::new(), |e| format!(", first error: {e}"))
    );
    measure_plateau(ctx, gw, holder, n, transport, open_s, first_error).await
}

async fn measure_plateau(
    ctx: &Ctx,
    gw: &procs::GatewayStart,
    holder: load::Holder,
    n: usize,
    transport: Transport,
    open_s: f64,
    first_error: Option<String>,
) -> StreamsHold {
    // Let the open streams settle (each gets one event per second), then sample.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut rss = None;
    for _ in 0..5 {
        let r = procs::rss_kib(gw.proc.pid);
        rss = rss.max(r);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let fds = procs::fd_count(gw.proc.pid);
    let mock_rss = procs::rss_kib(ctx.mock.pid);
    let opened = holder.opened.load(Ordering::Relaxed);
    let failed = holder.failed.load(Ordering::Relaxed);
    holder.release().await;
    tokio::time::sleep(Duration::from_secs(if ctx.args.quick { 1 } else { 2 })).await;
    let after = procs::rss_kib(gw.proc.pid);
    let transport = match transport {
        Transport::H1 => "HTTP/1.1 (one connection per stream)".to_string(),
        Transport::H2 { per_conn } => format!("h2c ({per_conn} streams per connection)"),
    };
    let note = first_error
        .filter(|_| failed > 0 || opened < n)
        .map(|e| format!("first failure: {e}"));
    StreamsHold {
        target: n,
        opened,
        failed,
        transport,
        open_s,
        gateway_rss_kib: rss,
        gateway_fds: fds,
        gateway_rss_after_release_kib: after,
        mock_rss_kib: mock_rss,
        note,
    }
}

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

async fn run(args: Args) -> Result<(), String> {
    let wall = Instant::now();
    let nofile = procs::raise_nofile();
    let root = repo_root();
    let out = args.out.clone().unwrap_or_else(|| root.join("bench/results"));
    let logs = out.join("logs");
    std::fs::create_dir_all(&logs).map_err(|e| format!("{}: {e}", logs.display()))?;
    let gateway_bin = args
        .gateway_bin
        .clone()
        .unwrap_or_else(|| root.join("target/release/megallm-gateway"));
    let mock_bin = args.mock_bin.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("mock-upstream")))
            .unwrap_or_else(|| PathBuf::from("mock-upstream"))
    });
    let quick = args.quick;
    let warmup = Duration::from_secs_f64(args.warmup.unwrap_or(if quick { 0.3 } else { 1.0 }));
    let duration = Duration::from_secs_f64(args.duration.unwrap_or(if quick { 1.0 } else { 5.0 }));
    let paced_duration = Duration::from_secs_f64(if quick {
        duration.as_secs_f64().max(1.5)
    } else {
        duration.as_secs_f64().max(5.0)
    });
    let max_requests = args
        .max_requests
        .unwrap_or(if quick { 50_000 } else { 300_000 });

    let machine = machine(nofile);
    eprintln!(
        "megallm-bench: {} mode; {} cores ({}), shared by load generator, gateway and mock; nothing pinned; open-files limit {nofile}",
        if quick { "quick" } else { "full" },
        machine.nproc,
        machine.cpu_model
    );

    let (mock, mock_addr) = procs::spawn_mock(&mock_bin, &logs.join("mock-upstream.log")).await?;
    eprintln!("mock upstream on {mock_addr} (pid {})", mock.pid);
    let upstream = format!("http://{mock_addr}/v1");
    let mut notes: Vec<String> = Vec::new();

    let mut ctx = Ctx {
        args: args.clone(),
        out: out.clone(),
        logs: logs.clone(),
        warmup,
        duration,
        paced_duration,
        max_requests,
        mock,
        mock_addr,
        step: 0,
    };

    let healthy_keys = ["bench-key-1", "bench-key-2", "bench-key-3", "bench-key-4"];
    let mut gw = None;
    if args.direct_only {
        notes.push("Run with --direct-only: the gateway was not measured.".into());
    } else if !gateway_bin.exists() {
        notes.push(format!(
            "Gateway binary {} not found: only direct figures were measured. Build it with `cargo build --release` at the repository root.",
            gateway_bin.display()
        ));
    } else {
        match procs::spawn_gateway(
            &gateway_bin,
            &upstream,
            &healthy_keys,
            &logs.join("gateway.log"),
        )
        .await
        {
            Ok(g) => {
                eprintln!(
                    "gateway on {} (pid {}), ready in {:.1} ms",
                    g.addr,
                    g.proc.pid,
                    g.startup.as_secs_f64() * 1e3
                );
                gw = Some(g);
            }
            Err(e) => notes.push(format!("The gateway did not start: {e}")),
        }
    }

    let mut memory = Memory::default();
    let mut startup = Startup::default();
    if let Some(g) = &gw {
        startup.runs_ms.push(g.startup.as_secs_f64() * 1e3);
        tokio::time::sleep(Duration::from_secs(1)).await;
        memory.idle_kib = procs::rss_kib(g.proc.pid);
        eprintln!(
            "gateway idle RSS {:.1} MB",
            memory.idle_kib.unwrap_or(0) as f64 / 1024.0
        );
    }
    let gw_target = gw.as_ref().map(|g| HttpTarget {
        addr: g.addr,
        path: "/v1/chat/completions".into(),
        bearer: None,
    });
    let gw_pair = |t: &Option<HttpTarget>| -> Option<(HttpTarget, u32)> {
        Some((t.clone()?, gw.as_ref()?.proc.pid))
    };
    let gwp = gw_pair(&gw_target);
    let gwp_ref = gwp.as_ref().map(|(t, p)| (t, *p));

    let direct = ctx.direct_target("bench-key-1");
    let mut scenarios = Vec::new();

    // HTTP non-streaming.
    for c in [1usize, 16, 64, 256] {
        let spec = ctx.spec(c, false, chat_body(false, 0, 0), None);
        let s = pair(
            &mut ctx,
            &format!("http c={c}"),
            Group::Http,
            &format!("HTTP non-stream c={c}"),
            spec,
            &direct,
            gwp_ref,
        )
        .await;
        scenarios.push(s);
    }
    // HTTP streaming, 8 chunks, no delay.
    for c in [1usize, 64] {
        let spec = ctx.spec(c, true, chat_body(true, 8, 0), Some(9));
        let s = pair(
            &mut ctx,
            &format!("stream c={c}"),
            Group::HttpStream,
            &format!("HTTP stream 8 chunks c={c}"),
            spec,
            &direct,
            gwp_ref,
        )
        .await;
        scenarios.push(s);
    }
    // Paced streaming: 64 clients, 32 chunks × 10 ms.
    {
        let mut spec = ctx.spec(64, true, chat_body(true, 32, 10), Some(33));
        spec.duration = ctx.paced_duration;
        spec.warmup = ctx.warmup.max(Duration::from_millis(400));
        let s = pair(
            &mut ctx,
            "paced c=64",
            Group::Paced,
            "Paced stream 32 × 10 ms, c=64",
            spec,
            &direct,
            gwp_ref,
        )
        .await;
        scenarios.push(s);
    }

    // gRPC through the gateway, compared with HTTP direct.
    grpc_scenarios(&mut ctx, gw.as_ref(), &mut scenarios, &mut notes).await;

    if let Some(g) = &gw {
        tokio::time::sleep(Duration::from_secs(1)).await;
        memory.after_load_kib = procs::rss_kib(g.proc.pid);
        eprintln!(
            "gateway RSS after load {:.1} MB",
            memory.after_load_kib.unwrap_or(0) as f64 / 1024.0
        );
    }

    // Fault mix: a second gateway with one 429 key, one 500 key and two healthy ones.
    if gw.is_some() {
        let fault_keys = ["bench-429", "bench-500", "bench-ok-1", "bench-ok-2"];
        match procs::spawn_gateway(
            &gateway_bin,
            &upstream,
            &fault_keys,
            &logs.join("gateway-faults.log"),
        )
        .await
        {
            Ok(fg) => {
                let ft = HttpTarget {
                    addr: fg.addr,
                    path: "/v1/chat/completions".into(),
                    bearer: None,
                };
                for c in [1usize, 16] {
                    let spec = ctx.spec(c, false, chat_body(false, 0, 0), None);
                    ctx.step += 1;
                    let id = format!("faults c={c}");
                    let d = measure_http(&direct, &spec, ctx.mock.pid, "HTTP → mock (healthy key)")
                        .await;
                    log_side(ctx.step, &id, "direct", &d);
                    let before = mock_requests(ctx.mock_addr);
                    let mut g = measure_http(&ft, &spec, fg.proc.pid, "HTTP → gateway → mock").await;
                    let after = mock_requests(ctx.mock_addr);
                    if let (Some(a), Some(b)) = (before, after) {
                        // Includes warm-up requests on both sides of the ratio's numerator;
                        // counted over every client request of the phase.
                        let client = g.ok + g.errors;
                        if client > 0 {
                            let warm_share = spec.warmup.as_secs_f64()
                                / (spec.warmup + Duration::from_secs_f64(g.elapsed_s))
                                    .as_secs_f64();
                            let est_client = client as f64 / (1.0 - warm_share).max(0.05);
                            g.upstream_calls_per_req = Some((b - a) as f64 / est_client);
                        }
                    }
                    log_side(ctx.step, &id, "gateway", &g);
                    scenarios.push(Scenario {
                        id,
                        group: Group::Fault,
                        title: format!("Fault mix c={c}"),
                        concurrency: c,
                        direct: Some(d),
                        gateway: Some(g),
                        note: None,
                    });
                }
                fg.proc.stop().await;
            }
            Err(e) => notes.push(format!("Fault-mix gateway did not start: {e}")),
        }
    }

    // Open streams held at once.
    if let Some(g) = &gw {
        let mut levels = vec![1_000usize, 10_000];
        levels.retain(|&l| l <= args.max_streams);
        if args.max_streams < 10_000 && !levels.contains(&args.max_streams) {
            levels.push(args.max_streams);
        }
        for n in levels {
            let h = hold_streams(&ctx, g, n, nofile).await;
            eprintln!(
                "[streams] {} open: gateway RSS {:.1} MB, fds {:?}, after release {:.1} MB",
                h.opened,
                h.gateway_rss_kib.unwrap_or(0) as f64 / 1024.0,
                h.gateway_fds,
                h.gateway_rss_after_release_kib.unwrap_or(0) as f64 / 1024.0
            );
            memory.streams.push(h);
            // Let sockets in TIME_WAIT and the mock's timers drain.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    if let Some(g) = gw.take() {
        g.proc.stop().await;
    }

    // Startup: fresh gateways, spawn → first 200 on /healthz.
    if !startup.runs_ms.is_empty() {
        let runs = if quick { 3 } else { 7 };
        for i in 0..runs {
            match procs::spawn_gateway(
                &gateway_bin,
                &upstream,
                &healthy_keys,
                &logs.join("gateway-startup.log"),
            )
            .await
            {
                Ok(g) => {
                    startup.runs_ms.push(g.startup.as_secs_f64() * 1e3);
                    g.proc.stop().await;
                }
                Err(e) => {
                    notes.push(format!("startup run {i} failed: {e}"));
                    break;
                }
            }
        }
        startup.median_ms = median(&startup.runs_ms);
        startup.min_ms = startup.runs_ms.iter().copied().reduce(f64::min);
        startup.max_ms = startup.runs_ms.iter().copied().reduce(f64::max);
        eprintln!(
            "startup median {:.1} ms over {} runs",
            startup.median_ms.unwrap_or(0.0),
            startup.runs_ms.len()
        );
    }

    let Ctx { mock, logs, .. } = ctx;
    mock.stop().await;

    let generated_at =
        cmd_out("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]).unwrap_or_else(|| "unknown".into());
    let stamp = cmd_out("date", &["-u", "+%Y%m%d-%H%M%S"]).unwrap_or_else(|| "run".into());
    let git_commit = cmd_out(
        "git",
        &["-C", &root.to_string_lossy(), "rev-parse", "--short", "HEAD"],
    )
    .map(|c| {
        let dirty = cmd_out(
            "git",
            &["-C", &root.to_string_lossy(), "status", "--porcelain", "--", "src"],
        )
        .is_some_and(|s| !s.is_empty());
        if dirty {
            format!("{c}+dirty")
        } else {
            c
        }
    })
    .unwrap_or_else(|| "uncommitted".into());

    let mut report = Report {
        generated_at,
        git_commit,
        gateway_bin: gateway_bin.display().to_string(),
        machine,
        settings: Settings {
            mode: if quick { "quick" } else { "full" }.into(),
            warmup_s: warmup.as_secs_f64(),
            duration_s: duration.as_secs_f64(),
            max_requests,
            paced_duration_s: paced_duration.as_secs_f64(),
            max_streams: args.max_streams,
        },
        scenarios,
        memory,
        startup,
        targets: Vec::new(),
        notes,
        wall_time_s: 0.0,
    };
    report.targets = report::targets(&report);
    report.wall_time_s = wall.elapsed().as_secs_f64();

    let md = report::markdown(&report);
    let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    let write = |name: &str, data: &[u8]| -> Result<(), String> {
        let p = out.join(name);
        std::fs::write(&p, data).map_err(|e| format!("{}: {e}", p.display()))
    };
    write("latest.md", md.as_bytes())?;
    write("latest.json", json.as_bytes())?;
    let png = out.join("latest.png");
    if let Err(e) = chart::draw(&report, &png) {
        eprintln!("chart: {e}");
    }
    let history = out.join("history");
    std::fs::create_dir_all(&history).map_err(|e| e.to_string())?;
    let _ = std::fs::copy(out.join("latest.md"), history.join(format!("{stamp}.md")));
    let _ = std::fs::copy(out.join("latest.json"), history.join(format!("{stamp}.json")));
    let _ = std::fs::copy(&png, history.join(format!("{stamp}.png")));
    let _ = logs;

    println!("{md}");
    eprintln!(
        "wrote {}/latest.{{md,json,png}} (and history/{stamp}.*) in {:.0} s",
        out.display(),
        report.wall_time_s
    );
    Ok(())
}

#[cfg(has_grpc_proto)]
async fn grpc_scenarios(
    ctx: &mut Ctx,
    gw: Option<&procs::GatewayStart>,
    scenarios: &mut Vec<Scenario>,
    notes: &mut Vec<String>,
) {
    let Some(g) = gw else { return };
    grpc::scenarios(ctx, g, scenarios, notes).await;
}

#[cfg(not(has_grpc_proto))]
async fn grpc_scenarios(
    _ctx: &mut Ctx,
    gw: Option<&procs::GatewayStart>,
    _scenarios: &mut Vec<Scenario>,
    notes: &mut Vec<String>,
) {
    if gw.is_some() {
        notes.push(
            "gRPC scenarios skipped: the benchmark was built without proto/megallm/v1/chat.proto."
                .into(),
        );
    }
}

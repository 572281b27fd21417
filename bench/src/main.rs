//! `megallm-bench`: runs the mock upstream and the gateway, measures every scenario direct and
//! through the gateway, and writes bench/results/latest.{md,json,png}.

mod accounting;
mod chart;
#[cfg(has_grpc_proto)]
mod grpc;
mod load;
mod procs;
mod redis;
mod report;
mod streams;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;

use load::{HttpTarget, Spec, Summary};
use procs::Proc;
use report::{Group, Machine, Memory, Report, Scenario, Settings, Side, Startup};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "megallm-bench",
    about = "Benchmark megallm-gateway against a direct call to a mock upstream, side by side"
)]
struct Args {
    /// Shorter phases: about one minute of measuring instead of about three.
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
    /// Seconds to wait after the open-streams phase before sampling the RSS that came back
    /// [default: 60; 15 with --quick]. The figure is the RSS 60 s after.
    #[arg(long)]
    close_wait: Option<u64>,
    /// Measure only the gateway's memory (idle, open streams, after they close): no throughput
    /// phase, e.g. to iterate on memory quickly
    #[arg(long)]
    memory_only: bool,
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
    // On Ctrl-C or SIGTERM the run is dropped, which kills the mock and the gateways.
    let result = rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| e.to_string())?;
        tokio::select! {
            r = run(args) => r,
            _ = tokio::signal::ctrl_c() => Err("interrupted".to_string()),
            _ = term.recv() => Err("terminated".to_string()),
        }
    });
    match result {
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

/// The main gateway's pool: keys the mock always serves.
const HEALTHY_KEYS: [&str; 4] = ["bench-key-1", "bench-key-2", "bench-key-3", "bench-key-4"];

/// What every phase needs: the phase timing and the mock.
pub(crate) struct Ctx {
    pub(crate) warmup: Duration,
    pub(crate) duration: Duration,
    pub(crate) paced_duration: Duration,
    pub(crate) max_requests: u64,
    pub(crate) mock: Proc,
    pub(crate) mock_addr: SocketAddr,
    pub(crate) step: usize,
}

impl Ctx {
    fn direct_target(&self, key: &str) -> HttpTarget {
        HttpTarget {
            addr: self.mock_addr,
            path: "/v1/chat/completions".into(),
            bearer: Some(key.into()),
        }
    }

    pub(crate) fn spec(&self, c: usize, stream: bool, body: Bytes, expect: Option<usize>) -> Spec {
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
        attempted: m.attempted,
        ok: m.ok,
        errors: m.errors,
        error_kinds: m.error_kinds.clone(),
        elapsed_s: m.elapsed.as_secs_f64(),
        rps: m.rps(),
        latency: Summary::of(&m.latency),
        ttfc: m.ttfc.as_ref().map(Summary::of),
        server_cpu_us_per_req: None,
        server_writes_per_req: None,
        other_cpu_pct: None,
        upstream_calls_per_req: None,
    }
}

/// Runs one phase and reads CPU over its recorded part (after the warm-up): the serving
/// process's CPU per request (`pids[0]`), and how busy other processes kept the machine.
pub(crate) async fn measured_side<F>(warmup: Duration, pids: &[u32], path: &str, phase: F) -> Side
where
    F: std::future::Future<Output = load::Measured>,
{
    let p = pids.to_vec();
    let snap0 = tokio::spawn(async move {
        tokio::time::sleep(warmup).await;
        procs::CpuSnap::take(&p)
    });
    let m = phase.await;
    let snap1 = procs::CpuSnap::take(pids);
    let mut side = side_from(path, &m);
    if let Ok(s0) = snap0.await {
        let total = m.ok + m.errors;
        if let Some(d) = s0.server_delta(&snap1) {
            if total > 0 {
                side.server_cpu_us_per_req = Some(d.as_secs_f64() * 1e6 / total as f64);
            }
        }
        if let Some(w) = s0.server_writes(&snap1) {
            if total > 0 {
                side.server_writes_per_req = Some(w as f64 / total as f64);
            }
        }
        let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
        side.other_cpu_pct = s0.foreign_pct(&snap1, ncpu);
    }
    side
}

/// One HTTP phase; `pids[0]` serves the requests.
async fn measure_http(target: &HttpTarget, spec: &Spec, pids: &[u32], path: &str) -> Side {
    measured_side(spec.warmup, pids, path, load::run(target, spec)).await
}

pub(crate) fn log_side(step: usize, id: &str, who: &str, s: &Side) {
    let ttfc = s.ttfc.as_ref().map_or(String::new(), |t| {
        format!(" first-chunk p50 {:.3} ms", t.p50_ms)
    });
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
    let gw_pid = gateway.map(|(_, p)| p);
    let pids: Vec<u32> = [Some(ctx.mock.pid), gw_pid].into_iter().flatten().collect();
    let d = measure_http(direct, &spec, &pids, "HTTP → mock").await;
    log_side(ctx.step, id, "direct", &d);
    let g = match gateway {
        Some((t, pid)) => {
            let g = measure_http(t, &spec, &[pid, ctx.mock.pid], "HTTP → gateway → mock").await;
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

/// Chat calls the mock has answered so far, faults included.
fn mock_calls(addr: SocketAddr) -> Option<u64> {
    let s = procs::http_get(addr, "/stats")?;
    let v: serde_json::Value = serde_json::from_str(&s).ok()?;
    [
        "chat_ok",
        "chat_stream",
        "fault_429",
        "fault_500",
        "fault_401",
    ]
    .iter()
    .map(|k| v[*k].as_u64())
    .sum()
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
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| root.join("bench/results"));
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
    let close_wait = args.close_wait;
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
        warmup,
        duration,
        paced_duration,
        max_requests,
        mock,
        mock_addr,
        step: 0,
    };

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
            &HEALTHY_KEYS,
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
            "gateway idle RSS {:.1} MiB",
            memory.idle_kib.unwrap_or(0) as f64 / 1024.0
        );
    }
    let gw_target = gw.as_ref().map(|g| HttpTarget {
        addr: g.addr,
        path: "/v1/chat/completions".into(),
        bearer: None,
    });
    let gwp_ref = gw_target.as_ref().zip(gw.as_ref().map(|g| g.proc.pid));

    let direct = ctx.direct_target("bench-key-1");
    let mut scenarios = Vec::new();

    let throughput = !args.memory_only;
    // HTTP non-streaming.
    for c in [1usize, 16, 64, 256].into_iter().filter(|_| throughput) {
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
    for c in [1usize, 64].into_iter().filter(|_| throughput) {
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
    if throughput {
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
    if throughput {
        grpc_scenarios(&mut ctx, gw.as_ref(), &mut scenarios, &mut notes).await;
    }

    if let Some(g) = &gw {
        tokio::time::sleep(Duration::from_secs(1)).await;
        memory.after_load_kib = procs::rss_kib(g.proc.pid);
        eprintln!(
            "gateway RSS after load {:.1} MiB",
            memory.after_load_kib.unwrap_or(0) as f64 / 1024.0
        );
    }

    // Fault mix: a second gateway with one 429 key, one 500 key and two healthy ones.
    if gw.is_some() && throughput {
        let log = logs.join("gateway-faults.log");
        match fault_mix(&mut ctx, &gateway_bin, &upstream, &log, &direct).await {
            Ok(mut v) => scenarios.append(&mut v),
            Err(e) => notes.push(format!("Fault-mix gateway did not start: {e}")),
        }
    }

    // Redis mode: replicas sharing key state through a redis-server this run starts.
    let mut redis_bench = None;
    if let Some((local, local_pid)) = gwp_ref.filter(|_| throughput) {
        let env = redis::RedisEnv {
            bin: &gateway_bin,
            upstream: &upstream,
            logs: &logs,
            local: (local, local_pid),
            quick,
        };
        let rb = redis::scenario(&mut ctx, env).await;
        for n in &rb.notes {
            eprintln!("[redis] {n}");
        }
        redis_bench = Some(rb);
    }

    // Accounting: client token limits and the usage log, on against off.
    let mut accounting_bench = None;
    if let Some((off, off_pid)) = gwp_ref.filter(|_| throughput) {
        let env = accounting::AccountingEnv {
            bin: &gateway_bin,
            upstream: &upstream,
            logs: &logs,
            off: (off, off_pid),
        };
        let a = accounting::scenario(&mut ctx, env).await;
        for n in &a.notes {
            eprintln!("[accounting] {n}");
        }
        accounting_bench = Some(a);
    }

    // Open streams held at once.
    if let Some(g) = &gw {
        let mut levels = vec![1_000usize, 10_000];
        levels.retain(|&l| l <= args.max_streams);
        if (1..10_000).contains(&args.max_streams) && !levels.contains(&args.max_streams) {
            levels.push(args.max_streams);
        }
        let env = streams::HoldEnv {
            quick,
            mock_pid: ctx.mock.pid,
            gateway_pid: g.proc.pid,
            gateway: HttpTarget {
                addr: g.addr,
                path: "/v1/chat/completions".into(),
                bearer: None,
            },
            nofile,
        };
        for n in levels {
            let h = streams::hold_streams(&env, n).await;
            eprintln!(
                "[streams] {} open: gateway RSS {:.1} MiB, fds {:?}, after release {:.1} MiB",
                h.opened,
                h.gateway_rss_kib.unwrap_or(0) as f64 / 1024.0,
                h.gateway_fds,
                h.gateway_rss_after_release_kib.unwrap_or(0) as f64 / 1024.0
            );
            memory.streams.push(h);
            // Let sockets in TIME_WAIT and the mock's timers drain.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        // Memory that comes back: the RSS a while after the last streams closed (60 s; 15 s
        // in --quick, to keep it short, unless --close-wait says otherwise).
        if !memory.streams.is_empty() {
            let wait = Duration::from_secs(close_wait.unwrap_or(if quick { 15 } else { 60 }));
            eprintln!(
                "[streams] waiting {} s for memory to come back",
                wait.as_secs()
            );
            tokio::time::sleep(wait.saturating_sub(Duration::from_secs(1))).await;
            memory.after_streams_wait_s = Some(wait.as_secs_f64());
            memory.after_streams_wait_kib = procs::rss_kib(g.proc.pid);
            eprintln!(
                "[streams] gateway RSS {} s after closing: {:.1} MiB",
                wait.as_secs(),
                memory.after_streams_wait_kib.unwrap_or(0) as f64 / 1024.0
            );
        }
    }

    if let Some(g) = gw.take() {
        g.proc.stop().await;
    }

    // Startup: fresh gateways, spawn → first 200 on /healthz.
    if !startup.runs_ms.is_empty() {
        let log = logs.join("gateway-startup.log");
        let runs = if quick { 3 } else { 7 };
        if let Err(e) = startup_runs(&mut startup, runs, &gateway_bin, &upstream, &log).await {
            notes.push(e);
        }
    }

    let Ctx { mock, .. } = ctx;
    mock.stop().await;

    let generated_at =
        cmd_out("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]).unwrap_or_else(|| "unknown".into());
    let stamp = cmd_out("date", &["-u", "+%Y%m%d-%H%M%S"]).unwrap_or_else(|| "run".into());
    let git_commit = git_commit(&root);

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
        redis: redis_bench,
        accounting: accounting_bench,
        targets: Vec::new(),
        notes,
        wall_time_s: 0.0,
    };
    report.targets = report::targets(&report);
    report.wall_time_s = wall.elapsed().as_secs_f64();

    write_outputs(&report, &out, &stamp)
}

/// Writes latest.{md,json,png} and the dated copies, and prints the report.
fn write_outputs(report: &Report, out: &Path, stamp: &str) -> Result<(), String> {
    let md = report::markdown(report);
    let json = serde_json::to_string_pretty(report).map_err(|e| e.to_string())?;
    let write = |name: &str, data: &[u8]| -> Result<(), String> {
        let p = out.join(name);
        std::fs::write(&p, data).map_err(|e| format!("{}: {e}", p.display()))
    };
    write("latest.md", md.as_bytes())?;
    write("latest.json", json.as_bytes())?;
    let png = out.join("latest.png");
    if let Err(e) = chart::draw(report, &png) {
        eprintln!("chart: {e}");
    }
    let history = out.join("history");
    std::fs::create_dir_all(&history).map_err(|e| e.to_string())?;
    let _ = std::fs::copy(out.join("latest.md"), history.join(format!("{stamp}.md")));
    let _ = std::fs::copy(
        out.join("latest.json"),
        history.join(format!("{stamp}.json")),
    );
    println!("{md}");
    eprintln!(
        "wrote {}/latest.{{md,json,png}} (and history/{stamp}.{{md,json}}) in {:.0} s",
        out.display(),
        report.wall_time_s
    );
    Ok(())
}

/// The repository's commit, with `+dirty` when the gateway's sources differ from it.
fn git_commit(root: &Path) -> String {
    let root = root.to_string_lossy();
    let Some(c) = cmd_out("git", &["-C", &root, "rev-parse", "--short", "HEAD"]) else {
        return "uncommitted".into();
    };
    let dirty = cmd_out("git", &["-C", &root, "status", "--porcelain", "--", "src"])
        .is_some_and(|s| !s.is_empty());
    if dirty {
        format!("{c}+dirty")
    } else {
        c
    }
}

/// Starts `runs` fresh gateways and records spawn → first 200 on /healthz for each.
async fn startup_runs(
    startup: &mut Startup,
    runs: usize,
    bin: &Path,
    upstream: &str,
    log: &Path,
) -> Result<(), String> {
    let mut result = Ok(());
    for i in 0..runs {
        match procs::spawn_gateway(bin, upstream, &HEALTHY_KEYS, log).await {
            Ok(g) => {
                startup.runs_ms.push(g.startup.as_secs_f64() * 1e3);
                g.proc.stop().await;
            }
            Err(e) => {
                result = Err(format!("startup run {i} failed: {e}"));
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
    result
}

/// A second gateway whose pool has one key the mock answers 429, one it answers 500 and two
/// healthy ones, against a healthy key straight to the mock.
async fn fault_mix(
    ctx: &mut Ctx,
    bin: &Path,
    upstream: &str,
    log: &Path,
    direct: &HttpTarget,
) -> Result<Vec<Scenario>, String> {
    let keys = ["bench-429", "bench-500", "bench-ok-1", "bench-ok-2"];
    let fg = procs::spawn_gateway(bin, upstream, &keys, log).await?;
    let target = HttpTarget {
        addr: fg.addr,
        path: "/v1/chat/completions".into(),
        bearer: None,
    };
    let mut out = Vec::new();
    for c in [1usize, 16] {
        let spec = ctx.spec(c, false, chat_body(false, 0, 0), None);
        ctx.step += 1;
        let id = format!("faults c={c}");
        let pids = [ctx.mock.pid, fg.proc.pid];
        let d = measure_http(direct, &spec, &pids, "HTTP → mock (healthy key)").await;
        log_side(ctx.step, &id, "direct", &d);
        let before = mock_calls(ctx.mock_addr);
        let pids = [fg.proc.pid, ctx.mock.pid];
        let mut g = measure_http(&target, &spec, &pids, "HTTP → gateway → mock").await;
        let after = mock_calls(ctx.mock_addr);
        // Every client request of the phase, warm-up included, against every upstream call
        // the mock saw meanwhile.
        if let (Some(a), Some(b)) = (before, after) {
            if g.attempted > 0 {
                g.upstream_calls_per_req = Some((b - a) as f64 / g.attempted as f64);
            }
        }
        log_side(ctx.step, &id, "gateway", &g);
        out.push(Scenario {
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
    Ok(out)
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

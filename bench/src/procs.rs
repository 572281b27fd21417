//! Child processes (mock upstream, gateway), readiness, and /proc readings.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A child process that is killed when dropped.
pub struct Proc {
    pub pid: u32,
    child: Child,
}

impl Proc {
    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }

    /// Whether the process has exited (and with what), without waiting.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

/// Makes the child die with this process, even if this process is killed outright (no
/// orphaned gateway or mock holding a port after an interrupted run).
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe; it runs in the child between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

fn log_file(path: &Path) -> std::io::Result<Stdio> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    Ok(Stdio::from(std::fs::File::create(path)?))
}

/// Starts the mock upstream on an ephemeral port and returns its address.
pub async fn spawn_mock(bin: &Path, log: &Path) -> Result<(Proc, SocketAddr), String> {
    let mut cmd = Command::new(bin);
    die_with_parent(&mut cmd);
    let mut child = cmd
        .args(["--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file(log).map_err(|e| format!("{}: {e}", log.display()))?)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let pid = child.id().unwrap_or(0);
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .map_err(|_| "mock upstream did not print its address within 10 s".to_string())?
        .map_err(|e| e.to_string())?
        .ok_or("mock upstream exited before printing its address")?;
    let addr: SocketAddr = line
        .strip_prefix("LISTENING ")
        .and_then(|a| a.trim().parse().ok())
        .ok_or_else(|| format!("unexpected mock output: {line}"))?;
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((Proc { pid, child }, addr))
}

/// Starts `bin` with `args`, stdout and stderr to `log`; killed when dropped or when this
/// process dies.
pub fn spawn_logged(bin: &str, args: &[&str], log: &Path) -> Result<Proc, String> {
    let out = log_file(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let err = std::fs::OpenOptions::new()
        .append(true)
        .open(log)
        .map(Stdio::from)
        .map_err(|e| e.to_string())?;
    let mut cmd = Command::new(bin);
    die_with_parent(&mut cmd);
    let child = cmd
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {bin}: {e}"))?;
    Ok(Proc {
        pid: child.id().unwrap_or(0),
        child,
    })
}

/// A free loopback port (bound then released; a tiny race, fine for a benchmark).
pub fn free_port() -> std::io::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

pub struct GatewayStart {
    pub proc: Proc,
    pub addr: SocketAddr,
    /// Spawn to the first 200 on /healthz.
    pub startup: Duration,
}

/// Starts the gateway against `upstream` with `keys` and waits for /healthz.
pub async fn spawn_gateway(
    bin: &Path,
    upstream: &str,
    keys: &[&str],
    log: &Path,
) -> Result<GatewayStart, String> {
    spawn_gateway_with(bin, upstream, keys, &[], log).await
}

/// [`spawn_gateway`] with more command-line arguments (`--redis …`, `--keys-file …`). With
/// no `keys`, the keys come from those arguments alone (`MEGALLM_API_KEYS` is unset).
pub async fn spawn_gateway_with(
    bin: &Path,
    upstream: &str,
    keys: &[&str],
    extra: &[String],
    log: &Path,
) -> Result<GatewayStart, String> {
    let port = free_port().map_err(|e| e.to_string())?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let stdout = log_file(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let stderr = std::fs::OpenOptions::new()
        .append(true)
        .open(log)
        .map(Stdio::from)
        .map_err(|e| e.to_string())?;
    let mut cmd = Command::new(bin);
    die_with_parent(&mut cmd);
    cmd.args(["--listen", &addr.to_string(), "--upstream", upstream])
        .args(extra);
    if keys.is_empty() {
        cmd.env_remove("MEGALLM_API_KEYS");
    } else {
        cmd.env("MEGALLM_API_KEYS", keys.join(","));
    }
    cmd.env("RUST_LOG", "warn")
        .env_remove("MEGALLM_KEYS_FILE")
        .env_remove("GATEWAY_CONFIG")
        .env_remove("GATEWAY_AUTH_TOKENS")
        .env_remove("GATEWAY_DEMO")
        .env_remove("GATEWAY_REDIS_URL")
        .env_remove("GATEWAY_REDIS_PREFIX")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .kill_on_drop(true);
    let t0 = Instant::now();
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let pid = child.id().unwrap_or(0);
    let mut proc = Proc { pid, child };
    let ready =
        tokio::task::spawn_blocking(move || wait_healthz(addr, t0, Duration::from_secs(15)))
            .await
            .map_err(|e| e.to_string())?;
    match ready {
        Some(startup) => Ok(GatewayStart {
            proc,
            addr,
            startup,
        }),
        None => {
            let status = proc.exited();
            proc.stop().await;
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            let tail: String = tail
                .lines()
                .rev()
                .take(8)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            Err(format!(
                "gateway did not answer 200 on /healthz within 15 s (exit: {status:?}); log tail:\n{tail}"
            ))
        }
    }
}

/// Polls `GET /healthz` with plain blocking sockets (every 100 µs) until a 200; returns the
/// time since `t0`.
pub fn wait_healthz(addr: SocketAddr, t0: Instant, timeout: Duration) -> Option<Duration> {
    while t0.elapsed() < timeout {
        if healthz_once(addr) {
            return Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    None
}

fn healthz_once(addr: SocketAddr) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let _ = s.set_nodelay(true);
    let req = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    let mut got = 0;
    while got < 12 {
        match s.read(&mut buf[got..]) {
            Ok(0) | Err(_) => return false,
            Ok(n) => got += n,
        }
    }
    buf[..12].starts_with(b"HTTP/1.1 200") || buf[..12].starts_with(b"HTTP/1.0 200")
}

/// A small blocking GET returning the body (used for the mock's /stats).
pub fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

/// Resident set size in KiB (VmRSS).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Open file descriptors of a process.
pub fn fd_count(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// User + system CPU time of a process.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    let hz = 100.0; // USER_HZ is 100 on Linux.
    Some(Duration::from_secs_f64((utime + stime) as f64 / hz))
}

/// Raises this process's soft open-files limit to the hard limit; children inherit it.
/// Returns the resulting soft limit.
pub fn raise_nofile() -> u64 {
    // SAFETY: plain libc calls on a local struct.
    unsafe {
        let mut rl = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return 1024;
        }
        if rl.rlim_cur < rl.rlim_max {
            let want = libc::rlimit {
                rlim_cur: rl.rlim_max,
                rlim_max: rl.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                return want.rlim_max;
            }
        }
        rl.rlim_cur
    }
}

/// Busy CPU time of the whole machine (all cores), from /proc/stat.
fn system_busy() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let line = s.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: busy = all but idle and iowait.
    let busy = f.first()? + f.get(1)? + f.get(2)? + f.get(5)? + f.get(6)? + f.get(7)?;
    Some(Duration::from_secs_f64(busy as f64 / 100.0))
}

/// A CPU reading of the machine and of the processes this benchmark runs, so that a phase can
/// tell how much CPU it used itself and how much other processes on the machine took.
#[derive(Clone)]
pub struct CpuSnap {
    at: Instant,
    system: Option<Duration>,
    ours: Vec<Option<Duration>>,
    /// Write syscalls of the serving process so far (`syscw` in `/proc/PID/io`).
    writes: Option<u64>,
}

/// Write-family syscalls (`write`, `writev`, …) a process has made: `syscw` in `/proc/PID/io`.
pub fn write_syscalls(pid: u32) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("syscw:"))
        .and_then(|v| v.trim().parse().ok())
}

impl CpuSnap {
    /// `pids[0]` is the serving process; all of them count as "ours", with this process.
    pub fn take(pids: &[u32]) -> CpuSnap {
        let mut ours: Vec<Option<Duration>> = pids.iter().map(|p| cpu_time(*p)).collect();
        ours.push(cpu_time(std::process::id()));
        CpuSnap {
            at: Instant::now(),
            system: system_busy(),
            ours,
            writes: pids.first().and_then(|p| write_syscalls(*p)),
        }
    }

    /// CPU time of the serving process between two readings.
    pub fn server_delta(&self, later: &CpuSnap) -> Option<Duration> {
        later
            .ours
            .first()
            .copied()??
            .checked_sub(self.ours.first().copied()??)
    }

    /// Write syscalls of the serving process between two readings.
    pub fn server_writes(&self, later: &CpuSnap) -> Option<u64> {
        later.writes?.checked_sub(self.writes?)
    }

    /// The share of the machine (all cores) that processes other than ours used, in percent.
    pub fn foreign_pct(&self, later: &CpuSnap, ncpu: usize) -> Option<f64> {
        let sys = later.system?.checked_sub(self.system?)?.as_secs_f64();
        let mut ours = 0.0;
        for (a, b) in self.ours.iter().zip(later.ours.iter()) {
            ours += b
                .unwrap_or_default()
                .saturating_sub(a.unwrap_or_default())
                .as_secs_f64();
        }
        let wall = (later.at - self.at).as_secs_f64() * ncpu.max(1) as f64;
        (wall > 0.0).then(|| (100.0 * (sys - ours) / wall).clamp(0.0, 100.0))
    }
}

//! Many long paced streams held open through the gateway at once, to read its memory.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::load::{self, HttpTarget, Transport};
use crate::procs;
use crate::report::StreamsHold;

/// What a hold needs to know about the processes and the run.
pub struct HoldEnv {
    pub quick: bool,
    pub mock_pid: u32,
    pub gateway_pid: u32,
    pub gateway: HttpTarget,
    /// This process's open-files limit (the gateway's is the same: it inherits it).
    pub nofile: u64,
}

/// Holds `n` long paced streams open through the gateway and reads its RSS at the plateau.
pub async fn hold_streams(env: &HoldEnv, n: usize) -> StreamsHold {
    // One chunk per second for up to an hour: the streams stay open until released.
    let body = crate::chat_body(true, 3600, 1000);
    // HTTP/1.1 needs a connection per stream: the gateway then holds 2 fds per stream (client
    // side and upstream side). Beyond its open-files limit, use h2c (streams multiplexed on a
    // few connections, which the gateway serves on the same port).
    let nofile = env.nofile;
    let h1_fits = (2 * n as u64 + 512) <= nofile;
    let transport = if h1_fits {
        Transport::H1
    } else {
        Transport::H2 { per_conn: 100 }
    };
    let first = hold_once(env, body.clone(), n, transport).await;
    if first.opened >= n / 2 || matches!(transport, Transport::H1) {
        return first;
    }
    // A gateway that does not serve h2c: fall back to HTTP/1.1 within the fd budget.
    let n2 = n.min((nofile.saturating_sub(512) / 2) as usize);
    let why = first.note.clone().unwrap_or_default();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut h = hold_once(env, body, n2, Transport::H1).await;
    h.target = n;
    h.note = Some(format!(
        "h2c failed ({why}); fell back to HTTP/1.1, capped at {n2} streams by the open-files limit {nofile} (2 fds per stream in the gateway){}",
        h.note.as_ref().map_or(String::new(), |x| format!("; {x}"))
    ));
    h
}

/// Opens `n` streams, waits until all are open (or progress stops), samples the gateway's RSS
/// at the plateau, closes them all and samples again.
async fn hold_once(env: &HoldEnv, body: Bytes, n: usize, transport: Transport) -> StreamsHold {
    let t0 = Instant::now();
    let holder = load::Holder::start(&env.gateway, body, n, transport, 256).await;
    let timeout = Duration::from_secs(if env.quick { 30 } else { 60 });
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
        first_error
            .as_ref()
            .map_or(String::new(), |e| format!(", first error: {e}"))
    );

    // Let the open streams settle (each gets one event per second), then sample.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut rss = None;
    for _ in 0..5 {
        rss = rss.max(procs::rss_kib(env.gateway_pid));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let fds = procs::fd_count(env.gateway_pid);
    let mock_rss = procs::rss_kib(env.mock_pid);
    let opened = holder.opened.load(Ordering::Relaxed);
    let failed = holder.failed.load(Ordering::Relaxed);
    holder.release().await;
    tokio::time::sleep(Duration::from_secs(if env.quick { 1 } else { 2 })).await;
    let after = procs::rss_kib(env.gateway_pid);
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

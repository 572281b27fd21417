//! A small closed-loop HTTP load generator (hyper client, one connection per worker) with
//! hdrhistogram percentiles, SSE first-chunk timing, and a holder for many open streams.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Latencies are recorded in nanoseconds, up to two minutes.
pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000_000, 3).expect("histogram bounds")
}

/// Where requests go: an address and a path, with an optional bearer token.
#[derive(Clone, Debug)]
pub struct HttpTarget {
    pub addr: SocketAddr,
    pub path: String,
    pub bearer: Option<String>,
}

/// One closed-loop measurement: `concurrency` workers, each with its own connection, send
/// requests back to back. Requests that start during `warmup` are not recorded; recording
/// stops at `warmup + duration` or after `max_requests`, whichever comes first.
#[derive(Clone, Debug)]
pub struct Spec {
    pub concurrency: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub max_requests: u64,
    pub body: Bytes,
    pub stream: bool,
    /// For streams: the number of `data:` events expected (including `[DONE]`).
    pub expect_events: Option<usize>,
}

/// Percentiles in milliseconds.
#[derive(Clone, Debug, Serialize, Default)]
pub struct Summary {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Summary {
    pub fn of(h: &Histogram<u64>) -> Summary {
        if h.is_empty() {
            return Summary::default();
        }
        let ms = |ns: u64| ns as f64 / 1e6;
        Summary {
            count: h.len(),
            mean_ms: h.mean() / 1e6,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// The outcome of one measurement.
pub struct Measured {
    /// Every request sent, warm-up included.
    pub attempted: u64,
    pub ok: u64,
    pub errors: u64,
    /// Non-success outcomes by kind: an HTTP status ("429"), "io" for a transport error,
    /// "events" for a stream with the wrong number of events.
    pub error_kinds: BTreeMap<String, u64>,
    pub elapsed: Duration,
    pub latency: Histogram<u64>,
    pub ttfc: Option<Histogram<u64>>,
}

impl Measured {
    pub fn rps(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.ok as f64 / s
        } else {
            0.0
        }
    }
}

/// The clock and the request budget that all workers of one measurement share.
pub struct Shared {
    measure_start: Instant,
    deadline: Instant,
    tickets: AtomicU64,
    max_requests: u64,
}

impl Shared {
    /// Whether a worker may start another request now: `None` when the phase is over.
    pub fn next(&self) -> Option<()> {
        let now = Instant::now();
        if now >= self.deadline {
            return None;
        }
        if now >= self.measure_start
            && self.tickets.fetch_add(1, Ordering::Relaxed) >= self.max_requests
        {
            return None;
        }
        Some(())
    }

    /// Whether a request that started at `t0` counts (it started after the warm-up).
    pub fn records(&self, t0: Instant) -> bool {
        t0 >= self.measure_start
    }
}

/// What one worker saw.
pub struct WorkerOut {
    attempted: u64,
    ok: u64,
    errors: u64,
    error_kinds: BTreeMap<String, u64>,
    last_end: Option<Instant>,
    latency: Histogram<u64>,
    ttfc: Histogram<u64>,
}

impl WorkerOut {
    pub fn new() -> Self {
        WorkerOut {
            attempted: 0,
            ok: 0,
            errors: 0,
            error_kinds: BTreeMap::new(),
            last_end: None,
            latency: new_hist(),
            ttfc: new_hist(),
        }
    }

    /// A successful request that ran from `t0` to `t1` (first chunk after `ttfc`).
    pub fn ok(&mut self, shared: &Shared, t0: Instant, t1: Instant, ttfc: Option<Duration>) {
        self.attempted += 1;
        if !shared.records(t0) {
            return;
        }
        self.ok += 1;
        self.latency.saturating_record((t1 - t0).as_nanos() as u64);
        if let Some(f) = ttfc {
            self.ttfc.saturating_record(f.as_nanos() as u64);
        }
        self.last_end = Some(t1);
    }

    /// A failed request, by kind (a status, "io", …).
    pub fn error(&mut self, shared: &Shared, t0: Instant, t1: Instant, kind: String) {
        self.attempted += 1;
        if !shared.records(t0) {
            return;
        }
        self.errors += 1;
        *self.error_kinds.entry(kind).or_default() += 1;
        self.last_end = Some(t1);
    }
}

type H1Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// Aborts a spawned task when dropped (used for hyper connection drivers).
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn connect_h1(addr: SocketAddr) -> std::io::Result<(H1Sender, AbortOnDrop)> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(std::io::Error::other)?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok((sender, AbortOnDrop(driver)))
}

fn build_request(target: &HttpTarget, body: &Bytes) -> Request<Full<Bytes>> {
    let mut b = Request::post(target.path.as_str())
        .header(header::HOST, target.addr.to_string())
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, body.len());
    if let Some(t) = &target.bearer {
        b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    b.body(Full::new(body.clone())).expect("valid request")
}

/// Counts SSE `data:` events (lines starting with `data:`) in a complete body.
pub fn count_events(body: &[u8]) -> usize {
    let mut n = 0;
    let mut at_line_start = true;
    let mut i = 0;
    while i < body.len() {
        if at_line_start && body[i..].starts_with(b"data:") {
            n += 1;
        }
        at_line_start = body[i] == b'\n';
        i += 1;
    }
    n
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

enum Outcome {
    Ok { ttfc: Option<Duration> },
    Status(StatusCode),
    Events(usize),
}

async fn one_request(
    sender: &mut H1Sender,
    req: Request<Full<Bytes>>,
    spec: &Spec,
    t0: Instant,
) -> Result<Outcome, hyper::Error> {
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let mut body: Incoming = resp.into_body();
    if status != StatusCode::OK {
        let _ = body.collect().await?;
        return Ok(Outcome::Status(status));
    }
    if !spec.stream {
        let _ = body.collect().await?;
        return Ok(Outcome::Ok { ttfc: None });
    }
    let mut first = None;
    let mut buf = Vec::with_capacity(4096);
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        if let Some(d) = frame.data_ref() {
            if first.is_none() && contains(d, b"data:") {
                first = Some(t0.elapsed());
            }
            buf.extend_from_slice(d);
        }
    }
    let events = count_events(&buf);
    if let Some(want) = spec.expect_events {
        if events != want {
            return Ok(Outcome::Events(events));
        }
    }
    Ok(Outcome::Ok { ttfc: first })
}

async fn worker(target: Arc<HttpTarget>, spec: Arc<Spec>, shared: Arc<Shared>) -> WorkerOut {
    let mut out = WorkerOut::new();
    let mut conn: Option<(H1Sender, AbortOnDrop)> = None;
    while shared.next().is_some() {
        if conn.is_none() {
            let t0 = Instant::now();
            match connect_h1(target.addr).await {
                Ok(c) => conn = Some(c),
                Err(_) => {
                    out.error(&shared, t0, Instant::now(), "connect".into());
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let (sender, _) = conn.as_mut().expect("connected");
        if sender.ready().await.is_err() {
            conn = None;
            continue;
        }
        let req = build_request(&target, &spec.body);
        let t0 = Instant::now();
        let res = one_request(sender, req, &spec, t0).await;
        let t1 = Instant::now();
        match res {
            Ok(Outcome::Ok { ttfc }) => out.ok(&shared, t0, t1, ttfc),
            Ok(Outcome::Status(s)) => out.error(&shared, t0, t1, s.as_u16().to_string()),
            Ok(Outcome::Events(n)) => out.error(&shared, t0, t1, format!("events={n}")),
            Err(_) => {
                conn = None;
                out.error(&shared, t0, t1, "io".into());
            }
        }
    }
    out
}

/// Runs one closed-loop measurement against `target`.
pub async fn run(target: &HttpTarget, spec: &Spec) -> Measured {
    let target = Arc::new(target.clone());
    let spec_a = Arc::new(spec.clone());
    run_workers(spec, |shared| {
        worker(target.clone(), spec_a.clone(), shared)
    })
    .await
}

/// Runs `spec.concurrency` workers made by `make` against one shared clock and budget, and
/// merges what they saw.
pub async fn run_workers<F, Fut>(spec: &Spec, mut make: F) -> Measured
where
    F: FnMut(Arc<Shared>) -> Fut,
    Fut: std::future::Future<Output = WorkerOut> + Send + 'static,
{
    let start = Instant::now();
    let shared = Arc::new(Shared {
        measure_start: start + spec.warmup,
        deadline: start + spec.warmup + spec.duration,
        tickets: AtomicU64::new(0),
        max_requests: spec.max_requests,
    });
    let mut set = JoinSet::new();
    for _ in 0..spec.concurrency {
        set.spawn(make(shared.clone()));
    }
    let mut m = Measured {
        attempted: 0,
        ok: 0,
        errors: 0,
        error_kinds: BTreeMap::new(),
        elapsed: Duration::ZERO,
        latency: new_hist(),
        ttfc: spec.stream.then(new_hist),
    };
    let mut last_end: Option<Instant> = None;
    while let Some(r) = set.join_next().await {
        let Ok(w) = r else { continue };
        m.attempted += w.attempted;
        m.ok += w.ok;
        m.errors += w.errors;
        for (k, v) in w.error_kinds {
            *m.error_kinds.entry(k).or_default() += v;
        }
        let _ = m.latency.add(&w.latency);
        if let Some(t) = m.ttfc.as_mut() {
            let _ = t.add(&w.ttfc);
        }
        if let Some(e) = w.last_end {
            last_end = Some(last_end.map_or(e, |l: Instant| l.max(e)));
        }
    }
    m.elapsed = match last_end {
        Some(e) if e > shared.measure_start => e - shared.measure_start,
        _ => spec.duration,
    };
    m
}

/// How the open-streams holder reaches the gateway.
#[derive(Clone, Copy, Debug, Serialize)]
pub enum Transport {
    /// One HTTP/1.1 connection per stream.
    H1,
    /// HTTP/2 with prior knowledge (h2c), `per_conn` streams multiplexed on each connection.
    H2 { per_conn: usize },
}

/// Many long streams held open at once; `release` closes them all.
pub struct Holder {
    pub opened: Arc<AtomicUsize>,
    pub failed: Arc<AtomicUsize>,
    pub ended_early: Arc<AtomicUsize>,
    pub first_error: Arc<std::sync::Mutex<Option<String>>>,
    tasks: JoinSet<()>,
    drivers: Vec<AbortOnDrop>,
}

impl Holder {
    /// Starts opening `n` streams (each POSTs `body`, which must ask for a long paced stream);
    /// at most `ramp` are being opened at any time.
    pub async fn start(
        target: &HttpTarget,
        body: Bytes,
        n: usize,
        transport: Transport,
        ramp: usize,
    ) -> Holder {
        let mut h = Holder {
            opened: Arc::new(AtomicUsize::new(0)),
            failed: Arc::new(AtomicUsize::new(0)),
            ended_early: Arc::new(AtomicUsize::new(0)),
            first_error: Arc::new(std::sync::Mutex::new(None)),
            tasks: JoinSet::new(),
            drivers: Vec::new(),
        };
        let sem = Arc::new(Semaphore::new(ramp.max(1)));
        let target = Arc::new(target.clone());
        match transport {
            Transport::H1 => {
                for _ in 0..n {
                    let ctx = StreamCtx::new(&h, &sem, &target, &body);
                    h.tasks.spawn(async move {
                        let permit = ctx.sem.clone().acquire_owned().await;
                        let (mut sender, _driver) = match connect_h1(ctx.target.addr).await {
                            Ok(c) => c,
                            Err(e) => return ctx.fail(format!("connect: {e}")),
                        };
                        if let Err(e) = sender.ready().await {
                            return ctx.fail(format!("ready: {e}"));
                        }
                        let req = build_request(&ctx.target, &ctx.body);
                        let resp = sender.send_request(req).await;
                        ctx.hold(resp, permit).await;
                    });
                }
            }
            Transport::H2 { per_conn } => {
                let per_conn = per_conn.max(1);
                let conns = n.div_ceil(per_conn);
                let mut senders = Vec::new();
                for _ in 0..conns {
                    match connect_h2(target.addr).await {
                        Ok((s, d)) => {
                            senders.push(s);
                            h.drivers.push(d);
                        }
                        Err(e) => {
                            h.first_error
                                .lock()
                                .expect("lock")
                                .get_or_insert(format!("h2 connect: {e}"));
                        }
                    }
                }
                if senders.is_empty() {
                    h.failed.store(n, Ordering::Relaxed);
                    return h;
                }
                for i in 0..n {
                    let mut sender = senders[i % senders.len()].clone();
                    let ctx = StreamCtx::new(&h, &sem, &target, &body);
                    h.tasks.spawn(async move {
                        let permit = ctx.sem.clone().acquire_owned().await;
                        if let Err(e) = sender.ready().await {
                            return ctx.fail(format!("h2 ready: {e}"));
                        }
                        let req = build_request(&ctx.target, &ctx.body);
                        let resp = sender.send_request(req).await;
                        ctx.hold(resp, permit).await;
                    });
                }
            }
        }
        h
    }

    /// Closes every stream and connection at once (the gateway sees the clients go away).
    pub async fn release(mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        self.drivers.clear();
    }
}

type H2Sender = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

async fn connect_h2(addr: SocketAddr) -> std::io::Result<(H2Sender, AbortOnDrop)> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(tcp))
        .await
        .map_err(std::io::Error::other)?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok((sender, AbortOnDrop(driver)))
}

struct StreamCtx {
    opened: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    ended_early: Arc<AtomicUsize>,
    first_error: Arc<std::sync::Mutex<Option<String>>>,
    sem: Arc<Semaphore>,
    target: Arc<HttpTarget>,
    body: Bytes,
}

impl StreamCtx {
    fn new(h: &Holder, sem: &Arc<Semaphore>, target: &Arc<HttpTarget>, body: &Bytes) -> Self {
        StreamCtx {
            opened: h.opened.clone(),
            failed: h.failed.clone(),
            ended_early: h.ended_early.clone(),
            first_error: h.first_error.clone(),
            sem: sem.clone(),
            target: target.clone(),
            body: body.clone(),
        }
    }

    fn fail(&self, why: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        self.first_error.lock().expect("lock").get_or_insert(why);
    }

    async fn hold<P>(&self, resp: Result<http::Response<Incoming>, hyper::Error>, permit: P) {
        let resp = match resp {
            Ok(r) => r,
            Err(e) => return self.fail(format!("request: {e}")),
        };
        if resp.status() != StatusCode::OK {
            return self.fail(format!("status {}", resp.status()));
        }
        let mut body = resp.into_body();
        // Opened = the first event arrived.
        loop {
            match body.frame().await {
                Some(Ok(f)) => {
                    if f.data_ref().is_some_and(|d| contains(d, b"data:")) {
                        break;
                    }
                }
                Some(Err(e)) => return self.fail(format!("body: {e}")),
                None => return self.fail("stream ended before its first event".into()),
            }
        }
        self.opened.fetch_add(1, Ordering::Relaxed);
        drop(permit);
        while let Some(Ok(_)) = body.frame().await {}
        self.opened.fetch_sub(1, Ordering::Relaxed);
        self.ended_early.fetch_add(1, Ordering::Relaxed);
    }
}

//! Cleartext HTTP/1.1 to the upstream: a client of the gateway's own, driven by the request
//! that uses it, and a small idle pool of its connections.
//!
//! Why not hyper's client here: hyper runs each connection as a task of its own and hands a
//! body over through a channel, so each SSE event of a stream costs a wake-up of that task and
//! one of the stream's, and the events of one upstream read never reach the door together. And
//! each hyper connection holds about 21 KB whatever it carries (a request channel's block, an
//! 8 KiB header buffer, the read buffer), which is most of what an open stream costs. Here a
//! connection is a socket and the bytes read but not yet taken: the response body reads the
//! socket itself when polled ([`Body`]), so the events of one read are all at hand in one poll
//! of the door (`chat::batches` sends them in one write), no other task is woken, and a stream
//! waiting for its next event holds no buffer at all. A paced stream keeps its timing: a poll
//! returns what one read brought, never waiting for more.
//!
//! What it speaks is what an upstream answers a POST with (RFC 9112): a status line and
//! headers, interim 1xx answers skipped, a body framed by `transfer-encoding: chunked`,
//! `content-length`, or the connection's close. Heads over [`MAX_HEAD`], chunked framing
//! errors and contradicting lengths are errors, not guesses.
//!
//! Not for TLS or HTTP/2 upstreams (hyper's pooled client serves those): an HTTPS upstream is
//! far away, where a wake-up per event costs nothing next to the network.
//!
//! The pool: a connection whose answer was read to its end goes back, the most recent taken
//! first, at most `max_idle` kept; one idle longer than `idle_timeout`, or that the upstream
//! closed while it was idle, is closed when the pool is next touched or by the reaper (every
//! `idle_timeout`). A connection dropped before its answer ended (the client went away) is
//! closed, and so is the upstream request with it.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Version};
use http_body::Frame;
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The largest response head read (status line and headers). hyper's client allows about
/// 400 KiB; an API's answer carries a few KiB at most, and a head this large is a broken or
/// hostile upstream.
pub const MAX_HEAD: usize = 64 * 1024;
/// The most header fields a response head may have.
const MAX_HEADERS: usize = 128;
/// The largest single read: a long answer's reads grow from the configured read buffer up to
/// this, doubling each time a read fills its buffer.
const MAX_READ: usize = 64 * 1024;
/// The longest chunk-size line (size and extensions), as hyper's limit on extensions.
const MAX_CHUNK_LINE: usize = 16 * 1024;
/// The most trailer bytes taken (and ignored) after a chunked body's last chunk.
const MAX_TRAILERS: usize = 16 * 1024;
/// The most interim (1xx) answers taken before the answer.
const MAX_INTERIM: usize = 16;
/// A connection idle this long is asked by a real (peeking) read whether the upstream closed
/// it, not by the runtime's readiness alone, which may not have seen a close that just came:
/// upstreams close idle connections after seconds (uvicorn and Node after 5), never sooner.
const PROBE_AFTER: Duration = Duration::from_secs(1);
/// A request body up to this size goes out in the head's write: one syscall, one segment.
const COALESCE: usize = 64 * 1024;

/// One upstream connection and what was read from it but not yet taken.
struct Conn {
    tcp: TcpStream,
    /// Unread bytes. Emptied, it gives its allocation up (the taken frames own it): a stream
    /// waiting on a paced upstream holds no read buffer.
    buf: BytesMut,
    /// The size of the next read.
    read_size: usize,
    /// How long the upstream keeps the connection open idle, when it said (`Keep-Alive:
    /// timeout=N`).
    keep_alive: Option<Duration>,
}

impl Conn {
    fn new(tcp: TcpStream, read_size: usize) -> Conn {
        Conn {
            tcp,
            buf: BytesMut::new(),
            read_size,
            keep_alive: None,
        }
    }

    /// One read from the socket into `buf`: `Ok(0)` at the upstream's end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.tcp.poll_read_ready(cx))?;
            self.buf.reserve(self.read_size);
            match self.tcp.try_read_buf(&mut self.buf) {
                Ok(n) => {
                    if n >= self.read_size {
                        self.read_size = (self.read_size * 2).min(MAX_READ);
                    }
                    return Poll::Ready(Ok(n));
                }
                // The readiness was stale: wait for the next, holding no more buffer meanwhile
                // than the unread bytes (a part of an event, a chunk's CRLF) need.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.buf.is_empty() {
                        self.buf = BytesMut::new();
                    } else if self.buf.capacity() > 2 * self.buf.len() {
                        self.buf = BytesMut::from(&self.buf[..]);
                    }
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// The first `n` unread bytes.
    fn take(&mut self, n: usize) -> Bytes {
        let taken = self.buf.split_to(n).freeze();
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
        taken
    }

    /// Whether the connection can carry another request: nothing unread, and nothing (an end of
    /// stream, stray bytes) arrived since. Clears a stale readiness on the way.
    fn is_reusable(&self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        matches!(self.tcp.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Whether the upstream sent anything (most often its close) while the connection was
    /// idle: after [`Conn::is_reusable`] cleared the readiness, any readiness is news. A
    /// connection idle past [`PROBE_AFTER`] is also asked by a peeking read.
    fn heard_from_while_idle(&self, idle: Duration) -> bool {
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        if self.tcp.poll_read_ready(&mut cx).is_ready() {
            return true;
        }
        if idle < PROBE_AFTER {
            return false;
        }
        let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        !matches!(
            socket2::SockRef::from(&self.tcp).peek(&mut probe),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock
        )
    }
}

struct Idle {
    conn: Conn,
    since: Instant,
}

impl Idle {
    /// Idle past the pool's timeout, or past what the upstream said it keeps (less a margin,
    /// so the gateway never writes to a connection the upstream is closing).
    fn expired(&self, now: Instant, timeout: Duration) -> bool {
        let limit = match self.conn.keep_alive {
            Some(upstream) => timeout.min(upstream.saturating_sub(Duration::from_millis(500))),
            None => timeout,
        };
        now.duration_since(self.since) >= limit
    }
}

/// Why a request got no response head.
#[derive(Debug)]
pub enum H1Error {
    /// No connection could be made (DNS, refused, timeout).
    Connect(io::Error),
    /// Writing the request or reading the head failed.
    Io(io::Error),
    /// The upstream closed the connection before the response head was complete.
    Closed,
    /// The response head is not HTTP/1.1 the gateway can read.
    Malformed(&'static str),
}

impl H1Error {
    pub fn is_connect(&self) -> bool {
        matches!(self, H1Error::Connect(_))
    }
}

impl std::fmt::Display for H1Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            H1Error::Connect(_) => f.write_str("client error (Connect)"),
            H1Error::Io(_) => f.write_str("client error (SendRequest)"),
            H1Error::Closed => f.write_str(
                "client error (SendRequest): connection closed before the response head",
            ),
            H1Error::Malformed(why) => {
                write!(
                    f,
                    "client error (SendRequest): invalid HTTP response: {why}"
                )
            }
        }
    }
}

impl std::error::Error for H1Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            H1Error::Connect(e) | H1Error::Io(e) => Some(e),
            H1Error::Closed | H1Error::Malformed(_) => None,
        }
    }
}

/// Why a response body ended before its end.
#[derive(Debug)]
pub enum ReadError {
    Io(io::Error),
    /// The upstream closed the connection before the body's framing said it was done.
    Closed,
    /// The chunked framing is broken.
    Malformed(&'static str),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Io(_) => f.write_str("error reading a body from connection"),
            ReadError::Closed => f.write_str(
                "error reading a body from connection: the upstream closed it before the body's end",
            ),
            ReadError::Malformed(why) => {
                write!(f, "error reading a body from connection: {why}")
            }
        }
    }
}

impl std::error::Error for ReadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ReadError::Io(e) => Some(e),
            ReadError::Closed | ReadError::Malformed(_) => None,
        }
    }
}

/// The upstream's address and the pool of idle connections to it.
pub struct H1Pool {
    /// `host:port`, as connected to.
    authority: String,
    /// The `Host` header every request carries.
    host: HeaderValue,
    connect_timeout: Duration,
    read_buffer: usize,
    max_idle: usize,
    idle_timeout: Duration,
    idle: Mutex<Vec<Idle>>,
    reaper: std::sync::Once,
}

impl H1Pool {
    pub fn new(
        authority: String,
        host: HeaderValue,
        connect_timeout: Duration,
        read_buffer: usize,
        max_idle: usize,
        idle_timeout: Duration,
    ) -> Arc<H1Pool> {
        Arc::new(H1Pool {
            authority,
            host,
            connect_timeout,
            read_buffer: read_buffer.clamp(512, MAX_READ),
            max_idle,
            idle_timeout,
            idle: Mutex::new(Vec::new()),
            reaper: std::sync::Once::new(),
        })
    }

    /// Sends `request` (its URI's path and query are the request target) and resolves at the
    /// response head. A request an idle connection could not take (it had closed) goes on a
    /// new connection.
    pub async fn request(
        self: &Arc<Self>,
        request: Request<Bytes>,
    ) -> Result<Response<Body>, H1Error> {
        let (head, body) = self.encode(&request);
        if let Some(conn) = self.take() {
            match exchange(conn, &head, body.as_ref()).await {
                Ok((response, conn)) => return Ok(self.response(response, conn)),
                // Not written: the idle connection had closed; a fresh one takes it.
                Err(Exchange::Unwritten) => {}
                Err(Exchange::Failed(e)) => return Err(e),
            }
        }
        let conn = self.connect().await?;
        match exchange(conn, &head, body.as_ref()).await {
            Ok((response, conn)) => Ok(self.response(response, conn)),
            Err(Exchange::Unwritten) => Err(H1Error::Closed),
            Err(Exchange::Failed(e)) => Err(e),
        }
    }

    /// The request's head on the wire, with the body in it when small (else the body apart).
    fn encode(&self, request: &Request<Bytes>) -> (Vec<u8>, Option<Bytes>) {
        let target = request.uri().path_and_query().map_or("/", |p| p.as_str());
        let body = request.body();
        let method = request.method();
        // A GET or HEAD with no body says nothing of one, as hyper does.
        let bodiless = method == http::Method::GET || method == http::Method::HEAD;
        let length = (!body.is_empty() || !bodiless).then(|| body.len().to_string());
        let fields: usize = request
            .headers()
            .iter()
            .filter(|(name, _)| !is_framing(name))
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum();
        let size = method.as_str().len()
            + 1
            + target.len()
            + " HTTP/1.1\r\n".len()
            + "host: \r\n".len()
            + self.host.len()
            + fields
            + length
                .as_ref()
                .map_or(0, |l| "content-length: \r\n".len() + l.len())
            + 2;
        let coalesce = body.len() <= COALESCE;
        let mut head = Vec::with_capacity(size + if coalesce { body.len() } else { 0 });
        head.extend_from_slice(method.as_str().as_bytes());
        head.push(b' ');
        head.extend_from_slice(target.as_bytes());
        head.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        head.extend_from_slice(self.host.as_bytes());
        head.extend_from_slice(b"\r\n");
        for (name, value) in request.headers() {
            // The gateway frames the body itself; `Host` is the pool's.
            if is_framing(name) {
                continue;
            }
            head.extend_from_slice(name.as_str().as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        if let Some(length) = length {
            head.extend_from_slice(b"content-length: ");
            head.extend_from_slice(length.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(b"\r\n");
        if coalesce {
            head.extend_from_slice(body);
            (head, None)
        } else {
            (head, Some(body.clone()))
        }
    }

    fn response(self: &Arc<Self>, answer: Answer, mut conn: Conn) -> Response<Body> {
        conn.keep_alive = answer.keep_alive;
        let mut body = Body {
            conn: Some(conn),
            framing: answer.framing,
            reusable: answer.reusable,
            pool: Arc::downgrade(self),
        };
        // An answer with no body (204, `content-length: 0`) leaves its connection now: a
        // reader that sees the body's end up front may never poll it.
        if body.framing.is_done() {
            body.finish();
        }
        let mut response = Response::new(body);
        *response.status_mut() = answer.status;
        *response.version_mut() = answer.version;
        *response.headers_mut() = answer.headers;
        response
    }

    async fn connect(&self) -> Result<Conn, H1Error> {
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(&self.authority))
            .await
            .map_err(|_| {
                H1Error::Connect(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "tcp connect error: connection timed out",
                ))
            })?
            .map_err(|e| {
                H1Error::Connect(io::Error::new(e.kind(), format!("tcp connect error: {e}")))
            })?;
        let _ = tcp.set_nodelay(true);
        Ok(Conn::new(tcp, self.read_buffer))
    }

    /// The most recently used idle connection the upstream has not closed. (Older ones past
    /// their time are the reaper's.) One found closed is let go outside the lock.
    fn take(&self) -> Option<Conn> {
        loop {
            let i = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()?;
            let now = Instant::now();
            if !i.expired(now, self.idle_timeout)
                && !i.conn.heard_from_while_idle(now.duration_since(i.since))
            {
                return Some(i.conn);
            }
        }
    }

    /// A connection whose answer was read to its end.
    fn put(self: &Arc<Self>, mut conn: Conn) {
        if !conn.is_reusable() {
            return;
        }
        // A long answer's grown reads are not the next answer's.
        conn.read_size = self.read_buffer;
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() >= self.max_idle {
            return;
        }
        idle.push(Idle {
            conn,
            since: Instant::now(),
        });
        drop(idle);
        self.reaper.call_once(|| self.start_reaper());
    }

    /// Closes connections idle past the timeout, or closed by the upstream, even when no
    /// request comes to do it.
    fn start_reaper(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let pool: Weak<H1Pool> = Arc::downgrade(self);
        let every = self.idle_timeout;
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(pool) = pool.upgrade() else { return };
                let stale: Vec<Idle> = {
                    let mut idle = pool.idle.lock().unwrap_or_else(|e| e.into_inner());
                    let now = Instant::now();
                    let (stale, kept) = std::mem::take(&mut *idle).into_iter().partition(|i| {
                        i.expired(now, pool.idle_timeout)
                            // Readiness only: no syscall per idle connection each tick.
                            || i.conn.heard_from_while_idle(Duration::ZERO)
                    });
                    *idle = kept;
                    stale
                };
                // Closed outside the lock.
                drop(stale);
            }
        });
    }
}

/// Headers the gateway writes itself, whatever the request says.
fn is_framing(name: &HeaderName) -> bool {
    name == http::header::HOST
        || name == http::header::CONTENT_LENGTH
        || name == http::header::TRANSFER_ENCODING
}

/// A response head read, and how its body is framed.
struct Answer {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    framing: Framing,
    /// Whether the connection may carry another request once the body is read.
    reusable: bool,
    /// `Keep-Alive: timeout=N`: how long the upstream keeps the connection idle.
    keep_alive: Option<Duration>,
}

/// A request that got no response head.
enum Exchange {
    /// Never written (a reused connection had closed): it may go on another connection.
    Unwritten,
    Failed(H1Error),
}

/// Writes the request on `conn` and reads the response head. The socket is read while the
/// request is still being written: an upstream (or a proxy before it) may answer a large request
/// early (401, 413) and stop reading it; that answer is taken, the rest of the request dropped,
/// and the connection not reused.
async fn exchange(
    mut conn: Conn,
    head: &[u8],
    body: Option<&Bytes>,
) -> Result<(Answer, Conn), Exchange> {
    let body: &[u8] = body.map_or(&[], |b| b);
    let total = head.len() + body.len();
    let mut written = 0;
    let mut write_error: Option<io::Error> = None;
    // Whether any byte of an answer came, and how many interim answers.
    let mut heard = false;
    let mut interim = 0;
    let answer = std::future::poll_fn(|cx| loop {
        while written < total && write_error.is_none() {
            let rest = if written < head.len() {
                &head[written..]
            } else {
                &body[written - head.len()..]
            };
            match Pin::new(&mut conn.tcp).poll_write(cx, rest) {
                Poll::Ready(Ok(0)) => write_error = Some(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => written += n,
                Poll::Ready(Err(e)) => write_error = Some(e),
                Poll::Pending => break,
            }
        }
        match parse_head(&conn.buf) {
            Err(why) => return Poll::Ready(Err(Exchange::Failed(H1Error::Malformed(why)))),
            Ok(Some((len, mut answer))) => {
                let _ = conn.take(len);
                if answer.status == StatusCode::SWITCHING_PROTOCOLS {
                    return Poll::Ready(Err(Exchange::Failed(H1Error::Malformed(
                        "a protocol switch the gateway did not ask for",
                    ))));
                }
                // Interim answers (103 Early Hints, a 100 Continue the gateway did not ask
                // for) come before the answer.
                if answer.status.is_informational() {
                    interim += 1;
                    if interim > MAX_INTERIM {
                        return Poll::Ready(Err(Exchange::Failed(H1Error::Malformed(
                            "over 16 interim answers",
                        ))));
                    }
                    continue;
                }
                if written < total {
                    answer.reusable = false;
                }
                return Poll::Ready(Ok(answer));
            }
            Ok(None) => {}
        }
        match conn.poll_fill(cx) {
            Poll::Ready(Ok(0)) => return Poll::Ready(Err(unanswered(write_error.take(), heard))),
            Poll::Ready(Ok(_)) => heard = true,
            Poll::Ready(Err(e)) => {
                let error = match write_error.take() {
                    Some(refused) => unanswered(Some(refused), heard),
                    None => Exchange::Failed(H1Error::Io(e)),
                };
                return Poll::Ready(Err(error));
            }
            // A write failed and no answer is at hand: none is coming.
            Poll::Pending if write_error.is_some() => {
                return Poll::Ready(Err(unanswered(write_error.take(), heard)));
            }
            Poll::Pending => return Poll::Pending,
        }
    })
    .await?;
    Ok((answer, conn))
}

/// Why a connection gave no answer: a write the upstream's close refused, before any answer,
/// means the request never reached it; otherwise the request may have, and is not resent.
fn unanswered(write_error: Option<io::Error>, heard: bool) -> Exchange {
    match write_error {
        Some(e) if is_closed(&e) && !heard => Exchange::Unwritten,
        Some(e) => Exchange::Failed(H1Error::Io(e)),
        None => Exchange::Failed(H1Error::Closed),
    }
}

/// The peer's close, seen on a write.
fn is_closed(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
    )
}

/// The response head at the start of `buf` and its length, `None` while incomplete.
fn parse_head(buf: &[u8]) -> Result<Option<(usize, Answer)>, &'static str> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut fields);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Err("the response head is over 64 KiB")
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err("over 128 header fields"),
        Err(_) => return Err("the response head does not parse"),
    };
    if len > MAX_HEAD {
        return Err("the response head is over 64 KiB");
    }
    let code = parsed.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| "the status code is out of range")?;
    let version = match parsed.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    // The head's bytes in one allocation of their own, the values slices of it: a value kept
    // longer than the answer (a header copied to the client) holds no read buffer.
    let bytes = Bytes::copy_from_slice(&buf[..len]);
    let mut headers = HeaderMap::with_capacity(parsed.headers.len());
    for field in parsed.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| "a header name is invalid")?;
        let start = field.value.as_ptr() as usize - buf.as_ptr() as usize;
        let value = HeaderValue::from_maybe_shared(bytes.slice(start..start + field.value.len()))
            .map_err(|_| "a header value is invalid")?;
        headers.append(name, value);
    }
    let (framing, delimited) = framing(status, version, &headers)?;
    let reusable = delimited && version == Version::HTTP_11 && !asks_close(&headers);
    let keep_alive = keep_alive_timeout(&headers);
    Ok(Some((
        len,
        Answer {
            status,
            version,
            headers,
            framing,
            reusable,
            keep_alive,
        },
    )))
}

/// How the body is framed (RFC 9112 §6.3), and whether its end leaves the connection usable.
fn framing(
    status: StatusCode,
    version: Version,
    headers: &HeaderMap,
) -> Result<(Framing, bool), &'static str> {
    if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((Framing::Length(0), true));
    }
    let length = content_length(headers)?;
    if headers.contains_key(http::header::TRANSFER_ENCODING) {
        // HTTP/1.0 has no transfer codings: a peer that sends one frames bodies some way
        // of its own (RFC 9112 §6.1).
        if version == Version::HTTP_10 {
            return Err("transfer-encoding in an HTTP/1.0 answer");
        }
        // The last coding decides; a length beside it is ignored, and a connection that said
        // both (a smuggling shape) is not trusted with another request.
        let chunked = headers
            .get_all(http::header::TRANSFER_ENCODING)
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        return Ok(if chunked {
            (Framing::Chunked(Chunked::Size), length.is_none())
        } else {
            (Framing::Close, false)
        });
    }
    Ok(match length {
        Some(n) => (Framing::Length(n), true),
        None => (Framing::Close, false),
    })
}

/// The `content-length`, when the answer gives one; lengths that disagree are an error.
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, &'static str> {
    let mut length = None;
    for value in headers.get_all(http::header::CONTENT_LENGTH) {
        let text = value
            .to_str()
            .map_err(|_| "content-length is not a number")?;
        for part in text.split(',') {
            let part = part.trim();
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err("content-length is not a number");
            }
            let n: u64 = part.parse().map_err(|_| "content-length is out of range")?;
            if length.is_some_and(|l| l != n) {
                return Err("content-length values disagree");
            }
            length = Some(n);
        }
    }
    Ok(length)
}

/// The `timeout=N` of a `Keep-Alive` header.
fn keep_alive_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("keep-alive")?.to_str().ok()?;
    value.split(',').find_map(|param| {
        let (name, n) = param.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("timeout") {
            return None;
        }
        n.trim().parse::<u64>().ok().map(Duration::from_secs)
    })
}

/// Whether the answer's `Connection` header says `close`.
fn asks_close(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("close"))
}

/// Where a body's reading stands.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Framing {
    /// This many bytes still to come.
    Length(u64),
    Chunked(Chunked),
    /// Until the upstream closes the connection.
    Close,
    /// Read to its end.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Chunked {
    /// At a chunk-size line.
    Size,
    /// This many bytes of the chunk's data to come.
    Data(u64),
    /// At the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one; this many trailer bytes seen.
    Trailers(usize),
}

/// What one decoding step found.
#[derive(Debug, PartialEq)]
enum Decoded {
    Data(Bytes),
    /// The body's end.
    End,
    /// More bytes must be read.
    More,
}

impl Framing {
    fn is_done(&self) -> bool {
        matches!(self, Framing::Done | Framing::Length(0))
    }

    /// The next piece of the body in `conn`'s unread bytes.
    fn decode(&mut self, conn: &mut Conn) -> Result<Decoded, ReadError> {
        loop {
            let unread = conn.buf.len();
            match self {
                Framing::Done | Framing::Length(0) => {
                    *self = Framing::Done;
                    return Ok(Decoded::End);
                }
                _ if unread == 0 => return Ok(Decoded::More),
                Framing::Length(left) => {
                    let n = (*left).min(unread as u64);
                    *left -= n;
                    return Ok(Decoded::Data(conn.take(n as usize)));
                }
                Framing::Close => return Ok(Decoded::Data(conn.take(unread))),
                Framing::Chunked(Chunked::Size) => {
                    let Some((line, size)) =
                        chunk_size_line(&conn.buf).map_err(ReadError::Malformed)?
                    else {
                        return Ok(Decoded::More);
                    };
                    let _ = conn.take(line);
                    *self = Framing::Chunked(if size == 0 {
                        Chunked::Trailers(0)
                    } else {
                        Chunked::Data(size)
                    });
                }
                Framing::Chunked(Chunked::Data(left)) => {
                    let n = (*left).min(unread as u64);
                    *left -= n;
                    if *left == 0 {
                        *self = Framing::Chunked(Chunked::DataEnd);
                    }
                    return Ok(Decoded::Data(conn.take(n as usize)));
                }
                Framing::Chunked(Chunked::DataEnd) => {
                    if unread < 2 {
                        if conn.buf[0] != b'\r' {
                            return Err(ReadError::Malformed("no CRLF after a chunk's data"));
                        }
                        return Ok(Decoded::More);
                    }
                    if &conn.buf[..2] != b"\r\n" {
                        return Err(ReadError::Malformed("no CRLF after a chunk's data"));
                    }
                    let _ = conn.take(2);
                    *self = Framing::Chunked(Chunked::Size);
                }
                Framing::Chunked(Chunked::Trailers(seen)) => {
                    let Some(lf) = conn.buf.iter().position(|&b| b == b'\n') else {
                        if *seen + unread > MAX_TRAILERS {
                            return Err(ReadError::Malformed("the trailers are over 16 KiB"));
                        }
                        return Ok(Decoded::More);
                    };
                    if lf == 0 || conn.buf[lf - 1] != b'\r' {
                        return Err(ReadError::Malformed("a trailer line does not end in CRLF"));
                    }
                    let line = &conn.buf[..lf - 1];
                    if line.is_empty() {
                        let _ = conn.take(lf + 1);
                        *self = Framing::Done;
                        return Ok(Decoded::End);
                    }
                    // A field, not the rest of a body an upstream framed wrongly.
                    if matches!(line[0], b' ' | b'\t') || !line.contains(&b':') {
                        return Err(ReadError::Malformed("a trailer line is not a field"));
                    }
                    *seen += lf + 1;
                    if *seen > MAX_TRAILERS {
                        return Err(ReadError::Malformed("the trailers are over 16 KiB"));
                    }
                    let _ = conn.take(lf + 1);
                }
            }
        }
    }
}

/// The chunk-size line at the start of `buf` (RFC 9112 §7.1: one or more hex digits, then
/// optional whitespace and extensions, then CRLF): its length and the size; `None` while
/// incomplete. Stricter than the RFC's readers need be in one way only: a bare LF anywhere in
/// the line is an error, as a peer that ends lines at LF would frame the body otherwise.
fn chunk_size_line(buf: &[u8]) -> Result<Option<(usize, u64)>, &'static str> {
    let window = &buf[..buf.len().min(MAX_CHUNK_LINE)];
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        if buf.len() >= MAX_CHUNK_LINE {
            return Err("a chunk-size line is over 16 KiB");
        }
        return Ok(None);
    };
    if lf == 0 || window[lf - 1] != b'\r' {
        return Err("a chunk-size line does not end in CRLF");
    }
    let line = &window[..lf - 1];
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err("a chunk has no size");
    }
    let mut size: u64 = 0;
    for &digit in &line[..digits] {
        let value = u64::from((digit as char).to_digit(16).unwrap_or(0));
        size = size
            .checked_mul(16)
            .and_then(|s| s.checked_add(value))
            .ok_or("a chunk size is out of range")?;
    }
    let rest = &line[digits..];
    let rest = &rest[rest
        .iter()
        .take_while(|b| matches!(b, b' ' | b'\t'))
        .count()..];
    if !rest.is_empty() && rest[0] != b';' {
        return Err("a chunk size is followed by something other than extensions");
    }
    if rest.contains(&b'\r') {
        return Err("a chunk extension holds a CR");
    }
    Ok(Some((lf + 1, size)))
}

/// A response body read off its connection when polled. At its end the connection goes back to
/// the pool; dropped before, it is closed.
pub struct Body {
    /// `None` once the body ended (or failed).
    conn: Option<Conn>,
    framing: Framing,
    reusable: bool,
    pool: Weak<H1Pool>,
}

impl Body {
    /// The body ended with its connection (closed, failed): nothing more comes.
    fn fail(&mut self) {
        self.framing = Framing::Done;
        self.conn = None;
    }

    /// The body is read: its connection goes back to the pool if it can carry another request.
    fn finish(&mut self) {
        self.framing = Framing::Done;
        let conn = self.conn.take();
        if let (Some(conn), true, Some(pool)) = (conn, self.reusable, self.pool.upgrade()) {
            pool.put(conn);
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = ReadError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ReadError>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let decoded = this.framing.decode(conn);
            match decoded {
                Ok(Decoded::Data(data)) => {
                    if this.framing.is_done() {
                        // The last bytes: the connection is free before they are handed on.
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Decoded::End) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(Decoded::More) => {}
                Err(e) => {
                    this.fail();
                    return Poll::Ready(Some(Err(e)));
                }
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if this.framing == Framing::Close => {
                    this.fail();
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    this.fail();
                    return Poll::Ready(Some(Err(ReadError::Closed)));
                }
                Ok(_) => {}
                Err(e) => {
                    this.fail();
                    return Poll::Ready(Some(Err(ReadError::Io(e))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing.is_done()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self.framing {
            Framing::Length(n) => http_body::SizeHint::with_exact(n),
            Framing::Done => http_body::SizeHint::with_exact(0),
            _ => http_body::SizeHint::default(),
        }
    }
}

#[cfg(test)]
#[path = "h1_tests.rs"]
mod tests;

//! Cleartext HTTP/1.1 upstream connections driven by the request that uses them, in its own
//! task, and a small idle pool of them.
//!
//! hyper's pooled client runs every connection in a task of its own and hands a body over
//! through a one-item channel: each SSE event of a stream then costs a wake-up of that task and
//! one of the stream's (often on the other worker thread), and the events of one upstream read
//! never reach the door together, so each is its own client write. Here the connection's future
//! is polled by the response body itself ([`Body`]): every poll of the body first lets the
//! connection read and decode, then takes what it decoded. Events that came in one upstream
//! read are all at hand in one poll of the door (`chat::batches` sends them in one write), and
//! no other task is woken. A paced stream is unchanged: the body's poll waits on the socket.
//!
//! Not for TLS or HTTP/2 upstreams (hyper's pooled client keeps serving those): an HTTPS
//! upstream is far away, where a wake-up per event costs nothing next to the network.
//!
//! The pool: a connection whose answer was read to its end goes back, the most recent taken
//! first, at most `max_idle` kept; one idle longer than `idle_timeout` is closed when the pool
//! is next touched or by the reaper (every `idle_timeout`). A connection dropped before its
//! answer ended (the client went away) is closed, and so is the upstream request with it.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request};
use http_body::Frame;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::{Builder, Connection, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

type Conn = Connection<TokioIo<TcpStream>, Full<Bytes>>;

/// One connection: the request half and the connection future hyper drives it with.
struct Link {
    send: SendRequest<Full<Bytes>>,
    conn: Driver,
}

/// The connection future, polled until it ends and never after.
struct Driver {
    conn: Conn,
    ended: bool,
}

impl Driver {
    /// Lets the connection make progress; `true` once it has ended (closed or failed).
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.ended {
            self.ended = Pin::new(&mut self.conn).poll(cx).is_ready();
        }
        self.ended
    }
}

impl Link {
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        self.conn.drive(cx)
    }
}

struct Idle {
    link: Link,
    since: Instant,
}

/// Why a request on a driven connection failed.
#[derive(Debug)]
pub enum H1Error {
    /// No connection could be made (DNS, refused, timeout).
    Connect(std::io::Error),
    /// The connection failed or closed before the response head.
    Http(hyper::Error),
    /// A new connection closed before the request could be written.
    Closed,
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
            H1Error::Http(_) => f.write_str("client error (SendRequest)"),
            H1Error::Closed => f.write_str(
                "client error (SendRequest): the connection closed before the request was sent",
            ),
        }
    }
}

impl std::error::Error for H1Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            H1Error::Connect(e) => Some(e),
            H1Error::Http(e) => Some(e),
            H1Error::Closed => None,
        }
    }
}

/// The upstream's address and the pool of idle connections to it.
pub struct H1Pool {
    /// `host:port`, as connected to.
    authority: String,
    /// The `Host` header every request carries (hyper's connection sends none of its own).
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
            read_buffer,
            max_idle,
            idle_timeout,
            idle: Mutex::new(Vec::new()),
            reaper: std::sync::Once::new(),
        })
    }

    /// Sends `request` (its URI in origin form) and resolves at the response head. A reused
    /// connection that turns out closed before the request went out is replaced by a new one.
    pub async fn request(
        self: &Arc<Self>,
        mut request: Request<Full<Bytes>>,
    ) -> Result<http::Response<Body>, H1Error> {
        request
            .headers_mut()
            .insert(http::header::HOST, self.host.clone());
        if let Some(link) = self.take().await {
            match send(link, request).await {
                Ok((head, link)) => return Ok(self.response(head, link)),
                // Not written: the idle connection had closed; a fresh one takes it.
                Err(Unsent::Again(again)) => request = *again,
                Err(Unsent::Failed(e)) => return Err(H1Error::Http(e)),
            }
        }
        let link = self.connect().await?;
        match send(link, request).await {
            Ok((head, link)) => Ok(self.response(head, link)),
            Err(Unsent::Again(_)) => Err(H1Error::Closed),
            Err(Unsent::Failed(e)) => Err(H1Error::Http(e)),
        }
    }

    fn response(
        self: &Arc<Self>,
        head: http::Response<Incoming>,
        link: Link,
    ) -> http::Response<Body> {
        head.map(|incoming| Body {
            incoming,
            link: Some(link),
            pool: Arc::downgrade(self),
        })
    }

    async fn connect(&self) -> Result<Link, H1Error> {
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(&self.authority))
            .await
            .map_err(|_| {
                H1Error::Connect(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "tcp connect error: connection timed out",
                ))
            })?
            .map_err(|e| {
                H1Error::Connect(std::io::Error::new(
                    e.kind(),
                    format!("tcp connect error: {e}"),
                ))
            })?;
        let _ = tcp.set_nodelay(true);
        let (send, conn) = Builder::new()
            .read_buf_exact_size(Some(self.read_buffer))
            .handshake(TokioIo::new(tcp))
            .await
            .map_err(H1Error::Http)?;
        Ok(Link {
            send,
            conn: Driver { conn, ended: false },
        })
    }

    /// The most recently used idle connection that is still open and ready.
    async fn take(self: &Arc<Self>) -> Option<Link> {
        loop {
            let idle = {
                let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
                let now = Instant::now();
                idle.retain(|i| now.duration_since(i.since) < self.idle_timeout);
                idle.pop()
            }?;
            let mut link = idle.link;
            // One poll: a connection the upstream closed while idle ends here; an open one is
            // ready for a request.
            let ready = std::future::poll_fn(|cx| {
                if link.drive(cx) {
                    return Poll::Ready(false);
                }
                Poll::Ready(matches!(link.send.poll_ready(cx), Poll::Ready(Ok(()))))
            })
            .await;
            if ready {
                return Some(link);
            }
        }
    }

    /// A connection whose answer was read to its end.
    fn put(self: &Arc<Self>, mut link: Link) {
        // The connection settles to idle (or closes, if the upstream asked to close).
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        if link.drive(&mut cx) || !matches!(link.send.poll_ready(&mut cx), Poll::Ready(Ok(()))) {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() >= self.max_idle {
            return;
        }
        idle.push(Idle {
            link,
            since: Instant::now(),
        });
        drop(idle);
        self.reaper.call_once(|| self.start_reaper());
    }

    /// Closes connections idle past the timeout even when no request comes to do it.
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
                let waker = futures_util::task::noop_waker();
                let mut cx = Context::from_waker(&waker);
                let stale: Vec<Idle> = {
                    let mut idle = pool.idle.lock().unwrap_or_else(|e| e.into_inner());
                    let now = Instant::now();
                    let mut stale = Vec::new();
                    for mut i in std::mem::take(&mut *idle) {
                        // One poll each: a connection the upstream closed while idle ends
                        // here, and its socket is let go now rather than at its timeout.
                        if now.duration_since(i.since) >= pool.idle_timeout || i.link.drive(&mut cx)
                        {
                            stale.push(i);
                        } else {
                            idle.push(i);
                        }
                    }
                    stale
                };
                // Closed outside the lock.
                drop(stale);
            }
        });
    }
}

/// A request that did not get its head.
enum Unsent {
    /// Never written (the connection was closed): it may go on another connection.
    Again(Box<Request<Full<Bytes>>>),
    Failed(hyper::Error),
}

/// `request` on `link`, driving the connection until the response head.
async fn send(
    mut link: Link,
    request: Request<Full<Bytes>>,
) -> Result<(http::Response<Incoming>, Link), Unsent> {
    let Link { send, conn } = &mut link;
    let mut sending = std::pin::pin!(send.try_send_request(request));
    let result = std::future::poll_fn(|cx| {
        // A connection that ended here (the upstream answered and closed) stays ended: the
        // body's reads must not poll its finished future again.
        conn.drive(cx);
        sending.as_mut().poll(cx)
    })
    .await;
    match result {
        Ok(head) => Ok((head, link)),
        Err(mut e) => match e.take_message() {
            Some(request) => Err(Unsent::Again(Box::new(request))),
            None => Err(Unsent::Failed(e.into_error())),
        },
    }
}

/// A response body read through its connection: each poll drives the connection first. At its
/// end the connection goes back to the pool; dropped before, it is closed.
pub struct Body {
    incoming: Incoming,
    link: Option<Link>,
    pool: Weak<H1Pool>,
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let mut ended = false;
        if let Some(link) = this.link.as_mut() {
            ended = link.drive(cx);
        }
        let polled = Pin::new(&mut this.incoming).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => {
                if let (Some(link), Some(pool)) = (this.link.take(), this.pool.upgrade()) {
                    if !ended {
                        pool.put(link);
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => this.link = None,
            _ if ended => {
                // The connection is gone; what it decoded is still in `incoming`.
                this.link = None;
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.incoming.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;

    use super::*;

    /// An upstream that answers `ok` on keep-alive connections, counting the connections.
    async fn upstream() -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from_static(b"ok"),
                        )))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        (addr, accepted)
    }

    fn request() -> Request<Full<Bytes>> {
        Request::post("/v1/chat/completions")
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap()
    }

    #[tokio::test]
    async fn an_answer_read_to_its_end_leaves_its_connection_for_the_next() {
        let (addr, accepted) = upstream().await;
        let host = HeaderValue::from_str(&addr).unwrap();
        let pool = H1Pool::new(
            addr,
            host,
            Duration::from_secs(1),
            4096,
            8,
            Duration::from_secs(5),
        );
        for _ in 0..3 {
            let response = pool.request(request()).await.unwrap();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection, reused");
        // An answer dropped before its end takes its connection with it.
        drop(pool.request(request()).await.unwrap());
        let response = pool.request(request()).await.unwrap();
        let _ = response.into_body().collect().await.unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn no_upstream_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let host = HeaderValue::from_str(&addr).unwrap();
        let pool = H1Pool::new(
            addr,
            host,
            Duration::from_secs(1),
            4096,
            8,
            Duration::from_secs(5),
        );
        let Err(error) = pool.request(request()).await else {
            panic!("no upstream, yet an answer");
        };
        assert!(error.is_connect(), "{error}");
    }

    /// An upstream that answers and closes at once (`connection: close`, then EOF in the same
    /// breath): the connection's future ends while the head is awaited or the body read; the
    /// answer still arrives whole, nothing closed goes back to the pool, and the next request
    /// gets a new connection.
    #[tokio::test]
    async fn an_upstream_that_closes_after_each_answer_still_answers_each() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut buf = [0u8; 1024];
                    // The request: its head, then its 2-byte body.
                    while !seen.windows(6).any(|w| w == b"\r\n\r\n{}") {
                        match tcp.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    let answer =
                        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nbye!\n";
                    let _ = tcp.write_all(answer).await;
                    let _ = tcp.shutdown().await;
                });
            }
        });
        let host = HeaderValue::from_str(&addr).unwrap();
        let pool = H1Pool::new(
            addr,
            host,
            Duration::from_secs(1),
            4096,
            8,
            Duration::from_secs(5),
        );
        for i in 1..=3 {
            let response = pool.request(request()).await.unwrap();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"bye!\n");
            assert_eq!(
                accepted.load(Ordering::SeqCst),
                i,
                "a new connection each time"
            );
        }
    }
}

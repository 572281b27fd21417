//! What a connection's watchdog knows: the phase of the connection ([`Activity`]), kept by
//! the socket wrapper ([`Watched`]: the first byte of a head, the h2c preface) and by the
//! request guard ([`Busy`]: a request or stream open). See [`super::conn`] for what the
//! watchdog does with it.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use super::cork::Socket;
use crate::config::ClientLimits;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Fresh,
    Head,
    Idle,
    Busy,
}

struct State {
    phase: Phase,
    /// When the phase began.
    since: Instant,
    in_flight: usize,
    /// Bytes of the h2c preface seen so far, while the protocol is still unknown.
    sniffed: Option<usize>,
    h2: bool,
    /// Set when the watchdog wants the socket back from hyper to answer a slow head.
    reclaim: Option<oneshot::Sender<TcpStream>>,
    /// When the watchdog wakes next. It is woken early only by a change that brings the
    /// deadline before this, so that a request's start and end cost it nothing.
    armed: Option<Instant>,
}

/// What the watchdog knows of a connection. Updated on each request's start and end and on
/// the first byte read while no request is open; nothing per byte beyond one atomic load.
pub struct Activity {
    header_timeout: Duration,
    idle_timeout: Duration,
    /// Reads matter (they may begin a head) only while no request is open on HTTP/1.
    watch_reads: AtomicBool,
    state: Mutex<State>,
    pub changed: Notify,
}

impl Activity {
    pub fn new(limits: &ClientLimits) -> Arc<Self> {
        Arc::new(Activity {
            header_timeout: limits.header_timeout,
            idle_timeout: limits.idle_timeout,
            watch_reads: AtomicBool::new(true),
            state: Mutex::new(State {
                phase: Phase::Fresh,
                since: Instant::now(),
                in_flight: 0,
                sniffed: Some(0),
                h2: false,
                reclaim: None,
                armed: None,
            }),
            changed: Notify::new(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is plain data, valid after any panic mid-update.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether these bytes completed the h2c preface.
    fn on_read(&self, bytes: &[u8]) -> bool {
        if bytes.is_empty() || !self.watch_reads.load(Ordering::Relaxed) {
            return false;
        }
        let mut s = self.state();
        if let Some(seen) = s.sniffed {
            let want = &H2_PREFACE[seen..];
            let n = want.len().min(bytes.len());
            if bytes[..n] == want[..n] {
                if seen + n == H2_PREFACE.len() {
                    // An h2c connection: from now on frames, not heads; idle until a stream.
                    s.sniffed = None;
                    s.h2 = true;
                    if s.phase != Phase::Busy {
                        s.phase = Phase::Idle;
                        s.since = Instant::now();
                    }
                    self.watch_reads.store(false, Ordering::Relaxed);
                    self.phase_changed(&s);
                    return true;
                }
                s.sniffed = Some(seen + n);
            } else {
                s.sniffed = None;
            }
        }
        if matches!(s.phase, Phase::Fresh | Phase::Idle) {
            s.phase = Phase::Head;
            s.since = Instant::now();
            self.phase_changed(&s);
        }
        if s.sniffed.is_none() {
            self.watch_reads.store(false, Ordering::Relaxed);
        }
        false
    }

    /// When the connection is to be closed if nothing changes; `None` while busy.
    fn deadline_of(&self, s: &State) -> Option<Instant> {
        match s.phase {
            Phase::Fresh | Phase::Head => Some(s.since + self.header_timeout),
            Phase::Idle => Some(s.since + self.idle_timeout),
            Phase::Busy => None,
        }
    }

    /// Wakes the watchdog if the new phase's deadline comes before its next wake-up.
    fn phase_changed(&self, s: &State) {
        let deadline = self.deadline_of(s);
        if deadline.is_some_and(|d| s.armed.is_none_or(|armed| d < armed)) {
            self.changed.notify_one();
        }
    }

    /// When the watchdog should look next, remembered as its wake-up: the deadline, or while
    /// busy one idle timeout from now (the request's end makes a later deadline than that).
    pub fn arm(&self) -> Instant {
        let mut s = self.state();
        let at = self
            .deadline_of(&s)
            .unwrap_or_else(|| Instant::now() + self.idle_timeout);
        s.armed = Some(at);
        at
    }

    /// Whether the deadline has passed (never while busy).
    pub fn expired(&self) -> bool {
        let s = self.state();
        self.deadline_of(&s).is_some_and(|d| d <= Instant::now())
    }

    pub fn is_h2(&self) -> bool {
        self.state().h2
    }

    /// When an HTTP/1 head has begun and stalled: a receiver for the socket, which comes back
    /// once hyper's connection is dropped (if hyper left no response half written).
    pub fn reclaim_for_slow_head(&self) -> Option<oneshot::Receiver<TcpStream>> {
        let mut s = self.state();
        if s.phase != Phase::Head || s.h2 || s.sniffed.is_some() {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        s.reclaim = Some(tx);
        Some(rx)
    }
}

/// Marks its connection busy from a request's start until its response body is dropped.
pub struct Busy(Arc<Activity>);

impl Busy {
    pub fn start(activity: &Arc<Activity>) -> Busy {
        let mut s = activity.state();
        s.in_flight += 1;
        s.phase = Phase::Busy;
        s.sniffed = None;
        activity.watch_reads.store(false, Ordering::Relaxed);
        drop(s);
        Busy(activity.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let activity = &self.0;
        let mut s = activity.state();
        s.in_flight -= 1;
        if s.in_flight == 0 {
            s.phase = Phase::Idle;
            s.since = Instant::now();
            if !s.h2 {
                activity.watch_reads.store(true, Ordering::Relaxed);
            }
            activity.phase_changed(&s);
        }
    }
}

/// The client socket ([`Socket`], shared with the connection's task), telling [`Activity`]
/// about bytes read, corking the socket once the connection is h2c, and handing the socket
/// back when [`Activity::reclaim_for_slow_head`] asked for it.
pub struct Watched {
    socket: Arc<Socket>,
    activity: Arc<Activity>,
    /// Bytes written and not yet flushed: a response is half way out.
    unflushed: bool,
}

impl Watched {
    pub fn new(socket: Arc<Socket>, activity: Arc<Activity>) -> Self {
        Watched {
            socket,
            activity,
            unflushed: false,
        }
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        let reclaim = self.activity.state().reclaim.take();
        if let (Some(tx), false) = (reclaim, self.unflushed) {
            if let Some(tcp) = self.socket.take() {
                let _ = tx.send(tcp);
            }
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = this.socket.poll_read(cx, buf);
        if poll.is_ready() && this.activity.on_read(&buf.filled()[before..]) {
            this.socket.cork();
        }
        poll
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = this.socket.poll_write(cx, buf);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            this.unflushed = true;
        }
        poll
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = this.socket.poll_write_vectored(cx, bufs);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            this.unflushed = true;
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.socket.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = this.socket.poll_flush(cx);
        if matches!(poll, Poll::Ready(Ok(()))) {
            this.unflushed = false;
        }
        poll
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.socket.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limits() -> ClientLimits {
        ClientLimits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(75),
            max_connections: None,
        }
    }

    fn phase(a: &Activity) -> Phase {
        a.state().phase
    }

    fn deadline(a: &Activity) -> Option<Instant> {
        a.deadline_of(&a.state())
    }

    /// Whether the watchdog was woken since it last looked.
    fn woken(a: &Activity) -> bool {
        use futures_util::FutureExt;
        a.changed.notified().now_or_never().is_some()
    }

    /// Two ends of a loopback connection: ours wrapped as hyper gets it, and the peer's.
    async fn watched_pair() -> (Watched, Arc<Socket>, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (ours, _) = listener.accept().await.unwrap();
        let socket = Arc::new(Socket::new(ours));
        let watched = Watched::new(socket.clone(), Activity::new(&limits()));
        (watched, socket, peer)
    }

    /// What the peer has received so far, waiting a moment for anything in flight.
    async fn received(peer: &mut TcpStream) -> Vec<u8> {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0; 256];
        match tokio::time::timeout(Duration::from_millis(100), peer.read(&mut buf)).await {
            Ok(n) => buf[..n.unwrap()].to_vec(),
            Err(_) => Vec::new(),
        }
    }

    #[tokio::test]
    async fn an_h2c_connection_is_corked_once_its_preface_is_read_and_http1_never() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut watched, socket, mut peer) = watched_pair().await;
        peer.write_all(H2_PREFACE).await.unwrap();
        let mut preface = vec![0; H2_PREFACE.len()];
        watched.read_exact(&mut preface).await.unwrap();
        watched.write_all(b"SETTINGS").await.unwrap();
        watched.flush().await.unwrap();
        assert_eq!(received(&mut peer).await, b"", "held until the turn ends");
        std::future::poll_fn(|cx| socket.poll_send_held(cx))
            .await
            .unwrap();
        assert_eq!(received(&mut peer).await, b"SETTINGS");

        let (mut watched, _socket, mut peer) = watched_pair().await;
        peer.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut head = vec![0; 18];
        watched.read_exact(&mut head).await.unwrap();
        watched.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        assert_eq!(received(&mut peer).await, b"HTTP/1.1 200 OK\r\n");
    }

    #[tokio::test(start_paused = true)]
    async fn the_watchdog_is_woken_only_when_the_deadline_comes_sooner() {
        let a = Activity::new(&limits());
        let at = a.arm();
        assert_eq!(Some(at), deadline(&a), "fresh: the header deadline");
        tokio::time::advance(Duration::from_secs(1)).await;
        a.on_read(b"G");
        assert!(!woken(&a), "a head begun later ends later");
        let busy = Busy::start(&a);
        drop(busy);
        assert!(!woken(&a), "idle until later than the head's deadline");
        // The watchdog wakes at the head's deadline and arms for the idle one.
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(!a.expired());
        let idle = a.arm();
        assert_eq!(Some(idle), deadline(&a));
        // A new head has the header timeout, sooner than the idle deadline: wake.
        tokio::time::advance(Duration::from_secs(1)).await;
        a.on_read(b"P");
        assert!(woken(&a));
        let head = a.arm();
        assert!(head < idle);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(a.expired(), "the head did not come whole in time");
        // While busy nothing expires; the watchdog only looks again an idle timeout later.
        let busy = Busy::start(&a);
        assert!(!a.expired());
        let recheck = a.arm();
        assert_eq!(recheck, Instant::now() + limits().idle_timeout);
        tokio::time::advance(Duration::from_secs(5)).await;
        drop(busy);
        assert!(!woken(&a), "its end brings no deadline before the recheck");
        assert!(deadline(&a).unwrap() > recheck);
    }

    #[test]
    fn http1_phases_follow_heads_and_requests() {
        let a = Activity::new(&limits());
        let fresh = deadline(&a).unwrap();
        a.on_read(b"GE");
        assert_eq!(phase(&a), Phase::Head);
        assert!(!a.is_h2());
        // Further bytes of the same head do not move its deadline.
        let head = deadline(&a).unwrap();
        assert!(head >= fresh);
        a.on_read(b"T / HTTP/1.1\r\n");
        assert_eq!(deadline(&a), Some(head));
        let busy = Busy::start(&a);
        assert_eq!(deadline(&a), None);
        drop(busy);
        assert_eq!(phase(&a), Phase::Idle);
        a.on_read(b"P");
        assert_eq!(
            phase(&a),
            Phase::Head,
            "the next head starts a header clock"
        );
    }

    #[test]
    fn h2c_is_idle_once_the_preface_is_in_and_busy_while_a_stream_is_open() {
        let a = Activity::new(&limits());
        assert!(!a.on_read(&H2_PREFACE[..10]));
        assert_eq!(
            phase(&a),
            Phase::Head,
            "a preface is a head: header timeout"
        );
        assert!(
            a.on_read(&H2_PREFACE[10..]),
            "the preface is complete: cork"
        );
        assert!(a.is_h2());
        assert_eq!(phase(&a), Phase::Idle);
        let one = Busy::start(&a);
        let two = Busy::start(&a);
        drop(one);
        assert_eq!(phase(&a), Phase::Busy, "a stream is still open");
        drop(two);
        assert_eq!(phase(&a), Phase::Idle);
        // Frames on an idle h2 connection (PING, SETTINGS) do not start a header clock.
        a.on_read(b"\x00\x00\x08\x06");
        assert_eq!(phase(&a), Phase::Idle);
    }
}

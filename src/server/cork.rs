//! The client socket under hyper, shared with the connection's task so that an HTTP/2
//! connection's writes leave in one write per turn of that task, not one per flush.
//!
//! h2 copies a small frame into its write buffer but queues a DATA frame over 256 bytes as it
//! is, and flushes the socket before it takes the next frame. So a streamed call whose chunks
//! came in one upstream read, or a unary answer over 256 bytes, went out in two writes: the
//! DATA frame, then the trailers (a syscall and a wake-up of the peer more than needed), and
//! calls multiplexed on one connection paid one write per large frame. Once a connection is
//! known to be h2c ([`Socket::cork`]), its writes and flushes are held here and
//! [`Socket::poll_send_held`] sends them together when hyper's connection has done all it
//! could in this turn (`conn::serve` calls it right after polling the connection), so nothing
//! waits for a later event. Netty's `FlushConsolidationHandler` does the same. HTTP/1 is left
//! as it is: hyper already writes a response head and body at once.

use std::io;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard};
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Held bytes past this are sent before more are taken, so a fast writer is held back by the
/// socket (the peer reading slowly) as before, with at most this much more in memory.
const HELD_MAX: usize = 64 * 1024;

/// A held buffer that grew past this is given back once sent: most turns hold a few KiB, and
/// an idle connection should not keep a large one.
const HELD_KEEP: usize = 16 * 1024;

/// The socket, used by hyper's side ([`super::activity::Watched`]) and the connection's task.
/// Both run in the one task of the connection, so the lock is never contended.
pub struct Socket<T = TcpStream> {
    state: Mutex<State<T>>,
}

struct State<T> {
    /// `Some` until taken back for a slow head's answer, or dropped.
    io: Option<T>,
    corked: bool,
    held: Vec<u8>,
    /// How far `held` has been sent (a write may take part of it).
    sent: usize,
    /// A held write that failed: the next write or flush reports it to hyper.
    failed: Option<io::ErrorKind>,
}

impl<T: AsyncRead + AsyncWrite + Unpin> Socket<T> {
    pub fn new(io: T) -> Socket<T> {
        Socket {
            state: Mutex::new(State {
                io: Some(io),
                corked: false,
                held: Vec::new(),
                sent: 0,
                failed: None,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State<T>> {
        // The state stays consistent at every await point; a panic elsewhere leaves it usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// From now on writes are held until [`Socket::poll_send_held`].
    pub fn cork(&self) {
        self.state().corked = true;
    }

    /// The socket itself, for an answer written past hyper; `None` once taken.
    pub fn take(&self) -> Option<T> {
        self.state().io.take()
    }

    pub fn is_write_vectored(&self) -> bool {
        self.state()
            .io
            .as_ref()
            .is_some_and(|io| io.is_write_vectored())
    }

    pub fn poll_read(&self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.state().io()).poll_read(cx, buf)
    }

    pub fn poll_write_vectored(
        &self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut s = self.state();
        if !s.corked {
            return Pin::new(s.io()).poll_write_vectored(cx, bufs);
        }
        s.check()?;
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        if s.held.len() + len > HELD_MAX {
            ready!(s.poll_send(cx))?;
        }
        if len > HELD_MAX {
            // Nothing is held now, so order is kept: too big to copy, it goes as it is.
            return Pin::new(s.io()).poll_write_vectored(cx, bufs);
        }
        for b in bufs {
            s.held.extend_from_slice(b);
        }
        Poll::Ready(Ok(len))
    }

    pub fn poll_write(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    /// Corked, a flush is a promise: the bytes leave at the end of the turn.
    pub fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut s = self.state();
        if s.corked {
            s.check()?;
            return Poll::Ready(Ok(()));
        }
        Pin::new(s.io()).poll_flush(cx)
    }

    pub fn poll_shutdown(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut s = self.state();
        ready!(s.poll_send(cx))?;
        Pin::new(s.io()).poll_shutdown(cx)
    }

    /// Sends what is held. Pending while the socket takes no more (the task is woken when it
    /// does); an error is also kept for hyper's next write.
    pub fn poll_send_held(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.state().poll_send(cx)
    }
}

impl<T: AsyncWrite + Unpin> State<T> {
    fn io(&mut self) -> &mut T {
        self.io
            .as_mut()
            .expect("the socket is taken only when hyper is done with it")
    }

    fn check(&self) -> io::Result<()> {
        match self.failed {
            Some(kind) => Err(kind.into()),
            None => Ok(()),
        }
    }

    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check()?;
        while self.sent < self.held.len() {
            let Some(io) = self.io.as_mut() else {
                return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
            };
            // writev, as hyper's and h2's writes are: std's `write` on a socket is `send`,
            // which `/proc/PID/io`'s write-syscall count (the bench's) does not see.
            let rest = [io::IoSlice::new(&self.held[self.sent..])];
            match ready!(Pin::new(io).poll_write_vectored(cx, &rest)) {
                Ok(0) => return Poll::Ready(Err(self.fail(io::ErrorKind::WriteZero))),
                Ok(n) => self.sent += n,
                Err(e) => return Poll::Ready(Err(self.fail(e.kind()))),
            }
        }
        self.sent = 0;
        if self.held.capacity() > HELD_KEEP {
            self.held = Vec::new();
        } else {
            self.held.clear();
        }
        Poll::Ready(Ok(()))
    }

    fn fail(&mut self, kind: io::ErrorKind) -> io::Error {
        self.failed = Some(kind);
        self.held.clear();
        self.sent = 0;
        kind.into()
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use tokio::io::{AsyncReadExt, DuplexStream};

    use super::*;

    /// A duplex pipe that counts the writes it is given.
    struct Counted {
        io: DuplexStream,
        writes: usize,
    }

    impl AsyncRead for Counted {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Counted {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let poll = Pin::new(&mut self.io).poll_write(cx, buf);
            if poll.is_ready() {
                self.writes += 1;
            }
            poll
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_shutdown(cx)
        }
    }

    fn pair(pipe: usize) -> (Socket<Counted>, DuplexStream) {
        let (ours, peer) = tokio::io::duplex(pipe);
        (
            Socket::new(Counted {
                io: ours,
                writes: 0,
            }),
            peer,
        )
    }

    /// All of `bytes`, as hyper writes: a write too big to hold may be taken in part.
    async fn write(socket: &Socket<Counted>, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let n = poll_fn(|cx| socket.poll_write(cx, bytes)).await.unwrap();
            assert!(n > 0);
            bytes = &bytes[n..];
        }
    }

    fn writes(socket: &Socket<Counted>) -> usize {
        socket.state().io.as_ref().unwrap().writes
    }

    async fn read(peer: &mut DuplexStream, n: usize) -> Vec<u8> {
        let mut out = vec![0; n];
        peer.read_exact(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn a_corked_turn_leaves_in_one_write_in_order() {
        let (socket, mut peer) = pair(1 << 20);
        socket.cork();
        write(&socket, b"headers+data ").await;
        poll_fn(|cx| socket.poll_flush(cx)).await.unwrap();
        write(&socket, b"trailers").await;
        poll_fn(|cx| socket.poll_flush(cx)).await.unwrap();
        assert_eq!(writes(&socket), 0, "nothing leaves before the turn ends");
        poll_fn(|cx| socket.poll_send_held(cx)).await.unwrap();
        assert_eq!(writes(&socket), 1);
        assert_eq!(read(&mut peer, 21).await, b"headers+data trailers");
        // An empty turn writes nothing.
        poll_fn(|cx| socket.poll_send_held(cx)).await.unwrap();
        assert_eq!(writes(&socket), 1);
    }

    #[tokio::test]
    async fn uncorked_writes_go_straight_out() {
        let (socket, mut peer) = pair(1 << 20);
        write(&socket, b"HTTP/1.1 200 OK\r\n").await;
        assert_eq!(writes(&socket), 1);
        assert_eq!(read(&mut peer, 17).await, b"HTTP/1.1 200 OK\r\n");
    }

    #[tokio::test]
    async fn past_the_cap_what_is_held_goes_first_and_a_slow_peer_holds_the_writer_back() {
        // A pipe smaller than the cap: the peer's reading sets the pace.
        let (socket, mut peer) = pair(8 * 1024);
        socket.cork();
        let first = vec![1u8; HELD_MAX - 10];
        let second = vec![2u8; 100];
        let big = vec![3u8; HELD_MAX + 1];
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            peer.read_to_end(&mut all).await.unwrap();
            all
        });
        write(&socket, &first).await;
        write(&socket, &second).await;
        write(&socket, &big).await;
        poll_fn(|cx| socket.poll_send_held(cx)).await.unwrap();
        poll_fn(|cx| socket.poll_shutdown(cx)).await.unwrap();
        let all = reader.await.unwrap();
        let want: Vec<u8> = [first, second, big].concat();
        assert_eq!(all.len(), want.len());
        assert!(all == want, "bytes arrive in the order written");
    }

    #[tokio::test]
    async fn shutdown_sends_what_is_held_first() {
        let (socket, mut peer) = pair(1 << 20);
        socket.cork();
        write(&socket, b"GOAWAY").await;
        poll_fn(|cx| socket.poll_shutdown(cx)).await.unwrap();
        let mut all = Vec::new();
        peer.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"GOAWAY");
    }

    #[tokio::test]
    async fn a_failed_send_is_reported_to_the_next_write() {
        let (socket, peer) = pair(1 << 20);
        socket.cork();
        drop(peer);
        write(&socket, b"frames").await;
        let sent = poll_fn(|cx| socket.poll_send_held(cx)).await;
        assert!(sent.is_err(), "the peer is gone");
        let next = poll_fn(|cx| socket.poll_write(cx, b"more")).await;
        assert_eq!(next.unwrap_err().kind(), sent.unwrap_err().kind());
        assert!(poll_fn(|cx| socket.poll_flush(cx)).await.is_err());
    }
}

use std::sync::atomic::{AtomicUsize, Ordering};

use http_body::Body as _;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::*;

fn pool(addr: &str) -> Arc<H1Pool> {
    H1Pool::new(
        addr.to_owned(),
        HeaderValue::from_str(addr).unwrap(),
        Duration::from_secs(1),
        4096,
        8,
        Duration::from_secs(5),
    )
}

fn request() -> Request<Bytes> {
    Request::post("/v1/chat/completions")
        .header("authorization", "Bearer k")
        .body(Bytes::from_static(b"{}"))
        .unwrap()
}

/// What a scripted upstream did: the requests it read, one per answer, as bytes.
struct Seen {
    accepted: Arc<AtomicUsize>,
    requests: mpsc::UnboundedReceiver<Vec<u8>>,
}

/// Reads one request (head, then a `content-length` body) from `tcp`; `None` at its close.
async fn read_request(tcp: &mut TcpStream, pending: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |n| n.trim().parse().unwrap());
            let total = end + 4 + length;
            if pending.len() >= total {
                return Some(pending.drain(..total).collect());
            }
        }
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
        }
    }
}

/// An upstream that answers the requests on each connection with `answers` in turn, each
/// written in the pieces given (a pause between pieces, so they arrive as separate reads),
/// and closes the connection after the last.
async fn scripted(answers: Vec<Vec<&'static [u8]>>) -> (String, Seen) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let answers = answers.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut pending = Vec::new();
                for pieces in answers {
                    let Some(request) = read_request(&mut tcp, &mut pending).await else {
                        return;
                    };
                    let _ = tx.send(request);
                    for piece in pieces {
                        if tcp.write_all(piece).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            });
        }
    });
    (
        addr,
        Seen {
            accepted,
            requests: rx,
        },
    )
}

async fn body_of(response: Response<Body>) -> Result<Bytes, ReadError> {
    Ok(response.into_body().collect().await?.to_bytes())
}

#[tokio::test]
async fn the_request_goes_out_as_http_1_1_with_its_length_and_the_pools_host() {
    let ok: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    let (addr, mut seen) = scripted(vec![vec![ok]]).await;
    let response = pool(&addr).request(request()).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(&body_of(response).await.unwrap()[..], b"ok");
    let wire = String::from_utf8(seen.requests.recv().await.unwrap()).unwrap();
    assert_eq!(
        wire,
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer k\r\ncontent-length: 2\r\n\r\n{{}}"
        )
    );
}

#[tokio::test]
async fn a_large_request_body_arrives_whole() {
    let ok: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
    let (addr, mut seen) = scripted(vec![vec![ok]]).await;
    let big = Bytes::from(vec![b'x'; 3 * COALESCE]);
    let request = Request::post("/v1/embeddings").body(big.clone()).unwrap();
    let response = pool(&addr).request(request).await.unwrap();
    assert!(body_of(response).await.unwrap().is_empty());
    let wire = seen.requests.recv().await.unwrap();
    assert!(wire.ends_with(&big), "the body follows the head");
}

#[tokio::test]
async fn an_answer_read_to_its_end_leaves_its_connection_for_the_next() {
    let ok: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    let (addr, seen) = scripted(vec![vec![ok]; 5]).await;
    let pool = pool(&addr);
    for _ in 0..3 {
        let response = pool.request(request()).await.unwrap();
        assert_eq!(&body_of(response).await.unwrap()[..], b"ok");
    }
    assert_eq!(
        seen.accepted.load(Ordering::SeqCst),
        1,
        "one connection, reused"
    );
    // An answer dropped before its end takes its connection with it.
    let chunked: &[u8] = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n";
    let (addr, seen) = scripted(vec![vec![chunked], vec![ok]]).await;
    let pool = self::pool(&addr);
    let mut response = pool.request(request()).await.unwrap();
    let first = response.body_mut().frame().await.unwrap().unwrap();
    assert_eq!(first.data_ref().unwrap(), &Bytes::from_static(b"ok"));
    drop(response);
    let _ = pool.request(request()).await;
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn no_upstream_is_a_connect_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    let Err(error) = pool(&addr).request(request()).await else {
        panic!("no upstream, yet an answer");
    };
    assert!(error.is_connect(), "{error}");
    let chain = crate::upstream::dispatch::describe(&error);
    assert!(chain.contains("Connection refused"), "{chain}");
}

/// An upstream that answers and closes at once (`connection: close`, then EOF in the same
/// breath): the answer still arrives whole, nothing closed goes back to the pool, and the next
/// request gets a new connection.
#[tokio::test]
async fn an_upstream_that_closes_after_each_answer_still_answers_each() {
    let bye: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nbye!\n";
    let (addr, seen) = scripted(vec![vec![bye]]).await;
    let pool = pool(&addr);
    for i in 1..=3 {
        let response = pool.request(request()).await.unwrap();
        assert_eq!(&body_of(response).await.unwrap()[..], b"bye!\n");
        assert_eq!(
            seen.accepted.load(Ordering::SeqCst),
            i,
            "a new connection each time"
        );
    }
}

/// The upstream closes an idle keep-alive connection (its own idle timeout): the next request
/// is not lost on it but goes on a new connection.
#[tokio::test]
async fn a_connection_the_upstream_closed_while_idle_is_not_reused() {
    let ok: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    // One answer per connection, then the upstream closes it (with no `connection: close`).
    let (addr, seen) = scripted(vec![vec![ok]]).await;
    let pool = pool(&addr);
    for i in 1..=3 {
        let response = pool.request(request()).await.unwrap();
        assert_eq!(&body_of(response).await.unwrap()[..], b"ok");
        assert_eq!(seen.accepted.load(Ordering::SeqCst), i);
        // The close reaches the gateway's socket before the next request.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn chunked_answers_split_across_reads_come_whole_and_trailers_are_skipped() {
    let pieces: Vec<&'static [u8]> = vec![
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
        b"1e\r\ndata: {\"a\":1}\n\ndata: {\"b",
        b"\":2}\n\n\r",
        b"\n7;ext=\"x\"\r\ndata: [\r\n",
        b"9\r\nDONE]\n\n\r\n\r\n0\r\nx-trailer: 1\r\n",
        b"\r\n",
    ];
    let ok: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    let (addr, seen) = scripted(vec![pieces, vec![ok]]).await;
    let pool = pool(&addr);
    let response = pool.request(request()).await.unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert_eq!(
        &body_of(response).await.unwrap()[..],
        b"data: {\"a\":1}\n\ndata: {\"b\":2}\n\ndata: [DONE]\n\n\r\n"
    );
    let response = pool.request(request()).await.unwrap();
    assert_eq!(&body_of(response).await.unwrap()[..], b"ok");
    assert_eq!(
        seen.accepted.load(Ordering::SeqCst),
        1,
        "reused after chunked"
    );
}

#[tokio::test]
async fn interim_answers_are_skipped() {
    let pieces: Vec<&'static [u8]> = vec![
        b"HTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 201 Created\r\nx-request-id: r1\r\ncontent-length: 3\r\n\r\nyes",
    ];
    let (addr, _seen) = scripted(vec![pieces]).await;
    let response = pool(&addr).request(request()).await.unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["x-request-id"], "r1");
    assert!(!response.headers().contains_key("link"));
    assert_eq!(&body_of(response).await.unwrap()[..], b"yes");
}

#[tokio::test]
async fn a_body_framed_by_the_close_is_read_to_it_and_its_connection_not_kept() {
    let pieces: Vec<&'static [u8]> = vec![b"HTTP/1.1 200 OK\r\n\r\nall ", b"of it"];
    let (addr, seen) = scripted(vec![pieces]).await;
    let pool = pool(&addr);
    for i in 1..=2 {
        let response = pool.request(request()).await.unwrap();
        assert_eq!(&body_of(response).await.unwrap()[..], b"all of it");
        assert_eq!(seen.accepted.load(Ordering::SeqCst), i);
    }
}

#[tokio::test]
async fn a_body_cut_short_is_an_error_not_an_end() {
    let short: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf";
    let chunked: &[u8] = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\nhalf\r\n";
    for answer in [short, chunked] {
        let (addr, _seen) = scripted(vec![vec![answer]]).await;
        let response = pool(&addr).request(request()).await.unwrap();
        let error = body_of(response).await.unwrap_err();
        assert!(matches!(error, ReadError::Closed), "{error}");
    }
}

#[tokio::test]
async fn malformed_answers_are_errors_and_never_reused() {
    let cases: [(&'static [u8], &str); 5] = [
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok",
            "disagree",
        ),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: -2\r\n\r\nok",
            "not a number",
        ),
        (b"HTTP/1.1 2000 OK\r\n\r\n", "does not parse"),
        (b"SMTP ready\r\n\r\n", "does not parse"),
        (
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "protocol switch",
        ),
    ];
    for (answer, why) in cases {
        let (addr, _seen) = scripted(vec![vec![answer]]).await;
        let Err(error) = pool(&addr).request(request()).await else {
            panic!("{} gave an answer", String::from_utf8_lossy(answer));
        };
        assert!(error.to_string().contains(why), "{error}");
    }
    let bad_chunk: &[u8] = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nok\r\n";
    let no_crlf: &[u8] = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nokX\r\n";
    for answer in [bad_chunk, no_crlf] {
        let (addr, _seen) = scripted(vec![vec![answer]]).await;
        let response = pool(&addr).request(request()).await.unwrap();
        let error = body_of(response).await.unwrap_err();
        assert!(matches!(error, ReadError::Malformed(_)), "{error}");
    }
}

#[tokio::test]
async fn a_head_over_the_limit_is_refused() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut pending = Vec::new();
        read_request(&mut tcp, &mut pending).await;
        let _ = tcp.write_all(b"HTTP/1.1 200 OK\r\n").await;
        let field = format!("x-filler: {}\r\n", "y".repeat(1000));
        for _ in 0..(MAX_HEAD / field.len() + 2) {
            if tcp.write_all(field.as_bytes()).await.is_err() {
                return;
            }
        }
        let _ = tcp.write_all(b"\r\n").await;
    });
    let Err(error) = pool(&addr).request(request()).await else {
        panic!("a head over the limit was read");
    };
    assert!(error.to_string().contains("over 64 KiB"), "{error}");
}

#[tokio::test]
async fn a_long_answer_arrives_whole_through_growing_reads() {
    let body: &'static [u8] = Box::leak(vec![b'z'; 1 << 20].into_boxed_slice());
    let head: &'static [u8] = Box::leak(
        format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len())
            .into_bytes()
            .into_boxed_slice(),
    );
    let (addr, _seen) = scripted(vec![vec![head, body]]).await;
    let response = pool(&addr).request(request()).await.unwrap();
    assert_eq!(response.body().size_hint().exact(), Some(1 << 20));
    assert_eq!(body_of(response).await.unwrap().len(), 1 << 20);
}

#[tokio::test]
async fn a_bodiless_answer_frees_its_connection_at_the_head() {
    let empty: &[u8] = b"HTTP/1.1 204 No Content\r\n\r\n";
    let (addr, seen) = scripted(vec![vec![empty]; 3]).await;
    let pool = pool(&addr);
    for _ in 0..3 {
        let response = pool.request(request()).await.unwrap();
        assert!(response.body().is_end_stream());
        // Dropped unread: the connection went back already.
        drop(response);
    }
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 1);
}

/// A stream waiting for its next event holds no read buffer.
#[tokio::test]
async fn a_waiting_stream_holds_no_read_buffer() {
    let pieces: Vec<&'static [u8]> =
        vec![b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n"];
    let (addr, _seen) = scripted(vec![pieces]).await;
    let mut response = pool(&addr).request(request()).await.unwrap();
    let frame = response.body_mut().frame().await.unwrap().unwrap();
    assert_eq!(frame.data_ref().unwrap(), &Bytes::from_static(b"hello"));
    let conn = response.body().conn.as_ref().unwrap();
    // The chunk's CRLF may be unread yet; nothing more.
    assert!(
        conn.buf.capacity() <= 2 || conn.buf.len() <= 2,
        "{}",
        conn.buf.capacity()
    );
    let waker = futures_util::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    assert!(Pin::new(response.body_mut())
        .poll_frame(&mut cx)
        .is_pending());
    let conn = response.body().conn.as_ref().unwrap();
    assert_eq!(conn.buf.capacity(), 0, "no buffer while waiting");
}

/// Both ends of a loopback connection: the gateway's, then the upstream's.
async fn socket_pair() -> (TcpStream, TcpStream) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tcp = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (peer, _) = listener.accept().await.unwrap();
    (tcp, peer)
}

#[tokio::test]
async fn chunked_decoding_takes_any_split() {
    let wire: &[u8] =
        b"4;name=v\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nx: y\r\n\r\n";
    // A connected socket stands in; only the buffer is read.
    let (tcp, _peer) = socket_pair().await;
    let mut conn = Conn::new(tcp, 4096);
    for step in [1, 2, 3, 7, wire.len()] {
        let mut framing = Framing::Chunked(Chunked::Size);
        let mut body = Vec::new();
        let mut fed = 0;
        loop {
            match framing.decode(&mut conn).unwrap() {
                Decoded::Data(data) => body.extend_from_slice(&data),
                Decoded::End => break,
                Decoded::More => {
                    assert!(fed < wire.len(), "more wanted after the whole body");
                    let next = (fed + step).min(wire.len());
                    conn.buf.extend_from_slice(&wire[fed..next]);
                    fed = next;
                }
            }
        }
        assert_eq!(body, b"Wikipedia in\r\n\r\nchunks.", "step {step}");
        assert!(conn.buf.is_empty(), "step {step}");
    }
}

/// Chunk framing an upstream got wrong is an error, never a shorter body read as whole: a size
/// line with no digits (an extra CRLF), a bare LF, junk after the size, a line that never ends,
/// and a "trailer" that is the rest of a body.
#[test]
fn chunk_size_lines_are_read_strictly() {
    assert_eq!(chunk_size_line(b"1a\r\n"), Ok(Some((4, 26))));
    assert_eq!(chunk_size_line(b"A ;name=\"v\"\r\nxx"), Ok(Some((13, 10))));
    assert_eq!(chunk_size_line(b"0000\r\n"), Ok(Some((6, 0))));
    assert_eq!(chunk_size_line(b"1a"), Ok(None));
    assert_eq!(chunk_size_line(b"1a;ext"), Ok(None));
    for bad in [
        &b"\r\n"[..],
        b" 5\r\n",
        b";x\r\n",
        b"5;x\nhello\r\n",
        b"5\n",
        b"5 x\r\n",
        b"5;a\rb\r\n",
        b"11111111111111111\r\n",
    ] {
        assert!(
            chunk_size_line(bad).is_err(),
            "{:?} was read",
            String::from_utf8_lossy(bad)
        );
    }
    let mut endless = b"1;".to_vec();
    endless.resize(MAX_CHUNK_LINE + 10, b'a');
    assert!(chunk_size_line(&endless).is_err());
    let mut spaces = b"5".to_vec();
    spaces.resize(MAX_CHUNK_LINE, b' ');
    assert!(chunk_size_line(&spaces).is_err());
}

#[tokio::test]
async fn a_misframed_chunked_body_is_an_error() {
    let answers: [&'static [u8]; 3] = [
        // An extra CRLF after a chunk: "hello" must not pass for the whole body.
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n\r\n5\r\nworld\r\n0\r\n\r\n",
        // Trailer lines that are not fields.
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\nworld\r\n\r\n",
        // An endless extension.
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1;aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    ];
    for (i, answer) in answers.into_iter().enumerate() {
        let pieces = if i == 2 {
            // The extension goes on past the line limit.
            let filler: &'static [u8] = Box::leak(vec![b'a'; MAX_CHUNK_LINE].into_boxed_slice());
            vec![answer, filler]
        } else {
            vec![answer]
        };
        let (addr, _seen) = scripted(vec![pieces]).await;
        let response = pool(&addr).request(request()).await.unwrap();
        let error = body_of(response).await.unwrap_err();
        assert!(matches!(error, ReadError::Malformed(_)), "{i}: {error}");
    }
}

#[tokio::test]
async fn more_interim_answers_than_any_upstream_sends_are_an_error() {
    let hint: &'static [u8] = b"HTTP/1.1 103 Early Hints\r\n\r\n";
    let (addr, _seen) = scripted(vec![vec![hint; MAX_INTERIM + 1]]).await;
    let Err(error) = pool(&addr).request(request()).await else {
        panic!("an answer out of interim answers alone");
    };
    assert!(error.to_string().contains("interim"), "{error}");
    let old: &[u8] = b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n";
    let (addr, _seen) = scripted(vec![vec![old]]).await;
    assert!(pool(&addr).request(request()).await.is_err());
}

/// A proxy before the upstream refuses a large request after its head (413, 401) and stops
/// reading: the gateway gets that answer, not a write stuck until the first-byte timeout.
#[tokio::test]
async fn an_early_answer_to_a_large_request_is_taken() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
        let refusal =
            b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 4\r\nconnection: close\r\n\r\nbig!";
        let _ = tcp.write_all(refusal).await;
        // Reads no more, and holds the connection open.
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    let huge = Bytes::from(vec![b'x'; 64 << 20]);
    let request = Request::post("/v1/embeddings").body(huge).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(3), pool(&addr).request(request))
        .await
        .expect("the answer came while the request was still being written")
        .unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(&body_of(response).await.unwrap()[..], b"big!");
}

/// An upstream that says how long it keeps idle connections (`Keep-Alive: timeout=1`) gets no
/// request on one idle longer (less a margin), even though the pool's own timeout is longer.
#[tokio::test]
async fn the_upstreams_keep_alive_timeout_is_kept() {
    let ok: &[u8] =
        b"HTTP/1.1 200 OK\r\nkeep-alive: timeout=1, max=100\r\ncontent-length: 2\r\n\r\nok";
    let (addr, seen) = scripted(vec![vec![ok]; 3]).await;
    let pool = pool(&addr);
    for _ in 0..2 {
        let response = pool.request(request()).await.unwrap();
        assert_eq!(&body_of(response).await.unwrap()[..], b"ok");
    }
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 1);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let response = pool.request(request()).await.unwrap();
    assert_eq!(&body_of(response).await.unwrap()[..], b"ok");
    assert_eq!(
        seen.accepted.load(Ordering::SeqCst),
        2,
        "not the expiring one"
    );
}

/// A close the runtime has not yet seen (its driver has not run since) is found by the peeking
/// read a connection idle past `PROBE_AFTER` gets; a connection idle for less trusts readiness.
#[tokio::test]
async fn a_close_the_runtime_has_not_seen_is_found_by_the_peek() {
    let (tcp, peer) = socket_pair().await;
    let conn = Conn::new(tcp, 4096);
    assert!(!conn.heard_from_while_idle(PROBE_AFTER), "open and silent");
    // The peer closes; no await follows, so the runtime's driver does not run.
    drop(peer.into_std().unwrap());
    std::thread::sleep(Duration::from_millis(20));
    assert!(
        !conn.heard_from_while_idle(Duration::ZERO),
        "readiness alone"
    );
    assert!(
        conn.heard_from_while_idle(PROBE_AFTER),
        "the peek sees the close"
    );
}

/// The idle pool keeps at most `max_idle` connections: of two answers read to their end at
/// once with room for one, the second's connection is closed, and the next two requests find
/// one connection to reuse and open one.
#[tokio::test]
async fn the_idle_pool_keeps_no_more_than_max_idle() {
    let ok: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    let (addr, seen) = scripted(vec![vec![ok]; 4]).await;
    let pool = H1Pool::new(
        addr.clone(),
        HeaderValue::from_str(&addr).unwrap(),
        Duration::from_secs(1),
        4096,
        1,
        Duration::from_secs(5),
    );
    let both = || async {
        let (a, b) = tokio::join!(pool.request(request()), pool.request(request()));
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(&body_of(a).await.unwrap()[..], b"ok");
        assert_eq!(&body_of(b).await.unwrap()[..], b"ok");
    };
    both().await;
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 2);
    assert_eq!(pool.idle.lock().unwrap().len(), 1, "one kept");
    both().await;
    assert_eq!(
        seen.accepted.load(Ordering::SeqCst),
        3,
        "one reused, one new"
    );
}

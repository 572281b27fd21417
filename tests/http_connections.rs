//! No peer can starve the gateway (issue 8): connections that send nothing, a head or a body
//! a byte at a time, or sit idle on keep-alive or h2c are closed in time; past the connection
//! cap new connections wait instead of failing the process; at shutdown past the grace, open
//! streams end with their door's error instead of a cut connection.
//!
//! Raw `TcpStream`s play the misbehaving peers, so each test sees exactly what went over the
//! wire and when the gateway hung up. Timeouts are short (hundreds of milliseconds) and every
//! wait is bounded.
mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Code;

/// Slack on top of a timeout for "closed in time": the machine is small and shared.
const SLACK: Duration = Duration::from_secs(3);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Reads until the peer closes (EOF or reset) and returns what arrived and when it closed;
/// panics if it is still open after `bound`.
async fn read_until_closed(
    tcp: &mut (impl AsyncRead + Unpin),
    bound: Duration,
) -> (Vec<u8>, Instant) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read_all = async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return Instant::now(),
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    let closed = tokio::time::timeout(bound, read_all)
        .await
        .unwrap_or_else(|_| panic!("the gateway kept the connection open past {bound:?}"));
    (got, closed)
}

struct RawResponse {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl RawResponse {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Reads one HTTP/1.1 response with a `content-length` body.
async fn read_response(tcp: &mut (impl AsyncRead + Unpin), bound: Duration) -> RawResponse {
    let read = async {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = tcp.read(&mut buf).await.expect("read a response");
            assert!(
                n > 0,
                "closed before a whole response head: {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        };
        let head = String::from_utf8_lossy(&got[..head_end]).into_owned();
        let status = head[9..12].parse().expect("a status code");
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .unwrap_or(0);
        while got.len() < head_end + length {
            let n = tcp.read(&mut buf).await.expect("read a response body");
            assert!(n > 0, "closed inside the body");
            got.extend_from_slice(&buf[..n]);
        }
        RawResponse {
            status,
            head,
            body: got[head_end..head_end + length].to_vec(),
        }
    };
    tokio::time::timeout(bound, read)
        .await
        .unwrap_or_else(|_| panic!("no whole response in {bound:?}"))
}

async fn connect(gw: &TestGateway) -> TcpStream {
    TcpStream::connect(gw.addr).await.expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connection_is_closed_after_the_header_timeout() {
    let mock = MockUpstream::start().await;
    let header = ms(400);
    let gw = spawn_gateway(&mock, &["k"], |s| {
        s.client.header_timeout = header;
        s.client.idle_timeout = Duration::from_secs(30);
    })
    .await;

    let start = Instant::now();
    let mut tcp = connect(&gw).await;
    let (got, closed) = read_until_closed(&mut tcp, header + SLACK).await;
    let open_for = closed - start;
    assert!(
        got.is_empty(),
        "unexpected bytes: {:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(
        open_for >= header,
        "closed after {open_for:?}, before the header timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_head_gets_408_and_a_close_after_the_header_timeout() {
    let mock = MockUpstream::start().await;
    let header = ms(400);
    let gw = spawn_gateway(&mock, &["k"], |s| {
        s.client.header_timeout = header;
        s.client.idle_timeout = Duration::from_secs(30);
    })
    .await;

    let (mut rx, mut tx) = connect(&gw).await.into_split();
    // One byte every 50 ms: the whole head would take about 2 s, five header timeouts.
    let head = b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nAccept: */*\r\n\r\n";
    let start = Instant::now();
    let writer = tokio::spawn(async move {
        for b in head {
            if tx.write_all(&[*b]).await.is_err() {
                return false;
            }
            tokio::time::sleep(ms(50)).await;
        }
        true
    });
    let (got, closed) = read_until_closed(&mut rx, header + SLACK).await;
    let open_for = closed - start;
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 408"),
        "want 408 for a head that came too slowly: {text:?}"
    );
    let body = &text[text.find("\r\n\r\n").expect("a whole head") + 4..];
    let json: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    for field in ["message", "type", "param", "code"] {
        assert!(
            json["error"].get(field).is_some(),
            "no error.{field} in {json}"
        );
    }
    assert_eq!(json["error"]["code"], "client_header_timeout", "{json}");
    assert!(
        open_for >= header,
        "closed after {open_for:?}, before the header timeout"
    );
    assert!(
        open_for < ms(50) * head.len() as u32,
        "closed only after the whole head: {open_for:?}"
    );
    writer.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_body_gets_408_in_the_openai_shape() {
    let mock = MockUpstream::start().await;
    let body = ms(400);
    let gw = spawn_gateway(&mock, &["k"], |s| {
        s.client.body_timeout = body;
        s.client.idle_timeout = Duration::from_secs(30);
    })
    .await;

    let mut tcp = connect(&gw).await;
    let start = Instant::now();
    // A body of 200 bytes announced, 12 sent, and then nothing.
    tcp.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n\
          Content-Length: 200\r\n\r\n{\"messages\":",
    )
    .await
    .unwrap();
    let response = read_response(&mut tcp, body + SLACK).await;
    let answered = start.elapsed();
    assert_eq!(response.status, 408, "{}", response.head);
    assert!(
        answered >= body,
        "answered after {answered:?}, before the body timeout"
    );
    let json = response.json();
    let error = &json["error"];
    for field in ["message", "type", "param", "code"] {
        assert!(error.get(field).is_some(), "no error.{field} in {json}");
    }
    assert_eq!(error["code"], "client_body_timeout", "{json}");
    assert_eq!(error["type"], "timeout_error", "{json}");
    assert_eq!(mock.chat_count(), 0, "a partial body reached the upstream");
    // The rest of the body will never be read: the connection is closed, not reused.
    read_until_closed(&mut tcp, SLACK).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_grpc_body_gets_deadline_exceeded() {
    use bytes::Bytes;
    use http_body::Frame;
    use http_body_util::BodyExt;

    let mock = MockUpstream::start().await;
    let body = ms(400);
    let gw = spawn_gateway(&mock, &["k"], |s| {
        s.client.body_timeout = body;
        s.client.idle_timeout = Duration::from_secs(30);
    })
    .await;

    let tcp = connect(&gw).await;
    let (mut send, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .expect("h2c handshake");
    tokio::spawn(conn);
    // A gRPC frame header announcing 95 bytes of message; the stream then stays open, silent.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(1);
    tx.send(Ok(Frame::data(Bytes::from_static(b"\x00\x00\x00\x00\x5f"))))
        .await
        .unwrap();
    let request = http::Request::post(format!(
        "http://{}/megallm.v1.ChatService/CreateChatCompletion",
        gw.addr
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(http_body_util::StreamBody::new(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    ))
    .unwrap();
    let start = Instant::now();
    let response = tokio::time::timeout(body + SLACK, send.send_request(request))
        .await
        .expect("an answer before the body ends")
        .expect("a response");
    let mut headers = response.headers().clone();
    if !headers.contains_key("grpc-status") {
        let collected = tokio::time::timeout(SLACK, response.into_body().collect())
            .await
            .expect("the trailers")
            .expect("the body");
        headers = collected.trailers().cloned().unwrap_or_default();
    }
    let answered = start.elapsed();
    assert_eq!(
        headers.get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"4"[..]),
        "{headers:?}"
    );
    let message = headers
        .get("grpc-message")
        .map(|v| v.to_str().unwrap_or(""))
        .unwrap_or("");
    assert!(message.contains("client_body"), "{message}");
    assert!(
        answered >= body - ms(50),
        "answered after {answered:?}, before the body timeout"
    );
    assert_eq!(mock.chat_count(), 0);
    drop(tx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_grpc_web_body_gets_deadline_exceeded() {
    let mock = MockUpstream::start().await;
    let body = ms(400);
    let gw = spawn_gateway(&mock, &["k"], |s| {
        s.client.body_timeout = body;
        s.client.idle_timeout = Duration::from_secs(30);
    })
    .await;

    let mut tcp = connect(&gw).await;
    // A gRPC-Web frame header announcing 95 bytes of message, and no message.
    tcp.write_all(
        b"POST /megallm.v1.ChatService/CreateChatCompletion HTTP/1.1\r\nHost: gateway\r\n\
          Content-Type: application/grpc-web+proto\r\nX-Grpc-Web: 1\r\nContent-Length: 100\r\n\r\n\
          \x00\x00\x00\x00\x5f",
    )
    .await
    .unwrap();
    let (got, _) = read_until_closed(&mut tcp, body + SLACK).await;
    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    // Trailers-only (in the head) or in the trailer frame: either way DEADLINE_EXCEEDED.
    assert!(
        text.contains("grpc-status:4") || text.contains("grpc-status: 4"),
        "{text}"
    );
    assert!(text.contains("client_body"), "{text}");
    assert_eq!(mock.chat_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let mock = MockUpstream::start().await;
    let idle = ms(900);
    let gw = spawn_gateway(&mock, &["k"], |s| {
        // Shorter than idle: a close at the header timeout would fail the lower bound.
        s.client.header_timeout = ms(300);
        s.client.idle_timeout = idle;
    })
    .await;

    let mut tcp = connect(&gw).await;
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
        .await
        .unwrap();
    let response = read_response(&mut tcp, PATIENCE).await;
    assert_eq!(response.status, 200, "{}", response.head);
    let idle_from = Instant::now();
    let (got, closed) = read_until_closed(&mut tcp, idle + SLACK).await;
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    let open_for = closed - idle_from;
    assert!(
        open_for >= idle - ms(100),
        "closed after {open_for:?}, before the idle timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_second_head_on_keep_alive_gets_408_at_the_header_timeout() {
    let mock = MockUpstream::start().await;
    let header = ms(300);
    let idle = Duration::from_secs(20);
    let gw = spawn_gateway(&mock, &["k"], |s| {
        s.client.header_timeout = header;
        s.client.idle_timeout = idle;
    })
    .await;

    let mut tcp = connect(&gw).await;
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
        .await
        .unwrap();
    let first = read_response(&mut tcp, PATIENCE).await;
    assert_eq!(first.status, 200, "{}", first.head);
    // Half a head, then nothing: the header clock, not the idle one, must run.
    let start = Instant::now();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHo").await.unwrap();
    let second = read_response(&mut tcp, header + SLACK).await;
    let answered = start.elapsed();
    assert_eq!(second.status, 408, "{}", second.head);
    assert_eq!(second.json()["error"]["code"], "client_header_timeout");
    assert!(answered >= header - ms(50), "answered after {answered:?}");
    read_until_closed(&mut tcp, SLACK).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_h2c_connection_is_closed_after_the_idle_timeout() {
    let mock = MockUpstream::start().await;
    let idle = ms(900);
    let gw = spawn_gateway(&mock, &["k"], |s| {
        s.client.header_timeout = ms(300);
        s.client.idle_timeout = idle;
    })
    .await;

    let mut tcp = connect(&gw).await;
    // The preface and an empty SETTINGS frame, then silence: no stream, no PING answer.
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let start = Instant::now();
    let (got, closed) = read_until_closed(&mut tcp, idle + SLACK).await;
    let open_for = closed - start;
    assert!(
        open_for >= idle - ms(100),
        "closed after {open_for:?}, before the idle timeout"
    );
    // Frames: 3 bytes length, 1 type; GOAWAY is type 7.
    let mut types = Vec::new();
    let mut rest = &got[..];
    while rest.len() >= 9 {
        let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
        types.push(rest[3]);
        rest = &rest[(9 + len).min(rest.len())..];
    }
    assert!(
        types.contains(&7),
        "no GOAWAY before the close; frame types {types:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_connection_cap_healthz_answers_once_silent_ones_time_out() {
    let mock = MockUpstream::start().await;
    let header = ms(500);
    let cap = 8;
    let gw = spawn_gateway(&mock, &["k"], |s| {
        s.client.header_timeout = header;
        s.client.max_connections = Some(cap);
    })
    .await;

    // More silent peers than the cap: the first `cap` hold every place.
    let mut silent = Vec::new();
    for _ in 0..cap + 4 {
        silent.push(connect(&gw).await);
    }
    let start = Instant::now();
    let mut tcp = connect(&gw).await;
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
        .await
        .unwrap();
    let response = read_response(&mut tcp, header * 2 + SLACK).await;
    let waited = start.elapsed();
    assert_eq!(response.status, 200, "{}", response.head);
    // Not served before a place was freed: the cap holds (a gateway without one answers at once).
    assert!(
        waited >= header * 3 / 5,
        "answered after {waited:?}, while every place was held"
    );
    // And every silent peer, those that waited behind the cap included, is closed in time.
    for mut s in silent {
        read_until_closed(&mut s, header * 2 + SLACK).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_request_line_gets_400_from_below_the_router() {
    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &["k"], |_| {}).await;

    let mut tcp = connect(&gw).await;
    tcp.write_all(b"NOT A REQUEST\r\n\r\n").await.unwrap();
    let response = read_response(&mut tcp, PATIENCE).await;
    // hyper writes this one itself and has no hook for a body (see `server` module docs).
    assert_eq!(response.status, 400, "{}", response.head);
    assert!(response.body.is_empty());
    read_until_closed(&mut tcp, SLACK).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_past_the_grace_ends_an_http_stream_with_an_error_event() {
    let mock = MockUpstream::start().await;
    let gate = Gate::new();
    mock.set_chat("k", Reply::ok().chunks(3).hold_after(1, &gate));
    let gw = spawn_gateway(&mock, &["k"], |s| s.shutdown_grace = ms(300)).await;

    let mut sse = gw.http.chat_stream(&stream_body()).await;
    assert_eq!(sse.status, 200, "{:?}", sse.body);
    let first = sse.next_event(PATIENCE).await.expect("the first chunk");
    assert!(!first.is_error());
    let shutdown = tokio::spawn(gw.shutdown());
    let last = sse
        .next_event(PATIENCE)
        .await
        .expect("an error event before the end of the stream");
    assert!(last.is_error(), "{last:?}");
    assert_eq!(last.json()["error"]["code"], "shutting_down");
    assert!(
        sse.next_event(PATIENCE).await.is_none(),
        "events after the error"
    );
    assert_eq!(
        sse.end(),
        Some(&StreamEnd::Clean),
        "the stream was cut, not ended"
    );
    tokio::time::timeout(PATIENCE, shutdown)
        .await
        .expect("shutdown finishes")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_past_the_grace_ends_a_grpc_stream_with_unavailable() {
    let mock = MockUpstream::start().await;
    let gate = Gate::new();
    mock.set_chat("k", Reply::ok().chunks(3).hold_after(1, &gate));
    let gw = spawn_gateway(&mock, &["k"], |s| s.shutdown_grace = ms(300)).await;

    let mut client = grpc_client(&gw).await;
    let mut stream = tokio::time::timeout(PATIENCE, client.stream_chat_completion(hi()))
        .await
        .expect("the stream opens")
        .expect("the stream opens")
        .into_inner();
    let first = tokio::time::timeout(PATIENCE, stream.message())
        .await
        .unwrap();
    assert!(matches!(first, Ok(Some(_))), "{first:?}");
    let shutdown = tokio::spawn(gw.shutdown());
    let end = tokio::time::timeout(PATIENCE, stream.message())
        .await
        .expect("the stream ends");
    let status = end.expect_err("a status, not more chunks");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), "shutting down");
    tokio::time::timeout(PATIENCE, shutdown)
        .await
        .expect("shutdown finishes")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_past_the_grace_ends_a_health_watch_with_unavailable() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &["k"], |s| s.shutdown_grace = ms(300)).await;
    let mut client = HealthClient::new(channel(&gw).await);
    // A watch never ends by itself: only the shutdown can end it.
    let mut watch = tokio::time::timeout(
        PATIENCE,
        client.watch(HealthCheckRequest {
            service: String::new(),
        }),
    )
    .await
    .expect("the watch opens")
    .expect("the watch opens")
    .into_inner();
    let first = tokio::time::timeout(PATIENCE, watch.message())
        .await
        .unwrap();
    assert!(matches!(first, Ok(Some(_))), "{first:?}");
    let shutdown = tokio::spawn(gw.shutdown());
    let status = loop {
        match tokio::time::timeout(PATIENCE, watch.message())
            .await
            .expect("the watch ends")
        {
            Ok(Some(_)) => continue, // a status change (NOT_SERVING) is fine on the way out
            Ok(None) => panic!("the watch ended with OK"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), "shutting down");
    tokio::time::timeout(PATIENCE, shutdown)
        .await
        .expect("shutdown finishes")
        .unwrap();
}

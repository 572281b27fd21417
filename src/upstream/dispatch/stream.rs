//! A stream's two phases. [`prime`] holds the answer back until its first event is complete and
//! judged, so a stream that dies before its first byte is still the attempt's failure and can
//! be retried; it hands over a [`Primed`] stream, `{ first, rest }`. From then on [`Live`]
//! forwards one event per poll, and a break, an error event or a timeout ends the stream.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{stream, Stream, StreamExt};
use http_body_util::BodyExt;
use tokio::time::{timeout_at, Instant};

use super::attempt::{Failed, Try};
use super::{describe, timeout, Deadline};
use crate::chat::{AttemptOutcome, ChunkStream, Events, GatewayError, TimeoutKind};
use crate::keys::KeyLease;
use crate::upstream::client::{BodyError, Response};
use crate::upstream::sse::{named_frame, SseParser, MAX_PENDING};
use crate::upstream::verdict::{self, Bad, UpstreamErrorBody};

type ByteStream = std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, BodyError>> + Send>>;

/// A stream whose first event is complete, judged and masked. Nothing of it has reached the
/// client yet; once it does, nothing is retried.
pub(super) struct Primed {
    pub first: Bytes,
    pub rest: Live,
}

impl Primed {
    /// The chunks a door renders: `first`, then the live events. A `[DONE]` first is an empty
    /// stream (the key still held until the door drops it).
    pub fn into_chunks(mut self) -> ChunkStream {
        if is_done(&self.first) {
            self.rest.done = true;
            return Box::pin(stream::unfold(self.rest, Live::next));
        }
        let first = stream::once(std::future::ready(Ok(self.first)));
        Box::pin(first.chain(stream::unfold(self.rest, Live::next)))
    }
}

/// The last step of a stream: read until its first event is complete (by the `first_byte`
/// timeout), and judge it. An error as the first event is the key's failure: nothing reached
/// the client, so another key may serve.
pub(super) async fn prime(
    mut attempt: Try<'_>,
    response: Response,
    events: Events,
) -> Result<Primed, Failed> {
    let status = response.status().as_u16();
    let mut body: ByteStream = Box::pin(response.into_body().into_data_stream());
    let mut parser = SseParser::new();
    let first = loop {
        if let Some(event) = parser.next_event() {
            break event;
        }
        let message = match timeout_at(attempt.first_byte_at, body.next()).await {
            Ok(Some(Ok(bytes))) if !parser.overflowed() => {
                parser.push(&bytes);
                continue;
            }
            Ok(Some(Ok(_))) => oversized(),
            Ok(Some(Err(e))) => format!(
                "the upstream stream broke before its first event: {}",
                describe(&e)
            ),
            Ok(None) => "the upstream stream ended before its first event".to_owned(),
            Err(_) => return Err(attempt.timed_out()),
        };
        return Err(attempt.transient(AttemptOutcome::Broken, Some(status), &message));
    };
    if let Some(error) = verdict::error_event(&first) {
        return Err(attempt.bad_answer(status, Bad::Error(error)));
    }
    attempt.won(status);
    settle_usage(&mut attempt.lease, &first);
    let first = attempt.lease.mask_content(&first);
    let named = events == Events::Named;
    let first = if named {
        named_frame(parser.event_name().map(|n| &n[..]), &first)
    } else {
        first
    };
    let rest = Live {
        body,
        parser,
        named,
        done: false,
        lease: attempt.lease,
        idle: attempt.idle,
        deadline: attempt.deadline,
        timer: None,
    };
    Ok(Primed { first, rest })
}

/// The live half of a stream: upstream bytes in, one event's data out per poll.
pub(super) struct Live {
    body: ByteStream,
    parser: SseParser,
    /// Named events ([`Events::Named`]): each event goes out whole, `event:` line kept, and
    /// the upstream closing the stream is its end (no `[DONE]` is awaited or swallowed).
    named: bool,
    /// Set at `[DONE]` and at a break: the stream yields nothing more.
    done: bool,
    /// Held for the stream's life so the key's in-flight count covers it.
    lease: KeyLease,
    idle: Duration,
    deadline: Deadline,
    /// The idle and deadline timer, armed at the first wait ([`Live::read`]).
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl Live {
    async fn next(mut self) -> Option<(Result<Bytes, GatewayError>, Live)> {
        if self.done {
            return None;
        }
        loop {
            if let Some(event) = self.parser.next_event() {
                if !self.named && is_done(&event) {
                    self.done = true;
                    self.read_to_end();
                    return None;
                }
                if let Some(error) = verdict::error_event(&event) {
                    let error = self.error_event(error);
                    return Some((Err(self.broken(error)), self));
                }
                settle_usage(&mut self.lease, &event);
                let event = self.lease.mask_content(&event);
                if self.named {
                    let name = self.parser.event_name().map(|n| self.lease.mask_content(n));
                    return Some((Ok(named_frame(name.as_deref(), &event)), self));
                }
                return Some((Ok(event), self));
            }
            let idle_at = (Instant::now() + self.idle).min(self.deadline.at);
            let error = match self.read(idle_at).await {
                Ok(Some(Ok(bytes))) if !self.parser.overflowed() => {
                    self.parser.push(&bytes);
                    continue;
                }
                Ok(Some(Ok(_))) => GatewayError::StreamBroken(oversized()),
                Ok(Some(Err(e))) => GatewayError::StreamBroken(self.lease.mask(&describe(&e))),
                Ok(None) if self.named => {
                    self.done = true;
                    return None;
                }
                Ok(None) => GatewayError::StreamBroken(
                    "the upstream closed the stream before [DONE]".into(),
                ),
                Err(_) if idle_at >= self.deadline.at => self
                    .deadline
                    .timeout("the stream ran past the request's time"),
                Err(_) => timeout(
                    TimeoutKind::Idle,
                    "no upstream event within the idle timeout",
                ),
            };
            return Some((Err(self.broken(error)), self));
        }
    }

    /// The next upstream read, or `Err` at `due`. One timer serves the whole stream: armed
    /// once, it is moved on only when it fires before `due` (the stream was not idle), instead
    /// of a timer set and cancelled for every event.
    async fn read(&mut self, due: Instant) -> Result<Option<Result<Bytes, BodyError>>, ()> {
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        loop {
            tokio::select! {
                biased;
                item = self.body.next() => return Ok(item),
                () = timer.as_mut() => {
                    if Instant::now() >= due {
                        return Err(());
                    }
                    timer.as_mut().reset(due);
                }
            }
        }
    }

    /// After `[DONE]`: the body's end (the last chunk of its chunked encoding) is usually at
    /// hand already; read it, without waiting, so that the upstream connection goes back to
    /// the pool instead of being closed with the stream.
    fn read_to_end(&mut self) {
        let waker = futures_util::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        for _ in 0..4 {
            match self.body.as_mut().poll_next(&mut cx) {
                std::task::Poll::Ready(Some(Ok(_))) => continue,
                _ => return,
            }
        }
    }

    /// An error event after the first byte: the stream ends here, as a break.
    fn error_event(&self, error: UpstreamErrorBody) -> GatewayError {
        let mask = |field: Option<String>| field.map(|f| self.lease.mask(&f));
        GatewayError::UpstreamErrorEvent {
            message: self.lease.mask(&error.message),
            error_type: mask(error.error_type),
            code: mask(error.code),
        }
    }

    /// Ends the stream with `error`, recorded on the key as a break.
    fn broken(&mut self, error: GatewayError) -> GatewayError {
        self.done = true;
        self.lease.stream_broken(&error.to_string());
        error
    }
}

/// A chunk's `usage` (OpenAI sends it on the last chunk when asked) corrects the key's `tpm=`
/// estimate; read only on keys with such a budget, and only in chunks that name it.
fn settle_usage(lease: &mut KeyLease, event: &[u8]) {
    const USAGE: &[u8] = b"\"usage\"";
    if lease.has_tpm() && event.windows(USAGE.len()).any(|w| w == USAGE) {
        if let Some(used) = super::attempt::total_tokens(event) {
            lease.settle_tokens(used);
        }
    }
}

/// An event past the SSE parser's limit ([`MAX_PENDING`]).
fn oversized() -> String {
    format!(
        "the upstream sent an event larger than {} MiB",
        MAX_PENDING / (1024 * 1024)
    )
}

/// OpenAI's end-of-stream sentinel (tolerating stray whitespace around it).
fn is_done(data: &[u8]) -> bool {
    data.trim_ascii() == b"[DONE]"
}

//! [`Meter`]: one request's usage from its admission to its end, recorded exactly once (by
//! [`Meter::finish`], or by its `Drop` as `cancelled`). [`Metered`]: a chunk stream that feeds
//! its meter, and hides the usage the gateway asked for on the client's behalf.

use std::borrow::Cow;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{ready, Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use memchr::memmem::Finder;

use super::{Outcome, Partial, Record, Recorder, Usage};
use crate::chat::{ChunkStream, Events, GatewayError, RequestContext};
use crate::clients::Admission;

/// What one request used, gathered as it runs.
pub struct Meter {
    recorder: Arc<Recorder>,
    start: std::time::Instant,
    time: SystemTime,
    request_id: String,
    client: Option<String>,
    model: Option<String>,
    door: &'static str,
    endpoint: Cow<'static, str>,
    key: Option<String>,
    /// The request's body, for a prompt estimate (by the tokenizer) when no `usage` came.
    prompt: Bytes,
    /// The first [`CONTENT_KEPT`] bytes of answer content (a stream's deltas), for the same
    /// estimate...
    content: String,
    /// ...and the bytes of content past them, counted at the kept text's tokens per byte.
    content_past: u64,
    /// A whole answer's bytes when it carried no `usage` (bytes / 4).
    content_bytes: u64,
    /// The upstream said it will send the stream's `usage` (`"usage":null` on a chunk): from
    /// then on the chunks are held unread (see [`Meter::hold`]), as the estimate they serve is
    /// needed only if that `usage` never comes.
    promised: bool,
    /// Chunks not read yet, each as its length (`u32`, little-endian) and its bytes; at most
    /// [`HELD_MAX`] bytes...
    held: Vec<u8>,
    /// ...and the bytes of the chunks past them, counted at the held ones' share of content.
    held_past: u64,
    usage: Option<Usage>,
    ttft: Option<Duration>,
    admission: Option<Admission>,
    done: bool,
}

/// What a usage record is about, besides its numbers.
pub struct Subject<'a> {
    pub client: Option<&'a str>,
    pub model: Option<&'a str>,
    pub door: &'static str,
    /// The path under `/v1/` (`chat/completions`, `embeddings`, `messages`).
    pub endpoint: Cow<'static, str>,
}

impl Meter {
    pub fn new(
        recorder: Arc<Recorder>,
        ctx: &RequestContext,
        subject: Subject<'_>,
        prompt: Bytes,
    ) -> Meter {
        let Subject {
            client,
            model,
            door,
            endpoint,
        } = subject;
        Meter {
            recorder,
            start: std::time::Instant::now(),
            time: SystemTime::now(),
            request_id: ctx.request_id.clone(),
            client: client.map(str::to_owned),
            model: model.map(str::to_owned),
            door,
            endpoint,
            key: None,
            prompt,
            content: String::new(),
            content_past: 0,
            content_bytes: 0,
            promised: false,
            held: Vec::new(),
            held_past: 0,
            usage: None,
            ttft: None,
            admission: None,
            done: false,
        }
    }

    /// The client's limits took this request: they are settled with its tokens at the end.
    pub fn admitted(&mut self, admission: Admission) {
        self.admission = Some(admission);
    }

    /// The key that served (or was tried last).
    pub fn set_key(&mut self, key: Option<&str>) {
        self.key = key.map(str::to_owned);
    }

    /// The first byte of the answer is ready.
    pub fn first_byte(&mut self) {
        self.ttft.get_or_insert_with(|| self.start.elapsed());
    }

    /// A whole answer: its `usage`, else an estimate from its length.
    pub fn answered(&mut self, body: &[u8]) {
        self.first_byte();
        match Usage::parse(body) {
            Some(usage) => self.usage = Some(usage),
            None => self.content_bytes += body.len() as u64,
        }
    }

    /// [`Meter::finish`] for a whole answer: the client's limits are settled first, waited
    /// for, so its next request sees this one's tokens.
    pub async fn finish_settled(&mut self, outcome: Outcome) {
        if let Some(mut admission) = self.admission.take() {
            admission.settle_now(self.counts().0.total_tokens).await;
        }
        self.finish(outcome);
    }

    /// A stream's chunk (its data) for the estimate: read now, or held unread once the upstream
    /// promised its `usage`.
    fn chunk(&mut self, data: &[u8], promises_usage: bool) {
        self.promised |= promises_usage;
        if self.promised {
            self.hold(data);
        } else {
            add_content(self, data);
        }
    }

    /// Keeps a chunk unread. Reading a chunk for its content is a JSON parse (about a fifth of
    /// a short stream's CPU at the gateway) and is wasted once the `usage` comes, as it does on
    /// every stream that ends well; a copy is not. Past [`HELD_MAX`], only bytes are counted.
    fn hold(&mut self, data: &[u8]) {
        let need = self.held.len() + 4 + data.len();
        if need > HELD_MAX {
            self.held_past += data.len() as u64;
            return;
        }
        if need > self.held.capacity() {
            // Grown by hand, so that doubling never holds more than HELD_MAX.
            let grown = (self.held.capacity() * 2).clamp(need, HELD_MAX);
            self.held.reserve_exact(grown - self.held.len());
        }
        self.held
            .extend_from_slice(&(data.len() as u32).to_le_bytes());
        self.held.extend_from_slice(data);
    }

    /// Reads the held chunks for content (the `usage` never came); the bytes past them count at
    /// the content share the held ones had.
    fn read_held(&mut self) {
        let held = std::mem::take(&mut self.held);
        let before = self.content.len() as u64 + self.content_past;
        let mut raw = 0u64;
        let mut rest = &held[..];
        while let Some((len, tail)) = rest.split_first_chunk::<4>() {
            let n = (u32::from_le_bytes(*len) as usize).min(tail.len());
            let (chunk, tail) = tail.split_at(n);
            add_content(self, chunk);
            raw += n as u64;
            rest = tail;
        }
        let past = std::mem::take(&mut self.held_past);
        if past > 0 && raw > 0 {
            let content = self.content.len() as u64 + self.content_past - before;
            let share = (u128::from(past) * u128::from(content)).div_ceil(u128::from(raw));
            self.content_past += u64::try_from(share).unwrap_or(u64::MAX);
        }
    }

    /// The counts to record: the upstream's, else an estimate (`true`).
    fn counts(&mut self) -> (Usage, bool) {
        if self.usage.is_none() {
            self.read_held();
        }
        match (self.usage, self.ttft) {
            (Some(usage), _) => (usage, false),
            // Nothing came back: nothing to count.
            (None, None) => (Usage::default(), false),
            (None, Some(_)) => {
                let prompt = crate::chat::context::prompt_tokens(&self.prompt);
                let kept = crate::chat::context::text_tokens(&self.content);
                let past = match self.content.len() as u64 {
                    0 => self.content_past.div_ceil(4),
                    n => (kept * self.content_past).div_ceil(n),
                };
                let completion = kept + past + self.content_bytes.div_ceil(4);
                (
                    Usage {
                        prompt_tokens: prompt,
                        completion_tokens: completion,
                        total_tokens: prompt + completion,
                        ..Usage::default()
                    },
                    true,
                )
            }
        }
    }

    /// Ends the request: writes its record (only the first call does anything).
    pub fn finish(&mut self, outcome: Outcome) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let (usage, estimated) = self.counts();
        if let Some(mut admission) = self.admission.take() {
            admission.settle(usage.total_tokens);
        }
        self.recorder.record(Record {
            time: self.time,
            request_id: std::mem::take(&mut self.request_id),
            client: self.client.take(),
            model: self.model.take(),
            key: self.key.take(),
            door: self.door,
            endpoint: std::mem::take(&mut self.endpoint),
            usage,
            estimated,
            outcome,
            duration_ms: self.start.elapsed().as_millis() as u64,
            ttft_ms: self.ttft.map(|d| d.as_millis() as u64),
        });
    }

    /// How an error ends a request.
    pub fn outcome_of(error: &GatewayError) -> Outcome {
        match error {
            GatewayError::Timeout { .. } => Outcome::TimedOut,
            GatewayError::StreamBroken(_)
            | GatewayError::UpstreamErrorEvent { .. }
            | GatewayError::ShuttingDown => Outcome::Broken,
            _ => Outcome::Error,
        }
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        self.finish(Outcome::Cancelled);
    }
}

/// A chunk stream with its meter: `usage` is read from the chunks that carry it (merged, as
/// Anthropic's stream gives the prompt and the answer in different events); when the gateway
/// asked for usage on the client's behalf (`hide`), the usage-only chunk is dropped and
/// `"usage":null` taken out of the others, so the client gets the bytes it would have got.
/// Dropped before its end (the client went away), the meter records `cancelled`.
pub struct Metered {
    inner: ChunkStream,
    meter: Meter,
    hide: bool,
    /// Each chunk is a whole named event (`event:` and `data:` lines), not an event's data.
    named: bool,
}

impl Metered {
    /// `events`: how the chunks are framed (chat's are [`Events::Data`]).
    pub fn new(inner: ChunkStream, mut meter: Meter, hide: bool, events: Events) -> Metered {
        // The stream is handed over once its first event is complete.
        meter.first_byte();
        Metered {
            inner,
            meter,
            hide,
            named: events == Events::Named,
        }
    }
}

impl Stream for Metered {
    type Item = Result<Bytes, GatewayError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            let item = ready!(this.inner.as_mut().poll_next(cx));
            match item {
                Some(Ok(mut chunk)) => {
                    let data = if this.named {
                        event_data(&chunk)
                    } else {
                        Cow::Borrowed(&chunk[..])
                    };
                    let Some(at) = USAGE.find(&data) else {
                        this.meter.chunk(&data, false);
                        drop(data);
                        return Poll::Ready(Some(Ok(chunk)));
                    };
                    // OpenAI puts `"usage":null` on every chunk once asked: nothing to read
                    // there, and no need to parse the chunk to know it; the `usage` follows.
                    let null = data[at + 7..].starts_with(b":null");
                    if let Some(partial) = (!null).then(|| Partial::parse(&data)).flatten() {
                        let so_far = this.meter.usage.unwrap_or_default();
                        this.meter.usage = Some(so_far.merged(partial));
                        if this.hide && partial.usage_only {
                            continue;
                        }
                    }
                    this.meter.chunk(&data, null);
                    drop(data);
                    if this.hide {
                        chunk = strip_null_usage(chunk);
                    }
                    return Poll::Ready(Some(Ok(chunk)));
                }
                Some(Err(error)) => {
                    this.meter.finish(Meter::outcome_of(&error));
                    return Poll::Ready(Some(Err(error)));
                }
                None => {
                    this.meter.finish(Outcome::Completed);
                    return Poll::Ready(None);
                }
            }
        }
    }
}

/// `"usage"`, searched for in every chunk: built once, as `memmem::find` builds its searcher
/// on every call, which cost more than the search on short chunks.
static USAGE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"usage\""));

/// Takes `"usage":null` (OpenAI puts it on every chunk once asked) out of a chunk.
fn strip_null_usage(chunk: Bytes) -> Bytes {
    static NULLS: LazyLock<[Finder<'static>; 2]> = LazyLock::new(|| {
        [
            Finder::new(b",\"usage\":null"),
            Finder::new(b"\"usage\":null,"),
        ]
    });
    for finder in NULLS.iter() {
        let pattern = finder.needle();
        if let Some(at) = finder.find(&chunk) {
            let mut out = BytesMut::with_capacity(chunk.len());
            out.extend_from_slice(&chunk[..at]);
            out.extend_from_slice(&chunk[at + pattern.len()..]);
            return out.freeze();
        }
    }
    chunk
}

/// Chunk bytes a stream's meter holds unread ([`Meter::hold`]): about 35 of OpenAI's chunks.
const HELD_MAX: usize = 8 * 1024;

/// Answer text a stream's meter keeps for the tokenizer's estimate, so that an hour-long
/// stream holds no more than a short one; past it, only bytes are counted, at the kept text's
/// tokens per byte. Nothing is tokenized while the stream runs: most streams end with the
/// upstream's `usage`, and then the estimate (and the tokenizer's 20 MiB) is never needed.
const CONTENT_KEPT: usize = 4 * 1024;

/// A chunk's delta content (text, reasoning, tool calls) into the meter's estimate.
fn add_content(meter: &mut Meter, chunk: &[u8]) {
    each_content(chunk, |text| {
        if meter.content.len() + text.len() <= CONTENT_KEPT {
            meter.content.push_str(text);
        } else {
            meter.content_past += text.len() as u64;
        }
    });
}

/// Bytes of content in a chunk's deltas.
#[cfg(test)]
fn content_len(chunk: &[u8]) -> u64 {
    let mut n = 0;
    each_content(chunk, |t| n += t.len() as u64);
    n
}

/// Each piece of content in a chunk (chat's deltas: text, reasoning, tool calls; legacy
/// completions' `text`; the Responses API's `delta` events; Anthropic's `content_block_delta`);
/// a chunk that is no JSON counts whole, and other JSON events (which repeat what the deltas
/// said, like `response.completed`) not at all.
fn each_content(chunk: &[u8], mut f: impl FnMut(&str)) {
    use serde_json::value::RawValue;
    #[derive(serde::Deserialize)]
    struct Parts<'a> {
        #[serde(borrow, default)]
        content: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        reasoning_content: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        tool_calls: Option<&'a RawValue>,
        // Anthropic's text, thinking and tool input deltas.
        #[serde(borrow, default)]
        text: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        thinking: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        partial_json: Option<Cow<'a, str>>,
    }
    #[derive(serde::Deserialize)]
    struct Choice<'a> {
        #[serde(borrow)]
        delta: Option<&'a RawValue>,
        #[serde(borrow, default)]
        text: Option<Cow<'a, str>>,
    }
    #[derive(serde::Deserialize)]
    struct Chunk<'a> {
        #[serde(borrow, default)]
        choices: Vec<Choice<'a>>,
        #[serde(borrow, default)]
        delta: Option<&'a RawValue>,
    }
    // One UTF-8 check of the whole, not one per string (as a byte reader makes).
    let parsed = std::str::from_utf8(chunk)
        .ok()
        .and_then(|text| serde_json::from_str::<Chunk>(text).ok());
    let Some(parsed) = parsed else {
        f(&String::from_utf8_lossy(chunk));
        return;
    };
    // A delta is a string (the Responses API's `*.delta` events) or an object (chat's,
    // Anthropic's); anything else says nothing.
    let mut delta = |raw: &RawValue| {
        let raw = raw.get();
        if raw.starts_with('"') {
            if let Ok(text) = serde_json::from_str::<Cow<str>>(raw) {
                f(&text);
            }
        } else if let Ok(d) = serde_json::from_str::<Parts>(raw) {
            for text in [
                d.content,
                d.reasoning_content,
                d.text,
                d.thinking,
                d.partial_json,
            ]
            .into_iter()
            .flatten()
            {
                f(&text);
            }
            if let Some(t) = d.tool_calls {
                f(t.get());
            }
        }
    };
    for choice in &parsed.choices {
        if let Some(d) = choice.delta {
            delta(d);
        }
    }
    if let Some(d) = parsed.delta {
        delta(d);
    }
    for text in parsed.choices.iter().filter_map(|c| c.text.as_deref()) {
        f(text);
    }
}

/// The data of a whole named event (its `data:` lines, joined as SSE joins them).
fn event_data(event: &[u8]) -> Cow<'_, [u8]> {
    let mut lines = event
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter_map(|l| l.strip_prefix(b"data:"))
        .map(|l| l.strip_prefix(b" ").unwrap_or(l));
    let Some(first) = lines.next() else {
        return Cow::Borrowed(&[]);
    };
    match lines.next() {
        None => Cow::Borrowed(first),
        Some(second) => {
            let mut joined = [first, second].join(&b'\n');
            for line in lines {
                joined.push(b'\n');
                joined.extend_from_slice(line);
            }
            Cow::Owned(joined)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meter() -> Meter {
        let recorder = Arc::new(Recorder::new(None, None));
        let ctx = RequestContext::new(Some("r1"));
        let subject = Subject {
            client: None,
            model: Some("m"),
            door: "http",
            endpoint: Cow::Borrowed("chat/completions"),
        };
        let mut meter = Meter::new(recorder, &ctx, subject, Bytes::new());
        meter.first_byte();
        meter
    }

    /// A long stream's meter keeps at most [`CONTENT_KEPT`] of its text (and holds at most
    /// [`HELD_MAX`] once promised its usage), and its estimate still follows the tokenizer's
    /// count of the whole text (the kept part's tokens per byte, for the rest), not bytes / 4.
    #[test]
    fn a_long_streams_text_is_not_kept_yet_its_estimate_follows_the_tokenizer() {
        for promised in [false, true] {
            let mut meter = meter();
            let mut whole = String::new();
            for i in 0..5_000 {
                // Digits and punctuation: far more tokens per byte than bytes / 4 would say.
                let piece = format!("{}, {}; ", i % 97, i % 89);
                whole.push_str(&piece);
                meter.chunk(&chunk_of(&piece), promised);
                assert!(meter.content.capacity() <= CONTENT_KEPT);
                assert!(meter.held.capacity() <= HELD_MAX);
            }
            let (usage, estimated) = meter.counts();
            assert!(estimated);
            let exact = crate::chat::context::text_tokens(&whole) as f64;
            let by_bytes = whole.len().div_ceil(4) as f64;
            let got = usage.completion_tokens as f64;
            assert!(
                (got - exact).abs() < exact * 0.05,
                "{got} against {exact} (promised: {promised})"
            );
            assert!(
                (by_bytes - exact).abs() > exact * 0.2,
                "the text must tell the two apart"
            );
        }
    }

    fn chunk_of(piece: &str) -> Vec<u8> {
        serde_json::json!({"choices": [{"delta": {"content": piece}}], "usage": null})
            .to_string()
            .into_bytes()
    }

    /// Once the upstream promised its usage, chunks are held, not read: a stream whose usage
    /// came never parses them, and one whose usage never came (cut short) gets the estimate it
    /// would have got had every chunk been read at once.
    #[test]
    fn a_promised_stream_reads_its_chunks_only_when_its_usage_never_comes() {
        let pieces: Vec<String> = (0..20).map(|i| format!("word{i} ")).collect();
        let mut eager = meter();
        let mut lazy = meter();
        for piece in &pieces {
            add_content(&mut eager, &chunk_of(piece));
            lazy.chunk(&chunk_of(piece), true);
        }
        assert!(
            lazy.content.is_empty(),
            "nothing is read while the usage may come"
        );
        assert!(!lazy.held.is_empty());
        assert_eq!(lazy.counts(), eager.counts());
        assert!(lazy.held.is_empty());

        let mut answered = meter();
        for piece in &pieces {
            answered.chunk(&chunk_of(piece), true);
        }
        answered.usage = Some(Usage {
            completion_tokens: 7,
            total_tokens: 7,
            ..Usage::default()
        });
        assert_eq!(answered.counts().0.completion_tokens, 7);
        assert!(
            answered.content.is_empty(),
            "the usage came: no chunk was parsed"
        );
    }

    /// Chunks before the promise are read at once, the rest held; both count.
    #[test]
    fn chunks_before_the_promise_are_read_and_after_it_held() {
        let mut meter = meter();
        meter.chunk(br#"{"choices":[{"delta":{"content":"abcd"}}]}"#, false);
        assert_eq!(meter.content, "abcd");
        meter.chunk(&chunk_of("ef"), true);
        meter.chunk(br#"{"choices":[{"delta":{"content":"gh"}}]}"#, false);
        assert_eq!(meter.content, "abcd", "held once promised");
        meter.read_held();
        assert_eq!(meter.content, "abcdefgh");
    }

    #[test]
    fn the_usage_chunk_is_recognised_and_null_usage_stripped() {
        let only = |c: &[u8]| Partial::parse(c).unwrap().usage_only;
        assert!(only(
            br#"{"id":"x","choices":[],"usage":{"total_tokens":3}}"#
        ));
        assert!(!only(
            br#"{"choices":[{"delta":{}}],"usage":{"total_tokens":3}}"#
        ));
        assert!(!only(
            br#"{"type":"message_delta","usage":{"output_tokens":3}}"#
        ));
        let c = Bytes::from_static(br#"{"id":"x","choices":[],"usage":null}"#);
        assert_eq!(&strip_null_usage(c)[..], br#"{"id":"x","choices":[]}"#);
        let c = Bytes::from_static(br#"{"usage":null,"id":"x"}"#);
        assert_eq!(&strip_null_usage(c)[..], br#"{"id":"x"}"#);
        assert_eq!(
            content_len(
                br#"{"choices":[{"delta":{"content":"abcd"}},{"delta":{"content":"ef"}}]}"#
            ),
            6
        );
    }

    #[test]
    fn content_is_read_from_every_endpoints_deltas() {
        for (chunk, n) in [
            (&br#"{"choices":[{"text":"abc","index":0}]}"#[..], 3),
            (
                br#"{"type":"response.output_text.delta","delta":"abcd"}"#,
                4,
            ),
            (
                br#"{"type":"content_block_delta","delta":{"type":"text_delta","text":"ab"}}"#,
                2,
            ),
            (
                br#"{"type":"message_delta","delta":{"stop_reason":"end_turn"}}"#,
                0,
            ),
            (
                br#"{"type":"response.completed","response":{"output":[{"text":"x"}]}}"#,
                0,
            ),
            (b"not json", 8),
        ] {
            assert_eq!(content_len(chunk), n, "{}", String::from_utf8_lossy(chunk));
        }
        assert_eq!(
            &event_data(b"event: x\ndata: {\"a\":1}\n\n")[..],
            br#"{"a":1}"#
        );
        assert_eq!(
            &event_data(b"event: x\r\ndata:a\r\ndata: b\r\n\r\n")[..],
            b"a\nb"
        );
        assert_eq!(&event_data(b": comment\n\n")[..], b"");
    }
}

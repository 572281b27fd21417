//! The mock's SSE answer: one `chat.completion.chunk` event after another, shaped by the
//! [`Reply`] (pauses, holds, breaks, wire format), with every step recorded.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};

use super::{InFlight, Reply, Shared, StreamEventKind, CREATED};

/// Records `Disconnected` if the body stream is dropped before it finished or broke.
pub(super) struct StreamGuard {
    pub(super) shared: Arc<Shared>,
    pub(super) seq: usize,
    pub(super) key: Option<String>,
    pub(super) finished: bool,
    pub(super) _in_flight: Option<InFlight>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.shared
                .record_stream(self.seq, &self.key, StreamEventKind::Disconnected);
        }
    }
}

pub(super) struct StreamState {
    pub(super) next: usize,
    pub(super) reply: Reply,
    pub(super) model: Value,
    pub(super) seq: usize,
    pub(super) key: Option<String>,
    pub(super) guard: StreamGuard,
    pub(super) ended: bool,
    /// Pieces of the current event still to write (see [`Reply::split`]).
    pub(super) pending: VecDeque<Bytes>,
    /// The request said `stream_options.include_usage: true`: a usage-only chunk
    /// ([`usage_chunk_json`]) goes out before `[DONE]`, as OpenAI sends it.
    pub(super) include_usage: bool,
}

/// The mock's stream usage: 5 prompt tokens, 2 completion tokens a chunk.
pub fn stream_usage(chunks: usize) -> (u64, u64) {
    (5, 2 * chunks as u64)
}

/// The usage-only chunk (`"choices": []`) the mock sends when asked for usage.
pub fn usage_chunk_json(seq: usize, model: &Value, chunks: usize) -> String {
    let (prompt, completion) = stream_usage(chunks);
    json!({
        "id": format!("chatcmpl-mock-{seq}"),
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": model,
        "choices": [],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    })
    .to_string()
}

/// The SSE chunk JSON the mock sends as chunk `index` of `total` for request `seq`.
pub fn chunk_json(seq: usize, model: &Value, index: usize, total: usize) -> String {
    // The `✓` (3 bytes in UTF-8) lets a split write cut a character in two.
    let mut delta = json!({"content": format!("s{seq}c{index}✓ ")});
    if index == 0 {
        delta["role"] = json!("assistant");
    }
    let finish = if index + 1 == total {
        json!("stop")
    } else {
        Value::Null
    };
    json!({
        "id": format!("chatcmpl-mock-{seq}"),
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]
    })
    .to_string()
}

/// The bytes of one SSE event carrying `data`, as [`Reply`]'s wire options say, in the
/// pieces to write.
fn event_pieces(reply: &Reply, data: &str) -> VecDeque<Bytes> {
    let nl = if reply.crlf { "\r\n" } else { "\n" };
    let mut text = String::new();
    if reply.comments {
        text.push_str(&format!(": keep-alive{nl}{nl}: a comment line{nl}"));
    }
    // A named event is given as `event: <name>\n<data>`.
    match data
        .strip_prefix("event: ")
        .and_then(|rest| rest.split_once('\n'))
    {
        Some((name, data)) => text.push_str(&format!("event: {name}{nl}data: {data}{nl}{nl}")),
        None => text.push_str(&format!("data: {data}{nl}{nl}")),
    }
    let bytes = Bytes::from(text.clone());
    if !reply.split {
        return VecDeque::from([bytes]);
    }
    // Cut 1: inside the first multi-byte character (else in the middle of the data).
    let cut1 = text
        .char_indices()
        .find(|(_, c)| c.len_utf8() > 1)
        .map(|(i, _)| i + 1)
        .unwrap_or(text.len() / 2);
    // Cut 2: inside the blank line that ends the event (between `\n` and `\n`, or inside the
    // first `\r\n` pair).
    let cut2 = text.len() - if reply.crlf { 3 } else { 1 };
    if cut1 >= cut2 {
        return VecDeque::from([bytes.slice(..cut2), bytes.slice(cut2..)]);
    }
    VecDeque::from([
        bytes.slice(..cut1),
        bytes.slice(cut1..cut2),
        bytes.slice(cut2..),
    ])
}

pub(super) async fn next_chunk(
    mut st: StreamState,
) -> Option<(Result<Bytes, std::io::Error>, StreamState)> {
    if let Some(piece) = st.pending.pop_front() {
        tokio::time::sleep(Duration::from_millis(10)).await;
        return Some((Ok(piece), st));
    }
    if st.ended {
        return None;
    }
    let i = st.next;
    let shared = st.guard.shared.clone();
    if i < st.reply.chunks || (i == st.reply.chunks && st.reply.break_after == Some(i)) {
        if i > 0 && !st.reply.chunk_pause.is_zero() {
            tokio::time::sleep(st.reply.chunk_pause).await;
        }
        if let Some((n, d)) = st.reply.pause_after {
            if n == i {
                tokio::time::sleep(d).await;
            }
        }
        if let Some((n, gate)) = st.reply.hold_after.clone() {
            if n == i {
                gate.wait().await;
            }
        }
        if st.reply.break_after == Some(i) {
            // Let hyper flush what it has (headers, earlier chunks) first: a body error while
            // they still sit in its write buffer would abort the connection with nothing sent.
            tokio::time::sleep(Duration::from_millis(20)).await;
            st.guard.finished = true;
            st.ended = true;
            shared.record_stream(st.seq, &st.key, StreamEventKind::Broken);
            return Some((Err(std::io::Error::other("mock breaks the stream")), st));
        }
        if i < st.reply.chunks {
            let data = match st.reply.events.as_ref().and_then(|events| events.get(i)) {
                Some(event) => event.clone(),
                None => chunk_json(st.seq, &st.model, i, st.reply.chunks),
            };
            shared.record_stream(
                st.seq,
                &st.key,
                StreamEventKind::Chunk {
                    index: i,
                    data: data.clone(),
                },
            );
            st.next += 1;
            st.pending = event_pieces(&st.reply, &data);
            let first = st.pending.pop_front().unwrap_or_default();
            return Some((Ok(first), st));
        }
    }
    // All chunks sent: the usage chunk first, when asked.
    if st.include_usage && st.reply.done {
        st.include_usage = false;
        // Not recorded as a chunk: the gateway asks for it on its own behalf and hides it.
        let data = usage_chunk_json(st.seq, &st.model, st.reply.chunks);
        st.pending = event_pieces(&st.reply, &data);
        let first = st.pending.pop_front().unwrap_or_default();
        return Some((Ok(first), st));
    }
    st.ended = true;
    st.guard.finished = true;
    if st.reply.done {
        shared.record_stream(st.seq, &st.key, StreamEventKind::Done);
        st.pending = event_pieces(&st.reply, "[DONE]");
        let first = st.pending.pop_front().unwrap_or_default();
        Some((Ok(first), st))
    } else {
        shared.record_stream(st.seq, &st.key, StreamEventKind::Done);
        None
    }
}

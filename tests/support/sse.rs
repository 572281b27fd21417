//! A streamed (SSE) answer as a client sees it: events read in the background the moment they
//! are complete, each stamped with its arrival time.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, StatusCode};
use serde_json::Value;
use tokio::sync::mpsc;

use super::PATIENCE;

/// One SSE event as the client received it.
#[derive(Clone, Debug)]
pub struct SseEvent {
    /// The `data:` lines joined with `\n` (the JSON text, or `[DONE]`).
    pub data: String,
    /// When the client had the whole event.
    pub at: Instant,
}

impl SseEvent {
    pub fn is_done(&self) -> bool {
        self.data == "[DONE]"
    }
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("SSE data is not JSON ({e}): {:?}", self.data))
    }
    /// Is this an error event (`{"error":{...}}`)?
    pub fn is_error(&self) -> bool {
        !self.is_done()
            && serde_json::from_str::<Value>(&self.data)
                .ok()
                .and_then(|v| v.get("error").cloned())
                .is_some()
    }
}

/// How a response body ended, as the client saw it.
#[derive(Clone, Debug, PartialEq)]
pub enum StreamEnd {
    /// The body ended normally.
    Clean,
    /// Reading the body failed (connection aborted, …): the message.
    Error(String),
}

enum SseItem {
    Event(SseEvent),
    End(StreamEnd),
}

/// A streamed response being read in the background. Dropping it closes the connection (the
/// client goes away).
pub struct SseResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// The whole body when the answer is not `text/event-stream` (e.g. a JSON error).
    pub body: Option<Bytes>,
    rx: mpsc::UnboundedReceiver<SseItem>,
    end: Option<StreamEnd>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for SseResponse {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// A whole streamed answer: every event, and how the body ended.
#[derive(Clone, Debug)]
pub struct SseTranscript {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub events: Vec<SseEvent>,
    pub end: StreamEnd,
}

impl SseTranscript {
    pub fn data(&self) -> Vec<String> {
        self.events.iter().map(|e| e.data.clone()).collect()
    }
    pub fn has_done(&self) -> bool {
        self.events.iter().any(SseEvent::is_done)
    }
}

impl SseResponse {
    pub(super) async fn read(mut resp: reqwest::Response) -> SseResponse {
        let status = resp.status();
        let headers = resp.headers().clone();
        let is_sse = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("text/event-stream"));
        let (tx, rx) = mpsc::unbounded_channel();
        if !is_sse {
            let body = tokio::time::timeout(PATIENCE, resp.bytes())
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            let _ = tx.send(SseItem::End(StreamEnd::Clean));
            return SseResponse {
                status,
                headers,
                body: Some(body),
                rx,
                end: None,
                task: None,
            };
        }
        let task = tokio::spawn(async move {
            let mut buf = BytesMut::new();
            loop {
                match resp.chunk().await {
                    Ok(Some(bytes)) => {
                        buf.extend_from_slice(&bytes);
                        while let Some(ev) = take_event(&mut buf) {
                            if let Some(data) = ev {
                                let _ = tx.send(SseItem::Event(SseEvent {
                                    data,
                                    at: Instant::now(),
                                }));
                            }
                        }
                    }
                    Ok(None) => {
                        let _ = tx.send(SseItem::End(StreamEnd::Clean));
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(SseItem::End(StreamEnd::Error(format!("{e:?}"))));
                        return;
                    }
                }
            }
        });
        SseResponse {
            status,
            headers,
            body: None,
            rx,
            end: None,
            task: Some(task),
        }
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }

    /// The next event, or `None` once the body ended (see [`SseResponse::end`]). Panics if
    /// nothing happens within `timeout`.
    pub async fn next_event(&mut self, timeout: Duration) -> Option<SseEvent> {
        if self.end.is_some() {
            return None;
        }
        match tokio::time::timeout(timeout, self.rx.recv()).await {
            Err(_) => panic!("no SSE event and no end of stream within {timeout:?}"),
            Ok(Some(SseItem::Event(ev))) => Some(ev),
            Ok(Some(SseItem::End(end))) => {
                self.end = Some(end);
                None
            }
            Ok(None) => {
                self.end = Some(StreamEnd::Error("reader task gone".into()));
                None
            }
        }
    }

    /// How the body ended, once [`SseResponse::next_event`] returned `None`.
    pub fn end(&self) -> Option<&StreamEnd> {
        self.end.as_ref()
    }

    /// Reads every remaining event until the body ends (each gap at most `PATIENCE`).
    pub async fn collect(mut self) -> SseTranscript {
        let mut events = Vec::new();
        while let Some(ev) = self.next_event(PATIENCE).await {
            events.push(ev);
        }
        SseTranscript {
            status: self.status,
            headers: self.headers.clone(),
            events,
            end: self.end.clone().unwrap_or(StreamEnd::Clean),
        }
    }
}

/// Takes one complete SSE event off the front of `buf`: `Some(Some(data))` for an event with
/// data, `Some(None)` for one without (a comment / keep-alive), `None` if no event is complete.
fn take_event(buf: &mut BytesMut) -> Option<Option<String>> {
    let text = std::str::from_utf8(buf)
        .ok()
        .map(str::to_owned)
        .unwrap_or_else(|| String::from_utf8_lossy(buf).into_owned());
    let (end, sep) = [("\r\n\r\n", 4), ("\n\n", 2), ("\r\r", 2)]
        .iter()
        .filter_map(|(pat, len)| text.find(pat).map(|i| (i, *len)))
        .min_by_key(|(i, _)| *i)?;
    let block = text[..end].to_string();
    let _ = buf.split_to(end + sep);
    let mut data: Vec<&str> = Vec::new();
    for line in block.lines() {
        if let Some(rest) = line.strip_prefix("data:") {
            data.push(rest.strip_prefix(' ').unwrap_or(rest));
        }
    }
    Some(if data.is_empty() {
        None
    } else {
        Some(data.join("\n"))
    })
}

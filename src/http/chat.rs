//! `POST /v1/chat/completions`: body in, core request out, and the core's answer rendered as
//! JSON or as an SSE stream written event by event.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use super::auth::ClientAuth;
use super::error::HttpError;
use super::{body, RequestNote};
use crate::chat::{batches, ChunkStream, GatewayError, RequestContext};
use crate::core::{set_attempts, Caller, Core, Door};

/// The token is checked ([`ClientAuth`]) before a byte of the body is read.
#[tracing::instrument(skip_all, fields(request_id = %ctx.request_id))]
pub async fn completions(
    ClientAuth(caller): ClientAuth,
    State(core): State<Arc<Core>>,
    Extension(ctx): Extension<RequestContext>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut note = RequestNote::default();
    let mut response = match handle(&core, &ctx, &caller, &headers, body, &mut note).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    };
    response.extensions_mut().insert(note);
    response
}

async fn handle(
    core: &Core,
    ctx: &RequestContext,
    caller: &Caller,
    headers: &HeaderMap,
    body: Body,
    note: &mut RequestNote,
) -> Result<Response, HttpError> {
    let bytes = body::read_json(headers, body, core.settings.max_body_bytes).await?;
    let request = core.validate_chat(bytes)?;
    note.model = Some(request.model().to_owned());
    if request.stream() {
        let dispatched = core.stream(&request, ctx, caller, Door::Http).await;
        note.attempts = Some(dispatched.attempts.clone());
        let chunks = dispatched.result.map_err(|error| HttpError {
            error,
            attempts: Some(dispatched.attempts.clone()),
        })?;
        let mut response = Response::new(Body::from_stream(sse_body(chunks)));
        let h = response.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        // Tell buffering reverse proxies (nginx) to pass each event on at once.
        h.insert("x-accel-buffering", HeaderValue::from_static("no"));
        set_attempts(&mut response, &dispatched.attempts);
        Ok(response)
    } else {
        let dispatched = core.complete(&request, ctx, caller, Door::Http).await;
        note.attempts = Some(dispatched.attempts.clone());
        let completion = dispatched.result.map_err(|error| HttpError {
            error,
            attempts: Some(dispatched.attempts.clone()),
        })?;
        let status = StatusCode::from_u16(completion.status).unwrap_or(StatusCode::OK);
        let mut response = (status, completion.body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        set_attempts(&mut response, &dispatched.attempts);
        Ok(response)
    }
}

/// Each chunk as `data: {json}\n\n` the moment it arrives, every event already at hand in one
/// write ([`batches`]); `data: [DONE]\n\n` after a clean end; after a break, one
/// `data: {"error": …}` event and no `[DONE]`.
fn sse_body(
    chunks: ChunkStream,
) -> impl futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send {
    futures_util::stream::unfold(Some(batches(chunks)), |state| async move {
        let mut chunks = state?;
        match chunks.next().await {
            Some(Ok(batch)) => Some((Ok(frames(&batch)), Some(chunks))),
            Some(Err(error)) => Some((Ok(error_frame(&error)), None)),
            None => Some((Ok(Bytes::from_static(DONE)), None)),
        }
    })
}

const DONE: &[u8] = b"data: [DONE]\n\n";

/// A batch of events as one buffer, so it goes out in one write.
fn frames(batch: &[Bytes]) -> Bytes {
    let len = batch.iter().map(|d| d.len() + 8).sum();
    let mut out = BytesMut::with_capacity(len);
    for data in batch {
        crate::upstream::sse::put_data(&mut out, data);
    }
    out.freeze()
}

fn error_frame(error: &GatewayError) -> Bytes {
    tracing::warn!(error = %error, "stream ended with an error");
    crate::upstream::sse::named_frame(None, &error.to_openai_json())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    #[tokio::test]
    async fn events_of_one_read_go_out_as_one_frame() {
        let events =
            ["{\"a\":1}", "{\"b\":2}", "{\"c\":3}"].map(|e| Ok(Bytes::from_static(e.as_bytes())));
        let chunks: ChunkStream = Box::pin(futures_util::stream::iter(events));
        let frames: Vec<Bytes> = sse_body(chunks).map(|f| f.unwrap()).collect().await;
        assert_eq!(frames.len(), 2, "{frames:?}");
        assert_eq!(
            &frames[0][..],
            b"data: {\"a\":1}\n\ndata: {\"b\":2}\n\ndata: {\"c\":3}\n\n"
        );
        assert_eq!(&frames[1][..], DONE);
    }

    #[tokio::test]
    async fn one_event_per_read_goes_out_at_once() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Result<Bytes, GatewayError>>();
        let chunks: ChunkStream =
            Box::pin(tokio_stream::wrappers::UnboundedReceiverStream::new(rx));
        let mut body = Box::pin(sse_body(chunks));
        for event in ["one", "two", "three"] {
            assert!(body.next().now_or_never().is_none(), "nothing sent yet");
            tx.send(Ok(Bytes::from_static(event.as_bytes()))).unwrap();
            let frame = tokio::time::timeout(std::time::Duration::from_millis(50), body.next())
                .await
                .expect("an event alone goes out without waiting for another")
                .unwrap()
                .unwrap();
            assert_eq!(frame, format!("data: {event}\n\n"));
        }
        drop(tx);
        assert_eq!(&body.next().await.unwrap().unwrap()[..], DONE);
    }
}

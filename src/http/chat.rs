//! `POST /v1/chat/completions`: body in, core request out, and the core's answer rendered as
//! JSON or as an SSE stream written event by event.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;

use super::auth::ClientAuth;
use super::error::HttpError;
use super::{body, RequestNote};
use crate::chat::{ChunkStream, GatewayError, RequestContext};
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

/// Each chunk as `data: {json}\n\n` the moment it arrives; `data: [DONE]\n\n` after a clean
/// end; after a break, one `data: {"error": …}` event and no `[DONE]`.
fn sse_body(
    chunks: ChunkStream,
) -> impl futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send {
    futures_util::stream::unfold(Some(chunks), |state| async move {
        let mut chunks = state?;
        match chunks.next().await {
            Some(Ok(data)) => Some((Ok(frame(&data)), Some(chunks))),
            Some(Err(error)) => Some((Ok(error_frame(&error)), None)),
            None => Some((Ok(Bytes::from_static(b"data: [DONE]\n\n")), None)),
        }
    })
}

fn frame(data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + 8);
    out.put_slice(b"data: ");
    // A multi-line event keeps its lines: each goes out as its own `data:` line.
    let mut lines = data.split(|&b| b == b'\n');
    if let Some(first) = lines.next() {
        out.put_slice(first);
    }
    for line in lines {
        out.put_slice(b"\ndata: ");
        out.put_slice(line);
    }
    out.put_slice(b"\n\n");
    out.freeze()
}

fn error_frame(error: &GatewayError) -> Bytes {
    tracing::warn!(error = %error, "stream ended with an error");
    frame(&error.to_openai_json())
}

#[cfg(test)]
mod tests {
    use super::frame;

    #[test]
    fn frames_keep_every_line() {
        assert_eq!(&frame(b"{\"a\":1}")[..], b"data: {\"a\":1}\n\n");
        assert_eq!(&frame(b"one\ntwo")[..], b"data: one\ndata: two\n\n");
    }
}

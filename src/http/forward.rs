//! The forwarded endpoints: `POST /v1/embeddings`, `/v1/completions`, `/v1/responses`,
//! Anthropic's `/v1/messages`, and each `--passthrough-path`. The body is read like chat's,
//! checked by the core only as far as it must be, and goes through the same dispatcher; the
//! answer comes back as the upstream's JSON, or as its SSE stream: `data:` events ending with
//! `[DONE]`, or named events passed through whole. On `/v1/messages` the gateway's own errors
//! are in Anthropic's shape.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, MethodRouter};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;

use super::auth::{AnthropicAuth, ClientAuth};
use super::{body, RequestNote};
use crate::chat::{Attempts, ChunkStream, Endpoint, Events, Flavor, GatewayError, RequestContext};
use crate::core::{anthropic_error_response, error_response, set_attempts, Caller, Core};

/// The client headers Anthropic's API reads, forwarded upstream on `/v1/messages`.
const ANTHROPIC_HEADERS: [&str; 2] = ["anthropic-version", "anthropic-beta"];
/// What `anthropic-version` says when the client sent none (curl users): the one version
/// Anthropic's API has.
const ANTHROPIC_VERSION: &str = "2023-06-01";

/// The route for `endpoint`: its token check ([`ClientAuth`], or [`AnthropicAuth`] which also
/// takes `x-api-key`) runs before a byte of the body is read.
pub fn route(endpoint: Arc<Endpoint>) -> MethodRouter<Arc<Core>> {
    match endpoint.flavor {
        Flavor::OpenAi => post(
            move |ClientAuth(caller): ClientAuth,
                  State(core): State<Arc<Core>>,
                  Extension(ctx): Extension<RequestContext>,
                  headers: HeaderMap,
                  body: Body| {
                let endpoint = endpoint.clone();
                async move { forward(&core, endpoint, &ctx, &caller, &headers, body).await }
            },
        ),
        Flavor::Anthropic => post(
            move |AnthropicAuth(caller): AnthropicAuth,
                  State(core): State<Arc<Core>>,
                  Extension(ctx): Extension<RequestContext>,
                  headers: HeaderMap,
                  body: Body| {
                let endpoint = endpoint.clone();
                async move { forward(&core, endpoint, &ctx, &caller, &headers, body).await }
            },
        ),
    }
}

#[tracing::instrument(skip_all, fields(request_id = %ctx.request_id, path = %endpoint.path))]
async fn forward(
    core: &Core,
    endpoint: Arc<Endpoint>,
    ctx: &RequestContext,
    caller: &Caller,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let flavor = endpoint.flavor;
    let mut note = RequestNote::default();
    let call = Call {
        core,
        ctx,
        caller,
        headers,
    };
    let mut response = match handle(call, endpoint, body, &mut note).await {
        Ok(response) => response,
        Err((error, attempts)) => {
            let mut response = render_error(flavor, &error);
            if let Some(attempts) = attempts.filter(|a| !a.is_empty()) {
                set_attempts(&mut response, &attempts);
            }
            response
        }
    };
    response.extensions_mut().insert(note);
    response
}

type Failure = (GatewayError, Option<Attempts>);

/// Who asks, and with what, for one forwarded request.
struct Call<'a> {
    core: &'a Core,
    ctx: &'a RequestContext,
    caller: &'a Caller,
    headers: &'a HeaderMap,
}

async fn handle(
    call: Call<'_>,
    endpoint: Arc<Endpoint>,
    body: Body,
    note: &mut RequestNote,
) -> Result<Response, Failure> {
    let Call {
        core,
        ctx,
        caller,
        headers,
    } = call;
    let bytes = body::read_json(headers, body, core.settings.max_body_bytes)
        .await
        .map_err(|e| (e, None))?;
    let forwarded = match endpoint.flavor {
        Flavor::Anthropic => anthropic_headers(headers),
        Flavor::OpenAi => Vec::new(),
    };
    let request = core
        .validate_forward(endpoint.clone(), bytes, forwarded)
        .map_err(|e| (e, None))?;
    note.model = request.model().map(str::to_owned);
    if request.stream() {
        let dispatched = core.forward_stream(&request, ctx, caller).await;
        note.attempts = Some(dispatched.attempts.clone());
        let chunks = dispatched
            .result
            .map_err(|e| (e, Some(dispatched.attempts.clone())))?;
        let mut response = Response::new(Body::from_stream(sse_body(
            chunks,
            endpoint.events,
            endpoint.flavor,
        )));
        let h = response.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        h.insert("x-accel-buffering", HeaderValue::from_static("no"));
        set_attempts(&mut response, &dispatched.attempts);
        Ok(response)
    } else {
        let dispatched = core.forward(&request, ctx, caller).await;
        note.attempts = Some(dispatched.attempts.clone());
        let completion = dispatched
            .result
            .map_err(|e| (e, Some(dispatched.attempts.clone())))?;
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

fn anthropic_headers(headers: &HeaderMap) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for name in ANTHROPIC_HEADERS {
        let values: Vec<&str> = headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if !values.is_empty() {
            out.push((name, values.join(",")));
        }
    }
    if !out.iter().any(|(n, _)| *n == "anthropic-version") {
        out.push(("anthropic-version", ANTHROPIC_VERSION.to_owned()));
    }
    out
}

fn render_error(flavor: Flavor, error: &GatewayError) -> Response {
    match flavor {
        Flavor::OpenAi => error_response(error),
        Flavor::Anthropic => anthropic_error_response(error),
    }
}

/// The stream as it goes out. `data:` events are framed here and end with `[DONE]`; named
/// events come framed from the core and go out as they are. A break ends the stream with one
/// error event in the endpoint's shape (`event: error` for named events), and no `[DONE]`.
fn sse_body(
    chunks: ChunkStream,
    events: Events,
    flavor: Flavor,
) -> impl futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send {
    futures_util::stream::unfold(Some(chunks), move |state| async move {
        let mut chunks = state?;
        match chunks.next().await {
            Some(Ok(data)) => {
                let out = match events {
                    Events::Data => data_frame(&data),
                    Events::Named => data,
                };
                Some((Ok(out), Some(chunks)))
            }
            Some(Err(error)) => {
                tracing::warn!(error = %error, "stream ended with an error");
                let json = match flavor {
                    Flavor::OpenAi => error.to_openai_json(),
                    Flavor::Anthropic => error.to_anthropic_json(),
                };
                let out = match events {
                    Events::Data => data_frame(&json),
                    Events::Named => {
                        let mut out = BytesMut::from(&b"event: error\n"[..]);
                        out.put_slice(&data_frame(&json));
                        out.freeze()
                    }
                };
                Some((Ok(out), None))
            }
            None => match events {
                Events::Data => Some((Ok(Bytes::from_static(b"data: [DONE]\n\n")), None)),
                Events::Named => None,
            },
        }
    })
}

fn data_frame(data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + 8);
    for line in data.split(|&b| b == b'\n') {
        out.put_slice(b"data: ");
        out.put_slice(line);
        out.put_slice(b"\n");
    }
    out.put_slice(b"\n");
    out.freeze()
}

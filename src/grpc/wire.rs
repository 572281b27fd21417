//! The two chat methods on the gRPC wire, without tonic's generic server (`tonic::server::Grpc`):
//! the call's one request message is read and decoded here, [`ChatDoor`]'s methods answer, and
//! the answer is framed here. ListModels, health and reflection stay on tonic.
//!
//! Why not tonic's: its server boxes three futures, a decoder and an encoder per call, copies
//! every request into an 8 KiB buffer and every answer through another, and wraps the reply
//! body once more to put the attempt trail in the trailers; here a unary answer is one
//! allocation and its trailers are written once.
//!
//! The wire is tonic's, byte for byte: `content-type: application/grpc`, each message behind
//! its 5-byte prefix, `grpc-status` (and `grpc-message`, `grpc-status-details-bin`) in the
//! trailers, or in the head alone (trailers-only) when the call fails before its answer
//! ([`Status::into_http`]). A stream's messages that are ready together leave in one DATA
//! frame, as tonic's encoder batches them. The refusals are the gateway's: a compressed
//! request is UNIMPLEMENTED (it accepts none) and a compressed-flag message without an
//! encoding INTERNAL (the gRPC spec says so), a message over the size limit OUT_OF_RANGE (as
//! the HTTP door's 413), and every other malformed request INVALID_ARGUMENT, the caller's
//! fault ([`super::codec`] says the same for bad protobuf and a second message).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue};
use http_body::Frame;
use http_body_util::BodyExt;
use prost::Message;
use tonic::body::Body;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};

use super::codec::invalid;
use super::response::PREFIX;
use super::service::{ChatDoor, EncodedChunks};
use super::{pb, to_status};
use crate::chat::headers::ATTEMPTS;
use crate::chat::{GatewayError, RequestContext};

/// The chat methods this module serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Create,
    Stream,
}

/// The method `path` names, if it is one of the two chat methods.
pub fn method_of(path: &str) -> Option<Method> {
    match super::chat_method(path)? {
        "CreateChatCompletion" => Some(Method::Create),
        "StreamChatCompletion" => Some(Method::Stream),
        _ => None,
    }
}

/// The trailer every call ends with.
const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

const GRPC_ENCODING: http::HeaderName = http::HeaderName::from_static("grpc-encoding");

/// A stream's ready messages are sent once they hold this much (tonic's yield threshold), so a
/// burst never builds one unbounded frame.
const BATCH_MAX: usize = 32 * 1024;

/// Serves one call of `method`; `max_message` bounds the request message.
pub async fn serve(
    door: &ChatDoor,
    method: Method,
    max_message: usize,
    request: http::Request<Body>,
) -> http::Response<Body> {
    let request = match read_request(request, max_message).await {
        Ok(request) => request,
        Err(status) => return status.into_http(),
    };
    match method {
        Method::Create => match door.create(request).await {
            Ok(response) => {
                let (metadata, framed, extensions) = response.into_parts();
                let trailers = ok_trailers(&metadata);
                let body = Reply::Once {
                    data: Some(framed),
                    trailers: Some(trailers),
                };
                reply(metadata, extensions, body)
            }
            Err(status) => status.into_http(),
        },
        Method::Stream => match door.stream(request).await {
            Ok(response) => {
                let (metadata, messages, extensions) = response.into_parts();
                let attempts = metadata.as_ref().get(ATTEMPTS).cloned();
                let body = Reply::Stream(Streamed {
                    messages,
                    batch: BytesMut::new(),
                    attempts,
                    end: End::Open,
                });
                reply(metadata, extensions, body)
            }
            Err(status) => status.into_http(),
        },
    }
}

/// The answer's head: the door's metadata and gRPC's content type. The metadata is the
/// gateway's own (the attempt trail), never a client's, so it holds none of the names gRPC
/// reserves (`grpc-status`, `content-type`, ...) that tonic strips from a handler's.
fn reply(metadata: MetadataMap, extensions: http::Extensions, body: Reply) -> http::Response<Body> {
    let mut response = http::Response::new(Body::new(body));
    *response.extensions_mut() = extensions;
    *response.headers_mut() = metadata.into_headers();
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    response
}

/// The trailers of a call that ended well: OK, and the attempt trail the head carries.
fn ok_trailers(metadata: &MetadataMap) -> HeaderMap {
    let mut trailers = HeaderMap::with_capacity(2);
    trailers.insert(GRPC_STATUS, HeaderValue::from_static("0"));
    if let Some(attempts) = metadata.as_ref().get(ATTEMPTS) {
        trailers.insert(ATTEMPTS, attempts.clone());
    }
    trailers
}

// ---- the request ----

/// The call's one request message, with the head's metadata (and any request trailers) and
/// extensions, as tonic would have handed it to the door.
async fn read_request(
    request: http::Request<Body>,
    max_message: usize,
) -> Result<tonic::Request<pb::ChatCompletionRequest>, Status> {
    check_encoding(request.headers())?;
    let (mut parts, mut body) = request.into_parts();
    let mut buf = BytesMut::new();
    let mut message = None;
    loop {
        while let Some(payload) = next_message(&mut buf, max_message, &parts.extensions)? {
            if message.is_some() {
                return Err(invalid(
                    "TOO_MANY_MESSAGES",
                    "this call takes exactly one request message; a second one arrived",
                ));
            }
            message = Some(pb::ChatCompletionRequest::decode(payload).map_err(|e| {
                invalid(
                    "INVALID_PROTOBUF",
                    &format!("the request message is not valid protobuf: {e}"),
                )
            })?);
        }
        match body.frame().await {
            None => break,
            // The client gave up on the call: what has arrived is all there is (as tonic reads it).
            Some(Err(status)) if status.code() == Code::Cancelled => break,
            Some(Err(status)) => return Err(status),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => buf.extend_from_slice(&data),
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        parts.headers.extend(trailers);
                    }
                }
            },
        }
    }
    if !buf.is_empty() {
        return Err(invalid(
            "TRUNCATED_MESSAGE",
            "the request ended inside a message: its prefix announced more bytes than came",
        ));
    }
    let message = message.ok_or_else(|| {
        invalid(
            "MISSING_MESSAGE",
            "this call takes exactly one request message; none arrived",
        )
    })?;
    Ok(tonic::Request::from_parts(
        MetadataMap::from_headers(parts.headers),
        parts.extensions,
        message,
    ))
}

/// `grpc-encoding`: only `identity` (or none); the gateway accepts no compressed request.
fn check_encoding(headers: &HeaderMap) -> Result<(), Status> {
    let Some(encoding) = headers.get(GRPC_ENCODING) else {
        return Ok(());
    };
    if encoding.as_bytes() == b"identity" {
        return Ok(());
    }
    let shown = String::from_utf8_lossy(encoding.as_bytes());
    let mut status = Status::unimplemented(format!(
        "Content is compressed with `{shown}` which isn't supported"
    ));
    status.metadata_mut().insert(
        "grpc-accept-encoding",
        MetadataValue::from_static("identity"),
    );
    Err(status)
}

/// The next whole message in `buf`, taken out of it; `None` until one has fully arrived. Its
/// prefix is judged as soon as it is in: a message too large is refused before its bytes come.
fn next_message(
    buf: &mut BytesMut,
    max_message: usize,
    extensions: &http::Extensions,
) -> Result<Option<Bytes>, Status> {
    if buf.len() < PREFIX {
        return Ok(None);
    }
    match buf[0] {
        0 => {}
        1 => {
            return Err(Status::internal(
                "protocol error: received message with compressed-flag but no grpc-encoding was specified",
            ))
        }
        flag => {
            return Err(invalid(
                "INVALID_FRAME",
                &format!("a message's compressed flag is 0 or 1, not {flag}"),
            ))
        }
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len > max_message {
        // The context the access layer gave the request: the error names its request id.
        let ctx = extensions
            .get::<RequestContext>()
            .cloned()
            .unwrap_or_else(|| RequestContext::new(None));
        let error = GatewayError::PayloadTooLarge { limit: max_message };
        return Err(to_status(&error, &ctx, None));
    }
    if buf.len() < PREFIX + len {
        return Ok(None);
    }
    buf.advance(PREFIX);
    Ok(Some(buf.split_to(len).freeze()))
}

// ---- the answer's body ----

/// A call's answer: one message, or a stream of them; then the trailers.
enum Reply {
    Once {
        data: Option<Bytes>,
        trailers: Option<HeaderMap>,
    },
    Stream(Streamed),
}

struct Streamed {
    messages: EncodedChunks,
    /// Messages ready together, framed, waiting to leave as one DATA frame.
    batch: BytesMut,
    /// The head's attempt trail, for the trailers.
    attempts: Option<HeaderValue>,
    end: End,
}

/// Where a stream's end is.
enum End {
    /// Messages may still come.
    Open,
    /// The messages have ended; these trailers go once the batch has left.
    Trailers(HeaderMap),
    Done,
}

impl http_body::Body for Reply {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        // `Reply` is `Unpin`: the stream is boxed.
        match self.get_mut() {
            Reply::Once { data, trailers } => Poll::Ready(match data.take() {
                Some(data) => Some(Ok(Frame::data(data))),
                None => trailers.take().map(|t| Ok(Frame::trailers(t))),
            }),
            Reply::Stream(stream) => stream.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Reply::Once { data, trailers } => data.is_none() && trailers.is_none(),
            Reply::Stream(stream) => matches!(stream.end, End::Done),
        }
    }
}

impl Streamed {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        while matches!(self.end, End::Open) && self.batch.len() < BATCH_MAX {
            match self.messages.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(framed))) => self.add(framed),
                Poll::Ready(Some(Err(status))) => {
                    if let Some(error) = self.fail(status) {
                        return Poll::Ready(Some(Err(error)));
                    }
                }
                Poll::Ready(None) => {
                    let mut trailers = HeaderMap::with_capacity(2);
                    trailers.insert(GRPC_STATUS, HeaderValue::from_static("0"));
                    self.end = End::Trailers(self.with_attempts(trailers));
                }
                Poll::Pending if self.batch.is_empty() => return Poll::Pending,
                Poll::Pending => break,
            }
        }
        if !self.batch.is_empty() {
            return Poll::Ready(Some(Ok(Frame::data(self.batch.split().freeze()))));
        }
        match std::mem::replace(&mut self.end, End::Done) {
            End::Trailers(trailers) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            End::Open | End::Done => Poll::Ready(None),
        }
    }

    /// Framed messages into the batch: they are the batch (no copy) when it is empty.
    fn add(&mut self, framed: Bytes) {
        if self.batch.is_empty() {
            match framed.try_into_mut() {
                Ok(framed) => self.batch = framed,
                Err(framed) => self.batch.extend_from_slice(&framed),
            }
        } else {
            self.batch.extend_from_slice(&framed);
        }
    }

    /// Ends the stream with `status` in the trailers, after the messages already framed; a
    /// status that cannot be written as trailers is returned, to end the body with at once.
    fn fail(&mut self, status: Status) -> Option<Status> {
        let mut trailers = HeaderMap::new();
        if let Err(error) = status.add_header(&mut trailers) {
            self.end = End::Done;
            return Some(error);
        }
        self.end = End::Trailers(self.with_attempts(trailers));
        None
    }

    /// `trailers` with the attempt trail, unless they carry one (an error's status does).
    fn with_attempts(&self, mut trailers: HeaderMap) -> HeaderMap {
        if let Some(attempts) = &self.attempts {
            trailers.entry(ATTEMPTS).or_insert_with(|| attempts.clone());
        }
        trailers
    }
}

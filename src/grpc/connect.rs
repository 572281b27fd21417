//! The Connect protocol (connectrpc.com/docs/protocol) on `megallm.v1.ChatService`, on the same
//! paths as gRPC: a POST to a ChatService method whose content type is Connect's goes here, any
//! other content type goes on to gRPC / gRPC-Web (and [`super::guard`]).
//!
//! - Unary: `application/json` (the proto3 JSON mapping) or `application/proto`; the body is
//!   the message; 200 with the message in the same codec, or Connect's error JSON with the HTTP
//!   status Connect gives the code.
//! - Server streaming: `application/connect+json` or `application/connect+proto`; one
//!   enveloped request message; enveloped answers, then the end-of-stream envelope (flag 0x02,
//!   `{}` or `{"error": …, "metadata": …}`), HTTP 200 even on error.
//!
//! Nothing is decided here: each call is turned into a `tonic::Request` (headers as metadata,
//! the request's extensions, `Connect-Timeout-Ms` as `grpc-timeout`) and given to the same
//! [`ChatDoor`] methods the gRPC calls run, and their `tonic::Status` is rendered in Connect's
//! words. The JSON mapping goes through `prost-reflect` on the compiled-in descriptor set:
//! camelCase names out (either name accepted in), enums as strings.
//!
//! Why this file is longer than the rest: it is one job, the whole Connect protocol (routing,
//! the unary and streaming framings, the JSON mapping, the error JSON and status table).

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use serde_json::{json, Map, Value};
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

use super::pb::chat_service_server::ChatService;
use super::service::ChatDoor;
use super::{pb, response, FILE_DESCRIPTOR_SET, SERVICE_NAME};
use crate::chat::GatewayError;
use crate::core::BodyTimeout;

/// The Connect handler's state: the same chat door the gRPC service wraps.
pub struct Connect {
    door: Arc<ChatDoor>,
    max_message: usize,
}

impl Connect {
    pub fn new(door: Arc<ChatDoor>, max_message: usize) -> Arc<Connect> {
        Arc::new(Connect { door, max_message })
    }
}

/// The message codec of a call.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Codec {
    Json,
    Proto,
}

/// What a request's content type says about it, if it is Connect's: the codec, and whether the
/// call is a stream. No allocation: every gRPC call passes this test on its way.
fn classify(headers: &HeaderMap) -> Option<(Codec, bool)> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let media = value.split(';').next()?.trim();
    let is = |name: &str| media.eq_ignore_ascii_case(name);
    if is("application/json") {
        Some((Codec::Json, false))
    } else if is("application/proto") {
        Some((Codec::Proto, false))
    } else if is("application/connect+json") {
        Some((Codec::Json, true))
    } else if is("application/connect+proto") {
        Some((Codec::Proto, true))
    } else {
        None
    }
}

/// A Connect call: the ChatService method it names, its codec, and whether it streams.
pub struct ConnectCall {
    method: String,
    codec: Codec,
    streaming: bool,
}

/// The Connect call `request` is, if it is one: a POST with a Connect content type to a
/// ChatService method. Anything else goes on to gRPC / gRPC-Web (and [`super::guard`]).
pub fn call_of(request: &Request) -> Option<ConnectCall> {
    if request.method() != Method::POST {
        return None;
    }
    let method = super::chat_method(request.uri().path())?;
    let (codec, streaming) = classify(request.headers())?;
    Some(ConnectCall {
        method: method.to_owned(),
        codec,
        streaming,
    })
}

impl Connect {
    /// Serves a Connect call ([`call_of`] said what it is).
    pub async fn serve(&self, call: ConnectCall, request: Request) -> Response {
        if call.streaming {
            self.stream(&call.method, call.codec, request).await
        } else {
            self.unary(&call.method, call.codec, request).await
        }
    }
}

impl Connect {
    async fn unary(&self, method: &str, codec: Codec, request: Request) -> Response {
        let (parts, body) = request.into_parts();
        if let Err(status) = check_headers(&parts.headers, header::CONTENT_ENCODING) {
            return unary_error(codec, &status);
        }
        let payload = match self.read_body(&parts, body).await {
            Ok(bytes) => bytes,
            Err(status) => return unary_error(codec, &status),
        };
        let result = match method {
            "CreateChatCompletion" => match decode::<pb::ChatCompletionRequest>(codec, &payload) {
                Ok(message) => self
                    .door
                    .create(tonic_request(parts, message))
                    .await
                    .and_then(|r| {
                        let (metadata, framed, _) = r.into_parts();
                        let message = response::messages(&framed).next().ok_or_else(|| {
                            Status::internal("the answer holds no message")
                        })?;
                        Ok((metadata, in_codec::<pb::ChatCompletion>(codec, message)?))
                    }),
                Err(status) => Err(status),
            },
            "ListModels" => match decode::<pb::ListModelsRequest>(codec, &payload) {
                Ok(message) => self
                    .door
                    .list_models(tonic_request(parts, message))
                    .await
                    .and_then(|r| encoded(codec, r)),
                Err(status) => Err(status),
            },
            "StreamChatCompletion" => Err(Status::unimplemented(
                "StreamChatCompletion is a server-streaming method: send application/connect+json or application/connect+proto",
            )),
            other => Err(unknown_method(other)),
        };
        match result {
            Ok((metadata, bytes)) => {
                let mut response = Response::new(Body::from(bytes));
                copy_metadata(&metadata, response.headers_mut());
                response
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, content_type(codec, false));
                response
            }
            Err(status) => unary_error(codec, &status),
        }
    }

    async fn stream(&self, method: &str, codec: Codec, request: Request) -> Response {
        let (parts, body) = request.into_parts();
        let opened = async {
            check_headers(&parts.headers, "connect-content-encoding".parse().unwrap())?;
            let body = self.read_body(&parts, body).await?;
            let payload = unenvelope(&body)?;
            if method != "StreamChatCompletion" {
                return Err(match method {
                    "CreateChatCompletion" | "ListModels" => Status::unimplemented(format!(
                        "{method} is a unary method: send application/json or application/proto"
                    )),
                    other => unknown_method(other),
                });
            }
            let message = decode::<pb::ChatCompletionRequest>(codec, payload)?;
            self.door.stream(tonic_request(parts, message)).await
        }
        .await;
        let mut response = Response::new(Body::empty());
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, content_type(codec, true));
        match opened {
            Ok(opened) => {
                let (metadata, messages, _) = opened.into_parts();
                copy_metadata(&metadata, response.headers_mut());
                let end_metadata = metadata_json(&metadata);
                // Each chunk in its envelope; then the end-of-stream envelope: `{}` (with the
                // head's metadata) after a clean end, the error after a break.
                let frames = futures_util::stream::unfold(
                    Some((messages, end_metadata)),
                    move |state| async move {
                        let (mut messages, end_metadata) = state?;
                        let frame = match messages
                            .next()
                            .await
                            .map(|m| m.and_then(|framed| enveloped(codec, framed)))
                        {
                            Some(Ok(envelopes)) => {
                                return Some((
                                    Ok::<Bytes, std::convert::Infallible>(envelopes),
                                    Some((messages, end_metadata)),
                                ))
                            }
                            Some(Err(status)) => end_stream(Some(&status)),
                            None => end_stream_with(None, end_metadata),
                        };
                        Some((Ok(frame), None))
                    },
                );
                *response.body_mut() = Body::from_stream(frames);
            }
            Err(status) => {
                *response.body_mut() = Body::from(end_stream(Some(&status)));
            }
        }
        response
    }

    /// The request body, bounded by the gateway's message size limit and the body deadline.
    async fn read_body(
        &self,
        parts: &axum::http::request::Parts,
        body: Body,
    ) -> Result<Bytes, Status> {
        let headers = &parts.headers;
        let limit = self.max_message;
        // The access layer's context: an error names the request id the client is sent.
        let ctx = parts
            .extensions
            .get::<crate::chat::RequestContext>()
            .cloned()
            .unwrap_or_else(|| crate::chat::RequestContext::new(None));
        let fail = |e: GatewayError| super::to_status(&e, &ctx, None);
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit as u64 + 5) {
            return Err(fail(GatewayError::PayloadTooLarge { limit }));
        }
        match Limited::new(body, limit + 5).collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
                Err(fail(GatewayError::PayloadTooLarge { limit }))
            }
            Err(e) => Err(fail(match BodyTimeout::find(&*e) {
                Some(timeout) => timeout.error(),
                None => GatewayError::InvalidRequest {
                    message: format!("could not read the request body: {e}"),
                    param: None,
                    code: "invalid_body",
                },
            })),
        }
    }
}

fn unknown_method(method: &str) -> Status {
    let shown: String = method.chars().take(100).collect();
    Status::unimplemented(format!("{SERVICE_NAME} has no method `{shown}`"))
}

/// The headers Connect defines that the gateway checks: the protocol version (when sent, `1`)
/// and the body's encoding (only identity: the gateway accepts no compressed requests).
fn check_headers(headers: &HeaderMap, encoding: HeaderName) -> Result<(), Status> {
    if let Some(version) = headers.get("connect-protocol-version") {
        if version.as_bytes() != b"1" {
            return Err(Status::invalid_argument(format!(
                "connect-protocol-version must be 1, not `{}`",
                String::from_utf8_lossy(version.as_bytes())
            )));
        }
    }
    if let Some(value) = headers.get(encoding) {
        if !value.as_bytes().eq_ignore_ascii_case(b"identity") {
            return Err(Status::unimplemented(format!(
                "compressed requests (`{}`) are not accepted: send them uncompressed",
                String::from_utf8_lossy(value.as_bytes())
            )));
        }
    }
    Ok(())
}

/// The tonic request a gRPC call of the same method would have given the door: headers as
/// metadata (`Connect-Timeout-Ms` as `grpc-timeout`) and the request's extensions (the access
/// layer's request context among them).
fn tonic_request<T>(parts: axum::http::request::Parts, message: T) -> tonic::Request<T> {
    let mut headers = parts.headers;
    headers.remove("grpc-timeout");
    if let Some(ms) = headers
        .get("connect-timeout-ms")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 10 && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse::<u64>().ok())
    {
        // grpc-timeout takes at most 8 digits.
        let value = if ms <= 99_999_999 {
            format!("{ms}m")
        } else {
            format!("{}S", ms / 1000)
        };
        if let Ok(value) = HeaderValue::try_from(value) {
            headers.insert("grpc-timeout", value);
        }
    }
    tonic::Request::from_parts(
        MetadataMap::from_headers(headers),
        parts.extensions,
        message,
    )
}

fn content_type(codec: Codec, streaming: bool) -> HeaderValue {
    HeaderValue::from_static(match (codec, streaming) {
        (Codec::Json, false) => "application/json",
        (Codec::Proto, false) => "application/proto",
        (Codec::Json, true) => "application/connect+json",
        (Codec::Proto, true) => "application/connect+proto",
    })
}

/// The descriptors of `chat.proto`, decoded once from the compiled-in set.
fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(FILE_DESCRIPTOR_SET)
            .expect("the compiled-in descriptor set is valid")
    })
}

/// A generated type's descriptor, by its proto name.
trait Named: Message + Default {
    const NAME: &'static str;
}

macro_rules! named {
    ($($t:ident),*) => {
        $(impl Named for pb::$t {
            const NAME: &'static str = concat!("megallm.v1.", stringify!($t));
        })*
    };
}
named!(
    ChatCompletionRequest,
    ChatCompletion,
    ChatCompletionChunk,
    ListModelsRequest,
    ListModelsResponse
);

fn descriptor<T: Named>() -> prost_reflect::MessageDescriptor {
    pool()
        .get_message_by_name(T::NAME)
        .expect("every ChatService message is in the descriptor set")
}

/// A request message from the wire, in `codec`. Malformed input is INVALID_ARGUMENT, as the
/// gRPC door's codec says for malformed protobuf.
fn decode<T: Named>(codec: Codec, payload: &[u8]) -> Result<T, Status> {
    match codec {
        Codec::Proto => T::decode(payload).map_err(|e| {
            Status::invalid_argument(format!("the request message is not valid protobuf: {e}"))
        }),
        Codec::Json => {
            // An empty body is the empty message, as for protobuf.
            let payload: &[u8] = if payload.iter().all(u8::is_ascii_whitespace) {
                b"{}"
            } else {
                payload
            };
            let mut deserializer = serde_json::Deserializer::from_slice(payload);
            let message = DynamicMessage::deserialize(descriptor::<T>(), &mut deserializer)
                .and_then(|m| deserializer.end().map(|()| m))
                .map_err(|e| {
                    Status::invalid_argument(format!(
                        "the request message is not valid JSON for {} (the proto3 JSON mapping; OpenAI JSON goes to POST /v1/chat/completions): {e}",
                        T::NAME
                    ))
                })?;
            message
                .transcode_to::<T>()
                .map_err(|e| Status::internal(format!("transcoding the request: {e}")))
        }
    }
}

/// A message on the wire in `codec`: JSON with camelCase names and enums as strings.
fn encode<T: Named>(codec: Codec, message: &T) -> Result<Bytes, Status> {
    in_codec::<T>(codec, message.encode_to_vec().into())
}

/// Framed chunks ([`response::messages`]) as Connect envelopes: the frames are envelopes
/// already (flag 0, then the length) when the codec is proto.
fn enveloped(codec: Codec, framed: Bytes) -> Result<Bytes, Status> {
    match codec {
        Codec::Proto => Ok(framed),
        Codec::Json => {
            let mut out = BytesMut::new();
            for message in response::messages(&framed) {
                let json = in_codec::<pb::ChatCompletionChunk>(codec, message)?;
                out.extend_from_slice(&envelope(0, &json));
            }
            Ok(out.freeze())
        }
    }
}

/// An encoded `T` in `codec`: as it is, or as JSON.
fn in_codec<T: Named>(codec: Codec, encoded: Bytes) -> Result<Bytes, Status> {
    match codec {
        Codec::Proto => Ok(encoded),
        Codec::Json => {
            let dynamic = DynamicMessage::decode(descriptor::<T>(), encoded)
                .map_err(|e| Status::internal(format!("reading the answer as {}: {e}", T::NAME)))?;
            let mut out = Vec::new();
            let mut serializer = serde_json::Serializer::new(&mut out);
            dynamic
                .serialize_with_options(&mut serializer, &SerializeOptions::new())
                .map_err(|e| Status::internal(format!("writing the answer as JSON: {e}")))?;
            Ok(out.into())
        }
    }
}

fn encoded<T: Named>(
    codec: Codec,
    response: tonic::Response<T>,
) -> Result<(MetadataMap, Bytes), Status> {
    let (metadata, message, _) = response.into_parts();
    Ok((metadata, encode(codec, &message)?))
}

/// One Connect envelope: flags, 4-byte big-endian length, payload.
fn envelope(flags: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + payload.len());
    out.put_u8(flags);
    out.put_u32(payload.len() as u32);
    out.put_slice(payload);
    out.freeze()
}

/// The one request message of a streaming call, out of its envelope.
fn unenvelope(body: &[u8]) -> Result<&[u8], Status> {
    let invalid = |m: &str| Status::invalid_argument(m.to_owned());
    if body.len() < 5 {
        return Err(invalid(
            "a streaming request is one enveloped message (1 flag byte, 4-byte length, message)",
        ));
    }
    let flags = body[0];
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    if flags & 0x01 != 0 {
        return Err(Status::unimplemented(
            "compressed messages are not accepted: send them uncompressed",
        ));
    }
    if flags != 0 {
        return Err(invalid(&format!(
            "unexpected envelope flags {flags:#04x} on the request message"
        )));
    }
    let rest = &body[5..];
    if rest.len() < len {
        return Err(invalid("the request envelope is cut short"));
    }
    if rest.len() > len {
        return Err(invalid(
            "this call takes exactly one request message; more bytes followed it",
        ));
    }
    Ok(rest)
}

/// Connect's name of a code.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "canceled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

/// The HTTP status the Connect protocol gives a unary error of `code`.
fn http_status(code: Code) -> StatusCode {
    let n = match code {
        Code::Ok => 200,
        Code::Cancelled => 499,
        Code::Unknown | Code::Internal | Code::DataLoss => 500,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => 400,
        Code::DeadlineExceeded => 504,
        Code::NotFound => 404,
        Code::AlreadyExists | Code::Aborted => 409,
        Code::PermissionDenied => 403,
        Code::ResourceExhausted => 429,
        Code::Unimplemented => 501,
        Code::Unavailable => 503,
        Code::Unauthenticated => 401,
    };
    StatusCode::from_u16(n).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// Connect's error JSON for `status`: code, message, and the `google.rpc` details the gRPC door
/// attaches (ErrorInfo, BadRequest, RetryInfo, RequestInfo), each as `{type, value}` with the
/// message's protobuf bytes in base64, as Connect carries details.
fn error_json(status: &Status) -> Value {
    let mut error = Map::new();
    error.insert("code".into(), code_name(status.code()).into());
    if !status.message().is_empty() {
        error.insert("message".into(), status.message().into());
    }
    let details: Vec<Value> = tonic_types::pb::Status::decode(status.details())
        .map(|s| s.details)
        .unwrap_or_default()
        .into_iter()
        .map(|any| {
            let name = any
                .type_url
                .rsplit_once('/')
                .map_or(any.type_url.as_str(), |(_, n)| n);
            json!({
                "type": name,
                "value": base64::engine::general_purpose::STANDARD_NO_PAD.encode(&any.value),
            })
        })
        .collect();
    if !details.is_empty() {
        error.insert("details".into(), details.into());
    }
    Value::Object(error)
}

/// A unary error: Connect's error JSON (whatever the call's codec) with the code's HTTP status;
/// the status metadata (the attempt trail, a request id) as headers.
fn unary_error(_codec: Codec, status: &Status) -> Response {
    let mut response = (
        http_status(status.code()),
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        error_json(status).to_string(),
    )
        .into_response();
    copy_metadata(status.metadata(), response.headers_mut());
    if let Some(wait) = tonic_types::StatusExt::get_details_retry_info(status)
        .and_then(|r| r.retry_delay)
        .filter(|_| matches!(status.code(), Code::ResourceExhausted | Code::Unavailable))
    {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    }
    response
}

/// Response metadata a gRPC call sends as headers (ASCII entries; gRPC's own reserved ones left
/// out), as HTTP headers.
fn copy_metadata(metadata: &MetadataMap, headers: &mut HeaderMap) {
    for (name, value) in metadata.clone().into_headers().iter() {
        if name.as_str().starts_with("grpc-") || name.as_str().ends_with("-bin") {
            continue;
        }
        headers.insert(name.clone(), value.clone());
    }
}

/// Metadata as the end-of-stream message carries it: each name with its list of values.
fn metadata_json(metadata: &MetadataMap) -> Map<String, Value> {
    let mut out = Map::new();
    for (name, value) in metadata.clone().into_headers().iter() {
        if name.as_str().starts_with("grpc-") {
            continue;
        }
        if let Ok(text) = value.to_str() {
            let entry = out
                .entry(name.as_str().to_owned())
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(list) = entry {
                list.push(text.into());
            }
        }
    }
    out
}

/// The end-of-stream envelope: `{}`, or the error with its metadata.
fn end_stream(error: Option<&Status>) -> Bytes {
    let metadata = error
        .map(|s| metadata_json(s.metadata()))
        .unwrap_or_default();
    end_stream_with(error, metadata)
}

fn end_stream_with(error: Option<&Status>, metadata: Map<String, Value>) -> Bytes {
    let mut end = Map::new();
    if let Some(status) = error {
        end.insert("error".into(), error_json(status));
    }
    if !metadata.is_empty() {
        end.insert("metadata".into(), Value::Object(metadata));
    }
    envelope(0x02, Value::Object(end).to_string().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_names_are_camel_case_and_enums_strings() {
        let chunk = pb::ChatCompletionChunk {
            id: "c1".into(),
            choices: vec![pb::ChunkChoice {
                finish_reason: pb::FinishReason::Stop as i32,
                ..Default::default()
            }],
            ..Default::default()
        };
        let text = encode(Codec::Json, &chunk).unwrap();
        let value: Value = serde_json::from_slice(&text).unwrap();
        assert_eq!(value["id"], "c1");
        let reason = &value["choices"][0]["finishReason"];
        assert!(reason.is_string(), "{value}");

        // Both spellings of a field name are accepted.
        for body in [
            &br#"{"model":"m","maxTokens":5}"#[..],
            br#"{"model":"m","max_tokens":5}"#,
        ] {
            let request: pb::ChatCompletionRequest = decode(Codec::Json, body).unwrap();
            assert_eq!(request.max_tokens, Some(5));
        }
        let bad = decode::<pb::ChatCompletionRequest>(Codec::Json, b"{\"model\": 5}");
        assert_eq!(bad.unwrap_err().code(), Code::InvalidArgument);
    }

    #[test]
    fn envelopes_round_trip() {
        let frame = envelope(0, b"abc");
        assert_eq!(&frame[..5], &[0, 0, 0, 0, 3]);
        assert_eq!(unenvelope(&frame).unwrap(), b"abc");
        assert!(unenvelope(&frame[..6]).is_err());
        assert!(unenvelope(&[1, 0, 0, 0, 0]).is_err());
        let end = end_stream(Some(&Status::invalid_argument("no")));
        assert_eq!(end[0], 0x02);
        let value: Value = serde_json::from_slice(&end[5..]).unwrap();
        assert_eq!(value["error"]["code"], "invalid_argument");
    }

    #[test]
    fn codes_map_to_connect_http_statuses() {
        // The Connect protocol's table (connectrpc.com/docs/protocol, "Error Codes"), whole.
        let table = [
            (Code::Cancelled, "canceled", 499),
            (Code::Unknown, "unknown", 500),
            (Code::InvalidArgument, "invalid_argument", 400),
            (Code::DeadlineExceeded, "deadline_exceeded", 504),
            (Code::NotFound, "not_found", 404),
            (Code::AlreadyExists, "already_exists", 409),
            (Code::PermissionDenied, "permission_denied", 403),
            (Code::ResourceExhausted, "resource_exhausted", 429),
            (Code::FailedPrecondition, "failed_precondition", 400),
            (Code::Aborted, "aborted", 409),
            (Code::OutOfRange, "out_of_range", 400),
            (Code::Unimplemented, "unimplemented", 501),
            (Code::Internal, "internal", 500),
            (Code::Unavailable, "unavailable", 503),
            (Code::DataLoss, "data_loss", 500),
            (Code::Unauthenticated, "unauthenticated", 401),
        ];
        for (code, name, status) in table {
            assert_eq!(code_name(code), name, "{code:?}");
            assert_eq!(http_status(code).as_u16(), status, "{code:?}");
        }
    }
}

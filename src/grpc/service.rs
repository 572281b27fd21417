//! `megallm.v1.ChatService`: each call authorizes, turns its message into the OpenAI JSON body
//! ([`super::request`]), lets the core validate and dispatch it exactly as for the HTTP door,
//! and renders the answer ([`super::response`]) or the error ([`super::status`]).
//!
//! The chat answers leave encoded ([`ChatDoor::create`], [`ChatDoor::stream`]): the upstream
//! JSON is written as protobuf directly, and the gRPC wire ([`super::wire`]) and Connect send
//! those bytes. The tonic trait's chat methods, which nothing routes to, decode them again.

use std::pin::Pin;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use prost::Message;
use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Response, Status};

use super::call::Call;
use super::pb::chat_service_server::ChatService;
use super::request::{self, Mode};
use super::status::{set_attempts, to_status};
use super::{pb, response};
use crate::chat::{batches, Attempts, Batches, ChatRequest, ChunkStream, GatewayError};
use crate::core::{Caller, Core, Door};

/// The chat service: a handle on the shared core, nothing more.
pub struct ChatDoor {
    core: Arc<Core>,
}

impl ChatDoor {
    pub fn new(core: Arc<Core>) -> Self {
        ChatDoor { core }
    }
}

/// The chunks of one streamed call, framed ([`response::messages`] splits them): each item
/// one or more `ChatCompletionChunk`s, those that were at hand together.
pub type EncodedChunks = Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send>>;

/// The chunks of one streamed call, as proto messages.
pub type ChunkMessages =
    Pin<Box<dyn Stream<Item = Result<pb::ChatCompletionChunk, Status>> + Send>>;

impl ChatDoor {
    /// `CreateChatCompletion`: the answer as a framed `ChatCompletion`.
    pub async fn create(
        &self,
        request: Request<pb::ChatCompletionRequest>,
    ) -> Result<Response<Bytes>, Status> {
        let mut call = Call::start(&self.core, "CreateChatCompletion", &request);
        let result = self.unary(&mut call, request).await;
        call.finish(result.as_ref().map_or_else(Status::code, |_| Code::Ok));
        result
    }

    /// `StreamChatCompletion`: the chunks, framed.
    pub async fn stream(
        &self,
        request: Request<pb::ChatCompletionRequest>,
    ) -> Result<Response<EncodedChunks>, Status> {
        let mut call = Call::start(&self.core, "StreamChatCompletion", &request);
        match self.open_stream(&mut call, request).await {
            Ok((chunks, attempts)) => {
                call.head_ready();
                let mut metadata = MetadataMap::new();
                set_attempts(&mut metadata, &attempts);
                let relay = Relay::new(chunks, call, attempts);
                let mut response = Response::new(relay.into_messages());
                *response.metadata_mut() = metadata;
                Ok(response)
            }
            Err(status) => {
                call.finish(status.code());
                Err(status)
            }
        }
    }
}

/// A message this gateway encoded, as the message again.
fn decoded<M: Message + Default>(message: Bytes) -> Result<M, Status> {
    M::decode(message).map_err(|e| Status::internal(format!("decoding the answer: {e}")))
}

/// The framed messages in `framed`, decoded.
fn each_decoded<M: Message + Default>(framed: &Bytes) -> Vec<Result<M, Status>> {
    response::messages(framed).map(decoded).collect()
}

#[tonic::async_trait]
impl ChatService for ChatDoor {
    async fn create_chat_completion(
        &self,
        request: Request<pb::ChatCompletionRequest>,
    ) -> Result<Response<pb::ChatCompletion>, Status> {
        let (metadata, framed, extensions) = self.create(request).await?.into_parts();
        let message = response::messages(&framed).next().map_or_else(
            || Err(Status::internal("the answer holds no message")),
            decoded,
        )?;
        Ok(Response::from_parts(metadata, message, extensions))
    }

    type StreamChatCompletionStream = ChunkMessages;

    async fn stream_chat_completion(
        &self,
        request: Request<pb::ChatCompletionRequest>,
    ) -> Result<Response<ChunkMessages>, Status> {
        let (metadata, chunks, extensions) = self.stream(request).await?.into_parts();
        let messages = chunks.flat_map(|framed| {
            let decoded = match framed {
                Ok(framed) => each_decoded(&framed),
                Err(status) => vec![Err(status)],
            };
            futures_util::stream::iter(decoded)
        });
        let messages: ChunkMessages = Box::pin(messages);
        Ok(Response::from_parts(metadata, messages, extensions))
    }

    async fn list_models(
        &self,
        request: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        let mut call = Call::start(&self.core, "ListModels", &request);
        let result = self.models(&call, &request).await;
        call.head_ready();
        call.finish(result.as_ref().map_or_else(Status::code, |_| Code::Ok));
        result
    }
}

impl ChatDoor {
    #[tracing::instrument(skip_all, fields(request_id = %call.ctx.request_id, model))]
    async fn unary(
        &self,
        call: &mut Call,
        request: Request<pb::ChatCompletionRequest>,
    ) -> Result<Response<Bytes>, Status> {
        let fail = |e: GatewayError, call: &Call, attempts: Option<&Attempts>| {
            to_status(&e, &call.ctx, attempts)
        };
        let (chat, caller) = self.prepare(call, &request, Mode::Unary)?;
        let dispatched = self
            .core
            .complete(&chat, &call.ctx, &caller, Door::Grpc)
            .await;
        call.set_attempts(&dispatched.attempts);
        call.head_ready();
        let attempts = &dispatched.attempts;
        let completion = dispatched
            .result
            .map_err(|e| fail(e, call, Some(attempts)))?;
        let message =
            response::completion(&completion.body).map_err(|e| fail(e, call, Some(attempts)))?;
        let mut response = Response::new(message);
        set_attempts(response.metadata_mut(), attempts);
        Ok(response)
    }

    #[tracing::instrument(skip_all, fields(request_id = %call.ctx.request_id, model))]
    async fn open_stream(
        &self,
        call: &mut Call,
        request: Request<pb::ChatCompletionRequest>,
    ) -> Result<(ChunkStream, Attempts), Status> {
        let fail = |e: GatewayError, call: &Call, attempts: Option<&Attempts>| {
            to_status(&e, &call.ctx, attempts)
        };
        let (chat, caller) = self.prepare(call, &request, Mode::Stream)?;
        let dispatched = self
            .core
            .stream(&chat, &call.ctx, &caller, Door::Grpc)
            .await;
        call.set_attempts(&dispatched.attempts);
        match dispatched.result {
            Ok(chunks) => Ok((chunks, dispatched.attempts)),
            Err(e) => Err(fail(e, call, Some(&dispatched.attempts))),
        }
    }

    /// What both chat calls do first: check the token (who the caller is), turn the message
    /// into the OpenAI body, and let the core validate it.
    fn prepare(
        &self,
        call: &mut Call,
        request: &Request<pb::ChatCompletionRequest>,
        mode: Mode,
    ) -> Result<(ChatRequest, Caller), Status> {
        let fail = |e: GatewayError, call: &Call| to_status(&e, &call.ctx, None);
        let caller = call
            .authorize(request.metadata())
            .map_err(|e| fail(e, call))?;
        let body = request::to_json(request.get_ref(), mode).map_err(|e| fail(e, call))?;
        let chat = self.core.validate_chat(body).map_err(|e| fail(e, call))?;
        call.set_model(chat.model());
        tracing::Span::current().record("model", chat.model());
        Ok((chat, caller))
    }

    async fn models(
        &self,
        call: &Call,
        request: &Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        call.authorize(request.metadata())
            .map_err(|e| to_status(&e, &call.ctx, None))?;
        let list = self.core.models.list();
        let models = match call.ctx.deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, list).await.map_err(|_| {
                let e = GatewayError::Timeout {
                    kind: crate::chat::TimeoutKind::Deadline,
                    detail: "listing the models".into(),
                };
                to_status(&e, &call.ctx, None)
            })?,
            None => list.await,
        };
        let data = models
            .models
            .iter()
            .map(|m| pb::Model {
                id: m.id.clone(),
                created: m.created,
                owned_by: m.owned_by.clone(),
                context_length: m.context_length,
                max_output_tokens: m.max_output_tokens,
                capabilities: m.capabilities.iter().map(|c| c.name().to_owned()).collect(),
            })
            .collect();
        let mut response = Response::new(pb::ListModelsResponse { data });
        response.metadata_mut().insert(
            crate::chat::headers::MODELS_SOURCE,
            tonic::metadata::MetadataValue::from_static(models.source.name()),
        );
        Ok(response)
    }
}

/// A streamed call's life after its head: each upstream chunk becomes one framed message the
/// moment it arrives, and the chunks already at hand ([`batches`]) are framed into one piece,
/// which the wire sends as one DATA frame. Built directly on the core's chunk stream, so a
/// client that cancels drops the upstream request with it. The core's stream already ends at
/// the call's deadline.
struct Relay {
    chunks: Batches,
    /// A chunk of the last batch that could not be read: the stream's end, once the chunks
    /// framed before it have gone.
    failed: Option<GatewayError>,
    call: Call,
    attempts: Attempts,
}

impl Relay {
    fn new(chunks: ChunkStream, call: Call, attempts: Attempts) -> Relay {
        Relay {
            chunks: batches(chunks),
            failed: None,
            call,
            attempts,
        }
    }

    fn into_messages(self) -> EncodedChunks {
        Box::pin(futures_util::stream::unfold(
            Some(self),
            |state| async move {
                let mut relay = state?;
                let error = loop {
                    if let Some(error) = relay.failed.take() {
                        break error;
                    }
                    match relay.chunks.next().await {
                        Some(Ok(batch)) => {
                            // Protobuf is mostly shorter than its JSON: one allocation.
                            let json: usize = batch.iter().map(|data| data.len()).sum();
                            let mut framed = BytesMut::with_capacity(json);
                            for data in &batch {
                                if let Err(error) = response::chunk(data, &mut framed) {
                                    relay.failed = Some(error);
                                    break;
                                }
                            }
                            if !framed.is_empty() {
                                return Some((Ok(framed.freeze()), Some(relay)));
                            }
                        }
                        Some(Err(error)) => break error,
                        None => {
                            // A clean end ([DONE]): OK. The wire's trailers carry the attempt
                            // trail, as Connect's end does.
                            relay.call.finish(Code::Ok);
                            return None;
                        }
                    }
                };
                tracing::warn!(request_id = %relay.call.ctx.request_id, error = %error, "stream ended with an error");
                let status = to_status(&error, &relay.call.ctx, Some(&relay.attempts));
                relay.call.finish(status.code());
                Some((Err(status), None))
            },
        ))
    }
}

//! The gRPC door: `megallm.v1.ChatService` (proto in `proto/megallm/v1/chat.proto`), server
//! reflection (v1 and v1alpha), `grpc.health.v1.Health`, and gRPC-Web, all as routes merged
//! into the one axum server.
//!
//! - [`service`]: the `ChatService` handlers. Each chat call builds the same OpenAI JSON body
//!   the HTTP door would receive and goes through the same [`Core::validate_chat`] and
//!   dispatcher; nothing about keys, retries or validation lives here.
//! - [`request`]: proto request → OpenAI JSON bytes.
//! - [`response`]: upstream JSON (whole body, or one SSE chunk) → proto messages.
//! - [`status`]: the one table from [`crate::chat::GatewayError`] to a `tonic::Status` with
//!   `tonic-types` details (BadRequest, RetryInfo, ErrorInfo, RequestInfo).
//! - [`call`]: what a call knows besides its message (request id, `grpc-timeout` deadline,
//!   gateway token) and its one access-log line and metrics sample.
//! - [`door`]: the one service behind every gRPC path: Connect, the guard, gRPC-Web, then
//!   [`wire`] for the two chat methods and the tonic services for the rest, in that order.
//! - [`wire`]: the two chat methods' gRPC framing (request message in, answer and trailers
//!   out) without tonic's generic server, the same bytes on the wire.
//! - [`trailers`]: the attempt trail in the trailers of successful calls too.
//! - [`codec`]: prost's codec, strict on requests: malformed protobuf and a second request
//!   message are INVALID_ARGUMENT (ListModels; [`wire`] says the same for the chat methods).
//! - [`guard`]: non-gRPC content types (415) and oversized metadata (RESOURCE_EXHAUSTED),
//!   refused before tonic sees the call.
//! - [`connect`]: the Connect protocol (unary and server streaming, JSON and proto) on the
//!   ChatService paths, through the same [`service::ChatDoor`] methods.
//! - [`health`]: keeps the health service's status in step with the key pool.

mod call;
mod codec;
mod connect;
mod door;
mod guard;
mod health;
mod request;
mod response;
mod service;
mod status;
mod trailers;
mod wire;

use std::sync::Arc;

use axum::Router;

use crate::core::Core;

pub(crate) use door::Door;
/// For errors made below the service (a request body too slow to arrive).
pub(crate) use status::to_status;

/// The types and client/server stubs generated from `proto/megallm/v1/chat.proto`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/megallm.v1.rs"));
}

/// The encoded descriptor set of `chat.proto` and its imports, for server reflection.
const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/megallm_descriptor.bin"));

/// The fully qualified name of the chat service, as health checks and reflection know it.
const SERVICE_NAME: &str = "megallm.v1.ChatService";

/// The ChatService method `path` names (`/megallm.v1.ChatService/{method}`), if it names one.
fn chat_method(path: &str) -> Option<&str> {
    path.strip_prefix('/')?
        .strip_prefix(SERVICE_NAME)?
        .strip_prefix('/')
}

/// The gRPC door: chat, health and reflection services, each also reachable over gRPC-Web
/// (HTTP/1.1 `application/grpc-web*`); the chat service also speaks the Connect protocol on
/// the same paths. Every one of their paths goes to the one [`Door`].
#[derive(Clone)]
pub(crate) struct Grpc {
    door: Door,
    /// The services whose paths (`/{name}/…`) the door serves.
    names: [&'static str; 4],
}

impl Grpc {
    /// The door's paths as routes (`/{name}/{*rest}`, any method), for calls that take the
    /// HTTP router's way.
    pub fn router(&self) -> Router {
        self.names.iter().fold(Router::new(), |router, name| {
            router.route_service(&format!("/{name}/{{*rest}}"), self.door.clone())
        })
    }

    /// Whether [`Grpc::router`] routes `path` to the door: `/{name}/` and at least one more
    /// byte (a catch-all matches no empty rest).
    pub fn serves(&self, path: &str) -> bool {
        serves(&self.names, path)
    }

    pub fn door(&self) -> Door {
        self.door.clone()
    }
}

impl Grpc {
    pub fn new(core: Arc<Core>) -> Grpc {
        let reporter = tonic_health::server::HealthReporter::new();
        let health_service = tonic_health::pb::health_server::HealthServer::new(health::Health(
            tonic_health::server::HealthService::from_health_reporter(reporter.clone()),
        ));
        health::spawn(Arc::downgrade(&core), reporter);
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                // google.rpc error details, so reflection clients (grpcurl) can print the
                // BadRequest / RetryInfo / ErrorInfo / RequestInfo an error carries.
                .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        };
        // Both builds only fail on a malformed descriptor set, which is compiled in: a bug, not
        // a runtime condition.
        let reflection_v1 = reflection()
            .build_v1()
            .expect("the compiled-in descriptor sets are valid");
        let reflection_v1alpha = reflection()
            .build_v1alpha()
            .expect("the compiled-in descriptor sets are valid");
        // The same size limit as the HTTP door's body limit.
        let max_message = core.settings.max_body_bytes;
        let door = Arc::new(service::ChatDoor::new(core));
        let connect = connect::Connect::new(door.clone(), max_message);
        let chat = pb::chat_service_server::ChatServiceServer::from_arc(door.clone())
            .max_decoding_message_size(max_message);
        let names = [
            SERVICE_NAME,
            service_name(&health_service),
            service_name(&reflection_v1),
            service_name(&reflection_v1alpha),
        ];
        let others = tonic::service::Routes::new(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha);
        Grpc {
            door: Door::new(connect, door, max_message, chat, others),
            names,
        }
    }
}

fn serves(names: &[&str], path: &str) -> bool {
    let Some((name, rest)) = path.strip_prefix('/').and_then(|p| p.split_once('/')) else {
        return false;
    };
    !rest.is_empty() && names.contains(&name)
}

/// The name a tonic service is routed by (`grpc.health.v1.Health`).
fn service_name<S: tonic::server::NamedService>(_: &S) -> &'static str {
    S::NAME
}

#[cfg(test)]
mod tests {
    /// The paths the server sends to the door without the router are the ones the router
    /// would have sent there (`/{name}/{*rest}`), no more.
    #[test]
    fn the_door_serves_what_its_routes_match() {
        let names = [super::SERVICE_NAME, "grpc.health.v1.Health"];
        for path in [
            "/megallm.v1.ChatService/CreateChatCompletion",
            "/megallm.v1.ChatService/Nope",
            "/megallm.v1.ChatService/a/b",
            "/grpc.health.v1.Health/Check",
        ] {
            assert!(super::serves(&names, path), "{path}");
        }
        for path in [
            "/megallm.v1.ChatService/",
            "/megallm.v1.ChatService",
            "/megallm.v1.ChatServicex/Create",
            "/v1/chat/completions",
            "/",
            "",
            "/other.Service/Method",
        ] {
            assert!(!super::serves(&names, path), "{path}");
        }
    }
}

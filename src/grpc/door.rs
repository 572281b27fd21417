//! The one service behind every gRPC path, in the order a call meets it: a Connect call to a
//! ChatService method goes to [`super::connect`]; then [`super::guard`] refuses what is not gRPC
//! or carries too much metadata; gRPC-Web (its content types only) is translated by tonic-web;
//! and the path's service answers: [`super::wire`] for the two chat methods (their trailers
//! carry the attempt trail already), a tonic service for the rest, with the attempt trail
//! copied into its trailers ([`super::trailers`]).
//!
//! Why one hand-written service rather than a stack of axum middleware: each `from_fn` layer
//! boxed a future and cloned the service under it on every call, and the tonic services sat
//! behind a second axum router. Here a native gRPC chat call costs one boxed future.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, StatusCode, Version};
use axum::response::Response;
use tower::{Layer, Service};

use super::connect::{self, Connect};
use super::pb::chat_service_server::ChatServiceServer;
use super::service::ChatDoor;
use super::{guard, trailers, wire};

/// A tonic service's answer.
type TonicResponse = http::Response<tonic::body::Body>;

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, Infallible>> + Send>>;

/// The gRPC door as one `tower::Service`; cloning it is one reference count.
#[derive(Clone)]
pub struct Door(Arc<Parts>);

struct Parts {
    connect: Arc<Connect>,
    services: Services,
}

impl Door {
    /// `door` answers the two chat methods ([`wire`], requests up to `max_message` bytes);
    /// `chat` the chat service's other paths; `others` (health, reflection) every other gRPC
    /// path the router sends here.
    pub fn new(
        connect: Arc<Connect>,
        door: Arc<ChatDoor>,
        max_message: usize,
        chat: ChatServiceServer<ChatDoor>,
        others: tonic::service::Routes,
    ) -> Door {
        Door(Arc::new(Parts {
            connect,
            services: Services {
                door,
                max_message,
                chat,
                others,
            },
        }))
    }
}

impl Service<Request> for Door {
    type Response = Response;
    type Error = Infallible;
    type Future = DoorFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Every part is always ready: tonic's servers and Connect hold no capacity of their own.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> DoorFuture {
        let parts = &self.0;
        if let Some(call) = connect::call_of(&request) {
            let connect = parts.connect.clone();
            return DoorFuture::Boxed(Box::pin(
                async move { Ok(connect.serve(call, request).await) },
            ));
        }
        if let Some(refused) = guard::refusal(&request) {
            return DoorFuture::Now(Some(refused));
        }
        if is_grpc_web(request.headers()) {
            let mut web = tonic_web::GrpcWebLayer::new().layer(parts.services.clone());
            let call = web.call(request);
            return DoorFuture::Boxed(Box::pin(async move { Ok(call.await?.map(Body::new)) }));
        }
        if request.version() != Version::HTTP_2 {
            // What tonic-web answers a call that is neither gRPC-Web nor over HTTP/2: native
            // gRPC needs HTTP/2's trailers.
            let mut response = Response::new(Body::empty());
            *response.status_mut() = StatusCode::BAD_REQUEST;
            return DoorFuture::Now(Some(response));
        }
        DoorFuture::Grpc(parts.services.route(request.map(tonic::body::Body::new)))
    }
}

/// The content types tonic-web translates (exactly these, as tonic-web matches them).
fn is_grpc_web(headers: &HeaderMap) -> bool {
    matches!(
        headers.get(header::CONTENT_TYPE).map(|v| v.as_bytes()),
        Some(
            b"application/grpc-web"
                | b"application/grpc-web+proto"
                | b"application/grpc-web-text"
                | b"application/grpc-web-text+proto"
        )
    )
}

/// The services by path: the two chat methods on [`wire`], the rest on tonic's, each answer
/// with its attempt trail in the trailers.
#[derive(Clone)]
struct Services {
    door: Arc<ChatDoor>,
    max_message: usize,
    chat: ChatServiceServer<ChatDoor>,
    others: tonic::service::Routes,
}

impl Services {
    fn route(&self, request: http::Request<tonic::body::Body>) -> Trailed {
        let path = request.uri().path();
        if let Some(method) = wire::method_of(path) {
            let (door, max_message) = (self.door.clone(), self.max_message);
            // The wire's answers carry the attempt trail in their trailers already.
            return Trailed {
                call: Box::pin(async move {
                    Ok(wire::serve(&door, method, max_message, request).await)
                }),
                trail: false,
            };
        }
        let call = if super::chat_method(path).is_some() {
            self.chat.clone().call(request)
        } else {
            Box::pin(self.others.clone().call(request))
        };
        Trailed { call, trail: true }
    }
}

/// What tonic-web wraps for gRPC-Web calls.
impl Service<http::Request<tonic::body::Body>> for Services {
    type Response = TonicResponse;
    type Error = Infallible;
    type Future = Trailed;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Trailed {
        self.route(request)
    }
}

/// A call whose answer gets [`trailers::attempts_in_trailers`] when `trail` (tonic's).
pub struct Trailed {
    call: BoxFuture<TonicResponse>,
    trail: bool,
}

impl Future for Trailed {
    type Output = Result<TonicResponse, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let response = ready!(self.call.as_mut().poll(cx))?;
        Poll::Ready(Ok(if self.trail {
            trailers::attempts_in_trailers(response)
        } else {
            response
        }))
    }
}

/// The door's answer: at once (a refusal), a native gRPC call, or a boxed one (Connect,
/// gRPC-Web).
pub enum DoorFuture {
    Now(Option<Response>),
    Grpc(Trailed),
    Boxed(BoxFuture<Response>),
}

impl Future for DoorFuture {
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Every variant is `Unpin` (the futures are boxed), so no projection is needed.
        match self.get_mut() {
            DoorFuture::Now(response) => Poll::Ready(Ok(response
                .take()
                .expect("a DoorFuture is not polled after it is ready"))),
            DoorFuture::Grpc(call) => Pin::new(call)
                .poll(cx)
                .map_ok(|response| response.map(Body::new)),
            DoorFuture::Boxed(call) => call.as_mut().poll(cx),
        }
    }
}

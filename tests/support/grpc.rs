//! The gRPC door as a client sees it: a tonic channel and client to the gateway's one port,
//! the smallest request, raw gRPC frames for calls written by hand, and a bound on every await.

use std::future::Future;

use megallm_gateway::grpc::pb;
use megallm_gateway::grpc::pb::chat_service_client::ChatServiceClient;
use tonic::transport::Channel;

use super::{TestGateway, PATIENCE};

/// A plaintext HTTP/2 channel to the gateway.
pub async fn channel(gw: &TestGateway) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{}", gw.addr))
        .expect("endpoint")
        .connect()
        .await
        .expect("gRPC connects")
}

/// A `ChatService` client on a new channel.
pub async fn grpc_client(gw: &TestGateway) -> ChatServiceClient<Channel> {
    ChatServiceClient::new(channel(gw).await)
}

/// A message of one text part.
pub fn text(role: &str, text: &str) -> pb::Message {
    pb::Message {
        role: role.into(),
        content: vec![pb::ContentPart {
            part: Some(pb::content_part::Part::Text(text.into())),
        }],
        ..Default::default()
    }
}

/// `{"messages":[{"role":"user","content":"hi"}]}` as a proto request.
pub fn hi() -> pb::ChatCompletionRequest {
    pb::ChatCompletionRequest {
        messages: vec![text("user", "hi")],
        ..Default::default()
    }
}

/// Bounds an await on the gateway so a broken door fails instead of hanging.
pub async fn patient<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(PATIENCE, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer in {PATIENCE:?}"))
}

/// One gRPC length-prefixed frame around `payload`: flag 0 (uncompressed), 4-byte big-endian
/// length, the bytes.
pub fn frame_bytes(payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8];
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// One gRPC frame around an encoded message.
pub fn frame(message: &impl prost::Message) -> Vec<u8> {
    frame_bytes(&message.encode_to_vec())
}

/// Splits a gRPC(-Web) body into its frames: `(flag, payload)`.
pub fn frames(mut body: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while body.len() >= 5 {
        let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
        assert!(body.len() >= 5 + len, "truncated gRPC frame");
        out.push((body[0], body[5..5 + len].to_vec()));
        body = &body[5 + len..];
    }
    assert!(body.is_empty(), "trailing bytes after the gRPC frames");
    out
}

//! megallm-gateway: one pool of upstream LLM API keys behind two front doors on one port.
//!
//! A request meets these modules in this order:
//!
//! - [`http`] and [`grpc`]: the two doors. Each turns its wire format into the core's
//!   [`chat::ChatRequest`] and renders the core's answer (a body or a chunk stream) and errors
//!   ([`chat::GatewayError`]) back. Nothing else lives in a door.
//! - [`chat`]: the transport-neutral core types: validated request, request context, chunk
//!   stream, attempt trail, the one error enum.
//! - [`upstream`]: the dispatcher (attempt loop with retries before the first byte), the one
//!   hyper client (TLS by rustls), the incremental SSE parser, the model list, the revoked-key
//!   probe.
//! - [`keys`]: the key scheduler: pool, per-key state machine, outcome classification, choice
//!   strategies, leases, masking of key material.
//! - [`gateway`]: the shared [`gateway::Core`] and the [`Gateway`] handle (start, address,
//!   shutdown, key reloads); [`server`]: the one listener and the limits every client
//!   connection lives under (cap, header, body and idle timeouts); [`config`]: settings;
//!   [`metrics`]; [`demo`]: the embedded simulated upstream behind `--demo`.

pub mod chat;
pub mod config;
pub mod demo;
pub mod gateway;
pub mod grpc;
pub mod http;
pub mod keys;
pub mod metrics;
pub mod server;
pub mod telemetry;
pub mod upstream;

pub use config::Settings;
pub use gateway::Gateway;

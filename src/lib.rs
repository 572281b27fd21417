//! megallm-gateway: one pool of upstream LLM API keys behind two front doors on one port.
//!
//! A request meets these modules in this order:
//!
//! - `server`: the one listener where the doors meet: both doors' routes on one router, the
//!   fallback for unknown paths, CORS when `--cors-origin` asks for it, and the limits every
//!   client connection lives under (cap, header, body and idle timeouts).
//! - `http` and [`grpc`]: the two doors. Each turns its wire format into the core's
//!   `chat::ChatRequest` and renders the core's answer (a body or a chunk stream) and errors
//!   (`chat::GatewayError`) back. Nothing else lives in a door, but for what describes it: the
//!   HTTP door's OpenAPI document (`/openapi.json`, `/docs`) and the original service's own
//!   routes (`/`, `/health`, `/v1/models/{id}/info`).
//! - `core`: `Core`, what both doors share (settings, the key pool behind its methods, the
//!   dispatcher, the model list, metrics), and the token checks. No door is imported by it.
//! - `clients`: the client tokens (name, `sha256:` form, `models=`) and their limits (`rpm`,
//!   `tpm`, `max_concurrent`, `daily_tokens`), per process or across replicas in Redis.
//! - `usage`: one usage record per request (the meter that goes with it, streams included),
//!   the usage log writer, totals for `/admin/usage` and `gateway_tokens_total`.
//! - `upstream`: the dispatcher (attempt loop with retries before the first byte), the one
//!   hyper client (TLS by rustls), the incremental SSE parser, the model list, the revoked-key
//!   probe.
//! - `keys`: the key scheduler: pool, per-key state machine, outcome classification, choice
//!   strategies, leases, masking of key material.
//! - `chat`: the transport-neutral types: validated request, request context, chunk stream,
//!   attempt trail, the one error enum, the header names the gateway defines; `chat::context`
//!   the context-length check. `catalogue`: what the gateway knows of each model (context
//!   length, output limit, capabilities), built in or from `--models-file`.
//!
//! Around them: `gateway` at the top (the [`Gateway`] handle: start, address, shutdown, key
//! reloads by file watch and SIGHUP); [`config`]: [`Settings`]; `metrics`; `demo`: the
//! embedded simulated upstream behind `--demo`; [`telemetry`]: logging and the OTLP trace export; `trace`: the request and
//! upstream-attempt spans it exports (none are made while it is off).
//!
//! The public surface is what `main` and the integration tests use: [`Gateway`],
//! [`Settings`] (and [`config`]'s types), the generated gRPC types ([`grpc::pb`]) and
//! [`telemetry::init`].

mod catalogue;
mod chat;
mod clients;
pub mod config;
mod core;
mod demo;
mod gateway;
pub mod grpc;
mod http;
mod keys;
mod metrics;
mod server;
pub mod telemetry;
mod trace;
mod upstream;
mod usage;

pub use config::Settings;
pub use gateway::{Gateway, StartError};

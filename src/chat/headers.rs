//! The header (and gRPC metadata) names the gateway defines, spelled once for both doors, the
//! server and the upstream client.

/// The request id: taken from the client if sane, else made; echoed on every answer and sent
/// upstream.
pub const REQUEST_ID: &str = "x-request-id";

/// The attempt trail (`key-2:429,key-3:200`): an HTTP response header; gRPC initial metadata
/// and trailers.
pub const ATTEMPTS: &str = "x-gateway-attempts";

/// Where a model list came from (`upstream`, `cache`, `catalogue`): an HTTP response header;
/// gRPC initial metadata.
pub const MODELS_SOURCE: &str = "x-gateway-models-source";

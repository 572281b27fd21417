//! Everything that talks to the upstream: the one HTTP client, the SSE parser, the attempt
//! loop that pairs requests with keys ([`Dispatcher`]), the model list and the key probe.

mod client;
mod dispatch;
mod h1;
mod health;
pub mod models;
pub mod probe;
pub mod sse;
mod unstreamed;
mod verdict;

pub use client::{ClientSetupError, UpstreamClient};
pub use dispatch::Dispatcher;
pub use models::{ModelInfo, Models, Source as ModelsSource};

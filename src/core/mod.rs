//! What both doors share, one per gateway: [`Core`] (settings, key pool, dispatcher, model
//! list, metrics, client tokens) and the door-neutral pieces both doors and the server use:
//! the token checks ([`auth`]), the OpenAI error response ([`render`]) and the request body's
//! deadline error ([`BodyTimeout`]).
//!
//! It imports no door and not the server: `http/` and `grpc/` reach the key pool only through
//! `Core`'s methods, and the plain data they show (`KeyView`, `KeyStats`, `ReloadSummary`) is
//! re-exported here.

mod auth;
mod body_timeout;
mod chat;
mod forward;
mod render;

use std::sync::Arc;

use bytes::Bytes;

pub use body_timeout::BodyTimeout;
pub use render::{anthropic_error_response, error_response, set_attempts};

pub use crate::catalogue::Catalogue;
use crate::chat::{ChatRequest, Endpoint, Forward, GatewayError};
use crate::clients::Clients;
pub use crate::clients::{Caller, TokensReloaded};
use crate::config::Settings;
use crate::keys::KeyPool;
pub use crate::keys::{KeyStats, KeyView, ReloadSummary};
pub use crate::metrics::{Door, Metrics, Route, Status};
/// The trace spans, for the doors to open a request's and record its status.
pub(crate) use crate::trace;
use crate::upstream::{Dispatcher, Models};
pub use crate::upstream::{ModelInfo, ModelsSource};

/// Shared by both doors; one per gateway.
pub struct Core {
    pub settings: Settings,
    pub dispatcher: Dispatcher,
    pub models: Models,
    /// Shared with the dispatcher, which records the attempt and stream metrics.
    pub metrics: Arc<Metrics>,
    /// What the gateway knows of each model (context length, output limit, capabilities).
    pub catalogue: Arc<Catalogue>,
    /// The forwarded endpoints: the built-in ones, then `--passthrough-path`s.
    endpoints: Vec<Arc<Endpoint>>,
    /// Private: doors see the pool through the methods below, so none imports `keys/`.
    pool: Arc<KeyPool>,
    /// The client tokens, their names and limits.
    clients: Arc<Clients>,
    /// Where every request's usage record goes.
    usage: Arc<crate::usage::Recorder>,
}

/// The parts a [`Core`] is made of, each built in `Gateway::start`, which owns their order.
pub struct Parts {
    pub pool: Arc<KeyPool>,
    pub dispatcher: Dispatcher,
    pub models: Models,
    pub catalogue: Arc<Catalogue>,
    pub clients: Arc<Clients>,
    pub usage: Arc<crate::usage::Recorder>,
    pub metrics: Arc<Metrics>,
}

impl Core {
    pub fn new(settings: Settings, parts: Parts) -> Core {
        let Parts {
            pool,
            dispatcher,
            models,
            catalogue,
            clients,
            usage,
            metrics,
        } = parts;
        let mut endpoints: Vec<Arc<Endpoint>> =
            Endpoint::builtin().into_iter().map(Arc::new).collect();
        for path in &settings.passthrough_paths {
            if !endpoints.iter().any(|e| &e.path == path) {
                endpoints.push(Arc::new(Endpoint::passthrough(path)));
            }
        }
        Core {
            endpoints,
            settings,
            dispatcher,
            models,
            catalogue,
            metrics,
            pool,
            clients,
            usage,
        }
    }

    /// Validates and defaults a chat body: the one validation both doors use. A request
    /// whose prompt plus `max_tokens` certainly exceeds the model's context (when the
    /// catalogue knows it) is refused here, before any key is spent.
    pub fn validate_chat(&self, body: Bytes) -> Result<ChatRequest, GatewayError> {
        let request = ChatRequest::from_json(body, &self.settings.default_model)?;
        let context = self
            .catalogue
            .get(request.model())
            .and_then(|m| m.context_length);
        if let Some(context) = context {
            crate::chat::context::check(&request, context)?;
        }
        Ok(request)
    }

    /// The endpoints forwarded besides chat, each for the HTTP door to route.
    pub fn endpoints(&self) -> &[Arc<Endpoint>] {
        &self.endpoints
    }

    /// Checks and defaults a forwarded endpoint's body (JSON object, `model` defaulted where
    /// the endpoint needs one); `headers`: the client headers the endpoint forwards.
    pub fn validate_forward(
        &self,
        endpoint: Arc<Endpoint>,
        body: Bytes,
        headers: Vec<(&'static str, String)>,
    ) -> Result<Forward, GatewayError> {
        Forward::from_json(endpoint, body, &self.settings.default_model, headers)
    }

    /// At least one key can take a request now (`/readyz`, gRPC health).
    pub fn can_serve_now(&self) -> bool {
        self.pool.can_serve_now()
    }

    /// Why no key can serve now, by class with counts and times (`/readyz`); never key
    /// material.
    pub fn no_key_summary(&self) -> String {
        self.pool.no_key_summary()
    }

    /// Every key's state and counters, by id and fingerprint (never the secret).
    pub fn key_view(&self) -> Vec<KeyView> {
        self.pool.view()
    }

    /// Takes a key out of choice until enabled again; `false` if there is no key `id`.
    pub fn disable_key(&self, id: &str) -> bool {
        self.pool.disable(id)
    }

    /// Puts a key disabled by the admin (or revoked) back into choice; `false` if there is
    /// no key `id`.
    pub fn enable_key(&self, id: &str) -> bool {
        self.pool.enable(id)
    }

    /// The model's context window in tokens, from the catalogue (built in, or
    /// `--models-file`); `None` for a model it does not know or knows no length of.
    pub fn context_length(&self, model: &str) -> Option<u64> {
        self.catalogue.get(model).and_then(|m| m.context_length)
    }

    /// Makes every key that is not ready (cooling, half-open, disabled) ready now, and drops
    /// the account-wide 429 backoff with them; the ids it changed. The original service's
    /// `reset-failed-keys`.
    pub fn reset_failed_keys(&self) -> Vec<String> {
        let reset = self.pool.reset_failed();
        self.dispatcher.forget_rate_limits();
        tracing::info!(keys = reset.len(), "admin reset every failed key");
        reset
    }

    /// Keys in total, able to serve now, cooling or disabled (`/health`).
    pub fn key_stats(&self) -> KeyStats {
        self.pool.stats()
    }

    /// The Prometheus text: request metrics and each key's state and counters.
    pub fn render_metrics(&self) -> String {
        let mut text = self.metrics.render(&self.pool);
        self.usage.render_metrics(&mut text);
        text
    }

    /// `/admin/usage`: token totals per client, model and key, today and since start.
    pub async fn usage_report(&self) -> serde_json::Value {
        self.usage.report().await
    }

    /// Reopens the usage log (SIGHUP, after a rotation).
    pub fn reopen_usage_log(&self) {
        self.usage.reopen();
    }

    /// Re-reads the client tokens (direct ones and the tokens file); counters and budgets
    /// are kept by client. Logged once either way.
    pub fn reload_tokens(&self) -> Result<TokensReloaded, String> {
        match self.settings.read_auth_tokens() {
            Ok(specs) => {
                let s = self.clients.reload(specs);
                tracing::info!(
                    total = s.total,
                    named = s.named,
                    limited = s.limited,
                    "client tokens reloaded"
                );
                Ok(s)
            }
            Err(e) => {
                tracing::warn!(error = %e, "client token reload refused; keeping the current tokens");
                Err(e.to_string())
            }
        }
    }

    /// Re-reads the configured keys (direct ones and the keys file) into the pool. Whatever
    /// the outcome, it is logged once and counted, so an operator sees a refused file. Key
    /// reloads (file watch, SIGHUP, admin) all funnel into here.
    pub fn reload_keys(&self) -> Result<ReloadSummary, String> {
        if self.settings.demo {
            return Err("demo mode uses fixed demo keys; there is nothing to reload".into());
        }
        let result = self
            .settings
            .read_keys()
            .map_err(|e| e.to_string())
            .and_then(|specs| self.pool.reload(&specs));
        self.metrics.key_reload(result.is_ok());
        match &result {
            Ok(s) => tracing::info!(
                kept = s.kept,
                added = s.added,
                removed = s.removed,
                total = s.total,
                "keys reloaded"
            ),
            Err(e) => tracing::warn!(error = %e, "key reload refused; keeping the current keys"),
        }
        result
    }
}

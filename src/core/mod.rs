//! What both doors share, one per gateway: [`Core`] (settings, key pool, dispatcher, model
//! list, metrics, client tokens) and the door-neutral pieces both doors and the server use:
//! the token checks ([`auth`]), the OpenAI error response ([`render`]) and the request body's
//! deadline error ([`BodyTimeout`]).
//!
//! It imports no door and not the server: `http/` and `grpc/` reach the key pool only through
//! `Core`'s methods, and the plain data they show (`KeyView`, `KeyStats`, `ReloadSummary`) is
//! re-exported here. [`context`]: a model's context window (`Core::context_length`).

mod auth;
mod body_timeout;
mod context;
mod render;

use std::sync::Arc;

use bytes::Bytes;

pub use body_timeout::BodyTimeout;
pub use render::{error_response, set_attempts};

use crate::chat::{ChatRequest, GatewayError};
use crate::config::{Secret, Settings};
use crate::keys::KeyPool;
pub use crate::keys::{KeyStats, KeyView, ReloadSummary};
pub use crate::metrics::{Door, Metrics};
pub use crate::upstream::ModelInfo;
use crate::upstream::{Dispatcher, Models};

/// Shared by both doors; one per gateway.
pub struct Core {
    pub settings: Settings,
    pub dispatcher: Dispatcher,
    pub models: Models,
    pub metrics: Metrics,
    /// Private: doors see the pool through the methods below, so none imports `keys/`.
    pool: Arc<KeyPool>,
    auth_tokens: Vec<Secret>,
}

impl Core {
    pub fn new(
        settings: Settings,
        pool: Arc<KeyPool>,
        dispatcher: Dispatcher,
        models: Models,
        auth_tokens: Vec<Secret>,
    ) -> Core {
        Core {
            settings,
            dispatcher,
            models,
            metrics: Metrics::default(),
            pool,
            auth_tokens,
        }
    }

    /// Validates and defaults a chat body: the one validation both doors use.
    pub fn validate_chat(&self, body: Bytes) -> Result<ChatRequest, GatewayError> {
        ChatRequest::from_json(body, &self.settings.default_model)
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
        self.metrics.render(&self.pool)
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

//! The model list: the upstream's `GET /models`, cached for a short time, with a built-in list
//! when the upstream cannot say (so `/v1/models` and `ListModels` always answer).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use tokio::time::{timeout, Instant};

use super::client::UpstreamClient;
use super::verdict::UpstreamErrorBody;
use crate::keys::{classify, KeyPool};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ModelInfo {
    pub id: String,
    #[serde(default)]
    pub created: i64,
    #[serde(default = "default_owner")]
    pub owned_by: String,
}

fn default_owner() -> String {
    "megallm".into()
}

/// Models MegaLLM serves, used when the upstream's list cannot be had.
pub const BUILTIN_MODELS: &[&str] = &[
    "openai-gpt-oss-120b",
    "openai-gpt-oss-20b",
    "gpt-4",
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-5",
    "llama3.3-70b-instruct",
    "claude-sonnet-4",
    "gemini-2.5-flash",
    "deepseek-v3",
];

/// A failed fetch is not retried for this long, so a down upstream is not hammered by
/// `/v1/models` traffic.
const FAILURE_TTL: Duration = Duration::from_secs(5);

pub struct Models {
    client: UpstreamClient,
    pool: Arc<KeyPool>,
    ttl: Duration,
    request_timeout: Duration,
    cache: Mutex<Option<(Instant, Arc<Vec<ModelInfo>>)>>,
    /// One fetch at a time; others wait for its result instead of stampeding the upstream.
    refresh: tokio::sync::Mutex<()>,
}

pub fn builtin() -> Vec<ModelInfo> {
    BUILTIN_MODELS
        .iter()
        .map(|id| ModelInfo {
            id: (*id).into(),
            created: 1_700_000_000,
            owned_by: default_owner(),
        })
        .collect()
}

impl Models {
    pub fn new(
        client: UpstreamClient,
        pool: Arc<KeyPool>,
        ttl: Duration,
        request_timeout: Duration,
    ) -> Self {
        Models {
            client,
            pool,
            ttl,
            request_timeout,
            cache: Mutex::new(None),
            refresh: tokio::sync::Mutex::new(()),
        }
    }

    fn cached(&self) -> Option<Arc<Vec<ModelInfo>>> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .as_ref()
            .filter(|(until, _)| Instant::now() < *until)
            .map(|(_, list)| list.clone())
    }

    pub async fn list(&self) -> Arc<Vec<ModelInfo>> {
        if let Some(list) = self.cached() {
            return list;
        }
        let _guard = self.refresh.lock().await;
        if let Some(list) = self.cached() {
            return list;
        }
        let (list, ttl) = match self.fetch().await {
            Some(list) => (list, self.ttl),
            None => (builtin(), FAILURE_TTL.min(self.ttl)),
        };
        let list = Arc::new(list);
        *self.cache.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((Instant::now() + ttl, list.clone()));
        list
    }

    pub async fn get(&self, id: &str) -> Option<ModelInfo> {
        self.list().await.iter().find(|m| m.id == id).cloned()
    }

    async fn fetch(&self) -> Option<Vec<ModelInfo>> {
        #[derive(Deserialize)]
        struct List {
            data: Vec<ModelInfo>,
        }
        let mut lease = self.pool.acquire(&[]).ok()?;
        let response = match timeout(self.request_timeout, self.client.models(lease.secret())).await
        {
            Ok(Ok(r)) => r,
            _ => return None,
        };
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = timeout(self.request_timeout, response.into_body().collect())
            .await
            .ok()?
            .ok()?
            .to_bytes();
        let ok = (200..300).contains(&status);
        let error = (!ok).then(|| UpstreamErrorBody::parse(&body));
        let outcome = classify(status, &headers, error.as_ref());
        lease.report(outcome, Some(status), "GET /models failed");
        if !ok {
            tracing::warn!(status, key = %lease.id(), "upstream model list unavailable; serving the built-in list");
            return None;
        }
        // Clients see these names: they pass the pool's masking like every upstream byte.
        let body = lease.mask_content(&body);
        let list: List = serde_json::from_slice(&body).ok()?;
        (!list.data.is_empty()).then_some(list.data)
    }
}

//! The model list: the upstream's `GET /models`, cached for a short time, each entry enriched
//! with the catalogue's fields. When the upstream cannot say, the answer is the last good list
//! (`cache`) or the catalogue's models (`catalogue`), and says so ([`Source`]), with one WARN
//! naming the cause: a dead upstream must not look like a working setup.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use tokio::time::{timeout, Instant};

use super::client::UpstreamClient;
use super::verdict::UpstreamErrorBody;
use crate::catalogue::{Capability, Catalogue};
use crate::keys::{classify, KeyPool};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ModelInfo {
    pub id: String,
    #[serde(default)]
    pub created: i64,
    #[serde(default = "default_owner")]
    pub owned_by: String,
    /// From the catalogue, when it knows the model.
    #[serde(skip)]
    pub context_length: Option<u64>,
    #[serde(skip)]
    pub max_output_tokens: Option<u64>,
    #[serde(skip)]
    pub capabilities: Vec<Capability>,
}

fn default_owner() -> String {
    "megallm".into()
}

/// Where a model list came from: the header `x-gateway-models-source` (gRPC: metadata).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The upstream's own list, fetched within `--models-cache-ttl`.
    Upstream,
    /// The upstream could not be asked: its last good list.
    Cache,
    /// The upstream could not be asked and never answered: the catalogue's models.
    Catalogue,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Upstream => "upstream",
            Source::Cache => "cache",
            Source::Catalogue => "catalogue",
        }
    }
}

/// A model list and where it came from.
#[derive(Clone, Debug)]
pub struct ModelList {
    pub models: Arc<Vec<ModelInfo>>,
    pub source: Source,
}

/// A failed fetch is not retried for this long, so a down upstream is not hammered by
/// `/v1/models` traffic (and the WARN is not repeated on every call).
const FAILURE_TTL: Duration = Duration::from_secs(5);

pub struct Models {
    client: UpstreamClient,
    pool: Arc<KeyPool>,
    catalogue: Arc<Catalogue>,
    ttl: Duration,
    request_timeout: Duration,
    /// The answer to give until the instant.
    cache: Mutex<Option<(Instant, ModelList)>>,
    /// The upstream's last good list, for when it cannot be asked.
    last_good: Mutex<Option<Arc<Vec<ModelInfo>>>>,
    /// One fetch at a time; others wait for its result instead of stampeding the upstream.
    refresh: tokio::sync::Mutex<()>,
}

/// The catalogue's models as a list (the demo upstream serves it; the fallback of last resort).
pub fn from_catalogue(catalogue: &Catalogue) -> Vec<ModelInfo> {
    catalogue
        .models()
        .iter()
        .map(|m| {
            enrich(
                ModelInfo {
                    id: m.id.clone(),
                    created: 1_700_000_000,
                    owned_by: default_owner(),
                    context_length: None,
                    max_output_tokens: None,
                    capabilities: Vec::new(),
                },
                catalogue,
            )
        })
        .collect()
}

fn enrich(mut model: ModelInfo, catalogue: &Catalogue) -> ModelInfo {
    if let Some(spec) = catalogue.get(&model.id) {
        model.context_length = spec.context_length;
        model.max_output_tokens = spec.max_output_tokens;
        model.capabilities = spec.capabilities.clone();
    }
    model
}

impl Models {
    pub fn new(
        client: UpstreamClient,
        pool: Arc<KeyPool>,
        catalogue: Arc<Catalogue>,
        ttl: Duration,
        request_timeout: Duration,
    ) -> Self {
        Models {
            client,
            pool,
            catalogue,
            ttl,
            request_timeout,
            cache: Mutex::new(None),
            last_good: Mutex::new(None),
            refresh: tokio::sync::Mutex::new(()),
        }
    }

    fn cached(&self) -> Option<ModelList> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .as_ref()
            .filter(|(until, _)| Instant::now() < *until)
            .map(|(_, list)| list.clone())
    }

    pub async fn list(&self) -> ModelList {
        if let Some(list) = self.cached() {
            return list;
        }
        let _guard = self.refresh.lock().await;
        if let Some(list) = self.cached() {
            return list;
        }
        let (list, ttl) = match self.fetch().await {
            Ok(list) => {
                let models = Arc::new(list);
                *self.last_good.lock().unwrap_or_else(|p| p.into_inner()) = Some(models.clone());
                let list = ModelList {
                    models,
                    source: Source::Upstream,
                };
                (list, self.ttl)
            }
            Err(cause) => {
                let last_good = self
                    .last_good
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                let list = match last_good {
                    Some(models) => ModelList {
                        models,
                        source: Source::Cache,
                    },
                    None => ModelList {
                        models: Arc::new(from_catalogue(&self.catalogue)),
                        source: Source::Catalogue,
                    },
                };
                tracing::warn!(
                    cause = %cause,
                    source = list.source.name(),
                    "the upstream's model list cannot be had: serving the {} list",
                    if list.source == Source::Cache { "last good" } else { "catalogue's" }
                );
                (list, FAILURE_TTL.min(self.ttl))
            }
        };
        *self.cache.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((Instant::now() + ttl, list.clone()));
        list
    }

    /// One model of the list, and where the list came from.
    pub async fn get(&self, id: &str) -> (Option<ModelInfo>, Source) {
        let list = self.list().await;
        let model = list.models.iter().find(|m| m.id == id).cloned();
        (model, list.source)
    }

    /// The upstream's list, enriched; `Err` names why there is none.
    async fn fetch(&self) -> Result<Vec<ModelInfo>, String> {
        #[derive(Deserialize)]
        struct List {
            data: Vec<ModelInfo>,
        }
        let mut lease = self
            .pool
            .acquire(&[])
            .map_err(|_| "no key can serve now".to_owned())?;
        let response = match timeout(self.request_timeout, self.client.models(lease.secret())).await
        {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                return Err(lease.mask(&format!(
                    "GET /models failed: {}",
                    super::dispatch::describe(&e)
                )))
            }
            Err(_) => return Err("GET /models timed out".into()),
        };
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = match timeout(self.request_timeout, response.into_body().collect()).await {
            Ok(Ok(body)) => body.to_bytes(),
            Ok(Err(_)) => return Err("reading GET /models broke off".into()),
            Err(_) => return Err("reading GET /models timed out".into()),
        };
        let ok = (200..300).contains(&status);
        let error = (!ok).then(|| UpstreamErrorBody::parse(&body));
        let outcome = classify(status, &headers, error.as_ref());
        lease.report(outcome, Some(status), "GET /models failed");
        if !ok {
            return Err(format!(
                "GET /models answered {status} (key {})",
                lease.id()
            ));
        }
        // Clients see these names: they pass the pool's masking like every upstream byte.
        let body = lease.mask_content(&body);
        let list: List = serde_json::from_slice(&body)
            .map_err(|e| format!("GET /models answered no model list: {e}"))?;
        if list.data.is_empty() {
            return Err("GET /models answered an empty list".into());
        }
        Ok(list
            .data
            .into_iter()
            .map(|m| enrich(m, &self.catalogue))
            .collect())
    }
}

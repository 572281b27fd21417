//! The one HTTP client to the upstream: a shared `reqwest::Client` (pooled keep-alive
//! connections), redirects off (a redirect would carry the key somewhere else), and the only
//! place a key is put on the wire.

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};

use crate::config::{Secret, Settings};

#[derive(Clone)]
pub struct UpstreamClient {
    http: reqwest::Client,
    /// Parsed once: reqwest would otherwise parse (and IDNA-normalise) the URL per request.
    chat_url: reqwest::Url,
    models_url: reqwest::Url,
}

impl UpstreamClient {
    pub fn new(settings: &Settings) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .connect_timeout(settings.timeouts.connect)
            .tcp_nodelay(true)
            .pool_idle_timeout(std::time::Duration::from_secs(90))
            .pool_max_idle_per_host(1024)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("megallm-gateway/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the upstream HTTP client: {e}"))?;
        let base = settings.upstream.trim_end_matches('/');
        let url = |path: &str| {
            reqwest::Url::parse(&format!("{base}/{path}"))
                .map_err(|e| format!("--upstream `{base}` is not a valid URL: {e}"))
        };
        Ok(UpstreamClient {
            http,
            chat_url: url("chat/completions")?,
            models_url: url("models")?,
        })
    }

    /// `POST {upstream}/chat/completions` with the pool key. Resolves at the response head.
    pub async fn chat(
        &self,
        key: &Secret,
        body: Bytes,
        request_id: &str,
    ) -> Result<reqwest::Response, reqwest::Error> {
        self.http
            .post(self.chat_url.clone())
            .header(AUTHORIZATION, bearer(key))
            .header(CONTENT_TYPE, "application/json")
            .header("x-request-id", request_id)
            .body(body)
            .send()
            .await
    }

    /// `GET {upstream}/models` with a pool key (the model list, and the revoked-key probe).
    pub async fn models(&self, key: &Secret) -> Result<reqwest::Response, reqwest::Error> {
        self.http
            .get(self.models_url.clone())
            .header(AUTHORIZATION, bearer(key))
            .send()
            .await
    }
}

fn bearer(key: &Secret) -> http::HeaderValue {
    let mut value = http::HeaderValue::try_from(format!("Bearer {}", key.expose()))
        .unwrap_or_else(|_| http::HeaderValue::from_static("Bearer invalid-key-characters"));
    value.set_sensitive(true);
    value
}

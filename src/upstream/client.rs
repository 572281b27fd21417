//! The one HTTP client to the upstream: a shared hyper client (pooled keep-alive connections,
//! HTTP/2 where TLS negotiates it), no redirects (hyper follows none: a redirect would carry the
//! key somewhere else), and the only place a key is put on the wire.

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use http::{HeaderValue, Method, Request, Uri};
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use std::sync::Arc;

use super::h1::H1Pool;
use crate::chat::{headers, Auth, Forward};
use crate::config::{Secret, Settings};

/// W3C Trace Context's header.
const TRACEPARENT: &str = "traceparent";

pub type Response = http::Response<Body>;

/// Why an upstream request got no response head.
#[derive(Debug)]
pub enum Error {
    Pooled(hyper_util::client::legacy::Error),
    Direct(super::h1::H1Error),
}

impl Error {
    /// No connection could be made: the upstream's (or the network's) outage.
    pub fn is_connect(&self) -> bool {
        match self {
            Error::Pooled(e) => e.is_connect(),
            Error::Direct(e) => e.is_connect(),
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Pooled(e) => e.fmt(f),
            Error::Direct(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Pooled(e) => e.source(),
            Error::Direct(e) => e.source(),
        }
    }
}

/// An upstream response body: from hyper's pooled client (TLS, HTTP/2), or read off its own
/// connection ([`super::h1`], cleartext HTTP/1.1).
pub enum Body {
    Pooled(hyper::body::Incoming),
    Direct(super::h1::Body),
}

/// Why an upstream response body ended early.
#[derive(Debug)]
pub enum BodyError {
    Pooled(hyper::Error),
    Direct(super::h1::ReadError),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::Pooled(e) => e.fmt(f),
            BodyError::Direct(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for BodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BodyError::Pooled(e) => e.source(),
            BodyError::Direct(e) => e.source(),
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            Body::Pooled(b) => std::pin::Pin::new(b)
                .poll_frame(cx)
                .map_err(BodyError::Pooled),
            Body::Direct(b) => std::pin::Pin::new(b)
                .poll_frame(cx)
                .map_err(BodyError::Direct),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Pooled(b) => b.is_end_stream(),
            Body::Direct(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            Body::Pooled(b) => b.size_hint(),
            Body::Direct(b) => b.size_hint(),
        }
    }
}

/// Read buffer per upstream connection. Stream events are small, and every open stream holds
/// one connection: hyper's default (8 KiB, growing) costs memory per stream for no speed.
const READ_BUFFER: usize = 4 * 1024;

/// Why the upstream client cannot be built; each message is a sentence a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum ClientSetupError {
    #[error("--upstream `{base}` is not a valid URL: {source}")]
    InvalidUrl {
        base: String,
        source: http::uri::InvalidUri,
    },
    #[error("cannot set up TLS for the upstream: {source}")]
    Tls { source: rustls::Error },
}

#[derive(Clone)]
pub struct UpstreamClient {
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// A cleartext (`http://`) upstream's connections, driven by the requests themselves
    /// ([`super::h1`]); `None` for HTTPS, which `http` serves.
    direct: Option<Arc<H1Pool>>,
    /// The base URL, no trailing slash: forwarded endpoints' URIs are made from it.
    base: String,
    chat_uri: Uri,
    models_uri: Uri,
    user_agent: HeaderValue,
}

impl UpstreamClient {
    pub fn new(settings: &Settings) -> Result<Self, ClientSetupError> {
        let mut tcp = HttpConnector::new();
        tcp.set_connect_timeout(Some(settings.timeouts.connect));
        tcp.set_nodelay(true);
        tcp.enforce_http(false);
        let tls = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config()?)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(tcp);
        let http = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(settings.upstream_pool.idle_timeout)
            .pool_max_idle_per_host(settings.upstream_pool.max_idle)
            .http1_read_buf_exact_size(READ_BUFFER)
            .build(tls);
        let base = settings.upstream.trim_end_matches('/');
        let uri = |path: &str| {
            format!("{base}/{path}")
                .parse::<Uri>()
                .map_err(|source| ClientSetupError::InvalidUrl {
                    base: base.to_owned(),
                    source,
                })
        };
        uri("embeddings")?;
        let direct = direct_pool(&uri("")?, settings);
        Ok(UpstreamClient {
            http,
            direct,
            base: base.to_owned(),
            chat_uri: uri("chat/completions")?,
            models_uri: uri("models")?,
            user_agent: HeaderValue::from_static(concat!(
                "megallm-gateway/",
                env!("CARGO_PKG_VERSION")
            )),
        })
    }

    /// `POST {upstream}/chat/completions` with the pool key. Resolves at the response head.
    pub async fn chat(
        &self,
        key: &Secret,
        body: Bytes,
        request_id: &str,
    ) -> Result<Response, Error> {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(self.chat_uri.clone())
            .header(AUTHORIZATION, bearer(key))
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(USER_AGENT, self.user_agent.clone());
        if let Ok(id) = HeaderValue::from_str(request_id) {
            request = request.header(headers::REQUEST_ID, id);
        }
        // With traces on, the attempt's span (the current one) continues upstream.
        if let Some(parent) = crate::trace::traceparent() {
            request = request.header(TRACEPARENT, parent);
        }
        self.send(request, body).await
    }

    /// `POST {upstream}/<the endpoint's path>` with the pool key as the endpoint wants it
    /// (bearer, or Anthropic's `x-api-key`) and the client headers the endpoint forwards.
    pub async fn forward(
        &self,
        key: &Secret,
        req: &Forward,
        request_id: &str,
    ) -> Result<Response, Error> {
        let endpoint = req.endpoint();
        let uri = format!("{}/{}", self.base, endpoint.upstream_path());
        // The base parsed at start and the path is a route the gateway serves: valid.
        let uri = uri.parse::<Uri>().unwrap_or_else(|_| self.chat_uri.clone());
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(USER_AGENT, self.user_agent.clone());
        request = match endpoint.auth {
            Auth::Bearer => request.header(AUTHORIZATION, bearer(key)),
            Auth::XApiKey => {
                let mut value = HeaderValue::try_from(key.expose())
                    .unwrap_or_else(|_| HeaderValue::from_static("invalid-key-characters"));
                value.set_sensitive(true);
                request.header("x-api-key", value)
            }
        };
        for (name, value) in req.headers() {
            if let Ok(value) = HeaderValue::try_from(value.as_str()) {
                request = request.header(*name, value);
            }
        }
        if let Ok(id) = HeaderValue::from_str(request_id) {
            request = request.header(headers::REQUEST_ID, id);
        }
        self.send(request, req.body().clone()).await
    }

    /// `GET {upstream}/models` with a pool key (the model list, and the revoked-key probe).
    pub async fn models(&self, key: &Secret) -> Result<Response, Error> {
        let request = Request::builder()
            .method(Method::GET)
            .uri(self.models_uri.clone())
            .header(AUTHORIZATION, bearer(key))
            .header(USER_AGENT, self.user_agent.clone());
        self.send(request, Bytes::new()).await
    }

    async fn send(&self, request: http::request::Builder, body: Bytes) -> Result<Response, Error> {
        let request = request
            .body(body)
            .expect("method, URI and headers are valid by construction");
        let Some(direct) = &self.direct else {
            let request = request.map(Full::new);
            let response = self.http.request(request).await.map_err(Error::Pooled)?;
            return Ok(response.map(Body::Pooled));
        };
        let response = direct.request(request).await.map_err(Error::Direct)?;
        Ok(response.map(Body::Direct))
    }
}

/// The driven connections of an `http://` upstream; `None` for any other scheme.
fn direct_pool(base: &Uri, settings: &Settings) -> Option<Arc<H1Pool>> {
    if base.scheme_str() != Some("http") {
        return None;
    }
    let authority = base.authority()?;
    // `Host` is host and port alone: user info in the base URL is no header's business.
    let host = match authority.port() {
        Some(port) => format!("{}:{port}", authority.host()),
        None => authority.host().to_owned(),
    };
    let host = HeaderValue::from_str(&host).ok()?;
    let port = authority.port_u16().unwrap_or(80);
    Some(H1Pool::new(
        format!("{}:{port}", authority.host()),
        host,
        settings.timeouts.connect,
        READ_BUFFER,
        settings.upstream_pool.max_idle,
        settings.upstream_pool.idle_timeout,
    ))
}

/// TLS to the upstream trusts the system's CA store (and `SSL_CERT_FILE`/`SSL_CERT_DIR`), so a
/// corporate proxy's CA works, plus Mozilla's roots, so a bare container works too.
fn tls_config() -> Result<rustls::ClientConfig, ClientSetupError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let native = rustls_native_certs::load_native_certs();
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(system_roots = added, "TLS roots loaded");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| ClientSetupError::Tls { source })?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn bearer(key: &Secret) -> HeaderValue {
    let mut value = HeaderValue::try_from(format!("Bearer {}", key.expose()))
        .unwrap_or_else(|_| HeaderValue::from_static("Bearer invalid-key-characters"));
    value.set_sensitive(true);
    value
}

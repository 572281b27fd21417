//! The HTTP door as a client sees it: [`HttpClient`] sends, [`HttpResponse`] is what came back.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use serde_json::{json, Value};

use super::{SseResponse, PATIENCE};

/// What a client of the HTTP door sees of one non-streamed exchange.
#[derive(Clone, Debug)]
pub struct HttpResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl HttpResponse {
    /// The body as JSON; panics (showing the body) if it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): status {} body {:?}",
                self.status,
                self.text()
            )
        })
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// Header `name` as a string.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }
    /// The `x-gateway-attempts` header.
    pub fn attempts(&self) -> Option<String> {
        self.header("x-gateway-attempts")
    }
    /// Asserts an OpenAI error body `{"error":{"message","type","param","code"}}` with
    /// `status`, and (when `param` is `Some`) that `error.param` is it. Returns `error`.
    pub fn assert_openai_error(&self, status: u16, param: Option<&str>) -> Value {
        self.check_openai_error(status, param)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`HttpResponse::assert_openai_error`] without the panic: `Err` says what is wrong.
    pub fn check_openai_error(&self, status: u16, param: Option<&str>) -> Result<Value, String> {
        let ctx = || format!("status {} body {}", self.status, self.text());
        if self.status.as_u16() != status {
            return Err(format!("want status {status}; got {}", ctx()));
        }
        let ct = self.header("content-type").unwrap_or_default();
        if !ct.starts_with("application/json") {
            return Err(format!("error content-type is {ct:?}; {}", ctx()));
        }
        let body: Value = serde_json::from_slice(&self.body)
            .map_err(|e| format!("error body is not JSON ({e}); {}", ctx()))?;
        let err = body
            .get("error")
            .filter(|e| e.is_object())
            .ok_or_else(|| format!("no `error` object; {}", ctx()))?;
        match err.get("message").and_then(Value::as_str) {
            Some(m) if !m.is_empty() => {}
            _ => return Err(format!("error.message missing or empty; {}", ctx())),
        }
        if !err.get("type").is_some_and(Value::is_string) {
            return Err(format!("error.type missing or not a string; {}", ctx()));
        }
        if err.get("param").is_none() {
            return Err(format!(
                "error.param missing (must be present, may be null); {}",
                ctx()
            ));
        }
        if err.get("code").is_none() {
            return Err(format!(
                "error.code missing (must be present, may be null); {}",
                ctx()
            ));
        }
        if let Some(p) = param {
            if err["param"] != json!(p) {
                return Err(format!("want error.param {p:?}; got {}", ctx()));
            }
        }
        Ok(err.clone())
    }
}

/// Splits `x-gateway-attempts` (`key-2:429,key-3:200`) into `(key id, outcome)` pairs.
pub fn parse_attempts(header: &str) -> Vec<(String, String)> {
    header
        .split(',')
        .map(|part| {
            let (id, outcome) = part
                .trim()
                .split_once(':')
                .unwrap_or_else(|| panic!("bad attempt {part:?} in {header:?}"));
            (id.to_string(), outcome.to_string())
        })
        .collect()
}

/// A client of the gateway's HTTP door (HTTP/1.1, no proxy, 60 s overall timeout).
#[derive(Clone)]
pub struct HttpClient {
    client: reqwest::Client,
    base: String,
}

impl HttpClient {
    pub fn new(addr: SocketAddr) -> HttpClient {
        let client = reqwest::Client::builder()
            .no_proxy()
            .http1_only()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("reqwest client");
        HttpClient {
            client,
            base: format!("http://{addr}"),
        }
    }

    /// The same door over h2c (HTTP/2 without TLS, prior knowledge), as gRPC-adjacent
    /// clients and proxies speak it on the one port.
    pub fn new_h2c(addr: SocketAddr) -> HttpClient {
        let client = reqwest::Client::builder()
            .no_proxy()
            .http2_prior_knowledge()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("reqwest client");
        HttpClient {
            client,
            base: format!("http://{addr}"),
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `POST /v1/chat/completions` with `body` as JSON.
    pub async fn chat(&self, body: &Value) -> HttpResponse {
        self.chat_with(body, &[]).await
    }

    /// `POST /v1/chat/completions` with `body` as JSON and extra headers.
    pub async fn chat_with(&self, body: &Value, headers: &[(&str, &str)]) -> HttpResponse {
        let mut h: Vec<(&str, &str)> = vec![("content-type", "application/json")];
        h.extend_from_slice(headers);
        self.send(
            Method::POST,
            "/v1/chat/completions",
            &h,
            Some(body.to_string().into_bytes()),
        )
        .await
    }

    /// `POST path` with raw bytes and exactly the given headers.
    pub async fn post_raw(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Vec<u8>>,
    ) -> HttpResponse {
        self.send(Method::POST, path, headers, Some(body.into()))
            .await
    }

    pub async fn get(&self, path: &str) -> HttpResponse {
        self.send(Method::GET, path, &[], None).await
    }

    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
        self.send(Method::GET, path, headers, None).await
    }

    /// Any request; returns the whole response.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> HttpResponse {
        let resp = tokio::time::timeout(
            PATIENCE,
            self.request(method.clone(), path, headers, body).send(),
        )
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no response headers within {PATIENCE:?}"))
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = tokio::time::timeout(PATIENCE, resp.bytes())
            .await
            .unwrap_or_else(|_| panic!("{method} {path}: body not complete within {PATIENCE:?}"))
            .unwrap_or_else(|e| panic!("{method} {path}: reading body: {e}"));
        HttpResponse {
            status,
            headers,
            body,
        }
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> reqwest::RequestBuilder {
        let mut rb = self
            .client
            .request(method, format!("{}{}", self.base, path));
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        if let Some(b) = body {
            rb = rb.body(b);
        }
        rb
    }

    /// `POST /v1/chat/completions` with `body` (which should say `"stream": true`) and returns
    /// as soon as the response headers arrive; the events are read in the background.
    pub async fn chat_stream(&self, body: &Value) -> SseResponse {
        self.chat_stream_with(body, &[]).await
    }

    pub async fn chat_stream_with(&self, body: &Value, headers: &[(&str, &str)]) -> SseResponse {
        let mut h: Vec<(&str, &str)> = vec![
            ("content-type", "application/json"),
            ("accept", "text/event-stream"),
        ];
        h.extend_from_slice(headers);
        let rb = self.request(
            Method::POST,
            "/v1/chat/completions",
            &h,
            Some(body.to_string().into_bytes()),
        );
        let resp = tokio::time::timeout(PATIENCE, rb.send())
            .await
            .expect("stream: no response headers in time")
            .expect("stream: request failed");
        SseResponse::read(resp).await
    }
}

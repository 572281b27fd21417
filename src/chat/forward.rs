//! The endpoints the gateway forwards besides chat (`/v1/embeddings`, `/v1/completions`,
//! `/v1/responses`, Anthropic's `/v1/messages`, and `--passthrough-path`s): an [`Endpoint`]
//! says where a body goes and how (auth style, stream framing, error shape), and a
//! [`Forward`] is a body checked only as far as the gateway must: a JSON object, nesting and
//! escapes sane ([`super::scan`]), `model` a string (defaulted where the endpoint needs one),
//! `stream` a boolean. The upstream judges the rest; the bytes go as the client sent them.

use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{scan, GatewayError};

/// How the upstream is given the pool key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Auth {
    /// `Authorization: Bearer <key>` (OpenAI).
    Bearer,
    /// `x-api-key: <key>` (Anthropic).
    XApiKey,
}

/// Whose API the endpoint is: the shape of the errors the gateway makes on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    OpenAi,
    Anthropic,
}

/// How a stream's events are framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Events {
    /// `data:` only, ending with `data: [DONE]` (chat, legacy completions): each chunk is an
    /// event's data, and a stream closed before `[DONE]` is a break.
    Data,
    /// Named events (`event:` lines kept; Responses API, Anthropic): each chunk is a whole
    /// event as it goes out, and the stream ends when the upstream closes it.
    Named,
}

/// One forwarded endpoint.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// The path the client uses (`/v1/embeddings`); the upstream is asked at the same path
    /// under its base URL (`{upstream}/embeddings`, the base's `/v1` standing for the
    /// path's).
    pub path: String,
    pub auth: Auth,
    pub flavor: Flavor,
    pub events: Events,
    /// A body without `model` gets `--default-model`.
    pub needs_model: bool,
}

impl Endpoint {
    /// The gateway's own forwarded endpoints.
    pub fn builtin() -> Vec<Endpoint> {
        let openai = |path: &str, events| Endpoint {
            path: path.into(),
            auth: Auth::Bearer,
            flavor: Flavor::OpenAi,
            events,
            needs_model: true,
        };
        vec![
            openai("/v1/embeddings", Events::Data),
            openai("/v1/completions", Events::Data),
            openai("/v1/responses", Events::Named),
            Endpoint {
                path: "/v1/messages".into(),
                auth: Auth::XApiKey,
                flavor: Flavor::Anthropic,
                events: Events::Named,
                needs_model: true,
            },
        ]
    }

    /// An operator's `--passthrough-path`: bearer auth, events passed through as they come
    /// (names kept), the body's `model` left as it is.
    pub fn passthrough(path: &str) -> Endpoint {
        Endpoint {
            path: path.into(),
            auth: Auth::Bearer,
            flavor: Flavor::OpenAi,
            events: Events::Named,
            needs_model: false,
        }
    }

    /// The path under the upstream's base URL: `/v1/embeddings` → `embeddings`.
    pub fn upstream_path(&self) -> &str {
        let path = self.path.strip_prefix("/v1/").unwrap_or(&self.path);
        path.trim_start_matches('/')
    }
}

/// A forwarded request, checked and defaulted.
#[derive(Clone, Debug)]
pub struct Forward {
    endpoint: Arc<Endpoint>,
    model: Option<String>,
    stream: bool,
    /// The answer's token cap the body names (`max_tokens`, `max_output_tokens`,
    /// `max_completion_tokens`), for the estimate a client's budget reserves.
    max_tokens: Option<u32>,
    body: Bytes,
    /// Client headers the upstream needs (Anthropic's `anthropic-version`, `anthropic-beta`).
    headers: Vec<(&'static str, String)>,
}

#[derive(Deserialize)]
struct Checked<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    model: Option<&'a RawValue>,
    #[serde(borrow)]
    stream: Option<&'a RawValue>,
    // Read only for the estimate: a value that is no count is the upstream's to judge.
    #[serde(borrow)]
    max_tokens: Option<&'a RawValue>,
    #[serde(borrow)]
    max_output_tokens: Option<&'a RawValue>,
    #[serde(borrow)]
    max_completion_tokens: Option<&'a RawValue>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

impl Forward {
    pub fn from_json(
        endpoint: Arc<Endpoint>,
        body: Bytes,
        default_model: &str,
        headers: Vec<(&'static str, String)>,
    ) -> Result<Forward, GatewayError> {
        let invalid_json = |message: String| GatewayError::InvalidRequest {
            message,
            param: None,
            code: "invalid_json",
        };
        let text = std::str::from_utf8(&body)
            .map_err(|_| invalid_json("request body is not valid UTF-8".into()))?;
        scan::check(&body)?;
        let trimmed = text.trim_start();
        if !trimmed.starts_with('{') {
            return Err(invalid_json("request body must be a JSON object".into()));
        }
        let checked: Checked = serde_json::from_str(text)
            .map_err(|e| invalid_json(format!("request body is not valid JSON: {e}")))?;
        let stream = match checked.stream.map(RawValue::get) {
            None | Some("null") | Some("false") => false,
            Some("true") => true,
            Some(_) => return Err(GatewayError::invalid("stream", "stream must be a boolean")),
        };
        let max_tokens = [
            checked.max_tokens,
            checked.max_completion_tokens,
            checked.max_output_tokens,
        ]
        .into_iter()
        .flatten()
        .find_map(|raw| raw.get().parse::<u32>().ok());
        let (model, body) = match checked.model {
            Some(raw) => match serde_json::from_str::<String>(raw.get()) {
                Ok(m) if !m.trim().is_empty() => (Some(m), body),
                Ok(_) => return Err(GatewayError::invalid("model", "model must not be empty")),
                Err(_) => return Err(GatewayError::invalid("model", "model must be a string")),
            },
            None if endpoint.needs_model => {
                let start = text.len() - trimmed.len();
                let body = super::request::splice_model(&body, start, default_model);
                (Some(default_model.to_owned()), body)
            }
            None => (None, body),
        };
        Ok(Forward {
            endpoint,
            model,
            stream,
            max_tokens,
            body,
            headers,
        })
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The model named (or defaulted), if any.
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    pub fn stream(&self) -> bool {
        self.stream
    }

    /// The exact JSON bytes to send upstream.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    pub fn headers(&self) -> &[(&'static str, String)] {
        &self.headers
    }

    /// The same stream asking for its usage (`stream_options.include_usage`), where the
    /// endpoint is one that needs asking (legacy completions: OpenAI's framing, `data:` events)
    /// and the client did not ask. The Responses API and Anthropic report usage unasked; an
    /// operator's passthrough path is left as the client wrote it.
    pub fn ask_stream_usage(&self) -> Option<Forward> {
        let e = &self.endpoint;
        let asks = e.needs_model && e.flavor == Flavor::OpenAi && e.events == Events::Data;
        if !(self.stream && asks) {
            return None;
        }
        let body = super::stream_usage::ask_usage(&self.body)?;
        Some(Forward {
            body,
            ..self.clone()
        })
    }

    /// The path under `/v1/` that usage records name (`embeddings`, `messages`).
    pub fn endpoint_name(&self) -> &str {
        self.endpoint.upstream_path()
    }

    /// Tokens this request may cost before the upstream says, as chat's
    /// (`ChatRequest::token_estimate`): the body's bytes / 4, plus the answer's cap when the
    /// body names one, else the default answer.
    pub fn token_estimate(&self) -> u32 {
        let prompt = u32::try_from(self.body.len() / 4).unwrap_or(u32::MAX);
        prompt.saturating_add(
            self.max_tokens
                .unwrap_or(super::request::DEFAULT_ANSWER_TOKENS),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(path: &str) -> Arc<Endpoint> {
        Arc::new(
            Endpoint::builtin()
                .into_iter()
                .find(|e| e.path == path)
                .unwrap_or_else(|| Endpoint::passthrough(path)),
        )
    }

    fn forward(path: &str, body: &str) -> Result<Forward, GatewayError> {
        Forward::from_json(
            endpoint(path),
            Bytes::from(body.to_owned()),
            "dm",
            Vec::new(),
        )
    }

    #[test]
    fn only_what_must_be_is_checked() {
        let f = forward("/v1/embeddings", r#"{"input":"x"}"#).unwrap();
        assert_eq!(f.model(), Some("dm"));
        assert_eq!(f.body().as_ref(), br#"{"model":"dm","input":"x"}"#);
        let f = forward("/v1/responses", r#"{"model":"m","stream":true,"x":[1.50]}"#).unwrap();
        assert_eq!((f.model(), f.stream()), (Some("m"), true));
        assert_eq!(
            f.body().as_ref(),
            br#"{"model":"m","stream":true,"x":[1.50]}"#
        );
        let f = forward("/v1/messages", r#"{"max_tokens":400,"messages":[]}"#).unwrap();
        assert_eq!(f.token_estimate(), 400 + f.body().len() as u32 / 4);
        let f = forward("/v1/responses", r#"{"max_output_tokens":"x","input":"y"}"#).unwrap();
        assert_eq!(
            f.token_estimate(),
            16 + f.body().len() as u32 / 4,
            "no count: the default answer"
        );
        let f = forward("/v1/rerank", r#"{"q":1}"#).unwrap();
        assert_eq!(f.model(), None);
        for bad in [
            "[1]",
            "nope",
            r#"{"model":3}"#,
            r#"{"stream":"yes"}"#,
            "{\"a\":",
        ] {
            let e = forward("/v1/completions", bad).unwrap_err();
            assert_eq!(e.http_status(), 400, "{bad}");
        }
    }

    #[test]
    fn upstream_paths() {
        assert_eq!(endpoint("/v1/messages").upstream_path(), "messages");
        assert_eq!(endpoint("/v1/audio/speech").upstream_path(), "audio/speech");
        assert_eq!(endpoint("/other/x").upstream_path(), "other/x");
    }
}

//! [`UpstreamErrorBody`]: what an upstream said when it refused, parsed once from its body.
//! Both the key's verdict (`keys::classify`) and the client's error are read from it, so it
//! lives below both.

use serde_json::Value;

/// The parts of an upstream error worth passing on (unmasked: whoever shows them masks them).
/// A non-2xx body is parsed into this once, and both the key's verdict (`keys::classify`) and
/// the client's error are read from it.
#[derive(Debug)]
pub struct UpstreamErrorBody {
    /// The error's `message`, a bare string error, or the start of a body that has neither.
    pub message: String,
    pub error_type: Option<String>,
    pub param: Option<String>,
    pub code: Option<String>,
    /// Whether `message` is the error object's own `message` field: only that one is read for
    /// what it says (`classify`'s "request too large"); a bare string or a body's text is not.
    pub message_is_field: bool,
}

impl UpstreamErrorBody {
    /// The error in a non-2xx body: OpenAI's `{"error": {…}}`, a bare `{"message": …}`, or any
    /// text at all (its start is the message).
    pub fn parse(body: &[u8]) -> Self {
        let json: Option<Value> = serde_json::from_slice(body).ok();
        match json.as_ref().map(|j| j.get("error").unwrap_or(j)) {
            Some(error) => Self::of(error, body),
            None => Self::of(&Value::Null, body),
        }
    }

    /// An `error` value: an object with OpenAI's fields, or a bare string message.
    pub fn of(error: &Value, raw: &[u8]) -> Self {
        let text = |field: &str| {
            error.get(field).and_then(|v| match v {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
        };
        // A bare string has no fields: it is the message itself.
        let field = text("message");
        let message_is_field = field.is_some();
        let bare = || error.as_str().map(str::to_owned);
        let message = field.or_else(bare).unwrap_or_else(|| {
            let raw = String::from_utf8_lossy(raw);
            let raw = raw.trim();
            if raw.is_empty() {
                "the upstream gave no error message".into()
            } else {
                raw.chars().take(300).collect()
            }
        });
        UpstreamErrorBody {
            message,
            error_type: text("type"),
            param: text("param"),
            code: text("code"),
            message_is_field,
        }
    }
}

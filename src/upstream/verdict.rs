//! What an upstream answer really says, whatever its status: a 2xx body must be a JSON object
//! that is no OpenAI error object, and an SSE event that carries `{"error": …}` is a failure,
//! not a chunk. The checks are cheap on the common path: a look at the first and last bytes,
//! one `memmem` for `"error"`, and a parse only when that finds something.

use std::sync::LazyLock;

use memchr::memmem;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

pub use crate::chat::UpstreamErrorBody;

/// Why a 2xx answer is not an answer.
pub enum Bad {
    Empty,
    /// Not a JSON object (HTML, a bare array, text): its first bytes, for the key's last error.
    NotObject(String),
    /// An OpenAI error object (`{"error": …}`) under a 2xx status, or as a stream's first event.
    Error(UpstreamErrorBody),
}

impl Bad {
    /// What went wrong, in a sentence (not yet masked).
    pub fn describe(&self, status: u16) -> String {
        match self {
            Bad::Empty => format!("the upstream answered {status} with an empty body"),
            Bad::NotObject(start) => {
                format!("the upstream answered {status} with something that is not a JSON object: {start}")
            }
            Bad::Error(e) => format!(
                "the upstream answered {status} with an error: {}",
                e.message
            ),
        }
    }
}

/// A whole 2xx body: a JSON object (first and last non-blank bytes `{` `}`), and not an
/// OpenAI error object.
pub fn check_body(body: &[u8]) -> Result<(), Bad> {
    let trimmed = body.trim_ascii();
    match (trimmed.first(), trimmed.last()) {
        (None, _) => Err(Bad::Empty),
        (Some(b'{'), Some(b'}')) => match error_object(trimmed) {
            Some(error) => Err(Bad::Error(error)),
            None => Ok(()),
        },
        _ => {
            let start = String::from_utf8_lossy(&trimmed[..trimmed.len().min(200)]);
            Err(Bad::NotObject(start.chars().take(120).collect()))
        }
    }
}

/// The error an SSE event's data reports (`{"error": …}` with a non-null value), if any.
pub fn error_event(data: &[u8]) -> Option<UpstreamErrorBody> {
    error_object(data)
}

fn error_object(json: &[u8]) -> Option<UpstreamErrorBody> {
    // A top-level `"error"` member needs these bytes; a chunk's text has its quotes escaped.
    static ERROR: LazyLock<memmem::Finder<'static>> =
        LazyLock::new(|| memmem::Finder::new(b"\"error\""));
    // Built once: `memmem::find` builds its searcher on every call, which cost more than the
    // search on a stream's short events.
    ERROR.find(json)?;
    #[derive(Deserialize)]
    struct Probe<'a> {
        #[serde(borrow, default)]
        error: Option<&'a RawValue>,
    }
    let probe: Probe = serde_json::from_slice(json).ok()?;
    let raw = probe.error.filter(|raw| raw.get().trim() != "null")?;
    let value: Value = serde_json::from_str(raw.get()).ok()?;
    Some(UpstreamErrorBody::of(&value, raw.get().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_and_non_answers() {
        assert!(check_body(br#" {"id":"x","choices":[]} "#).is_ok());
        assert!(check_body(br#"{"id":"x","error":null}"#).is_ok());
        // A chunk whose text mentions "error" is no error.
        assert!(
            check_body(br#"{"choices":[{"message":{"content":"an \"error\" here"}}]}"#).is_ok()
        );
        assert!(matches!(check_body(b""), Err(Bad::Empty)));
        assert!(matches!(check_body(b" \n "), Err(Bad::Empty)));
        assert!(matches!(check_body(b"[1]"), Err(Bad::NotObject(_))));
        assert!(matches!(
            check_body(b"<html>bad gateway</html>"),
            Err(Bad::NotObject(_))
        ));
        assert!(matches!(check_body(b"{\"id\":"), Err(Bad::NotObject(_))));
        let Err(Bad::Error(e)) =
            check_body(br#"{"error":{"message":"boom","type":"server_error","code":503}}"#)
        else {
            panic!("an error object")
        };
        assert_eq!(
            (
                e.message.as_str(),
                e.error_type.as_deref(),
                e.code.as_deref()
            ),
            ("boom", Some("server_error"), Some("503"))
        );
    }

    #[test]
    fn error_events() {
        assert!(error_event(br#"{"choices":[{"delta":{"content":"hi"}}]}"#).is_none());
        assert!(error_event(b"not json \"error\"").is_none());
        assert!(error_event(br#"{"error":null,"choices":[]}"#).is_none());
        let e = error_event(br#"{"error":"overloaded"}"#).expect("a string error");
        assert_eq!(e.message, "overloaded");
        let e = error_event(br#"{"error":{"message":"m","type":"t"}}"#).unwrap();
        assert_eq!(
            (e.message.as_str(), e.error_type.as_deref()),
            ("m", Some("t"))
        );
    }
}

//! Who used what: one [`Record`] per request, exactly once, whatever the ending. A [`Meter`]
//! goes with each request from its admission to its end (a drop guard, so a cancelled request
//! is recorded too); it reads `usage` from the upstream's answer (the JSON body, or a stream's
//! usage chunk, which the gateway asks for when the client did not, and then hides), and where
//! the upstream gave none it estimates and says so (`estimated`).
//!
//! Records go to the [`Recorder`]: totals in memory (per client, model and key; today and
//! since start) for `/admin/usage`, `gateway_tokens_total` for `/metrics`, and, through a
//! bounded channel to one background task, the `--usage-log` file and the shared totals in
//! Redis. No request waits on either.

mod meter;
mod recorder;
mod time;

pub use meter::{Meter, Metered, Subject};
pub use recorder::Recorder;

use serde::Serialize;

/// Token counts as the upstream reports them (`usage` of OpenAI's answer).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cached_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_tokens: Option<u64>,
}

impl Usage {
    /// `usage` of an answer or a chunk, when it has one that is an object.
    pub fn parse(json: &[u8]) -> Option<Usage> {
        #[derive(serde::Deserialize, Default)]
        struct Details {
            cached_tokens: Option<u64>,
            reasoning_tokens: Option<u64>,
        }
        #[derive(serde::Deserialize)]
        struct Raw {
            #[serde(default)]
            prompt_tokens: u64,
            #[serde(default)]
            completion_tokens: u64,
            total_tokens: Option<u64>,
            prompt_tokens_details: Option<Details>,
            completion_tokens_details: Option<Details>,
        }
        #[derive(serde::Deserialize)]
        struct Answer {
            usage: Option<Raw>,
        }
        let raw = serde_json::from_slice::<Answer>(json).ok()?.usage?;
        Some(Usage {
            prompt_tokens: raw.prompt_tokens,
            completion_tokens: raw.completion_tokens,
            total_tokens: raw
                .total_tokens
                .unwrap_or(raw.prompt_tokens + raw.completion_tokens),
            cached_tokens: raw.prompt_tokens_details.and_then(|d| d.cached_tokens),
            reasoning_tokens: raw
                .completion_tokens_details
                .and_then(|d| d.reasoning_tokens),
        })
    }
}

/// How a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A whole answer, or a stream to its `[DONE]`.
    Completed,
    /// A stream that broke (or was ended by an error event or shutdown) after its first byte.
    Broken,
    /// The client went away before the end.
    Cancelled,
    /// A timeout ended it.
    TimedOut,
    /// No answer: refused by a limit, or every attempt failed.
    Error,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Broken => "broken",
            Outcome::Cancelled => "cancelled",
            Outcome::TimedOut => "timed_out",
            Outcome::Error => "error",
        }
    }
}

/// One request's usage, as the usage log writes it (one JSON object a line).
#[derive(Clone, Debug, Serialize)]
pub struct Record {
    /// When the request arrived (RFC 3339, UTC, milliseconds).
    pub time: String,
    pub request_id: String,
    /// The client token's `name=`; `null` for a bare token or an open gateway.
    pub client: Option<String>,
    pub model: String,
    /// The key that served (`key-2`), or `null` when none was tried.
    pub key: Option<String>,
    /// `http` or `grpc`.
    pub door: &'static str,
    pub endpoint: &'static str,
    #[serde(flatten)]
    pub usage: Usage,
    /// The upstream gave no usage: the counts are the gateway's estimate.
    pub estimated: bool,
    pub outcome: Outcome,
    pub duration_ms: u64,
    /// Time to the first byte of the answer (streams: the first chunk).
    pub ttft_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_reads_openai_details() {
        let u = Usage::parse(br#"{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12,"prompt_tokens_details":{"cached_tokens":4},"completion_tokens_details":{"reasoning_tokens":2}}}"#).unwrap();
        assert_eq!(
            u,
            Usage {
                prompt_tokens: 9,
                completion_tokens: 3,
                total_tokens: 12,
                cached_tokens: Some(4),
                reasoning_tokens: Some(2)
            }
        );
        assert_eq!(Usage::parse(br#"{"usage":null}"#), None);
        assert_eq!(Usage::parse(br#"{"choices":[]}"#), None);
    }
}

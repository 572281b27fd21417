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
    /// `usage` of an answer or a chunk, when it has one that is an object: at the top (chat,
    /// completions, embeddings, responses, Anthropic's messages and `message_delta`), or in
    /// `response` (the Responses API's `response.completed`) or `message` (Anthropic's
    /// `message_start`). OpenAI's names and the Responses API's and Anthropic's are read alike.
    pub fn parse(json: &[u8]) -> Option<Usage> {
        Partial::parse(json).map(|p| Usage::default().merged(p))
    }

    /// These counts with what a later chunk says over them (Anthropic's stream gives the
    /// prompt in `message_start` and the answer, counted so far, in each `message_delta`).
    pub fn merged(self, later: Partial) -> Usage {
        let prompt_tokens = later.prompt_tokens.unwrap_or(self.prompt_tokens);
        let completion_tokens = later.completion_tokens.unwrap_or(self.completion_tokens);
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: later
                .total_tokens
                .unwrap_or(prompt_tokens + completion_tokens),
            cached_tokens: later.cached_tokens.or(self.cached_tokens),
            reasoning_tokens: later.reasoning_tokens.or(self.reasoning_tokens),
        }
    }
}

/// The counts one answer or chunk gives; what it leaves out stays as it was.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Partial {
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub total_tokens: Option<u64>,
    pub cached_tokens: Option<u64>,
    pub reasoning_tokens: Option<u64>,
    /// The chunk carries only usage (`"choices": []`): the one the gateway may hide.
    pub usage_only: bool,
}

impl Partial {
    pub fn parse(json: &[u8]) -> Option<Partial> {
        #[derive(serde::Deserialize, Default)]
        struct Details {
            cached_tokens: Option<u64>,
            reasoning_tokens: Option<u64>,
        }
        #[derive(serde::Deserialize)]
        struct Raw {
            #[serde(alias = "input_tokens")]
            prompt_tokens: Option<u64>,
            #[serde(alias = "output_tokens")]
            completion_tokens: Option<u64>,
            total_tokens: Option<u64>,
            #[serde(alias = "input_tokens_details")]
            prompt_tokens_details: Option<Details>,
            #[serde(alias = "output_tokens_details")]
            completion_tokens_details: Option<Details>,
            // Anthropic counts cache reads and writes beside `input_tokens`, not in it.
            cache_read_input_tokens: Option<u64>,
            cache_creation_input_tokens: Option<u64>,
        }
        #[derive(serde::Deserialize)]
        struct Inner {
            usage: Option<Raw>,
        }
        #[derive(serde::Deserialize)]
        struct Answer {
            usage: Option<Raw>,
            response: Option<Inner>,
            message: Option<Inner>,
            choices: Option<Vec<serde::de::IgnoredAny>>,
        }
        // An answer that is not UTF-8 still has its usage read (by the byte reader).
        let answer: Answer = crate::chat::read_json(json, std::marker::PhantomData).ok()?;
        let usage_only = answer.choices.as_ref().is_some_and(Vec::is_empty);
        let raw = answer
            .usage
            .or_else(|| answer.response.and_then(|r| r.usage))
            .or_else(|| answer.message.and_then(|m| m.usage))?;
        let cache_read = raw.cache_read_input_tokens;
        let cache_write = raw.cache_creation_input_tokens;
        let prompt_tokens = match (raw.prompt_tokens, cache_read, cache_write) {
            (None, None, None) => None,
            (p, r, w) => Some(p.unwrap_or(0) + r.unwrap_or(0) + w.unwrap_or(0)),
        };
        Some(Partial {
            prompt_tokens,
            completion_tokens: raw.completion_tokens,
            total_tokens: raw.total_tokens,
            cached_tokens: raw
                .prompt_tokens_details
                .and_then(|d| d.cached_tokens)
                .or(cache_read),
            reasoning_tokens: raw
                .completion_tokens_details
                .and_then(|d| d.reasoning_tokens),
            usage_only,
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
    #[serde(serialize_with = "time::serialize")]
    pub time: std::time::SystemTime,
    pub request_id: String,
    /// The client token's `name=`; `null` for a bare token or an open gateway.
    pub client: Option<String>,
    /// The model the request named (or was defaulted to); `null` for a passthrough path's
    /// request that names none.
    pub model: Option<String>,
    /// The key that served (`key-2`), or `null` when none was tried.
    pub key: Option<String>,
    /// `http` or `grpc`.
    pub door: &'static str,
    pub endpoint: std::borrow::Cow<'static, str>,
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
        assert_eq!(
            Usage::parse(br#"{"response":{"usage":null}}"#),
            None,
            "response.created"
        );
        assert_eq!(Usage::parse(br#"{"choices":[]}"#), None);
    }

    #[test]
    fn usage_is_read_from_an_answer_that_is_not_utf8() {
        let answer = b"{\"choices\":[{\"message\":{\"content\":\"\xff\xfe\"}}],\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":1,\"total_tokens\":3}}";
        let u = Usage::parse(answer).expect("the usage beside bytes that are not UTF-8");
        assert_eq!(
            (u.prompt_tokens, u.completion_tokens, u.total_tokens),
            (2, 1, 3)
        );
    }

    #[test]
    fn usage_reads_the_responses_api_and_anthropic() {
        let responses = br#"{"type":"response.completed","response":{"id":"r","usage":{"input_tokens":7,"input_tokens_details":{"cached_tokens":2},"output_tokens":5,"output_tokens_details":{"reasoning_tokens":1},"total_tokens":12}}}"#;
        assert_eq!(
            Usage::parse(responses),
            Some(Usage {
                prompt_tokens: 7,
                completion_tokens: 5,
                total_tokens: 12,
                cached_tokens: Some(2),
                reasoning_tokens: Some(1)
            })
        );
        // Anthropic: the prompt in message_start, the answer so far in each message_delta.
        let start = br#"{"type":"message_start","message":{"id":"m","usage":{"input_tokens":20,"cache_read_input_tokens":5,"output_tokens":1}}}"#;
        let delta = br#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":15}}"#;
        let first = Usage::parse(start).unwrap();
        let last = first.merged(Partial::parse(delta).unwrap());
        assert_eq!(
            last,
            Usage {
                prompt_tokens: 25,
                completion_tokens: 15,
                total_tokens: 40,
                cached_tokens: Some(5),
                reasoning_tokens: None
            }
        );
        let embeddings = br#"{"data":[],"usage":{"prompt_tokens":8,"total_tokens":8}}"#;
        assert_eq!(Usage::parse(embeddings).unwrap().total_tokens, 8);
    }
}

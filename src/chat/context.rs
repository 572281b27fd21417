//! The context-length check: a request whose prompt plus `max_tokens` certainly exceeds the
//! model's context is refused (400, `context_length_exceeded`) before any key is spent.
//!
//! "Certainly": the prompt's tokens are counted with a real tokenizer (`o200k_base`, shipped
//! inside the `tiktoken` crate, nothing downloaded) over the messages' text only, a lower
//! bound of what any model's template adds. Counting costs time, so it runs only when a free
//! bound says the request might exceed: no prompt has more tokens than the bytes of its
//! `messages`, so `bytes + max_tokens <= context` forwards at once. When unsure, forward: the
//! upstream has the last word.

use serde_json::Value;

use super::{ChatRequest, GatewayError};

/// Refuses `req` when its prompt plus `max_tokens` certainly exceeds `context_length`.
pub fn check(req: &ChatRequest, context_length: u64) -> Result<(), GatewayError> {
    let room = req.max_tokens().unwrap_or(0);
    if (req.messages_len() as u64).saturating_add(room) <= context_length {
        return Ok(());
    }
    let prompt = prompt_tokens(req.body());
    let total = prompt.saturating_add(room);
    if total <= context_length {
        return Ok(());
    }
    Err(GatewayError::InvalidRequest {
        message: format!(
            "This model's maximum context length is {context_length} tokens. However, you \
             requested {total} tokens ({prompt} in the messages, {room} in the completion). \
             Please reduce the length of the messages or completion."
        ),
        param: Some("messages".into()),
        code: "context_length_exceeded",
    })
}

/// The tokens of `text` by `o200k_base` (a usage estimate where the upstream gave none).
pub fn text_tokens(text: &str) -> u64 {
    o200k().count(text) as u64
}

/// The `o200k_base` tokenizer, built on first use (about 70 ms) and kept: 13 MiB of heap.
fn o200k() -> &'static tiktoken::CoreBpe {
    tiktoken::get_encoding("o200k_base").expect("the o200k_base vocabulary is compiled in")
}

/// The tokens of every text in `messages` (string contents, text parts, tool call
/// arguments), by `o200k_base`: what the model reads at least. The other endpoints' prompts
/// count too: `system` (Anthropic), `instructions` and `input` (the Responses API,
/// embeddings), `prompt` (legacy completions), as strings, lists of strings, or items with
/// content.
pub fn prompt_tokens(body: &[u8]) -> u64 {
    #[derive(serde::Deserialize)]
    struct Messages {
        #[serde(default)]
        messages: Vec<Value>,
        #[serde(default)]
        system: Value,
        #[serde(default)]
        instructions: Value,
        #[serde(default)]
        input: Value,
        #[serde(default)]
        prompt: Value,
    }
    let Ok(parsed) = serde_json::from_slice::<Messages>(body) else {
        return 0;
    };
    let mut texts = Vec::new();
    for other in [&parsed.system, &parsed.instructions, &parsed.prompt] {
        collect_texts(other, &mut texts);
    }
    match &parsed.input {
        Value::Array(items) if items.iter().any(Value::is_object) => {
            for item in items {
                collect_texts(&item["content"], &mut texts);
            }
        }
        input => collect_texts(input, &mut texts),
    }
    for message in &parsed.messages {
        collect_texts(&message["content"], &mut texts);
        if let Some(calls) = message["tool_calls"].as_array() {
            for call in calls {
                collect_texts(&call["function"]["arguments"], &mut texts);
            }
        }
    }
    let bpe = o200k();
    texts.iter().map(|t| bpe.count(t) as u64).sum()
}

fn collect_texts<'a>(content: &'a Value, out: &mut Vec<&'a str>) {
    match content {
        Value::String(s) => out.push(s),
        Value::Array(parts) => {
            for part in parts {
                match part {
                    Value::String(s) => out.push(s),
                    _ => out.extend(part["text"].as_str()),
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use serde_json::json;

    fn request(content: &str, max_tokens: Option<u64>) -> ChatRequest {
        let mut body = serde_json::json!({"messages": [{"role": "user", "content": content}]});
        if let Some(n) = max_tokens {
            body["max_tokens"] = n.into();
        }
        ChatRequest::from_json(Bytes::from(body.to_string()), "m").unwrap()
    }

    #[test]
    fn both_sides_of_the_limit() {
        // "hello " is one token in o200k_base: 1,000 of them are 1,000 tokens, 6,000 bytes.
        let text = "hello ".repeat(1000);
        let counted = prompt_tokens(request(&text, None).body());
        assert!((990..=1010).contains(&counted), "{counted}");
        // The byte bound says "might exceed", the count says it fits.
        assert!(check(&request(&text, Some(2_000)), 4_000).is_ok());
        let err = check(&request(&text, Some(3_500)), 4_000).unwrap_err();
        assert_eq!(err.code(), Some("context_length_exceeded"));
        assert_eq!((err.http_status(), err.param()), (400, Some("messages")));
        // Far under: no count at all.
        assert!(check(&request("hi", Some(100)), 8_000).is_ok());
    }

    #[test]
    fn the_other_endpoints_prompts_count() {
        let one = |body: Value| prompt_tokens(body.to_string().as_bytes());
        let hello = one(json!({"messages": [{"role": "user", "content": "hello"}]}));
        assert!(hello >= 1);
        assert_eq!(one(json!({"prompt": "hello"})), hello);
        assert_eq!(one(json!({"input": ["hello", "hello"]})), 2 * hello);
        assert_eq!(
            one(json!({"instructions": "hello",
                       "input": [{"role": "user", "content": [{"type": "input_text", "text": "hello"}]}]})),
            2 * hello
        );
        assert_eq!(
            one(json!({"system": [{"type": "text", "text": "hello"}],
                       "messages": [{"role": "user", "content": "hello"}]})),
            2 * hello
        );
        assert_eq!(
            one(json!({"input": [1, 2, 3]})),
            0,
            "token ids are not text"
        );
    }

    /// The counts are `tiktoken-rs`'s (the reference port of OpenAI's tokenizer) on the texts
    /// where tokenizers part ways: code, contractions and capitals, odd whitespace, emoji
    /// sequences, CJK, a literal special token, newlines after punctuation.
    #[test]
    fn counts_are_the_reference_tokenizers() {
        let reference = tiktoken_rs::o200k_base_singleton();
        let texts = [
            "",
            "Hello, world! How's it going? I'M FINE, THEY'RE OK, we'd've gone.",
            "fn main() {\n    let x: Vec<u8> = vec![1, 2, 3];\n\tprintln!(\"{x:?}\");\n}\n",
            "  leading and trailing spaces   \n\n\n  \u{a0}nbsp\u{3000}ideographic space\r\n",
            "emoji 👍🏽 family 👨‍👩‍👧‍👦 flag 🇫🇷 keycap 1️⃣",
            "日本語のテキストと中文文本，还有한국어 텍스트.",
            "a literal <|endoftext|> is text, not a special token",
            ".\n/ x.\n\n- item\n1. item\n```json\n{\"a\": [1, 2.5e-3, null]}\n```",
            "12345678901234567890 3.14159 0x1F 1,000,000",
        ];
        for text in texts {
            assert_eq!(
                text_tokens(text),
                reference.encode_ordinary(text).len() as u64,
                "{text:?}"
            );
        }
        let long: String = texts.concat().repeat(50);
        assert_eq!(
            text_tokens(&long),
            reference.encode_ordinary(&long).len() as u64
        );
    }
}

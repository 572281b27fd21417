//! `ChatRequest`: a chat completion request that has been validated and defaulted. It exists
//! only through [`ChatRequest::from_json`], so code past the front doors never re-checks ranges.
//!
//! The upstream body is the client's own JSON bytes, untouched (field order, unknown fields,
//! number formatting), with `"model"` spliced in only when the client named none. Only the
//! fields the gateway must check are parsed; the rest is never rebuilt. Before parsing,
//! [`super::scan`] passes over the whole body once (nesting depth, lone surrogate escapes);
//! the shapes of `messages`, `stop`, `tools` and `tool_choice` are [`super::shape`]'s.

use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{scan, shape, GatewayError};

/// A validated chat completion request, ready to send upstream.
#[derive(Clone, Debug)]
pub struct ChatRequest {
    model: String,
    stream: bool,
    body: Bytes,
    /// The answer's length the client allows (`max_completion_tokens`, else `max_tokens`).
    max_tokens: Option<u32>,
    /// Bytes of the `messages` JSON: a bound on the prompt's tokens that costs nothing.
    messages_len: usize,
}

/// The fields the gateway checks, borrowed from the body; everything else is ignored here and
/// forwarded as it came. `null` reads as absent, as OpenAI's API treats it. `M` is how
/// `messages` is read: [`shape::Messages`], judged during the parse, or a `RawValue` judged
/// after it (the fallback, see [`shape::Messages`]).
#[derive(Deserialize)]
struct Checked<'a, M> {
    /// Read with `present` so that `"model": null` is seen (and refused) rather than defaulted
    /// into a body that would then carry two `model` keys.
    #[serde(borrow, default, deserialize_with = "present")]
    model: Option<&'a RawValue>,
    messages: Option<M>,
    #[serde(borrow)]
    temperature: Option<&'a RawValue>,
    #[serde(borrow)]
    top_p: Option<&'a RawValue>,
    #[serde(borrow)]
    n: Option<&'a RawValue>,
    #[serde(borrow)]
    presence_penalty: Option<&'a RawValue>,
    #[serde(borrow)]
    frequency_penalty: Option<&'a RawValue>,
    #[serde(borrow)]
    max_tokens: Option<&'a RawValue>,
    #[serde(borrow)]
    max_completion_tokens: Option<&'a RawValue>,
    #[serde(borrow)]
    stream: Option<&'a RawValue>,
    #[serde(borrow)]
    stop: Option<&'a RawValue>,
    #[serde(borrow)]
    tools: Option<&'a RawValue>,
    #[serde(borrow)]
    tool_choice: Option<&'a RawValue>,
}

impl<'a, M> Checked<'a, M> {
    /// The same fields, `messages` (already judged) left out.
    fn into_raw(self) -> Checked<'a, &'a RawValue> {
        Checked {
            model: self.model,
            messages: None,
            temperature: self.temperature,
            top_p: self.top_p,
            n: self.n,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            max_tokens: self.max_tokens,
            max_completion_tokens: self.max_completion_tokens,
            stream: self.stream,
            stop: self.stop,
            tools: self.tools,
            tool_choice: self.tool_choice,
        }
    }
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

impl ChatRequest {
    /// Validates an OpenAI chat completion body and applies the default model.
    pub fn from_json(body: Bytes, default_model: &str) -> Result<ChatRequest, GatewayError> {
        let text = std::str::from_utf8(&body).map_err(|_| GatewayError::InvalidRequest {
            message: "request body is not valid UTF-8".into(),
            param: None,
            code: "invalid_json",
        })?;
        scan::check(&body)?;
        let trimmed = text.trim_start();
        if !trimmed.starts_with('{') {
            let message = if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() {
                "request body must be a JSON object"
            } else {
                "request body is not valid JSON"
            };
            return Err(GatewayError::InvalidRequest {
                message: message.into(),
                param: None,
                code: "invalid_json",
            });
        }
        let (checked, messages_len) = match serde_json::from_str::<Checked<shape::Messages>>(text) {
            Ok(mut checked) => {
                let len = shape::Messages::judge(checked.messages.take())?;
                (checked.into_raw(), len)
            }
            Err(_) => {
                let checked: Checked<&RawValue> =
                    serde_json::from_str(text).map_err(|e| GatewayError::InvalidRequest {
                        message: format!("request body is not valid JSON: {e}"),
                        param: None,
                        code: "invalid_json",
                    })?;
                shape::messages(checked.messages)?;
                let len = checked.messages.map_or(0, |raw| raw.get().len());
                (checked, len)
            }
        };

        shape::stop(checked.stop)?;
        shape::tools(checked.tools)?;
        shape::tool_choice(checked.tool_choice)?;
        range("temperature", checked.temperature, 0.0, 2.0)?;
        range("top_p", checked.top_p, 0.0, 1.0)?;
        range("presence_penalty", checked.presence_penalty, -2.0, 2.0)?;
        range("frequency_penalty", checked.frequency_penalty, -2.0, 2.0)?;
        integer("n", checked.n, 1, Some(10))?;
        integer("max_tokens", checked.max_tokens, 1, None)?;
        integer(
            "max_completion_tokens",
            checked.max_completion_tokens,
            1,
            None,
        )?;
        let stream = match checked.stream {
            None => false,
            Some(raw) => match raw.get() {
                "true" => true,
                "false" => false,
                _ => return Err(GatewayError::invalid("stream", "stream must be a boolean")),
            },
        };
        let max_tokens = [checked.max_completion_tokens, checked.max_tokens]
            .into_iter()
            .flatten()
            .find_map(|raw| raw.get().parse::<u32>().ok());
        let (model, body) = match checked.model {
            Some(raw) => {
                let model = match serde_json::from_str::<String>(raw.get()) {
                    Ok(m) if !m.trim().is_empty() => m,
                    Ok(_) => return Err(GatewayError::invalid("model", "model must not be empty")),
                    Err(_) => return Err(GatewayError::invalid("model", "model must be a string")),
                };
                (model, body)
            }
            None => {
                let start = text.len() - trimmed.len();
                (
                    default_model.to_owned(),
                    splice_model(&body, start, default_model),
                )
            }
        };
        Ok(ChatRequest {
            model,
            stream,
            max_tokens,
            body,
            messages_len,
        })
    }

    /// The model the upstream will be asked for.
    pub fn model(&self) -> &str {
        &self.model
    }

    pub fn stream(&self) -> bool {
        self.stream
    }

    /// The output the client asked room for (`max_completion_tokens`, else `max_tokens`).
    pub fn max_tokens(&self) -> Option<u64> {
        self.max_tokens.map(u64::from)
    }

    /// The length in bytes of `messages`: no prompt has more tokens than this.
    pub fn messages_len(&self) -> usize {
        self.messages_len
    }

    /// The exact JSON bytes to send upstream.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// Tokens this request may cost, before the upstream says (`usage`): the body's bytes / 4
    /// for the prompt, plus `max_tokens` when given, else [`DEFAULT_ANSWER_TOKENS`]. A key's
    /// `tpm=` budget is charged this much up front and corrected by the answer.
    pub fn token_estimate(&self) -> u32 {
        let prompt = u32::try_from(self.body.len() / 4).unwrap_or(u32::MAX);
        prompt.saturating_add(self.max_tokens.unwrap_or(DEFAULT_ANSWER_TOKENS))
    }
}

/// The answer's tokens assumed for a `tpm=` budget when the request sets no `max_tokens`.
pub const DEFAULT_ANSWER_TOKENS: u32 = 16;

impl ChatRequest {
    /// The same request with other bytes (the same fields the gateway checks), for a splice
    /// such as [`ChatRequest::ask_stream_usage`].
    pub(super) fn with_body(&self, body: Bytes) -> ChatRequest {
        ChatRequest {
            body,
            ..self.clone()
        }
    }
}

/// Inserts `"model":"<default>",` right after the opening brace at `brace`.
pub(super) fn splice_model(body: &[u8], brace: usize, model: &str) -> Bytes {
    let model_json = serde_json::to_string(model).unwrap_or_else(|_| "\"\"".into());
    let rest = &body[brace + 1..];
    let empty_object = rest.iter().all(|b| b.is_ascii_whitespace() || *b == b'}');
    let mut out = BytesMut::with_capacity(body.len() + model_json.len() + 10);
    out.put_slice(&body[..=brace]);
    out.put_slice(b"\"model\":");
    out.put_slice(model_json.as_bytes());
    if !empty_object {
        out.put_u8(b',');
    }
    out.put_slice(rest);
    out.freeze()
}

fn range(name: &str, raw: Option<&RawValue>, min: f64, max: f64) -> Result<(), GatewayError> {
    let Some(raw) = raw else { return Ok(()) };
    match serde_json::from_str::<f64>(raw.get()) {
        Ok(v) if (min..=max).contains(&v) => Ok(()),
        Ok(_) => Err(GatewayError::invalid(
            name,
            format!("{name} must be between {min} and {max}, got {}", raw.get()),
        )),
        Err(_) => Err(GatewayError::invalid(
            name,
            format!("{name} must be a number"),
        )),
    }
}

fn integer(
    name: &str,
    raw: Option<&RawValue>,
    min: i64,
    max: Option<i64>,
) -> Result<(), GatewayError> {
    let Some(raw) = raw else { return Ok(()) };
    let value = serde_json::from_str::<i64>(raw.get()).map_err(|_| {
        GatewayError::invalid(
            name,
            format!("{name} must be an integer, got {}", raw.get()),
        )
    })?;
    let ok = value >= min && max.is_none_or(|m| value <= m);
    if ok {
        return Ok(());
    }
    let bound = match max {
        Some(m) => format!("between {min} and {m}"),
        None => format!("at least {min}"),
    };
    Err(GatewayError::invalid(
        name,
        format!("{name} must be {bound}, got {value}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<ChatRequest, GatewayError> {
        ChatRequest::from_json(Bytes::copy_from_slice(json.as_bytes()), "default-m")
    }

    fn param_of(json: &str) -> String {
        parse(json).unwrap_err().param().unwrap_or("").to_owned()
    }

    #[test]
    fn minimal_body_gets_default_model_and_keeps_the_rest() {
        let req =
            parse(r#" {"messages":[{"role":"user","content":"hi"}],"x":{"a":1.50}}"#).unwrap();
        assert_eq!(req.model(), "default-m");
        assert!(!req.stream());
        let v: serde_json::Value = serde_json::from_slice(req.body()).unwrap();
        assert_eq!(v["model"], "default-m");
        assert!(std::str::from_utf8(req.body())
            .unwrap()
            .contains(r#""x":{"a":1.50}"#));
    }

    #[test]
    fn named_model_leaves_body_untouched() {
        let json = r#"{"model":"gpt-4","messages":[{"role":"user","content":"hi"}],"stream":true}"#;
        let req = parse(json).unwrap();
        assert_eq!(req.model(), "gpt-4");
        assert!(req.stream());
        assert_eq!(req.body().as_ref(), json.as_bytes());
    }

    #[test]
    fn each_bad_field_is_named() {
        let m = r#""messages":[{"role":"user","content":"hi"}]"#;
        assert_eq!(param_of("{}"), "messages");
        assert_eq!(param_of(r#"{"messages":[]}"#), "messages");
        assert_eq!(param_of(r#"{"messages":{}}"#), "messages");
        assert_eq!(
            param_of(r#"{"messages":[{"content":"x"}]}"#),
            "messages[0].role"
        );
        assert_eq!(
            param_of(r#"{"messages":[{"role":"user","content":"a"},{"role":3}]}"#),
            "messages[1].role"
        );
        assert_eq!(param_of(r#"{"messages":[1]}"#), "messages[0]");
        for (field, bad) in [
            ("temperature", "2.5"),
            ("temperature", "\"hot\""),
            ("top_p", "-0.1"),
            ("n", "0"),
            ("n", "11"),
            ("n", "1.5"),
            ("presence_penalty", "3"),
            ("frequency_penalty", "-3"),
            ("max_tokens", "0"),
            ("stream", "\"yes\""),
            ("model", "5"),
            ("model", "\"\""),
            ("model", "null"),
        ] {
            assert_eq!(
                param_of(&format!("{{{m},\"{field}\":{bad}}}")),
                field,
                "{field}={bad}"
            );
        }
        for good in [
            "\"temperature\":2",
            "\"top_p\":0",
            "\"n\":10",
            "\"temperature\":null",
        ] {
            assert!(parse(&format!("{{{m},{good}}}")).is_ok(), "{good}");
        }
    }

    #[test]
    fn not_json_and_not_object() {
        for body in ["", "nope", "[1,2]", "{\"messages\":", "\"str\""] {
            let err = parse(body).unwrap_err();
            assert_eq!(err.http_status(), 400, "{body}");
            assert_eq!(err.param(), None);
        }
    }

    /// Random byte edits of valid bodies never panic, and every refusal is a 400.
    #[test]
    fn mangled_bodies_are_refused_cleanly() {
        let seeds: [&[u8]; 4] = [
            br#"{"model":"m","messages":[{"role":"user","content":"h\u00e9"}],"temperature":1,"n":2,"stream":true}"#,
            br#" {"messages":[{"role":"system","content":[{"type":"text","text":"x"}]}],"max_tokens":5}"#,
            br#"{"messages":[{"role":"user","content":"a"},{"role":"assistant","content":null,"tool_calls":[]},{"role":"tool","tool_call_id":"c","content":"r"}],"tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":"auto","stop":["a","b"],"top_p":0.5}"#,
            br#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"u"}}]}],"stop":"s","x":[[1]],"u":"\ud83d\ude00"}"#,
        ];
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let alphabet = b"{}[]\":,0123456789.-eE ntrufalsmodgxu\\";
        let mut accepted = 0;
        for round in 0..20_000 {
            let mut body = seeds[round % seeds.len()].to_vec();
            for _ in 0..=(next() % 4) {
                let at = (next() as usize) % (body.len() + 1);
                match next() % 3 {
                    0 if at < body.len() => {
                        body.remove(at);
                    }
                    1 if at < body.len() => body[at] = alphabet[(next() as usize) % alphabet.len()],
                    _ => body.insert(at, alphabet[(next() as usize) % alphabet.len()]),
                }
            }
            match ChatRequest::from_json(Bytes::from(body.clone()), "d") {
                Ok(req) => {
                    let v: serde_json::Value =
                        serde_json::from_slice(req.body()).unwrap_or_else(|e| {
                            panic!("accepted a body the upstream can't parse: {e}")
                        });
                    assert!(v["model"].is_string(), "{}", String::from_utf8_lossy(&body));
                    accepted += 1;
                }
                Err(e) => assert_eq!(e.http_status(), 400, "{e}"),
            }
        }
        // The edits must leave some bodies valid, or the test checks refusals only.
        assert!(
            accepted > 1_000,
            "only {accepted} of 20,000 mangled bodies were accepted"
        );
    }

    #[test]
    fn splice_into_empty_object_is_valid_json() {
        assert_eq!(splice_model(b"{ }", 0, "m").as_ref(), b"{\"model\":\"m\" }");
    }
}

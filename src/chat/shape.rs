//! The shape checks of a chat request's structured fields, as OpenAI documents them:
//! `messages` (each role's content rules, content parts, `name`, `tool_call_id`), `stop`,
//! `tools` and `tool_choice`. Each check reads borrowed `RawValue`s of the client's body and
//! builds nothing; a refusal names the field as OpenAI would (`messages[1].content[0].type`).
//!
//! The rules refuse what cannot be a valid request and nothing more: fields not named here
//! (inside a message or a tool too) are left to the upstream, untouched.

use std::borrow::Cow;
use std::fmt;

use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use super::GatewayError;

/// The roles OpenAI's chat completions know (`function` is deprecated but still served).
const ROLES: [&str; 6] = [
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
];

/// The most `stop` sequences OpenAI takes.
const MAX_STOP: usize = 4;

/// The JSON type of a raw value, by its first byte (`RawValue` text never starts with
/// whitespace).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    String,
    Array,
    Object,
    Other,
}

fn kind(raw: &RawValue) -> Kind {
    match raw.get().as_bytes().first() {
        Some(b'"') => Kind::String,
        Some(b'[') => Kind::Array,
        Some(b'{') => Kind::Object,
        _ => Kind::Other,
    }
}

/// The string a raw value holds, if it is one: borrowed unless it has escapes to undo.
fn string(raw: &RawValue) -> Option<Cow<'_, str>> {
    let text = raw.get();
    // A raw value is valid JSON, so text between its quotes without a backslash is the
    // string itself.
    if let Some(inner) = text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        if memchr::memchr(b'\\', inner.as_bytes()).is_none() {
            return Some(Cow::Borrowed(inner));
        }
    }
    serde_json::from_str::<String>(text).ok().map(Cow::Owned)
}

fn invalid(param: String, what: &str) -> GatewayError {
    GatewayError::invalid(param.clone(), format!("{param} {what}"))
}

/// Requires `raw`, when present, to be a string; `param` names it.
fn optional_string(
    raw: Option<&RawValue>,
    param: impl FnOnce() -> String,
) -> Result<(), GatewayError> {
    match raw {
        Some(raw) if kind(raw) != Kind::String => Err(invalid(param(), "must be a string")),
        _ => Ok(()),
    }
}

/// The fields of one message the gateway checks. `null` reads as absent.
#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow)]
    role: Option<&'a RawValue>,
    #[serde(borrow)]
    content: Option<&'a RawValue>,
    #[serde(borrow)]
    name: Option<&'a RawValue>,
    #[serde(borrow)]
    tool_call_id: Option<&'a RawValue>,
    #[serde(borrow)]
    tool_calls: Option<&'a RawValue>,
    #[serde(borrow)]
    function_call: Option<&'a RawValue>,
    #[serde(borrow)]
    refusal: Option<&'a RawValue>,
    #[serde(borrow)]
    audio: Option<&'a RawValue>,
}

/// The fields of one content part the gateway checks.
#[derive(Deserialize)]
struct Part<'a> {
    #[serde(borrow, rename = "type")]
    kind: Option<&'a RawValue>,
    #[serde(borrow)]
    text: Option<&'a RawValue>,
    #[serde(borrow)]
    image_url: Option<&'a RawValue>,
    #[serde(borrow)]
    input_audio: Option<&'a RawValue>,
    #[serde(borrow)]
    file: Option<&'a RawValue>,
    #[serde(borrow)]
    refusal: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ImageUrl<'a> {
    #[serde(borrow)]
    url: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct InputAudio<'a> {
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(borrow)]
    format: Option<&'a RawValue>,
}

/// A tool or a tool choice: its `type`, and the `function` it names.
#[derive(Deserialize)]
struct Typed<'a> {
    #[serde(borrow, rename = "type")]
    kind: Option<&'a RawValue>,
    #[serde(borrow)]
    function: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Function<'a> {
    #[serde(borrow)]
    name: Option<&'a RawValue>,
}

/// Reads `raw` as `T`, or refuses it as "must be an object" under `param`.
fn object<'a, T: Deserialize<'a>>(
    raw: &'a RawValue,
    param: impl FnOnce() -> String,
) -> Result<T, GatewayError> {
    if kind(raw) != Kind::Object {
        return Err(invalid(param(), "must be an object"));
    }
    serde_json::from_str(raw.get()).map_err(|e| {
        let param = param();
        GatewayError::invalid(param.clone(), format!("{param} is malformed: {e}"))
    })
}

/// `messages`: a non-empty array of messages, each valid for its role.
pub fn messages(raw: Option<&RawValue>) -> Result<(), GatewayError> {
    let raw = raw.ok_or_else(missing_messages)?;
    if kind(raw) != Kind::Array {
        return Err(not_an_array());
    }
    let list: Vec<&RawValue> = serde_json::from_str(raw.get()).map_err(|_| not_an_array())?;
    if list.is_empty() {
        return Err(no_message());
    }
    list.iter().enumerate().try_for_each(|(i, m)| message(m, i))
}

/// `messages` judged while the request itself is parsed: each message is read from the array
/// as the parse meets it, so its text is walked once less than by [`messages`]. The verdict
/// is the one [`messages`] gives the same value. Parsing it fails only where a `RawValue`
/// would not (a number out of range, where an array belongs); the caller then parses the
/// request again with [`messages`] to say what it always said.
pub struct Messages {
    verdict: Result<(), GatewayError>,
    /// The bytes of the messages, separators and brackets included (whitespace between them
    /// not): no prompt has more tokens than this.
    len: usize,
}

impl Messages {
    /// The verdict on `messages` (`None`: absent or `null`), and its length in bytes.
    pub fn judge(messages: Option<Messages>) -> Result<usize, GatewayError> {
        let messages = messages.ok_or_else(missing_messages)?;
        messages.verdict.map(|()| messages.len)
    }
}

impl<'de> Deserialize<'de> for Messages {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Messages, D::Error> {
        deserializer.deserialize_any(MessagesVisitor)
    }
}

struct MessagesVisitor;

impl MessagesVisitor {
    fn not_an_array<E>(self) -> Result<Messages, E> {
        Ok(Messages {
            verdict: Err(not_an_array()),
            len: 0,
        })
    }
}

impl<'de> Visitor<'de> for MessagesVisitor {
    type Value = Messages;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of messages")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Messages, A::Error> {
        let mut verdict = Ok(());
        let mut count = 0;
        let mut len = 1;
        while let Some(raw) = seq.next_element::<&'de RawValue>()? {
            len += raw.get().len() + 1;
            if verdict.is_ok() {
                verdict = message(raw, count);
            }
            count += 1;
        }
        if count == 0 {
            verdict = Err(no_message());
        }
        Ok(Messages {
            verdict,
            len: len.max(2),
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Messages, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        self.not_an_array()
    }

    fn visit_bool<E>(self, _: bool) -> Result<Messages, E> {
        self.not_an_array()
    }

    fn visit_i64<E>(self, _: i64) -> Result<Messages, E> {
        self.not_an_array()
    }

    fn visit_u64<E>(self, _: u64) -> Result<Messages, E> {
        self.not_an_array()
    }

    fn visit_f64<E>(self, _: f64) -> Result<Messages, E> {
        self.not_an_array()
    }

    fn visit_str<E>(self, _: &str) -> Result<Messages, E> {
        self.not_an_array()
    }
}

fn missing_messages() -> GatewayError {
    GatewayError::InvalidRequest {
        message: "`messages` is required: a non-empty array of {role, content} objects".into(),
        param: Some("messages".into()),
        code: "missing_required_parameter",
    }
}

fn not_an_array() -> GatewayError {
    GatewayError::invalid("messages", "messages must be an array")
}

fn no_message() -> GatewayError {
    GatewayError::invalid("messages", "messages must contain at least one message")
}

fn message(raw: &RawValue, i: usize) -> Result<(), GatewayError> {
    let at = |field: &str| format!("messages[{i}].{field}");
    let m: Message = object(raw, || format!("messages[{i}]"))?;
    let role = m.role.ok_or_else(|| invalid(at("role"), "is required"))?;
    let role = string(role)
        .filter(|r| ROLES.contains(&r.as_ref()))
        .ok_or_else(|| {
            invalid(
                at("role"),
                &format!("must be one of {}, got {}", ROLES.join(", "), role.get()),
            )
        })?;
    optional_string(m.name, || at("name"))?;
    if let Some(calls) = m.tool_calls {
        if kind(calls) != Kind::Array {
            return Err(invalid(at("tool_calls"), "must be an array"));
        }
    }
    let content = at("content");
    match role.as_ref() {
        "assistant" => {
            let calls = m.tool_calls.is_some()
                || m.function_call.is_some()
                || m.refusal.is_some()
                || m.audio.is_some();
            match m.content {
                None if calls => Ok(()),
                None => Err(invalid(
                    content,
                    "is required unless the message has tool_calls or function_call",
                )),
                Some(c) => parts(c, content, true, calls),
            }
        }
        "function" => {
            if m.name.is_none() {
                return Err(invalid(at("name"), "is required"));
            }
            match m.content {
                Some(c) if kind(c) != Kind::String => {
                    Err(invalid(content, "must be a string or null"))
                }
                _ => Ok(()),
            }
        }
        other => {
            if other == "tool" {
                match m.tool_call_id {
                    None => return Err(invalid(at("tool_call_id"), "is required")),
                    Some(id) if kind(id) != Kind::String => {
                        return Err(invalid(at("tool_call_id"), "must be a string"))
                    }
                    Some(_) => {}
                }
            }
            match m.content {
                None => Err(invalid(content, "is required")),
                Some(c) => parts(c, content, false, false),
            }
        }
    }
}

/// Content: a string, or a non-empty array of parts (an empty one only where content may be
/// absent). `assistant` allows `refusal` parts.
fn parts(
    raw: &RawValue,
    param: String,
    assistant: bool,
    may_be_empty: bool,
) -> Result<(), GatewayError> {
    match kind(raw) {
        Kind::String => return Ok(()),
        Kind::Array => {}
        _ => {
            return Err(invalid(
                param,
                "must be a string or an array of content parts",
            ))
        }
    }
    let list: Vec<&RawValue> = serde_json::from_str(raw.get())
        .map_err(|_| invalid(param.clone(), "must be an array of content parts"))?;
    if list.is_empty() && !may_be_empty {
        return Err(invalid(param, "must not be an empty array"));
    }
    for (j, raw) in list.iter().enumerate() {
        let at = |field: &str| format!("{param}[{j}].{field}");
        let part: Part = object(raw, || format!("{param}[{j}]"))?;
        let kind_raw = part
            .kind
            .ok_or_else(|| invalid(at("type"), "is required"))?;
        let field = |v: Option<&RawValue>, name: &str, want: Kind| -> Result<(), GatewayError> {
            match v {
                Some(v) if kind(v) == want => Ok(()),
                _ => Err(invalid(
                    at(name),
                    if want == Kind::String {
                        "must be a string"
                    } else {
                        "must be an object"
                    },
                )),
            }
        };
        match string(kind_raw).as_deref() {
            Some("text") => field(part.text, "text", Kind::String)?,
            Some("refusal") if assistant => field(part.refusal, "refusal", Kind::String)?,
            Some("image_url") if !assistant => {
                let url = part
                    .image_url
                    .ok_or_else(|| invalid(at("image_url"), "is required"))?;
                let image: ImageUrl = object(url, || at("image_url"))?;
                field(image.url, "image_url.url", Kind::String)?;
            }
            Some("input_audio") if !assistant => {
                let audio = part
                    .input_audio
                    .ok_or_else(|| invalid(at("input_audio"), "is required"))?;
                let audio: InputAudio = object(audio, || at("input_audio"))?;
                field(audio.data, "input_audio.data", Kind::String)?;
                field(audio.format, "input_audio.format", Kind::String)?;
            }
            Some("file") if !assistant => field(part.file, "file", Kind::Object)?,
            _ => {
                let allowed = if assistant {
                    "text or refusal"
                } else {
                    "text, image_url, input_audio or file"
                };
                return Err(invalid(
                    at("type"),
                    &format!("must be {allowed}, got {}", kind_raw.get()),
                ));
            }
        }
    }
    Ok(())
}

/// `stop`: a string, or an array of 1 to 4 strings.
pub fn stop(raw: Option<&RawValue>) -> Result<(), GatewayError> {
    let Some(raw) = raw else { return Ok(()) };
    let bad = || {
        GatewayError::invalid(
            "stop",
            format!("stop must be a string or an array of 1 to {MAX_STOP} strings"),
        )
    };
    match kind(raw) {
        Kind::String => Ok(()),
        Kind::Array => {
            let list: Vec<&RawValue> = serde_json::from_str(raw.get()).map_err(|_| bad())?;
            if list.is_empty() || list.len() > MAX_STOP {
                return Err(bad());
            }
            list.iter()
                .enumerate()
                .try_for_each(|(i, s)| optional_string(Some(s), || format!("stop[{i}]")))
        }
        _ => Err(bad()),
    }
}

/// `tools`: an array of `{"type": "function", "function": {"name": …}}` (or `custom` tools).
pub fn tools(raw: Option<&RawValue>) -> Result<(), GatewayError> {
    let Some(raw) = raw else { return Ok(()) };
    if kind(raw) != Kind::Array {
        return Err(GatewayError::invalid("tools", "tools must be an array"));
    }
    let list: Vec<&RawValue> = serde_json::from_str(raw.get())
        .map_err(|_| GatewayError::invalid("tools", "tools must be an array"))?;
    for (i, raw) in list.iter().enumerate() {
        let at = |field: &str| format!("tools[{i}].{field}");
        let tool: Typed = object(raw, || format!("tools[{i}]"))?;
        let kind_raw = tool
            .kind
            .ok_or_else(|| invalid(at("type"), "is required"))?;
        match string(kind_raw).as_deref() {
            Some("function") => named_function(tool.function, || at("function"))?,
            Some("custom") => {}
            _ => {
                return Err(invalid(
                    at("type"),
                    &format!("must be function or custom, got {}", kind_raw.get()),
                ))
            }
        }
    }
    Ok(())
}

/// `tool_choice`: `none`, `auto`, `required`, or an object with a `type` (a `function` one
/// names its function).
pub fn tool_choice(raw: Option<&RawValue>) -> Result<(), GatewayError> {
    let Some(raw) = raw else { return Ok(()) };
    let param = || "tool_choice".to_owned();
    match kind(raw) {
        Kind::String => match string(raw).as_deref() {
            Some("none" | "auto" | "required") => Ok(()),
            _ => Err(invalid(
                param(),
                &format!(
                    "must be none, auto, required or an object, got {}",
                    raw.get()
                ),
            )),
        },
        Kind::Object => {
            let choice: Typed = object(raw, param)?;
            let at = |field: &str| format!("tool_choice.{field}");
            let kind_raw = choice
                .kind
                .ok_or_else(|| invalid(at("type"), "is required"))?;
            match string(kind_raw).as_deref() {
                Some("function") => named_function(choice.function, || at("function")),
                Some(_) => Ok(()),
                None => Err(invalid(at("type"), "must be a string")),
            }
        }
        _ => Err(invalid(
            param(),
            "must be none, auto, required or an object",
        )),
    }
}

/// A `function` object with a string `name`; `param` names the object.
fn named_function(raw: Option<&RawValue>, param: impl Fn() -> String) -> Result<(), GatewayError> {
    let raw = raw.ok_or_else(|| invalid(param(), "is required"))?;
    let function: Function = object(raw, &param)?;
    let name = function
        .name
        .ok_or_else(|| invalid(format!("{}.name", param()), "is required"))?;
    optional_string(Some(name), || format!("{}.name", param()))
}

#[cfg(test)]
#[path = "shape_tests.rs"]
mod tests;

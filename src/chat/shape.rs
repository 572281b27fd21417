//! The shape checks of a chat request's structured fields, as OpenAI documents them:
//! `messages` (each role's content rules, content parts, `name`, `tool_call_id`), `stop`,
//! `tools` and `tool_choice`. Each check reads borrowed `RawValue`s of the client's body and
//! builds nothing; a refusal names the field as OpenAI would (`messages[1].content[0].type`).
//!
//! The rules refuse what cannot be a valid request and nothing more: fields not named here
//! (inside a message or a tool too) are left to the upstream, untouched.

use serde::Deserialize;
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

/// The string a raw value holds, if it is one.
fn string(raw: &RawValue) -> Option<String> {
    serde_json::from_str::<String>(raw.get()).ok()
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
    let raw = raw.ok_or_else(|| GatewayError::InvalidRequest {
        message: "`messages` is required: a non-empty array of {role, content} objects".into(),
        param: Some("messages".into()),
        code: "missing_required_parameter",
    })?;
    if kind(raw) != Kind::Array {
        return Err(GatewayError::invalid(
            "messages",
            "messages must be an array",
        ));
    }
    let list: Vec<&RawValue> = serde_json::from_str(raw.get())
        .map_err(|_| GatewayError::invalid("messages", "messages must be an array"))?;
    if list.is_empty() {
        return Err(GatewayError::invalid(
            "messages",
            "messages must contain at least one message",
        ));
    }
    list.iter().enumerate().try_for_each(|(i, m)| message(m, i))
}

fn message(raw: &RawValue, i: usize) -> Result<(), GatewayError> {
    let at = |field: &str| format!("messages[{i}].{field}");
    let m: Message = object(raw, || format!("messages[{i}]"))?;
    let role = m.role.ok_or_else(|| invalid(at("role"), "is required"))?;
    let role = string(role)
        .filter(|r| ROLES.contains(&r.as_str()))
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
    match role.as_str() {
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
mod tests {
    use bytes::Bytes;

    use crate::chat::ChatRequest;

    fn param_of(json: &str) -> Option<String> {
        ChatRequest::from_json(Bytes::copy_from_slice(json.as_bytes()), "m")
            .err()
            .map(|e| {
                assert_eq!(e.http_status(), 400, "{json}: {e}");
                e.param().unwrap_or("").to_owned()
            })
    }

    /// `{"messages":[<messages>]<rest>}`
    fn body(messages: &str, rest: &str) -> String {
        format!(r#"{{"messages":[{messages}]{rest}}}"#)
    }

    const HI: &str = r#"{"role":"user","content":"hi"}"#;

    #[test]
    fn each_role_has_its_content_rules() {
        for (messages, param) in [
            (r#"{"role":"user","content":5}"#, "messages[0].content"),
            (r#"{"role":"user","content":true}"#, "messages[0].content"),
            (
                r#"{"role":"user","content":{"a":1}}"#,
                "messages[0].content",
            ),
            (r#"{"role":"user"}"#, "messages[0].content"),
            (r#"{"role":"user","content":null}"#, "messages[0].content"),
            (r#"{"role":"user","content":[]}"#, "messages[0].content"),
            (r#"{"role":"system","content":7}"#, "messages[0].content"),
            (r#"{"role":"wizard","content":"hi"}"#, "messages[0].role"),
            (r#"{"role":"","content":"hi"}"#, "messages[0].role"),
            (r#"{"role":"User","content":"hi"}"#, "messages[0].role"),
            (
                r#"{"role":"user","content":"hi","name":3}"#,
                "messages[0].name",
            ),
            (r#"{"role":"assistant"}"#, "messages[0].content"),
            (r#"{"role":"assistant","content":1}"#, "messages[0].content"),
            (
                r#"{"role":"assistant","content":null,"tool_calls":{}}"#,
                "messages[0].tool_calls",
            ),
            (
                r#"{"role":"tool","content":"r"}"#,
                "messages[0].tool_call_id",
            ),
            (
                r#"{"role":"tool","content":"r","tool_call_id":1}"#,
                "messages[0].tool_call_id",
            ),
            (r#"{"role":"function","content":"r"}"#, "messages[0].name"),
            (
                r#"{"role":"function","name":"f","content":[]}"#,
                "messages[0].content",
            ),
        ] {
            assert_eq!(
                param_of(&body(&format!("{HI},{messages}"), "")).as_deref(),
                Some(param.replace("[0]", "[1]").as_str()),
                "{messages}"
            );
        }
        for good in [
            r#"{"role":"system","content":"s"}"#,
            r#"{"role":"developer","content":[{"type":"text","text":"d"}]}"#,
            r#"{"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{}"}}]}"#,
            r#"{"role":"assistant","tool_calls":[]}"#,
            r#"{"role":"assistant","function_call":{"name":"f","arguments":"{}"}}"#,
            r#"{"role":"assistant","content":null,"refusal":"no"}"#,
            r#"{"role":"assistant","content":[{"type":"refusal","refusal":"no"}]}"#,
            r#"{"role":"tool","tool_call_id":"c","content":[{"type":"text","text":"r"}]}"#,
            r#"{"role":"function","name":"f","content":null}"#,
            r#"{"role":"user","content":"hi","name":"ann","extra":{"kept":true}}"#,
        ] {
            assert_eq!(param_of(&body(good, "")), None, "{good}");
        }
    }

    #[test]
    fn content_parts_are_known_types_with_their_fields() {
        for (part, param) in [
            (r#"{"type":"video","url":"u"}"#, "type"),
            (r#"{"text":"x"}"#, "type"),
            (r#"{"type":5}"#, "type"),
            (r#"{"type":"text"}"#, "text"),
            (r#"{"type":"text","text":1}"#, "text"),
            (
                r#"{"type":"image_url","image_url":"https://x"}"#,
                "image_url",
            ),
            (
                r#"{"type":"image_url","image_url":{"detail":"low"}}"#,
                "image_url.url",
            ),
            (
                r#"{"type":"input_audio","input_audio":{"data":"AA"}}"#,
                "input_audio.format",
            ),
            (r#"{"type":"file","file":"f"}"#, "file"),
            (r#"{"type":"refusal","refusal":"no"}"#, "type"),
        ] {
            let m = format!(r#"{{"role":"user","content":[{{"type":"text","text":"a"}},{part}]}}"#);
            assert_eq!(
                param_of(&body(&m, "")).as_deref(),
                Some(format!("messages[0].content[1].{param}").as_str()),
                "{part}"
            );
        }
        assert_eq!(
            param_of(&body(r#"{"role":"user","content":["x"]}"#, "")).as_deref(),
            Some("messages[0].content[0]")
        );
        let all = r#"{"role":"user","content":[{"type":"text","text":"a"},{"type":"image_url","image_url":{"url":"data:,"}},{"type":"input_audio","input_audio":{"data":"AA","format":"wav"}},{"type":"file","file":{"file_id":"f"}}]}"#;
        assert_eq!(param_of(&body(all, "")), None);
    }

    #[test]
    fn stop_tools_and_tool_choice_follow_openai() {
        for (rest, param) in [
            (r#","stop":5"#, "stop"),
            (r#","stop":["a","b","c","d","e"]"#, "stop"),
            (r#","stop":[]"#, "stop"),
            (r#","stop":["a",1]"#, "stop[1]"),
            (r#","stop":{"a":1}"#, "stop"),
            (r#","tools":{}"#, "tools"),
            (r#","tools":"f""#, "tools"),
            (r#","tools":[1]"#, "tools[0]"),
            (r#","tools":[{"function":{"name":"f"}}]"#, "tools[0].type"),
            (r#","tools":[{"type":"retrieval"}]"#, "tools[0].type"),
            (r#","tools":[{"type":"function"}]"#, "tools[0].function"),
            (
                r#","tools":[{"type":"function","function":{}}]"#,
                "tools[0].function.name",
            ),
            (
                r#","tools":[{"type":"function","function":{"name":2}}]"#,
                "tools[0].function.name",
            ),
            (r#","tool_choice":"sometimes""#, "tool_choice"),
            (r#","tool_choice":3"#, "tool_choice"),
            (r#","tool_choice":{}"#, "tool_choice.type"),
            (
                r#","tool_choice":{"type":"function"}"#,
                "tool_choice.function",
            ),
            (
                r#","tool_choice":{"type":"function","function":{"name":null}}"#,
                "tool_choice.function.name",
            ),
        ] {
            assert_eq!(param_of(&body(HI, rest)).as_deref(), Some(param), "{rest}");
        }
        for good in [
            r#","stop":null"#,
            r#","stop":"x""#,
            r#","stop":["a","b","c","d"]"#,
            r#","tools":null"#,
            r#","tools":[]"#,
            r#","tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}},{"type":"custom","custom":{"name":"c"}}]"#,
            r#","tool_choice":"none""#,
            r#","tool_choice":"required""#,
            r#","tool_choice":{"type":"function","function":{"name":"f"}}"#,
            r#","tool_choice":{"type":"allowed_tools","allowed_tools":{"mode":"auto","tools":[]}}"#,
        ] {
            assert_eq!(param_of(&body(HI, good)), None, "{good}");
        }
    }

    #[test]
    fn nesting_and_surrogates_are_refused_anywhere_in_the_body() {
        let deep = format!(r#","x":{}1{}"#, "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(param_of(&body(HI, &deep)).as_deref(), Some(""));
        let ok = format!(r#","x":{}1{}"#, "[".repeat(126), "]".repeat(126));
        assert_eq!(param_of(&body(HI, &ok)), None);
        assert_eq!(
            param_of(&body(r#"{"role":"user","content":"\ud800"}"#, "")).as_deref(),
            Some("")
        );
        assert_eq!(
            param_of(&body(HI, r#","user":"\udfff""#)).as_deref(),
            Some("")
        );
        assert_eq!(param_of(&body(HI, r#","user":"\ud83d\ude00""#)), None);
    }
}

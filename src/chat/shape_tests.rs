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

/// The verdict as the request parse reaches it ([`super::Messages`]) against the verdict on the
/// same value read whole ([`super::messages`]): the same error, word for word, on every value.
#[test]
fn messages_judged_during_the_parse_say_what_the_whole_value_says() {
    let values = [
        format!("[{HI}]"),
        format!("[{HI},{HI}, {HI} ]"),
        "[]".to_owned(),
        "[ ]".to_owned(),
        "{}".to_owned(),
        r#"{"role":"user","content":"hi"}"#.to_owned(),
        r#""hi""#.to_owned(),
        "5".to_owned(),
        "-2.5".to_owned(),
        "true".to_owned(),
        r#"[{"role":"us\u0065r","content":"hi"}]"#.to_owned(),
        r#"[{"role":"wiz\"ard","content":"hi"}]"#.to_owned(),
        format!(r#"[{HI},{{"role":"wizard","content":"x"}},{{"role":"user"}}]"#),
        format!(r#"[{HI},5]"#),
        format!(r#"[{HI},{{"role":"user","role":"user","content":"x"}}]"#),
        r#"[{"role":"assistant","tool_calls":[]}]"#.to_owned(),
        r#"[{"role":"user","content":[{"type":"text","text":"a"},{"type":"image_url"}]}]"#
            .to_owned(),
        r#"[{"role":"tool","content":"r"}]"#.to_owned(),
    ];
    let said = |r: Result<(), crate::chat::GatewayError>| {
        r.map_err(|e| (e.to_string(), e.param().map(str::to_owned)))
    };
    for value in &values {
        let whole: &serde_json::value::RawValue = serde_json::from_str(value).unwrap();
        let during: Option<super::Messages> = serde_json::from_str(value).unwrap();
        let during = super::Messages::judge(during);
        let len = during.as_ref().ok().copied();
        assert_eq!(
            said(during.map(|_| ())),
            said(super::messages(Some(whole))),
            "{value}"
        );
        // The length bounds the text: never under the messages' own bytes.
        if let Some(len) = len {
            let compact: String = value.chars().filter(|c| *c != ' ').collect();
            assert!(len >= compact.len(), "{value}: {len}");
            assert!(len <= value.len(), "{value}: {len}");
        }
    }
}

#[test]
fn a_value_only_a_raw_read_takes_still_gets_its_usual_answer() {
    // 1e400 is out of range for a number visitor but a valid JSON value: the request is
    // parsed again the old way and `messages` is "not an array", not "not JSON".
    assert_eq!(
        param_of(r#"{"messages":1e400}"#).as_deref(),
        Some("messages")
    );
    assert_eq!(
        param_of(r#"{"messages":null}"#).as_deref(),
        Some("messages"),
        "null reads as absent"
    );
    let e =
        ChatRequest::from_json(Bytes::from_static(br#"{"messages":[1e400]}"#), "m").unwrap_err();
    assert_eq!(e.param(), Some("messages[0]"), "{e}");
}

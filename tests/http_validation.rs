//! HTTP door, malformed input (issue 8, items 5 and 6.3): bodies whose shape OpenAI refuses,
//! deep nesting, lone surrogates, missing or non-UTF-8 content types and compressed bodies are
//! answered 400/415 in OpenAI's shape and never reach the upstream; valid bodies are forwarded
//! byte for byte. A fuzz run checks, at the mock, that nothing invalid was forwarded.
mod support;

use serde_json::Value;
use support::*;

const PATH: &str = "/v1/chat/completions";
const JSON: (&str, &str) = ("content-type", "application/json");

/// Each body, its expected 400 `param`.
const REFUSED: &[(&str, &str)] = &[
    (
        r#"{"messages":[{"role":"user","content":5}]}"#,
        "messages[0].content",
    ),
    (
        r#"{"messages":[{"role":"user","content":true}]}"#,
        "messages[0].content",
    ),
    (
        r#"{"messages":[{"role":"user","content":{"text":"hi"}}]}"#,
        "messages[0].content",
    ),
    (
        r#"{"messages":[{"role":"system","content":"s"},{"role":"user"}]}"#,
        "messages[1].content",
    ),
    (
        r#"{"messages":[{"role":"user","content":[{"type":"video","video":{}}]}]}"#,
        "messages[0].content[0].type",
    ),
    (
        r#"{"messages":[{"role":"wizard","content":"hi"}]}"#,
        "messages[0].role",
    ),
    (
        r#"{"messages":[{"role":"user","content":"hi"},{"role":"tool","content":"r"}]}"#,
        "messages[1].tool_call_id",
    ),
    (
        r#"{"messages":[{"role":"user","content":"hi"}],"stop":["a","b","c","d","e"]}"#,
        "stop",
    ),
    (
        r#"{"messages":[{"role":"user","content":"hi"}],"stop":7}"#,
        "stop",
    ),
    (
        r#"{"messages":[{"role":"user","content":"hi"}],"tools":{"type":"function"}}"#,
        "tools",
    ),
    (
        r#"{"messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{}}]}"#,
        "tools[0].function.name",
    ),
    (
        r#"{"messages":[{"role":"user","content":"hi"}],"tool_choice":"always"}"#,
        "tool_choice",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_shapes_are_refused_by_name_and_never_forwarded() {
    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &["k"], |_| {}).await;
    let mut failures = Vec::new();
    for (body, param) in REFUSED {
        let resp = gw.http.post_raw(PATH, &[JSON], *body).await;
        if let Err(e) = resp.check_openai_error(400, Some(param)) {
            failures.push(format!("{body}: {e}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(
        mock.chat_count(),
        0,
        "an invalid request reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_nesting_and_lone_surrogates_are_refused() {
    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &["k"], |_| {}).await;
    let deep = format!(
        r#"{{"messages":[{{"role":"user","content":"hi"}}],"metadata":{}1{}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let resp = gw.http.post_raw(PATH, &[JSON], deep).await;
    let error = resp.assert_openai_error(400, None);
    assert!(
        error["message"].as_str().unwrap().contains("128"),
        "{error}"
    );
    for body in [
        r#"{"messages":[{"role":"user","content":"\ud800"}]}"#,
        r#"{"messages":[{"role":"user","content":"hi"}],"user":"\udc00x"}"#,
        r#"{"messages":[{"role":"user","content":"hi"}],"metadata":{"\ud800":"k"}}"#,
    ] {
        let resp = gw.http.post_raw(PATH, &[JSON], body).await;
        let error = resp.assert_openai_error(400, None);
        assert!(
            error["message"].as_str().unwrap().contains("surrogate"),
            "{body}: {error}"
        );
    }
    assert_eq!(
        mock.chat_count(),
        0,
        "an invalid request reached the upstream"
    );

    // A surrogate pair is one character, and 100 levels are fine.
    let fine = format!(
        r#"{{"messages":[{{"role":"user","content":"\ud83d\ude00"}}],"metadata":{}1{}}}"#,
        "[".repeat(100),
        "]".repeat(100)
    );
    let resp = gw.http.post_raw(PATH, &[JSON], fine).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_type_must_be_json_in_utf8() {
    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &["k"], |_| {}).await;
    let body = chat_body().to_string();

    let resp = gw.http.post_raw(PATH, &[], body.clone()).await;
    let error = resp.assert_openai_error(415, None);
    let message = error["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains("-H 'Content-Type: application/json'"),
        "{message}"
    );
    // What `curl -d` sends: the answer tells curl users what to add.
    let resp = gw
        .http
        .post_raw(
            PATH,
            &[("content-type", "application/x-www-form-urlencoded")],
            body.clone(),
        )
        .await;
    let error = resp.assert_openai_error(415, None);
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("-H 'Content-Type: application/json'"),
        "{error}"
    );
    for latin in [
        "application/json; charset=latin1",
        "application/json;charset=\"ISO-8859-1\"",
    ] {
        let resp = gw
            .http
            .post_raw(PATH, &[("content-type", latin)], body.clone())
            .await;
        let error = resp.assert_openai_error(415, None);
        assert!(
            error["message"].as_str().unwrap().contains("charset"),
            "{latin}: {error}"
        );
    }
    assert_eq!(mock.chat_count(), 0);

    for fine in [
        "application/json; charset=UTF-8",
        "application/json;charset=\"utf-8\"",
    ] {
        let resp = gw
            .http
            .post_raw(PATH, &[("content-type", fine)], body.clone())
            .await;
        assert_eq!(resp.status, 200, "{fine}: {}", resp.text());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_bodies_are_415_naming_the_encoding() {
    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &["k"], |_| {}).await;
    // A real gzip member of `{}` and some brotli-looking bytes: neither is read.
    let gzip: &[u8] = &[
        0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0xab, 0xae, 0x05, 0x00, 0x43,
        0xbf, 0xa6, 0xa3, 0x02, 0x00, 0x00, 0x00,
    ];
    for (encoding, body) in [
        ("gzip", gzip.to_vec()),
        ("br", chat_body().to_string().into_bytes()),
        ("identity, zstd", chat_body().to_string().into_bytes()),
    ] {
        let resp = gw
            .http
            .post_raw(PATH, &[JSON, ("content-encoding", encoding)], body)
            .await;
        let error = resp.assert_openai_error(415, None);
        let named = encoding.rsplit(", ").next().unwrap();
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .contains(&format!("`{named}`")),
            "{encoding}: {error}"
        );
    }
    assert_eq!(mock.chat_count(), 0);

    let resp = gw
        .http
        .post_raw(
            PATH,
            &[JSON, ("content-encoding", "identity")],
            chat_body().to_string(),
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_valid_shape_is_forwarded_byte_for_byte() {
    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &["k"], |_| {}).await;
    let body = concat!(
        r#"{"model":"m","messages":["#,
        r#"{"role":"developer","content":"d"},"#,
        r#"{"role":"user","name":"ann","content":[{"type":"text","text":"a"},{"type":"image_url","image_url":{"url":"data:,","detail":"low"}},{"type":"input_audio","input_audio":{"data":"AA","format":"wav"}},{"type":"file","file":{"file_id":"f"}}]},"#,
        r#"{"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{}"}}]},"#,
        r#"{"role":"tool","tool_call_id":"c1","content":"42"},"#,
        r#"{"role":"assistant","content":[{"type":"refusal","refusal":"no"}]},"#,
        r#"{"role":"function","name":"f","content":null},"#,
        r#"{"role":"system","content":[{"type":"text","text":"s"}],"x-unknown":1.50}"#,
        r#"],"stop":["a","b","c","d"],"#,
        r#""tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}},{"type":"custom","custom":{"name":"c"}}],"#,
        r#""tool_choice":{"type":"allowed_tools","allowed_tools":{"mode":"auto","tools":[]}},"#,
        r#""user":"\u00e9\ud83d\ude00"}"#
    );
    let resp = gw.http.post_raw(PATH, &[JSON], body).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let forwarded = mock.chat_requests();
    assert_eq!(forwarded.len(), 1);
    assert_eq!(forwarded[0].body.as_ref(), body.as_bytes());
}

// ---------------------------------------------------------------------------------------------
// Fuzz: mangled bodies through the real door; the mock's record is checked by an oracle
// written from OpenAI's documentation, independent of the gateway's own checks.
// ---------------------------------------------------------------------------------------------

/// Why `body` is not a valid chat request, by OpenAI's rules; `None` when it is.
fn oracle(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    if depth(text) > 128 {
        return Some("nested deeper than 128".into());
    }
    // serde_json's own parse refuses lone surrogates in every string, keys included.
    let v: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return Some(format!("not JSON: {e}")),
    };
    let obj = v.as_object()?;
    let is_str = |v: Option<&Value>| v.is_some_and(Value::is_string);
    let messages = match obj.get("messages").and_then(Value::as_array) {
        Some(m) if !m.is_empty() => m,
        _ => return Some("messages".into()),
    };
    for (i, m) in messages.iter().enumerate() {
        let Some(m) = m.as_object() else {
            return Some(format!("messages[{i}]"));
        };
        let present = |k: &str| m.get(k).is_some_and(|v| !v.is_null());
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        let content = m.get("content").filter(|c| !c.is_null());
        if present("name") && !is_str(m.get("name")) {
            return Some(format!("messages[{i}].name"));
        }
        let parts_ok = |c: &Value, assistant: bool, empty_ok: bool| match c {
            Value::String(_) => true,
            Value::Array(parts) => {
                (empty_ok || !parts.is_empty())
                    && parts.iter().all(|p| {
                        let t = p.get("type").and_then(Value::as_str);
                        let field = |k: &str| p.get(k).filter(|v| !v.is_null());
                        match t {
                            Some("text") => is_str(field("text")),
                            Some("refusal") => assistant && is_str(field("refusal")),
                            Some("image_url") if !assistant => {
                                is_str(field("image_url").and_then(|u| u.get("url")))
                            }
                            Some("input_audio") if !assistant => {
                                let a = field("input_audio");
                                is_str(a.and_then(|a| a.get("data")))
                                    && is_str(a.and_then(|a| a.get("format")))
                            }
                            Some("file") if !assistant => {
                                field("file").is_some_and(Value::is_object)
                            }
                            _ => false,
                        }
                    })
            }
            _ => false,
        };
        let ok = match role {
            "system" | "developer" | "user" => content.is_some_and(|c| parts_ok(c, false, false)),
            "tool" => {
                is_str(m.get("tool_call_id")) && content.is_some_and(|c| parts_ok(c, false, false))
            }
            "assistant" => {
                let calls = ["tool_calls", "function_call", "refusal", "audio"]
                    .iter()
                    .any(|k| present(k));
                (!present("tool_calls") || m["tool_calls"].is_array())
                    && match content {
                        None => calls,
                        Some(c) => parts_ok(c, true, calls),
                    }
            }
            "function" => present("name") && content.is_none_or(Value::is_string),
            _ => false,
        };
        if !ok {
            return Some(format!("messages[{i}] ({role})"));
        }
    }
    match obj.get("stop") {
        None | Some(Value::Null) | Some(Value::String(_)) => {}
        Some(Value::Array(s)) if (1..=4).contains(&s.len()) && s.iter().all(Value::is_string) => {}
        Some(_) => return Some("stop".into()),
    }
    let function_named = |t: &Value| {
        t.get("function")
            .and_then(|f| f.get("name"))
            .is_some_and(Value::is_string)
    };
    match obj.get("tools") {
        None | Some(Value::Null) => {}
        Some(Value::Array(tools)) => {
            for t in tools {
                let ok = match t.get("type").and_then(Value::as_str) {
                    Some("function") => function_named(t),
                    Some("custom") => true,
                    _ => false,
                };
                if !ok {
                    return Some("tools".into());
                }
            }
        }
        Some(_) => return Some("tools".into()),
    }
    match obj.get("tool_choice") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if ["none", "auto", "required"].contains(&s.as_str()) => {}
        Some(t @ Value::Object(_)) => match t.get("type").and_then(Value::as_str) {
            Some("function") if function_named(t) => {}
            Some("function") | None => return Some("tool_choice".into()),
            Some(_) => {}
        },
        Some(_) => return Some("tool_choice".into()),
    }
    None
}

/// Nesting depth of arrays and objects, outside strings.
fn depth(text: &str) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0, false, false);
    for b in text.bytes() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

#[test]
fn the_oracle_knows_the_rules() {
    assert_eq!(
        oracle(br#"{"messages":[{"role":"user","content":"hi"}]}"#),
        None
    );
    for (body, _) in REFUSED {
        assert!(oracle(body.as_bytes()).is_some(), "{body}");
    }
    assert!(oracle(br#"{"messages":[{"role":"user","content":"\ud800"}]}"#).is_some());
}

/// Mangled valid bodies through the HTTP door: every answer is a 2xx or a 400, never a 5xx;
/// the mock got exactly as many chat requests as there were 2xx answers, and every body it got
/// is valid by [`oracle`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mangled_bodies_never_forward_anything_invalid() {
    let mock = MockUpstream::start().await;
    let gw = spawn_gateway(&mock, &["k"], |_| {}).await;
    let seeds: [&[u8]; 4] = [
        br#"{"model":"m","messages":[{"role":"user","content":"h\u00e9"}],"temperature":1,"stop":["a"]}"#,
        br#"{"messages":[{"role":"system","content":[{"type":"text","text":"x"}]},{"role":"user","content":"u"}],"max_tokens":5}"#,
        br#"{"messages":[{"role":"user","content":"a"},{"role":"assistant","content":null,"tool_calls":[]},{"role":"tool","tool_call_id":"c","content":"r"}],"tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":"auto"}"#,
        br#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"u"}}]}],"stop":"s","x":[[1]],"u":"\ud83d\ude00"}"#,
    ];
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let alphabet = b"{}[]\":,0123456789.-ntrufalsxud\\ ";
    let (mut ok, mut refused) = (0usize, 0usize);
    let mut others = Vec::new();
    for round in 0..3_000 {
        let mut body = seeds[round % seeds.len()].to_vec();
        for _ in 0..=(next() % 3) {
            let at = (next() as usize) % (body.len() + 1);
            let byte = alphabet[(next() as usize) % alphabet.len()];
            match next() % 3 {
                0 if at < body.len() => {
                    body.remove(at);
                }
                1 if at < body.len() => body[at] = byte,
                _ => body.insert(at, byte),
            }
        }
        let resp = gw.http.post_raw(PATH, &[JSON], body.clone()).await;
        match resp.status.as_u16() {
            200..=299 => ok += 1,
            400 => refused += 1,
            status => others.push(format!("{status} for {}", String::from_utf8_lossy(&body))),
        }
    }
    assert!(others.is_empty(), "{}", others.join("\n"));
    assert!(ok > 50 && refused > 50, "ok {ok}, refused {refused}");
    let forwarded = mock.chat_requests();
    assert_eq!(forwarded.len(), ok, "forwarded requests != 2xx answers");
    let invalid: Vec<String> = forwarded
        .iter()
        .filter_map(|r| {
            oracle(&r.body).map(|why| format!("{why}: {}", String::from_utf8_lossy(&r.body)))
        })
        .collect();
    assert!(
        invalid.is_empty(),
        "{} invalid bodies were forwarded:\n{}",
        invalid.len(),
        invalid.join("\n")
    );
}

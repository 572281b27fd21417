//! One cheap pass over a request body's bytes, before any parsing, for what a parser that skips
//! unread fields would let through: nesting deeper than [`MAX_DEPTH`] (serde_json skips a
//! `RawValue` iteratively, so 100,000 levels pass it untouched) and `\u` escapes that are lone
//! UTF-16 surrogates (`"\ud800"` names no character; skipped values are never decoded, so
//! serde_json cannot see them either). The scan covers the whole body, checked fields or not.
//!
//! It only tracks whether it is inside a string: on a body that is not JSON it may miscount,
//! which is harmless, since the parser that runs next refuses such a body anyway.

use super::GatewayError;

/// The deepest nesting of arrays and objects a body may have (the top-level object is 1).
/// OpenAI's own bodies need a handful of levels; JSON Schemas in `tools` or `response_format`
/// a few dozen at most.
pub const MAX_DEPTH: usize = 128;

/// Refuses a body nested deeper than [`MAX_DEPTH`] or carrying a lone surrogate escape.
pub fn check(body: &[u8]) -> Result<(), GatewayError> {
    let mut depth = 0usize;
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'"' => i = string_end(body, i + 1)?,
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(invalid_json(format!(
                        "request body is nested deeper than {MAX_DEPTH} levels"
                    )));
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// The index of the closing quote of the string whose content starts at `i` (or the body's
/// end), checking each `\u` escape on the way. Text between escapes is skipped with memchr:
/// strings (a conversation's messages) are most of a large body.
fn string_end(body: &[u8], mut i: usize) -> Result<usize, GatewayError> {
    while i < body.len() {
        let Some(at) = memchr::memchr2(b'"', b'\\', &body[i..]) else {
            break;
        };
        i += at;
        if body[i] == b'"' {
            return Ok(i);
        }
        if body.get(i + 1) != Some(&b'u') {
            i += 2;
            continue;
        }
        match unicode_escape(body, i) {
            UnicodeEscape::Char(_, len) => i += len,
            UnicodeEscape::LoneSurrogate => return Err(lone_surrogate(body, i)),
            // Not an escape at all: the parser that runs next refuses it.
            UnicodeEscape::NotHex => i += 6,
        }
    }
    Ok(body.len())
}

/// A `\u` escape in a JSON string, as JSON decodes it: one character, of one escape or of a
/// UTF-16 surrogate pair of two.
pub enum UnicodeEscape {
    /// The character and how many bytes its escape takes (6, or 12 for a pair).
    Char(char, usize),
    /// A surrogate without its other half, which names no character.
    LoneSurrogate,
    /// `\u` without four hex digits.
    NotHex,
}

/// The `\u` escape whose backslash is at `at`.
pub fn unicode_escape(bytes: &[u8], at: usize) -> UnicodeEscape {
    let Some(high) = hex4(bytes, at + 2) else {
        return UnicodeEscape::NotHex;
    };
    let (code, len) = match high {
        0xD800..=0xDBFF => {
            let low = (bytes.get(at + 6..at + 8) == Some(b"\\u"))
                .then(|| hex4(bytes, at + 8))
                .flatten();
            match low {
                Some(low @ 0xDC00..=0xDFFF) => {
                    (0x1_0000 + ((high - 0xD800) << 10) + (low - 0xDC00), 12)
                }
                _ => return UnicodeEscape::LoneSurrogate,
            }
        }
        _ => (high, 6),
    };
    // Only a trailing surrogate on its own is no character here.
    char::from_u32(code).map_or(UnicodeEscape::LoneSurrogate, |c| {
        UnicodeEscape::Char(c, len)
    })
}

fn hex4(bytes: &[u8], at: usize) -> Option<u32> {
    let digits = bytes.get(at..at + 4)?;
    digits
        .iter()
        .try_fold(0, |n, &d| Some(n * 16 + (d as char).to_digit(16)?))
}

fn lone_surrogate(body: &[u8], at: usize) -> GatewayError {
    let escape = String::from_utf8_lossy(&body[at..(at + 6).min(body.len())]).into_owned();
    invalid_json(format!(
        "request body is not valid Unicode: `{escape}` at byte {at} is a lone UTF-16 surrogate"
    ))
}

fn invalid_json(message: String) -> GatewayError {
    GatewayError::InvalidRequest {
        message,
        param: None,
        code: "invalid_json",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(depth: usize) -> String {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn depth_is_capped_outside_strings_only() {
        assert!(check(nested(MAX_DEPTH).as_bytes()).is_ok());
        assert!(check(nested(MAX_DEPTH + 1).as_bytes()).is_err());
        assert!(check(nested(100_000).as_bytes()).is_err());
        let in_string = format!("{{\"a\":\"{}\"}}", "[{".repeat(1000));
        assert!(check(in_string.as_bytes()).is_ok());
        // An escaped quote does not end the string.
        let escaped = format!("{{\"a\":\"\\\"{}\"}}", "[".repeat(1000));
        assert!(check(escaped.as_bytes()).is_ok());
    }

    #[test]
    fn lone_surrogates_are_refused_pairs_are_not() {
        for bad in [
            r#"{"a":"\ud800"}"#,
            r#"{"a":"\uDBFFx"}"#,
            r#"{"a":"\udc00"}"#,
            r#"{"a":"\ud800\u0041"}"#,
            r#"{"\ud800":1}"#,
            r#"{"a":"\ud800"#,
        ] {
            let err = check(bad.as_bytes()).unwrap_err();
            assert!(err.to_string().contains("surrogate"), "{bad}: {err}");
        }
        for good in [
            r#"{"a":"\ud83d\ude00"}"#,
            r#"{"a":"\u00e9\\ud800"}"#,
            r#"{"a":"\u12"}"#,
            "{\"a\":\"\\",
        ] {
            assert!(check(good.as_bytes()).is_ok(), "{good}");
        }
        // Escapes and the string's end found past long runs of text.
        let text = "x".repeat(5000);
        let late = format!("{{\"a\":\"{text}\\\"{text}\\ud800{text}\"}}");
        assert!(
            check(late.as_bytes()).is_err(),
            "a surrogate after long text"
        );
        let deep_after = format!("{{\"a\":\"{text}\\\"{text}\",\"b\":{}}}", nested(200));
        assert!(
            check(deep_after.as_bytes()).is_err(),
            "depth counted after the string"
        );
    }
}

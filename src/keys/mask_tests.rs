use super::*;

#[test]
fn content_loses_whole_keys_and_keeps_everything_else() {
    let keys = ["megallm-secret-123456", "k2", "sk-live-QWERTY/uiop"];
    let finder = KeyFinder::new(keys.iter().copied());
    let ordinary =
        br#"{"choices":[{"delta":{"content":"use BearerTokenAuth, sk-learn and secret-123456"}}]}"#;
    assert!(finder.replace(ordinary).is_none(), "content untouched");
    let echoed = br#"{"debug":"key megallm-secret-123456 and sk-live-QWERTY\/uiop","k2":1}"#;
    let out = finder.replace(echoed).unwrap();
    let text = std::str::from_utf8(&out).unwrap();
    assert!(
        !text.contains("secret-123456") && !text.contains("QWERTY"),
        "{text}"
    );
    assert!(
        text.contains("\"k2\""),
        "short keys are not searched in content: {text}"
    );
    serde_json::from_slice::<Value>(&out).expect("still JSON");
    assert!(looks_like_object(b" {\"a\":1}\n") && !looks_like_object(b"<html>"));
}

#[test]
fn whole_and_partial_keys_are_masked() {
    let keys = ["megallm-secret-123456", "k2"];
    let msg = "Incorrect API key provided: megallm-secret-123456. Check it.";
    let out = mask(msg, keys.iter().copied());
    assert!(!out.contains("secret-123456"), "{out}");
    assert!(out.starts_with("Incorrect API key provided: [redacted key]"));
    let out = mask("key megall***123456 rejected", keys.iter().copied());
    assert_eq!(out, "key [redacted key] rejected");
    let out = mask("token \"sk-proj-abcdefgh\" invalid", std::iter::empty());
    assert_eq!(out, "token \"[redacted key]\" invalid");
    assert_eq!(
        mask("nothing to hide here", keys.iter().copied()),
        "nothing to hide here"
    );
}

const KEYS: [&str; 5] = [
    "megallm-secret-123456",
    "k2",
    "abcd",
    "xBearerx",
    "sk-live-QWERTY/uiop",
];

fn fast(text: &str) -> String {
    mask_str(
        text,
        &Finder::new(KEYS.iter().copied()),
        KEYS.iter().copied(),
    )
}

fn full(text: &str) -> String {
    mask(text, KEYS.iter().copied())
}

#[test]
fn the_finder_is_exactly_as_strict_as_mask_on_known_cases() {
    let cases = [
        "",
        "nothing to hide here",
        "a task-list and a risk-free desk-lamp",
        "Incorrect API key provided: megallm-secret-123456.",
        "key megall***123456 rejected",
        "key …secret…",
        "just a secret- word",
        "secret-123",
        "k2",
        "k2x",
        "(k2)",
        "abcd",
        "xabcdx",
        "a.Bearerx",
        "Bearer abcdefgh",
        "Bearerxyz",
        "token sk-proj-abcdefgh!",
        "sk-short",
        "sk-",
        "\u{a0}sk-proj-abcdefgh",
        "\u{2003}sk-proj-abcdefgh",
        "QWERTY/uiop",
        "mega.llm-se",
        "…",
        "...",
        "ünïcödé megallm-secret-123456ü",
    ];
    for text in cases {
        assert_eq!(fast(text), full(text), "{text:?}");
    }
}

#[test]
fn the_finder_is_exactly_as_strict_as_mask_on_random_text() {
    // Texts built from pieces of keys, heuristics' prefixes, elisions and delimiters.
    let atoms = [
        "megallm",
        "-secret",
        "-123456",
        "secret-1",
        "k2",
        "ab",
        "cd",
        "abcd",
        "xBearer",
        "x",
        "Bearer",
        "sk-",
        "live-",
        "QWERTY",
        "/uiop",
        "*",
        "***",
        ".",
        "…",
        " ",
        "\"",
        "'",
        "(",
        ")",
        ",",
        ";",
        "<",
        ">",
        "`",
        ":",
        "!",
        "?",
        "\n",
        "\u{a0}",
        "é",
        "ta",
        "a",
        "1",
        "proj-abcdefgh",
    ];
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let finder = Finder::new(KEYS.iter().copied());
    let mut masked = 0;
    for _ in 0..20_000 {
        let len = (next() % 8) as usize;
        let text: String = (0..len)
            .map(|_| atoms[(next() % atoms.len() as u64) as usize])
            .collect();
        let want = full(&text);
        assert_eq!(
            mask_str(&text, &finder, KEYS.iter().copied()),
            want,
            "{text:?}"
        );
        if want != text {
            masked += 1;
        }
    }
    assert!(
        masked > 1000,
        "the corpus should exercise masking: {masked}"
    );
}

#[test]
fn clean_bytes_come_back_uncopied() {
    let finder = Finder::new(KEYS.iter().copied());
    let chunk = Bytes::from_static(br#"{"choices":[{"delta":{"content":"a task-list"}}]}"#);
    let out = mask_bytes(&chunk, &finder, KEYS.iter().copied());
    assert_eq!(out.as_ptr(), chunk.as_ptr(), "the same bytes, not a copy");
    assert!(!finder.may_contain(b"benign text, nothing to hide"));
}

#[test]
fn json_stays_json_when_masked() {
    let finder = Finder::new(KEYS.iter().copied());
    let event = Bytes::from_static(
        br#"{"error":{"message":"bad key \"sk-proj-abcdefgh\"\nor megallm-secret-123456","code":"k2"}}"#,
    );
    let out = mask_bytes(&event, &finder, KEYS.iter().copied());
    let v: Value = serde_json::from_slice(&out).expect("still JSON");
    assert_eq!(
        v["error"]["message"],
        "bad key \"[redacted key]\"\nor [redacted key]"
    );
    assert_eq!(v["error"]["code"], "[redacted key]");
    // Escaped `/` and an escape before `sk-` are found too.
    let escaped = Bytes::from_static(br#"{"m":"QWERTY\/uiop","n":"\nsk-proj-abcdefgh"}"#);
    let out = mask_bytes(&escaped, &finder, KEYS.iter().copied());
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(
        (v["m"].as_str(), v["n"].as_str()),
        (Some(MASK), Some("\n[redacted key]"))
    );
    // Not JSON: masked as text.
    let raw = Bytes::from_static(b"oops megallm-secret-123456 <b>");
    let out = mask_bytes(&raw, &finder, KEYS.iter().copied());
    assert_eq!(&out[..], b"oops [redacted key] <b>");
}

#[test]
fn an_empty_key_always_takes_the_full_mask() {
    let finder = Finder::new(["", "abcdefgh"].into_iter());
    assert!(finder.may_contain(b"anything"));
    assert_eq!(
        mask_str("a ... b", &finder, ["", "abcdefgh"].into_iter()),
        mask("a ... b", ["", "abcdefgh"].into_iter())
    );
}

//! Masking of key material in upstream text (error messages often echo the key, whole or as
//! `sk-abc***xyz`), before it reaches a client, a log or the admin API.
//!
//! Two halves: [`mask`] rewrites a text (it tokenizes and allocates), and [`Finder`] says, in
//! one scan of the bytes and with no allocation, whether [`mask`] could change anything at all.
//! Every upstream byte bound for a client passes through [`mask_bytes`], which runs the
//! [`Finder`] first: the common chunk, with nothing to hide, comes back as the same `Bytes`.

use std::collections::HashSet;

use aho_corasick::{AhoCorasick, MatchKind};
use bytes::Bytes;
use serde_json::Value;

const MASK: &str = "[redacted key]";

/// Shortest run of a key's characters that counts as "part of a key".
const MIN_PIECE: usize = 6;

/// Shortest key searched for inside words; shorter keys count only as a whole token.
const MIN_SEARCHED: usize = 4;

/// The prefixes of the secret-looking tokens [`mask`] replaces whatever the pool's keys.
const PREFIXES: [&str; 2] = ["sk-", "Bearer"];

/// Characters that end a token (besides whitespace).
fn is_delimiter(c: char) -> bool {
    c.is_whitespace() || matches!(c, '"' | '\'' | '`' | ',' | ';' | '(' | ')' | '<' | '>')
}

/// Replaces every whitespace/quote-delimited token that contains a whole key, or a piece of
/// at least [`MIN_PIECE`] characters of one (between `*`/`.` elisions), or looks like an
/// OpenAI-style secret (`sk-…`).
pub fn mask<'a>(text: &str, keys: impl Iterator<Item = &'a str> + Clone) -> String {
    let mut out = String::with_capacity(text.len());
    let mut token = String::new();
    let flush = |token: &mut String, out: &mut String| {
        if !token.is_empty() {
            if is_key_material(token, keys.clone()) {
                out.push_str(MASK);
            } else {
                out.push_str(token);
            }
            token.clear();
        }
    };
    for c in text.chars() {
        if is_delimiter(c) {
            flush(&mut token, &mut out);
            out.push(c);
        } else {
            token.push(c);
        }
    }
    flush(&mut token, &mut out);
    out
}

fn is_key_material<'a>(token: &str, mut keys: impl Iterator<Item = &'a str>) -> bool {
    let bare = token.trim_end_matches(['.', ':', '!', '?']);
    if bare.len() >= 8 && PREFIXES.iter().any(|p| bare.starts_with(p)) {
        return true;
    }
    keys.any(|key| {
        if key.len() < MIN_SEARCHED {
            return bare == key; // too short to search for inside words
        }
        if bare.contains(key) {
            return true;
        }
        bare.split(['*', '.', '…'])
            .filter(|piece| piece.len() >= MIN_PIECE.min(key.len()))
            .any(|piece| key.contains(piece))
    })
}

/// Whether [`mask`] could change a text, answered by one scan for the bytes it looks for.
///
/// Exactly as strict as [`mask`], never less: every token [`mask`] replaces holds, somewhere in
/// the text, one of these needles: a whole short key (under [`MIN_SEARCHED`] bytes); a run of
/// `min(MIN_PIECE, len)` bytes of a longer key (a whole key or a piece of [`MIN_PIECE`]+ bytes
/// of it contains one); or `sk-` / `Bearer` at the start of a token. A hit only means "run
/// [`mask`]", so the finder may say yes where [`mask`] then changes nothing (`task-list`), never
/// the other way round. Built once per key list (on load and reload), shared by every request.
pub struct Finder {
    matcher: Option<AhoCorasick>,
    /// An empty key matches an empty token (`...`): such a list always takes the full mask.
    always: bool,
}

impl Finder {
    pub fn new<'a>(keys: impl Iterator<Item = &'a str>) -> Finder {
        let mut needles: Vec<Vec<u8>> = PREFIXES.iter().map(|p| p.as_bytes().to_vec()).collect();
        let mut seen: HashSet<&[u8]> = HashSet::new();
        let mut always = false;
        for key in keys {
            let key = key.as_bytes();
            let run = match key.len() {
                0 => {
                    always = true;
                    continue;
                }
                n if n < MIN_SEARCHED => n,
                n => MIN_PIECE.min(n),
            };
            for window in key.windows(run) {
                if !seen.insert(window) {
                    continue;
                }
                needles.push(window.to_vec());
                if window.contains(&b'/') {
                    // JSON may escape `/` as `\/`; the JSON-aware masking reads the unescaped text.
                    let escaped = window.iter().fold(Vec::new(), |mut v, &b| {
                        if b == b'/' {
                            v.push(b'\\');
                        }
                        v.push(b);
                        v
                    });
                    needles.push(escaped);
                }
            }
        }
        // Duplicates stay (a key's run may equal `Bearer`): each pattern keeps its own rule.
        let matcher = AhoCorasick::builder()
            .match_kind(MatchKind::Standard)
            .build(&needles)
            .ok();
        Finder {
            always: always || matcher.is_none(),
            matcher,
        }
    }

    /// A finder that finds something everywhere: the full mask, for a caller that already
    /// knows there is something to mask.
    pub fn always() -> Finder {
        Finder {
            matcher: None,
            always: true,
        }
    }

    /// Whether `text` may hold key material (see [`Finder`]).
    pub fn may_contain(&self, text: &[u8]) -> bool {
        if self.always {
            return true;
        }
        let Some(matcher) = &self.matcher else {
            return true;
        };
        // The common answer, "nothing", from the automaton's fastest search (with its
        // prefilter); only a hit is looked at again, for where `sk-` / `Bearer` stand.
        if !matcher.is_match(text) {
            return false;
        }
        matcher
            .find_overlapping_iter(text)
            .any(|m| m.pattern().as_usize() >= PREFIXES.len() || starts_token(text, m.start()))
    }
}

/// Whether a token may start at byte `at`: at the start, after a delimiter, after a non-ASCII
/// byte (the end of a multi-byte whitespace character, say) or close after a `\` (a JSON escape
/// such as `\n` or `\u00a0` that decodes to a delimiter).
fn starts_token(text: &[u8], at: usize) -> bool {
    let Some(&before) = at.checked_sub(1).and_then(|i| text.get(i)) else {
        return true;
    };
    before >= 0x80
        || is_delimiter(before as char)
        || text[at.saturating_sub(6)..at].contains(&b'\\')
}

/// Whole keys in upstream *content* (a 2xx answer or chunk that is a JSON object). A model
/// cannot know a pool key, so a key reaches content only when an upstream echoes it whole; the
/// heuristics of [`mask`] (pieces of keys, any `sk-…` or `Bearer…` token) are for error text and
/// would corrupt ordinary answers (`BearerTokenAuth` in generated code, a word that happens to
/// be six letters of a key). Keys shorter than [`MIN_SEARCHED`] cannot be told from words and
/// are left to the error-text masking.
pub struct KeyFinder {
    matcher: Option<AhoCorasick>,
}

impl KeyFinder {
    pub fn new<'a>(keys: impl Iterator<Item = &'a str>) -> KeyFinder {
        let mut needles: Vec<Vec<u8>> = Vec::new();
        for key in keys.filter(|k| k.len() >= MIN_SEARCHED) {
            needles.push(key.as_bytes().to_vec());
            if key.contains('/') {
                // JSON may escape `/` as `\/`.
                needles.push(key.replace('/', "\\/").into_bytes());
            }
        }
        let matcher = (!needles.is_empty())
            .then(|| {
                AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(&needles)
                    .ok()
            })
            .flatten();
        KeyFinder { matcher }
    }

    /// `bytes` with every whole key replaced by the mask, or `None` when it holds none.
    pub fn replace(&self, bytes: &[u8]) -> Option<Bytes> {
        let matcher = self.matcher.as_ref()?;
        if !matcher.is_match(bytes) {
            return None;
        }
        let mut out = Vec::with_capacity(bytes.len());
        matcher.replace_all_with_bytes(bytes, &mut out, |_, _, out| {
            out.extend_from_slice(MASK.as_bytes());
            true
        });
        Some(Bytes::from(out))
    }
}

/// Whether upstream bytes look like a JSON object (first and last non-blank bytes), the shape
/// of every answer and chunk; anything else is treated as error text.
pub fn looks_like_object(bytes: &[u8]) -> bool {
    let t = bytes.trim_ascii();
    t.first() == Some(&b'{') && t.last() == Some(&b'}')
}

/// [`mask`] behind the [`Finder`]: no tokenizing when there is nothing to find.
#[cfg(test)]
pub fn mask_str<'a>(
    text: &str,
    finder: &Finder,
    keys: impl Iterator<Item = &'a str> + Clone,
) -> String {
    if finder.may_contain(text.as_bytes()) {
        mask(text, keys)
    } else {
        text.to_owned()
    }
}

/// Upstream bytes with key material masked; the same `Bytes` (no copy) when there is none. A
/// JSON document stays valid JSON: each of its strings (and object keys) is masked as a text.
/// Anything else is masked as text (invalid UTF-8 then becomes U+FFFD).
pub fn mask_bytes<'a>(
    bytes: &Bytes,
    finder: &Finder,
    keys: impl Iterator<Item = &'a str> + Clone,
) -> Bytes {
    if !finder.may_contain(bytes) {
        return bytes.clone();
    }
    if let Ok(mut value) = serde_json::from_slice::<Value>(bytes) {
        return if mask_json(&mut value, &keys) {
            Bytes::from(value.to_string())
        } else {
            bytes.clone()
        };
    }
    let text = String::from_utf8_lossy(bytes);
    let masked = mask(&text, keys);
    if masked == text {
        bytes.clone()
    } else {
        Bytes::from(masked)
    }
}

/// Masks every string in `value`; whether anything changed.
fn mask_json<'a>(value: &mut Value, keys: &(impl Iterator<Item = &'a str> + Clone)) -> bool {
    match value {
        Value::String(s) => {
            let masked = mask(s, keys.clone());
            let changed = masked != *s;
            *s = masked;
            changed
        }
        Value::Array(items) => items
            .iter_mut()
            .fold(false, |changed, v| mask_json(v, keys) | changed),
        Value::Object(map) => {
            let mut changed = false;
            for (name, mut v) in std::mem::take(map) {
                changed |= mask_json(&mut v, keys);
                let masked = mask(&name, keys.clone());
                changed |= masked != name;
                map.insert(masked, v);
            }
            changed
        }
        _ => false,
    }
}

#[cfg(test)]
#[path = "mask_tests.rs"]
mod tests;

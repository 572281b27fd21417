//! Masking of key material in upstream text (error messages often echo the key, whole or as
//! `sk-abc***xyz`), before it reaches a client, a log or the admin API.

const MASK: &str = "[redacted key]";

/// Shortest run of a key's characters that counts as "part of a key".
const MIN_PIECE: usize = 6;

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
        if c.is_whitespace() || matches!(c, '"' | '\'' | '`' | ',' | ';' | '(' | ')' | '<' | '>') {
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
    if bare.len() >= 8 && (bare.starts_with("sk-") || bare.starts_with("Bearer")) {
        return true;
    }
    keys.any(|key| {
        if key.len() < 4 {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}

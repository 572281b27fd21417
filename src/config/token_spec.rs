//! [`TokenSpec`]: one client token as an operator writes it in the tokens file
//! (`tok-abc name=billing rpm=600 tpm=200000 max_concurrent=20 daily_tokens=5000000
//! models=gpt-4o,openai-gpt-oss-*`), optionally as `sha256:<hex>` so the file need not hold the
//! token in clear. A bare token line is a client with no name and no limits, as before. Errors
//! name positions and attribute names, never the text that might be a token.

use sha2::{Digest, Sha256};

use super::Secret;

/// How the gateway recognises a client's token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenMatch {
    /// The token itself, compared in constant time.
    Plain(Secret),
    /// The SHA-256 of the token (`sha256:<64 hex>`): the presented token is hashed and the
    /// digests compared in constant time.
    Sha256([u8; 32]),
}

impl TokenMatch {
    /// Whether `presented` is this token; constant time in the token's content.
    pub fn matches(&self, presented: &[u8], presented_digest: &[u8; 32]) -> bool {
        use subtle::ConstantTimeEq;
        match self {
            TokenMatch::Plain(secret) => secret.matches(presented),
            TokenMatch::Sha256(digest) => bool::from(digest.ct_eq(presented_digest)),
        }
    }

    /// A short, stable id of the token (never a prefix of it), for counters of unnamed
    /// clients with limits.
    pub fn fingerprint(&self) -> String {
        let digest = match self {
            TokenMatch::Plain(secret) => Sha256::digest(secret.expose().as_bytes()).into(),
            TokenMatch::Sha256(digest) => *digest,
        };
        let hex: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
        format!("fp-{hex}")
    }
}

/// One client token and its limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenSpec {
    pub token: TokenMatch,
    /// The client's name in usage records, `/admin/usage` and metric labels.
    pub name: Option<String>,
    /// Requests started per minute (sliding window).
    pub rpm: Option<u32>,
    /// Tokens (prompt and answer, as the upstream counts them) per minute.
    pub tpm: Option<u64>,
    /// Requests in flight at once (a stream counts until it ends).
    pub max_concurrent: Option<u32>,
    /// Tokens per UTC day; a spent budget answers `insufficient_quota` until midnight UTC.
    pub daily_tokens: Option<u64>,
    /// Models the client may ask for (`*` globs); empty: any.
    pub models: Vec<String>,
}

/// Why a token line was refused. No variant holds the line's text: it may be a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenSpecError {
    #[error("a token may hold only visible ASCII characters")]
    NotAscii,
    #[error("the line starts with an attribute; the token must come first")]
    AttributeFirst,
    #[error("`sha256:` must be followed by 64 hex digits")]
    BadDigest,
    #[error("word {0} after the token is not an attribute like name=billing")]
    NotAnAttribute(usize),
    #[error("word {0} is not a known token attribute (known: {ATTRIBUTES})", ATTRIBUTES = ATTRIBUTES.join(", "))]
    UnknownAttribute(usize),
    #[error("{0} must be a whole number of at least 1")]
    NotACount(&'static str),
    #[error("name must be 1 to 64 letters, digits, `-`, `_` or `.`")]
    BadName,
    #[error("models must be a comma list of model names or globs")]
    BadModels,
}

/// A refused line of a tokens file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct TokensFileError {
    pub line: usize,
    pub reason: TokenSpecError,
}

const ATTRIBUTES: [&str; 6] = [
    "name",
    "rpm",
    "tpm",
    "max_concurrent",
    "daily_tokens",
    "models",
];

impl TokenSpec {
    /// A bare token: no name, no limits.
    pub fn bare(secret: Secret) -> Self {
        TokenSpec {
            token: TokenMatch::Plain(secret),
            name: None,
            rpm: None,
            tpm: None,
            max_concurrent: None,
            daily_tokens: None,
            models: Vec::new(),
        }
    }

    /// Whether any limit or model list applies.
    pub fn is_limited(&self) -> bool {
        self.rpm.is_some()
            || self.tpm.is_some()
            || self.max_concurrent.is_some()
            || self.daily_tokens.is_some()
    }

    /// Parses `TOKEN [name=…] [rpm=N] [tpm=N] [max_concurrent=N] [daily_tokens=N]
    /// [models=a,b*]`, where TOKEN may be `sha256:<hex>`.
    pub fn parse(line: &str) -> Result<TokenSpec, TokenSpecError> {
        let mut parts = line.split_whitespace();
        let token = parts.next().unwrap_or_default();
        if let Some((name, _)) = token.split_once('=') {
            if ATTRIBUTES.contains(&name) {
                return Err(TokenSpecError::AttributeFirst);
            }
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenSpecError::NotAscii);
        }
        let token = match token.strip_prefix("sha256:") {
            Some(hex) => TokenMatch::Sha256(parse_digest(hex).ok_or(TokenSpecError::BadDigest)?),
            None => TokenMatch::Plain(Secret::new(token.to_owned())),
        };
        let mut spec = TokenSpec {
            token,
            ..TokenSpec::bare(Secret::new(String::new()))
        };
        for (i, attr) in parts.enumerate() {
            let position = i + 2;
            let (name, value) = attr
                .split_once('=')
                .ok_or(TokenSpecError::NotAnAttribute(position))?;
            let name = ATTRIBUTES
                .into_iter()
                .find(|a| *a == name)
                .ok_or(TokenSpecError::UnknownAttribute(position))?;
            let count = || -> Result<u64, TokenSpecError> {
                value
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or(TokenSpecError::NotACount(name))
            };
            match name {
                "name" => {
                    let ok = !value.is_empty()
                        && value.len() <= 64
                        && value
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
                    if !ok {
                        return Err(TokenSpecError::BadName);
                    }
                    spec.name = Some(value.to_owned());
                }
                "rpm" => spec.rpm = Some(u32::try_from(count()?).unwrap_or(u32::MAX)),
                "max_concurrent" => {
                    spec.max_concurrent = Some(u32::try_from(count()?).unwrap_or(u32::MAX))
                }
                "tpm" => spec.tpm = Some(count()?),
                "daily_tokens" => spec.daily_tokens = Some(count()?),
                _ => {
                    let models: Vec<String> = value
                        .split(',')
                        .filter(|m| !m.is_empty())
                        .map(str::to_owned)
                        .collect();
                    if models.is_empty() {
                        return Err(TokenSpecError::BadModels);
                    }
                    spec.models = models;
                }
            }
        }
        Ok(spec)
    }

    /// A tokens file's text: one spec a line, `#` comments, blank lines ignored.
    pub fn parse_file(text: &str) -> Result<Vec<TokenSpec>, TokensFileError> {
        let mut specs = Vec::new();
        for (n, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let spec = TokenSpec::parse(line).map_err(|reason| TokensFileError {
                line: n + 1,
                reason,
            })?;
            specs.push(spec);
        }
        Ok(specs)
    }
}

fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// `*` matches any run of characters; everything else matches itself.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_line_parses_and_a_bare_one_keeps_working() {
        let spec = TokenSpec::parse(
            "tok-abc name=billing rpm=600 tpm=200000 max_concurrent=20 daily_tokens=5000000 models=gpt-4o,openai-gpt-oss-*",
        )
        .unwrap();
        assert_eq!(spec.name.as_deref(), Some("billing"));
        assert_eq!((spec.rpm, spec.tpm), (Some(600), Some(200_000)));
        assert_eq!(
            (spec.max_concurrent, spec.daily_tokens),
            (Some(20), Some(5_000_000))
        );
        assert_eq!(spec.models, ["gpt-4o", "openai-gpt-oss-*"]);
        let bare = TokenSpec::parse("tok-bare").unwrap();
        assert_eq!(bare, TokenSpec::bare(Secret::new("tok-bare".into())));
        for line in [
            "tok-s rpm=x",
            "tok-s tok-t",
            "tok-s colour=red",
            "tok-s name=a/b",
        ] {
            let err = TokenSpec::parse(line).unwrap_err().to_string();
            assert!(!err.contains("tok-"), "{line} → {err}");
        }
        assert_eq!(
            TokenSpec::parse("name=x").unwrap_err(),
            TokenSpecError::AttributeFirst
        );
    }

    #[test]
    fn a_sha256_token_matches_the_token_it_hashes() {
        let digest: [u8; 32] = Sha256::digest(b"tok-hashed").into();
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        let spec = TokenSpec::parse(&format!("sha256:{hex} name=h")).unwrap();
        assert!(spec.token.matches(b"tok-hashed", &digest));
        let other: [u8; 32] = Sha256::digest(b"tok-other").into();
        assert!(!spec.token.matches(b"tok-other", &other));
        assert_eq!(
            TokenSpec::parse("sha256:abc").unwrap_err(),
            TokenSpecError::BadDigest
        );
    }

    #[test]
    fn globs() {
        assert!(glob_matches("openai-gpt-oss-*", "openai-gpt-oss-120b"));
        assert!(glob_matches("gpt-4o", "gpt-4o"));
        assert!(!glob_matches("gpt-4o", "gpt-4o-mini"));
        assert!(glob_matches("*mini", "gpt-4o-mini"));
        assert!(glob_matches("a*b*c", "axxbyyc"));
        assert!(!glob_matches("a*b*c", "axxbyy"));
        assert!(glob_matches("*", "anything"));
    }
}

//! [`KeySpec`]: one upstream key as an operator writes it (`sk-abc weight=3 rpm=600`), and
//! the keys file's text format. Errors name positions, never the text that might be a key.

use super::Secret;

/// One upstream key and its scheduling attributes, parsed from a line such as
/// `sk-abc weight=3 max_concurrent=8 rpm=600`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySpec {
    pub secret: Secret,
    /// Relative share of traffic under the `weighted` strategy (≥ 1).
    pub weight: u32,
    /// At most this many requests in flight on the key; a key at its limit is skipped.
    pub max_concurrent: Option<u32>,
    /// At most this many requests started per minute on the key (token bucket).
    pub rpm: Option<u32>,
    /// At most this many tokens (prompt and answer) per minute on the key: each request is
    /// charged an estimate up front and corrected by the answer's `usage`.
    pub tpm: Option<u32>,
}

/// Why a key line was refused. No variant holds the line's text: it may be a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeySpecError {
    #[error("empty key line")]
    Empty,
    #[error("the line starts with an attribute; the key must come first")]
    AttributeFirst,
    #[error("a key may hold only visible ASCII characters")]
    NotAscii,
    #[error(
        "word {0} after the key is not an attribute like weight=2 \
         (keys in MEGALLM_API_KEYS are separated by commas)"
    )]
    NotAnAttribute(usize),
    #[error("word {0} is not a known key attribute (known: {ATTRIBUTES})", ATTRIBUTES = ATTRIBUTES.join(", "))]
    UnknownAttribute(usize),
    #[error("{0} must be a whole number of at least 1")]
    NotACount(&'static str),
}

/// A refused line of a keys file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct KeysFileError {
    pub line: usize,
    pub reason: KeySpecError,
}

const ATTRIBUTES: [&str; 4] = ["weight", "max_concurrent", "rpm", "tpm"];

impl KeySpec {
    pub fn new(secret: &str) -> Self {
        KeySpec {
            secret: Secret::new(secret.to_owned()),
            weight: 1,
            max_concurrent: None,
            rpm: None,
            tpm: None,
        }
    }

    /// Parses `KEY [weight=N] [max_concurrent=N] [rpm=N] [tpm=N]`.
    pub fn parse(line: &str) -> Result<KeySpec, KeySpecError> {
        let mut parts = line.split_whitespace();
        let key = parts.next().ok_or(KeySpecError::Empty)?;
        if key.contains('=') && key.len() < 24 && key.split('=').next().is_some_and(attribute) {
            return Err(KeySpecError::AttributeFirst);
        }
        if !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(KeySpecError::NotAscii);
        }
        let mut spec = KeySpec::new(key);
        // Errors name the attribute's position, never its text: a missing comma between two
        // keys would otherwise print the second key.
        for (i, attr) in parts.enumerate() {
            let position = i + 2;
            let (name, value) = attr
                .split_once('=')
                .ok_or(KeySpecError::NotAnAttribute(position))?;
            let name = ATTRIBUTES
                .into_iter()
                .find(|a| *a == name)
                .ok_or(KeySpecError::UnknownAttribute(position))?;
            let n: u32 = value
                .parse()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or(KeySpecError::NotACount(name))?;
            match name {
                "weight" => spec.weight = n,
                "max_concurrent" => spec.max_concurrent = Some(n),
                "rpm" => spec.rpm = Some(n),
                _ => spec.tpm = Some(n),
            }
        }
        Ok(spec)
    }

    /// Parses a keys file's text: one spec a line, `#` comments, blank lines ignored.
    pub fn parse_file(text: &str) -> Result<Vec<KeySpec>, KeysFileError> {
        let mut specs = Vec::new();
        for (n, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let spec = KeySpec::parse(line).map_err(|reason| KeysFileError {
                line: n + 1,
                reason,
            })?;
            specs.push(spec);
        }
        Ok(specs)
    }
}

fn attribute(name: &str) -> bool {
    ATTRIBUTES.contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_spec_parses_attributes() {
        let spec = KeySpec::parse("sk-abc weight=3 max_concurrent=2 rpm=60 tpm=9000").unwrap();
        assert_eq!(spec.tpm, Some(9000));
        assert_eq!(
            KeySpec::parse("sk-abc tpm=0"),
            Err(KeySpecError::NotACount("tpm"))
        );
        assert_eq!(spec.secret.expose(), "sk-abc");
        assert_eq!(spec.weight, 3);
        assert_eq!(spec.max_concurrent, Some(2));
        assert_eq!(spec.rpm, Some(60));
        assert_eq!(
            KeySpec::parse("sk-abc weight=0"),
            Err(KeySpecError::NotACount("weight"))
        );
        assert_eq!(
            KeySpec::parse("sk-abc colour=red"),
            Err(KeySpecError::UnknownAttribute(2))
        );
        for line in [
            "sk-secret weight=x",
            "sk-a sk-second",
            "sk-a sk-b=1",
            "sk-a weight=sk-b",
        ] {
            let err = KeySpec::parse(line).unwrap_err().to_string();
            assert!(!err.contains("sk-"), "{line} → {err}");
        }
    }

    #[test]
    fn keys_file_skips_comments_and_blanks_and_names_the_bad_line() {
        let specs = KeySpec::parse_file("# pool\n\nk1\n  k2 weight=2 # second\n").unwrap();
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[1].weight, 2);
        let err = KeySpec::parse_file("k1\n\nk2 rpm=-1\n").unwrap_err();
        assert_eq!(err.line, 3);
        assert_eq!(
            err.to_string(),
            "line 3: rpm must be a whole number of at least 1"
        );
    }
}

//! [`Secret`]: an upstream key or a client token, held so that it cannot be printed by
//! accident, compared in constant time, and named by a fingerprint instead of itself.

use std::fmt;

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// A secret (upstream key or client token). `Debug` and `Display` print `***` so that a stray
/// `{:?}` of the settings can never leak one into a log.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(value)
    }

    /// The secret itself: call only where it goes on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A short fingerprint (`fp-` + 8 hex digits of SHA-256), stable across restarts and not a
    /// prefix of the secret, so operators can match keys without seeing them.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.0.as_bytes());
        let mut out = String::with_capacity(11);
        out.push_str("fp-");
        for byte in &digest[..4] {
            out.push_str(&format!("{byte:02x}"));
        }
        out
    }

    /// Constant-time comparison, for tokens a client presents.
    pub fn matches(&self, presented: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        self.0.len() == presented.len() && bool::from(self.0.as_bytes().ct_eq(presented))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("sk-very-secret".into());
        assert_eq!(format!("{s:?}"), "***");
        assert!(!s.fingerprint().contains("sk-"));
        assert!(s.matches(b"sk-very-secret"));
        assert!(!s.matches(b"sk-very-secreT"));
    }
}

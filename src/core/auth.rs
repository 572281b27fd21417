//! The token checks both doors make: a client's gateway token, the admin token, the metrics
//! token. Tokens are compared in constant time ([`Secret::matches`]); the doors only pass the
//! `Authorization` value (HTTP header or gRPC metadata) and render the refusal.
//!
//! [`Secret::matches`]: crate::config::Secret::matches

use super::{Caller, Core};
use crate::chat::GatewayError;

impl Core {
    /// Whether clients need a gateway token (`GATEWAY_AUTH_TOKENS` or `--auth-tokens-file`).
    pub fn client_tokens_required(&self) -> bool {
        self.clients.required()
    }

    /// Checks a client's `Authorization` value when gateway tokens are configured, and says
    /// who the caller is (its name and limits come with it).
    pub fn authorize(&self, authorization: Option<&[u8]>) -> Result<Caller, GatewayError> {
        self.authorize_token(authorization.and_then(bearer_token))
    }

    /// Anthropic's clients send the token as `x-api-key`; a bearer `Authorization` is taken
    /// too, first when both are sent.
    pub fn authorize_api_key(
        &self,
        authorization: Option<&[u8]>,
        api_key: Option<&[u8]>,
    ) -> Result<Caller, GatewayError> {
        let token = authorization
            .and_then(bearer_token)
            .or_else(|| api_key.map(<[u8]>::trim_ascii).filter(|k| !k.is_empty()));
        self.authorize_token(token)
    }

    /// Every token is compared in constant time (`Clients::authorize`).
    fn authorize_token(&self, token: Option<&[u8]>) -> Result<Caller, GatewayError> {
        if !self.clients.required() {
            return Ok(Caller::default());
        }
        let token = token.ok_or(GatewayError::Unauthenticated)?;
        self.clients.authorize(Some(token))
    }

    /// `None` when the admin API is off; else whether `authorization` carries the admin token.
    pub fn admin_authorized(&self, authorization: Option<&[u8]>) -> Option<bool> {
        let admin = self.settings.admin_token.as_ref()?;
        Some(
            authorization
                .and_then(bearer_token)
                .is_some_and(|t| admin.matches(t)),
        )
    }

    /// `None` when `/metrics` is open; else whether `authorization` carries the metrics token.
    pub fn metrics_authorized(&self, authorization: Option<&[u8]>) -> Option<bool> {
        let token = self.settings.metrics_token.as_ref()?;
        Some(
            authorization
                .and_then(bearer_token)
                .is_some_and(|t| token.matches(t)),
        )
    }
}

/// `Bearer <token>` → token. The scheme is case-insensitive (RFC 9110 §11.1).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token(b"Bearer tok"), Some(&b"tok"[..]));
        assert_eq!(bearer_token(b"BEARER tok "), Some(&b"tok"[..]));
        assert_eq!(bearer_token(b"bEaReR  tok"), Some(&b"tok"[..]));
        assert_eq!(bearer_token(b"Bearer "), None);
        assert_eq!(bearer_token(b"Basic dG9rOg=="), None);
        assert_eq!(bearer_token(b"Bear"), None);
        assert_eq!(bearer_token(b"Bearertok"), None);
    }
}

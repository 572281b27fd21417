//! The one place that decides what an upstream answer says about the key that got it: the
//! key scheduler's state table (README, "What the gateway does with each upstream answer"), as
//! a pure function of status, headers and body.

use std::time::{Duration, SystemTime};

use http::HeaderMap;

use crate::chat::UpstreamErrorBody;

/// What an upstream answer means for the key (not for the request: see `dispatch`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Outcome {
    /// 2xx: the key works.
    Success,
    /// 400, 404, 409, 413, 415, 422 and other 4xx: the request's fault; the key is untouched.
    CallerFault,
    /// 429: cool the key until `reset` if the upstream said when, else back off.
    RateLimited { reset: Option<Duration> },
    /// 429/403/402 saying quota or billing is exhausted: a long bench, until `reset` when the
    /// upstream said when (`Retry-After`, `x-ratelimit-reset-*`), else until the configured
    /// daily reset or for `--quota-bench`.
    QuotaExhausted { reset: Option<Duration> },
    /// 401, and 403 otherwise: the credential is invalid; disable until a probe succeeds.
    InvalidCredential,
    /// 5xx, 408, connect error, timeout before the first byte: counts toward the breaker.
    Transient,
}

impl Outcome {
    /// The failure class this outcome counts under; `None` for a success.
    pub fn class(self) -> Option<FailureClass> {
        match self {
            Outcome::Success => None,
            Outcome::CallerFault => Some(FailureClass::Caller),
            Outcome::RateLimited { .. } => Some(FailureClass::RateLimited),
            Outcome::QuotaExhausted { .. } => Some(FailureClass::Quota),
            Outcome::InvalidCredential => Some(FailureClass::Credential),
            Outcome::Transient => Some(FailureClass::Transient),
        }
    }
}

/// What went wrong on a key, as counted and shown: the outcomes other than success, and a
/// stream that broke after its first byte. [`FailureClass::name`] is the one spelling of each
/// (admin JSON, `LastError.class`, the metric's `class` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureClass {
    RateLimited,
    Quota,
    Credential,
    Transient,
    Caller,
    StreamBroken,
}

impl FailureClass {
    /// Every class, in the order the admin API and metrics list them.
    pub const ALL: [FailureClass; 6] = [
        FailureClass::RateLimited,
        FailureClass::Quota,
        FailureClass::Credential,
        FailureClass::Transient,
        FailureClass::Caller,
        FailureClass::StreamBroken,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FailureClass::RateLimited => "rate_limited",
            FailureClass::Quota => "quota",
            FailureClass::Credential => "credential",
            FailureClass::Transient => "transient",
            FailureClass::Caller => "caller",
            FailureClass::StreamBroken => "stream_broken",
        }
    }

    /// Its place in [`FailureClass::ALL`], for arrays indexed by class.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl serde::Serialize for FailureClass {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// Classifies an upstream HTTP answer. `error` is its (possibly partial) error body, as
/// `upstream` parsed it once; `None` where there is no error body to read (a 2xx).
pub fn classify(status: u16, headers: &HeaderMap, error: Option<&UpstreamErrorBody>) -> Outcome {
    match status {
        200..=299 => Outcome::Success,
        401 => Outcome::InvalidCredential,
        402 => quota(headers),
        403 if says_quota(error) => quota(headers),
        // OpenAI-style upstreams also answer 403 for a model the project may not use: that is
        // the request's fault, and blaming the key would let one request bench the pool.
        403 if says_request_fault(error) => Outcome::CallerFault,
        403 => Outcome::InvalidCredential,
        429 if says_quota(error) => quota(headers),
        // "Request too large for … tokens per min": no key of the tier can take it.
        429 if says_request_too_large(error) => Outcome::CallerFault,
        429 => Outcome::RateLimited {
            reset: reset_after(headers, SystemTime::now()),
        },
        // A redirect (not followed: it would carry the key elsewhere) means a misconfigured
        // base URL, as unusable as a 5xx.
        300..=399 | 408 | 500..=599 => Outcome::Transient,
        _ => Outcome::CallerFault,
    }
}

fn quota(headers: &HeaderMap) -> Outcome {
    Outcome::QuotaExhausted {
        reset: reset_after(headers, SystemTime::now()),
    }
}

/// The lower-cased `code`, `type` and `message` of an upstream error, empty where absent. Only
/// an error object's own `message` counts: not a bare string error, nor a body that is no JSON.
fn lowered(error: Option<&UpstreamErrorBody>) -> [String; 3] {
    let Some(error) = error else {
        return Default::default();
    };
    let field = |f: &Option<String>| f.as_deref().unwrap_or("").to_ascii_lowercase();
    let message = if error.message_is_field {
        error.message.to_ascii_lowercase()
    } else {
        String::new()
    };
    [field(&error.code), field(&error.error_type), message]
}

/// True when the error's `code` or `type` speaks of quota, billing or credit.
fn says_quota(error: Option<&UpstreamErrorBody>) -> bool {
    let [code, kind, _] = lowered(error);
    [
        "quota",
        "billing",
        "credit",
        "payment",
        "insufficient_funds",
    ]
    .iter()
    .any(|w| code.contains(w) || kind.contains(w))
}

/// True when a 403 names the request (its model), not the credential.
fn says_request_fault(error: Option<&UpstreamErrorBody>) -> bool {
    let [code, kind, _] = lowered(error);
    let about_key = ["key", "auth", "token", "credential", "permission_denied"]
        .iter()
        .any(|w| code.contains(w) || kind.contains(w));
    !about_key && (code.contains("model_not_found") || kind == "invalid_request_error")
}

fn says_request_too_large(error: Option<&UpstreamErrorBody>) -> bool {
    let [_, _, message] = lowered(error);
    message.starts_with("request too large")
}

/// Longest cooldown the upstream may ask for; anything longer is read as this.
const MAX_RESET: Duration = Duration::from_secs(86_400);

/// Seconds from a header as a bounded duration; `None` for negative or non-numbers.
fn secs(value: f64) -> Option<Duration> {
    (value >= 0.0).then(|| {
        Duration::try_from_secs_f64(value)
            .unwrap_or(MAX_RESET)
            .min(MAX_RESET)
    })
}

/// When a rate-limited key may be used again, from `Retry-After` (seconds or HTTP date), else
/// from OpenAI's `x-ratelimit-reset-requests` / `-tokens` (`1s`, `6m0s`, `20ms`), picking the
/// one whose `remaining` is 0, or the later of the two when that is not said.
pub fn reset_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(value) = text("retry-after") {
        if let Some(d) = value.parse::<f64>().ok().and_then(secs) {
            return Some(d);
        }
        if let Ok(when) = httpdate::parse_http_date(value) {
            return Some(
                when.duration_since(now)
                    .unwrap_or(Duration::ZERO)
                    .min(MAX_RESET),
            );
        }
    }
    if let Some(d) = text("retry-after-ms")
        .and_then(|v| v.parse::<f64>().ok())
        .and_then(|ms| secs(ms / 1000.0))
    {
        return Some(d);
    }
    let requests = text("x-ratelimit-reset-requests").and_then(parse_go_duration);
    let tokens = text("x-ratelimit-reset-tokens").and_then(parse_go_duration);
    let exhausted = |name: &str| text(name) == Some("0");
    match (requests, tokens) {
        (Some(r), _) if exhausted("x-ratelimit-remaining-requests") => Some(r),
        (_, Some(t)) if exhausted("x-ratelimit-remaining-tokens") => Some(t),
        (Some(r), Some(t)) => Some(r.max(t)),
        (r, t) => r.or(t),
    }
}

/// How long the upstream says the key's own budget is spent, from any answer's (2xx included)
/// `x-ratelimit-remaining-requests` / `-tokens` and their `x-ratelimit-reset-*`: the later
/// reset of the counts at 0 (one second when a count is 0 and its reset unsaid); `None` while
/// both counts are above 0 or absent.
pub fn paced_for(headers: &HeaderMap) -> Option<Duration> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    ["requests", "tokens"]
        .into_iter()
        .filter(|what| {
            text(&format!("x-ratelimit-remaining-{what}"))
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(|n| n <= 0.0)
        })
        .map(|what| {
            text(&format!("x-ratelimit-reset-{what}"))
                .and_then(parse_go_duration)
                .unwrap_or(Duration::from_secs(1))
        })
        .max()
}

/// Parses Go-style durations as OpenAI sends them: `1s`, `6m0s`, `20ms`, `1h2m3.5s`.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let mut total = 0f64;
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let value: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += value * factor;
        rest = &rest[unit_end..];
    }
    secs(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table as the dispatcher reads it: the body parsed once, in `upstream`, and its
    /// fields handed to the real [`super::classify`] (this shadows the glob import).
    fn classify(status: u16, headers: &HeaderMap, body: &[u8]) -> Outcome {
        super::classify(status, headers, Some(&UpstreamErrorBody::parse(body)))
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_state_table() {
        let none = HeaderMap::new();
        assert_eq!(classify(200, &none, b""), Outcome::Success);
        for s in [400, 404, 409, 413, 415, 422] {
            assert_eq!(classify(s, &none, b""), Outcome::CallerFault, "{s}");
        }
        assert_eq!(classify(401, &none, b""), Outcome::InvalidCredential);
        assert_eq!(classify(403, &none, b"{}"), Outcome::InvalidCredential);
        let quota = br#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}"#;
        assert_eq!(
            classify(429, &none, quota),
            Outcome::QuotaExhausted { reset: None }
        );
        assert_eq!(
            classify(
                403,
                &none,
                br#"{"error":{"code":"billing_hard_limit_reached"}}"#
            ),
            Outcome::QuotaExhausted { reset: None }
        );
        assert_eq!(
            classify(429, &none, b""),
            Outcome::RateLimited { reset: None }
        );
        let model = br#"{"error":{"message":"Project does not have access to model x","type":"invalid_request_error","code":"model_not_found"}}"#;
        assert_eq!(classify(403, &none, model), Outcome::CallerFault);
        let bad_key = br#"{"error":{"type":"invalid_request_error","code":"invalid_api_key"}}"#;
        assert_eq!(classify(403, &none, bad_key), Outcome::InvalidCredential);
        let too_large = br#"{"error":{"message":"Request too large for gpt-4 on tokens per min (TPM)","type":"tokens","code":"rate_limit_exceeded"}}"#;
        assert_eq!(classify(429, &none, too_large), Outcome::CallerFault);
        for s in [500, 502, 503, 504, 408, 301, 308] {
            assert_eq!(classify(s, &none, b""), Outcome::Transient, "{s}");
        }
    }

    #[test]
    fn only_an_error_objects_own_message_is_read() {
        let none = HeaderMap::new();
        // A bare string error or a body that is no JSON says nothing the table reads.
        for body in [
            &br#"{"error":"Request too large for gpt-4 on tokens per min"}"#[..],
            b"Request too large for gpt-4 on tokens per min",
        ] {
            let outcome = classify(429, &none, body);
            assert_eq!(outcome, Outcome::RateLimited { reset: None }, "{body:?}");
        }
        assert_eq!(
            classify(
                403,
                &none,
                br#"{"error":{"code":503,"type":"server_error"}}"#
            ),
            Outcome::InvalidCredential
        );
    }

    #[test]
    fn failure_classes_are_listed_in_index_order() {
        for (i, class) in FailureClass::ALL.into_iter().enumerate() {
            assert_eq!(class.index(), i, "{class:?}");
        }
        assert_eq!(Outcome::Success.class(), None);
        assert_eq!(
            serde_json::to_string(&Outcome::Transient.class()).unwrap(),
            "\"transient\""
        );
    }

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            reset_after(&headers(&[("retry-after", "2")]), now),
            Some(Duration::from_secs(2))
        );
        let date = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            reset_after(&headers(&[("retry-after", &date)]), now),
            Some(Duration::from_secs(30))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(
            reset_after(&headers(&[("retry-after", &past)]), now),
            Some(Duration::ZERO)
        );
        let h = headers(&[
            ("x-ratelimit-reset-requests", "6m0s"),
            ("x-ratelimit-reset-tokens", "20ms"),
            ("x-ratelimit-remaining-requests", "5"),
            ("x-ratelimit-remaining-tokens", "0"),
        ]);
        assert_eq!(reset_after(&h, now), Some(Duration::from_millis(20)));
        let h = headers(&[
            ("x-ratelimit-reset-requests", "1s"),
            ("x-ratelimit-reset-tokens", "6m0s"),
        ]);
        assert_eq!(reset_after(&h, now), Some(Duration::from_secs(360)));
        assert_eq!(reset_after(&headers(&[("retry-after", "soon")]), now), None);
        let day = Some(MAX_RESET);
        assert_eq!(
            reset_after(&headers(&[("retry-after-ms", "1e30")]), now),
            day
        );
        assert_eq!(reset_after(&headers(&[("retry-after", "1e300")]), now), day);
        let far = headers(&[("retry-after", "Fri, 31 Dec 9999 23:59:59 GMT")]);
        assert_eq!(reset_after(&far, now), day);
    }

    #[test]
    fn pacing_headers() {
        let h = |pairs: &[(&'static str, &str)]| paced_for(&headers(pairs));
        assert_eq!(h(&[]), None);
        assert_eq!(
            h(&[
                ("x-ratelimit-remaining-requests", "3"),
                ("x-ratelimit-reset-requests", "2s")
            ]),
            None
        );
        assert_eq!(
            h(&[
                ("x-ratelimit-remaining-requests", "0"),
                ("x-ratelimit-reset-requests", "2s")
            ]),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            h(&[
                ("x-ratelimit-remaining-requests", "0"),
                ("x-ratelimit-reset-requests", "20ms"),
                ("x-ratelimit-remaining-tokens", "0"),
                ("x-ratelimit-reset-tokens", "6m0s"),
            ]),
            Some(Duration::from_secs(360))
        );
        assert_eq!(
            h(&[
                ("x-ratelimit-remaining-tokens", "0"),
                ("x-ratelimit-reset-requests", "9s")
            ]),
            Some(Duration::from_secs(1)),
            "a count at 0 with no reset of its own waits a second"
        );
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("1s"), Some(Duration::from_secs(1)));
        assert_eq!(parse_go_duration("6m0s"), Some(Duration::from_secs(360)));
        assert_eq!(parse_go_duration("20ms"), Some(Duration::from_millis(20)));
        assert_eq!(
            parse_go_duration("1h2m3.5s"),
            Some(Duration::from_millis(3_723_500))
        );
        assert_eq!(parse_go_duration("x"), None);
        assert_eq!(parse_go_duration("5"), None);
    }
}

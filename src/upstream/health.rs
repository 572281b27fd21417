//! The upstream's own health, apart from any key's: one breaker for the upstream (connect, DNS
//! and TLS failures, every key timing out together) and one account-wide 429 backoff (most
//! keys rate limited within a short window). Neither touches a key's state: an outage is not a
//! key's fault, and an account's limit is not each key's own.
//!
//! Pure, driven by a clock passed in (the dispatcher passes `Instant::now()`); one short
//! `std::sync::Mutex` section per call, never held across an await. Per replica: with
//! `--redis` each replica learns an outage or an account limit from its own answers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// How long the breaker stays open after a connect failure before a request may probe. Short:
/// the upstream is served again within this much of its return.
pub const OPEN_FOR: Duration = Duration::from_millis(500);
/// A probe that has given no verdict after this long (its client went away) lets another
/// request probe.
const PROBE_STALE: Duration = Duration::from_secs(2);
/// 429s from different keys within this window count together.
pub const RATE_WINDOW: Duration = Duration::from_secs(5);

/// Why the gateway will not call the upstream now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The upstream is unreachable (`cause`: `connection refused`, …).
    Unreachable {
        cause: Arc<str>,
        retry_after: Duration,
    },
    /// The account is rate limited (`keys` answered 429 within [`RATE_WINDOW`]).
    AccountLimited { keys: usize, retry_after: Duration },
}

/// Leave to call the upstream; `probe` when this call is the half-open probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Admission {
    pub probe: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Breaker {
    Closed,
    Open {
        until: Instant,
        cause: Arc<str>,
    },
    /// One request is probing since `since`.
    HalfOpen {
        since: Instant,
        cause: Arc<str>,
    },
}

#[derive(Debug)]
struct Inner {
    breaker: Breaker,
    /// Keys whose first-byte timeout came in a row, with no upstream answer in between.
    timed_out: Vec<Arc<str>>,
    /// Recent 429s: (key, when, when the key may be used again).
    limited: Vec<(Arc<str>, Instant, Instant)>,
    /// The account-wide backoff: no upstream call before this.
    backoff_until: Option<Instant>,
}

/// The upstream breaker and the account-wide 429 backoff.
#[derive(Debug)]
pub struct UpstreamHealth {
    inner: Mutex<Inner>,
    /// True while there is nothing to check: breaker closed, no backoff, no timeout streak.
    /// Every request asks [`UpstreamHealth::admit`] and reports [`UpstreamHealth::answered`];
    /// in the common, healthy case both read this flag and take no lock.
    calm: AtomicBool,
}

impl Inner {
    fn calm(&self) -> bool {
        self.breaker == Breaker::Closed && self.backoff_until.is_none() && self.timed_out.is_empty()
    }
}

impl Default for UpstreamHealth {
    fn default() -> Self {
        UpstreamHealth {
            inner: Mutex::new(Inner {
                breaker: Breaker::Closed,
                timed_out: Vec::new(),
                limited: Vec::new(),
                backoff_until: None,
            }),
            calm: AtomicBool::new(true),
        }
    }
}

/// A locked section that keeps [`UpstreamHealth::calm`] true to the state when it ends.
struct Guard<'a> {
    inner: std::sync::MutexGuard<'a, Inner>,
    calm: &'a AtomicBool,
}

impl std::ops::Deref for Guard<'_> {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

impl std::ops::DerefMut for Guard<'_> {
    fn deref_mut(&mut self) -> &mut Inner {
        &mut self.inner
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        self.calm.store(self.inner.calm(), Ordering::Release);
    }
}

impl UpstreamHealth {
    fn lock(&self) -> Guard<'_> {
        Guard {
            inner: self.inner.lock().unwrap_or_else(|p| p.into_inner()),
            calm: &self.calm,
        }
    }

    /// May a request call the upstream now? `first` for a request's first try: only that one
    /// waits out an account-wide backoff (a request already on its round finishes it, so that
    /// every key is asked once).
    pub fn admit(&self, now: Instant, first: bool) -> Result<Admission, Refusal> {
        if self.calm.load(Ordering::Acquire) {
            return Ok(Admission { probe: false });
        }
        let mut inner = self.lock();
        if first {
            if let Some(until) = inner.backoff_until {
                if now < until {
                    let keys = inner.limited.len();
                    return Err(Refusal::AccountLimited {
                        keys,
                        retry_after: until - now,
                    });
                }
                inner.backoff_until = None;
            }
        }
        match inner.breaker.clone() {
            Breaker::Closed => Ok(Admission { probe: false }),
            Breaker::Open { until, cause } if now < until => Err(Refusal::Unreachable {
                cause,
                retry_after: until - now,
            }),
            Breaker::HalfOpen { since, cause } if now < since + PROBE_STALE => {
                Err(Refusal::Unreachable {
                    cause,
                    retry_after: OPEN_FOR,
                })
            }
            Breaker::Open { cause, .. } | Breaker::HalfOpen { cause, .. } => {
                inner.breaker = Breaker::HalfOpen { since: now, cause };
                Ok(Admission { probe: true })
            }
        }
    }

    /// The upstream could not be reached (connect, DNS, TLS): the breaker opens (again).
    /// Returns the refusal the client gets.
    pub fn unreachable(&self, now: Instant, cause: &str) -> Refusal {
        let mut inner = self.lock();
        let cause: Arc<str> = cause.into();
        if inner.breaker == Breaker::Closed {
            tracing::warn!(
                cause = &*cause,
                until = %format!("a probe connects (every {}ms)", OPEN_FOR.as_millis()),
                "upstream unreachable: breaker open"
            );
        }
        inner.breaker = Breaker::Open {
            until: now + OPEN_FOR,
            cause: cause.clone(),
        };
        Refusal::Unreachable {
            cause,
            retry_after: OPEN_FOR,
        }
    }

    /// The upstream answered (any status): it is reachable, and no timeout streak stands.
    pub fn answered(&self) {
        if self.calm.load(Ordering::Acquire) {
            return;
        }
        let mut inner = self.lock();
        inner.timed_out.clear();
        if inner.breaker != Breaker::Closed {
            tracing::info!("upstream reachable again: breaker closed");
            inner.breaker = Breaker::Closed;
        }
    }

    /// `key` timed out before its first byte. When every one of the `usable` keys (at least
    /// two) has timed out in a row with no answer in between, it is the upstream's outage:
    /// the breaker opens and the refusal comes back; a lone key's timeout stays the key's.
    pub fn timed_out(&self, now: Instant, key: &Arc<str>, usable: usize) -> Option<Refusal> {
        let outage = {
            let mut inner = self.lock();
            if !inner.timed_out.contains(key) {
                inner.timed_out.push(key.clone());
            }
            let n = inner.timed_out.len();
            n >= 2 && n >= usable
        };
        outage.then(|| self.unreachable(now, "no key got an answer before the first_byte timeout"))
    }

    /// `key` answered 429 and may be used again after `reset`. When at least two keys, and
    /// more than half of the `usable` ones, did so within [`RATE_WINDOW`], the account is
    /// rate limited: the whole pool backs off until the earliest of their resets, which is
    /// returned (cap every key's own cooldown to it).
    pub fn rate_limited(
        &self,
        now: Instant,
        key: &Arc<str>,
        reset: Duration,
        usable: usize,
    ) -> Option<Instant> {
        let mut inner = self.lock();
        inner
            .limited
            .retain(|(k, at, _)| k != key && now.saturating_duration_since(*at) < RATE_WINDOW);
        inner.limited.push((key.clone(), now, now + reset));
        let n = inner.limited.len();
        if n < 2 || n * 2 <= usable {
            return None;
        }
        let until = inner.limited.iter().map(|(_, _, until)| *until).min()?;
        if inner.backoff_until.is_none_or(|u| u <= now) {
            tracing::warn!(
                keys = n,
                cause = "most keys answered 429 at once: an account-wide rate limit",
                until = %crate::keys::clock(until, now),
                "pool backing off"
            );
        }
        inner.backoff_until = Some(until);
        Some(until)
    }
}

impl UpstreamHealth {
    /// An operator made every key ready (`reset-failed-keys`): the account-wide backoff and
    /// the 429s counted towards it are forgotten too, or the keys would stay unused until it
    /// ran out. The upstream breaker is left alone: it follows reachability, not keys.
    pub fn forget_rate_limits(&self) {
        let mut inner = self.lock();
        inner.limited.clear();
        inner.backoff_until = None;
    }
}

/// The cause of a connect error, as an operator reads it: `connection refused`, `DNS lookup
/// failed`, `TLS handshake failed`, `connect timeout`, else the error's own words.
pub fn connect_cause(error_chain: &str) -> String {
    let lower = error_chain.to_ascii_lowercase();
    let known = [
        ("connection refused", "connection refused"),
        ("dns error", "DNS lookup failed"),
        ("failed to lookup", "DNS lookup failed"),
        ("name or service not known", "DNS lookup failed"),
        ("certificate", "TLS handshake failed"),
        ("tls", "TLS handshake failed"),
        ("handshake", "TLS handshake failed"),
        ("timed out", "connect timeout"),
        ("timeout", "connect timeout"),
        ("network is unreachable", "network unreachable"),
        ("no route to host", "no route to host"),
        ("connection reset", "connection reset"),
    ];
    known
        .iter()
        .find(|(needle, _)| lower.contains(needle))
        .map(|(_, cause)| (*cause).to_owned())
        .unwrap_or_else(|| error_chain.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> Arc<str> {
        name.into()
    }

    #[tokio::test(start_paused = true)]
    async fn the_breaker_opens_on_a_connect_failure_and_one_probe_closes_it() {
        let h = UpstreamHealth::default();
        assert_eq!(
            h.admit(Instant::now(), true),
            Ok(Admission { probe: false })
        );
        let refusal = h.unreachable(Instant::now(), "connection refused");
        assert!(
            matches!(refusal, Refusal::Unreachable { ref cause, .. } if &**cause == "connection refused")
        );
        assert!(matches!(
            h.admit(Instant::now(), true),
            Err(Refusal::Unreachable { retry_after, .. }) if retry_after == OPEN_FOR
        ));
        tokio::time::advance(OPEN_FOR).await;
        assert_eq!(h.admit(Instant::now(), true), Ok(Admission { probe: true }));
        assert!(
            h.admit(Instant::now(), true).is_err(),
            "one probe at a time"
        );
        // A failed probe opens it again; an answer closes it.
        h.unreachable(Instant::now(), "connection refused");
        tokio::time::advance(OPEN_FOR).await;
        assert!(h.admit(Instant::now(), false).unwrap().probe);
        h.answered();
        assert_eq!(
            h.admit(Instant::now(), true),
            Ok(Admission { probe: false })
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_that_never_reports_lets_another_probe() {
        let h = UpstreamHealth::default();
        h.unreachable(Instant::now(), "connection refused");
        tokio::time::advance(OPEN_FOR).await;
        assert!(h.admit(Instant::now(), true).unwrap().probe);
        tokio::time::advance(PROBE_STALE).await;
        assert!(h.admit(Instant::now(), true).unwrap().probe);
    }

    #[tokio::test(start_paused = true)]
    async fn timeouts_on_every_key_are_an_outage_and_one_key_is_not() {
        let h = UpstreamHealth::default();
        let now = Instant::now();
        assert_eq!(h.timed_out(now, &key("key-1"), 1), None, "a lone key");
        let h = UpstreamHealth::default();
        assert_eq!(h.timed_out(now, &key("key-1"), 3), None);
        assert_eq!(
            h.timed_out(now, &key("key-1"), 3),
            None,
            "the same key again"
        );
        h.answered();
        assert_eq!(
            h.timed_out(now, &key("key-2"), 3),
            None,
            "an answer cut the streak"
        );
        assert_eq!(h.timed_out(now, &key("key-3"), 3), None);
        assert!(h.timed_out(now, &key("key-1"), 3).is_some());
        assert!(h.admit(now, true).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn most_keys_limited_at_once_back_the_pool_off_for_the_shortest_reset() {
        let h = UpstreamHealth::default();
        let now = Instant::now();
        let secs = Duration::from_secs;
        assert_eq!(h.rate_limited(now, &key("key-1"), secs(60), 3), None);
        assert!(h.admit(now, true).is_ok(), "one key's 429 is its own");
        let until = h.rate_limited(now, &key("key-2"), secs(2), 3);
        assert_eq!(until, Some(now + secs(2)));
        assert_eq!(h.rate_limited(now, &key("key-3"), secs(60), 3), until);
        assert!(matches!(
            h.admit(now, true),
            Err(Refusal::AccountLimited { keys: 3, retry_after }) if retry_after == secs(2)
        ));
        assert!(
            h.admit(now, false).is_ok(),
            "a request on its round finishes it"
        );
        tokio::time::advance(secs(2)).await;
        assert!(h.admit(Instant::now(), true).is_ok());
        // Two of five keys are not most of them; 429s outside the window do not add up.
        let h = UpstreamHealth::default();
        h.rate_limited(now, &key("key-1"), secs(1), 5);
        assert_eq!(h.rate_limited(now, &key("key-2"), secs(1), 5), None);
        let h = UpstreamHealth::default();
        h.rate_limited(now, &key("key-1"), secs(1), 2);
        tokio::time::advance(RATE_WINDOW).await;
        assert_eq!(
            h.rate_limited(Instant::now(), &key("key-2"), secs(1), 2),
            None
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_forgotten_account_backoff_admits_at_once() {
        let h = UpstreamHealth::default();
        let now = Instant::now();
        let reset = Duration::from_secs(60);
        assert_eq!(h.rate_limited(now, &key("a"), reset, 2), None);
        assert!(h.rate_limited(now, &key("b"), reset, 2).is_some());
        assert!(h.admit(now, true).is_err());
        h.forget_rate_limits();
        assert!(h.admit(now, true).is_ok());
        assert_eq!(
            h.rate_limited(now, &key("a"), reset, 2),
            None,
            "the count starts over"
        );
    }

    #[test]
    fn connect_causes_are_named() {
        let refused =
            "client error (Connect): tcp connect error: Connection refused (os error 111)";
        assert_eq!(connect_cause(refused), "connection refused");
        assert_eq!(
            connect_cause("client error (Connect): dns error: failed to lookup address"),
            "DNS lookup failed"
        );
        assert_eq!(
            connect_cause("client error (Connect): invalid peer certificate: UnknownIssuer"),
            "TLS handshake failed"
        );
        assert_eq!(connect_cause("something odd"), "something odd");
    }
}

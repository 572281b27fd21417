//! The operator's side of the pool: the view of every key (ids, fingerprints, states and
//! counters, never a secret) for the admin API and metrics, the counts `/health` shows, and
//! admin disable, enable and reset (every key not ready made ready).

use std::ops::Index;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use tokio::time::Instant;

use super::state::{CoolCause, DisableCause, Health, Transition};
use super::{unix_ms, FailureClass, Key, KeyPool, LastError};

/// A key's state as the admin API and metrics name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyStatus {
    Ready,
    Cooling,
    /// The cooldown is over; one trial request decides between ready and cooling.
    HalfOpen,
    Disabled,
}

impl KeyStatus {
    /// Every status, in the order metrics list them.
    pub const ALL: [KeyStatus; 4] = [
        KeyStatus::Ready,
        KeyStatus::Cooling,
        KeyStatus::HalfOpen,
        KeyStatus::Disabled,
    ];

    /// The one spelling of each status (admin JSON, the metric's `state` label).
    pub fn name(self) -> &'static str {
        match self {
            KeyStatus::Ready => "ready",
            KeyStatus::Cooling => "cooling",
            KeyStatus::HalfOpen => "half_open",
            KeyStatus::Disabled => "disabled",
        }
    }
}

impl Serialize for KeyStatus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// One key as the admin API and metrics show it.
#[derive(Clone, Debug, Serialize)]
pub struct KeyView {
    pub id: String,
    pub fingerprint: String,
    pub state: KeyStatus,
    /// Why it is cooling or disabled.
    pub reason: Option<&'static str>,
    pub until_unix_ms: Option<u64>,
    pub retry_in_ms: Option<u64>,
    pub weight: u32,
    pub max_concurrent: Option<u32>,
    pub in_flight: u32,
    pub requests: u64,
    pub successes: u64,
    pub failures: Failures,
    pub last_error: Option<LastError>,
}

/// The pool in three numbers, as `/health` shows them under `key_stats`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct KeyStats {
    pub total: usize,
    /// Keys that could take a request now.
    pub available: usize,
    /// Keys cooling (rate limited, out of quota, breaker open) or disabled.
    pub failed: usize,
}

/// Failures by class; serialized as `{"rate_limited": n, …}` in [`FailureClass::ALL`] order.
#[derive(Clone, Debug)]
pub struct Failures([u64; FailureClass::ALL.len()]);

impl Index<FailureClass> for Failures {
    type Output = u64;

    fn index(&self, class: FailureClass) -> &u64 {
        &self.0[class.index()]
    }
}

impl Serialize for Failures {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for class in FailureClass::ALL {
            map.serialize_entry(class.name(), &self[class])?;
        }
        map.end()
    }
}

impl KeyPool {
    /// Admin: disables a key by id until an operator enables it. False if no such key.
    pub fn disable(&self, id: &str) -> bool {
        self.find(id)
            .map(|key| self.apply(&key, Transition::AdminDisable))
            .is_some()
    }

    /// Admin: makes a key ready now, clearing cooldowns and streaks. False if no such key.
    pub fn enable(&self, id: &str) -> bool {
        let found = self
            .find(id)
            .map(|key| self.apply(&key, Transition::AdminEnable))
            .is_some();
        self.changed.notify_waiters();
        found
    }

    /// Admin: makes every key that is not ready (cooling, half-open, or disabled for any
    /// cause) ready now, as [`KeyPool::enable`] does one. Returns the ids it changed, in load
    /// order; a ready key is left alone (its streaks and counters too).
    pub fn reset_failed(&self) -> Vec<String> {
        let now = Instant::now();
        let reset: Vec<String> = self
            .keys()
            .iter()
            .filter(|k| !matches!(k.slot.health(now), Health::Ready))
            .map(|k| {
                self.apply(k, Transition::AdminEnable);
                k.id.to_string()
            })
            .collect();
        self.changed.notify_waiters();
        reset
    }

    /// How many keys there are, how many could take a request now, how many are out (cooling
    /// or disabled): the original service's `/health` figures. A key busy at its concurrency
    /// limit counts as available (it frees up by itself); a paced or half-open key is neither.
    pub fn stats(&self) -> KeyStats {
        let now = Instant::now();
        let keys = self.keys();
        let mut stats = KeyStats {
            total: keys.len(),
            available: 0,
            failed: 0,
        };
        for k in keys.iter() {
            match k.slot.health(now) {
                Health::Cooling { .. } | Health::Disabled { .. } => stats.failed += 1,
                Health::Ready | Health::HalfOpen { .. } => {
                    if k.slot.check(now, 0, None).is_ok() {
                        stats.available += 1;
                    }
                }
            }
        }
        stats
    }

    fn find(&self, id: &str) -> Option<Arc<Key>> {
        self.keys().iter().find(|k| &*k.id == id).cloned()
    }

    /// The admin view of every key: ids and fingerprints, never secrets.
    pub fn view(&self) -> Vec<KeyView> {
        let now = Instant::now();
        let wall = SystemTime::now();
        self.keys().iter().map(|k| view(k, now, wall)).collect()
    }
}

fn view(k: &Key, now: Instant, wall: SystemTime) -> KeyView {
    let (state, until, reason) = match k.slot.health(now) {
        Health::Ready => (KeyStatus::Ready, None, None),
        Health::Cooling { until, cause } => (
            KeyStatus::Cooling,
            Some(until),
            Some(match cause {
                CoolCause::RateLimited => "rate_limited",
                CoolCause::Quota => "quota",
                CoolCause::Breaker => "breaker",
            }),
        ),
        Health::HalfOpen { .. } => (KeyStatus::HalfOpen, None, Some("trial")),
        Health::Disabled { cause } => (
            KeyStatus::Disabled,
            None,
            Some(match cause {
                DisableCause::InvalidCredential => "invalid_credential",
                DisableCause::Admin => "admin",
            }),
        ),
    };
    let retry_in = until.map(|u| u.saturating_duration_since(now));
    let c = &k.counters;
    KeyView {
        id: k.id.to_string(),
        fingerprint: k.fingerprint.clone(),
        state,
        reason,
        until_unix_ms: retry_in.map(|d| unix_ms(wall + d)),
        retry_in_ms: retry_in.map(|d| d.as_millis() as u64),
        weight: k.weight.load(Ordering::Relaxed),
        max_concurrent: k.max_concurrent(),
        in_flight: k.in_flight(),
        requests: c.requests.load(Ordering::Relaxed),
        successes: c.successes.load(Ordering::Relaxed),
        failures: Failures(c.failures.each_ref().map(|n| n.load(Ordering::Relaxed))),
        last_error: k
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Strategy;
    use crate::keys::{test_pool as pool, NoKey, Outcome};

    #[tokio::test(start_paused = true)]
    async fn all_disabled_is_unavailable() {
        let p = pool(&["a", "b"], Strategy::RoundRobin);
        for _ in 0..2 {
            let mut lease = p.acquire(&[]).unwrap();
            lease.report(Outcome::InvalidCredential, Some(401), "bad key a");
        }
        assert_eq!(
            p.acquire(&[]).err(),
            Some(NoKey::Unavailable { retry_after: None })
        );
        let view = p.view();
        assert_eq!(view[0].state, KeyStatus::Disabled);
        assert_eq!(view[0].failures[FailureClass::Credential], 1);
        assert!(
            !format!("{view:?}").contains("bad key a "),
            "message masked: {view:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn admin_disable_enable() {
        let p = pool(&["a"], Strategy::RoundRobin);
        assert!(p.disable("key-1"));
        assert!(!p.disable("key-9"));
        assert!(p.acquire(&[]).is_err());
        assert_eq!(p.view()[0].reason, Some("admin"));
        assert!(p.enable("key-1"));
        assert!(!p.enable("key-9"));
        assert!(p.acquire(&[]).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn reset_failed_readies_cooling_and_disabled_keys_only() {
        let p = pool(&["a", "b", "c"], Strategy::RoundRobin);
        let mut lease = p.acquire(&[]).unwrap();
        assert_eq!(&**lease.id(), "key-1");
        lease.report(Outcome::RateLimited { reset: None }, Some(429), "slow down");
        drop(lease);
        assert!(p.disable("key-2"));
        assert_eq!(
            p.stats(),
            KeyStats {
                total: 3,
                available: 1,
                failed: 2
            }
        );
        assert_eq!(p.reset_failed(), ["key-1", "key-2"]);
        assert!(p.view().iter().all(|k| k.state == KeyStatus::Ready));
        assert_eq!(p.stats().available, 3);
        assert!(p.reset_failed().is_empty(), "nothing left to reset");
    }

    #[test]
    fn names_serialize_as_the_admin_api_spells_them() {
        let names = serde_json::to_string(&KeyStatus::ALL).unwrap();
        assert_eq!(names, r#"["ready","cooling","half_open","disabled"]"#);
        let failures = serde_json::to_string(&Failures([1, 2, 3, 4, 5, 6])).unwrap();
        assert_eq!(
            failures,
            r#"{"rate_limited":1,"quota":2,"credential":3,"transient":4,"caller":5,"stream_broken":6}"#
        );
    }
}

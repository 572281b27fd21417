//! Choice: which usable key serves the next request. Round-robin by default; weighted and
//! least-in-flight as options. Reads each key's local snapshot synchronously (O(keys), no
//! await); when no key can serve, says why and when one returns ([`NoKey`]), and queues the
//! request if the pool is configured to.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::lease::KeyLease;
use super::state::{Blocked, CoolCause, DisableCause, Health, Pace};
use super::store::{Refused, Taken};
use super::{FailureClass, Key, KeyPool};
use crate::config::Strategy;

/// Why no key was handed out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoKey {
    /// Every key that is not disabled is cooling after 429s or at its own limits.
    AllRateLimited { retry_after: Duration },
    /// No key can serve; `retry_after` when some key's return time is known.
    Unavailable { retry_after: Option<Duration> },
}

impl KeyPool {
    /// Hands out a usable key, preferring keys not in `tried`; falls back to a tried key only
    /// when no other can serve (a lone key may retry itself after a transient failure).
    ///
    /// Local choice only: shared limits are taken by [`KeyPool::acquire_wait`].
    pub fn acquire(self: &Arc<Self>, tried: &[Arc<str>]) -> Result<KeyLease, NoKey> {
        self.acquire_excluding(tried, &[])
    }

    /// [`KeyPool::acquire`] never handing out a key in `refused` (refused by the shared store
    /// for this request).
    fn acquire_excluding(
        self: &Arc<Self>,
        tried: &[Arc<str>],
        refused: &[Arc<str>],
    ) -> Result<KeyLease, NoKey> {
        let list = self.list();
        let keys = &list.keys;
        let now = Instant::now();
        let n = keys.len();
        if n == 0 {
            return Err(NoKey::Unavailable { retry_after: None });
        }
        let order = self.order(keys, now);
        for allow_tried in [false, true] {
            for &i in &order {
                let key = &keys[i];
                let was_tried = tried.iter().any(|id| *id == key.id);
                if was_tried != allow_tried || refused.iter().any(|id| *id == key.id) {
                    continue;
                }
                if let Ok(ticket) = key.try_take(now) {
                    if self.cfg.strategy == Strategy::RoundRobin {
                        // Continue after the key chosen, not after the one first looked at:
                        // otherwise the key behind a run of cooling keys takes all their turns.
                        self.cursor.store(i + 1, Ordering::Relaxed);
                    }
                    key.counters.requests.fetch_add(1, Ordering::Relaxed);
                    return Ok(KeyLease::new(
                        key.clone(),
                        list.clone(),
                        self.clone(),
                        ticket,
                    ));
                }
            }
            if tried.is_empty() {
                break;
            }
        }
        Err(self.why_none(keys, now))
    }

    /// Waits up to `until` for a key, when the pool is configured to queue. With a shared
    /// store, a key chosen locally that has shared limits (or is on its half-open trial) is
    /// then taken from the store, one round trip; a refusal moves on to the next key.
    pub async fn acquire_wait(
        self: &Arc<Self>,
        tried: &[Arc<str>],
        until: Instant,
    ) -> Result<KeyLease, NoKey> {
        let mut refused: Vec<Arc<str>> = Vec::new();
        let mut refused_for: Option<Duration> = None;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let err = match self.acquire_excluding(tried, &refused) {
                Ok(lease) => match self.take_shared(lease).await {
                    Ok(lease) => return Ok(lease),
                    Err((id, wait)) => {
                        refused.push(id);
                        refused_for = Some(refused_for.map_or(wait, |w| w.min(wait)));
                        continue;
                    }
                },
                // Keys the shared store refused are at their limits across replicas.
                Err(e) => match (refused_for, e) {
                    (None, e) => e,
                    (Some(wait), NoKey::AllRateLimited { retry_after }) => NoKey::AllRateLimited {
                        retry_after: retry_after.min(wait),
                    },
                    (Some(wait), NoKey::Unavailable { .. }) => {
                        NoKey::AllRateLimited { retry_after: wait }
                    }
                },
            };
            let now = Instant::now();
            if !self.queueing || now >= until {
                return Err(err);
            }
            let hint = match err {
                NoKey::AllRateLimited { retry_after } => Some(retry_after),
                NoKey::Unavailable { retry_after } => retry_after,
            };
            let wake = hint.map_or(until, |d| (now + d).min(until));
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
            refused.clear();
            refused_for = None;
        }
    }

    /// The shared step for a lease chosen locally; on refusal the lease is dropped (freeing
    /// the local place and trial) and the key's id comes back with how long to keep away.
    async fn take_shared(&self, mut lease: KeyLease) -> Result<KeyLease, (Arc<str>, Duration)> {
        let key = lease.key().clone();
        let taken = Taken {
            trial: lease.ticket().trial,
            max_concurrent: key.max_concurrent(),
            in_flight: key.in_flight(),
        };
        let Some(step) = self.store.shared_take(&key.slot, taken) else {
            return Ok(lease);
        };
        match step.await {
            Ok(hold) => {
                lease.hold(hold);
                Ok(lease)
            }
            Err(Refused { retry_after }) => {
                let id = key.id.clone();
                drop(lease);
                Err((id, retry_after))
            }
        }
    }

    /// The order in which keys are tried, by strategy.
    fn order(&self, keys: &[Arc<Key>], now: Instant) -> Vec<usize> {
        let n = keys.len();
        let tick = self.cursor.fetch_add(1, Ordering::Relaxed);
        match self.cfg.strategy {
            Strategy::RoundRobin => (0..n).map(|i| (tick + i) % n).collect(),
            Strategy::Weighted => {
                // Spread by weight over the keys usable now, so that a cooling key's share is
                // split by weight too instead of falling to its neighbour.
                let usable: Vec<bool> = keys.iter().map(|k| k.check(now).is_ok()).collect();
                let any = usable.iter().any(|u| *u);
                let weight = |i: usize| match usable[i] || !any {
                    true => u64::from(keys[i].weight.load(Ordering::Relaxed)),
                    false => 0,
                };
                let total: u64 = (0..n).map(weight).sum();
                let mut point = (tick as u64) % total.max(1);
                let mut start = 0;
                for i in 0..n {
                    let w = weight(i);
                    if point < w {
                        start = i;
                        break;
                    }
                    point -= w;
                }
                (0..n).map(|i| (start + i) % n).collect()
            }
            Strategy::LeastInFlight => {
                let mut order: Vec<usize> = (0..n).map(|i| (tick + i) % n).collect();
                order.sort_by_key(|&i| keys[i].in_flight());
                order
            }
        }
    }

    fn why_none(&self, keys: &[Arc<Key>], now: Instant) -> NoKey {
        let mut earliest_rate: Option<Instant> = None;
        let mut earliest_any: Option<Instant> = None;
        let mut only_rate_limits = true;
        let mut any_rate_limit = false;
        for key in keys {
            let (until, rate) = match key.check(now) {
                Ok(()) => (Some(now), true), // freed since: say "retry now"
                Err(Blocked::Cooling { until, cause }) => {
                    (Some(until), cause == CoolCause::RateLimited)
                }
                Err(Blocked::AtLimit { until }) => {
                    (Some(until.unwrap_or(now + Duration::from_secs(1))), true)
                }
                Err(Blocked::Paced { until, .. }) => (Some(until), true),
                Err(Blocked::TrialBusy) => (Some(now + Duration::from_secs(1)), false),
                Err(Blocked::Disabled) => continue,
            };
            any_rate_limit |= rate;
            only_rate_limits &= rate;
            if let Some(until) = until {
                if rate {
                    earliest_rate = Some(earliest_rate.map_or(until, |e| e.min(until)));
                }
                earliest_any = Some(earliest_any.map_or(until, |e| e.min(until)));
            }
        }
        match (any_rate_limit && only_rate_limits, earliest_rate) {
            (true, Some(at)) => NoKey::AllRateLimited {
                retry_after: at.saturating_duration_since(now),
            },
            _ => NoKey::Unavailable {
                retry_after: earliest_any.map(|at| at.saturating_duration_since(now)),
            },
        }
    }

    /// Why no key can serve, by class, with counts and times, for the operator and the
    /// client: `2 disabled (upstream rejected them: 401 invalid api key; probing every 10m),
    /// 1 cooling until 12:03:05 UTC (rate limited)`. Last errors are masked already; no key
    /// material is in it. Empty when the pool has no keys at all.
    pub fn no_key_summary(&self) -> String {
        let now = Instant::now();
        let keys = self.keys();
        if keys.is_empty() {
            return "the pool has no keys".to_owned();
        }
        // (what, count, earliest until), in the order first seen within each class.
        let mut classes: Vec<(String, usize, Option<Instant>)> = Vec::new();
        let mut add = |what: String, until: Option<Instant>| match classes
            .iter_mut()
            .find(|(w, _, _)| *w == what)
        {
            Some((_, n, at)) => {
                *n += 1;
                *at = match (*at, until) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
            None => classes.push((what, 1, until)),
        };
        for key in keys.iter() {
            match key.check(now) {
                Ok(()) => add("ready now".into(), None),
                Err(Blocked::Disabled) => match key.slot.health(now) {
                    Health::Disabled {
                        cause: DisableCause::Admin,
                    } => add("disabled by an operator".into(), None),
                    _ => {
                        let last = key.last_error.lock().unwrap_or_else(|p| p.into_inner());
                        let said = last
                            .as_ref()
                            .filter(|e| e.class == FailureClass::Credential)
                            .map(|e| {
                                let status = e.status.map(|s| format!("{s} ")).unwrap_or_default();
                                let message: String = e.message.chars().take(60).collect();
                                format!(": {status}{message}").trim_end().to_owned()
                            })
                            .unwrap_or_default();
                        add(
                            format!(
                                "disabled (upstream rejected {{them}}{said}; probing every {})",
                                super::human(self.cfg.probe_interval)
                            ),
                            None,
                        );
                    }
                },
                Err(Blocked::Cooling { until, cause }) => {
                    let why = match cause {
                        CoolCause::RateLimited => "rate limited",
                        CoolCause::Quota => "quota exhausted",
                        CoolCause::Breaker => "breaker open after transient failures",
                    };
                    add(format!("cooling ({why})"), Some(until));
                }
                Err(Blocked::TrialBusy) => add("on a half-open trial".into(), None),
                Err(Blocked::AtLimit { until }) => add("at max_concurrent".into(), until),
                Err(Blocked::Paced { until, by }) => {
                    let by = match by {
                        Pace::Rpm => "rpm=",
                        Pace::Tpm => "tpm=",
                        Pace::Upstream => "the upstream's x-ratelimit-remaining is 0",
                    };
                    add(format!("paced ({by})"), Some(until));
                }
            }
        }
        classes
            .into_iter()
            .map(|(what, n, until)| {
                let what = what.replace("{them}", if n == 1 { "it" } else { "them" });
                match (until, what.split_once(" (")) {
                    (Some(at), Some((verb, why))) => {
                        format!("{n} {verb} until {} ({why}", super::clock(at, now))
                    }
                    _ => format!("{n} {what}"),
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// True when at least one key could take a request now (`/readyz`, gRPC health).
    pub fn can_serve_now(&self) -> bool {
        let now = Instant::now();
        self.keys().iter().any(|k| {
            // A key busy at its concurrency limit still counts: it frees up by itself.
            k.slot.check(now, 0, None).is_ok()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{KeySpec, Settings};
    use crate::keys::{test_pool as pool, Outcome};

    #[tokio::test(start_paused = true)]
    async fn round_robin_in_turn_and_retries_prefer_untried() {
        let p = pool(&["a", "b", "c"], Strategy::RoundRobin);
        let ids: Vec<String> = (0..6)
            .map(|_| p.acquire(&[]).unwrap().id().to_string())
            .collect();
        assert_eq!(ids, ["key-1", "key-2", "key-3", "key-1", "key-2", "key-3"]);
        let tried: Vec<Arc<str>> = vec!["key-1".into(), "key-2".into()];
        for _ in 0..3 {
            assert_eq!(&**p.acquire(&tried).unwrap().id(), "key-3");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn cooling_keys_turns_are_shared_fairly() {
        for strategy in [Strategy::RoundRobin, Strategy::Weighted] {
            let p = pool(&["a", "b", "c", "d"], strategy);
            for _ in 0..2 {
                let mut lease = p.acquire(&[]).unwrap();
                let reset = Some(Duration::from_secs(600));
                lease.report(Outcome::RateLimited { reset }, Some(429), "");
            }
            let mut counts = std::collections::HashMap::new();
            for _ in 0..400 {
                *counts
                    .entry(p.acquire(&[]).unwrap().id().to_string())
                    .or_insert(0) += 1;
            }
            assert_eq!(counts.len(), 2, "{strategy:?}: {counts:?}");
            assert!(
                counts.values().all(|c| (190..=210).contains(c)),
                "{strategy:?}: {counts:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn weighted_splits_exactly() {
        let p = pool(&["a weight=1", "b weight=3"], Strategy::Weighted);
        let mut counts = [0; 2];
        for _ in 0..400 {
            let lease = p.acquire(&[]).unwrap();
            counts[usize::from(&**lease.id() == "key-2")] += 1;
        }
        assert_eq!(counts, [100, 300]);
    }

    #[tokio::test(start_paused = true)]
    async fn least_in_flight_and_concurrency_limit() {
        let p = pool(&["a max_concurrent=1", "b"], Strategy::LeastInFlight);
        let first = p.acquire(&[]).unwrap();
        let second = p.acquire(&[]).unwrap();
        assert_ne!(first.id(), second.id());
        let held_a = if &**first.id() == "key-1" {
            first
        } else {
            second
        };
        for _ in 0..5 {
            assert_eq!(
                &**p.acquire(&[]).unwrap().id(),
                "key-2",
                "key-1 is at its limit"
            );
        }
        drop(held_a);
    }

    #[tokio::test(start_paused = true)]
    async fn all_rate_limited_says_when() {
        let p = pool(&["a", "b"], Strategy::RoundRobin);
        for secs in [5, 2] {
            let mut lease = p.acquire(&[]).unwrap();
            lease.report(
                Outcome::RateLimited {
                    reset: Some(Duration::from_secs(secs)),
                },
                Some(429),
                "slow down",
            );
        }
        assert_eq!(
            p.acquire(&[]).err(),
            Some(NoKey::AllRateLimited {
                retry_after: Duration::from_secs(2)
            })
        );
        assert!(!p.can_serve_now());
        let why = p.no_key_summary();
        assert!(
            why.starts_with("2 cooling until ") && why.ends_with(" UTC (rate limited)"),
            "{why}"
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(&**p.acquire(&[]).unwrap().id(), "key-2");
    }

    #[tokio::test(start_paused = true)]
    async fn queued_request_gets_key_when_it_returns() {
        let mut cfg = Settings::default().scheduler;
        cfg.queue_timeout = Duration::from_secs(5);
        let p = KeyPool::new(&[KeySpec::new("a")], cfg);
        let mut lease = p.acquire(&[]).unwrap();
        lease.report(
            Outcome::RateLimited {
                reset: Some(Duration::from_secs(2)),
            },
            Some(429),
            "",
        );
        drop(lease);
        let start = Instant::now();
        let lease = p
            .acquire_wait(&[], start + Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(Instant::now() - start, Duration::from_secs(2));
        drop(lease);
        p.disable("key-1");
        assert!(p
            .acquire_wait(&[], Instant::now() + Duration::from_secs(1))
            .await
            .is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_queued_request_waits_for_a_paced_key() {
        let mut cfg = Settings::default().scheduler;
        cfg.queue_timeout = Duration::from_secs(5);
        let p = KeyPool::new(&[KeySpec::new("a")], cfg);
        let mut headers = http::HeaderMap::new();
        headers.insert("x-ratelimit-remaining-requests", "0".parse().unwrap());
        headers.insert("x-ratelimit-reset-requests", "2s".parse().unwrap());
        let mut lease = p.acquire(&[]).unwrap();
        lease.pace(&headers);
        lease.report(Outcome::Success, Some(200), "");
        drop(lease);
        assert!(matches!(
            p.acquire(&[]),
            Err(NoKey::AllRateLimited { retry_after }) if retry_after == Duration::from_secs(2)
        ));
        assert!(p.no_key_summary().contains("1 paced until "));
        let start = Instant::now();
        let lease = p.acquire_wait(&[], start + Duration::from_secs(5)).await;
        assert!(lease.is_ok());
        assert_eq!(Instant::now() - start, Duration::from_secs(2));
    }
}

//! The key scheduler: the pool of upstream keys, each key's state machine ([`state`]), the one
//! classification of upstream answers ([`classify`]), the choice among usable keys and the
//! lease that counts a request in flight on its key.
//!
//! Invariants: no lock is held across an await (each key's state sits behind its own short
//! `std::sync::Mutex`); choice is O(keys); a key's secret leaves this module only through
//! [`KeyLease::secret`] for the wire and through [`KeyPool::mask`] never at all.

mod classify;
mod mask;
mod state;

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::Notify;
use tokio::time::Instant;

pub use classify::{classify, parse_go_duration, reset_after, Outcome};
pub use state::{backoff, Blocked, CoolCause, DisableCause, Health, KeyState, Ticket};

use crate::config::{KeySpec, SchedulerSettings, Secret, Strategy};

/// Counters a key keeps for the admin API and metrics.
#[derive(Default)]
pub struct Counters {
    pub requests: AtomicU64,
    pub successes: AtomicU64,
    pub rate_limited: AtomicU64,
    pub quota: AtomicU64,
    pub credential: AtomicU64,
    pub transient: AtomicU64,
    pub caller: AtomicU64,
    pub stream_broken: AtomicU64,
}

/// The last thing that went wrong on a key, with key material already masked.
#[derive(Clone, Debug, Serialize)]
pub struct LastError {
    pub class: &'static str,
    pub status: Option<u16>,
    pub message: String,
    pub at_unix_ms: u64,
}

/// One upstream key in the pool.
pub struct Key {
    /// `key-N`, given in load order and kept across reloads: the only name logs and admin use.
    pub id: Arc<str>,
    pub fingerprint: String,
    secret: Secret,
    weight: AtomicU32,
    /// 0 means no limit.
    max_concurrent: AtomicU32,
    in_flight: AtomicU32,
    state: Mutex<KeyState>,
    last_error: Mutex<Option<LastError>>,
    pub counters: Counters,
}

impl Key {
    fn new(id: usize, spec: &KeySpec, now: Instant) -> Key {
        Key {
            id: format!("key-{id}").into(),
            fingerprint: spec.secret.fingerprint(),
            secret: spec.secret.clone(),
            weight: AtomicU32::new(spec.weight),
            max_concurrent: AtomicU32::new(spec.max_concurrent.unwrap_or(0)),
            in_flight: AtomicU32::new(0),
            state: Mutex::new(KeyState::new(spec.rpm, now)),
            last_error: Mutex::new(None),
            counters: Counters::default(),
        }
    }

    fn max_concurrent(&self) -> Option<u32> {
        match self.max_concurrent.load(Ordering::Relaxed) {
            0 => None,
            n => Some(n),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, KeyState> {
        // A panic while holding this lock cannot leave the state half-written (every update is
        // a plain assignment), so a poisoned lock is still safe to use.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn try_take(&self, now: Instant) -> Result<Ticket, Blocked> {
        let mut state = self.lock();
        let in_flight = self.in_flight.load(Ordering::Acquire);
        let ticket = state.take(now, in_flight, self.max_concurrent())?;
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Ok(ticket)
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The key's secret, for the probe's upstream call.
    pub fn secret(&self) -> &Secret {
        &self.secret
    }

    pub fn health(&self, now: Instant) -> Health {
        let mut state = self.lock();
        state.tick(now);
        state.health
    }
}

/// How many removed keys a pool remembers.
const MAX_RETIRED: usize = 1024;

/// Why no key was handed out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoKey {
    /// Every key that is not disabled is cooling after 429s or at its own limits.
    AllRateLimited { retry_after: Duration },
    /// No key can serve; `retry_after` when some key's return time is known.
    Unavailable { retry_after: Option<Duration> },
}

/// One generation of the key list, with the masking scan built for exactly these keys (so a
/// reload cannot leave the two out of step).
struct KeyList {
    keys: Arc<[Arc<Key>]>,
    finder: mask::Finder,
    /// Whole keys only, for content (see [`mask::KeyFinder`]).
    whole: mask::KeyFinder,
}

impl KeyList {
    fn new(keys: Arc<[Arc<Key>]>) -> KeyList {
        let finder = mask::Finder::new(keys.iter().map(|k| k.secret.expose()));
        let whole = mask::KeyFinder::new(keys.iter().map(|k| k.secret.expose()));
        KeyList {
            keys,
            finder,
            whole,
        }
    }

    fn secrets(&self) -> impl Iterator<Item = &str> + Clone {
        self.keys.iter().map(|k| k.secret.expose())
    }
}

/// The pool. Cheap to share (`Arc`); the key list is swapped whole on reload.
pub struct KeyPool {
    keys: RwLock<Arc<KeyList>>,
    cursor: AtomicUsize,
    next_id: AtomicUsize,
    cfg: SchedulerSettings,
    /// Keys removed by a reload, kept (bounded) so that a key dropped by a half-written keys
    /// file and added back keeps its id and state: a revoked key must not return as ready.
    retired: Mutex<Vec<Arc<Key>>>,
    /// Wakes requests queued for a key (only used when `queue_timeout` > 0).
    changed: Notify,
    queueing: bool,
}

/// Use of one key by one request. Dropping it ends the request's claim on the key; report the
/// upstream's verdict first with [`KeyLease::report`].
pub struct KeyLease {
    key: Arc<Key>,
    /// The list the key was chosen from: its finder knows this key even after a reload.
    list: Arc<KeyList>,
    pool: Arc<KeyPool>,
    ticket: Ticket,
    reported: bool,
}

impl KeyLease {
    pub fn id(&self) -> &Arc<str> {
        &self.key.id
    }

    /// The secret, for the upstream request's Authorization header and nothing else.
    pub fn secret(&self) -> &Secret {
        &self.key.secret
    }

    /// Masks key material in upstream text: every pooled key, and this lease's own key even if
    /// a reload has removed it from the pool meanwhile.
    pub fn mask(&self, text: &str) -> String {
        if self.clean(text.as_bytes()) {
            return text.to_owned();
        }
        let now = self.pool.list();
        let own = std::iter::once(self.key.secret.expose());
        mask::mask(text, now.secrets().chain(own))
    }

    /// [`KeyLease::mask`] for upstream bytes bound for a client: the same `Bytes`, uncopied,
    /// when they hold no key material (one scan); JSON stays JSON when masked.
    pub fn mask_bytes(&self, bytes: &Bytes) -> Bytes {
        if self.clean(bytes) {
            return bytes.clone();
        }
        let now = self.pool.list();
        let own = std::iter::once(self.key.secret.expose());
        mask::mask_bytes(bytes, &mask::Finder::always(), now.secrets().chain(own))
    }

    /// Masking for a 2xx answer or chunk: whole keys out of a JSON object (content keeps its
    /// words), the full masking of [`KeyLease::mask_bytes`] for anything else.
    pub fn mask_content(&self, bytes: &Bytes) -> Bytes {
        if !mask::looks_like_object(bytes) {
            return self.mask_bytes(bytes);
        }
        let now = self.pool.list();
        let first = self.list.whole.replace(bytes);
        let out = first.as_ref().unwrap_or(bytes);
        if Arc::ptr_eq(&now, &self.list) {
            return out.clone();
        }
        now.whole.replace(out).unwrap_or_else(|| out.clone())
    }

    /// Nothing to mask for the pool's keys nor this lease's own (the list it came from, when a
    /// reload has replaced it since).
    fn clean(&self, bytes: &[u8]) -> bool {
        let now = self.pool.list();
        !now.finder.may_contain(bytes)
            && (Arc::ptr_eq(&now, &self.list) || !self.list.finder.may_contain(bytes))
    }

    /// Records the upstream's verdict on this key. `status` and `message` describe a failure
    /// for the admin API; the message is masked here.
    pub fn report(&mut self, outcome: Outcome, status: Option<u16>, message: &str) {
        if self.reported {
            return;
        }
        self.reported = true;
        let c = &self.key.counters;
        let counter = match outcome {
            Outcome::Success => &c.successes,
            Outcome::CallerFault => &c.caller,
            Outcome::RateLimited { .. } => &c.rate_limited,
            Outcome::QuotaExhausted => &c.quota,
            Outcome::InvalidCredential => &c.credential,
            Outcome::Transient => &c.transient,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        self.key
            .lock()
            .record(now, outcome, self.ticket, &self.pool.cfg, rand::random());
        if outcome != Outcome::Success {
            let error = LastError {
                class: outcome.class(),
                status,
                message: self.mask(message),
                at_unix_ms: unix_ms(SystemTime::now()),
            };
            *self
                .key
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(error);
        }
    }

    /// A stream that broke after its first byte: counted, but the key's state is not changed
    /// (the verdict on the key was already given when the stream started).
    pub fn stream_broken(&self, message: &str) {
        self.key
            .counters
            .stream_broken
            .fetch_add(1, Ordering::Relaxed);
        *self
            .key
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(LastError {
            class: "stream_broken",
            status: None,
            message: self.mask(message),
            at_unix_ms: unix_ms(SystemTime::now()),
        });
    }
}

impl Drop for KeyLease {
    fn drop(&mut self) {
        if self.ticket.trial && !self.reported {
            self.key.lock().release_trial();
        }
        self.key.in_flight.fetch_sub(1, Ordering::AcqRel);
        if self.pool.queueing {
            self.pool.changed.notify_waiters();
        }
    }
}

/// What a reload did.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct ReloadSummary {
    pub kept: usize,
    pub added: usize,
    pub removed: usize,
    pub total: usize,
}

impl KeyPool {
    pub fn new(specs: &[KeySpec], cfg: SchedulerSettings) -> Arc<KeyPool> {
        let pool = KeyPool {
            keys: RwLock::new(Arc::new(KeyList::new(Arc::from(Vec::new())))),
            cursor: AtomicUsize::new(0),
            next_id: AtomicUsize::new(1),
            queueing: !cfg.queue_timeout.is_zero(),
            retired: Mutex::new(Vec::new()),
            cfg,
            changed: Notify::new(),
        };
        let pool = Arc::new(pool);
        let _ = pool.replace_keys(specs, true);
        pool
    }

    pub fn settings(&self) -> &SchedulerSettings {
        &self.cfg
    }

    /// The current keys, in load order.
    pub fn keys(&self) -> Arc<[Arc<Key>]> {
        self.list().keys.clone()
    }

    fn list(&self) -> Arc<KeyList> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the key list: keys that stay keep their id, state and counters; removed keys
    /// take no new requests (requests already holding them finish); new keys start ready.
    /// Refuses a list with no keys, keeping the old pool.
    pub fn reload(&self, specs: &[KeySpec]) -> Result<ReloadSummary, String> {
        self.replace_keys(specs, false)
    }

    fn replace_keys(&self, specs: &[KeySpec], initial: bool) -> Result<ReloadSummary, String> {
        if specs.is_empty() && !initial {
            return Err("the new key list is empty; keeping the current keys".into());
        }
        let now = Instant::now();
        let mut guard = self.keys.write().unwrap_or_else(|p| p.into_inner());
        let old = guard.keys.clone();
        let mut next: Vec<Arc<Key>> = Vec::with_capacity(specs.len());
        let mut kept = 0;
        for spec in specs {
            if next.iter().any(|k| k.secret == spec.secret) {
                continue; // the same key listed twice is one key
            }
            let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
            let back = retired
                .iter()
                .position(|k| k.secret == spec.secret)
                .map(|i| retired.remove(i));
            drop(retired);
            match old
                .iter()
                .find(|k| k.secret == spec.secret)
                .or(back.as_ref())
            {
                Some(key) => {
                    key.weight.store(spec.weight, Ordering::Relaxed);
                    key.max_concurrent
                        .store(spec.max_concurrent.unwrap_or(0), Ordering::Relaxed);
                    key.lock().set_rpm(spec.rpm, now);
                    next.push(key.clone());
                    kept += 1;
                }
                None => {
                    let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                    next.push(Arc::new(Key::new(id, spec, now)));
                }
            }
        }
        let removed: Vec<Arc<Key>> = old
            .iter()
            .filter(|k| !next.iter().any(|n| Arc::ptr_eq(n, k)))
            .cloned()
            .collect();
        let summary = ReloadSummary {
            kept,
            added: next.len() - kept,
            removed: removed.len(),
            total: next.len(),
        };
        let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        retired.extend(removed);
        let excess = retired.len().saturating_sub(MAX_RETIRED);
        retired.drain(..excess);
        drop(retired);
        *guard = Arc::new(KeyList::new(Arc::from(next)));
        drop(guard);
        self.changed.notify_waiters();
        Ok(summary)
    }

    /// Hands out a usable key, preferring keys not in `tried`; falls back to a tried key only
    /// when no other can serve (a lone key may retry itself after a transient failure).
    pub fn acquire(self: &Arc<Self>, tried: &[Arc<str>]) -> Result<KeyLease, NoKey> {
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
                if was_tried != allow_tried {
                    continue;
                }
                if let Ok(ticket) = key.try_take(now) {
                    if self.cfg.strategy == Strategy::RoundRobin {
                        // Continue after the key chosen, not after the one first looked at:
                        // otherwise the key behind a run of cooling keys takes all their turns.
                        self.cursor.store(i + 1, Ordering::Relaxed);
                    }
                    key.counters.requests.fetch_add(1, Ordering::Relaxed);
                    return Ok(KeyLease {
                        key: key.clone(),
                        list: list.clone(),
                        pool: self.clone(),
                        ticket,
                        reported: false,
                    });
                }
            }
            if tried.is_empty() {
                break;
            }
        }
        Err(self.why_none(keys, now))
    }

    /// Waits up to `until` for a key, when the pool is configured to queue.
    pub async fn acquire_wait(
        self: &Arc<Self>,
        tried: &[Arc<str>],
        until: Instant,
    ) -> Result<KeyLease, NoKey> {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let err = match self.acquire(tried) {
                Ok(lease) => return Ok(lease),
                Err(e) => e,
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
                let usable: Vec<bool> = keys
                    .iter()
                    .map(|k| {
                        k.lock()
                            .check(now, k.in_flight(), k.max_concurrent())
                            .is_ok()
                    })
                    .collect();
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
            let blocked = {
                let mut state = key.lock();
                state.check(now, key.in_flight(), key.max_concurrent())
            };
            let (until, rate) = match blocked {
                Ok(()) => (Some(now), true), // freed since: say "retry now"
                Err(Blocked::Cooling { until, cause }) => {
                    (Some(until), cause == CoolCause::RateLimited)
                }
                Err(Blocked::AtLimit { until }) => {
                    (Some(until.unwrap_or(now + Duration::from_secs(1))), true)
                }
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

    /// True when at least one key could take a request now (`/readyz`, gRPC health).
    pub fn can_serve_now(&self) -> bool {
        let now = Instant::now();
        self.keys().iter().any(|k| {
            // A key busy at its concurrency limit still counts: it frees up by itself.
            k.lock().check(now, 0, None).is_ok()
        })
    }

    /// Admin: disables a key by id until an operator enables it. False if no such key.
    pub fn disable(&self, id: &str) -> bool {
        self.with_key(id, |s| {
            s.health = Health::Disabled {
                cause: DisableCause::Admin,
            }
        })
    }

    /// Admin: makes a key ready now, clearing cooldowns and streaks. False if no such key.
    pub fn enable(&self, id: &str) -> bool {
        let found = self.with_key(id, |s| {
            s.health = Health::Ready;
            s.transient_streak = 0;
            s.rate_limit_streak = 0;
        });
        self.changed.notify_waiters();
        found
    }

    fn with_key(&self, id: &str, f: impl FnOnce(&mut KeyState)) -> bool {
        match self.keys().iter().find(|k| &*k.id == id) {
            Some(key) => {
                f(&mut key.lock());
                true
            }
            None => false,
        }
    }

    /// Keys disabled as invalid whose probe is due; marks them probed now.
    pub fn due_probes(&self) -> Vec<Arc<Key>> {
        let now = Instant::now();
        self.keys()
            .iter()
            .filter(|k| {
                let mut state = k.lock();
                let due = state.probe_due(now, self.cfg.probe_interval);
                if due {
                    state.last_probe = Some(now);
                }
                due
            })
            .cloned()
            .collect()
    }

    /// The probe's verdict on a key.
    pub fn probe_result(&self, key: &Key, ok: bool) {
        key.lock().probe_result(ok, Instant::now());
        if ok {
            self.changed.notify_waiters();
        }
    }

    /// Masks any key material (whole keys and recognisable pieces) in text bound for a client
    /// or a log.
    pub fn mask(&self, text: &str) -> String {
        let list = self.list();
        mask::mask_str(text, &list.finder, list.secrets())
    }

    /// [`KeyLease::mask_content`] without a lease.
    pub fn mask_content(&self, bytes: &Bytes) -> Bytes {
        if !mask::looks_like_object(bytes) {
            return self.mask_bytes(bytes);
        }
        self.list()
            .whole
            .replace(bytes)
            .unwrap_or_else(|| bytes.clone())
    }

    /// [`KeyPool::mask`] for bytes: the same `Bytes`, uncopied, when there is nothing to mask.
    pub fn mask_bytes(&self, bytes: &Bytes) -> Bytes {
        let list = self.list();
        mask::mask_bytes(bytes, &list.finder, list.secrets())
    }

    /// The admin view of every key: ids and fingerprints, never secrets.
    pub fn view(&self) -> Vec<KeyView> {
        let now = Instant::now();
        let wall = SystemTime::now();
        self.keys()
            .iter()
            .map(|k| {
                let health = k.health(now);
                let (state, until, reason) = match health {
                    Health::Ready => ("ready", None, None),
                    Health::Cooling { until, cause } => (
                        "cooling",
                        Some(until),
                        Some(match cause {
                            CoolCause::RateLimited => "rate_limited",
                            CoolCause::Quota => "quota",
                            CoolCause::Breaker => "breaker",
                        }),
                    ),
                    Health::HalfOpen { .. } => ("half_open", None, Some("trial")),
                    Health::Disabled { cause } => (
                        "disabled",
                        None,
                        Some(match cause {
                            DisableCause::InvalidCredential => "invalid_credential",
                            DisableCause::Admin => "admin",
                        }),
                    ),
                };
                let retry_in = until.map(|u| u.saturating_duration_since(now));
                let c = &k.counters;
                let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
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
                    requests: get(&c.requests),
                    successes: get(&c.successes),
                    failures: Failures {
                        rate_limited: get(&c.rate_limited),
                        quota: get(&c.quota),
                        credential: get(&c.credential),
                        transient: get(&c.transient),
                        caller: get(&c.caller),
                        stream_broken: get(&c.stream_broken),
                    },
                    last_error: k
                        .last_error
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone(),
                }
            })
            .collect()
    }
}

/// One key as the admin API and metrics show it.
#[derive(Clone, Debug, Serialize)]
pub struct KeyView {
    pub id: String,
    pub fingerprint: String,
    pub state: &'static str,
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

#[derive(Clone, Debug, Serialize)]
pub struct Failures {
    pub rate_limited: u64,
    pub quota: u64,
    pub credential: u64,
    pub transient: u64,
    pub caller: u64,
    pub stream_broken: u64,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn pool(keys: &[&str], strategy: Strategy) -> Arc<KeyPool> {
        let mut cfg = Settings::default().scheduler;
        cfg.strategy = strategy;
        let specs: Vec<KeySpec> = keys.iter().map(|k| KeySpec::parse(k).unwrap()).collect();
        KeyPool::new(&specs, cfg)
    }

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
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(&**p.acquire(&[]).unwrap().id(), "key-2");
    }

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
        assert_eq!(view[0].state, "disabled");
        assert_eq!(view[0].failures.credential, 1);
        assert!(
            !format!("{view:?}").contains("bad key a "),
            "message masked: {view:?}"
        );
    }

    #[test]
    fn a_lease_masks_its_own_key_after_a_reload_removed_it() {
        let p = pool(
            &["megallm-old-key-1111", "megallm-new-key-2222"],
            Strategy::RoundRobin,
        );
        let lease = p.acquire(&[]).unwrap();
        p.reload(&[KeySpec::new("megallm-new-key-2222")]).unwrap();
        let event = Bytes::from_static(b"{\"error\":\"bad key megallm-old-key-1111\"}");
        let masked = lease.mask_bytes(&event);
        assert_eq!(&masked[..], b"{\"error\":\"bad key [redacted key]\"}");
        // The pool no longer knows it; the other key is masked by both.
        assert!(p.mask("megallm-new-key-2222").contains("[redacted key]"));
        assert!(lease
            .mask("megallm-new-key-2222")
            .contains("[redacted key]"));
        let clean = Bytes::from_static(b"{\"choices\":[]}");
        assert_eq!(lease.mask_bytes(&clean).as_ptr(), clean.as_ptr());
        assert_eq!(p.mask_bytes(&clean).as_ptr(), clean.as_ptr());
    }
    #[tokio::test(start_paused = true)]
    async fn reload_keeps_state_and_ids() {
        let p = pool(&["a", "b"], Strategy::RoundRobin);
        let mut lease = p.acquire(&[]).unwrap();
        assert_eq!(&**lease.id(), "key-1");
        lease.report(
            Outcome::RateLimited {
                reset: Some(Duration::from_secs(60)),
            },
            Some(429),
            "",
        );
        drop(lease);
        let specs = vec![KeySpec::new("a"), KeySpec::new("c")];
        let summary = p.reload(&specs).unwrap();
        assert_eq!(
            summary,
            ReloadSummary {
                kept: 1,
                added: 1,
                removed: 1,
                total: 2
            }
        );
        let view = p.view();
        assert_eq!((view[0].id.as_str(), view[0].state), ("key-1", "cooling"));
        assert_eq!((view[1].id.as_str(), view[1].state), ("key-3", "ready"));
        assert!(p.reload(&[]).is_err());
        assert_eq!(p.keys().len(), 2);
        // "a" drops out (a half-written file) and comes back: same id, still cooling.
        p.reload(&[KeySpec::new("c")]).unwrap();
        let summary = p.reload(&[KeySpec::new("a"), KeySpec::new("c")]).unwrap();
        assert_eq!((summary.kept, summary.added), (2, 0));
        let view = p.view();
        assert_eq!((view[0].id.as_str(), view[0].state), ("key-1", "cooling"));
    }

    #[tokio::test(start_paused = true)]
    async fn admin_disable_enable() {
        let p = pool(&["a"], Strategy::RoundRobin);
        assert!(p.disable("key-1"));
        assert!(!p.disable("key-9"));
        assert!(p.acquire(&[]).is_err());
        assert!(p.enable("key-1"));
        assert!(p.acquire(&[]).is_ok());
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
}

//! The key scheduler: the pool of upstream keys and everything that decides which key serves a
//! request. One file per job, in the order a request meets them:
//!
//! - `choice`: picks a usable key by strategy (round-robin, weighted, least-in-flight), or
//!   says why none can serve ([`NoKey`]) and for how long; queues when configured to.
//! - `lease`: [`KeyLease`], one request's use of one key: the secret for the wire, the
//!   upstream's verdict, the in-flight count.
//! - `classify`: the one table from an upstream answer to an [`Outcome`], and the
//!   [`FailureClass`] each failure is counted under.
//! - `state`: `KeyState`, the per-key state machine, pure and driven by a clock passed in.
//! - `store`: `StateStore`, the one way a key's state changes, and the local snapshot
//!   (`Slot`) that choice reads synchronously; `store::shared`, the Redis store replicas
//!   share (`--redis`).
//! - `reload`: replaces the key list, keeping the state of keys that stay, and remembers
//!   removed keys so one that comes back keeps its id and state.
//! - `probe`: hands the upstream probe a [`ProbeTicket`] for each key disabled as invalid
//!   whose probe is due, and takes its verdict.
//! - `admin`: the operator's side: [`KeyView`] of every key (never a secret) for the admin
//!   API and metrics, admin disable and enable.
//! - `mask`: masking of key material in upstream text.
//!
//! Invariants: no lock is held across an await (each key's state sits behind its own short
//! `std::sync::Mutex`); choice is O(keys); a key's secret leaves this module only through
//! [`KeyLease::secret`] and [`ProbeTicket::secret`] for the wire, and through
//! [`KeyPool::mask`] never at all. Of the gateway, this module imports only `crate::config`.

mod admin;
mod choice;
mod classify;
mod lease;
mod mask;
mod probe;
mod reload;
mod state;
pub(crate) mod store;

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;
use tokio::time::Instant;

pub use admin::{KeyStats, KeyStatus, KeyView};
pub use choice::NoKey;
pub use classify::{classify, FailureClass, Outcome};
pub use lease::{KeyLease, LastError};
pub use reload::ReloadSummary;

use crate::config::{KeySpec, SchedulerSettings, Secret};
use state::{Blocked, Health, Ticket, Transition};
use store::{Slot, StateStore};
pub use store::{StoreStatus, PROPAGATION_BUCKETS};

/// Counters a key keeps for the admin API and metrics.
#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    successes: AtomicU64,
    /// Indexed by [`FailureClass::index`].
    failures: [AtomicU64; FailureClass::ALL.len()],
}

impl Counters {
    /// Counts one upstream verdict: a success (`None`) or a failure of `class`.
    fn count(&self, class: Option<FailureClass>) {
        let counter = match class {
            None => &self.successes,
            Some(class) => &self.failures[class.index()],
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// One upstream key in the pool. Never leaves this module: outside it, a key is its id, its
/// view, or a lease.
struct Key {
    /// `key-N`, given in load order and kept across reloads: the only name logs and admin use.
    id: Arc<str>,
    fingerprint: String,
    secret: Secret,
    weight: AtomicU32,
    /// 0 means no limit.
    max_concurrent: AtomicU32,
    in_flight: AtomicU32,
    /// The key's state, as the store keeps it for this replica.
    slot: Arc<Slot>,
    last_error: Mutex<Option<LastError>>,
    counters: Counters,
}

impl Key {
    fn new(id: usize, spec: &KeySpec, store: &dyn StateStore, now: Instant) -> Key {
        let fingerprint = spec.secret.fingerprint();
        let slot = store.register(&spec.secret, spec.rpm, now);
        slot.set_tpm(spec.tpm, now);
        Key {
            id: format!("key-{id}").into(),
            slot,
            fingerprint,
            secret: spec.secret.clone(),
            weight: AtomicU32::new(spec.weight),
            max_concurrent: AtomicU32::new(spec.max_concurrent.unwrap_or(0)),
            in_flight: AtomicU32::new(0),
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

    fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Whether the key could take a request now (its own limits included), without taking it.
    fn check(&self, now: Instant) -> Result<(), Blocked> {
        self.slot
            .check(now, self.in_flight(), self.max_concurrent())
    }

    fn try_take(&self, now: Instant) -> Result<Ticket, Blocked> {
        self.slot.take(now, &self.in_flight, self.max_concurrent())
    }

    fn set_last_error(&self, error: LastError) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
    }
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
    /// Where every key's state changes; choice reads the keys' local snapshots.
    store: Box<dyn StateStore>,
    /// Keys removed by a reload, kept (bounded) so that a key dropped by a half-written keys
    /// file and added back keeps its id and state: a revoked key must not return as ready.
    retired: Mutex<Vec<Arc<Key>>>,
    /// Wakes requests queued for a key (only used when `queue_timeout` > 0).
    changed: Notify,
    queueing: bool,
}

impl KeyPool {
    /// A pool with in-process state (what `store::build` gives without `--redis`), for tests.
    #[cfg(test)]
    pub fn new(specs: &[KeySpec], cfg: SchedulerSettings) -> Arc<KeyPool> {
        KeyPool::with_store(specs, cfg, Box::new(store::LocalStore))
    }

    /// A pool whose keys' state lives in `store` (see [`store::build`]).
    pub(crate) fn with_store(
        specs: &[KeySpec],
        cfg: SchedulerSettings,
        store: Box<dyn StateStore>,
    ) -> Arc<KeyPool> {
        let pool = KeyPool {
            keys: RwLock::new(Arc::new(KeyList::new(Arc::from(Vec::new())))),
            cursor: AtomicUsize::new(0),
            next_id: AtomicUsize::new(1),
            queueing: !cfg.queue_timeout.is_zero(),
            retired: Mutex::new(Vec::new()),
            cfg,
            store,
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
    fn keys(&self) -> Arc<[Arc<Key>]> {
        self.list().keys.clone()
    }

    fn list(&self) -> Arc<KeyList> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Applies one transition to a key's state through the store, now. A change of state
    /// (cooling, disabled, back to ready) is logged here, once: one line per change, none per
    /// request.
    fn apply(&self, key: &Key, transition: Transition) -> bool {
        let now = Instant::now();
        let before = key.slot.health(now);
        let changed = self.store.apply(&key.slot, now, transition, &self.cfg);
        if changed {
            log_change(key, before, key.slot.health(now), now, &self.cfg);
        }
        changed
    }

    /// Keys that are not disabled (cooling or paced ones included): the pool an account-wide
    /// rate limit is measured against.
    pub fn usable_count(&self) -> usize {
        let now = Instant::now();
        self.keys()
            .iter()
            .filter(|k| !matches!(k.slot.health(now), Health::Disabled { .. }))
            .count()
    }

    /// The account is rate limited until `until`: no key's own 429 cooldown lasts longer.
    pub fn cap_rate_limits(&self, until: Instant) {
        for key in self.keys().iter() {
            self.apply(key, Transition::CapRateLimit { until });
        }
        if self.queueing {
            self.changed.notify_waiters();
        }
    }

    /// The number of keys in the pool.
    pub fn len(&self) -> usize {
        self.list().keys.len()
    }

    /// The shared state store's health; `None` when state is in-process only.
    pub fn store_status(&self) -> Option<StoreStatus> {
        self.store.status()
    }

    /// Masks any key material (whole keys and recognisable pieces) in text. Upstream text is
    /// masked through the lease it came with; this pool-wide form is for the tests.
    #[cfg(test)]
    pub fn mask(&self, text: &str) -> String {
        let list = self.list();
        mask::mask_str(text, &list.finder, list.secrets())
    }

    /// [`KeyPool::mask`] for bytes: the same `Bytes`, uncopied, when there is nothing to mask.
    #[cfg(test)]
    pub fn mask_bytes(&self, bytes: &bytes::Bytes) -> bytes::Bytes {
        let list = self.list();
        mask::mask_bytes(bytes, &list.finder, list.secrets())
    }
}

/// One log line for a key's change of state, with its cause and until when. A half-open key
/// (its cooldown over, one trial pending) is no change of its own: its trial's verdict is.
fn log_change(key: &Key, before: Health, after: Health, now: Instant, cfg: &SchedulerSettings) {
    use state::{CoolCause, DisableCause};
    let phase = |h: Health| match h {
        Health::Ready => 0,
        Health::Cooling { cause, .. } => 1 + cause as u8,
        Health::HalfOpen { .. } => 10,
        Health::Disabled { cause } => 20 + cause as u8,
    };
    if phase(before) == phase(after) {
        return;
    }
    let id = &*key.id;
    match after {
        Health::Ready => tracing::info!(key = id, "key ready again"),
        Health::Cooling { until, cause } => {
            let cause = match cause {
                CoolCause::RateLimited => "rate limited (429)",
                CoolCause::Quota => "quota exhausted",
                CoolCause::Breaker => "breaker open after transient failures",
            };
            tracing::warn!(key = id, cause, until = %clock(until, now), "key cooling");
        }
        Health::Disabled {
            cause: DisableCause::InvalidCredential,
        } => tracing::warn!(
            key = id,
            cause = "the upstream rejected the credential",
            until = %format!("a probe succeeds (every {})", human(cfg.probe_interval)),
            "key disabled"
        ),
        Health::Disabled {
            cause: DisableCause::Admin,
        } => tracing::warn!(
            key = id,
            cause = "an operator",
            until = "an operator enables it",
            "key disabled"
        ),
        Health::HalfOpen { .. } => {}
    }
}

/// `at` as wall-clock time of day in UTC (`12:03:05`), for logs and error messages.
pub(crate) fn clock(at: Instant, now: Instant) -> String {
    let wall = SystemTime::now() + at.saturating_duration_since(now);
    let secs = unix_ms(wall) / 1000 % 86_400;
    format!(
        "{:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// A duration the way an operator writes it: `10m`, `30s`, `1h`, `1500ms`.
pub(crate) fn human(d: std::time::Duration) -> String {
    let secs = d.as_secs();
    match (secs, d.subsec_millis()) {
        (0, ms) => format!("{ms}ms"),
        (s, 0) if s % 3600 == 0 => format!("{}h", s / 3600),
        (s, 0) if s % 60 == 0 => format!("{}m", s / 60),
        (s, 0) => format!("{s}s"),
        (s, ms) => format!("{}ms", s * 1000 + u64::from(ms)),
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
fn test_pool(keys: &[&str], strategy: crate::config::Strategy) -> Arc<KeyPool> {
    let mut cfg = crate::config::Settings::default().scheduler;
    cfg.strategy = strategy;
    let specs: Vec<KeySpec> = keys.iter().map(|k| KeySpec::parse(k).unwrap()).collect();
    KeyPool::new(&specs, cfg)
}

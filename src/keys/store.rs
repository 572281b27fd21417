//! Where each key's state lives: the seam between the scheduler and a store that replicas
//! share.
//!
//! Every key holds a [`Slot`], its local snapshot of the state machine. Choice reads and takes
//! it synchronously, with no await and no round trip: `Slot::check`, `Slot::take` (which also
//! moves an expired cooldown on to half-open, the same on every replica as time passes). Every
//! other change is a [`Transition`] that goes through [`StateStore::apply`]: an upstream
//! outcome, a trial released without a verdict, admin disable and enable, a probe claimed and
//! its result. [`LocalStore`] applies them to the slot, and that is all a single gateway needs.
//!
//! How a shared (Redis) store plugs in, in a child module of this one (it alone may write a
//! slot's state directly, to merge what other replicas published):
//! - `register` names the new slot by a keyed fingerprint of the secret (the same on every
//!   replica, unlike `key-N`), keeps a `Weak` to it for the subscriber, and asks for a resync,
//!   which seeds it from the shared record within milliseconds (not before `register`
//!   returns: it is synchronous).
//! - `apply` applies the transition locally first (so this replica never serves on a state it
//!   has already left), then queues the slot's shared part (health with cause and `until` as
//!   wall-clock time, version + 1) for a background task that writes and publishes it in one
//!   atomic script. `apply` stays synchronous: a lease's `Drop` releases trials through it.
//! - The subscriber merges published records into the local slots only forward: a higher
//!   version wins, and of two cooldowns the later `until`.
//! - The half-open trial belongs to one replica: the store marks, in the other replicas'
//!   snapshots, a trial in flight elsewhere, so their `take` refuses it as busy.
//! - Per-key `max_concurrent` and `rpm` stay local until they are taken from the store in one
//!   round trip after choice ([`StateStore::shared_take`], which also claims a half-open trial
//!   for this replica); the per-minute budget is configuration (`Slot::set_rpm`), not a
//!   transition. A key with no such limit and no trial takes no round trip at all.
//!
//! The Redis store is [`shared::RedisStore`]; [`build`] picks the store the settings ask for.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::time::Instant;

use super::state::{Blocked, Health, KeyState, Ticket, Transition};
use crate::config::{SchedulerSettings, Secret, Settings};

mod scripts;
mod shared;

/// One key's state as this replica sees it.
pub struct Slot {
    /// The key's name in a shared store (a keyed fingerprint; empty for the local store).
    name: Box<str>,
    /// The per-minute budget as configured (0: none), for shared limits.
    rpm: AtomicU32,
    /// A short `std::sync::Mutex` section per call, never held across an await.
    inner: Mutex<Inner>,
}

struct Inner {
    state: KeyState,
    /// What a shared store keeps beside the state; unused by the local store.
    sync: shared::SyncMeta,
}

impl Slot {
    fn new(name: Box<str>, rpm: Option<u32>, now: Instant) -> Slot {
        Slot {
            name,
            rpm: AtomicU32::new(rpm.unwrap_or(0)),
            inner: Mutex::new(Inner {
                state: KeyState::new(rpm, now),
                sync: shared::SyncMeta::default(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the state half-written (every update is
        // a plain assignment), so a poisoned lock is still safe to use.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the key could take a request now, without taking it.
    pub fn check(
        &self,
        now: Instant,
        in_flight: u32,
        max_concurrent: Option<u32>,
    ) -> Result<(), Blocked> {
        let mut inner = self.lock();
        inner.trial_elsewhere(now)?;
        inner.state.check(now, in_flight, max_concurrent)
    }

    /// Takes the key for one request if it can serve now, and counts it in `in_flight` under
    /// the same lock: two requests cannot both take the last place under `max_concurrent`.
    pub fn take(
        &self,
        now: Instant,
        in_flight: &AtomicU32,
        max_concurrent: Option<u32>,
    ) -> Result<Ticket, Blocked> {
        let mut inner = self.lock();
        inner.trial_elsewhere(now)?;
        let ticket = inner
            .state
            .take(now, in_flight.load(Ordering::Acquire), max_concurrent)?;
        in_flight.fetch_add(1, Ordering::AcqRel);
        Ok(ticket)
    }

    pub fn health(&self, now: Instant) -> Health {
        let mut inner = self.lock();
        inner.state.tick(now);
        inner.state.health()
    }

    pub fn set_rpm(&self, rpm: Option<u32>, now: Instant) {
        self.rpm.store(rpm.unwrap_or(0), Ordering::Relaxed);
        self.lock().state.set_rpm(rpm, now);
    }

    /// `tpm=` (local to this replica, like every pacing below).
    pub fn set_tpm(&self, tpm: Option<u32>, now: Instant) {
        self.lock().state.set_tpm(tpm, now);
    }

    pub fn has_tpm(&self) -> bool {
        self.lock().state.has_tpm()
    }

    /// Charges (or, negative, gives back) `tokens` of the key's `tpm=` budget.
    pub fn spend_tokens(&self, tokens: f64, now: Instant) {
        self.lock().state.spend_tokens(tokens, now);
    }

    /// The upstream's count for the key is at 0 until `until`: choice skips it until then.
    /// Local to this replica: another replica learns it from its own answers.
    pub fn pace(&self, until: Instant) {
        self.lock().state.pace(until);
    }

    fn rpm(&self) -> Option<u32> {
        match self.rpm.load(Ordering::Relaxed) {
            0 => None,
            n => Some(n),
        }
    }
}

impl Inner {
    /// A half-open key whose one trial another replica holds is busy here too.
    fn trial_elsewhere(&mut self, now: Instant) -> Result<(), Blocked> {
        self.state.tick(now);
        let elsewhere = self.sync.trial_elsewhere_until.is_some_and(|t| now < t);
        match self.state.health() {
            Health::HalfOpen { .. } if elsewhere => Err(Blocked::TrialBusy),
            _ => Ok(()),
        }
    }
}

/// What choice took locally, for the shared step after it.
#[derive(Clone, Copy, Debug)]
pub struct Taken {
    pub trial: bool,
    pub max_concurrent: Option<u32>,
    /// This replica's requests on the key, this one included.
    pub in_flight: u32,
}

/// The shared step refused the key: another replica holds its trial, or a shared limit is
/// spent for `retry_after`.
#[derive(Clone, Copy, Debug)]
pub struct Refused {
    pub retry_after: Duration,
}

/// Something a lease holds until it is dropped (a concurrency lease in the shared store).
pub struct Hold(#[allow(dead_code)] Box<dyn Send + Sync>);

/// The shared store's health, for metrics.
#[derive(Clone, Debug)]
pub struct StoreStatus {
    pub up: bool,
    /// Replicas seen alive recently (this one included).
    pub replicas: u32,
    /// Propagation delays observed, by [`PROPAGATION_BUCKETS`] (not cumulative).
    pub propagation: Vec<u64>,
    pub propagation_sum: Duration,
}

/// Bounds (seconds) of the propagation histogram.
pub const PROPAGATION_BUCKETS: [f64; 10] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

/// The shared step's future: `Ok(None)` when granted with nothing to hold.
pub type SharedTake = BoxFuture<'static, Result<Option<Hold>, Refused>>;

/// The one way a key's state changes, other than choice's own `take`.
pub trait StateStore: Send + Sync {
    /// The snapshot of a key joining the pool; a shared store names it by a keyed fingerprint
    /// of `secret`, the same on every replica.
    fn register(&self, secret: &Secret, rpm: Option<u32>, now: Instant) -> Arc<Slot>;

    /// Applies `transition` to the key's state; returns whether it took effect
    /// ([`KeyState::apply`]).
    fn apply(
        &self,
        slot: &Slot,
        now: Instant,
        transition: Transition,
        cfg: &SchedulerSettings,
    ) -> bool;

    /// The step after local choice took `slot` for one request, when one is needed: shared
    /// limits and the half-open trial. `None` (the local store; a key without limits) means
    /// granted, with no await.
    fn shared_take(&self, _slot: &Arc<Slot>, _taken: Taken) -> Option<SharedTake> {
        None
    }

    /// Claims the probe of a key for one interval among replicas; `None`: this replica's
    /// claim is enough.
    fn claim_probe(
        &self,
        _slot: &Arc<Slot>,
        _interval: Duration,
    ) -> Option<BoxFuture<'static, bool>> {
        None
    }

    /// The shared store's health; `None` for the local store.
    fn status(&self) -> Option<StoreStatus> {
        None
    }
}

/// The in-process store: each key's state lives in its slot and nowhere else.
pub struct LocalStore;

impl StateStore for LocalStore {
    fn register(&self, _secret: &Secret, rpm: Option<u32>, now: Instant) -> Arc<Slot> {
        Arc::new(Slot::new("".into(), rpm, now))
    }

    fn apply(
        &self,
        slot: &Slot,
        now: Instant,
        transition: Transition,
        cfg: &SchedulerSettings,
    ) -> bool {
        slot.lock().state.apply(now, transition, cfg)
    }
}

/// The store the settings ask for: Redis with `--redis`, else the local store. Redis being
/// unreachable at start is not an error (the gateway serves on local state and reconnects);
/// a URL that does not parse is.
pub async fn build(settings: &Settings) -> Result<Box<dyn StateStore>, String> {
    match &settings.redis {
        None => Ok(Box::new(LocalStore)),
        Some(url) => Ok(Box::new(
            shared::RedisStore::start(url, &settings.redis_prefix).await?,
        )),
    }
}

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
//! - `register` seeds the new slot from the shared record named by the key's fingerprint (the
//!   same on every replica, unlike `key-N`) and keeps a `Weak` to it for the subscriber.
//! - `apply` applies the transition locally first (so this replica never serves on a state it
//!   has already left), then queues the slot's shared part (health with cause and `until` as
//!   wall-clock time, version + 1) for a background task that writes and publishes it in one
//!   atomic script. `apply` stays synchronous: a lease's `Drop` releases trials through it.
//! - The subscriber merges published records into the local slots only forward: a higher
//!   version wins, and of two cooldowns the later `until`.
//! - The half-open trial belongs to one replica: the store marks, in the other replicas'
//!   snapshots, a trial in flight elsewhere, so their `take` refuses it as busy.
//! - Per-key `max_concurrent` and `rpm` stay local until they are taken from the store in one
//!   round trip after choice; the per-minute budget is configuration (`Slot::set_rpm`), not a
//!   transition.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::time::Instant;

use super::state::{Blocked, Health, KeyState, Ticket, Transition};
use crate::config::SchedulerSettings;

/// One key's state as this replica sees it.
pub struct Slot {
    /// A short `std::sync::Mutex` section per call, never held across an await.
    state: Mutex<KeyState>,
}

impl Slot {
    fn new(rpm: Option<u32>, now: Instant) -> Slot {
        Slot {
            state: Mutex::new(KeyState::new(rpm, now)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, KeyState> {
        // A panic while holding this lock cannot leave the state half-written (every update is
        // a plain assignment), so a poisoned lock is still safe to use.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the key could take a request now, without taking it.
    pub fn check(
        &self,
        now: Instant,
        in_flight: u32,
        max_concurrent: Option<u32>,
    ) -> Result<(), Blocked> {
        self.lock().check(now, in_flight, max_concurrent)
    }

    /// Takes the key for one request if it can serve now, and counts it in `in_flight` under
    /// the same lock: two requests cannot both take the last place under `max_concurrent`.
    pub fn take(
        &self,
        now: Instant,
        in_flight: &AtomicU32,
        max_concurrent: Option<u32>,
    ) -> Result<Ticket, Blocked> {
        let mut state = self.lock();
        let ticket = state.take(now, in_flight.load(Ordering::Acquire), max_concurrent)?;
        in_flight.fetch_add(1, Ordering::AcqRel);
        Ok(ticket)
    }

    pub fn health(&self, now: Instant) -> Health {
        let mut state = self.lock();
        state.tick(now);
        state.health()
    }

    pub fn set_rpm(&self, rpm: Option<u32>, now: Instant) {
        self.lock().set_rpm(rpm, now);
    }
}

/// The one way a key's state changes, other than choice's own `take`.
pub trait StateStore: Send + Sync {
    /// The snapshot of a key joining the pool; `fingerprint` names it across replicas.
    fn register(&self, fingerprint: &str, rpm: Option<u32>, now: Instant) -> Arc<Slot>;

    /// Applies `transition` to the key's state; returns whether it took effect
    /// ([`KeyState::apply`]).
    fn apply(
        &self,
        slot: &Slot,
        now: Instant,
        transition: Transition,
        cfg: &SchedulerSettings,
    ) -> bool;
}

/// The in-process store: each key's state lives in its slot and nowhere else.
pub struct LocalStore;

impl StateStore for LocalStore {
    fn register(&self, _fingerprint: &str, rpm: Option<u32>, now: Instant) -> Arc<Slot> {
        Arc::new(Slot::new(rpm, now))
    }

    fn apply(
        &self,
        slot: &Slot,
        now: Instant,
        transition: Transition,
        cfg: &SchedulerSettings,
    ) -> bool {
        slot.lock().apply(now, transition, cfg)
    }
}

//! The lease: one request's use of one key. It is the only way to get a key's secret for a
//! request, it carries the upstream's verdict back to the key's state, and it counts the
//! request in flight until it is dropped.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;

use super::state::{Ticket, Transition};
use super::{mask, unix_ms, FailureClass, Key, KeyPool, Outcome};
use crate::config::Secret;

/// The last thing that went wrong on a key, with key material already masked.
#[derive(Clone, Debug, Serialize)]
pub struct LastError {
    pub class: FailureClass,
    pub status: Option<u16>,
    pub message: String,
    pub at_unix_ms: u64,
}

/// Use of one key by one request. Dropping it ends the request's claim on the key; report the
/// upstream's verdict first with [`KeyLease::report`].
pub struct KeyLease {
    key: Arc<Key>,
    pool: Arc<KeyPool>,
    ticket: Ticket,
    reported: bool,
}

impl KeyLease {
    /// Only choice hands out leases, for a key it has just taken.
    pub(super) fn new(key: Arc<Key>, pool: Arc<KeyPool>, ticket: Ticket) -> KeyLease {
        KeyLease {
            key,
            pool,
            ticket,
            reported: false,
        }
    }

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
        let keys = self.pool.keys();
        let own = std::iter::once(self.key.secret.expose());
        mask::mask(text, keys.iter().map(|k| k.secret.expose()).chain(own))
    }

    /// Records the upstream's verdict on this key. `status` and `message` describe a failure
    /// for the admin API; the message is masked here.
    pub fn report(&mut self, outcome: Outcome, status: Option<u16>, message: &str) {
        if self.reported {
            return;
        }
        self.reported = true;
        self.key.counters.count(outcome.class());
        let verdict = Transition::Outcome {
            outcome,
            ticket: self.ticket,
            jitter: rand::random(),
        };
        self.pool.apply(&self.key, verdict);
        if let Some(class) = outcome.class() {
            self.key.set_last_error(LastError {
                class,
                status,
                message: self.mask(message),
                at_unix_ms: unix_ms(SystemTime::now()),
            });
        }
    }

    /// A stream that broke after its first byte: counted, but the key's state is not changed
    /// (the verdict on the key was already given when the stream started).
    pub fn stream_broken(&self, message: &str) {
        let class = FailureClass::StreamBroken;
        self.key.counters.count(Some(class));
        self.key.set_last_error(LastError {
            class,
            status: None,
            message: self.mask(message),
            at_unix_ms: unix_ms(SystemTime::now()),
        });
    }
}

impl Drop for KeyLease {
    fn drop(&mut self) {
        if self.ticket.trial && !self.reported {
            self.pool.apply(&self.key, Transition::ReleaseTrial);
        }
        self.key.in_flight.fetch_sub(1, Ordering::AcqRel);
        if self.pool.queueing {
            self.pool.changed.notify_waiters();
        }
    }
}

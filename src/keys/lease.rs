//! The lease: one request's use of one key. It is the only way to get a key's secret for a
//! request, it carries the upstream's verdict back to the key's state, and it counts the
//! request in flight until it is dropped.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::HeaderMap;
use serde::Serialize;
use tokio::time::Instant;

use super::classify::paced_for;
use super::state::{Ticket, Transition};
use super::store::Hold;
use super::{mask, unix_ms, FailureClass, Key, KeyList, KeyPool, Outcome};
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
    /// The list the key was chosen from: its finder knows this key even after a reload.
    list: Arc<KeyList>,
    pool: Arc<KeyPool>,
    ticket: Ticket,
    reported: bool,
    /// Tokens charged to the key's `tpm=` budget by estimate, until the answer's `usage`
    /// corrects them.
    estimated: u32,
    /// What the shared store lent this request (a concurrency lease), given back on drop.
    hold: Option<Hold>,
}

impl KeyLease {
    /// Only choice hands out leases, for a key it has just taken.
    pub(super) fn new(
        key: Arc<Key>,
        list: Arc<KeyList>,
        pool: Arc<KeyPool>,
        ticket: Ticket,
    ) -> KeyLease {
        KeyLease {
            key,
            list,
            pool,
            ticket,
            reported: false,
            estimated: 0,
            hold: None,
        }
    }

    pub(super) fn ticket(&self) -> Ticket {
        self.ticket
    }

    pub(super) fn key(&self) -> &Arc<Key> {
        &self.key
    }

    pub(super) fn hold(&mut self, hold: Option<Hold>) {
        self.hold = hold;
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

    /// Whether the key has a `tpm=` budget (only then is an answer's `usage` read).
    pub fn has_tpm(&self) -> bool {
        self.key.slot.has_tpm()
    }

    /// Charges the request's estimated tokens to the key's `tpm=` budget (none: no-op).
    pub fn charge_tokens(&mut self, estimate: u32) {
        if self.has_tpm() {
            self.estimated = estimate;
            self.key
                .slot
                .spend_tokens(f64::from(estimate), Instant::now());
        }
    }

    /// The answer's `usage.total_tokens`: the estimate charged is corrected to it.
    pub fn settle_tokens(&mut self, used: u64) {
        if self.estimated == 0 {
            return;
        }
        let delta = used as f64 - f64::from(std::mem::take(&mut self.estimated));
        self.key.slot.spend_tokens(delta, Instant::now());
    }

    /// Reads the upstream's rate-limit counts on any answer: a key whose remaining requests
    /// or tokens are 0 is skipped until their reset, with no request spent to learn it.
    pub fn pace(&self, headers: &HeaderMap) {
        if let Some(wait) = paced_for(headers) {
            self.key.slot.pace(Instant::now() + wait);
            tracing::info!(
                key = &*self.key.id,
                cause = "the upstream's x-ratelimit-remaining is 0",
                until = %super::clock(Instant::now() + wait, Instant::now()),
                "key paced"
            );
        }
    }

    /// Records the upstream's verdict on this key. `status` and `message` describe a failure
    /// for the admin API; the message is masked here.
    pub fn report(&mut self, outcome: Outcome, status: Option<u16>, message: &str) {
        if self.reported {
            return;
        }
        self.reported = true;
        self.key.counters.count(outcome.class());
        let outcome = match (outcome, self.pool.cfg.quota_reset_utc) {
            // No reset said: the configured daily reset, when there is one.
            (Outcome::QuotaExhausted { reset: None }, Some(daily)) => Outcome::QuotaExhausted {
                reset: Some(daily.next_after(unix_ms(SystemTime::now()) / 1000)),
            },
            (outcome, _) => outcome,
        };
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

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use crate::config::{KeySpec, Strategy};
    use crate::keys::test_pool as pool;

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
}

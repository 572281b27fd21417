//! Reload: replaces the key list from a new set of key specs (keys file, SIGHUP, admin) while
//! requests run. Keys that stay keep their id, state and counters; removed keys are retired
//! (bounded), so a key dropped by a half-written keys file and added back keeps its id and
//! state: a revoked key must not return as ready.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::Serialize;
use tokio::time::Instant;

use super::{Key, KeyList, KeyPool};
use crate::config::KeySpec;

/// How many removed keys a pool remembers.
const MAX_RETIRED: usize = 1024;

/// What a reload did.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct ReloadSummary {
    pub kept: usize,
    pub added: usize,
    pub removed: usize,
    pub total: usize,
}

impl KeyPool {
    /// Replaces the key list: keys that stay keep their id, state and counters; removed keys
    /// take no new requests (requests already holding them finish); new keys start ready.
    /// Refuses a list with no keys, keeping the old pool.
    pub fn reload(&self, specs: &[KeySpec]) -> Result<ReloadSummary, String> {
        self.replace_keys(specs, false)
    }

    pub(super) fn replace_keys(
        &self,
        specs: &[KeySpec],
        initial: bool,
    ) -> Result<ReloadSummary, String> {
        if specs.is_empty() && !initial {
            return Err("the new key list is empty; keeping the current keys".into());
        }
        let now = Instant::now();
        // Reloads are serialized by the retired-keys lock (only reloads take it). The list's
        // write lock is held for the swap alone: building the masking scans of a large list
        // takes milliseconds, and key choice must not wait for it.
        let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.list().keys.clone();
        let mut next: Vec<Arc<Key>> = Vec::with_capacity(specs.len());
        let mut kept = 0;
        for spec in specs {
            if next.iter().any(|k| k.secret == spec.secret) {
                continue; // the same key listed twice is one key
            }
            let back = retired
                .iter()
                .position(|k| k.secret == spec.secret)
                .map(|i| retired.remove(i));
            match old
                .iter()
                .find(|k| k.secret == spec.secret)
                .or(back.as_ref())
            {
                Some(key) => {
                    key.weight.store(spec.weight, Ordering::Relaxed);
                    key.max_concurrent
                        .store(spec.max_concurrent.unwrap_or(0), Ordering::Relaxed);
                    key.slot.set_rpm(spec.rpm, now);
                    key.slot.set_tpm(spec.tpm, now);
                    next.push(key.clone());
                    kept += 1;
                }
                None => {
                    let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                    next.push(Arc::new(Key::new(id, spec, &*self.store, now)));
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
        retired.extend(removed);
        let excess = retired.len().saturating_sub(MAX_RETIRED);
        retired.drain(..excess);
        let list = Arc::new(KeyList::new(Arc::from(next)));
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = list;
        drop(retired);
        self.changed.notify_waiters();
        Ok(summary)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::Strategy;
    use crate::keys::{test_pool as pool, KeyStatus, Outcome};

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
        assert_eq!(
            (view[0].id.as_str(), view[0].state),
            ("key-1", KeyStatus::Cooling)
        );
        assert_eq!(
            (view[1].id.as_str(), view[1].state),
            ("key-3", KeyStatus::Ready)
        );
        assert!(p.reload(&[]).is_err());
        assert_eq!(p.keys().len(), 2);
        // "a" drops out (a half-written file) and comes back: same id, still cooling.
        p.reload(&[KeySpec::new("c")]).unwrap();
        let summary = p.reload(&[KeySpec::new("a"), KeySpec::new("c")]).unwrap();
        assert_eq!((summary.kept, summary.added), (2, 0));
        let view = p.view();
        assert_eq!(
            (view[0].id.as_str(), view[0].state),
            ("key-1", KeyStatus::Cooling)
        );
    }
}

//! Probe scheduling: which keys disabled as invalid are due for a probe, handed out as
//! [`ProbeTicket`]s. The probe itself (the upstream call and what its answer means) is
//! `upstream::probe`; a ticket gives it the key's secret for that one call and takes its
//! verdict, so the secret never leaves this module as anything else.

use std::sync::Arc;

use super::state::Transition;
use super::{Key, KeyPool};
use crate::config::Secret;

/// One due probe of one key. Dropping it without a verdict leaves the key disabled; its next
/// probe comes an interval later.
pub struct ProbeTicket {
    key: Arc<Key>,
    pool: Arc<KeyPool>,
}

impl ProbeTicket {
    pub fn id(&self) -> &Arc<str> {
        &self.key.id
    }

    /// The secret, for the probe request's Authorization header and nothing else.
    pub fn secret(&self) -> &Secret {
        &self.key.secret
    }

    /// The probe's verdict: `ok` when the upstream accepted the credential, which brings the
    /// key back unless an operator disabled it meanwhile.
    pub fn report(self, ok: bool) {
        if self.pool.apply(&self.key, Transition::ProbeResult { ok }) {
            self.pool.changed.notify_waiters();
        }
    }
}

impl KeyPool {
    /// A ticket for each key disabled as invalid whose probe is due; those keys count as
    /// probed now.
    pub fn due_probes(self: &Arc<Self>) -> Vec<ProbeTicket> {
        self.keys()
            .iter()
            .filter(|key| self.apply(key, Transition::ProbeStart))
            .map(|key| ProbeTicket {
                key: key.clone(),
                pool: self.clone(),
            })
            .collect()
    }

    /// [`KeyPool::due_probes`], each claimed for this interval among replicas: with a shared
    /// store, one replica probes a key per interval and its verdict reaches all.
    pub async fn claim_probes(self: &Arc<Self>) -> Vec<ProbeTicket> {
        let mut claimed = Vec::new();
        for ticket in self.due_probes() {
            let claim = self
                .store
                .claim_probe(&ticket.key.slot, self.cfg.probe_interval);
            let ours = match claim {
                Some(claim) => claim.await,
                None => true,
            };
            if ours {
                claimed.push(ticket);
            }
        }
        claimed
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{KeySpec, Settings};
    use crate::keys::{KeyStatus, Outcome};

    #[tokio::test(start_paused = true)]
    async fn a_ticket_per_due_key_and_its_verdict_decides() {
        let mut cfg = Settings::default().scheduler;
        cfg.probe_interval = Duration::from_secs(60);
        let specs = [KeySpec::new("a"), KeySpec::new("b"), KeySpec::new("c")];
        let p = KeyPool::new(&specs, cfg);
        for _ in 0..2 {
            let mut lease = p.acquire(&[]).unwrap();
            lease.report(Outcome::InvalidCredential, Some(401), "revoked");
        }
        assert!(p.due_probes().is_empty(), "not before an interval");
        tokio::time::advance(Duration::from_secs(60)).await;
        let tickets = p.due_probes();
        let ids: Vec<&str> = tickets.iter().map(|t| &**t.id()).collect();
        assert_eq!(ids, ["key-1", "key-2"]);
        assert_eq!(tickets[0].secret().expose(), "a");
        assert!(p.due_probes().is_empty(), "handed out once per interval");
        let mut tickets = tickets.into_iter();
        tickets.next().unwrap().report(true);
        tickets.next().unwrap().report(false);
        let states: Vec<KeyStatus> = p.view().iter().map(|k| k.state).collect();
        assert_eq!(
            states,
            [KeyStatus::Ready, KeyStatus::Disabled, KeyStatus::Ready]
        );
    }
}

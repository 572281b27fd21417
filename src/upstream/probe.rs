//! The background probe that brings back keys disabled as invalid: every `probe_interval` it
//! calls `GET {upstream}/models` with each such key and re-enables the key once the upstream
//! accepts the credential again.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::client::UpstreamClient;
use crate::keys::KeyPool;

pub fn spawn(
    pool: Arc<KeyPool>,
    client: UpstreamClient,
    timeout: Duration,
    stop: CancellationToken,
) {
    let tick = pool
        .settings()
        .probe_interval
        .clamp(Duration::from_millis(50), Duration::from_secs(1));
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = interval.tick() => {}
            }
            for ticket in pool.claim_probes().await {
                let status =
                    match tokio::time::timeout(timeout, client.models(ticket.secret())).await {
                        Ok(Ok(r)) => Some(r.status().as_u16()),
                        _ => None,
                    };
                let ok = status.is_some_and(credential_accepted);
                tracing::info!(key = %ticket.id(), ok, "probed a key disabled as invalid");
                ticket.report(ok);
            }
        }
    });
}

/// Whether a probe's answer says the upstream took the key: any 2xx, and also a 4xx other than
/// 401/403 (an upstream without `GET /models` answers 404 after checking the key, and a 429
/// means the key is valid but busy). 401/403, a 5xx or no answer keep the key disabled.
fn credential_accepted(status: u16) -> bool {
    matches!(status, 200..=299 | 400..=499) && !matches!(status, 401 | 403)
}

#[cfg(test)]
mod tests {
    use super::credential_accepted;

    #[test]
    fn only_an_accepted_credential_revives_a_key() {
        for ok in [200, 204, 404, 405, 429] {
            assert!(credential_accepted(ok), "{ok}");
        }
        for no in [401, 403, 500, 502, 503, 301] {
            assert!(!credential_accepted(no), "{no}");
        }
    }
}

//! The background probe that brings back keys disabled as invalid: every `probe_interval` it
//! calls `GET {upstream}/models` with each such key and re-enables the key on a 2xx.

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
            for key in pool.due_probes() {
                let ok = matches!(
                    tokio::time::timeout(timeout, client.models(key.secret())).await,
                    Ok(Ok(r)) if r.status().is_success()
                );
                tracing::info!(key = %key.id, ok, "probed a key disabled as invalid");
                pool.probe_result(&key, ok);
            }
        }
    });
}

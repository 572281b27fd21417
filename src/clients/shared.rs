//! Client limits across replicas: [`SharedLimits`] runs [`super::scripts::TAKE`] and
//! [`super::scripts::SETTLE`] on the Redis the key store uses (`--redis`), under the same
//! prefix. Every call is bounded by [`CALL_TIMEOUT`]; `None` from [`SharedLimits::take`] means
//! Redis did not answer and the caller counts locally. Settling runs on a spawned task, so a
//! request's end never waits on Redis.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{scripts, Limits};
use crate::chat::ClientLimit;
use crate::config::Secret;

/// No Redis call on the request path waits longer than this.
pub const CALL_TIMEOUT: Duration = Duration::from_millis(200);

/// A handle on the shared limits (cheap to clone).
#[derive(Clone)]
pub struct SharedLimits(Arc<Inner>);

struct Inner {
    prefix: String,
    client: redis::Client,
    conn: Mutex<Option<ConnectionManager>>,
    take: redis::Script,
    settle: redis::Script,
    replica: String,
    next: AtomicU64,
}

impl SharedLimits {
    pub fn new(url: &Secret, prefix: &str) -> Result<SharedLimits, String> {
        let client = redis::Client::open(url.expose())
            .map_err(|e| format!("--redis is not a usable Redis URL ({:?})", e.kind()))?;
        Ok(SharedLimits(Arc::new(Inner {
            prefix: prefix.to_owned(),
            client,
            conn: Mutex::new(None),
            take: redis::Script::new(scripts::TAKE),
            settle: redis::Script::new(scripts::SETTLE),
            replica: uuid::Uuid::new_v4().simple().to_string(),
            next: AtomicU64::new(0),
        })))
    }

    /// `P:what` (the usage totals use this too).
    pub fn key(&self, what: &str) -> String {
        format!("{}:{what}", self.0.prefix)
    }

    fn client_key(&self, client: &str, what: &str) -> String {
        format!("{}:client:{client}:{what}", self.0.prefix)
    }

    async fn conn(&self) -> Option<ConnectionManager> {
        if let Some(conn) = self
            .0
            .conn
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Some(conn);
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CALL_TIMEOUT))
            .set_response_timeout(Some(CALL_TIMEOUT))
            .set_number_of_retries(1);
        let made = tokio::time::timeout(
            CALL_TIMEOUT * 2,
            self.0.client.get_connection_manager_with_config(config),
        )
        .await;
        let conn = made.ok()?.ok()?;
        *self.0.conn.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn.clone());
        Some(conn)
    }

    /// One call within [`CALL_TIMEOUT`]; `None` when Redis does not answer.
    pub async fn call<T, F>(&self, f: impl FnOnce(ConnectionManager) -> F) -> Option<T>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let conn = self.conn().await?;
        match tokio::time::timeout(CALL_TIMEOUT, f(conn)).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "client limits: Redis call failed; counting locally");
                None
            }
            Err(_) => None,
        }
    }

    /// Takes a request's place; `Some(Ok((lease id, the day's tokens so far)))`,
    /// `Some(Err(limit))`, or `None` when Redis did not answer.
    pub async fn take(
        &self,
        client: &str,
        limits: &Limits,
        estimate: u64,
        today: u64,
        lease_ttl: Duration,
    ) -> Option<Result<(String, u64), (ClientLimit, Option<Duration>)>> {
        let lease = format!(
            "{}-{}",
            self.0.replica,
            self.0.next.fetch_add(1, Ordering::Relaxed)
        );
        let mut invocation = self.0.take.prepare_invoke();
        invocation
            .key(self.client_key(client, "rpm"))
            .key(self.client_key(client, "conc"))
            .key(self.client_key(client, "tpm"))
            .key(self.client_key(client, &format!("day:{}", day_name(today))))
            .arg(limits.rpm.unwrap_or(0))
            .arg(limits.max_concurrent.unwrap_or(0))
            .arg(limits.tpm.unwrap_or(0))
            .arg(limits.daily_tokens.unwrap_or(0))
            .arg(&lease)
            .arg(lease_ttl.as_millis() as u64)
            .arg(estimate);
        let (granted, limit, retry_ms, day_used): (i64, String, i64, i64) = self
            .call(|mut conn| async move { invocation.invoke_async(&mut conn).await })
            .await?;
        if granted == 1 {
            return Some(Ok((lease, day_used.max(0) as u64)));
        }
        let limit = match limit.as_str() {
            "rpm" => ClientLimit::Rpm,
            "tpm" => ClientLimit::Tpm,
            "max_concurrent" => ClientLimit::Concurrency,
            _ => ClientLimit::DailyTokens,
        };
        let wait = (retry_ms > 0).then(|| Duration::from_millis(retry_ms as u64));
        Some(Err((limit, wait)))
    }

    /// Frees a lease and corrects the reserved tokens, on a task of its own.
    pub fn settle(&self, client: &str, limits: &Limits, lease: &str, delta: i64, today: u64) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let this = self.clone();
        let (client, limits, lease) = (client.to_owned(), *limits, lease.to_owned());
        runtime.spawn(async move {
            this.settle_now(&client, &limits, &lease, delta, today)
                .await
        });
    }

    /// Frees a lease and corrects the reserved tokens, within [`CALL_TIMEOUT`].
    pub async fn settle_now(
        &self,
        client: &str,
        limits: &Limits,
        lease: &str,
        delta: i64,
        today: u64,
    ) {
        let keys = [
            self.client_key(client, "conc"),
            self.client_key(client, "tpm"),
            self.client_key(client, &format!("day:{}", day_name(today))),
        ];
        let mut invocation = self.0.settle.prepare_invoke();
        for key in &keys {
            invocation.key(key);
        }
        invocation
            .arg(lease)
            .arg(delta)
            .arg(if limits.tpm.is_some() { "1" } else { "0" })
            .arg(if limits.daily_tokens.is_some() {
                "1"
            } else {
                "0"
            });
        let done: Option<i64> = self
            .call(|mut conn| async move { invocation.invoke_async(&mut conn).await })
            .await;
        if done.is_none() {
            tracing::debug!(
                "client limits: a settle did not reach Redis (its lease expires by itself)"
            );
        }
    }
}

/// `YYYYMMDD` of a UTC day (days since the epoch).
pub fn day_name(day: u64) -> String {
    let (y, m, d) = civil_from_days(day as i64);
    format!("{y:04}{m:02}{d:02}")
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 → (year, month, day).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_names() {
        assert_eq!(day_name(0), "19700101");
        assert_eq!(day_name(19_723), "20240101");
        assert_eq!(day_name(19_782), "20240229");
    }
}

//! [`RedisStore`]: key state shared by replicas through Redis (`--redis`).
//!
//! Choice never waits for Redis: it reads the local slots, which this store keeps current.
//! - A local change (`apply`) lands in the slot at once, and its shared part is queued as the
//!   slot's `pending` record; the writer task writes and publishes it in one script
//!   ([`scripts::PUBLISH`]), and merges the record Redis answers with (ours, or the one that
//!   stood when ours did not move forward).
//! - The subscriber task merges every published record into the local slot (a higher version
//!   only). On each (re)subscription, and every [`RESYNC_EVERY`], the whole pool is read back,
//!   so a lost message costs at most that long.
//! - The heartbeat task says whether Redis is up (one WARN per outage), counts the replicas
//!   alive, and on reconnect pushes this replica's benched keys (a restarted Redis is empty)
//!   and resyncs.
//! - Shared limits and the half-open trial are taken in one round trip after choice
//!   ([`scripts::TAKE`]); while Redis is down each replica serves its share of a limit (the
//!   limit divided by the replicas last seen alive).
//!
//! Every Redis call is bounded by [`CALL_TIMEOUT`]: a request never fails because Redis does.
//!
//! Why this file is longer than the rest: it is one job, keeping the local snapshot and Redis in
//! step (writer, subscriber, resync, heartbeat and the shared limits they guard).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use hmac::{Hmac, Mac};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use sha2::Sha256;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::scripts::{self, Kind, ReadyCause, Record};
use super::{Hold, Refused, SharedTake, Slot, StateStore, StoreStatus, Taken, PROPAGATION_BUCKETS};
use crate::config::{SchedulerSettings, Secret};
use crate::keys::state::{Shared, Transition};
use crate::keys::unix_ms;

/// The longest any Redis call may take before this replica goes on without it.
pub const CALL_TIMEOUT: Duration = Duration::from_millis(200);
/// How often the whole pool is read back from Redis.
pub const RESYNC_EVERY: Duration = Duration::from_secs(2);
/// Heartbeat period; a replica unseen for [`ALIVE_WINDOW`] no longer counts.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
const ALIVE_WINDOW: Duration = Duration::from_secs(5);
/// A concurrency lease's life, renewed every third of it while its request runs: a crashed
/// replica's leases free their capacity within this.
pub const LEASE_TTL: Duration = Duration::from_secs(15);
/// How long one replica owns a half-open trial without a verdict.
const TRIAL_TTL: Duration = Duration::from_secs(10);

/// What the store keeps in each slot beside the state.
#[derive(Default)]
pub struct SyncMeta {
    /// The highest version of this key's record merged.
    version: u64,
    /// A local change not written yet, with when it happened (wall ms).
    pending: Option<(Kind, u64)>,
    /// Another replica holds the half-open trial until then.
    pub(super) trial_elsewhere_until: Option<Instant>,
    /// This replica's share of the per-minute budget while Redis is down: tokens and when.
    fallback: Option<(f64, Instant)>,
}

/// The shared store; dropping it stops its tasks.
pub struct RedisStore {
    inner: Arc<Inner>,
    stop: CancellationToken,
}

struct Inner {
    prefix: String,
    /// This process's replica id (random per start).
    replica: String,
    mac_key: [u8; 32],
    client: redis::Client,
    conn: Mutex<Option<ConnectionManager>>,
    slots: Mutex<HashMap<Box<str>, Weak<Slot>>>,
    /// Names of slots with a pending record, for the writer.
    writes: mpsc::UnboundedSender<Box<str>>,
    up: AtomicBool,
    /// Replicas seen alive by the last heartbeat (at least 1).
    alive: AtomicU32,
    /// The highest version seen anywhere.
    known: AtomicU64,
    resync_now: Notify,
    next_lease: AtomicU64,
    publish: redis::Script,
    take: redis::Script,
    renew: redis::Script,
    propagation: [AtomicU64; PROPAGATION_BUCKETS.len() + 1],
    propagation_sum_us: AtomicU64,
}

impl RedisStore {
    /// Connects (or starts trying to) and starts the writer, subscriber and heartbeat tasks.
    /// Waits for the first heartbeat and resync (bounded), so a replica starting next to
    /// running ones starts on their state.
    pub async fn start(url: &Secret, prefix: &str) -> Result<RedisStore, String> {
        let client = redis::Client::open(url.expose())
            .map_err(|e| format!("--redis is not a usable Redis URL ({:?})", e.kind()))?;
        let (writes, rx) = mpsc::unbounded_channel();
        let mac_key: [u8; 32] = {
            use sha2::Digest;
            Sha256::digest(format!("megallm-gateway key fingerprint\0{prefix}")).into()
        };
        let inner = Arc::new(Inner {
            prefix: prefix.to_owned(),
            replica: uuid::Uuid::new_v4().simple().to_string(),
            mac_key,
            client,
            conn: Mutex::new(None),
            slots: Mutex::new(HashMap::new()),
            writes,
            up: AtomicBool::new(false),
            alive: AtomicU32::new(1),
            known: AtomicU64::new(0),
            resync_now: Notify::new(),
            next_lease: AtomicU64::new(0),
            publish: redis::Script::new(scripts::PUBLISH),
            take: redis::Script::new(scripts::TAKE),
            renew: redis::Script::new(scripts::RENEW),
            propagation: Default::default(),
            propagation_sum_us: AtomicU64::new(0),
        });
        let stop = CancellationToken::new();
        tokio::spawn(
            stop.clone()
                .run_until_cancelled_owned(writer(inner.clone(), rx)),
        );
        tokio::spawn(
            stop.clone()
                .run_until_cancelled_owned(subscriber(inner.clone())),
        );
        if !inner.heartbeat().await {
            tracing::warn!(
                prefix,
                "state store (Redis) unreachable at start; serving on local state until it answers"
            );
        }
        tokio::spawn(
            stop.clone()
                .run_until_cancelled_owned(heartbeat(inner.clone())),
        );
        Ok(RedisStore { inner, stop })
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Inner {
    fn key(&self, what: &str, name: &str) -> String {
        format!("{}:{what}:{name}", self.prefix)
    }

    fn channel(&self) -> String {
        format!("{}:events", self.prefix)
    }

    /// The keyed fingerprint naming a key in Redis: HMAC-SHA256 of the secret under a key
    /// derived from the prefix, in hex. Not the secret, nor a prefix of it.
    fn name(&self, secret: &Secret) -> Box<str> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.mac_key).expect("any key size");
        mac.update(secret.expose().as_bytes());
        let bytes = mac.finalize().into_bytes();
        bytes
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
            .into()
    }

    async fn conn(&self) -> Option<ConnectionManager> {
        if let Some(conn) = self.conn.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Some(conn);
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CALL_TIMEOUT))
            .set_response_timeout(Some(CALL_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let made = tokio::time::timeout(
            CALL_TIMEOUT * 2,
            self.client.get_connection_manager_with_config(config),
        )
        .await;
        let conn = made.ok()?.ok()?;
        *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn.clone());
        Some(conn)
    }

    /// Runs one Redis call within [`CALL_TIMEOUT`]; `None` (and the store marked down) when it
    /// fails.
    async fn call<T, F>(&self, f: impl FnOnce(ConnectionManager) -> F) -> Option<T>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let result = match self.conn().await {
            Some(conn) => tokio::time::timeout(CALL_TIMEOUT, f(conn)).await,
            None => {
                self.mark_down();
                return None;
            }
        };
        match result {
            Ok(Ok(v)) => Some(v),
            _ => {
                self.mark_down();
                None
            }
        }
    }

    fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    fn mark_down(&self) {
        if self.up.swap(false, Ordering::Relaxed) {
            tracing::warn!("state store (Redis) unreachable: serving on local state, shared limits at this replica's share, until it answers again");
        }
    }

    fn slots(&self) -> Vec<Arc<Slot>> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.retain(|_, w| w.strong_count() > 0);
        slots.values().filter_map(Weak::upgrade).collect()
    }

    fn slot(&self, name: &str) -> Option<Arc<Slot>> {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .and_then(Weak::upgrade)
    }

    fn see_version(&self, v: u64) {
        self.known.fetch_max(v, Ordering::Relaxed);
    }

    /// Merges a record read or published into the local slot. A higher version only; while a
    /// local change waits to be written, only what moves forward of it (the writer's answer
    /// settles it). `force`: the record stands against our own refused write.
    fn merge(&self, slot: &Slot, record: Record, force: bool) {
        self.see_version(record.version);
        let now = Instant::now();
        let mut inner = slot.lock();
        if record.version < inner.sync.version || (record.version == inner.sync.version && !force) {
            return;
        }
        inner.sync.version = record.version;
        let shared = to_shared(record.kind, now);
        if inner.sync.pending.is_some() && !record.kind.is_admin() {
            let forward = match (shared, inner.state.shared()) {
                (_, Shared::Disabled { .. }) => false,
                (Shared::Disabled { .. }, _) => true,
                (Shared::Cooling { until, .. }, Shared::Cooling { until: old, .. }) => until > old,
                (Shared::Cooling { .. }, _) => true,
                _ => false,
            };
            if !forward {
                return;
            }
        }
        let reset = matches!(
            record.kind,
            Kind::Ready(ReadyCause::Admin | ReadyCause::Probe)
        );
        inner.state.adopt(shared, now, reset);
        if !matches!(record.kind, Kind::Cooling { .. }) {
            inner.sync.trial_elsewhere_until = None;
        }
    }

    /// Queues the slot's current shared state to be written, unless it is ready or half-open
    /// (nothing to push) or a change is already queued.
    fn push(&self, slot: &Slot) {
        let mut inner = slot.lock();
        if inner.sync.pending.is_some() {
            return;
        }
        let kind = match inner.state.shared() {
            Shared::Cooling { until, cause } => Kind::Cooling {
                until_ms: wall_ms(until),
                cause,
            },
            Shared::Disabled { cause } => Kind::Disabled(cause),
            Shared::Ready | Shared::HalfOpen => return,
        };
        inner.sync.pending = Some((kind, unix_ms(SystemTime::now())));
        drop(inner);
        let _ = self.writes.send(slot.name.clone());
    }

    /// Writes one slot's pending record; on failure it stays pending for the reconnect.
    async fn write(&self, name: &str) {
        let Some(slot) = self.slot(name) else { return };
        let (kind, at, based) = {
            let mut inner = slot.lock();
            match inner.sync.pending.take() {
                Some((kind, at)) => (kind, at, inner.sync.version),
                None => return,
            }
        };
        let (s, c, u) = kind.fields();
        let known = self.known.load(Ordering::Relaxed);
        let mut invocation = self.publish.prepare_invoke();
        invocation
            .key(self.key("key", name))
            .key(format!("{}:version", self.prefix))
            .key(self.key("trial", name))
            .arg(s)
            .arg(c)
            .arg(u)
            .arg(based)
            .arg(known)
            .arg(self.channel())
            .arg(name)
            .arg(&self.replica)
            .arg(at);
        let answer: Option<Vec<String>> = self
            .call(|mut conn| async move { invocation.invoke_async(&mut conn).await })
            .await;
        let Some(answer) = answer else {
            let mut inner = slot.lock();
            if inner.sync.pending.is_none() {
                inner.sync.pending = Some((kind, at));
            }
            return;
        };
        if let [accepted, v, s, c, u] = &answer[..] {
            if let (Ok(version), Some(kind)) = (v.parse(), Kind::parse(s, c, u)) {
                let refused = accepted != "1";
                self.merge(&slot, Record { version, kind }, refused);
            }
        }
    }

    /// Reads every key's record back and merges it.
    async fn resync(&self) -> bool {
        let slots = self.slots();
        if slots.is_empty() {
            return true;
        }
        let mut pipe = redis::pipe();
        for slot in &slots {
            pipe.cmd("HMGET")
                .arg(self.key("key", &slot.name))
                .arg(&["v", "s", "c", "u"]);
        }
        let rows: Option<Vec<Vec<Option<String>>>> = self
            .call(|mut conn| async move { pipe.query_async(&mut conn).await })
            .await;
        let Some(rows) = rows else { return false };
        for (slot, row) in slots.iter().zip(rows) {
            if let [Some(v), Some(s), Some(c), Some(u)] = &row[..] {
                if let (Ok(version), Some(kind)) = (v.parse(), Kind::parse(s, c, u)) {
                    self.merge(slot, Record { version, kind }, false);
                }
            }
        }
        true
    }

    /// One heartbeat: records this replica alive, counts the others, and tells up from down.
    /// On the way back up: pushes local benches, flushes pending writes, resyncs.
    async fn heartbeat(&self) -> bool {
        let key = format!("{}:replicas", self.prefix);
        let now = unix_ms(SystemTime::now());
        let mut pipe = redis::pipe();
        pipe.cmd("ZADD")
            .arg(&key)
            .arg(now)
            .arg(&self.replica)
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(&key)
            .arg("-inf")
            .arg(now.saturating_sub(ALIVE_WINDOW.as_millis() as u64))
            .ignore()
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(ALIVE_WINDOW.as_millis() as u64 * 2)
            .ignore()
            .cmd("ZCARD")
            .arg(&key);
        let count: Option<(u32,)> = self
            .call(|mut conn| async move { pipe.query_async(&mut conn).await })
            .await;
        let Some((count,)) = count else { return false };
        self.alive.store(count.max(1), Ordering::Relaxed);
        if !self.up.swap(true, Ordering::Relaxed) {
            tracing::info!(replicas = count, "state store (Redis) reachable: resyncing");
            for slot in self.slots() {
                self.push(&slot);
                // Writes that failed during the outage are still pending.
                if slot.lock().sync.pending.is_some() {
                    let _ = self.writes.send(slot.name.clone());
                }
            }
            self.resync().await;
        }
        true
    }

    fn observe_propagation(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = PROPAGATION_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(PROPAGATION_BUCKETS.len());
        self.propagation[i].fetch_add(1, Ordering::Relaxed);
        self.propagation_sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn on_message(&self, payload: &str) {
        let parts: Vec<&str> = payload.split(' ').collect();
        let [name, v, s, c, u, origin, at] = parts[..] else {
            return;
        };
        let (Ok(version), Some(kind)) = (v.parse(), Kind::parse(s, c, u)) else {
            return;
        };
        let Some(slot) = self.slot(name) else {
            self.see_version(version);
            return;
        };
        self.merge(&slot, Record { version, kind }, false);
        if origin != self.replica {
            if let Ok(at) = at.parse::<u64>() {
                let now = unix_ms(SystemTime::now());
                self.observe_propagation(Duration::from_millis(now.saturating_sub(at)));
            }
        }
    }

    /// The local share of a limit while Redis is down.
    fn share(&self, limit: u32) -> u32 {
        (limit / self.alive.load(Ordering::Relaxed).max(1)).max(1)
    }

    /// The shared step without Redis: this replica's share of each limit.
    fn take_locally(&self, slot: &Slot, taken: Taken) -> Result<Option<Hold>, Refused> {
        if let Some(max) = taken.max_concurrent {
            if taken.in_flight > self.share(max) {
                return Err(Refused {
                    retry_after: Duration::from_millis(100),
                });
            }
        }
        if let Some(rpm) = slot.rpm() {
            let share = f64::from(self.share(rpm));
            let now = Instant::now();
            let mut inner = slot.lock();
            let (tokens, at) = inner.sync.fallback.get_or_insert((share, now));
            let per_sec = share / 60.0;
            *tokens =
                (*tokens + now.saturating_duration_since(*at).as_secs_f64() * per_sec).min(share);
            *at = now;
            if *tokens < 1.0 {
                let wait = Duration::from_secs_f64((1.0 - *tokens) / per_sec);
                return Err(Refused { retry_after: wait });
            }
            *tokens -= 1.0;
        }
        Ok(None)
    }
}

/// A concurrency lease in Redis, renewed while its request runs, released on drop.
struct Lease {
    inner: Arc<Inner>,
    key: String,
    id: String,
    renew: tokio::task::JoinHandle<()>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renew.abort();
        let (inner, key, id) = (self.inner.clone(), self.key.clone(), self.id.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _: Option<i64> = inner
                    .call(|mut conn| async move {
                        redis::cmd("ZREM")
                            .arg(key)
                            .arg(id)
                            .query_async(&mut conn)
                            .await
                    })
                    .await;
            });
        }
    }
}

impl StateStore for RedisStore {
    fn register(&self, secret: &Secret, rpm: Option<u32>, now: Instant) -> Arc<Slot> {
        let name = self.inner.name(secret);
        let slot = Arc::new(Slot::new(name.clone(), rpm, now));
        self.inner
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name, Arc::downgrade(&slot));
        // Its shared state arrives with the next resync; ask for it now.
        self.inner.resync_now.notify_one();
        slot
    }

    fn apply(
        &self,
        slot: &Slot,
        now: Instant,
        transition: Transition,
        cfg: &SchedulerSettings,
    ) -> bool {
        let mut inner = slot.lock();
        let before = inner.state.shared();
        let took = inner.state.apply(now, transition, cfg);
        let after = inner.state.shared();
        let admin = matches!(
            transition,
            Transition::AdminDisable | Transition::AdminEnable
        );
        if before == after && !admin {
            return took;
        }
        let kind = match (transition, after) {
            (Transition::AdminEnable, _) => Kind::Ready(ReadyCause::Admin),
            (Transition::ProbeResult { .. }, Shared::Ready) => Kind::Ready(ReadyCause::Probe),
            (_, Shared::Ready) => Kind::Ready(ReadyCause::Ok),
            (_, Shared::Cooling { until, cause }) => Kind::Cooling {
                until_ms: wall_ms(until),
                cause,
            },
            (_, Shared::Disabled { cause }) => Kind::Disabled(cause),
            (_, Shared::HalfOpen) => return took,
        };
        inner.sync.pending = Some((kind, unix_ms(SystemTime::now())));
        drop(inner);
        let _ = self.inner.writes.send(slot.name.clone());
        took
    }

    fn shared_take(&self, slot: &Arc<Slot>, taken: Taken) -> Option<SharedTake> {
        let rpm = slot.rpm();
        if !taken.trial && rpm.is_none() && taken.max_concurrent.is_none() {
            return None;
        }
        let inner = self.inner.clone();
        if !inner.is_up() {
            return Some(std::future::ready(inner.take_locally(slot, taken)).boxed());
        }
        let slot = slot.clone();
        Some(
            async move {
                let id = format!(
                    "{}-{}",
                    inner.replica,
                    inner.next_lease.fetch_add(1, Ordering::Relaxed)
                );
                let conc_key = inner.key("conc", &slot.name);
                let mut invocation = inner.take.prepare_invoke();
                invocation
                    .key(inner.key("trial", &slot.name))
                    .key(inner.key("rpm", &slot.name))
                    .key(&conc_key)
                    .arg(if taken.trial { "1" } else { "0" })
                    .arg(&inner.replica)
                    .arg(TRIAL_TTL.as_millis() as u64)
                    .arg(rpm.unwrap_or(0))
                    .arg(taken.max_concurrent.unwrap_or(0))
                    .arg(&id)
                    .arg(LEASE_TTL.as_millis() as u64);
                let answer: Option<(i64, i64)> = inner
                    .call(|mut conn| async move { invocation.invoke_async(&mut conn).await })
                    .await;
                let Some((granted, retry_ms)) = answer else {
                    return inner.take_locally(&slot, taken);
                };
                if granted != 1 {
                    let retry_after = match retry_ms {
                        ms if ms > 0 => Duration::from_millis(ms as u64),
                        _ => Duration::from_millis(100),
                    };
                    if taken.trial {
                        slot.lock().sync.trial_elsewhere_until = Some(Instant::now() + retry_after);
                    }
                    return Err(Refused { retry_after });
                }
                if taken.max_concurrent.is_none() {
                    return Ok(None);
                }
                let renew = tokio::spawn(renew_lease(inner.clone(), conc_key.clone(), id.clone()));
                Ok(Some(Hold(Box::new(Lease {
                    inner,
                    key: conc_key,
                    id,
                    renew,
                }))))
            }
            .boxed(),
        )
    }

    fn claim_probe(
        &self,
        slot: &Arc<Slot>,
        interval: Duration,
    ) -> Option<BoxFuture<'static, bool>> {
        let inner = self.inner.clone();
        let key = inner.key("probe", &slot.name);
        Some(
            async move {
                let replica = inner.replica.clone();
                let ms = interval.as_millis().max(1) as u64;
                let set: Option<Option<String>> = inner
                    .call(|mut conn| async move {
                        redis::cmd("SET")
                            .arg(key)
                            .arg(replica)
                            .arg("NX")
                            .arg("PX")
                            .arg(ms)
                            .query_async(&mut conn)
                            .await
                    })
                    .await;
                // Redis down: this replica probes on its own interval.
                set.is_none_or(|ok| ok.is_some())
            }
            .boxed(),
        )
    }

    fn status(&self) -> Option<StoreStatus> {
        let inner = &self.inner;
        Some(StoreStatus {
            up: inner.is_up(),
            replicas: inner.alive.load(Ordering::Relaxed),
            propagation: inner
                .propagation
                .iter()
                .map(|n| n.load(Ordering::Relaxed))
                .collect(),
            propagation_sum: Duration::from_micros(
                inner.propagation_sum_us.load(Ordering::Relaxed),
            ),
        })
    }
}

async fn renew_lease(inner: Arc<Inner>, key: String, id: String) {
    let mut every = tokio::time::interval(LEASE_TTL / 3);
    every.tick().await;
    loop {
        every.tick().await;
        let mut invocation = inner.renew.prepare_invoke();
        invocation
            .key(&key)
            .arg(&id)
            .arg(LEASE_TTL.as_millis() as u64);
        let _: Option<i64> = inner
            .call(|mut conn| async move { invocation.invoke_async(&mut conn).await })
            .await;
    }
}

async fn writer(inner: Arc<Inner>, mut rx: mpsc::UnboundedReceiver<Box<str>>) {
    while let Some(name) = rx.recv().await {
        inner.write(&name).await;
    }
}

async fn subscriber(inner: Arc<Inner>) {
    loop {
        let connected =
            tokio::time::timeout(CALL_TIMEOUT * 2, inner.client.get_async_pubsub()).await;
        if let Ok(Ok(mut pubsub)) = connected {
            let subscribed =
                tokio::time::timeout(CALL_TIMEOUT, pubsub.subscribe(inner.channel())).await;
            if let Ok(Ok(())) = subscribed {
                // Whatever was published while this replica was not listening.
                inner.resync_now.notify_one();
                let mut messages = pubsub.on_message();
                while let Some(msg) = messages.next().await {
                    if let Ok(payload) = msg.get_payload::<String>() {
                        inner.on_message(&payload);
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn heartbeat(inner: Arc<Inner>) {
    let mut beat = tokio::time::interval(HEARTBEAT_EVERY);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_resync = Instant::now();
    loop {
        let asked = tokio::select! {
            _ = beat.tick() => false,
            _ = inner.resync_now.notified() => true,
        };
        if !asked && !inner.heartbeat().await {
            continue;
        }
        if (asked || last_resync.elapsed() >= RESYNC_EVERY) && inner.resync().await {
            last_resync = Instant::now();
        }
    }
}

/// A local instant as wall-clock ms (for records other replicas read).
fn wall_ms(at: Instant) -> u64 {
    let now = Instant::now();
    let wall = SystemTime::now();
    let t = if at >= now {
        wall + (at - now)
    } else {
        wall - (now - at)
    };
    unix_ms(t)
}

/// A record's kind as local state.
fn to_shared(kind: Kind, now: Instant) -> Shared {
    match kind {
        Kind::Ready(_) => Shared::Ready,
        Kind::Cooling { until_ms, cause } => {
            let wall = unix_ms(SystemTime::now());
            let until = match until_ms.checked_sub(wall) {
                Some(ahead) => now + Duration::from_millis(ahead),
                None => now,
            };
            Shared::Cooling { until, cause }
        }
        Kind::Disabled(cause) => Shared::Disabled { cause },
    }
}

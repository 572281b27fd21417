//! Who is calling: the client tokens (`--auth-tokens-file`, `GATEWAY_AUTH_TOKENS`), each with a
//! name and limits, and the limits themselves. [`Clients::authorize`] turns an `Authorization`
//! value into a [`Caller`]; [`Clients::admit`] checks the caller's `models=` and takes what
//! the request needs from its limits (`rpm`, `tpm`, `max_concurrent`, `daily_tokens`), giving
//! an [`Admission`] that frees its place and corrects its token estimate when dropped.
//!
//! Limits are counted per process ([`local`]) or, with `--redis`, across replicas by one Lua
//! script per request ([`shared`], [`scripts`]). No request fails because Redis does: while it
//! does not answer, the local counters take over, each replica at its share of every limit
//! (the limit divided by the replicas last seen alive; of the daily budget, what was left of
//! it when Redis last answered).

mod local;
pub mod scripts;
pub mod shared;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::chat::{ClientLimit, GatewayError};
use crate::config::{glob_matches, TokenMatch, TokenSpec};

/// A client's limits, as its token line gives them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub rpm: Option<u32>,
    pub tpm: Option<u64>,
    pub max_concurrent: Option<u32>,
    pub daily_tokens: Option<u64>,
}

impl Limits {
    fn any(&self) -> bool {
        *self != Limits::default()
    }
}

/// One client token.
#[derive(Debug)]
pub struct Client {
    token: TokenMatch,
    /// The name in usage records and metric labels (`name=`); `None` for a bare token.
    pub name: Option<String>,
    /// What the limits are counted under: the name, else the token's fingerprint.
    id: String,
    limits: Limits,
    models: Vec<String>,
}

impl Client {
    fn new(spec: TokenSpec) -> Client {
        let id = spec
            .name
            .clone()
            .unwrap_or_else(|| spec.token.fingerprint());
        Client {
            limits: Limits {
                rpm: spec.rpm,
                tpm: spec.tpm,
                max_concurrent: spec.max_concurrent,
                daily_tokens: spec.daily_tokens,
            },
            token: spec.token,
            name: spec.name,
            id,
            models: spec.models,
        }
    }

    fn allows(&self, model: &str) -> bool {
        self.models.is_empty() || self.models.iter().any(|m| glob_matches(m, model))
    }
}

/// Who sent a request: a client token's holder, or nobody in particular when the gateway is
/// open. Plain data for the doors: they pass it back to the core.
#[derive(Clone, Debug, Default)]
pub struct Caller(Option<Arc<Client>>);

impl Caller {
    /// The client's name, for usage records.
    pub fn name(&self) -> Option<&str> {
        self.0.as_ref().and_then(|c| c.name.as_deref())
    }
}

/// The client tokens and their counters. The token list is swapped whole on reload; the
/// counters are kept by client (name or fingerprint), so a reload does not reset a budget.
pub struct Clients {
    tokens: RwLock<Arc<Vec<Arc<Client>>>>,
    counters: Mutex<HashMap<String, local::Counters>>,
    shared: Option<shared::SharedLimits>,
    /// How long a concurrency place in Redis outlives a replica that died holding it.
    lease_ttl: Duration,
    /// Replicas last seen alive (this one included), for the share of a limit this replica
    /// keeps while Redis is down.
    replicas: Replicas,
}

/// Says how many replicas were last seen alive.
pub type Replicas = Box<dyn Fn() -> u32 + Send + Sync>;

/// What a reload changed.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct TokensReloaded {
    pub total: usize,
    pub named: usize,
    pub limited: usize,
}

impl Clients {
    pub fn new(
        specs: Vec<TokenSpec>,
        shared: Option<shared::SharedLimits>,
        lease_ttl: Duration,
        replicas: Replicas,
    ) -> Clients {
        Clients {
            tokens: RwLock::new(Arc::new(
                specs.into_iter().map(Client::new).map(Arc::new).collect(),
            )),
            counters: Mutex::new(HashMap::new()),
            shared,
            lease_ttl,
            replicas,
        }
    }

    fn list(&self) -> Arc<Vec<Arc<Client>>> {
        self.tokens
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether clients must present a token (the list is not empty).
    pub fn required(&self) -> bool {
        !self.list().is_empty()
    }

    /// Swaps in a new token list.
    pub fn reload(&self, specs: Vec<TokenSpec>) -> TokensReloaded {
        let list: Vec<Arc<Client>> = specs.into_iter().map(Client::new).map(Arc::new).collect();
        let summary = TokensReloaded {
            total: list.len(),
            named: list.iter().filter(|c| c.name.is_some()).count(),
            limited: list.iter().filter(|c| c.limits.any()).count(),
        };
        *self.tokens.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(list);
        summary
    }

    /// The caller a token belongs to. Every token is compared (in constant time), so the time
    /// taken does not say which one nearly matched.
    pub fn authorize(&self, token: Option<&[u8]>) -> Result<Caller, GatewayError> {
        let list = self.list();
        if list.is_empty() {
            return Ok(Caller(None));
        }
        let token = token.ok_or(GatewayError::Unauthenticated)?;
        let digest: [u8; 32] = Sha256::digest(token).into();
        let mut found = None;
        for client in list.iter() {
            if client.token.matches(token, &digest) && found.is_none() {
                found = Some(client.clone());
            }
        }
        found
            .map(|c| Caller(Some(c)))
            .ok_or(GatewayError::Unauthenticated)
    }

    /// Checks `model` against the caller's `models=` and takes what a request costs from its
    /// limits; `estimate` tokens are reserved until the admission is settled. A request that
    /// names no model (a passthrough path's) passes `models=` only when the token has none.
    pub async fn admit(
        self: &Arc<Self>,
        caller: &Caller,
        model: Option<&str>,
        estimate: u64,
    ) -> Result<Admission, GatewayError> {
        let Some(client) = caller.0.clone() else {
            return Ok(Admission::free());
        };
        let allowed = match model {
            Some(model) => client.allows(model),
            None => client.models.is_empty(),
        };
        if !allowed {
            return Err(GatewayError::ModelNotAllowed {
                model: model.unwrap_or_default().to_owned(),
            });
        }
        if !client.limits.any() {
            return Ok(Admission::free());
        }
        let today = utc_day(SystemTime::now());
        let estimate = match (client.limits.tpm, client.limits.daily_tokens) {
            (None, None) => 0,
            _ => estimate,
        };
        let refused = |limit: ClientLimit, wait: Option<Duration>| GatewayError::ClientLimited {
            client: client.id.clone(),
            limit,
            retry_after: wait.unwrap_or_else(|| until_next_utc_day(SystemTime::now())),
        };
        if let Some(shared) = &self.shared {
            match shared
                .take(&client.id, &client.limits, estimate, today, self.lease_ttl)
                .await
            {
                Some(Ok((lease, day_used))) => {
                    if client.limits.daily_tokens.is_some() {
                        let mut counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
                        counters_of(&mut counters, &client.id).seen_shared_day(today, day_used);
                    }
                    return Ok(Admission {
                        held: Some(Held {
                            client,
                            reserved: estimate,
                            today,
                            at: At::Shared(shared.clone(), lease),
                            counters: None,
                        }),
                    });
                }
                Some(Err((limit, wait))) => return Err(refused(limit, wait)),
                None => {} // Redis did not answer: count here, at this replica's share.
            }
        }
        let mut counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        let c = counters_of(&mut counters, &client.id);
        let limits = match &self.shared {
            None => client.limits,
            Some(_) => c.share(&client.limits, (self.replicas)(), today),
        };
        c.take(&limits, estimate, Instant::now(), today)
            .map_err(|(limit, wait)| refused(limit, wait))?;
        drop(counters);
        Ok(Admission {
            held: Some(Held {
                client,
                reserved: estimate,
                today,
                at: At::Local,
                counters: Some(self.clone()),
            }),
        })
    }

    /// Ends an admission taken locally.
    fn settle_local(&self, held: &Held, delta: i64) {
        let mut counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = counters.get_mut(&held.client.id) {
            c.settle(&held.client.limits, delta, Instant::now(), held.today);
        }
    }
}

/// Where an admission's counts were taken.
enum At {
    Local,
    Shared(shared::SharedLimits, String),
}

struct Held {
    client: Arc<Client>,
    reserved: u64,
    today: u64,
    at: At,
    /// The local counters to settle into (for [`At::Local`]).
    counters: Option<Arc<Clients>>,
}

/// What a request took from its client's limits; [`Admission::settle`] gives back the
/// concurrency place and corrects the reserved tokens by what the request really spent.
/// Dropped unsettled, it settles as if the estimate was right.
pub struct Admission {
    held: Option<Held>,
}

impl Admission {
    fn free() -> Admission {
        Admission { held: None }
    }

    /// [`Admission::settle`], waiting until a shared count has reached Redis (bounded), so
    /// the client's next request sees it: for whole answers, before the client has them.
    pub async fn settle_now(&mut self, tokens: u64) {
        let Some(held) = self.held.take() else { return };
        let delta = tokens as i64 - held.reserved as i64;
        match &held.at {
            At::Local => {
                if let Some(clients) = &held.counters {
                    clients.settle_local(&held, delta);
                }
            }
            At::Shared(shared, lease) => {
                shared
                    .settle_now(
                        &held.client.id,
                        &held.client.limits,
                        lease,
                        delta,
                        held.today,
                    )
                    .await
            }
        }
    }

    /// The request spent `tokens` in all.
    pub fn settle(&mut self, tokens: u64) {
        let Some(held) = self.held.take() else { return };
        let delta = tokens as i64 - held.reserved as i64;
        match &held.at {
            At::Local => {
                if let Some(clients) = &held.counters {
                    clients.settle_local(&held, delta);
                }
            }
            At::Shared(shared, lease) => shared.settle(
                &held.client.id,
                &held.client.limits,
                lease,
                delta,
                held.today,
            ),
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some(held) = &self.held {
            let reserved = held.reserved;
            self.settle(reserved);
        }
    }
}

/// A client's counters, made on its first request (the id is copied only then).
fn counters_of<'a>(
    counters: &'a mut HashMap<String, local::Counters>,
    id: &str,
) -> &'a mut local::Counters {
    if !counters.contains_key(id) {
        counters.insert(id.to_owned(), local::Counters::default());
    }
    counters.get_mut(id).expect("inserted above")
}

/// Days since the Unix epoch, UTC.
pub fn utc_day(now: SystemTime) -> u64 {
    now.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0)
}

/// Time to the next midnight UTC, when daily budgets renew.
fn until_next_utc_day(now: SystemTime) -> Duration {
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Duration::from_secs(86_400 - secs % 86_400)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    #[tokio::test]
    async fn models_outside_the_list_are_refused_and_a_settled_admission_frees_its_place() {
        let spec = TokenSpec::parse("tok-a name=a max_concurrent=1 models=gpt-4o,oss-*").unwrap();
        let clients = Arc::new(Clients::new(
            vec![spec, TokenSpec::bare(Secret::new("tok-b".into()))],
            None,
            Duration::from_secs(60),
            Box::new(|| 1),
        ));
        let a = clients.authorize(Some(b"tok-a")).unwrap();
        assert_eq!(a.name(), Some("a"));
        assert!(matches!(
            clients.admit(&a, Some("gpt-3"), 1).await,
            Err(GatewayError::ModelNotAllowed { .. })
        ));
        let mut first = clients.admit(&a, Some("oss-120b"), 1).await.unwrap();
        assert!(matches!(
            clients.admit(&a, Some("gpt-4o"), 1).await,
            Err(GatewayError::ClientLimited {
                limit: ClientLimit::Concurrency,
                ..
            })
        ));
        first.settle(5);
        let _again = clients.admit(&a, Some("gpt-4o"), 1).await.unwrap();
        assert!(clients.authorize(Some(b"tok-b")).unwrap().name().is_none());
        assert!(clients.authorize(Some(b"tok-c")).is_err());
        assert!(clients.authorize(None).is_err());
    }
}

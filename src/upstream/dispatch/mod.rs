//! The attempt loop: borrow a key, call the upstream, let [`classify`] judge the answer, and
//! retry on another key while nothing has reached the client. Streams are held back until
//! their first event is complete, so a stream that dies before its first byte is retried too;
//! after that, the stream is the client's and a break ends it with an error.
//!
//! Doors get only what [`verdict`] passed and the key pool masked: a [`Completion`] whose body
//! is a JSON object that is no error, and chunks whose bytes hold no key material. A 2xx that
//! is no answer (HTML, empty, not an object, `{"error": …}`, a stream whose first event is an
//! error) is the key's transient failure, retried like a 5xx; a later error event is a break.
//!
//! One attempt is a few steps, each in its own file: [`attempt`] sends the request and judges
//! the status (a non-2xx ends the attempt) and reads a whole answer; [`stream`] primes a stream
//! (holds it back until its first event) and runs it live. [`Mode`] is the one step where a
//! whole answer and a stream differ; [`Budget`] is what the request may still spend.
//!
//! [`classify`]: crate::keys::classify
//! [`verdict`]: super::verdict

mod attempt;
mod stream;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream as futures_stream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::attempt::{Failed, Try};
use super::client::{Response, UpstreamClient};
use super::health::{Refusal, UpstreamHealth, RATE_WINDOW};
use super::unstreamed;
use crate::chat::{
    Attempts, ChatRequest, ChunkStream, Completion, Dispatched, Events, Forward, GatewayError,
    RequestContext, TimeoutKind,
};
use crate::config::{SchedulerSettings, Timeouts};
use crate::keys::{KeyLease, KeyPool, NoKey};
use crate::metrics::Metrics;
use crate::trace;
use tracing::Instrument;

pub struct Dispatcher {
    pool: Arc<KeyPool>,
    client: UpstreamClient,
    max_attempts: u32,
    timeouts: Timeouts,
    queue_timeout: Duration,
    /// The upstream's breaker and the account-wide 429 backoff (per replica).
    health: UpstreamHealth,
    /// Cancelled when the shutdown grace is over: open streams then end with `ShuttingDown`.
    shutdown: CancellationToken,
    /// Attempts per request, each attempt's latency by key, a stream's first token and end.
    metrics: Arc<Metrics>,
}

impl Dispatcher {
    pub fn new(
        pool: Arc<KeyPool>,
        client: UpstreamClient,
        max_attempts: u32,
        timeouts: Timeouts,
        scheduler: &SchedulerSettings,
    ) -> Self {
        Dispatcher {
            pool,
            client,
            max_attempts: max_attempts.max(1),
            timeouts,
            queue_timeout: scheduler.queue_timeout,
            health: UpstreamHealth::default(),
            shutdown: CancellationToken::new(),
            metrics: Arc::default(),
        }
    }

    /// Forgets the account-wide 429 backoff (an operator reset every key).
    pub fn forget_rate_limits(&self) {
        self.health.forget_rate_limits();
    }

    /// Streams handed out end with [`GatewayError::ShuttingDown`] once `shutdown` is cancelled.
    pub fn with_shutdown(mut self, shutdown: CancellationToken) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// The metrics the dispatcher records into (the gateway's, which `/metrics` renders).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// A whole (non-streaming) completion.
    pub async fn complete(
        &self,
        req: &ChatRequest,
        ctx: &RequestContext,
    ) -> Dispatched<Completion> {
        let dispatched = self.run::<Whole>(Call::Chat(req), ctx).await;
        if let Ok(completion) = &dispatched.result {
            trace::completion(&ctx.span, &completion.body);
        }
        dispatched
    }

    /// A streaming completion: the chunk stream starts with the first upstream event.
    pub async fn stream(&self, req: &ChatRequest, ctx: &RequestContext) -> Dispatched<ChunkStream> {
        self.streamed(Call::Chat(req), ctx).await
    }

    /// A forwarded endpoint's whole answer (embeddings, legacy completions, responses,
    /// Anthropic's messages, passthrough paths): the same keys, attempts, timeouts, verdicts
    /// and masking as chat.
    pub async fn forward(&self, req: &Forward, ctx: &RequestContext) -> Dispatched<Completion> {
        self.run::<Whole>(Call::Forward(req), ctx).await
    }

    /// A forwarded endpoint's stream, framed as its [`Events`] say.
    pub async fn forward_stream(
        &self,
        req: &Forward,
        ctx: &RequestContext,
    ) -> Dispatched<ChunkStream> {
        self.streamed(Call::Forward(req), ctx).await
    }

    async fn streamed(&self, call: Call<'_>, ctx: &RequestContext) -> Dispatched<ChunkStream> {
        let started = Instant::now();
        let Dispatched { result, attempts } = self.run::<Streamed>(call, ctx).await;
        let metrics = &self.metrics;
        Dispatched {
            result: result.map(|chunks| {
                let chunks = crate::chat::until_shutdown(chunks, self.shutdown.clone());
                trace::observe_stream(chunks, metrics.clone(), &ctx.span, started)
            }),
            attempts,
        }
    }

    async fn run<M: Mode>(&self, req: Call<'_>, ctx: &RequestContext) -> Dispatched<M::Output> {
        let deadline = Deadline::of(ctx, Instant::now() + self.timeouts.total);
        let keys = u32::try_from(self.pool.len()).unwrap_or(u32::MAX);
        let mut budget = Budget::new(self.max_attempts, keys, deadline);
        let mut attempts = Attempts::default();
        trace::chat_requested(&ctx.span, req.model());
        let result = self.tries::<M>(req, ctx, &mut budget, &mut attempts).await;
        self.metrics.attempts(attempts.0.len());
        trace::attempts_done(&ctx.span, attempts.0.len());
        Dispatched { result, attempts }
    }

    /// One attempt after another until one wins, one fails for good, or the budget is spent;
    /// then the last failure is the client's.
    async fn tries<M: Mode>(
        &self,
        req: Call<'_>,
        ctx: &RequestContext,
        budget: &mut Budget,
        attempts: &mut Attempts,
    ) -> Result<M::Output, GatewayError> {
        loop {
            // The upstream's own state first: no key is taken while it is down, and a new
            // request waits out an account-wide backoff without an upstream call.
            let first = budget.tried.is_empty();
            if let Err(refusal) = self.health.admit(Instant::now(), first) {
                return Err(refused(refusal));
            }
            let mut lease = self.lease(budget).await?;
            lease.charge_tokens(req.token_estimate());
            budget.start(lease.id());
            let key = lease.id().clone();
            let span = trace::attempt_span(&ctx.span, &key, req.model(), attempts.0.len() + 1);
            let started = Instant::now();
            let attempt = Try {
                lease,
                attempts: &mut *attempts,
                first_byte_at: (Instant::now() + self.timeouts.first_byte).min(budget.deadline.at),
                idle: self.timeouts.idle,
                deadline: budget.deadline,
                health: &self.health,
                pool: &self.pool,
            };
            let result = self
                .attempt::<M>(attempt, req, ctx)
                .instrument(span.clone())
                .await;
            self.metrics.attempt(&key, started.elapsed());
            trace::attempt_done(&span, attempts.0.last(), result.is_ok());
            let (error, costs) = match result {
                Ok(output) => return Ok(output),
                Err(Failed::Final(error)) => return Err(error),
                Err(Failed::Retry(error)) => (error, true),
                Err(Failed::NextKey(error)) => (error, false),
            };
            if budget.deadline.passed() {
                return Err(budget.deadline.timeout(""));
            }
            budget.failed(costs);
            if budget.spent() {
                return Err(error);
            }
        }
    }

    /// The next key to try (none of those tried already), waiting up to the queue timeout for
    /// one to be usable.
    async fn lease(&self, budget: &Budget) -> Result<KeyLease, GatewayError> {
        const WAITING: &str = "waiting for a usable key";
        let queue_until = (Instant::now() + self.queue_timeout).min(budget.deadline.at);
        match self.pool.acquire_wait(&budget.tried, queue_until).await {
            Err(_) if budget.deadline.passed() => Err(budget.deadline.timeout(WAITING)),
            // The pool's own state says more than the last failure: when every key is
            // cooling, the client learns when to come back.
            Err(NoKey::AllRateLimited { retry_after }) => Err(GatewayError::RateLimited {
                retry_after,
                why: Some(self.pool.no_key_summary()),
            }),
            Err(NoKey::Unavailable { retry_after }) => Err(GatewayError::NoKeyAvailable {
                retry_after,
                why: self.pool.no_key_summary(),
            }),
            Ok(_) if budget.deadline.passed() => Err(budget.deadline.timeout(WAITING)),
            Ok(lease) => Ok(lease),
        }
    }

    /// One attempt on one key: send, judge, then the mode's last step.
    async fn attempt<M: Mode>(
        &self,
        mut attempt: Try<'_>,
        req: Call<'_>,
        ctx: &RequestContext,
    ) -> Result<M::Output, Failed> {
        let response = attempt.send(&self.client, req, ctx).await?;
        let response = attempt.judge(response).await?;
        M::finish(attempt, response, req).await
    }
}

/// What a request sends upstream: a chat completion, or a forwarded endpoint's body. Every
/// step of an attempt is the same for both but the request's line and head
/// ([`Try::send`]) and how a stream's events are framed.
#[derive(Clone, Copy)]
pub(super) enum Call<'a> {
    Chat(&'a ChatRequest),
    Forward(&'a Forward),
}

impl<'a> Call<'a> {
    /// What a key's `tpm=` budget is charged up front.
    fn token_estimate(self) -> u32 {
        match self {
            Call::Chat(req) => req.token_estimate(),
            Call::Forward(req) => req.token_estimate(),
        }
    }

    /// The model asked for, for the trace (a forwarded body may name none).
    fn model(self) -> &'a str {
        match self {
            Call::Chat(req) => req.model(),
            Call::Forward(req) => req.model().unwrap_or(""),
        }
    }

    fn events(self) -> Events {
        match self {
            Call::Chat(_) => Events::Data,
            Call::Forward(f) => f.endpoint().events,
        }
    }
}

/// What a door asked for: the last step of an attempt, after a 2xx head, is where a whole
/// answer and a stream differ (the steps before are shared).
trait Mode {
    type Output;

    fn finish(
        attempt: Try<'_>,
        response: Response,
        call: Call<'_>,
    ) -> impl Future<Output = Result<Self::Output, Failed>> + Send;
}

/// [`Dispatcher::complete`]: the whole body, judged and masked.
struct Whole;

impl Mode for Whole {
    type Output = Completion;

    async fn finish(
        attempt: Try<'_>,
        response: Response,
        _: Call<'_>,
    ) -> Result<Completion, Failed> {
        attempt.read_whole(response).await
    }
}

/// [`Dispatcher::stream`]: the stream once primed; or a whole JSON answer from an upstream that
/// ignores `stream`, recast as chunks (the key not blamed).
struct Streamed;

impl Mode for Streamed {
    type Output = ChunkStream;

    async fn finish(
        attempt: Try<'_>,
        response: Response,
        call: Call<'_>,
    ) -> Result<ChunkStream, Failed> {
        if !attempt::is_json(&response) {
            let primed = stream::prime(attempt, response, call.events()).await?;
            return Ok(primed.into_chunks());
        }
        let completion = attempt.read_whole(response).await?;
        let events = match call {
            Call::Chat(_) => unstreamed::completion_to_chunks(&completion.body),
            // Another endpoint's whole answer goes out as its one event.
            Call::Forward(f) => match f.endpoint().events {
                Events::Data => vec![completion.body],
                Events::Named => vec![super::sse::named_frame(None, &completion.body)],
            },
        };
        Ok(Box::pin(futures_stream::iter(events.into_iter().map(Ok))))
    }
}

/// The client's error when the upstream's own state refuses a call.
fn refused(refusal: Refusal) -> GatewayError {
    match refusal {
        Refusal::Unreachable { cause, retry_after } => GatewayError::UpstreamUnreachable {
            cause: cause.to_string(),
            retry_after,
        },
        Refusal::AccountLimited { keys, retry_after } => GatewayError::RateLimited {
            retry_after,
            why: Some(account_limited(keys)),
        },
    }
}

/// Why the pool backs off as a whole.
fn account_limited(keys: usize) -> String {
    format!(
        "the account is rate limited ({keys} keys answered 429 within {}s; the pool backs off together)",
        RATE_WINDOW.as_secs()
    )
}

/// What one request may still spend: tries and time. Every try is counted here, so a rule on
/// which failures cost a try is a change to this type, not to the loop. The rule: a failure
/// that could repeat on any key (5xx, a timeout, a stream broken before its first byte, a 2xx
/// that is no answer) costs one of `--max-attempts`; a key's own fault (401, 403, 429, quota)
/// costs none, so every usable key gets its turn, and `keys` (every key once) bounds those.
struct Budget {
    /// The keys tried so far, each offered once per request.
    tried: Vec<Arc<str>>,
    /// Failures that could repeat on any key, so far.
    charged: u32,
    /// `--max-attempts` (at least 1).
    max: u32,
    /// Failovers after a key's own fault, so far.
    free: u32,
    /// Keys in the pool: at most this many free failovers.
    keys: u32,
    deadline: Deadline,
}

impl Budget {
    fn new(max: u32, keys: u32, deadline: Deadline) -> Self {
        Budget {
            tried: Vec::new(),
            charged: 0,
            max: max.max(1),
            free: 0,
            keys: keys.max(1),
            deadline,
        }
    }

    /// A try on `key` is about to be made.
    fn start(&mut self, key: &Arc<str>) {
        self.tried.push(key.clone());
    }

    /// The try failed; `costs` when the failure could repeat on any key.
    fn failed(&mut self, costs: bool) {
        match costs {
            true => self.charged += 1,
            false => self.free += 1,
        }
    }

    /// No try is left: the last failure goes to the client.
    fn spent(&self) -> bool {
        self.charged >= self.max || self.free >= self.keys
    }
}

/// When the request's time is up: the client's deadline, or the gateway's `total` when that
/// comes first. Its kind names the one that ends the request in the timeout error.
#[derive(Clone, Copy)]
struct Deadline {
    at: Instant,
    kind: TimeoutKind,
}

impl Deadline {
    fn of(ctx: &RequestContext, total: Instant) -> Self {
        match ctx.deadline {
            Some(at) if at < total => Deadline {
                at,
                kind: TimeoutKind::Deadline,
            },
            _ => Deadline {
                at: total,
                kind: TimeoutKind::Total,
            },
        }
    }

    fn passed(self) -> bool {
        Instant::now() >= self.at
    }

    /// The request's time ran out while `detail`.
    fn timeout(self, detail: &str) -> GatewayError {
        timeout(self.kind, detail)
    }
}

fn timeout(kind: TimeoutKind, detail: &str) -> GatewayError {
    GatewayError::Timeout {
        kind,
        detail: detail.to_owned(),
    }
}

/// An error's chain as one line (a client error's top-level message alone says little).
pub(crate) fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(max: u32, keys: u32) -> Budget {
        let deadline = Deadline {
            at: Instant::now() + Duration::from_secs(60),
            kind: TimeoutKind::Total,
        };
        Budget::new(max, keys, deadline)
    }

    #[tokio::test]
    async fn key_faults_cost_no_attempt_and_every_key_gets_its_turn() {
        // 401, 429, 500 on three keys of four with --max-attempts 3: the fourth is tried.
        let mut b = budget(3, 4);
        for costs in [false, false, true] {
            b.failed(costs);
            assert!(!b.spent());
        }
        // Key faults alone end the loop once every key had its turn.
        let mut b = budget(1, 3);
        b.failed(false);
        b.failed(false);
        assert!(!b.spent());
        b.failed(false);
        assert!(b.spent());
    }

    #[tokio::test]
    async fn failures_that_could_repeat_are_bounded_by_max_attempts() {
        let mut b = budget(2, 4);
        b.failed(true);
        assert!(!b.spent());
        b.failed(false);
        assert!(!b.spent(), "a key fault between them is free");
        b.failed(true);
        assert!(b.spent());
        // A lone key may retry itself after a transient failure, up to the budget.
        let mut b = budget(3, 1);
        b.failed(true);
        b.failed(true);
        assert!(!b.spent());
    }
}

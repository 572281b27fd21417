//! One attempt on one key, the steps every attempt shares: send the request and wait for the
//! head, judge its status (a non-2xx is read, parsed once, classified, and ends the attempt),
//! and, for a whole answer, read and judge the body. Each failure is written to the attempt
//! trail and reported on the key here, and nowhere else.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::BodyExt;
use tokio::time::{timeout_at, Instant};

use super::{describe, Call, Deadline};
use crate::chat::{
    AttemptOutcome, Attempts, Completion, GatewayError, RequestContext, TimeoutKind,
};
use crate::keys::{classify, KeyLease, KeyPool, Outcome};
use crate::upstream::client::{Response, UpstreamClient};
use crate::upstream::health::{connect_cause, Refusal, UpstreamHealth};
use crate::upstream::verdict::{self, Bad, UpstreamErrorBody};

/// Upstream error bodies are read up to this size: enough for any error JSON, bounded so a
/// misbehaving upstream cannot make the gateway buffer without limit.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// One try on one key: the lease it holds, the trail it writes to, and its clock.
pub(super) struct Try<'a> {
    pub lease: KeyLease,
    pub attempts: &'a mut Attempts,
    /// When the response head, and on a stream its first event, must have arrived.
    pub first_byte_at: Instant,
    /// Longest silence between two events of a live stream.
    pub idle: Duration,
    pub deadline: Deadline,
    /// The upstream's breaker and the account-wide 429 backoff.
    pub health: &'a UpstreamHealth,
    pub pool: &'a Arc<KeyPool>,
}

/// Why one attempt failed, and whether the loop should go on.
pub(super) enum Failed {
    /// A failure that could repeat on any key (5xx, timeout, a stream broken before its first
    /// byte, a 2xx that is no answer): try another key, at the cost of one attempt. The error
    /// is what the client gets if no try succeeds.
    Retry(GatewayError),
    /// This key's own fault (401, 403, 429, quota): another key, at no cost.
    NextKey(GatewayError),
    /// Give this to the client now.
    Final(GatewayError),
}

impl Try<'_> {
    /// Step 1: the request, on this key, until the response head.
    pub async fn send(
        &mut self,
        client: &UpstreamClient,
        req: Call<'_>,
        ctx: &RequestContext,
    ) -> Result<Response, Failed> {
        let key = self.lease.secret();
        let sending = async {
            match req {
                Call::Chat(chat) => client.chat(key, chat.body().clone(), &ctx.request_id).await,
                Call::Forward(f) => client.forward(key, f, &ctx.request_id).await,
            }
        };
        match timeout_at(self.first_byte_at, sending).await {
            Ok(Ok(response)) => {
                self.health.answered();
                Ok(response)
            }
            Ok(Err(e)) if e.is_connect() => {
                // The upstream's (or the network's) outage, not the key's: its state and
                // counters stay as they are, and the upstream breaker takes it.
                let message = describe(&e);
                tracing::debug!(key = %self.lease.id(), error = %message, "upstream unreachable");
                self.attempts.push(self.lease.id(), AttemptOutcome::Connect);
                let refusal = self
                    .health
                    .unreachable(Instant::now(), &connect_cause(&message));
                Err(Failed::Final(super::refused(refusal)))
            }
            Ok(Err(e)) => {
                let message = describe(&e);
                tracing::debug!(key = %self.lease.id(), error = %message, "upstream request failed");
                Err(self.transient(AttemptOutcome::Error, None, &message))
            }
            Err(_) => Err(self.timed_out()),
        }
    }

    /// Step 2: a 2xx goes on to the mode's last step; any other status is the attempt's end.
    /// Its body (bounded) is parsed once, for the key's verdict and the client's error alike.
    pub async fn judge(&mut self, response: Response) -> Result<Response, Failed> {
        let status = response.status().as_u16();
        self.lease.pace(response.headers());
        if (200..300).contains(&status) {
            return Ok(response);
        }
        // Refused: the estimate charged to a `tpm=` budget was not spent.
        self.lease.settle_tokens(0);
        let (head, body) = response.into_parts();
        let body = read_limited(body, self.first_byte_at, ERROR_BODY_LIMIT).await;
        self.attempts
            .push(self.lease.id(), AttemptOutcome::Status(status));
        let error = UpstreamErrorBody::parse(&body);
        let outcome = classify(status, &head.headers, Some(&error));
        self.lease.report(outcome, Some(status), &error.message);
        if let Outcome::RateLimited { reset } = outcome {
            let now = Instant::now();
            let reset = reset.unwrap_or(Duration::from_secs(1));
            let usable = self.pool.usable_count();
            if let Some(until) = self
                .health
                .rate_limited(now, self.lease.id(), reset, usable)
            {
                // Most keys at once: the account's limit. The pool comes back together at
                // the earliest reset, not each key at its own.
                self.pool.cap_rate_limits(until);
                return Err(Failed::NextKey(super::refused(Refusal::AccountLimited {
                    keys: usable,
                    retry_after: until.saturating_duration_since(now),
                })));
            }
        }
        Err(self.refused(outcome, status, error))
    }

    /// The last step of a whole answer: the body, judged and masked.
    pub async fn read_whole(mut self, response: Response) -> Result<Completion, Failed> {
        let status = response.status().as_u16();
        let body = match timeout_at(self.deadline.at, response.into_body().collect()).await {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(e)) => {
                let message = format!("reading the upstream answer failed: {}", describe(&e));
                return Err(self.transient(AttemptOutcome::Error, Some(status), &message));
            }
            Err(_) => {
                return Err(Failed::Final(
                    self.deadline.timeout("reading the upstream answer"),
                ))
            }
        };
        if let Err(bad) = verdict::check_body(&body) {
            return Err(self.bad_answer(status, bad));
        }
        if self.lease.has_tpm() {
            if let Some(used) = total_tokens(&body) {
                self.lease.settle_tokens(used);
            }
        }
        self.won(status);
        let body = self.lease.mask_content(&body);
        Ok(Completion { status, body })
    }

    /// The upstream answered: the trail and the key record a success.
    pub fn won(&mut self, status: u16) {
        self.attempts
            .push(self.lease.id(), AttemptOutcome::Status(status));
        self.lease.report(Outcome::Success, Some(status), "");
    }

    /// No head (or first event) before the `first_byte` timeout.
    pub fn timed_out(&mut self) -> Failed {
        self.attempts.push(self.lease.id(), AttemptOutcome::Timeout);
        if self.first_byte_at >= self.deadline.at {
            // The request's own time is up: no key is to blame, and no retry can help.
            return Failed::Final(self.deadline.timeout("waiting for the upstream"));
        }
        let usable = self.pool.usable_count();
        if let Some(refusal) = self
            .health
            .timed_out(Instant::now(), self.lease.id(), usable)
        {
            // Every key timed out in a row: the upstream's outage, not this key's.
            return Failed::Final(super::refused(refusal));
        }
        self.lease.report(
            Outcome::Transient,
            None,
            "no response before the first_byte timeout",
        );
        Failed::Retry(super::timeout(
            TimeoutKind::FirstByte,
            "the upstream did not answer in time",
        ))
    }

    /// A failure before the first byte that says nothing about the request: it counts against
    /// the key (toward its breaker), and the request goes on to another key.
    pub fn transient(
        &mut self,
        outcome: AttemptOutcome,
        status: Option<u16>,
        message: &str,
    ) -> Failed {
        self.attempts.push(self.lease.id(), outcome);
        self.lease.report(Outcome::Transient, status, message);
        Failed::Retry(GatewayError::UpstreamUnavailable {
            status: None,
            message: self.lease.mask(message),
            retry_after: None,
        })
    }

    /// A 2xx that is no answer: the upstream (or a proxy before it) failed, not the request.
    /// It counts against the key like a 5xx, and the client gets a 502 if no other try
    /// succeeds.
    pub fn bad_answer(&mut self, status: u16, bad: Bad) -> Failed {
        let message = bad.describe(status);
        let masked = self.lease.mask(&message);
        tracing::debug!(key = %self.lease.id(), error = %masked, "the upstream's 2xx is no answer");
        self.attempts.push(self.lease.id(), AttemptOutcome::Invalid);
        self.lease
            .report(Outcome::Transient, Some(status), &message);
        Failed::Retry(GatewayError::UpstreamUnavailable {
            status: Some(502),
            message: masked,
            retry_after: None,
        })
    }

    /// What a non-2xx answer means for the request; every upstream text is masked first.
    fn refused(&self, outcome: Outcome, status: u16, error: UpstreamErrorBody) -> Failed {
        let lease = &self.lease;
        let message = lease.mask(&error.message);
        let mask = |field: Option<String>| field.map(|f| lease.mask(&f));
        match outcome {
            Outcome::CallerFault | Outcome::Success => {
                Failed::Final(GatewayError::UpstreamRejected {
                    status,
                    message,
                    error_type: mask(error.error_type),
                    param: mask(error.param),
                    code: mask(error.code),
                })
            }
            Outcome::RateLimited { reset } => Failed::NextKey(GatewayError::RateLimited {
                retry_after: reset.unwrap_or(Duration::from_secs(1)),
                why: None,
            }),
            Outcome::QuotaExhausted { .. } | Outcome::InvalidCredential => {
                Failed::NextKey(GatewayError::UpstreamUnavailable {
                    status: None,
                    message: format!(
                        "the upstream refused the gateway's key {} ({status})",
                        lease.id()
                    ),
                    retry_after: None,
                })
            }
            Outcome::Transient => Failed::Retry(GatewayError::UpstreamUnavailable {
                status: Some(status),
                message: format!("{status} from the upstream: {message}"),
                retry_after: None,
            }),
        }
    }
}

/// `usage.total_tokens` of an answer (a whole body, or one stream chunk), when it says.
pub(super) fn total_tokens(json: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Usage {
        total_tokens: u64,
    }
    #[derive(serde::Deserialize)]
    struct Answer {
        usage: Option<Usage>,
    }
    serde_json::from_slice::<Answer>(json)
        .ok()?
        .usage
        .map(|u| u.total_tokens)
}

/// Whether a 2xx answer is one JSON document rather than an event stream.
pub(super) fn is_json(response: &Response) -> bool {
    response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/json")
        })
}

/// Up to `limit` bytes of `body`, as much as arrives before `until`.
async fn read_limited(body: crate::upstream::client::Body, until: Instant, limit: usize) -> Bytes {
    let mut body = body.into_data_stream();
    let mut out = Vec::new();
    let _ = timeout_at(until, async {
        while let Some(Ok(chunk)) = body.next().await {
            let room = limit - out.len();
            out.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if out.len() >= limit {
                break;
            }
        }
    })
    .await;
    Bytes::from(out)
}

//! One key's state machine: `ready`, `cooling(until)`, `half_open`, `disabled(reason)`, plus
//! the streaks and the per-minute token bucket that drive it. Pure: every method takes `now`,
//! so unit tests drive it with a paused clock and no sleeps.
//!
//! Its fields are private: choice reads it through [`KeyState::check`] and [`KeyState::take`],
//! and every other change is a [`Transition`] applied by [`KeyState::apply`] (through the
//! store, `super::store`).
//!
//! Why this file is longer than the rest: it is one job, the machine (under 400 lines), and
//! its tests are its spec, kept beside it: one test per row of DESIGN.md's state table, per
//! transition and per race between overlapping requests.

use std::time::Duration;

use tokio::time::Instant;

use super::Outcome;
use crate::config::SchedulerSettings;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CoolCause {
    RateLimited,
    Quota,
    Breaker,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DisableCause {
    /// The upstream said the credential is invalid (401/403); the probe may re-enable it.
    InvalidCredential,
    /// An operator disabled it; only an operator enables it.
    Admin,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    Ready,
    Cooling {
        until: Instant,
        cause: CoolCause,
    },
    /// The breaker's cooldown is over: one trial request decides between ready and cooling.
    HalfOpen {
        trial_in_flight: bool,
    },
    Disabled {
        cause: DisableCause,
    },
}

/// Why a key cannot take a request right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blocked {
    Cooling {
        until: Instant,
        cause: CoolCause,
    },
    Disabled,
    /// At its concurrency limit (it frees up when a request ends; `until` is never set by
    /// the state machine itself, only by a shared store's refusal).
    AtLimit {
        until: Option<Instant>,
    },
    /// Paced: a budget is spent until `until` (its `rpm=`, its `tpm=`, or the upstream said
    /// `x-ratelimit-remaining-*: 0`). Skipped without spending a request to learn it.
    Paced {
        until: Instant,
        by: Pace,
    },
    /// A half-open trial is already in flight.
    TrialBusy,
}

/// Which budget paces a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pace {
    Rpm,
    Tpm,
    /// The upstream's own count (`x-ratelimit-remaining-requests` or `-tokens` at 0).
    Upstream,
}

/// Granted use of a key; `trial` marks the half-open trial request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket {
    pub trial: bool,
}

/// A per-minute budget (`rpm=` requests or `tpm=` tokens): `rpm` units, refilled
/// continuously. The token budget may go below zero (an answer longer than estimated): the
/// key then waits until it is positive again.
#[derive(Clone, Debug)]
pub(crate) struct Bucket {
    rpm: u32,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub(crate) fn new(per_minute: u32, now: Instant) -> Bucket {
        Bucket {
            rpm: per_minute,
            tokens: f64::from(per_minute),
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let per_sec = f64::from(self.rpm) / 60.0;
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * per_sec).min(f64::from(self.rpm));
        self.at = now;
    }

    fn next_token_at(&self) -> Instant {
        let per_sec = f64::from(self.rpm) / 60.0;
        self.at + Duration::from_secs_f64(((1.0 - self.tokens) / per_sec).max(0.0))
    }

    /// `Err(when)` while less than one unit is left.
    fn ready(&mut self, now: Instant) -> Result<(), Instant> {
        self.refill(now);
        match self.tokens < 1.0 {
            true => Err(self.next_token_at()),
            false => Ok(()),
        }
    }

    /// Spends `n` units (a negative `n` gives back what an estimate took too much).
    pub(crate) fn spend(&mut self, n: f64, now: Instant) {
        self.refill(now);
        self.tokens = (self.tokens - n).min(f64::from(self.rpm));
    }

    fn set_limit(&mut self, per_minute: u32) {
        self.rpm = per_minute;
        self.tokens = self.tokens.min(f64::from(per_minute));
    }
}

/// A change to a key's state other than choice's own `take`: the only ways into
/// [`KeyState::apply`], so that a shared store sees (and can publish) every one of them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Transition {
    /// The upstream's verdict on a request that held `ticket`; `jitter` in [0, 1) spreads
    /// backoffs (tests pass a constant).
    Outcome {
        outcome: Outcome,
        ticket: Ticket,
        jitter: f64,
    },
    /// A half-open trial ended without a verdict (the client went away).
    ReleaseTrial,
    /// An operator benches the key until an operator enables it.
    AdminDisable,
    /// An operator makes the key ready now, clearing cooldowns and streaks.
    AdminEnable,
    /// The account (not this key) is rate limited until `until`: a longer cooldown after a
    /// 429 is cut to it, so that the pool comes back together when the account does.
    CapRateLimit { until: Instant },
    /// The probe claims a key disabled as invalid whose probe is due.
    ProbeStart,
    /// The probe's verdict: did the upstream accept the credential?
    ProbeResult { ok: bool },
}

/// The part of a key's state that replicas share: its health without the local trial flag.
/// `HalfOpen` follows from time (a cooldown that is over), so it is never shared itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shared {
    Ready,
    Cooling { until: Instant, cause: CoolCause },
    HalfOpen,
    Disabled { cause: DisableCause },
}

#[derive(Clone, Debug)]
pub struct KeyState {
    health: Health,
    /// Transient failures in a row (the breaker trips at the threshold).
    transient_streak: u32,
    /// 429s in a row, for the exponential backoff when no reset time is given.
    rate_limit_streak: u32,
    /// When the key was last probed (or disabled as invalid): the next probe waits an interval.
    last_probe: Option<Instant>,
    bucket: Option<Bucket>,
    /// `tpm=`: tokens per minute, charged by estimate before the request, corrected after.
    /// Local to this replica (not shared through a store).
    token_bucket: Option<Bucket>,
    /// Until when the upstream's own budget for the key is spent (`x-ratelimit-remaining-*`
    /// at 0). Local to this replica.
    paced_until: Option<Instant>,
}

impl KeyState {
    pub fn new(rpm: Option<u32>, now: Instant) -> Self {
        KeyState {
            health: Health::Ready,
            transient_streak: 0,
            rate_limit_streak: 0,
            last_probe: None,
            bucket: rpm.map(|rpm| Bucket::new(rpm, now)),
            token_bucket: None,
            paced_until: None,
        }
    }

    pub fn health(&self) -> Health {
        self.health
    }

    /// Applies one transition. Returns whether it took effect: false for an outcome on a
    /// disabled key, a trial release with no trial in flight, a probe that is not due, and a
    /// probe result that does not bring the key back; admin transitions always take effect.
    pub fn apply(&mut self, now: Instant, transition: Transition, cfg: &SchedulerSettings) -> bool {
        match transition {
            Transition::Outcome {
                outcome,
                ticket,
                jitter,
            } => self.record(now, outcome, ticket, cfg, jitter),
            Transition::ReleaseTrial => self.release_trial(),
            Transition::AdminDisable => {
                self.health = Health::Disabled {
                    cause: DisableCause::Admin,
                };
                true
            }
            Transition::AdminEnable => {
                self.health = Health::Ready;
                self.transient_streak = 0;
                self.rate_limit_streak = 0;
                true
            }
            Transition::ProbeStart => {
                let due = self.probe_due(now, cfg.probe_interval);
                if due {
                    self.last_probe = Some(now);
                }
                due
            }
            Transition::ProbeResult { ok } => self.probe_result(ok, now),
            Transition::CapRateLimit { until } => match self.health {
                Health::Cooling {
                    until: old,
                    cause: CoolCause::RateLimited,
                } if old > until => {
                    self.health = Health::Cooling {
                        until,
                        cause: CoolCause::RateLimited,
                    };
                    true
                }
                _ => false,
            },
        }
    }

    /// The shared part of the state (see [`Shared`]).
    pub fn shared(&self) -> Shared {
        match self.health {
            Health::Ready => Shared::Ready,
            Health::Cooling { until, cause } => Shared::Cooling { until, cause },
            Health::HalfOpen { .. } => Shared::HalfOpen,
            Health::Disabled { cause } => Shared::Disabled { cause },
        }
    }

    /// Takes on a state another replica decided (merged by the store, which alone decides
    /// what moves forward). `reset` clears the streaks too, as an admin enable or a revival
    /// does. A local half-open trial stands against a cooldown that is already over.
    pub fn adopt(&mut self, shared: Shared, now: Instant, reset: bool) {
        match shared {
            Shared::Ready => self.health = Health::Ready,
            Shared::Cooling { until, .. }
                if until <= now && matches!(self.health, Health::HalfOpen { .. }) => {}
            Shared::Cooling { until, cause } => self.health = Health::Cooling { until, cause },
            Shared::HalfOpen => {}
            Shared::Disabled { cause } => {
                if self.health != (Health::Disabled { cause }) {
                    // The interval before the first probe starts when this replica learns of it.
                    self.last_probe = Some(now);
                }
                self.health = Health::Disabled { cause };
            }
        }
        if reset {
            self.transient_streak = 0;
            self.rate_limit_streak = 0;
        }
        self.tick(now);
    }

    /// The per-minute budget is local configuration, not a transition: every replica reads
    /// the same keys file.
    pub fn set_rpm(&mut self, rpm: Option<u32>, now: Instant) {
        match (rpm, &mut self.bucket) {
            (Some(rpm), Some(b)) => b.rpm = rpm,
            (Some(rpm), None) => self.bucket = Some(Bucket::new(rpm, now)),
            (None, _) => self.bucket = None,
        }
    }

    /// `tpm=`, like [`KeyState::set_rpm`]: configuration, kept across reloads.
    pub fn set_tpm(&mut self, tpm: Option<u32>, now: Instant) {
        match (tpm, &mut self.token_bucket) {
            (Some(tpm), Some(b)) => b.set_limit(tpm),
            (Some(tpm), None) => self.token_bucket = Some(Bucket::new(tpm, now)),
            (None, _) => self.token_bucket = None,
        }
    }

    /// Charges `tokens` (an estimate, or a correction when negative) to the `tpm=` budget.
    pub fn spend_tokens(&mut self, tokens: f64, now: Instant) {
        if let Some(bucket) = &mut self.token_bucket {
            bucket.spend(tokens, now);
        }
    }

    pub fn has_tpm(&self) -> bool {
        self.token_bucket.is_some()
    }

    /// The upstream said the key's budget is spent until `until`: skip it until then.
    pub fn pace(&mut self, until: Instant) {
        self.paced_until = Some(self.paced_until.map_or(until, |p| p.max(until)));
    }

    /// Moves expired cooldowns on, into `half_open`: one trial decides between ready and
    /// cooling again.
    pub fn tick(&mut self, now: Instant) {
        if let Health::Cooling { until, .. } = self.health {
            if now >= until {
                // Whatever benched the key, one trial request tests it before it takes full
                // traffic again: a burst at the second a Retry-After ends would just earn
                // another 429 on every request of the burst.
                self.health = Health::HalfOpen {
                    trial_in_flight: false,
                };
            }
        }
    }

    /// Whether the key could take a request now, without taking it.
    pub fn check(
        &mut self,
        now: Instant,
        in_flight: u32,
        max_concurrent: Option<u32>,
    ) -> Result<(), Blocked> {
        self.tick(now);
        match self.health {
            Health::Cooling { until, cause } => return Err(Blocked::Cooling { until, cause }),
            Health::Disabled { .. } => return Err(Blocked::Disabled),
            Health::HalfOpen {
                trial_in_flight: true,
            } => return Err(Blocked::TrialBusy),
            Health::Ready | Health::HalfOpen { .. } => {}
        }
        if max_concurrent.is_some_and(|max| in_flight >= max) {
            return Err(Blocked::AtLimit { until: None });
        }
        match self.paced_until {
            Some(until) if now < until => {
                return Err(Blocked::Paced {
                    until,
                    by: Pace::Upstream,
                })
            }
            Some(_) => self.paced_until = None,
            None => {}
        }
        if let Some(Err(until)) = self.bucket.as_mut().map(|b| b.ready(now)) {
            return Err(Blocked::Paced {
                until,
                by: Pace::Rpm,
            });
        }
        if let Some(Err(until)) = self.token_bucket.as_mut().map(|b| b.ready(now)) {
            return Err(Blocked::Paced {
                until,
                by: Pace::Tpm,
            });
        }
        Ok(())
    }

    /// Takes the key for one request if it can serve now.
    pub fn take(
        &mut self,
        now: Instant,
        in_flight: u32,
        max_concurrent: Option<u32>,
    ) -> Result<Ticket, Blocked> {
        self.check(now, in_flight, max_concurrent)?;
        if let Some(bucket) = &mut self.bucket {
            bucket.tokens -= 1.0;
        }
        if let Health::HalfOpen { .. } = self.health {
            self.health = Health::HalfOpen {
                trial_in_flight: true,
            };
            return Ok(Ticket { trial: true });
        }
        Ok(Ticket { trial: false })
    }

    /// A trial that ended without an upstream verdict (the client went away) frees the slot.
    fn release_trial(&mut self) -> bool {
        let busy = self.health
            == Health::HalfOpen {
                trial_in_flight: true,
            };
        if busy {
            self.health = Health::HalfOpen {
                trial_in_flight: false,
            };
        }
        busy
    }

    /// Applies an upstream outcome. `jitter` in [0, 1) spreads backoffs (tests pass a constant).
    fn record(
        &mut self,
        now: Instant,
        outcome: Outcome,
        ticket: Ticket,
        cfg: &SchedulerSettings,
        jitter: f64,
    ) -> bool {
        // Requests overlap: answers to requests sent earlier arrive after a later verdict.
        // A disabled key leaves that state only through the probe or an operator, and a
        // success never cuts short a cooldown the upstream asked for.
        self.tick(now);
        if let Health::Disabled { .. } = self.health {
            return false;
        }
        let next = match outcome {
            Outcome::Success => {
                self.transient_streak = 0;
                self.rate_limit_streak = 0;
                Some(Health::Ready)
            }
            // The upstream answered on its merits: the key itself is fine. Only a trial's
            // verdict changes state.
            Outcome::CallerFault => {
                self.transient_streak = 0;
                ticket.trial.then_some(Health::Ready)
            }
            Outcome::RateLimited { reset } => {
                self.rate_limit_streak = self.rate_limit_streak.saturating_add(1);
                let wait = reset.unwrap_or_else(|| backoff(cfg, self.rate_limit_streak, jitter));
                Some(Health::Cooling {
                    until: now + wait,
                    cause: CoolCause::RateLimited,
                })
            }
            Outcome::QuotaExhausted { reset } => Some(Health::Cooling {
                until: now + reset.unwrap_or(cfg.quota_bench),
                cause: CoolCause::Quota,
            }),
            Outcome::InvalidCredential => {
                self.last_probe = Some(now);
                Some(Health::Disabled {
                    cause: DisableCause::InvalidCredential,
                })
            }
            Outcome::Transient => {
                self.transient_streak = self.transient_streak.saturating_add(1);
                (ticket.trial || self.transient_streak >= cfg.breaker_threshold).then_some(
                    Health::Cooling {
                        until: now + cfg.breaker_cooldown,
                        cause: CoolCause::Breaker,
                    },
                )
            }
        };
        match (next, self.health) {
            // The upstream's own wait (Retry-After, quota) stands until it is over.
            (
                Some(Health::Ready),
                Health::Cooling {
                    cause: CoolCause::RateLimited | CoolCause::Quota,
                    ..
                },
            ) => {}
            // Of two cooldowns, the longer wins.
            (Some(Health::Cooling { until: new, .. }), Health::Cooling { until: old, .. })
                if old >= new => {}
            (Some(health), _) => self.health = health,
            (None, _) if ticket.trial => {
                self.release_trial();
            }
            (None, _) => {}
        }
        true
    }

    /// The probe's verdict on a key disabled as invalid; true when it brings the key back.
    fn probe_result(&mut self, ok: bool, now: Instant) -> bool {
        self.last_probe = Some(now);
        let revived = ok
            && self.health
                == (Health::Disabled {
                    cause: DisableCause::InvalidCredential,
                });
        if revived {
            self.health = Health::Ready;
            self.transient_streak = 0;
        }
        revived
    }

    fn probe_due(&self, now: Instant, interval: Duration) -> bool {
        self.health
            == (Health::Disabled {
                cause: DisableCause::InvalidCredential,
            })
            && self.last_probe.is_none_or(|at| now >= at + interval)
    }
}

/// Exponential backoff with equal jitter: base·2^(streak−1), capped, then in [d/2, d).
pub fn backoff(cfg: &SchedulerSettings, streak: u32, jitter: f64) -> Duration {
    let exp = streak.saturating_sub(1).min(30);
    let d = cfg
        .backoff_base
        .saturating_mul(1u32 << exp)
        .min(cfg.backoff_max);
    d / 2 + d.mul_f64(jitter.clamp(0.0, 1.0) / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn cfg() -> SchedulerSettings {
        Settings::default().scheduler
    }

    const PLAIN: Ticket = Ticket { trial: false };

    #[tokio::test(start_paused = true)]
    async fn rate_limit_cools_until_retry_after_then_ready() {
        let cfg = cfg();
        let mut s = KeyState::new(None, Instant::now());
        let t = s.take(Instant::now(), 0, None).unwrap();
        s.record(
            Instant::now(),
            Outcome::RateLimited {
                reset: Some(Duration::from_secs(2)),
            },
            t,
            &cfg,
            0.0,
        );
        assert!(matches!(
            s.check(Instant::now(), 0, None),
            Err(Blocked::Cooling {
                cause: CoolCause::RateLimited,
                ..
            })
        ));
        tokio::time::advance(Duration::from_millis(1999)).await;
        assert!(
            s.check(Instant::now(), 0, None).is_err(),
            "no request inside the Retry-After window"
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        let trial = s.take(Instant::now(), 0, None).unwrap();
        assert!(trial.trial, "one trial first");
        assert_eq!(s.take(Instant::now(), 1, None), Err(Blocked::TrialBusy));
        s.record(Instant::now(), Outcome::Success, trial, &cfg, 0.0);
        assert_eq!(s.take(Instant::now(), 0, None), Ok(PLAIN));
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_doubles_and_caps_without_reset() {
        let mut cfg = cfg();
        cfg.backoff_base = Duration::from_secs(1);
        cfg.backoff_max = Duration::from_secs(4);
        assert_eq!(backoff(&cfg, 1, 1.0), Duration::from_secs(1));
        assert_eq!(backoff(&cfg, 2, 1.0), Duration::from_secs(2));
        assert_eq!(backoff(&cfg, 3, 0.0), Duration::from_secs(2));
        assert_eq!(backoff(&cfg, 9, 1.0), Duration::from_secs(4));
        let mut s = KeyState::new(None, Instant::now());
        s.record(
            Instant::now(),
            Outcome::RateLimited { reset: None },
            PLAIN,
            &cfg,
            1.0,
        );
        s.record(
            Instant::now(),
            Outcome::RateLimited { reset: None },
            PLAIN,
            &cfg,
            1.0,
        );
        let Health::Cooling { until, .. } = s.health else {
            panic!("cooling")
        };
        assert_eq!(until - Instant::now(), Duration::from_secs(2));
        s.record(Instant::now(), Outcome::Success, PLAIN, &cfg, 1.0);
        assert_eq!(s.rate_limit_streak, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn caller_fault_leaves_key_alone() {
        let cfg = cfg();
        let mut s = KeyState::new(None, Instant::now());
        s.record(Instant::now(), Outcome::CallerFault, PLAIN, &cfg, 0.5);
        assert_eq!(s.health, Health::Ready);
    }

    #[tokio::test(start_paused = true)]
    async fn breaker_opens_after_streak_and_half_open_trial_decides() {
        let cfg = cfg();
        let mut s = KeyState::new(None, Instant::now());
        for _ in 0..cfg.breaker_threshold - 1 {
            s.record(Instant::now(), Outcome::Transient, PLAIN, &cfg, 0.5);
            assert_eq!(s.health, Health::Ready);
        }
        s.record(Instant::now(), Outcome::Transient, PLAIN, &cfg, 0.5);
        assert!(matches!(
            s.health,
            Health::Cooling {
                cause: CoolCause::Breaker,
                ..
            }
        ));
        tokio::time::advance(cfg.breaker_cooldown).await;
        let trial = s.take(Instant::now(), 0, None).unwrap();
        assert!(trial.trial);
        assert_eq!(
            s.take(Instant::now(), 1, None),
            Err(Blocked::TrialBusy),
            "one trial at a time"
        );
        s.record(Instant::now(), Outcome::Transient, trial, &cfg, 0.5);
        assert!(
            matches!(
                s.health,
                Health::Cooling {
                    cause: CoolCause::Breaker,
                    ..
                }
            ),
            "failed trial re-opens"
        );
        tokio::time::advance(cfg.breaker_cooldown).await;
        let trial = s.take(Instant::now(), 0, None).unwrap();
        s.record(Instant::now(), Outcome::Success, trial, &cfg, 0.5);
        assert_eq!(s.health, Health::Ready);
        assert_eq!(s.transient_streak, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn abandoned_trial_frees_the_slot() {
        let cfg = cfg();
        let mut s = KeyState::new(None, Instant::now());
        s.health = Health::HalfOpen {
            trial_in_flight: false,
        };
        let t = s.take(Instant::now(), 0, None).unwrap();
        assert!(t.trial);
        assert!(s.apply(Instant::now(), Transition::ReleaseTrial, &cfg));
        assert!(
            !s.apply(Instant::now(), Transition::ReleaseTrial, &cfg),
            "no trial left to release"
        );
        assert!(s.take(Instant::now(), 0, None).unwrap().trial);
    }

    #[tokio::test(start_paused = true)]
    async fn invalid_credential_waits_for_probe() {
        let mut cfg = cfg();
        cfg.probe_interval = Duration::from_secs(600);
        let mut s = KeyState::new(None, Instant::now());
        s.record(Instant::now(), Outcome::InvalidCredential, PLAIN, &cfg, 0.5);
        assert_eq!(s.check(Instant::now(), 0, None), Err(Blocked::Disabled));
        // A request that started before the 401 and succeeds late does not revive it.
        s.record(Instant::now(), Outcome::Success, PLAIN, &cfg, 0.5);
        assert_eq!(s.check(Instant::now(), 0, None), Err(Blocked::Disabled));
        let start = |s: &mut KeyState| s.apply(Instant::now(), Transition::ProbeStart, &cfg);
        assert!(
            !start(&mut s),
            "the first probe waits an interval after the 401"
        );
        tokio::time::advance(cfg.probe_interval).await;
        assert!(start(&mut s));
        assert!(!start(&mut s), "a claimed probe is not handed out twice");
        tokio::time::advance(cfg.probe_interval).await;
        let refused = Transition::ProbeResult { ok: false };
        assert!(!s.apply(Instant::now(), refused, &cfg));
        assert_eq!(s.check(Instant::now(), 0, None), Err(Blocked::Disabled));
        assert!(!start(&mut s), "a refused probe waits another interval");
        tokio::time::advance(cfg.probe_interval).await;
        assert!(start(&mut s));
        s.transient_streak = 2;
        assert!(s.apply(Instant::now(), Transition::ProbeResult { ok: true }, &cfg));
        assert_eq!((s.health, s.transient_streak), (Health::Ready, 0));
        assert!(!start(&mut s), "a ready key is not probed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_result_only_revives_a_key_disabled_as_invalid() {
        let cfg = cfg();
        let ok = Transition::ProbeResult { ok: true };
        let mut s = KeyState::new(None, Instant::now());
        s.record(
            Instant::now(),
            Outcome::QuotaExhausted { reset: None },
            PLAIN,
            &cfg,
            0.5,
        );
        assert!(!s.apply(Instant::now(), ok, &cfg));
        assert!(
            matches!(s.health, Health::Cooling { .. }),
            "a cooldown stands"
        );
        let mut s = KeyState::new(None, Instant::now());
        assert!(
            !s.apply(Instant::now(), ok, &cfg),
            "a ready key stays as it is"
        );
        assert_eq!(s.health, Health::Ready);
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_success_does_not_cut_a_cooldown_short() {
        let cfg = cfg();
        let mut s = KeyState::new(None, Instant::now());
        let a = s.take(Instant::now(), 0, None).unwrap();
        let b = s.take(Instant::now(), 1, None).unwrap();
        let retry = Outcome::RateLimited {
            reset: Some(Duration::from_secs(30)),
        };
        s.record(Instant::now(), retry, a, &cfg, 0.5);
        s.record(Instant::now(), Outcome::Success, b, &cfg, 0.5);
        assert!(
            s.check(Instant::now(), 0, None).is_err(),
            "still inside Retry-After"
        );
        // Nor does a shorter breaker cooldown replace the longer Retry-After.
        for _ in 0..cfg.breaker_threshold {
            s.record(Instant::now(), Outcome::Transient, PLAIN, &cfg, 0.5);
        }
        let Health::Cooling { until, cause } = s.health else {
            panic!("cooling")
        };
        assert_eq!(
            (until - Instant::now(), cause),
            (Duration::from_secs(30), CoolCause::RateLimited)
        );
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(s.check(Instant::now(), 0, None).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_revoked_key_returns_only_through_the_probe() {
        let cfg = cfg();
        let mut s = KeyState::new(None, Instant::now());
        s.record(Instant::now(), Outcome::InvalidCredential, PLAIN, &cfg, 0.5);
        let late = [
            Outcome::RateLimited {
                reset: Some(Duration::from_secs(1)),
            },
            Outcome::QuotaExhausted { reset: None },
            Outcome::Transient,
            Outcome::Success,
        ];
        for outcome in late {
            s.record(Instant::now(), outcome, Ticket { trial: true }, &cfg, 0.5);
        }
        tokio::time::advance(cfg.quota_bench).await;
        assert_eq!(s.check(Instant::now(), 0, None), Err(Blocked::Disabled));
    }

    #[tokio::test(start_paused = true)]
    async fn admin_disable_is_sticky() {
        let mut cfg = cfg();
        cfg.probe_interval = Duration::from_secs(1);
        let mut s = KeyState::new(None, Instant::now());
        assert!(s.apply(Instant::now(), Transition::AdminDisable, &cfg));
        assert_eq!(s.check(Instant::now(), 0, None), Err(Blocked::Disabled));
        let success = Transition::Outcome {
            outcome: Outcome::Success,
            ticket: PLAIN,
            jitter: 0.5,
        };
        assert!(!s.apply(Instant::now(), success, &cfg), "ignored");
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(
            !s.apply(Instant::now(), Transition::ProbeStart, &cfg),
            "the probe leaves an operator's decision alone"
        );
        assert!(!s.apply(Instant::now(), Transition::ProbeResult { ok: true }, &cfg));
        assert_eq!(
            s.health,
            Health::Disabled {
                cause: DisableCause::Admin
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn admin_disable_overrides_any_state_and_enable_clears_everything() {
        let cfg = cfg();
        let mut s = KeyState::new(None, Instant::now());
        let t = s.take(Instant::now(), 0, None).unwrap();
        let retry = Outcome::RateLimited {
            reset: Some(Duration::from_secs(600)),
        };
        s.record(Instant::now(), retry, t, &cfg, 0.5);
        s.record(Instant::now(), Outcome::Transient, PLAIN, &cfg, 0.5);
        assert_eq!((s.rate_limit_streak, s.transient_streak), (1, 1));
        s.apply(Instant::now(), Transition::AdminDisable, &cfg);
        assert_eq!(s.check(Instant::now(), 0, None), Err(Blocked::Disabled));
        // Enable cuts short even the upstream's own cooldown: the operator decides.
        assert!(s.apply(Instant::now(), Transition::AdminEnable, &cfg));
        assert_eq!(
            (s.health, s.rate_limit_streak, s.transient_streak),
            (Health::Ready, 0, 0)
        );
        assert_eq!(s.take(Instant::now(), 0, None), Ok(PLAIN));
        // And it brings back a key disabled as invalid without waiting for the probe.
        s.record(Instant::now(), Outcome::InvalidCredential, PLAIN, &cfg, 0.5);
        assert!(s.apply(Instant::now(), Transition::AdminEnable, &cfg));
        assert_eq!(s.check(Instant::now(), 0, None), Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn quota_benches_for_long() {
        let cfg = cfg();
        let mut s = KeyState::new(None, Instant::now());
        s.record(
            Instant::now(),
            Outcome::QuotaExhausted { reset: None },
            PLAIN,
            &cfg,
            0.5,
        );
        tokio::time::advance(cfg.quota_bench - Duration::from_secs(1)).await;
        assert!(s.check(Instant::now(), 0, None).is_err());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(s.check(Instant::now(), 0, None).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn limits_skip_the_key() {
        let mut s = KeyState::new(Some(60), Instant::now());
        assert_eq!(
            s.check(Instant::now(), 2, Some(2)),
            Err(Blocked::AtLimit { until: None })
        );
        for _ in 0..60 {
            s.take(Instant::now(), 0, None).unwrap();
        }
        let Err(Blocked::Paced {
            until: at,
            by: Pace::Rpm,
        }) = s.take(Instant::now(), 0, None)
        else {
            panic!("budget spent")
        };
        assert_eq!(at - Instant::now(), Duration::from_secs(1));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(s.take(Instant::now(), 0, None).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn tpm_charges_the_estimate_and_the_answer_corrects_it() {
        let mut s = KeyState::new(None, Instant::now());
        s.set_tpm(Some(60), Instant::now());
        // Estimate 20, answer 4, ten times over: 40 of 60 tokens spent, still usable.
        for _ in 0..10 {
            s.take(Instant::now(), 0, None).unwrap();
            s.spend_tokens(20.0, Instant::now());
            s.spend_tokens(4.0 - 20.0, Instant::now());
        }
        assert!(s.check(Instant::now(), 0, None).is_ok());
        s.spend_tokens(20.0, Instant::now());
        let Err(Blocked::Paced { until, by }) = s.check(Instant::now(), 0, None) else {
            panic!("60 tokens spent")
        };
        // At 1 token a second, one token is back after a second.
        assert_eq!(
            (by, until - Instant::now()),
            (Pace::Tpm, Duration::from_secs(1))
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(s.check(Instant::now(), 0, None).is_ok());
        s.set_tpm(None, Instant::now());
        s.spend_tokens(1000.0, Instant::now());
        assert!(
            s.check(Instant::now(), 0, None).is_ok(),
            "no tpm=, no budget"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_paced_key_is_skipped_until_its_reset() {
        let mut s = KeyState::new(None, Instant::now());
        s.pace(Instant::now() + Duration::from_secs(2));
        let Err(Blocked::Paced { by, .. }) = s.take(Instant::now(), 0, None) else {
            panic!("paced")
        };
        assert_eq!(by, Pace::Upstream);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(
            s.take(Instant::now(), 0, None),
            Ok(PLAIN),
            "no trial: it was never benched"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_account_limit_cuts_a_longer_cooldown_only() {
        let cfg = cfg();
        let mut s = KeyState::new(None, Instant::now());
        let retry = |secs| Outcome::RateLimited {
            reset: Some(Duration::from_secs(secs)),
        };
        s.record(Instant::now(), retry(60), PLAIN, &cfg, 0.5);
        let cap = Transition::CapRateLimit {
            until: Instant::now() + Duration::from_secs(2),
        };
        assert!(s.apply(Instant::now(), cap, &cfg));
        assert!(!s.apply(Instant::now(), cap, &cfg), "already as short");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(s.check(Instant::now(), 0, None).is_ok());
        // A quota bench or a breaker is the key's own: not cut.
        s.record(
            Instant::now(),
            Outcome::QuotaExhausted { reset: None },
            PLAIN,
            &cfg,
            0.5,
        );
        assert!(!s.apply(Instant::now(), cap, &cfg));
    }
}

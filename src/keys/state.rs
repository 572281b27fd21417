//! One key's state machine: `ready`, `cooling(until)`, `half_open`, `disabled(reason)`, plus
//! the streaks and the per-minute token bucket that drive it. Pure: every method takes `now`,
//! so unit tests drive it with a paused clock and no sleeps.

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
    /// At its concurrency limit, or its per-minute budget is spent until `until`.
    AtLimit {
        until: Option<Instant>,
    },
    /// A half-open trial is already in flight.
    TrialBusy,
}

/// Granted use of a key; `trial` marks the half-open trial request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket {
    pub trial: bool,
}

/// Requests-per-minute budget: `rpm` tokens, refilled continuously.
#[derive(Clone, Debug)]
struct Bucket {
    rpm: u32,
    tokens: f64,
    at: Instant,
}

impl Bucket {
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
}

#[derive(Clone, Debug)]
pub struct KeyState {
    pub health: Health,
    /// Transient failures in a row (the breaker trips at the threshold).
    pub transient_streak: u32,
    /// 429s in a row, for the exponential backoff when no reset time is given.
    pub rate_limit_streak: u32,
    pub last_probe: Option<Instant>,
    bucket: Option<Bucket>,
}

impl KeyState {
    pub fn new(rpm: Option<u32>, now: Instant) -> Self {
        KeyState {
            health: Health::Ready,
            transient_streak: 0,
            rate_limit_streak: 0,
            last_probe: None,
            bucket: rpm.map(|rpm| Bucket {
                rpm,
                tokens: f64::from(rpm),
                at: now,
            }),
        }
    }

    pub fn set_rpm(&mut self, rpm: Option<u32>, now: Instant) {
        match (rpm, &mut self.bucket) {
            (Some(rpm), Some(b)) => b.rpm = rpm,
            (Some(rpm), None) => {
                self.bucket = Some(Bucket {
                    rpm,
                    tokens: f64::from(rpm),
                    at: now,
                })
            }
            (None, _) => self.bucket = None,
        }
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
        if let Some(bucket) = &mut self.bucket {
            bucket.refill(now);
            if bucket.tokens < 1.0 {
                return Err(Blocked::AtLimit {
                    until: Some(bucket.next_token_at()),
                });
            }
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
    pub fn release_trial(&mut self) {
        if let Health::HalfOpen {
            trial_in_flight: true,
        } = self.health
        {
            self.health = Health::HalfOpen {
                trial_in_flight: false,
            };
        }
    }

    /// Applies an upstream outcome. `jitter` in [0, 1) spreads backoffs (tests pass a constant).
    pub fn record(
        &mut self,
        now: Instant,
        outcome: Outcome,
        ticket: Ticket,
        cfg: &SchedulerSettings,
        jitter: f64,
    ) {
        // Requests overlap: answers to requests sent earlier arrive after a later verdict.
        // A disabled key leaves that state only through the probe or an operator, and a
        // success never cuts short a cooldown the upstream asked for.
        self.tick(now);
        if let Health::Disabled { .. } = self.health {
            return;
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
            Outcome::QuotaExhausted => Some(Health::Cooling {
                until: now + cfg.quota_bench,
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
            (None, _) if ticket.trial => self.release_trial(),
            (None, _) => {}
        }
    }

    /// The probe's verdict on a key disabled as invalid.
    pub fn probe_result(&mut self, ok: bool, now: Instant) {
        self.last_probe = Some(now);
        if ok
            && self.health
                == (Health::Disabled {
                    cause: DisableCause::InvalidCredential,
                })
        {
            self.health = Health::Ready;
            self.transient_streak = 0;
        }
    }

    pub fn probe_due(&self, now: Instant, interval: Duration) -> bool {
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
        s.release_trial();
        assert!(s.take(Instant::now(), 0, None).unwrap().trial);
        let _ = cfg;
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
        assert!(!s.probe_due(Instant::now(), cfg.probe_interval));
        tokio::time::advance(cfg.probe_interval).await;
        assert!(s.probe_due(Instant::now(), cfg.probe_interval));
        s.probe_result(false, Instant::now());
        assert!(!s.probe_due(Instant::now(), cfg.probe_interval));
        s.probe_result(true, Instant::now());
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
            Outcome::QuotaExhausted,
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
        let cfg = cfg();
        let mut s = KeyState::new(None, Instant::now());
        s.health = Health::Disabled {
            cause: DisableCause::Admin,
        };
        s.record(Instant::now(), Outcome::Success, PLAIN, &cfg, 0.5);
        s.probe_result(true, Instant::now());
        assert_eq!(
            s.health,
            Health::Disabled {
                cause: DisableCause::Admin
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn quota_benches_for_long() {
        let cfg = cfg();
        let mut s = KeyState::new(None, Instant::now());
        s.record(Instant::now(), Outcome::QuotaExhausted, PLAIN, &cfg, 0.5);
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
        let Err(Blocked::AtLimit { until: Some(at) }) = s.take(Instant::now(), 0, None) else {
            panic!("budget spent")
        };
        assert_eq!(at - Instant::now(), Duration::from_secs(1));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(s.take(Instant::now(), 0, None).is_ok());
    }
}

//! A client's limits counted in this process: without `--redis`, and as the fallback while
//! Redis does not answer. The same rules as [`super::scripts::TAKE`]: concurrency, the
//! minute's requests, the day's tokens, the minute's tokens, all or nothing; the request's
//! token estimate is reserved and corrected when it ends.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use super::Limits;
use crate::chat::ClientLimit;

const MINUTE: Duration = Duration::from_secs(60);

/// One client's counters.
#[derive(Default)]
pub struct Counters {
    in_flight: u32,
    /// Start times of the last minute's requests.
    starts: VecDeque<Instant>,
    /// Tokens per second of the last minute: (the second's start, tokens). Signed, since a
    /// correction may take back part of a reserved estimate.
    tokens: VecDeque<(Instant, i64)>,
    /// The UTC day (days since the epoch) and the tokens spent in it.
    day: (u64, i64),
    /// With `--redis`: the UTC day and the tokens all replicas had spent in it when Redis last
    /// answered, for this replica's share of what is left while it does not.
    shared_day: (u64, u64),
}

impl Counters {
    /// Redis said the client has spent `used` tokens today (this request's estimate included).
    pub fn seen_shared_day(&mut self, today: u64, used: u64) {
        self.shared_day = (today, used);
    }

    /// The limits this replica keeps while Redis does not answer: each its share among
    /// `replicas` (at least 1 each), and of the daily budget, the share of what was left.
    pub fn share(&self, limits: &Limits, replicas: u32, today: u64) -> Limits {
        let n = u64::from(replicas.max(1));
        let part = |limit: u64| (limit / n).max(1);
        let spent = if self.shared_day.0 == today {
            self.shared_day.1
        } else {
            0
        };
        Limits {
            rpm: limits.rpm.map(|l| part(u64::from(l)) as u32),
            tpm: limits.tpm.map(part),
            max_concurrent: limits.max_concurrent.map(|l| part(u64::from(l)) as u32),
            // A budget already spent stays spent: nothing is left to share.
            daily_tokens: limits
                .daily_tokens
                .map(|l| (l.saturating_sub(spent) / n).max(u64::from(spent < l))),
        }
    }

    /// Admits a request or says which limit refused it and for how long.
    pub fn take(
        &mut self,
        limits: &Limits,
        estimate: u64,
        now: Instant,
        today: u64,
    ) -> Result<(), (ClientLimit, Option<Duration>)> {
        self.expire(now, today);
        if let Some(max) = limits.max_concurrent {
            if self.in_flight >= max {
                return Err((ClientLimit::Concurrency, Some(Duration::from_secs(1))));
            }
        }
        if let Some(rpm) = limits.rpm {
            if self.starts.len() >= rpm as usize {
                let first = self.starts.front().copied().unwrap_or(now);
                return Err((ClientLimit::Rpm, Some((first + MINUTE) - now)));
            }
        }
        if let Some(daily) = limits.daily_tokens {
            if self.day.1 >= daily as i64 {
                return Err((ClientLimit::DailyTokens, None));
            }
        }
        if let Some(tpm) = limits.tpm {
            let mut used: i64 = self.tokens.iter().map(|(_, n)| n).sum();
            if used >= tpm as i64 {
                let mut wait = Duration::from_secs(1);
                for (at, n) in &self.tokens {
                    used -= n;
                    if used < tpm as i64 {
                        wait =
                            (*at + MINUTE + Duration::from_secs(1)).saturating_duration_since(now);
                        break;
                    }
                }
                return Err((ClientLimit::Tpm, Some(wait.max(Duration::from_millis(1)))));
            }
        }
        if limits.max_concurrent.is_some() {
            self.in_flight += 1;
        }
        if limits.rpm.is_some() {
            self.starts.push_back(now);
        }
        self.charge(limits, estimate as i64, now, today);
        Ok(())
    }

    /// A request admitted by [`Counters::take`] ended having spent `delta` tokens more (or
    /// fewer) than reserved.
    pub fn settle(&mut self, limits: &Limits, delta: i64, now: Instant, today: u64) {
        if limits.max_concurrent.is_some() {
            self.in_flight = self.in_flight.saturating_sub(1);
        }
        self.expire(now, today);
        self.charge(limits, delta, now, today);
    }

    fn charge(&mut self, limits: &Limits, tokens: i64, now: Instant, today: u64) {
        if tokens == 0 {
            return;
        }
        if limits.tpm.is_some() {
            match self.tokens.back_mut() {
                Some((at, n)) if now.duration_since(*at) < Duration::from_secs(1) => *n += tokens,
                _ => self.tokens.push_back((now, tokens)),
            }
        }
        if limits.daily_tokens.is_some() && self.day.0 == today {
            self.day.1 += tokens;
        }
    }

    fn expire(&mut self, now: Instant, today: u64) {
        while self
            .starts
            .front()
            .is_some_and(|at| now.duration_since(*at) >= MINUTE)
        {
            self.starts.pop_front();
        }
        while self
            .tokens
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) >= MINUTE)
        {
            self.tokens.pop_front();
        }
        if self.day.0 != today {
            self.day = (today, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            rpm: Some(2),
            tpm: Some(100),
            max_concurrent: Some(1),
            daily_tokens: Some(150),
        }
    }

    #[test]
    fn each_limit_refuses_and_the_window_refills() {
        let l = limits();
        let mut c = Counters::default();
        let t0 = Instant::now();
        c.take(&l, 10, t0, 1).unwrap();
        assert_eq!(
            c.take(&l, 10, t0, 1).unwrap_err().0,
            ClientLimit::Concurrency
        );
        c.settle(&l, 50, t0, 1); // 60 spent
        c.take(&l, 10, t0, 1).unwrap();
        c.settle(&l, 40, t0, 1); // 110 spent: over tpm
        let (limit, _) = c.take(&l, 10, t0, 1).unwrap_err();
        assert_eq!(limit, ClientLimit::Rpm);
        let t1 = t0 + Duration::from_secs(61);
        // A new minute: rpm and tpm refill; the day keeps its 110.
        c.take(&l, 10, t1, 1).unwrap();
        c.settle(&l, 40, t1, 1); // 160 today
        let (limit, wait) = c.take(&l, 10, t1, 1).unwrap_err();
        assert_eq!((limit, wait), (ClientLimit::DailyTokens, None));
        // The next day.
        c.take(&l, 10, t1, 2).unwrap();
    }

    #[test]
    fn tpm_says_when_enough_tokens_leave_the_window() {
        let l = Limits {
            tpm: Some(100),
            ..Limits::default()
        };
        let mut c = Counters::default();
        let t0 = Instant::now();
        c.take(&l, 100, t0, 1).unwrap();
        let (limit, wait) = c.take(&l, 1, t0 + Duration::from_secs(30), 1).unwrap_err();
        assert_eq!(limit, ClientLimit::Tpm);
        let wait = wait.unwrap();
        assert!(
            wait > Duration::from_secs(29) && wait <= Duration::from_secs(31),
            "{wait:?}"
        );
    }

    #[test]
    fn the_share_while_redis_is_down() {
        let l = limits();
        let mut c = Counters::default();
        assert_eq!(
            c.share(&l, 2, 1),
            Limits {
                rpm: Some(1),
                tpm: Some(50),
                max_concurrent: Some(1),
                daily_tokens: Some(75)
            }
        );
        c.seen_shared_day(1, 100);
        assert_eq!(c.share(&l, 2, 1).daily_tokens, Some(25));
        // Yesterday's count says nothing of today.
        assert_eq!(c.share(&l, 2, 2).daily_tokens, Some(75));
        c.seen_shared_day(1, 150);
        let spent = c.share(&l, 3, 1);
        assert_eq!(spent.daily_tokens, Some(0));
        assert_eq!(
            c.take(&spent, 1, Instant::now(), 1).unwrap_err().0,
            ClientLimit::DailyTokens
        );
        assert_eq!(c.share(&Limits::default(), 4, 1), Limits::default());
    }
}

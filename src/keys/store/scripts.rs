//! The Redis side of the shared store: the record a key's shared state is written as, and the
//! Lua scripts that change records and take limits atomically (each one round trip, with the
//! server's clock for anything time-based except a cooldown's end, which is the upstream's
//! wall-clock time as the replica that saw it computed it).
//!
//! Keys (all under the prefix `P`; `F` is a key's keyed fingerprint):
//! - `P:key:F`: hash `v` (version), `s` (`r` ready, `c` cooling, `d` disabled), `c` (cause),
//!   `u` (cooldown end, unix ms); expires when no longer needed (a cooldown a minute after its
//!   end, ready after ten minutes, invalid after a day; an admin disable stays).
//! - `P:version`: the counter every accepted write takes its version from.
//! - `P:events`: the channel each accepted write is published on, as
//!   `F v s c u origin at_ms` (`at_ms`: when the origin replica saw the change).
//! - `P:trial:F`: the replica holding the key's half-open trial (`SET NX PX`).
//! - `P:rpm:F`: sorted set of the last minute's requests (a sliding window, exact).
//! - `P:conc:F`: sorted set of concurrency leases, scored by their expiry (server ms).
//! - `P:probe:F`: the replica probing the key this interval (`SET NX PX`).
//! - `P:replicas`: sorted set of replica ids by last heartbeat, for the local share of
//!   limits while Redis is down.

use super::super::state::{CoolCause, DisableCause};

/// Why a key is ready, as far as merging goes: only an operator or the probe may bring back
/// a disabled key, and only an operator may cut short a cooldown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadyCause {
    /// A verdict (a success, a trial's success).
    Ok,
    Admin,
    Probe,
}

/// A key's shared state as Redis holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Ready(ReadyCause),
    Cooling { until_ms: u64, cause: CoolCause },
    Disabled(DisableCause),
}

impl Kind {
    /// `(s, c, u)` as the record's fields.
    pub fn fields(self) -> (&'static str, &'static str, u64) {
        match self {
            Kind::Ready(c) => (
                "r",
                match c {
                    ReadyCause::Ok => "ok",
                    ReadyCause::Admin => "admin",
                    ReadyCause::Probe => "probe",
                },
                0,
            ),
            Kind::Cooling { until_ms, cause } => (
                "c",
                match cause {
                    CoolCause::RateLimited => "rate",
                    CoolCause::Quota => "quota",
                    CoolCause::Breaker => "breaker",
                },
                until_ms,
            ),
            Kind::Disabled(c) => (
                "d",
                match c {
                    DisableCause::InvalidCredential => "invalid",
                    DisableCause::Admin => "admin",
                },
                0,
            ),
        }
    }

    pub fn parse(s: &str, c: &str, u: &str) -> Option<Kind> {
        Some(match (s, c) {
            ("r", "ok") => Kind::Ready(ReadyCause::Ok),
            ("r", "admin") => Kind::Ready(ReadyCause::Admin),
            ("r", "probe") => Kind::Ready(ReadyCause::Probe),
            ("c", cause) => Kind::Cooling {
                until_ms: u.parse().ok()?,
                cause: match cause {
                    "rate" => CoolCause::RateLimited,
                    "quota" => CoolCause::Quota,
                    "breaker" => CoolCause::Breaker,
                    _ => return None,
                },
            },
            ("d", "invalid") => Kind::Disabled(DisableCause::InvalidCredential),
            ("d", "admin") => Kind::Disabled(DisableCause::Admin),
            _ => return None,
        })
    }

    /// An operator's decision: it wins over anything.
    pub fn is_admin(self) -> bool {
        matches!(
            self,
            Kind::Ready(ReadyCause::Admin) | Kind::Disabled(DisableCause::Admin)
        )
    }
}

/// One versioned record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    pub version: u64,
    pub kind: Kind,
}

/// Writes a key's new shared state if it moves forward, and publishes it, atomically.
///
/// KEYS: record, version counter, trial. ARGV: s, c, u, based (the version the writer had
/// merged when it decided), known (the highest version the writer has seen anywhere, so a
/// restarted Redis's counter resumes above it), channel, fingerprint, origin, at_ms.
/// Returns `{accepted, v, s, c, u}` as strings: the record as it now stands.
///
/// Forward only: an operator's decision always wins; a disabled key comes back only by an
/// operator or by the probe (from invalid); of two cooldowns the later end wins; a verdict
/// making the key ready stands only once the cooldown is over, or when its writer had seen the
/// current record (so a late success cannot undo a 429 another replica published meanwhile).
pub const PUBLISH: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cur = redis.call('HMGET', KEYS[1], 'v', 's', 'c', 'u')
local cv = tonumber(cur[1]) or 0
local cs, cc, cu = cur[2], cur[3], tonumber(cur[4]) or 0
local s, c, u, based = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local accept
if c == 'admin' then accept = true
elseif not cs then accept = true
elseif cs == 'd' then accept = (cc == 'invalid' and s == 'r' and c == 'probe')
elseif s == 'd' then accept = true
elseif s == 'c' then accept = not (cs == 'c' and cu >= u)
elseif c == 'probe' then accept = false
else accept = (cs == 'r') or (cs == 'c' and cu <= now) or based >= cv end
if not accept then
  return {'0', tostring(cv), cs or '', cc or '', tostring(cu)}
end
local v = redis.call('INCR', KEYS[2])
local known = tonumber(ARGV[5])
if v <= known then
  v = known + 1
  redis.call('SET', KEYS[2], v)
end
redis.call('HSET', KEYS[1], 'v', v, 's', s, 'c', c, 'u', u)
if s == 'c' then
  redis.call('PEXPIRE', KEYS[1], math.max(u - now, 0) + 60000)
elseif s == 'r' then
  redis.call('PEXPIRE', KEYS[1], 600000)
elseif c == 'invalid' then
  redis.call('PEXPIRE', KEYS[1], 86400000)
else
  redis.call('PERSIST', KEYS[1])
end
redis.call('DEL', KEYS[3])
redis.call('PUBLISH', ARGV[6], table.concat({ARGV[7], v, s, c, u, ARGV[8], ARGV[9]}, ' '))
return {'1', tostring(v), s, c, tostring(u)}
"#;

/// Takes what a request needs from the shared store, all or nothing: the half-open trial
/// (when `trial`), a place in the minute's window (when `rpm` > 0) and a concurrency lease
/// (when `max` > 0).
///
/// KEYS: trial, rpm window, leases. ARGV: trial (0/1), replica, trial ttl ms, rpm, max, lease
/// id, lease ttl ms. Returns `{granted, retry_ms}` (`retry_ms` -1 when unknown).
pub const TAKE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local trial = ARGV[1] == '1'
if trial then
  if not redis.call('SET', KEYS[1], ARGV[2], 'NX', 'PX', ARGV[3]) then
    if redis.call('GET', KEYS[1]) ~= ARGV[2] then
      return {0, redis.call('PTTL', KEYS[1])}
    end
  end
end
local function refuse(ms)
  if trial then redis.call('DEL', KEYS[1]) end
  return {0, ms}
end
local rpm, max = tonumber(ARGV[4]), tonumber(ARGV[5])
if max > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if redis.call('ZCARD', KEYS[3]) >= max then return refuse(-1) end
end
if rpm > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - 60000)
  if redis.call('ZCARD', KEYS[2]) >= rpm then
    local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
    return refuse(math.max(tonumber(first[2]) + 60000 - now, 1))
  end
  redis.call('ZADD', KEYS[2], now, ARGV[6])
  redis.call('PEXPIRE', KEYS[2], 61000)
end
if max > 0 then
  local ttl = tonumber(ARGV[7])
  redis.call('ZADD', KEYS[3], now + ttl, ARGV[6])
  redis.call('PEXPIRE', KEYS[3], ttl * 2)
end
return {1, 0}
"#;

/// Renews a concurrency lease while its request runs. KEYS: leases. ARGV: lease id, ttl ms.
pub const RENEW: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], 'XX', now + ttl, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl * 2)
return 1
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_through_its_fields() {
        let kinds = [
            Kind::Ready(ReadyCause::Ok),
            Kind::Ready(ReadyCause::Admin),
            Kind::Ready(ReadyCause::Probe),
            Kind::Cooling {
                until_ms: 1234,
                cause: CoolCause::RateLimited,
            },
            Kind::Cooling {
                until_ms: 5,
                cause: CoolCause::Quota,
            },
            Kind::Cooling {
                until_ms: 6,
                cause: CoolCause::Breaker,
            },
            Kind::Disabled(DisableCause::InvalidCredential),
            Kind::Disabled(DisableCause::Admin),
        ];
        for kind in kinds {
            let (s, c, u) = kind.fields();
            assert_eq!(Kind::parse(s, c, &u.to_string()), Some(kind));
        }
        assert_eq!(Kind::parse("x", "ok", "0"), None);
    }
}

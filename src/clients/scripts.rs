//! The Lua scripts that hold client limits across replicas (`--redis`): each is one round trip
//! and uses the server's clock, so replicas with skewed clocks share one window.
//!
//! Keys (under the prefix `P`; `C` is the client's name, or its token's fingerprint):
//! - `P:client:C:rpm`: sorted set of the last minute's requests (a sliding window, exact).
//! - `P:client:C:conc`: sorted set of requests in flight, scored by their lease's expiry, so a
//!   replica that dies mid-request frees its places when the lease runs out.
//! - `P:client:C:tpm`: hash of tokens per second (unix seconds → tokens) over the last minute.
//! - `P:client:C:day:YYYYMMDD`: tokens spent that UTC day.
//! - `P:usage:total`, `P:usage:day:YYYYMMDD`: usage totals of every replica, hash fields
//!   `client|model|key|type` (written by the usage writer, read by `/admin/usage`).

/// Admits a request, all or nothing: a concurrency place, a place in the minute's window, and
/// the day's and the minute's token budgets not yet spent; then reserves the request's token
/// estimate in both (corrected by [`SETTLE`] once the upstream says).
///
/// KEYS: rpm, conc, tpm, day. ARGV: rpm, max_concurrent, tpm, daily (0 = none), lease id,
/// lease ttl ms, estimate. Returns `{granted, limit, retry_ms, day_used}` (`retry_ms` -1 when
/// the caller knows better, as for the day's end; `day_used`: the day's tokens with this
/// request's estimate, kept by the replica for its share of the budget should Redis go away).
pub const TAKE: &str = r#"
local t = redis.call('TIME')
local sec = tonumber(t[1])
local now = sec * 1000 + math.floor(tonumber(t[2]) / 1000)
local rpm, max, tpm, daily = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local est = tonumber(ARGV[7])
if max > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if redis.call('ZCARD', KEYS[2]) >= max then return {0, 'max_concurrent', 1000, 0} end
end
if rpm > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 60000)
  if redis.call('ZCARD', KEYS[1]) >= rpm then
    local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    return {0, 'rpm', math.max(tonumber(first[2]) + 60000 - now, 1), 0}
  end
end
if daily > 0 then
  local used = tonumber(redis.call('GET', KEYS[4]) or '0')
  if used >= daily then return {0, 'daily_tokens', -1, used} end
end
if tpm > 0 then
  local all = redis.call('HGETALL', KEYS[3])
  local used = 0
  local buckets = {}
  for i = 1, #all, 2 do
    local s = tonumber(all[i])
    if s <= sec - 60 then
      redis.call('HDEL', KEYS[3], all[i])
    else
      used = used + tonumber(all[i + 1])
      table.insert(buckets, {s, tonumber(all[i + 1])})
    end
  end
  if used >= tpm then
    table.sort(buckets, function(a, b) return a[1] < b[1] end)
    local wait = 1000
    for _, b in ipairs(buckets) do
      used = used - b[2]
      if used < tpm then
        wait = math.max((b[1] + 61) * 1000 - now, 1)
        break
      end
    end
    return {0, 'tpm', wait, 0}
  end
end
if rpm > 0 then
  redis.call('ZADD', KEYS[1], now, ARGV[5])
  redis.call('PEXPIRE', KEYS[1], 61000)
end
if max > 0 then
  local ttl = tonumber(ARGV[6])
  redis.call('ZADD', KEYS[2], now + ttl, ARGV[5])
  redis.call('PEXPIRE', KEYS[2], ttl * 2)
end
if tpm > 0 and est > 0 then
  redis.call('HINCRBY', KEYS[3], sec, est)
  redis.call('EXPIRE', KEYS[3], 120)
end
local day_used = 0
if daily > 0 then
  if est > 0 then
    day_used = redis.call('INCRBY', KEYS[4], est)
    redis.call('EXPIRE', KEYS[4], 172800)
  else
    day_used = tonumber(redis.call('GET', KEYS[4]) or '0')
  end
end
return {1, '', 0, day_used}
"#;

/// A request's end: frees its concurrency place and corrects the reserved estimate by what
/// the request really spent (`delta`, negative when the estimate was high).
///
/// KEYS: conc, tpm, day. ARGV: lease id, delta, tpm (0/1), daily (0/1).
pub const SETTLE: &str = r#"
local t = redis.call('TIME')
local sec = tonumber(t[1])
redis.call('ZREM', KEYS[1], ARGV[1])
local d = tonumber(ARGV[2])
if d ~= 0 then
  if ARGV[3] == '1' then
    redis.call('HINCRBY', KEYS[2], sec, d)
    redis.call('EXPIRE', KEYS[2], 120)
  end
  if ARGV[4] == '1' then
    redis.call('INCRBY', KEYS[3], d)
    redis.call('EXPIRE', KEYS[3], 172800)
  end
end
return 1
"#;

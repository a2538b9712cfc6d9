-- Settlement (or release) of one admitted request: the real usage replaces the estimate and the
-- slot is freed. Safe to replay: a request id settles once (tombstones in KEYS[6]).
-- KEYS: 1 slots, 2 reservations, 3 token buckets, 4 spend of the current period, 5 settled ids
-- ARGV: 1 rid, 2 tokens, 3 cost, 4 spend key ttl s, 5 window s
-- Returns 1 settled a reservation, 0 charged without one (expired or admitted locally), 2 replay
local t = redis.call('TIME')
local now_s = tonumber(t[1])
local now_ms = now_s * 1000 + math.floor(tonumber(t[2]) / 1000)
local rid = ARGV[1]
local tokens = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local spend_ttl = tonumber(ARGV[4])
local window = tonumber(ARGV[5])

redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now_ms - 3600 * 1000)
if redis.call('ZSCORE', KEYS[5], rid) then return 2 end
redis.call('ZADD', KEYS[5], now_ms, rid)
redis.call('EXPIRE', KEYS[5], 3600)
redis.call('ZREM', KEYS[1], rid)

local d = redis.call('HGET', KEYS[2], rid)
if not d then
  if cost > 0 then
    redis.call('HINCRBYFLOAT', KEYS[4], 'spent', cost)
    redis.call('EXPIRE', KEYS[4], spend_ttl)
  end
  if tokens > 0 then
    redis.call('HINCRBY', KEYS[3], now_s, tokens)
    redis.call('EXPIRE', KEYS[3], window * 2)
  end
  return 0
end
redis.call('HDEL', KEYS[2], rid)
local sec, est_tokens, est_cost, skey = string.match(d, '^([^|]*)|([^|]*)|([^|]*)|(.*)$')
sec = tonumber(sec)
est_tokens = tonumber(est_tokens)
est_cost = tonumber(est_cost)
if est_cost ~= 0 then
  local left = tonumber(redis.call('HINCRBYFLOAT', skey, 'reserved', -est_cost))
  if left < 1e-9 then redis.call('HSET', skey, 'reserved', 0) end
end
if cost > 0 then
  redis.call('HINCRBYFLOAT', skey, 'spent', cost)
end
local delta = tokens - est_tokens
if delta ~= 0 then
  if sec >= now_s - window + 1 then
    local v = tonumber(redis.call('HGET', KEYS[3], sec) or '0') + delta
    if v < 0 then v = 0 end
    redis.call('HSET', KEYS[3], sec, v)
  elseif delta > 0 then
    redis.call('HINCRBY', KEYS[3], now_s, delta)
  end
  redis.call('EXPIRE', KEYS[3], window * 2)
end
return 1

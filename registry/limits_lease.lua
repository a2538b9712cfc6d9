-- Heartbeat of one gateway process: announce it, count the live ones, extend the leases of the
-- requests it still holds (see registry/limits.py).
-- KEYS: 1 gateways (zset process id -> expiry ms), then per tenant with held requests: its slots
--       and its reservations
-- ARGV: 1 process id, 2 heartbeat ttl ms, 3 lease ms, then per tenant: a count n and n ids
-- Returns the number of live gateway processes (this one included)
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease_ms = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 4)
local i = 4
for k = 2, #KEYS, 2 do
  local n = tonumber(ARGV[i])
  for j = 1, n do
    redis.call('ZADD', KEYS[k], 'XX', now_ms + lease_ms, ARGV[i + j])
  end
  i = i + n + 1
  redis.call('PEXPIRE', KEYS[k], lease_ms * 2)
  redis.call('PEXPIRE', KEYS[k + 1], lease_ms * 2)
end
return redis.call('ZCARD', KEYS[1])

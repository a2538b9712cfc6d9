-- Read-only view of a tenant's usage for the admin API and metrics (see registry/limits.py).
-- KEYS: 1 slots, 2 request buckets, 3 token buckets, 4 spend of the current period
-- ARGV: 1 window s
-- Returns {in_flight, requests_used, tokens_used, spent, reserved}
local t = redis.call('TIME')
local now_s = tonumber(t[1])
local now_ms = now_s * 1000 + math.floor(tonumber(t[2]) / 1000)
local horizon = now_s - tonumber(ARGV[1]) + 1
local function window_sum(key)
  local flat = redis.call('HGETALL', key)
  local total = 0
  for i = 1, #flat, 2 do
    if tonumber(flat[i]) >= horizon then total = total + tonumber(flat[i + 1]) end
  end
  return total
end
return {redis.call('ZCOUNT', KEYS[1], '(' .. now_ms, '+inf'), window_sum(KEYS[2]),
        window_sum(KEYS[3]), redis.call('HGET', KEYS[4], 'spent') or '0',
        redis.call('HGET', KEYS[4], 'reserved') or '0'}

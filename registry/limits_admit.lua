-- Admission of one request against a tenant's limits, atomically (see registry/limits.py).
-- KEYS: 1 slots (zset rid -> lease expiry ms), 2 reservations (hash rid -> "sec|tokens|cost|spendkey"),
--       3 request buckets (hash second -> count), 4 token buckets (hash second -> tokens),
--       5 spend of the current period (hash: spent, reserved)
-- ARGV: 1 rid, 2 lease_ms, 3 max_concurrency (0 = none), 4 requests/window (0 = none),
--       5 tokens/window (0 = none), 6 estimated tokens, 7 budget (< 0 = none), 8 estimated cost,
--       9 spend key ttl s, 10 seconds until the budget period resets, 11 window s,
--       12 requests the caller holds outside Redis (admitted by its local fallback)
-- Returns {ok(1|0), code, retry_after_s, requests_used, requests_reset_s, tokens_used,
--          tokens_reset_s, spent, reserved, in_flight}
local t = redis.call('TIME')
local now_s = tonumber(t[1])
local now_ms = now_s * 1000 + math.floor(tonumber(t[2]) / 1000)
local rid = ARGV[1]
local lease_ms = tonumber(ARGV[2])
local max_conc = tonumber(ARGV[3])
local rpm = tonumber(ARGV[4])
local tpm = tonumber(ARGV[5])
local est_tokens = tonumber(ARGV[6])
local budget = tonumber(ARGV[7])
local est_cost = tonumber(ARGV[8])
local spend_ttl = tonumber(ARGV[9])
local period_reset = tonumber(ARGV[10])
local window = tonumber(ARGV[11])
local outside = tonumber(ARGV[12] or '0')
local horizon = now_s - window + 1

local function split(d)
  local sec, tok, cost, skey = string.match(d, '^([^|]*)|([^|]*)|([^|]*)|(.*)$')
  return tonumber(sec), tonumber(tok), tonumber(cost), skey
end

local function unreserve(skey, cost)
  if cost ~= 0 then
    local left = tonumber(redis.call('HINCRBYFLOAT', skey, 'reserved', -cost))
    if left < 1e-9 then redis.call('HSET', skey, 'reserved', 0) end
  end
end

-- Leases past their expiry belong to a process that died: free the slot and the reserved
-- estimate. The tokens stay counted in their bucket; nothing is charged to the spend.
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms)
for _, id in ipairs(expired) do
  local d = redis.call('HGET', KEYS[2], id)
  if d then
    local _, _, cost, skey = split(d)
    unreserve(skey, cost)
    redis.call('HDEL', KEYS[2], id)
  end
  redis.call('ZREM', KEYS[1], id)
end

-- One pass over a window's buckets: the total inside the window and its oldest second (expired
-- buckets are dropped on the way). No tables per bucket and no sort: this runs on every admission.
local function window_sum(key)
  local flat = redis.call('HGETALL', key)
  local total = 0
  local oldest = nil
  for i = 1, #flat, 2 do
    local sec = tonumber(flat[i])
    if sec < horizon then
      redis.call('HDEL', key, flat[i])
    else
      local v = tonumber(flat[i + 1])
      if v > 0 then
        total = total + v
        if oldest == nil or sec < oldest then oldest = sec end
      end
    end
  end
  return total, flat, oldest
end

-- Seconds until enough of the oldest buckets leave the window for `need` more to fit (refusals
-- only: the buckets are sorted here, not on the admission path).
local function wait_for(flat, total, need, limit)
  local buckets = {}
  for i = 1, #flat, 2 do
    local sec = tonumber(flat[i])
    local v = tonumber(flat[i + 1])
    if sec >= horizon and v > 0 then buckets[#buckets + 1] = {sec, v} end
  end
  table.sort(buckets, function(a, b) return a[1] < b[1] end)
  local freed = 0
  for _, b in ipairs(buckets) do
    freed = freed + b[2]
    if total - freed + need <= limit then return b[1] + window - now_s end
  end
  return window
end

local function reset_of(oldest)
  if oldest == nil then return 0 end
  return oldest + window - now_s
end

local req_used, req_flat, req_oldest = window_sum(KEYS[3])
local tok_used, tok_flat, tok_oldest = window_sum(KEYS[4])
local spent = tonumber(redis.call('HGET', KEYS[5], 'spent') or '0')
local reserved = tonumber(redis.call('HGET', KEYS[5], 'reserved') or '0')
local in_flight = redis.call('ZCARD', KEYS[1])

local function answer(ok, code, retry)
  return {ok, code, retry, req_used, reset_of(req_oldest), tok_used, reset_of(tok_oldest),
          tostring(spent), tostring(reserved), in_flight}
end

if redis.call('HEXISTS', KEYS[2], rid) == 1 then
  return answer(1, '', 0)  -- the same request admitted twice (a retried call): hold one slot
end
if max_conc > 0 and in_flight + outside >= max_conc then
  return answer(0, 'concurrency_limited', 1)
end
if rpm > 0 and req_used + 1 > rpm then
  return answer(0, 'rate_limited', wait_for(req_flat, req_used, 1, rpm))
end
if tpm > 0 and tok_used + est_tokens > tpm then
  if est_tokens > tpm then return answer(0, 'rate_limited', window) end
  return answer(0, 'rate_limited', wait_for(tok_flat, tok_used, est_tokens, tpm))
end
if budget >= 0 and spent + reserved + est_cost > budget then
  return answer(0, 'budget_exceeded', period_reset)
end

redis.call('ZADD', KEYS[1], now_ms + lease_ms, rid)
redis.call('PEXPIRE', KEYS[1], lease_ms * 2)
redis.call('HSET', KEYS[2], rid, now_s .. '|' .. est_tokens .. '|' .. ARGV[8] .. '|' .. KEYS[5])
redis.call('PEXPIRE', KEYS[2], lease_ms * 2)
redis.call('HINCRBY', KEYS[3], now_s, 1)
redis.call('EXPIRE', KEYS[3], window * 2)
if est_tokens > 0 then
  redis.call('HINCRBY', KEYS[4], now_s, est_tokens)
  redis.call('EXPIRE', KEYS[4], window * 2)
end
if est_cost > 0 then
  reserved = tonumber(redis.call('HINCRBYFLOAT', KEYS[5], 'reserved', est_cost))
end
redis.call('EXPIRE', KEYS[5], spend_ttl)
req_used = req_used + 1
tok_used = tok_used + est_tokens
in_flight = in_flight + 1
if req_oldest == nil then req_oldest = now_s end
if tok_oldest == nil and est_tokens > 0 then tok_oldest = now_s end
return answer(1, '', 0)

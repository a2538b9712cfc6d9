-- One gateway's canary windows for one alias: publish them under a lease, read the live ones.
-- KEYS: 1 the alias's fleet hash (process id -> "<expiry ms>|<payload>")
-- ARGV: 1 process id, 2 lease ms, 3 payload ("" to read only)
-- Returns the payloads of every process whose lease has not lapsed (this one included); lapsed
-- fields are deleted, so a dead gateway's numbers leave the sum when its lease ends.
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease_ms = tonumber(ARGV[2])
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[1], ARGV[1], tostring(now_ms + lease_ms) .. '|' .. ARGV[3])
  redis.call('PEXPIRE', KEYS[1], lease_ms * 4)
end
local out = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local value = all[i + 1]
  local bar = string.find(value, '|', 1, true)
  local expiry = bar and tonumber(string.sub(value, 1, bar - 1)) or 0
  if expiry < now_ms then
    redis.call('HDEL', KEYS[1], all[i])
  else
    out[#out + 1] = string.sub(value, bar + 1)
  end
end
return out

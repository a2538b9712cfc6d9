-- One guarded registry write: check preconditions, write, bump the epoch, audit, publish.
-- Atomic because Redis runs a script to completion; a failed check returns before any write.
--
-- KEYS[1] epoch counter   KEYS[2] audit stream   KEYS[3] per-tenant audit stream (if ARGV[4] == '1')
-- KEYS[4] audit chain head (the hash of the newest entry)
-- KEYS[5..] the hashes the spec refers to by index
--
-- The audit chain: every entry carries `prev` (the previous entry's hash, '' for the first) and
-- `hash` = SHA-1 over the entry's fields in order, each name and value as <length>:<bytes>
-- (registry/auditchain.py recomputes it). SHA-1 because it is what Redis Lua offers; the chain
-- detects edits, deletions and gaps, not a writer who rewrites every later entry too.
-- ARGV[1] spec (JSON):
--   checks  [{kind = absent|present|equals|revision, key, field, value?, revision?}]
--   seq     {key, field}  optional: HINCRBY it and substitute the number for every \1 byte in
--           write fields, write values and audit values (version numbers, release ids)
--   writes  [{key, field, value, nx?, del?}]  nx: only if the field is absent (HSETNX);
--           del: delete the field (HDEL)
--   audit   [name, value, name, value, ...]
-- ARGV[2] invalidation channel   ARGV[3] audit stream MAXLEN (approximate)   ARGV[4] '1' or '0'
-- Publishes on ARGV[2] {epoch, time (the server's, seconds), changes: [[hash key, field, new value
-- or false when deleted], ...]} (an empty list encodes as {}): snapshots apply just that.
-- Returns {"ok", seq-or-"", epoch} or {"fail", index of the failed check}.
local spec = cjson.decode(ARGV[1])

for i, c in ipairs(spec.checks) do
  local cur = redis.call('HGET', KEYS[c.key], c.field)
  local ok
  if c.kind == 'absent' then
    ok = (cur == false)
  elseif c.kind == 'present' then
    ok = (cur ~= false)
  elseif c.kind == 'equals' then
    ok = (cur == c.value)
  elseif c.kind == 'revision' then
    ok = (cur ~= false) and (cjson.decode(cur).revision == c.revision)
  else
    return redis.error_reply('unknown check kind ' .. tostring(c.kind))
  end
  if not ok then
    return {'fail', i}
  end
end

local n = ''
if spec.seq then
  n = tostring(redis.call('HINCRBY', KEYS[spec.seq.key], spec.seq.field, 1))
end
local function fill(s)
  if n == '' then return s end
  return (string.gsub(s, '\1', n))
end

-- What changed, for the snapshots: {hash key, field, new value or false (deleted)}.
local changes = {}
for _, w in ipairs(spec.writes) do
  local f = fill(w.field)
  if w.del then
    if redis.call('HDEL', KEYS[w.key], f) == 1 then
      table.insert(changes, {KEYS[w.key], f, false})
    end
  else
    local v = fill(w.value)
    if w.nx then
      if redis.call('HSETNX', KEYS[w.key], f, v) == 1 then
        table.insert(changes, {KEYS[w.key], f, v})
      end
    else
      redis.call('HSET', KEYS[w.key], f, v)
      table.insert(changes, {KEYS[w.key], f, v})
    end
  end
end

local epoch = redis.call('INCR', KEYS[1])
local entry = {}
for i, v in ipairs(spec.audit) do
  entry[i] = fill(v)
end
table.insert(entry, 'epoch')
table.insert(entry, tostring(epoch))
table.insert(entry, 'prev')
table.insert(entry, redis.call('GET', KEYS[4]) or '')
local parts = {}
for _, v in ipairs(entry) do
  parts[#parts + 1] = #v .. ':' .. v
end
local digest = redis.sha1hex(table.concat(parts))
table.insert(entry, 'hash')
table.insert(entry, digest)
redis.call('SET', KEYS[4], digest)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', unpack(entry))
if ARGV[4] == '1' then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', unpack(entry))
end
local now = redis.call('TIME')
redis.call('PUBLISH', ARGV[2], cjson.encode({
  epoch = epoch, time = now[1] .. '.' .. string.format('%06d', tonumber(now[2])), changes = changes,
}))
return {'ok', n, epoch}

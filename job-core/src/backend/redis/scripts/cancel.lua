-- KEYS: the shared keys (see prelude.lua).
-- ARGV: base, id, retention_ms. Returns 'removed' (the job was waiting: it is cancelled
-- now), 'requested' (it is reserved: `cx` is set, and its holder learns it from extend),
-- 'finished:<state>' (succeeded, dead or cancelled already: nothing changed), or 'missing'.
local id, retention = ARGV[2], tonumber(ARGV[3])
local k = jk(id)
if redis.call('EXISTS', k) == 0 then return 'missing' end
local f = fields(k, 's', 'q')
if not f then return 'missing' end
local st = f[1]
if st == 'succeeded' or st == 'dead' or st == 'cancelled' then return 'finished:' .. st end
if st == 'running' then
  redis.call('HSET', k, 'cx', '1')
  return 'requested'
end
-- Queued, scheduled or retrying: a due scheduled job may already be in its ready list.
redis.call('ZREM', K_SCHEDULED, id)
if f[2] then redis.call('LREM', rk(f[2]), 1, id) end
redis.call('HSET', k, 's', 'cancelled', 'u', num(now_ms()))
live_add(-1)
expire(k, retention)
announce({id})
return 'removed'

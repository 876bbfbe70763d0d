-- KEYS: the shared keys (see prelude.lua).
-- ARGV: base, id, token, retention_ms. The attempt of a job whose cancel was requested has
-- ended (or was never started): the job is cancelled. Returns 1, or 0 when the lease is not
-- held.
local id, token, retention = ARGV[2], ARGV[3], tonumber(ARGV[4])
local k = jk(id)
local state = fence(k, token, 'cancel')
if state == 'done' then return 1 end
if state ~= 'held' then return 0 end
redis.call('ZREM', K_LEASED, id)
redis.call('HSET', k, 's', 'cancelled', 'u', num(now_ms()), 'd', token, 'o', 'cancel', 'l', '')
live_add(-1)
expire(k, retention)
announce({id})
return 1

-- KEYS: the shared keys (see prelude.lua).
-- ARGV: base, id, token, dead_json, error_message, retention_ms, capacity.
-- Returns {1, evicted ids...}, or {0} when the lease is not held.
local id, token = ARGV[2], ARGV[3]
local k = jk(id)
local state = fence(k, token, 'dead')
if state == 'done' then return {'1'} end
if state ~= 'held' then return {'0'} end
local now = num(now_ms())
redis.call('ZREM', K_LEASED, id)
redis.call('HSET', k, 's', 'dead', 'dead', ARGV[4], 'err', ARGV[5], 'died', now, 'u', now, 'd', token, 'o', 'dead')
redis.call('HDEL', k, 'l')
redis.call('ZADD', K_DEAD, now, id)
expire(k, tonumber(ARGV[6]))
live_add(-1)
announce({id})
local out = {'1'}
local evicted = {}
evict(tonumber(ARGV[7]), evicted)
for _, e in ipairs(evicted) do out[#out + 1] = e end
return out

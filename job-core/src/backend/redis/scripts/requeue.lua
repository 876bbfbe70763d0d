-- KEYS: the shared keys (see prelude.lua).
-- ARGV: base, id. Returns 1, or 0 when no dead letter has this id.
local id = ARGV[2]
local k = jk(id)
if not redis.call('ZSCORE', K_DEAD, id) then return 0 end
redis.call('ZREM', K_DEAD, id)
local f = fields(k, 'q')
if not f or not f[1] then return 0 end
local q = f[1]
redis.call('PERSIST', k)
redis.call('HSET', k, 'u', num(now_ms()))
redis.call('HDEL', k, 's', 'a', 'r', 'nb', 'l', 'err', 'dead', 'died', 'd', 'o', 'cx')
redis.call('SADD', K_QUEUES, q)
ready(q, id, false)
live_add(1)
return 1

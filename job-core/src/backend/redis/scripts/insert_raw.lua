-- KEYS: the shared keys (see prelude.lua).
-- ARGV: base, id, queue, raw. Stores raw bytes as the payload of a ready record that names
-- no job.
local id, q = ARGV[2], ARGV[3]
local k = jk(id)
redis.call('DEL', k)
redis.call('HSET', k, 'p', ARGV[4], 'q', q, 'u', num(now_ms()))
redis.call('SADD', K_QUEUES, q)
ready(q, id, false)
live_add(1)
return 1

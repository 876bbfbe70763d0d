-- KEYS: the shared keys (see prelude.lua).
-- ARGV: base, id, token, retention_ms. Returns 1, or 0 when the lease is not held. A job
-- whose cancel was requested (`cx`) is cancelled instead of given back.
local id, token = ARGV[2], ARGV[3]
local k = jk(id)
local state = fence(k, token, 'release')
if state == 'done' then return 1 end
if state ~= 'held' then return 0 end
if redis.call('HGET', k, 'cx') then
  redis.call('ZREM', K_LEASED, id)
  redis.call('HSET', k, 's', 'cancelled', 'u', num(now_ms()), 'd', token, 'o', 'release', 'l', '')
  live_add(-1)
  expire(k, tonumber(ARGV[4]))
  announce({id})
  return 1
end
local f = redis.call('HMGET', k, 'a', 'q')
local attempt = (tonumber(f[1]) or 0) - 1
if attempt < 0 then attempt = 0 end
local q = f[2]
-- reserve gives every leased record a queue; checked before any write all the same.
if not q then return 0 end
redis.call('ZREM', K_LEASED, id)
redis.call('HSET', k, 'a', num(attempt), 'u', num(now_ms()), 'd', token, 'o', 'release')
redis.call('HDEL', k, 's', 'l')
redis.call('SADD', K_QUEUES, q)
ready(q, id, true)
return 1

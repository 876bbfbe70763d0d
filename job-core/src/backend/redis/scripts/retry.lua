-- KEYS: the shared keys (see prelude.lua).
-- ARGV: base, id, token, at_ms, error, retention_ms. Returns 1, or 0 when the lease is not
-- held. A job whose cancel was requested (`cx`) is cancelled instead of retried.
local id, token, at = ARGV[2], ARGV[3], tonumber(ARGV[4])
local k = jk(id)
local state = fence(k, token, 'retry')
if state == 'done' then return 1 end
if state ~= 'held' then return 0 end
if redis.call('HGET', k, 'cx') then
  redis.call('ZREM', K_LEASED, id)
  redis.call('HSET', k, 's', 'cancelled', 'err', ARGV[5], 'u', num(now_ms()), 'd', token, 'o', 'retry', 'l', '')
  live_add(-1)
  expire(k, tonumber(ARGV[6]))
  announce({id})
  return 1
end
local q = redis.call('HGET', k, 'q')
local now = now_ms()
redis.call('ZREM', K_LEASED, id)
redis.call('HSET', k, 's', 'retrying', 'err', ARGV[5], 'nb', ARGV[4], 'u', num(now), 'd', token, 'o', 'retry')
redis.call('HDEL', k, 'l')
redis.call('ZADD', K_SCHEDULED, at, id)
if q and at <= now then signal(q) end
return 1

-- KEYS: the shared keys (see prelude.lua).
-- ARGV: base. Returns {ready, scheduled, running, dead}, and resets the live count to
-- ready + scheduled + running.
local ready = 0
for _, name in ipairs(redis.call('SMEMBERS', K_QUEUES)) do
  ready = ready + redis.call('LLEN', rk(name))
end
local scheduled, running = redis.call('ZCARD', K_SCHEDULED), redis.call('ZCARD', K_LEASED)
-- Recount the live jobs behind the capacity check (see live_add).
redis.call('SET', K_LIVE, ready + scheduled + running)
return {ready, scheduled, running, redis.call('ZCARD', K_DEAD)}

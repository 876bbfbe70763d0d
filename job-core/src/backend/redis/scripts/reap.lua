-- KEYS: the shared keys (see prelude.lua).
-- ARGV: base, max_recoveries, reason, batch, dead_retention_ms, dead_capacity,
-- finished_retention_ms. A job whose cancel was requested (`cx`) is cancelled, not
-- recovered.
-- Returns {recovered ids, dead rows, evicted ids, more}: `more` is '1' when the sweep of
-- finished records stopped at `batch` with more possibly due.
local max_rec, reason, batch = tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local retention, capacity = tonumber(ARGV[5]), tonumber(ARGV[6])
local now = now_ms()
local snow = num(now)
local recovered, dead, evicted, ended = {}, {}, {}, {}
local expired = redis.call('ZRANGEBYSCORE', K_LEASED, '-inf', now, 'LIMIT', 0, batch)
if #expired > 0 then zmany('ZREM', K_LEASED, expired) end
for _, id in ipairs(expired) do
  local k = jk(id)
  local f = fields(k, 'l', 'p', 'j', 'q', 'r', 'cx')
  if f and f[1] and f[6] then
    redis.call('HSET', k, 's', 'cancelled', 'u', snow, 'l', '')
    live_add(-1)
    expire(k, tonumber(ARGV[7]))
    ended[#ended + 1] = id
  elseif f and f[1] then
    local q = f[4]
    local rec = (tonumber(f[5]) or 0) + 1
    redis.call('HDEL', k, 'l')
    redis.call('HSET', k, 'r', num(rec), 'u', snow)
    if q and f[2] and f[3] and rec < max_rec then
      redis.call('HDEL', k, 's')
      ready(q, id, true)
      recovered[#recovered + 1] = id
    else
      redis.call('HSET', k, 's', 'dead', 'err', reason, 'died', snow)
      redis.call('ZADD', K_DEAD, now, id)
      expire(k, retention)
      dead[#dead + 1] = dead_row(id, k)
      live_add(-1)
      ended[#ended + 1] = id
    end
  end
end
announce(ended)
evict(capacity, evicted)
local more = '0'
if sweep(now, batch) then more = '1' end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', K_DEAD, '-inf', now - retention, 'LIMIT', 0, batch)) do
  redis.call('ZREM', K_DEAD, id)
  local k = jk(id)
  local f = fields(k, 's')
  if f and f[1] == 'dead' then redis.call('DEL', k) end
end
return {recovered, dead, evicted, more}

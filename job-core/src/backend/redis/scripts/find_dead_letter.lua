-- KEYS: the shared keys (see prelude.lua).
-- ARGV: base, id. Returns the dead row of `id` (as dead_letters.lua's rows), or an empty
-- reply when no dead letter has this id (an entry whose record expired is dropped).
local id = ARGV[2]
if not redis.call('ZSCORE', K_DEAD, id) then return {} end
local k = jk(id)
if redis.call('EXISTS', k) == 0 then
  redis.call('ZREM', K_DEAD, id)
  return {}
end
return dead_row(id, k)

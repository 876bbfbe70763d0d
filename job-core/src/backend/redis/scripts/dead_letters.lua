-- KEYS: the shared keys (see prelude.lua).
-- ARGV: base, limit. Returns up to `limit` dead rows, oldest first, dropping entries whose
-- record has expired.
local limit = tonumber(ARGV[2])
local page = math.min(limit, 500)
local out, stale = {}, {}
local start = 0
while #out < limit do
  local ids = redis.call('ZRANGE', K_DEAD, start, start + page - 1)
  if #ids == 0 then break end
  for _, id in ipairs(ids) do
    if #out >= limit then break end
    local k = jk(id)
    if redis.call('EXISTS', k) == 1 then out[#out + 1] = dead_row(id, k) else stale[#stale + 1] = id end
  end
  start = start + #ids
end
for _, id in ipairs(stale) do redis.call('ZREM', K_DEAD, id) end
return out

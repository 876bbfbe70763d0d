-- KEYS: the shared keys (see prelude.lua).
-- ARGV: base, lease_ms, then pairs id, token. Returns the ids whose lease is not held.
local expiry = num(now_ms() + tonumber(ARGV[2]))
local lost, members = {}, {}
for i = 3, #ARGV - 1, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  local k = jk(id)
  local f = fields(k, 'l')
  if f and f[1] == token then
    members[#members + 1] = expiry
    members[#members + 1] = id
  else
    lost[#lost + 1] = id
  end
end
if #members > 0 then zmany('ZADD', K_LEASED, members) end
return lost

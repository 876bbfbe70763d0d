-- KEYS: the shared keys (see prelude.lua).
-- ARGV: base, lease_ms, then pairs id, token. Returns {lost, cancelled}: the ids whose lease
-- was lost (held by nobody or another token, and whose outcome was not written with this
-- token), and the ids renewed whose cancel was requested (`cx`). (A renewal
-- that races this holder's own ack or retry, as the runtime's heartbeat does while a batch
-- of acks is in flight, finds the outcome written: nothing was lost, and the record is left
-- alone.)
local expiry = num(now_ms() + tonumber(ARGV[2]))
local lost, members, cancelled = {}, {}, {}
for i = 3, #ARGV - 1, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  local k = jk(id)
  local f = fields(k, 'l', 'd', 'cx')
  if f and f[1] == token then
    members[#members + 1] = expiry
    members[#members + 1] = id
    if f[3] then cancelled[#cancelled + 1] = id end
  elseif not (f and f[2] == token) then
    lost[#lost + 1] = id
  end
end
if #members > 0 then zmany('ZADD', K_LEASED, members) end
return {lost, cancelled}

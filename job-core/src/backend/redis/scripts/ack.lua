-- KEYS: the shared keys (see prelude.lua).
-- ARGV: base, retention_ms, stride (2 or 3), then per job id, token and, with stride 3, the
-- result to keep (JSON). Returns the ids whose lease is not held.
local retention = tonumber(ARGV[2])
local stride = tonumber(ARGV[3])
local t = now_ms()
local now = num(t)
local lost, done = {}, {}
for i = 4, #ARGV - stride + 1, stride do
  local id, token = ARGV[i], ARGV[i + 1]
  local k = jk(id)
  local state = fence(k, token, 'ack')
  if state == 'held' then
    done[#done + 1] = id
    if retention <= 0 then
      redis.call('DEL', k)
    else
      -- The lease and the payload are emptied in the same HSET rather than deleted by an
      -- HDEL (one command less per job; an empty lease matches no token, and nothing reads
      -- a finished job's payload). No PEXPIRE: the record is listed in K_FINISHED below
      -- and deleted by a later sweep (a TTL per job cost a command per job, and every
      -- command on a job key then looked the key up in Redis's table of expiring keys,
      -- which holds every finished job).
      redis.call('HSET', k, 's', 'succeeded', 'u', now, 'd', token, 'o', 'ack', 'l', '', 'p', '')
      if stride == 3 then redis.call('HSET', k, 'res', ARGV[i + 2]) end
    end
  elseif state == 'lost' then
    lost[#lost + 1] = id
  end
end
if #done > 0 then
  zmany('ZREM', K_LEASED, done)
  live_add(-#done)
  announce(done)
  if retention > 0 then
    redis.call('RPUSH', K_FINISHED, num(t + retention) .. ' ' .. table.concat(done, ' '))
  end
end
-- Deletes up to twice as many expired records as this call finished (and a few more), so
-- the sweep keeps pace with the acks; the reaper sweeps too, when no acks come.
sweep(t, 2 * #done + 16)
return lost

-- Prepended to every script (see scripts.rs). KEYS, the same in every script: queues,
-- scheduled, leased, dead, garbage, live, finished (each `{prefix}:<name>`, so all of them
-- live in one cluster slot); ARGV[1] is the key base `{prefix}:`, and each script's own
-- arguments start at ARGV[2]. Defines the key names and the helpers the scripts share.
local B = ARGV[1]
local K_QUEUES, K_SCHEDULED, K_LEASED, K_DEAD, K_GARBAGE, K_LIVE, K_FINISHED = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local function jk(id) return B .. 'job:' .. id end
local function rk(q) return B .. 'ready:' .. q end
local function num(n) return string.format('%.0f', n) end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- HMGET that answers nil, instead of failing the script, when the key holds another type.
local function fields(k, ...)
  local f = redis.pcall('HMGET', k, ...)
  if f['err'] then return nil end
  return f
end
-- 'held' when `token` is the job's lease; 'done' when it is the token whose outcome was
-- written last and that outcome is `outcome` ('ack', 'retry', 'dead' or 'release'): a
-- write-back repeated because its reply was lost, after a killed connection or a timeout,
-- succeeds again without changing anything instead of being refused as a lost lease;
-- 'lost' otherwise, also for another outcome with that token (its caller no longer holds
-- the job, and a success would claim an outcome that was never written). `d` is the token
-- and `o` the outcome it wrote; a record with a `d` but no `o` was written before `o`
-- existed, and its repeats are recognised by the token alone, as they were then.
local function fence(k, token, outcome)
  local f = fields(k, 'l', 'd', 'o')
  if not f then return 'lost' end
  if f[2] == token and (not f[3] or f[3] == outcome) then return 'done' end
  if f[1] == token then return 'held' end
  return 'lost'
end
local function signal(q)
  local k = B .. 'signal:' .. q
  redis.call('LPUSH', k, '1')
  redis.call('LTRIM', k, 0, 0)
end
-- Announces the end (succeeded, dead, cancelled, deleted) of the jobs in `ids` that a waiter
-- watches (see watch.lua): each is taken out of `{p}:watched` and its id published on
-- `{p}:ended`, where every process's subscriber hears it. Costs one EXISTS while nobody
-- watches a job.
local function announce(ids)
  local w = B .. 'watched'
  if redis.call('EXISTS', w) == 0 then return end
  for _, id in ipairs(ids) do
    if redis.call('SREM', w, id) == 1 then redis.call('PUBLISH', B .. 'ended', id) end
  end
end
-- Makes a job ready; wakes a waiting worker when the queue was empty (a worker waits only
-- after finding every queue it serves empty).
local function ready(q, id, front)
  local n
  if front then n = redis.call('LPUSH', rk(q), id) else n = redis.call('RPUSH', rk(q), id) end
  if n == 1 then signal(q) end
end
-- Adjusts the count of live jobs (queued, scheduled, running, retrying) behind the capacity
-- check; `stats` recounts it from the lists and sets, so it cannot drift for long.
local function live_add(n)
  if n ~= 0 and redis.call('INCRBY', K_LIVE, n) < 0 then redis.call('SET', K_LIVE, 0) end
end
local function expire(k, ms)
  if ms <= 0 then redis.call('DEL', k) else redis.call('PEXPIRE', k, ms) end
end
local function garbage(entry)
  redis.call('LPUSH', K_GARBAGE, entry)
  redis.call('LTRIM', K_GARBAGE, 0, 999)
end
-- Deletes the records of succeeded jobs whose retention has passed, oldest first, at most
-- about `budget` of them. `{p}:finished` holds one entry per ack call, in the order of the
-- calls: the deadline (ms, Redis clock), then the ids it acknowledged, space-separated. A
-- succeeded record never changes again (every write-back is fenced, and enqueueing a stored
-- id changes nothing), so the listed keys are deleted without being read. An entry whose
-- deadline has not come stops the sweep: later entries were written later (a process with a
-- longer retention can hold back one with a shorter one; records are then kept longer, never
-- shorter). Returns true when it stopped for the budget (more may be due).
local function sweep(now, budget)
  while budget > 0 do
    local head = redis.call('LINDEX', K_FINISHED, 0)
    if not head then return false end
    local sp = string.find(head, ' ', 1, true)
    local deadline = sp and tonumber(string.sub(head, 1, sp - 1))
    if deadline and deadline > now then return false end
    redis.call('LPOP', K_FINISHED)
    if deadline then
      local keys = {}
      for id in string.gmatch(string.sub(head, sp + 1), '%S+') do keys[#keys + 1] = jk(id) end
      for i = 1, #keys, 400 do
        redis.call('DEL', unpack(keys, i, math.min(i + 399, #keys)))
      end
      budget = budget - #keys
    else
      -- Not an entry this crate writes: dropped.
      budget = budget - 1
    end
  end
  return true
end
-- A job id as this crate writes it: 36 bytes of lowercase hex in groups of 8-4-4-4-12.
-- (Plain finds for the hyphens and one anchored character-set scan: 0.6 µs a call here,
-- against 1.3 µs for a pattern of 32 `%x` items and an uppercase scan, once per reserved job.)
local function valid_id(id)
  return #id == 36
    and string.find(id, '-', 1, true) == 9
    and string.find(id, '-', 10, true) == 14
    and string.find(id, '-', 15, true) == 19
    and string.find(id, '-', 20, true) == 24
    and string.find(id, '-', 25, true) == nil
    and string.find(id, '^[0-9a-f%-]*$') ~= nil
end
-- ZADD/ZREM with many members, in slices (Lua's unpack has a limit).
local function zmany(cmd, key, args)
  for i = 1, #args, 400 do
    redis.call(cmd, key, unpack(args, i, math.min(i + 399, #args)))
  end
end
-- Oldest dead letters beyond `capacity` are dropped with their records.
local function evict(capacity, evicted)
  local over = redis.call('ZCARD', K_DEAD) - capacity
  if over > 0 then
    local popped = redis.call('ZPOPMIN', K_DEAD, over)
    for i = 1, #popped, 2 do
      local k = jk(popped[i])
      local f = fields(k, 's')
      if f and f[1] == 'dead' then redis.call('DEL', k) end
      evicted[#evicted + 1] = popped[i]
    end
  end
end
-- id, has_dead, dead, payload, job, queue, attempt, enqueued, died, last_error
local function dead_row(id, k)
  local f = fields(k, 'dead', 'p', 'j', 'q', 'a', 'e', 'died', 'err') or {}
  local has = '0'
  if f[1] then has = '1' end
  return {id, has, f[1] or '', f[2] or '', f[3] or '', f[4] or '', f[5] or '0', f[6] or '', f[7] or '0', f[8] or ''}
end
